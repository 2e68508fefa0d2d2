"""Many WebSocket clients in one thread: non-blocking sockets and one epoll loop (soak, capacity, hostile).

A Trio client per connection costs about as much per frame as the server does;
at 10,000 connections and thousands of frames a second the load generator must
cost much less than the server, so it is a plain ``selectors`` loop here.
Frames are built with the project's codec (masked, as RFC 6455 asks of clients)
and read with ``tests.support.rawws.MessageReader``; only ``message`` frames are decoded (for
their ``client_ts``), the rest are counted by their ``type`` prefix.

Delivery latency: every ``send`` carries ``client_ts`` = this process's
``perf_counter`` in milliseconds; the server copies it into the ``message``
event (R1), and the receiving connection (in this same process) takes the
difference on arrival.
"""

from __future__ import annotations

import contextlib
import json
import random
import resource
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reference_server.wscodec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, client_frame
from tests.support.rawws import Handshake, MessageReader, close_frame, json_frame, parse_url

TEXT = "steady clinic load " * 3  # 57 characters


def now_ms() -> float:
    return time.perf_counter() * 1000.0


class Conn:
    __slots__ = ("buf", "handshake", "name", "on_close", "out", "patient_id", "patients", "reader", "role",
                 "room", "sock", "state", "token", "welcome")

    def __init__(self, role: str, room: str, name: str = "", token: str = "") -> None:
        self.role, self.room, self.name, self.token = role, room, name, token
        self.sock: socket.socket | None = None
        self.state = "new"  # new -> connecting -> handshake -> hello -> open -> closed
        self.reader = MessageReader()
        self.handshake: Handshake | None = None
        self.out = bytearray()
        self.patient_id = ""
        self.patients: list[str] = []  # a clinician's present patients
        self.welcome: dict[str, Any] = {}
        self.buf = b""
        self.on_close: Callable[[Conn, int | None], None] | None = None


@dataclass
class Tally:
    """What a swarm saw; ``latencies_ms`` is reset by whoever samples it."""

    frames: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0
    connect_failures: int = 0


