"""A small, fast WebSocket load client: raw non-blocking sockets and one epoll loop.

The driver needs a client that costs much less per round trip than the
server under test, so that the server (one core) is the bottleneck and the
client (the other core) is not. A trio-websocket client costs about as much
per frame as the server does, and a relay round trip makes the client read
four frames; so this client frames by hand (RFC 6455: masked client frames,
precomputed per connection; unmasked server frames parsed with a few
slices) and never decodes JSON on the hot path: frames are recognised by
their prefix (msgspec writes the ``type`` tag first).

Roles of a connection:
- ``sender``: keeps ``window`` requests in flight, one new request per reply
  (an echo in mode ``echo``, the ``ok`` of a ``send`` in mode ``relay``);
  a round trip is counted when the reply arrives;
- ``reader``: a clinician in mode ``relay``: reads and counts its frames
  (message, unread, notify) so that the server is never blocked by a slow
  reader.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from reference_server.protocol import DEVELOPMENT_SECRET, clinician_token
from reference_server.wscodec import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    OPCODE_BITS,
    Frame,
    FrameParser,
    client_frame,
    close_code,
    is_accepted,
    new_key,
    split_head,
    upgrade_request,
)

TEXT = "x" * 64  # the message text: 64 characters, 64 bytes
REQUEST = json.dumps({"type": "send", "text": TEXT}, separators=(",", ":")).encode()

OK_PREFIX = b'{"type":"ok"'
MESSAGE_PREFIX = b'{"type":"message"'
UNREAD_PREFIX = b'{"type":"unread"'
NOTIFY_PREFIX = b'{"type":"notify"'


class BenchError(Exception):
    pass


class _Conn:
    __slots__ = ("counts", "frame", "index", "inflight", "parser", "pending", "role", "sent_at", "sock")

    def __init__(self, sock: socket.socket, role: str, index: int) -> None:
        self.sock = sock
        self.role = role
        self.index = index
        self.parser = FrameParser(masked=False)
        self.pending: list[Frame] = []  # frames read during setup and not yet handled
        self.frame = client_frame(REQUEST)  # masked once, sent again and again
        self.sent_at: list[float] = []
        self.inflight = 0
        self.counts: dict[str, int] = {}

    def frames(self, data: bytes) -> list[Frame]:
        """Whole server frames in what was read so far; the rest stays in the parser."""
        frames = self.parser.feed(data)
        if self.parser.error is not None:
            raise BenchError(str(self.parser.error))
        if self.pending:
            frames, self.pending = self.pending + frames, []
        return frames


def _handshake(sock: socket.socket, port: int, path: str) -> bytes:
    key = new_key()
    sock.sendall(upgrade_request(f"127.0.0.1:{port}", path, key))
    data = b""
    while (split := split_head(data)) is None:
        chunk = sock.recv(4096)
        if not chunk:
            raise BenchError("server closed during the handshake")
        data += chunk
    head, rest = split
    if not head.startswith(b"HTTP/1.1 101"):
        raise BenchError(f"handshake refused: {head.splitlines()[0]!r}")
    if not is_accepted(head, key):
        raise BenchError("bad Sec-WebSocket-Accept")
    return rest


def _connect(port: int, path: str, role: str, index: int) -> _Conn:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = _Conn(sock, role, index)
    conn.pending = conn.frames(_handshake(sock, port, path))
    return conn


def _recv_json(conn: _Conn) -> dict[str, Any]:
    """Blocking, setup only: the next text frame as JSON (the frames after it stay pending)."""
    while not conn.pending:
        chunk = conn.sock.recv(65536)
        if not chunk:
            raise BenchError("server closed during setup")
        conn.pending = conn.frames(chunk)
    first, payload = conn.pending.pop(0)
    if first & OPCODE_BITS != OP_TEXT:
        raise BenchError(f"setup: unexpected opcode {first & OPCODE_BITS}")
    return json.loads(payload)  # type: ignore[no-any-return]


def _send_json(conn: _Conn, obj: dict[str, Any]) -> None:
    conn.sock.sendall(client_frame(json.dumps(obj).encode()))


@dataclass
class Plan:
    mode: str  # "echo" or "relay"
    port: int
    rooms: list[int]  # relay: the room numbers this process drives
    patients_per_room: int
    echo_senders: int  # echo: connections that send
    echo_idle: int  # echo: connections that stay open and idle
    window: int
    run_tag: str


@dataclass
class Result:
    round_trips: int = 0  # completed inside the measurement window
    round_trips_total: int = 0
    rtt_samples: list[float] = field(default_factory=list)
    reader_frames: dict[str, int] = field(default_factory=dict)
    other_frames: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    connections: int = 0


def setup(plan: Plan) -> list[_Conn]:
    """Open every connection and, in relay mode, say hello (blocking)."""
    conns: list[_Conn] = []
    if plan.mode == "echo":
        for i in range(plan.echo_senders):
            conns.append(_connect(plan.port, "/", "sender", i))
        for i in range(plan.echo_idle):
            conns.append(_connect(plan.port, "/", "idle", i))
        return conns
    for r in plan.rooms:
        room = f"bench-{plan.run_tag}-{r}"
        clinician = _connect(plan.port, "/v1/ws", "reader", r)
        _send_json(clinician, {"type": "hello", "role": "clinician", "room": room,
                               "token": clinician_token(DEVELOPMENT_SECRET, room)})
        welcome = _recv_json(clinician)
        if welcome.get("type") != "welcome" or welcome["chat_box"]["state"] != "closed" \
                or not welcome["settings"]["chat_notifications"]:
            raise BenchError(f"clinician welcome: {welcome.get('type')} {welcome.get('code')}")
        conns.append(clinician)
        for p in range(plan.patients_per_room):
            patient = _connect(plan.port, "/v1/ws", "sender", p)
            _send_json(patient, {"type": "hello", "role": "patient", "room": room, "name": f"p{p}"})
            welcome = _recv_json(patient)
            if welcome.get("type") != "welcome":
                raise BenchError(f"patient welcome: {welcome.get('type')} {welcome.get('code')}")
            conns.append(patient)
    return conns


def run(plan: Plan, conns: list[_Conn], t_start: float, t_window: float, t_end: float,
        drain_s: float = 1.0) -> Result:
    """Drive the load from ``t_start``; count round trips completed in [t_window, t_end)."""
    result = Result(connections=len(conns))
    sel = selectors.DefaultSelector()
    for conn in conns:
        conn.sock.setblocking(False)
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    perf = time.perf_counter
    mono = time.monotonic
    # perf_counter and monotonic are one clock on Linux; convert the bounds once anyway.
    offset = perf() - mono()
    p_window, p_end = t_window + offset, t_end + offset
    rtts = result.rtt_samples
    echo = plan.mode == "echo"
    counted = 0
    total = 0
    reader_counts = {"message": 0, "unread": 0, "notify": 0, "other": 0}
    other: dict[str, int] = {}
    while mono() < t_start:
        time.sleep(min(0.01, max(0.0, t_start - mono())))
    now = perf()
    for conn in conns:
        if conn.role == "sender":
            for _ in range(plan.window):
                conn.sent_at.append(now)
                conn.sock.send(conn.frame)
            conn.inflight = plan.window
    sending = True
    stop_at = p_end + drain_s
    select = sel.select
    while True:
        now = perf()
        if sending and now >= p_end:
            sending = False
        if not sending:
            if now >= stop_at:
                break
            if not any(c.inflight for c in conns) and (echo or _readers_caught_up(reader_counts, total)):
                break
        for key, _ in select(0.05):
            conn = key.data
            try:
                data = conn.sock.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                raise BenchError(f"server closed a {conn.role} connection")
            frames = conn.frames(data)
            if not frames:
                continue
            now = perf()
            if conn.role == "sender":
                sock = conn.sock
                for first, payload in frames:
                    if first & OPCODE_BITS != OP_TEXT:
                        _control(conn, first & OPCODE_BITS, payload)
                        continue
                    if echo:
                        if payload != REQUEST:
                            raise BenchError("echo differs from the request")
                    elif not payload.startswith(OK_PREFIX):
                        kind = json.loads(payload).get("type", "?")
                        if kind == "error":
                            raise BenchError(f"server answered error: {json.loads(payload).get('code')}")
                        other[kind] = other.get(kind, 0) + 1
                        continue
                    sent = conn.sent_at.pop(0)
                    total += 1
                    if p_window <= now < p_end:
                        counted += 1
                        rtts.append(now - sent)
                    if sending:
                        conn.sent_at.append(now)
                        sock.send(conn.frame)
                    else:
                        conn.inflight -= 1
            else:
                for first, payload in frames:
                    if first & OPCODE_BITS != OP_TEXT:
                        _control(conn, first & OPCODE_BITS, payload)
                    elif payload.startswith(MESSAGE_PREFIX):
                        reader_counts["message"] += 1
                    elif payload.startswith(UNREAD_PREFIX):
                        reader_counts["unread"] += 1
                    elif payload.startswith(NOTIFY_PREFIX):
                        reader_counts["notify"] += 1
                    else:
                        reader_counts["other"] += 1
    for conn in conns:
        sel.unregister(conn.sock)
        conn.sock.close()
    sel.close()
    result.round_trips = counted
    result.round_trips_total = total
    result.reader_frames = reader_counts
    result.other_frames = other
    if any(c.inflight for c in conns):
        result.errors.append("some requests were still unanswered after the drain")
    if not echo:
        for kind in ("message", "unread", "notify"):
            if reader_counts[kind] != total:
                result.errors.append(f"clinicians read {reader_counts[kind]} {kind} frames for {total} sends")
    return result


def _readers_caught_up(counts: dict[str, int], total: int) -> bool:
    return counts["message"] >= total and counts["unread"] >= total and counts["notify"] >= total


def _control(conn: _Conn, opcode: int, payload: bytes) -> None:
    if opcode == OP_PING:
        conn.sock.send(client_frame(payload, OP_PONG))
    elif opcode == OP_CLOSE:
        code = close_code(payload) if len(payload) >= 2 else None
        raise BenchError(f"server closed a {conn.role} connection with {code}")
    elif opcode != OP_PONG:
        raise BenchError(f"unexpected opcode {opcode}")
