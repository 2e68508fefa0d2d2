"""The Trio shell around the model: shutdown and cancellation (R46), counters, the statistics log line,
timers (R45), the bounded outbound queue (R42) and HTTP paths.

Rules of this file: loopback only, port 0, every wait bounded by ``fail_after``. Where a client must
misbehave (never answer a ping or a close, never read), it is :class:`RawClient`, a WebSocket client
written by hand over a Trio socket that does only what the test tells it to; trio-websocket's own
client answers pings and closes by itself.
"""

from __future__ import annotations

import io
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog
import trio
import trio.testing
from conftest import TEST_SECRET, StartServer
from wire import LiveServer, WireClient, frame_types

from reference_server._logging import configure_logging
from reference_server.protocol import WS_PATH, Limits
from reference_server.server import QueueChatServer, ServerStatistics
from reference_server.wscodec import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    OPCODE_BITS,
    Frame,
    FrameParser,
    accept_key,
    client_frame,
    close_code,
    close_payload,
    new_key,
    parse_head,
    response_status,
    split_head,
    upgrade_request,
)

WAIT_S = 5.0
LogLines = Callable[[], list[dict[str, Any]]]


# ---------------------------------------------------------------------------------------------- helpers


class RawClient:
    """A hand-written WebSocket client: it sends and reads only what the test asks for.

    It never answers a ping or a close by itself, so it can play a peer that has gone silent.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()  # bytes received and not yet parsed
        self.parser = FrameParser(masked=False)
        self.frames: list[Frame] = []  # parsed, not yet taken

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, *, rcvbuf: int | None = None) -> AsyncIterator[RawClient]:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect: the receive window offered to the server is fixed at the handshake.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await sock.connect((parts.hostname, parts.port))
        except BaseException:
            sock.close()
            raise
        client = cls(trio.SocketStream(sock))
        try:
            yield client
        finally:
            await trio.aclose_forcefully(client.stream)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)


    async def http_get(self, url: str, path: str) -> tuple[int, dict[str, str], bytes]:
        """Send a WebSocket upgrade request for ``path``; return (status, headers, the key sent)."""
        key = new_key()
        await self.stream.send_all(upgrade_request(urlsplit(url).netloc, path, key))
        while (split := split_head(self.buffer)) is None:
            if not await self._fill():
                raise EOFError("the server closed the TCP connection during the HTTP exchange")
        head, rest = split
        self.buffer = bytearray(rest)
        status_line, headers = parse_head(head)
        return response_status(status_line), headers, key

    async def handshake(self, url: str) -> None:
        status, headers, key = await self.http_get(url, WS_PATH)
        assert status == 101, f"upgrade refused with HTTP {status}"
        assert headers.get("sec-websocket-accept") == accept_key(key).decode("ascii")

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        await self.stream.send_all(client_frame(payload, opcode))

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send_frame(OP_TEXT, json.dumps(frame).encode("utf-8"))

    async def recv_frame(self) -> tuple[int, bytes]:
        """One whole frame from the server (unfragmented, as this server sends them)."""
        while not self.frames:
            if not self.buffer and not await self._fill():
                raise EOFError("the server closed the TCP connection")
            self.frames += self.parser.feed(bytes(self.buffer))
            self.buffer.clear()
            assert self.parser.error is None, "a server frame must not be masked"
        first, payload = self.frames.pop(0)
        return first & OPCODE_BITS, payload

    async def recv_until_close(self) -> tuple[int, list[int]]:
        """Read frames until a close frame; return its code and the opcodes before it. Never answers."""
        opcodes = []
        while True:
            opcode, payload = await self.recv_frame()
            if opcode == OP_CLOSE:
                return close_code(payload), opcodes
            opcodes.append(opcode)

    async def answer_close(self, code: int) -> None:
        await self.send_frame(OP_CLOSE, close_payload(code))

    async def wait_eof(self) -> None:
        """Discard whatever arrives until the server has closed the TCP connection."""
        self.buffer.clear()
        self.frames.clear()
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:  # a reset is a close too
                return
            if not data:
                return


async def expect_close(client: WireClient) -> tuple[int | None, list[dict[str, Any]]]:
    """``client.expect_close()``, then let go of the client's socket.

    trio-websocket 0.12's client never closes its own socket after a close that the server started
    (it waits for the server's TCP close, then leaves the socket to the garbage collector, which
    warns); the test closes it.
    """
    try:
        return await client.expect_close()
    finally:
        await trio.aclose_forcefully(client.ws._stream)


async def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll a condition on the server's state, bounded: state changes after a peer's I/O have no event."""
    with trio.move_on_after(timeout_s):
        while True:
            if predicate():
                return
            await trio.sleep(0.002)
    raise AssertionError(f"timed out waiting until {what}")