class Swarm:
    def __init__(self, url: str) -> None:
        self.host, self.port, self.path = parse_url(url)
        self.sel = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.open_patients: list[Conn] = []
        self.open_clinicians: list[Conn] = []
        self.pending: list[Conn] = []  # waiting to be connected (bounded in flight)
        self.in_flight = 0
        self.max_in_flight = 400
        self.tally = Tally()
        self.rng = random.Random(7)

    # ------------------------------------------------------------------ connections

    def add(self, conn: Conn) -> Conn:
        self.conns.append(conn)
        self.pending.append(conn)
        return conn

    def _start(self, conn: Conn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock = sock
        conn.state = "connecting"
        self.in_flight += 1
        try:
            sock.connect((self.host, self.port))
        except BlockingIOError:
            pass
        except OSError:
            self._fail(conn)
            return
        self.sel.register(sock, selectors.EVENT_WRITE, conn)

    def _fail(self, conn: Conn) -> None:
        self.tally.connect_failures += 1
        self._closed(conn, None)

    def _closed(self, conn: Conn, code: int | None) -> None:
        if conn.state in ("connecting", "handshake", "hello"):
            self.in_flight -= 1
        was_open = conn.state == "open"
        conn.state = "closed"
        if conn.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(conn.sock)
            conn.sock.close()
        if was_open:
            group = self.open_patients if conn.role == "patient" else self.open_clinicians
            if conn in group:
                group.remove(conn)
        self.tally.closes[str(code)] += 1
        if conn.on_close is not None:
            conn.on_close(conn, code)

    def _write(self, conn: Conn, data: bytes) -> None:
        sock = conn.sock
        if sock is None or conn.state == "closed":
            return
        if conn.out:
            conn.out += data
            return
        try:
            n = sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._closed(conn, 1006)
            return
        if n < len(data):
            conn.out += data[n:]
            self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def send(self, conn: Conn, frame: dict[str, Any]) -> None:
        self._write(conn, json_frame(frame))
        self.tally.sent += 1

    def close(self, conn: Conn) -> None:
        if conn.state == "open":
            self._write(conn, close_frame(1000))
        self._closed(conn, 1000)

    def close_all(self) -> None:
        for conn in list(self.conns):
            if conn.state != "closed":
                self.close(conn)
        self.conns = [c for c in self.conns if c.state != "closed"]

    # ------------------------------------------------------------------ the loop

    def step(self, timeout: float) -> None:
        while self.pending and self.in_flight < self.max_in_flight:
            self._start(self.pending.pop())
        for key, mask in self.sel.select(timeout):
            conn: Conn = key.data
            if conn.state == "closed":
                continue
            if mask & selectors.EVENT_WRITE:
                self._on_writable(conn)
            if mask & selectors.EVENT_READ and conn.state != "closed":
                self._on_readable(conn)

    def _on_writable(self, conn: Conn) -> None:
        sock = conn.sock
        assert sock is not None
        if conn.state == "connecting":
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._fail(conn)
                return
            conn.handshake = Handshake(self.host, self.port, self.path)
            conn.state = "handshake"
            self.sel.modify(sock, selectors.EVENT_READ, conn)
            self._write(conn, conn.handshake.request)
            return
        if conn.out:
            try:
                n = sock.send(conn.out)
            except BlockingIOError:
                return
            except OSError:
                self._closed(conn, 1006)
                return
            del conn.out[:n]
        if not conn.out:
            self.sel.modify(sock, selectors.EVENT_READ, conn)

    def _on_readable(self, conn: Conn) -> None:
        sock = conn.sock
        assert sock is not None
        try:
            data = sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._closed(conn, 1006)
            return
        if conn.state == "handshake":
            assert conn.handshake is not None
            got = conn.handshake.feed(data)
            if got is None:
                return
            status, data = got
            if status != 101:
                self._fail(conn)
                return
            conn.state = "hello"
            hello: dict[str, Any] = {"type": "hello", "role": conn.role, "room": conn.room}
            if conn.role == "clinician":
                hello["token"] = conn.token
            else:
                hello["name"] = conn.name
            self._write(conn, json_frame(hello))
            if not data:
                return
        for frame in conn.reader.feed(data):
            if frame.opcode == OP_TEXT:
                self._on_text(conn, frame.payload)
            elif frame.opcode == OP_PING:
                self._write(conn, client_frame(frame.payload, OP_PONG))
            elif frame.opcode == OP_CLOSE:
                self._write(conn, client_frame(frame.payload[:2], OP_CLOSE))
                self._closed(conn, frame.close_code)
                return

    def _on_text(self, conn: Conn, payload: bytes) -> None:
        tally = self.tally
        kind = payload[9:payload.index(b'"', 9)].decode() if payload.startswith(b'{"type":"') else "?"
        tally.frames[kind] += 1
        if kind == "message":
            received = now_ms()
            obj = json.loads(payload)
            ts = obj.get("client_ts")
            if isinstance(ts, int | float):
                tally.latencies_ms.append(received - ts)
        elif kind == "welcome":
            obj = json.loads(payload)
            conn.welcome = obj
            conn.state = "open"
            self.in_flight -= 1
            if conn.role == "patient":
                conn.patient_id = obj["patient"]
                self.open_patients.append(conn)
            else:
                conn.patients = [entry["patient"] for entry in obj["queue"]]
                self.open_clinicians.append(conn)
        elif kind == "patient_joined":
            conn.patients.append(json.loads(payload)["patient"])
        elif kind == "patient_left":
            pid = json.loads(payload)["patient"]
            if pid in conn.patients:
                conn.patients.remove(pid)
        elif kind == "error":
            tally.errors[json.loads(payload).get("code", "?")] += 1

    # ------------------------------------------------------------------ helpers

    def wait_open(self, timeout_s: float) -> bool:
        """Run the loop until no connection is still on its way (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.pending and self.in_flight == 0:
                return True
            self.step(0.05)
        return False

    def drive(self, seconds: float, msgs_per_s: float, *, patient_share: float = 0.5,
              tick: Callable[[float], None] | None = None) -> int:
        """Steady messages for ``seconds``: a patient to its clinician or a clinician to a patient."""
        start = time.perf_counter()
        sent = 0
        rng = self.rng
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return sent
            due = int(elapsed * msgs_per_s) - sent
            for _ in range(min(due, 1000)):
                if rng.random() < patient_share and self.open_patients:
                    conn = rng.choice(self.open_patients)
                    self.send(conn, {"type": "send", "text": TEXT, "client_ts": round(now_ms(), 3)})
                else:
                    clinicians = self.open_clinicians
                    if not clinicians:
                        continue
                    conn = rng.choice(clinicians)
                    if not conn.patients:
                        continue
                    self.send(conn, {"type": "send", "patient": rng.choice(conn.patients), "text": TEXT,
                                     "client_ts": round(now_ms(), 3)})
                sent += 1
            if tick is not None:
                tick(elapsed)
            self.step(0.001)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def raise_nofile(target: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(target, hard) if hard != resource.RLIM_INFINITY else target
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
