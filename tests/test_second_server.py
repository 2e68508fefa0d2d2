"""The second server (tests/support/second_server.py) over real loopback sockets, through its launcher.

It must keep the contract while taking the freedoms the other way (no `ref` on welcome, its own id shape,
fragmented frames, extra frames on replacement), and its fault and --break switches must do exactly what
they say, so that the tools run against it can be judged. Waits are bounded; absence is proved with the
`ping` barrier (the server queues every frame of a cause, for every connection, before it answers).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

from reference_server import wscodec
from reference_server.wscodec import FrameParser, new_key, split_head, upgrade_request
from tests.support import DEV_SECRET, clinician_token
from tests.support.processes import (
    SecondServerError,
    open_second_server,
    second_server,
    second_server_process,
)

Frame = dict[str, Any]
SCRIPT = Path(__file__).parent / "support" / "second_server.py"
LIMIT_KEYS = {"max_text_chars", "max_frame_bytes", "max_queued_frames", "max_queued_bytes", "rate_per_s",
              "rate_burst", "max_patients_per_room", "max_rooms", "hello_timeout_s", "ping_interval_s",
              "ping_timeout_s"}
_rooms = iter(range(1_000_000))
_open: list[Client | RawClient] = []


def new_room() -> str:
    return f"t-{os.getpid()}-{next(_rooms)}"


class Client:
    """A websockets sync client speaking the protocol; every read is bounded."""

    def __init__(self, url: str) -> None:
        self.ws: ClientConnection = connect(url, open_timeout=5, close_timeout=2, legacy=True)
        self.refs = iter(range(1_000_000))
        _open.append(self)

    def send(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))

    def recv(self, timeout: float = 5.0) -> Frame:
        frame = json.loads(self.ws.recv(timeout=timeout))
        assert isinstance(frame, dict)
        return frame

    def request(self, **frame: Any) -> list[Frame]:
        """Send with a fresh ref; return every frame up to and including the answer."""
        ref = f"r{next(self.refs)}"
        self.send(ref=ref, **frame)
        seen = []
        while True:
            got = self.recv()
            seen.append(got)
            if got.get("ref") == ref:
                return seen

    def answer(self, **frame: Any) -> Frame:
        return self.request(**frame)[-1]

    def sync(self) -> list[Frame]:
        """The events that reached this connection before a `ping`'s answer (the answer left out)."""
        return self.request(type="ping")[:-1]

    def close(self) -> None:
        self.ws.close()


def clinician(url: str, room: str) -> tuple[Client, Frame]:
    c = Client(url)
    c.send(type="hello", role="clinician", room=room, token=clinician_token(DEV_SECRET, room), ref="h")
    return c, c.recv()


def patient(url: str, room: str, c: Client | None = None, name: str = "Test Patient") -> tuple[Client, str]:
    p = Client(url)
    p.send(type="hello", role="patient", room=room, name=name)
    welcome = p.recv()
    assert welcome["type"] == "welcome"
    if c is not None:
        assert c.recv()["type"] == "patient_joined"
    return p, str(welcome["patient"])


def types(frames: list[Frame]) -> list[str]:
    return [str(f["type"]) for f in frames]


# ------------------------------------------------------------------------------------ a raw client