async def wait_for_stats(server: QueueChatServer, **expected: Any) -> ServerStatistics:
    """Wait until the named counters have the expected values; return the snapshot."""
    last: list[ServerStatistics] = [server.statistics()]

    def matches() -> bool:
        last[0] = server.statistics()
        return all(getattr(last[0], name) == value for name, value in expected.items())

    try:
        await wait_until(matches, f"statistics {expected}")
    except AssertionError:
        got = {name: getattr(last[0], name) for name in expected}
        raise AssertionError(f"statistics: expected {expected}, got {got}") from None
    return last[0]


async def quiet_task_count() -> int:
    await trio.testing.wait_all_tasks_blocked()
    return trio.lowlevel.current_statistics().tasks_living


@dataclass
class Running:
    """A server started by a test (not the fixture), with an event for ``serve()`` having returned."""

    server: QueueChatServer
    live: LiveServer
    returned: trio.Event


async def start_own(nursery: trio.Nursery, limits: Limits | None = None, **options: Any) -> Running:
    options.setdefault("stats_interval_s", None)
    server = QueueChatServer(secret=TEST_SECRET, limits=limits, **options)
    returned = trio.Event()

    async def serve(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await server.serve(host="127.0.0.1", port=0, task_status=task_status)
        finally:
            returned.set()

    url = await nursery.start(serve)
    live = LiveServer(url=url, secret=TEST_SECRET, server=server, nursery=nursery)
    return Running(server=server, live=live, returned=returned)


def encoded_size(frame: dict[str, Any]) -> int:
    """Bytes of a frame as the server encodes it (compact JSON; this file's frames are ASCII)."""
    return len(json.dumps(frame, separators=(",", ":")).encode("utf-8"))


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Capture the structured log (DEBUG) for the test; the previous configuration is restored after."""
    saved = structlog.get_config()
    stream = io.StringIO()
    configure_logging("debug", stream=stream)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]

    try:
        yield lines
    finally:
        structlog.configure(**saved)


# ---------------------------------------------------------------------------------------------- R46


async def test_R46_shutdown_closes_every_connection_with_1001_and_leaves_no_task(room: str) -> None:
    """After shutdown() every client has a 1001 close, serve() has returned and no server task is left."""
    baseline = await quiet_task_count()
    async with trio.open_nursery() as nursery:
        running = await start_own(nursery)
        server, live = running.server, running.live
        async with AsyncExitStack() as stack:
            clinician = await stack.enter_async_context(live.clinician(room))
            patients = [await stack.enter_async_context(live.patient(room)) for _ in range(2)]
            idle = await stack.enter_async_context(live.connect())  # accepted, no hello yet
            await clinician.barrier()
            assert server.statistics().connections_open == 4
            with trio.fail_after(WAIT_S):
                await server.shutdown()
            for client in (clinician, *patients, idle):
                code, _ = await expect_close(client)
                assert code == 1001
        with trio.fail_after(WAIT_S):
            await running.returned.wait()
    stats = server.statistics()
    assert stats.connections_open == 0
    assert stats.patients_present == 0 and stats.rooms_active == 0
    assert stats.internal_errors == 0
    assert await quiet_task_count() == baseline


async def test_R46_cancelling_serve_ends_every_connection_task(room: str) -> None:
    """Cancelling the scope that runs serve() (no shutdown) ends every connection and its tasks."""
    baseline = await quiet_task_count()
    async with trio.open_nursery() as nursery:
        serve_scope = trio.CancelScope()
        server = QueueChatServer(secret=TEST_SECRET, stats_interval_s=0.01)
        returned = trio.Event()

        async def serve(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            with serve_scope:
                await server.serve(host="127.0.0.1", port=0, task_status=task_status)
            returned.set()

        url = await nursery.start(serve)
        live = LiveServer(url=url, secret=TEST_SECRET, server=server, nursery=nursery)
        async with live.clinician(room) as clinician, live.patient(room) as patient:
            await clinician.barrier()
            await patient.barrier()
            serve_scope.cancel()
            with trio.fail_after(WAIT_S):
                await returned.wait()
            assert serve_scope.cancelled_caught
            # Every connection handler has run its cleanup: nothing is registered any more.
            assert server.statistics().connections_open == 0
            for client in (clinician, patient):
                code, _ = await expect_close(client)
                assert code is not None  # the TCP connection ended (without a close frame: 1006)
    assert server.statistics().internal_errors == 0
    assert await quiet_task_count() == baseline


async def test_R46_shutdown_drops_a_peer_that_never_answers_the_close_after_the_timeout(room: str) -> None:
    """A peer that never answers the close is dropped after close_timeout_s; everyone else closes 1001."""
    baseline = await quiet_task_count()
    async with trio.open_nursery() as nursery:
        running = await start_own(nursery, close_timeout_s=0.2)
        server, live = running.server, running.live
        async with live.clinician(room) as clinician, RawClient.open(live.url) as silent:
            await silent.handshake(live.url)
            await silent.send_json({"type": "hello", "role": "patient", "room": room, "name": "Test Patient"})
            assert (await clinician.recv())["type"] == "patient_joined"
            started = trio.current_time()
            with trio.fail_after(WAIT_S):
                await server.shutdown()
            took = trio.current_time() - started
            code, _ = await expect_close(clinician)
            assert code == 1001
            with trio.fail_after(WAIT_S):
                code, before = await silent.recv_until_close()
                assert code == 1001
                assert OP_TEXT in before  # its welcome
                await silent.wait_eof()  # dropped: the TCP connection ends without a close reply
        with trio.fail_after(WAIT_S):
            await running.returned.wait()
    # It waited for the close it never got (no earlier than the timeout), and not much longer.
    assert 0.2 <= took < WAIT_S
    assert server.statistics().connections_open == 0
    assert server.statistics().internal_errors == 0
    assert await quiet_task_count() == baseline


async def test_R46_a_connection_made_during_shutdown_is_closed_with_1001(room: str) -> None:
    """While shutdown waits for closes, a new connection is accepted and closed with 1001 at once;
    shutdown ends as soon as the last close is answered, not at the timeout."""
    async with trio.open_nursery() as nursery:
        running = await start_own(nursery, close_timeout_s=30.0)
        server, live = running.server, running.live
        shutdown_done = trio.Event()
        async with RawClient.open(live.url) as closer:
            await closer.handshake(live.url)
            await closer.send_json({"type": "hello", "role": "patient", "room": room, "name": "Patient"})
            with trio.fail_after(WAIT_S):
                opcode, _ = await closer.recv_frame()
            assert opcode == OP_TEXT  # the welcome

            async def shut_down() -> None:
                await server.shutdown()
                shutdown_done.set()

            nursery.start_soon(shut_down)
            with trio.fail_after(WAIT_S):
                code, _ = await closer.recv_until_close()
            assert code == 1001
            # Shutdown is now waiting for this peer's close reply (up to 30 s): connect meanwhile.
            assert not shutdown_done.is_set()
            with trio.fail_after(WAIT_S):
                async with live.connect() as late:
                    code, frames = await expect_close(late)
            assert (code, frames) == (1001, [])
            assert server.statistics().connections_total == 1  # the late one never became a session
            await closer.answer_close(1001)
            with trio.fail_after(WAIT_S):
                await shutdown_done.wait()
                await running.returned.wait()
    assert server.statistics().internal_errors == 0


# ---------------------------------------------------------------------------------------------- counters


async def test_statistics_count_a_scripted_session_exactly(start_server: StartServer, room: str) -> None:
    """Every counter of statistics() after a small scripted session, and frames/bytes out match the wire."""
    live = await start_server(Limits(rate_per_s=0.001, rate_burst=5))  # 5 requests, then rate_limited
    server = live.server
    zero = {"slow_reader_drops": 0, "hello_timeouts": 0, "lost_connections": 0, "internal_errors": 0}
    clients: list[WireClient] = []
    async with live.clinician(room) as clinician:
        clients.append(clinician)  # in 1: hello; out 1: welcome
        async with live.patient(room) as patient:
            clients.append(patient)  # in 2; out 3: welcome, patient_joined
            patient_id = patient.patient_id
            assert (await clinician.recv())["type"] == "patient_joined"
            await patient.ok({"type": "send", "text": "a sample question"})  # in 3; out 7
            assert frame_types(await clinician.barrier()) == ["message", "unread", "notify"]  # in 4; out 8
            await clinician.error({"type": "no_such_request"}, "unknown_type")  # in 5; out 9
            await clinician.error({"type": "send", "patient": patient_id}, "invalid")  # in 6; out 10
            answers = [(await patient.request({"type": "ping"}))[1] for _ in range(5)]  # in 11; out 15
            # The patient's send took one token of five: four pings pass, the fifth is rate limited.
            assert [a["type"] for a in answers] == ["ok"] * 4 + ["error"]
            assert answers[-1]["code"] == "rate_limited"
            async with live.connect() as bad:
                clients.append(bad)
                await bad.send({"type": "hello", "role": "patient", "room": room, "name": ""})  # in 12
                code, frames = await expect_close(bad)  # out 16: error invalid, then close 1008
                assert code == 1008 and frames[0]["code"] == "invalid"
            await wait_for_stats(
                server, connections_total=3, connections_open=2, frames_in=12, frames_out=16,
                rate_limited=1, errors_by_code={"unknown_type": 1, "invalid": 2, "rate_limited": 1},
                rooms_active=1, patients_present=1, **zero,
            )
        # The patient closed its connection: out 18, patient_left and erased to the clinician.
        assert frame_types(await clinician.barrier()) == ["patient_left", "erased"]  # in 13; out 19
        await wait_for_stats(server, connections_open=1, patients_present=0, rooms_active=1)
    stats = await wait_for_stats(
        server, connections_total=3, connections_open=0, frames_in=13, frames_out=19, rate_limited=1,
        errors_by_code={"unknown_type": 1, "invalid": 2, "rate_limited": 1},
        rooms_active=0, patients_present=0, **zero,
    )
    # The counters agree with what the clients read off the wire, frame by frame and byte by byte.
    assert stats.frames_out == sum(len(c.seen) for c in clients)
    assert stats.bytes_out == sum(encoded_size(f) for c in clients for f in c.seen)


async def test_statistics_are_logged_periodically(log_lines: LogLines, room: str) -> None:
    """With stats_interval_s set, a server.statistics line with every counter is logged while it serves."""
    async with trio.open_nursery() as nursery:
        running = await start_own(nursery, stats_interval_s=0.05)
        async with running.live.clinician(room):

            def seen() -> bool:
                return any(line["event"] == "server.statistics" and line["connections_open"] == 1
                           for line in log_lines())

            await wait_until(seen, "a statistics line counts the clinician")
        await running.server.shutdown()
        with trio.fail_after(WAIT_S):
            await running.returned.wait()
    line = next(line for line in log_lines() if line["event"] == "server.statistics"
                and line["connections_open"] == 1)
    assert line["level"] == "info"
    assert {f.name for f in fields(ServerStatistics)} <= set(line)
    assert line["rooms_active"] == 1 and line["connections_total"] == 1
    events = [line["event"] for line in log_lines()]
    assert events[0] == "server.listening"
    assert events[-1] == "server.stopped"


# ---------------------------------------------------------------------------------------------- R45


async def test_R45_hello_timeout_closes_a_silent_connection_with_1008(
    start_server: StartServer, room: str,
) -> None:
    """No hello within hello_timeout_s: hello_required, close 1008, counted; a welcomed connection stays."""
    live = await start_server(Limits(hello_timeout_s=0.2))
    async with live.clinician(room) as clinician, live.connect() as silent:
        with trio.fail_after(WAIT_S):
            error = await silent.recv()
        assert error["type"] == "error" and error["code"] == "hello_required"
        code, frames = await expect_close(silent)
        assert (code, frames) == (1008, [])
        # The clinician connected first, so its timer has run out too: it is unaffected.
        await clinician.barrier()
        await wait_for_stats(live.server, hello_timeouts=1, errors_by_code={"hello_required": 1},
                             connections_total=2, connections_open=1, lost_connections=0)


def shell_tasks() -> Counter[str]:
    """The server's tasks in this Trio run, by the shell function they run (a connection's task runs
    trio.serve_listeners' ``_run_handler``)."""
    names: Counter[str] = Counter()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task.name.startswith(("reference_server._shell.", "trio._highlevel_serve_listeners._run_handler")):
            names[task.name.rsplit(".", 1)[-1]] += 1
        stack += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return names


async def test_R45_timers_need_no_task_per_connection_and_a_connection_has_one_task(
    start_server: StartServer, room: str,
) -> None:
    """Hello deadlines, heartbeats and liveness are kept by the server's one timer task: a connection
    waiting for its hello and welcomed ones each have one task (their reader), no writer while their
    socket takes what is written; the silent one still gets its hello timeout."""
    live = await start_server(Limits(hello_timeout_s=3600.0, ping_interval_s=3600.0, ping_timeout_s=3600.0))
    async with live.connect() as silent:
        async with live.clinician(room) as clinician, live.patient(room) as patient:
            await clinician.barrier()
            await patient.barrier()
            await trio.testing.wait_all_tasks_blocked()
            assert shell_tasks() == Counter({"_run_handler": 3, "_run_timers": 1, "_flush_forever": 1,
                                             "_admit_forever": 1})
        assert silent.ws.closed is None
    assert len(live.server._timers) >= 3 * 3  # hello, ping and liveness entries of the three


async def test_R45_a_tcp_connection_without_an_http_upgrade_is_closed_after_the_hello_timeout(
    start_server: StartServer,
) -> None:
    """A socket that never sends its HTTP request does not stay open: it is closed after hello_timeout_s."""
    live = await start_server(Limits(hello_timeout_s=0.2))
    async with RawClient.open(live.url) as raw:
        with trio.fail_after(WAIT_S):
            await raw.wait_eof()
    assert live.server.statistics().connections_total == 0


async def test_R45_a_peer_that_stops_answering_pings_is_lost(start_server: StartServer, room: str) -> None:
    """A patient that completes the handshake and then goes silent (no pong) is closed as lost:
    the clinician, which answers pings, stays and sees patient_left{disconnected}."""
    live = await start_server(Limits(ping_interval_s=0.05, ping_timeout_s=0.3))
    async with live.clinician(room) as clinician, RawClient.open(live.url) as silent:
        await silent.handshake(live.url)
        await silent.send_json({"type": "hello", "role": "patient", "room": room, "name": "Test Patient"})
        joined = await clinician.recv()
        assert joined["type"] == "patient_joined"
        started = trio.current_time()
        left = await clinician.recv()
        assert left == {"type": "patient_left", "patient": joined["patient"], "reason": "disconnected"}
        assert trio.current_time() - started < WAIT_S
        erased = await clinician.recv()
        assert erased == {"type": "erased", "patient": joined["patient"], "reason": "not_in_view"}
        await clinician.barrier()  # alive well past ping_timeout_s: its pongs count
        stats = await wait_for_stats(live.server, lost_connections=1, connections_open=1, patients_present=0)
        assert stats.slow_reader_drops == 0 and stats.hello_timeouts == 0
        # The silent peer was pinged, then its TCP connection ended without a close frame.
        opcodes = []
        with trio.fail_after(WAIT_S):
            try:
                while True:
                    opcode, _ = await silent.recv_frame()
                    opcodes.append(opcode)
            except (EOFError, trio.BrokenResourceError):
                pass
        assert opcodes[0] == OP_TEXT and OP_PING in opcodes and OP_CLOSE not in opcodes


async def test_R45_with_pings_off_a_quiet_connection_is_not_lost(
    start_server: StartServer, room: str,
) -> None:
    """With pings off (ping_interval_s None) nothing asks a client for an answer: a patient who waits
    quietly for longer than ping_timeout_s stays in the queue, and so does the clinician."""
    live = await start_server(Limits(ping_interval_s=None, ping_timeout_s=0.2, hello_timeout_s=0.6))
    async with live.clinician(room) as clinician, live.patient(room) as patient:
        assert (await clinician.recv())["type"] == "patient_joined"
        # The clock: a connection without hello is closed after hello_timeout_s, three times
        # ping_timeout_s after the patient's last frame.
        async with live.connect() as clock:
            assert (await clock.recv())["code"] == "hello_required"
            assert (await expect_close(clock))[0] == 1008
        await patient.barrier()
        assert await clinician.barrier() == []  # no patient_left
        assert live.server.statistics().lost_connections == 0


# ---------------------------------------------------------------------------------------------- R42


R42_BOUNDS = {
    "frames": Limits(max_queued_frames=20, max_text_chars=16_000, rate_per_s=None, rate_burst=None,
                     ping_interval_s=None),
    "bytes": Limits(max_queued_bytes=100_000, max_text_chars=16_000, rate_per_s=None, rate_burst=None,
                    ping_interval_s=None),
}


@pytest.mark.parametrize("bound", list(R42_BOUNDS))
async def test_R42_outbound_queue_is_bounded_and_the_slow_reader_is_dropped_cleanly(
    start_server: StartServer, room: str, log_lines: LogLines, bound: str,
) -> None:
    """A patient that never reads: its queue grows one frame per message up to max_queued_frames
    (or max_queued_bytes), the next frame drops it (counted once, logged with the queue's size), its
    entry is gone, its queue released, and the others go on."""
    limits = R42_BOUNDS[bound]
    live = await start_server(limits)
    server = live.server
    connections = server._connections  # the shell's bookkeeping is what this test checks
    async with live.clinician(room) as clinician, RawClient.open(live.url, rcvbuf=1024) as slow:
        before = set(connections)
        await slow.handshake(live.url)
        await slow.send_json({"type": "hello", "role": "patient", "room": room, "name": "Test Patient"})
        slow_id = (await clinician.recv())["patient"]
        (slow_conn_id,) = set(connections) - before
        slow_conn = connections[slow_conn_id]
        async with live.patient(room) as healthy:
            assert (await clinician.recv())["type"] == "patient_joined"
            text = "x" * 15_000
            lengths: list[int] = []
            snapshot: list[int] = []
            for _ in range(5_000):
                events, answer = await clinician.request({"type": "send", "patient": slow_id, "text": text})
                assert (answer["type"], events) == ("ok", [])
                for conn in connections.values():  # the accounting holds after every cause
                    sizes = [len(f) for f in conn.queue]
                    assert conn.queued_bytes == sum(sizes)
                    assert len(sizes) <= limits.max_queued_frames
                    assert sum(sizes[:-1]) <= limits.max_queued_bytes  # what waited before the newest
                if slow_conn.end is not None:
                    break  # this send's frame was one too many
                lengths.append(len(slow_conn.queue))
                snapshot = [len(f) for f in slow_conn.queue]
            else:
                pytest.fail("the slow reader was never dropped")
            # Once the socket buffers were full, each send queued one frame, up to the bound.
            assert lengths[-len(snapshot) - 1:] == list(range(len(snapshot) + 1))
            if bound == "frames":
                assert len(snapshot) == limits.max_queued_frames
            else:
                assert sum(snapshot[:-1]) <= limits.max_queued_bytes < sum(snapshot)
                assert len(snapshot) < limits.max_queued_frames
            # The patient departs once its connection is gone (after the send's ok).
            left, erased = await clinician.recv(), await clinician.recv()
            assert left == {"type": "patient_left", "patient": slow_id, "reason": "disconnected"}
            assert erased == {"type": "erased", "patient": slow_id, "reason": "not_in_view"}
            # The dropped connection is fully forgotten, its queue released; the rest is untouched.
            await wait_until(lambda: slow_conn_id not in connections, "the dropped connection is removed")
            assert (slow_conn.end, len(slow_conn.queue), slow_conn.queued_bytes) == ("slow_reader", 0, 0)
            stats = await wait_for_stats(server, slow_reader_drops=1, connections_open=2, patients_present=1)
            assert stats.lost_connections == 0
            (dropped,) = [line for line in log_lines() if line["event"] == "connection.slow_reader_dropped"]
            assert dropped["conn"] == slow_conn_id
            assert dropped["queued_frames"] == len(snapshot) + 1
            assert sum(snapshot) < dropped["queued_bytes"] <= sum(snapshot) + max(snapshot) + 8
            # Everyone else's delivery goes on.
            await clinician.ok({"type": "send", "patient": healthy.patient_id, "text": "still there?"})
            # It moved up when the slow reader departed, then got the message.
            assert frame_types(await healthy.barrier()) == ["position", "message"]
            await healthy.ok({"type": "send", "text": "yes"})
            assert frame_types(await clinician.barrier())[0] == "message"
            await clinician.error({"type": "send", "patient": slow_id, "text": "hello?"}, "patient_gone")
        with trio.fail_after(WAIT_S):
            await slow.wait_eof()  # the server let go of the socket
    assert server.statistics().slow_reader_drops == 1


# ---------------------------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("path", ["/other", "/", "/v1/ws/extra", "/v1"])
async def test_http_requests_for_other_paths_get_404(start_server: StartServer, room: str, path: str) -> None:
    """An upgrade request for any path but /v1/ws is answered HTTP 404 and makes no connection."""
    live = await start_server()
    async with RawClient.open(live.url) as raw:
        with trio.fail_after(WAIT_S):
            status, _, _ = await raw.http_get(live.url, path)
    assert status == 404
    assert live.server.statistics().connections_total == 0
    async with live.clinician(room) as clinician:  # the server goes on serving
        await clinician.barrier()