class RawClient:
    """A bare socket WebSocket client: shows each wire frame (fragments, pings) and answers no ping."""

    def __init__(self, url: str, receive_buffer: int | None = None) -> None:
        host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(5)
        self.sock.connect((host, int(port)))
        self.sock.sendall(upgrade_request(host, "/v1/ws", new_key()))
        self.parser = FrameParser(masked=False)
        self.frames: list[wscodec.Frame] = []
        self.pings = 0
        _open.append(self)
        received = b""
        while (split := split_head(received)) is None:
            received += self._read()
        head, rest = split
        assert head.startswith(b"HTTP/1.1 101"), head[:40]
        self.frames += self.parser.feed(rest)

    def _read(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        return chunk

    def frame(self) -> tuple[int, bool, bytes]:
        """The next wire frame: (opcode, fin, payload)."""
        while not self.frames:
            self.frames += self.parser.feed(self._read())
        first, payload = self.frames.pop(0)
        return first & wscodec.OPCODE_BITS, bool(first & wscodec.FIN), payload

    def send(self, frame: Frame) -> None:
        self.send_raw(json.dumps(frame).encode())

    def send_raw(self, payload: bytes) -> None:
        """One masked text frame carrying these bytes (valid UTF-8 or not)."""
        self.sock.sendall(wscodec.client_frame(payload))

    def close_code(self) -> int:
        """Read until the close frame; its code."""
        while True:
            opcode, _, payload = self.frame()
            if opcode == wscodec.OP_CLOSE:
                return int.from_bytes(payload[:2], "big")

    def message(self) -> tuple[Frame, int]:
        """The next text message and how many fragments it came in (pings counted, never answered)."""
        parts: list[bytes] = []
        while True:
            opcode, fin, payload = self.frame()
            self.pings += opcode == wscodec.OP_PING
            if opcode == wscodec.OP_CLOSE:
                raise EOFError(f"close frame {payload[:2].hex()}")
            if opcode in (wscodec.OP_TEXT, wscodec.OP_CONTINUATION):
                parts.append(payload)
                if fin:
                    return json.loads(b"".join(parts)), len(parts)

    def close(self) -> None:
        self.sock.close()


def raw_clinician(url: str, room: str, receive_buffer: int | None = None) -> RawClient:
    raw = RawClient(url, receive_buffer)
    raw.send({"type": "hello", "role": "clinician", "room": room, "token": clinician_token(DEV_SECRET, room)})
    return raw


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    """Every client a test opened is closed after it, whatever happened."""
    yield
    while _open:
        _open.pop().close()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with second_server() as running:
        yield running


# ------------------------------------------------------------------------------------ the freedoms


def test_welcomes_carry_no_ref_and_ids_have_their_own_shape(url: str) -> None:
    """Clinician and patient welcomes omit the hello's ref (allowed); ids are "pt-" + 32 hex (128 bits)."""
    room = new_room()
    _c, welcome = clinician(url, room)
    assert welcome["type"] == "welcome" and "ref" not in welcome
    assert set(welcome) == {"type", "room", "queue", "chat_box", "call", "settings", "room_settings",
                            "provider_status", "limits"}
    assert set(welcome["limits"]) == LIMIT_KEYS and welcome["limits"]["max_text_chars"] == 4096
    p = Client(url)
    p.send(type="hello", role="patient", room=room, name="Test Patient", ref="p-hello")
    pw = p.recv()
    assert "ref" not in pw and re.fullmatch(r"pt-[0-9a-f]{32}", pw["patient"])
    assert pw["position"] == 1 and pw["provider_status"] == "online"


def test_hello_errors_carry_no_ref_and_close_1008() -> None:
    """A wrong token answers unauthorized without the hello's ref, then a 1008 close in the server's words."""
    with second_server() as running:
        c = Client(running)
        c.send(type="hello", role="clinician", room="r", token="0" * 64, ref="h1")
        error = c.recv()
        assert error["code"] == "unauthorized" and "ref" not in error and error["message"]
        with pytest.raises(ConnectionClosed):
            c.recv()
        assert c.ws.close_code == 1008


def test_message_both_ways_with_client_ts(url: str) -> None:
    room = new_room()
    c, _ = clinician(url, room)
    a, pid = patient(url, room, c)
    ok = a.answer(type="send", text="Sample question", client_ts=12.5)
    message = c.recv()
    assert message == {"type": "message", "patient": pid, "id": 1, "from": "patient",
                       "text": "Sample question", "ts": ok["ts"], "client_ts": 12.5}
    assert types(c.sync()) == ["unread", "notify"]
    ok = c.answer(type="send", patient=pid, text="Sample reply", client_ts=99)
    assert ok["id"] == 2
    assert a.recv() == {"type": "message", "patient": pid, "id": 2, "from": "clinician",
                        "text": "Sample reply", "ts": ok["ts"], "client_ts": 99}


def test_every_frame_arrives_in_two_or_three_fragments(url: str) -> None:
    """Each frame is split (also inside a UTF-8 character); a raw reader sees >= 2 wire frames per message."""
    room = new_room()
    raw = raw_clinician(url, room)
    welcome, count = raw.message()
    assert welcome["type"] == "welcome" and count in (2, 3)
    counts = []
    for i in range(20):
        raw.send({"type": "ping", "ref": f"p{i}"})
        answer, count = raw.message()
        assert answer == {"type": "ok", "ref": f"p{i}"}
        counts.append(count)
    assert set(counts) <= {2, 3} and len(set(counts)) == 2  # both shapes occur (1 in 2**19 to fail by chance)
    raw.close()


def test_replaced_clinician_gets_extra_frames_then_4000(url: str) -> None:
    """erased{refresh} per conversation, then chat_box{closed, erased} and unread{count:0}, then 4000."""
    room = new_room()
    c1, _ = clinician(url, room)
    a, pid = patient(url, room, c1)
    a.answer(type="send", text="Sample question")
    assert types(c1.sync()) == ["message", "unread", "notify"]
    c2, welcome = clinician(url, room)
    assert welcome["queue"][0]["unread"] == 0 and welcome["chat_box"]["state"] == "closed"
    assert [c1.recv(), c1.recv(), c1.recv()] == [
        {"type": "erased", "patient": pid, "reason": "refresh"},
        {"type": "chat_box", "state": "closed", "patient": None, "patient_present": False,
         "reason": "erased"},
        {"type": "unread", "patient": pid, "count": 0},
    ]
    with pytest.raises(ConnectionClosed):
        c1.recv()
    assert c1.ws.close_code == 4000 and c1.ws.close_reason
    assert c2.answer(type="open_chat", patient=pid)["messages"] == []


def test_start_call_check_order_and_frame_order_differ_from_the_reference(url: str) -> None:
    """call_in_progress before not_found; the patient in the call gets provider_status before call{started};
    a waiting patient gets position before provider_status."""
    room = new_room()
    c, _ = clinician(url, room)
    a, pid_a = patient(url, room, c)
    b, _ = patient(url, room, c)
    c.answer(type="start_call", patient=pid_a)
    assert [a.recv(), a.recv()] == [{"type": "provider_status", "status": "on_call"},
                                    {"type": "call", "state": "started"}]
    assert [b.recv(), b.recv()] == [{"type": "position", "position": 1},
                                    {"type": "provider_status", "status": "on_call"}]
    assert c.answer(type="start_call", patient="no-such-patient")["code"] == "call_in_progress"


def test_state_errors_come_before_too_large() -> None:
    with second_server(max_text_chars=10) as running:
        room = new_room()
        c, _ = clinician(running, room)
        assert c.answer(type="send", patient="nobody", text="x" * 11)["code"] == "not_found"
        _a, pid = patient(running, room, c)
        assert c.answer(type="send", patient=pid, text="x" * 11)["code"] == "too_large"


def test_other_paths_and_plain_requests_get_404(url: str) -> None:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    for request in (b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(request)
            assert sock.recv(100).startswith(b"HTTP/1.1 404")


def test_sigterm_closes_every_connection_with_1001_within_a_second() -> None:
    with second_server_process() as running:
        room = new_room()
        c, _ = clinician(running.url, room)
        a, _ = patient(running.url, room, c)
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        for client in (c, a):
            with pytest.raises(ConnectionClosed):
                while True:
                    client.recv()
            assert client.ws.close_code == 1001
        assert running.process.wait(5) == 0
        assert time.monotonic() - started < 2.0


def test_heartbeat_only_pongs_count() -> None:
    """A patient that sends requests but never answers pings is lost after ping_timeout_s (disconnected);
    the clinician, whose client answers pings, stays."""
    with second_server(ping_interval_s=0.2, ping_timeout_s=0.6) as running:
        room = new_room()
        c, _ = clinician(running, room)
        raw = RawClient(running)
        raw.send({"type": "hello", "role": "patient", "room": room, "name": "Test Patient"})
        welcome, _ = raw.message()
        assert c.recv()["type"] == "patient_joined"
        deadline = time.monotonic() + 5
        with pytest.raises(EOFError):
            while time.monotonic() < deadline:
                raw.send({"type": "ping"})
                assert raw.message()[0] == {"type": "ok"}
                time.sleep(0.05)  # pacing: a request every 50 ms, well inside ping_timeout_s
        assert time.monotonic() < deadline and raw.pings >= 2
        assert c.recv(timeout=5) == {"type": "patient_left", "patient": welcome["patient"],
                                     "reason": "disconnected"}
        assert c.answer(type="ping")["type"] == "ok"


@pytest.mark.parametrize(("payload", "code"), [(b'{"type":"ping","x":"\xff"}', 1007),
                                               (b'{"type":"ping","pad":"' + b"x" * 2000 + b'"}', 1009)])
def test_invalid_utf8_closes_1007_and_big_frames_1009(payload: bytes, code: int) -> None:
    with second_server(max_frame_bytes=1000) as running:
        room = new_room()
        raw = raw_clinician(running, room)
        assert raw.message()[0]["type"] == "welcome"
        raw.send_raw(payload)
        assert raw.close_code() == code


def test_slow_reader_is_cut_off_and_others_go_on() -> None:
    """A clinician that stops reading (tiny receive buffer) is disconnected past max_queued_frames: the
    patient sees provider_status away (a refresh) while its own requests are all answered."""
    with second_server_process(max_queued_frames=50, rate_per_s="off", rate_burst="off",
                               ok_jitter_ms=0) as running:
        room = new_room()
        raw_clinician(running.url, room, receive_buffer=4096)
        a, _ = patient(running.url, room)
        seen: list[Frame] = []
        for _ in range(3000):
            seen = a.request(type="send", text="x" * 1000)
            if seen[0]["type"] == "provider_status":
                break
        assert seen[0] == {"type": "provider_status", "status": "away"} and seen[-1]["type"] == "ok"
        assert "slow_reader" in running.stderr_text()


def test_logs_carry_no_text_and_no_names() -> None:
    with second_server_process() as running:
        room = new_room()
        c, _ = clinician(running.url, room)
        a, pid = patient(running.url, room, c, name="Zebedee Quux")
        a.answer(type="send", text="Secret words here")
        c.answer(type="send", patient=pid, text="Private reply")
        a.answer(type="leave")
        logs = running.stderr_text()
    assert pid in logs
    for private in ("Zebedee", "Quux", "Secret words", "Private reply"):
        assert private not in logs


# ------------------------------------------------------------------------------------ fault switches


def test_delay_ms_holds_each_message() -> None:
    with second_server(delay_ms=300) as running:
        room = new_room()
        c, _ = clinician(running, room)
        a, _ = patient(running, room, c)
        sent = time.time() * 1000
        a.answer(type="send", text="Sample", client_ts=sent)  # the sender's ok is not held
        assert time.time() * 1000 - sent < 250
        message = c.recv()
        latency = time.time() * 1000 - message["client_ts"]
        assert 300 <= latency < 2000


def test_stall_holds_messages_while_answers_flow() -> None:
    with second_server_process(stall_after=0, stall_for=1.5) as running:
        ready = time.monotonic()
        room = new_room()
        c, _ = clinician(running.url, room)
        a, _ = patient(running.url, room, c)
        assert a.answer(type="send", text="Sample")["type"] == "ok"
        assert c.sync() == []  # ping answered, no message yet
        assert c.recv(timeout=5)["type"] == "message"
        assert time.monotonic() - ready >= 1.2


def test_endless_stall_never_delivers() -> None:
    with second_server(stall_after=0, stall_for=float("inf")) as running:
        room = new_room()
        c, _ = clinician(running, room)
        a, pid = patient(running, room, c)
        assert a.answer(type="send", text="Sample")["type"] == "ok"
        assert c.answer(type="send", patient=pid, text="Reply")["type"] == "ok"
        assert c.sync() == [] and a.sync() == []


def test_refuse_every_nth_send() -> None:
    with second_server(refuse_every=3) as running:
        room = new_room()
        c, _ = clinician(running, room)
        a, _ = patient(running, room, c)
        codes = [a.answer(type="send", text="Sample").get("code", "ok") for _ in range(6)]
        assert codes == ["ok", "ok", "rate_limited", "ok", "ok", "rate_limited"]


def test_die_after_drops_sockets_without_close_frame() -> None:
    with second_server_process(die_after=0.8) as running:
        c, _ = clinician(running.url, new_room())
        with pytest.raises(ConnectionClosedError) as closed:
            c.recv(timeout=5)
        assert closed.value.rcvd is None  # no close frame came
        assert running.process.wait(5) == 3


# ------------------------------------------------------------------------------------ --break switches


def exchange_r3(url: str) -> object:
    room = new_room()
    c, _ = clinician(url, room)
    a, _ = patient(url, room, c)
    a.answer(type="send", text="Sample")
    return types(c.sync())


def exchange_r8(url: str) -> object:
    room = new_room()
    c, _ = clinician(url, room)
    _a, pid_a = patient(url, room, c)
    b, _ = patient(url, room, c)
    c.answer(type="open_chat", patient=pid_a)
    b.answer(type="send", text="Sample")
    return [(f["type"], f.get("patient") == pid_a) for f in c.sync()]


def exchange_r9(url: str) -> object:
    room = new_room()
    c, _ = clinician(url, room)
    a, pid = patient(url, room, c)
    a.answer(type="leave")
    c.sync()
    return c.answer(type="send", patient=pid, text="Sample").get("code", "ok")


def exchange_r10(url: str) -> object:
    room = new_room()
    c, _ = clinician(url, room)
    a, _ = patient(url, room, c)
    c.answer(type="set_notifications", chat=False)
    a.answer(type="send", text="Sample")
    return types(c.sync())


def exchange_r11(url: str) -> object:
    room = new_room()
    c, _ = clinician(url, room)
    a, pid = patient(url, room, c)
    c.answer(type="open_chat", patient=pid)
    a.answer(type="leave")
    c.sync()
    closing = types(c.request(type="close_chat"))
    return closing, c.answer(type="open_chat", patient=pid).get("code", "ok")


def exchange_r12(url: str) -> object:
    room = new_room()
    c1, _ = clinician(url, room)
    a, pid = patient(url, room, c1)
    a.answer(type="send", text="Sample")
    c1.sync()
    c2, _ = clinician(url, room)
    return len(c2.answer(type="open_chat", patient=pid)["messages"])


def exchange_r13(url: str) -> object:
    room = new_room()
    c, _ = clinician(url, room)
    a, pid = patient(url, room, c)
    c.answer(type="open_chat", patient=pid)
    a.answer(type="send", text="Sample")
    a.answer(type="leave")
    c.sync()
    assert types(c.request(type="close_chat"))[0] == "erased"
    answer = c.answer(type="open_chat", patient=pid)
    return answer.get("code") or [m["text"] for m in answer["messages"]]


def exchange_r30(url: str) -> object:
    room = new_room()
    c, _ = clinician(url, room)
    a, _ = patient(url, room, c)
    b, _ = patient(url, room, c)
    a.answer(type="leave")
    c.sync()
    return b.sync()


def exchange_r31(url: str) -> object:
    room = new_room()
    c, _ = clinician(url, room)
    a, _ = patient(url, room, c)
    c.answer(type="set_room", patient_initiated_chat=False)
    return a.answer(type="send", text="Sample").get("code", "ok")


def exchange_order(url: str) -> object:
    return exchange_r3(url)


BREAK_CASES: dict[str, tuple[Callable[[str], object], object, object]] = {
    # rule: (exchange, what a correct server shows, what the broken one shows)
    "R3": (exchange_r3, ["message", "unread", "notify"], ["message", "notify"]),
    "R8": (exchange_r8, [("message", False), ("unread", False), ("notify", False)],
           [("message", False), ("chat_box", False)]),
    "R9": (exchange_r9, "patient_gone", "ok"),
    "R10": (exchange_r10, ["message", "unread"], ["message", "unread", "notify"]),
    "R11": (exchange_r11, (["erased", "chat_box", "ok"], "not_found"), (["chat_box", "ok"], "ok")),
    "R12": (exchange_r12, 0, 1),
    "R13": (exchange_r13, "not_found", ["Sample"]),
    "R30": (exchange_r30, [{"type": "position", "position": 1}], []),
    "R31": (exchange_r31, "chat_disabled", "ok"),
    "order": (exchange_order, ["message", "unread", "notify"], ["notify", "unread", "message"]),
}


@pytest.mark.parametrize("rule", sorted(BREAK_CASES))
def test_break_switch_breaks_only_its_rule(url: str, rule: str) -> None:
    exchange, correct, broken = BREAK_CASES[rule]
    assert exchange(url) == correct
    with second_server(break_rule=rule) as running:
        assert exchange(running) == broken


# ------------------------------------------------------------------------------------ the command line


@pytest.mark.parametrize("argv", [["--break", "R99"], ["--max-rooms", "lots"], ["--stall-after", "3"],
                                  ["--rate-per-s", "off"], ["--host", "0.0.0.0"], ["--frobnicate"],
                                  ["--port", "99999"], ["--stall-after", "1", "--stall-for", "nan"]])
def test_bad_options_exit_2_with_one_line(argv: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "QUEUECHAT_SECRET"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--port", "0", *argv], capture_output=True,
                          text=True, timeout=15, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("second_server.py: error: "), done.stderr
    assert done.stdout == ""


async def test_trio_launcher_serves_and_stops() -> None:
    """open_second_server yields a URL a Trio client can use, and stops the process on exit."""
    room = new_room()
    async with open_second_server() as running, trio_websocket.open_websocket_url(running) as ws:
        await ws.send_message(json.dumps({"type": "hello", "role": "clinician", "room": room,
                                          "token": clinician_token(DEV_SECRET, room)}))
        with trio.fail_after(5):
            welcome = json.loads(await ws.get_message())
        assert welcome["type"] == "welcome" and welcome["room"] == room
    host, port = running.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with pytest.raises(OSError):
        await trio.open_tcp_stream(host, int(port))


def test_launcher_reports_a_server_that_did_not_start() -> None:
    with pytest.raises(SecondServerError, match="--max-rooms"), second_server(max_rooms="lots"):
        pass
