"""The Trio shell around the domain model: sockets in, effects out.

One task per connection: it reads the socket, parses frames (wsproto) and calls
the model synchronously, so the effects of one cause reach every connection's
queue in order before anything else runs (``_wsconn.ServerWebSocket``). Writes
are made without a task where nothing waits: the requester's frames at once, the
other connections' by one flusher task per server, once per scheduler round; a
writer task is started for a connection only while its socket is full or it is
closing, and drains its bounded outbound queue (R42). One timer task per server
keeps every hello deadline, heartbeat and liveness deadline (R45) in a heap.
``position`` pushes are coalesced and spread over scheduler rounds: a departure is one
effect, which the flusher expands once per round and room (see docs/protocol.md,
Choices, and docs/server-internals.md). New connections' handshakes, connection ends, and
reads in a connection's first seconds (the read gate, ``_readgate.py``) are let through a few per
scheduler round, so that a crowd arriving or leaving at once does not stall the sessions already
open. Shutdown (R46) closes every connection with 1001, waits at most ``close_timeout_s``, then
cancels what is left.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest

from ._codec import encode_bytes
from ._domain import Close, Effect, PositionsChanged, QueueChatModel, Send
from ._frames import WS_PATH, ClinicianWelcome, CloseCode, Erased, Error, ErrorCode, PatientWelcome, Position
from ._gcpolicy import GcPolicy
from ._limits import Limits
from ._logging import get_logger
from ._pages import serve_page_if_asked
from ._readgate import ReadGate, new_read_gate
from ._wsconn import ServerWebSocket
from .wscodec import ping_frame, text_frame

log = get_logger("queuechat.server")


def new_patient_id() -> str:
    """128 random bits, URL-safe: unguessable, and no patient data in it."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerStatistics:
    """A snapshot of the server's counters."""

    connections_open: int
    connections_total: int
    frames_in: int
    frames_out: int
    bytes_out: int
    slow_reader_drops: int
    rate_limited: int
    lost_connections: int
    hello_timeouts: int
    internal_errors: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    rooms_active: int = 0
    patients_present: int = 0
    gc_collections: list[int] = field(default_factory=lambda: [0, 0, 0])  # by generation, while serving
    gc_pause_max_ms: float = 0.0
    gc_frozen: int = 0  # objects in the permanent generation (the GC policy's freezes)


class _Counters:
    __slots__ = (
        "bytes_out",
        "connections_total",
        "errors_by_code",
        "frames_in",
        "frames_out",
        "hello_timeouts",
        "internal_errors",
        "lost_connections",
        "rate_limited",
        "slow_reader_drops",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self.slow_reader_drops = 0
        self.rate_limited = 0
        self.lost_connections = 0
        self.hello_timeouts = 0
        self.internal_errors = 0
        self.errors_by_code: dict[str, int] = {}


# Timer kinds in the server's heap; entries are (deadline, connection id, kind): plain numbers,
# which the garbage collector stops tracking, and ids are unique, so ties never compare further.
_HELLO, _PING, _LIVE = 0, 1, 2

# Position pushes materialised per scheduler round by the flusher (R30, coalesced).
_POSITIONS_PER_ROUND = 64
# New connections let into their HTTP handshake per scheduler round (the rest wait their turn).
_HANDSHAKES_PER_ROUND = 16
# Connections the peer ended, let into their close (answer, model, socket) per scheduler round.
_ENDS_PER_ROUND = 16
# A connection's first seconds, in which its reads wait their turn at the read gate, and how many
# such reads the gate lets through per scheduler round (_readgate.py).
_JUNIOR_S = 10.0
_JUNIOR_READS_PER_ROUND = 16


class _Connection:
    """One accepted WebSocket: its bounded outbound queue (R42) and its timers' state (R45)."""

    __slots__ = (
        "close_after",
        "control",
        "dirty",
        "end",
        "id",
        "last_seen",
        "max_bytes",
        "max_frames",
        "ping_in_flight",
        "position",
        "queue",
        "queued_bytes",
        "scope",
        "server",
        "writing",
        "ws",
    )

    def __init__(self, conn_id: int, ws: ServerWebSocket, limits: Limits, server: QueueChatServer) -> None:
        self.id = conn_id
        self.ws = ws
        self.server = server
        self.scope = trio.CancelScope()
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.control = b""  # a framed ping waiting to go before the next frames
        self.close_after: tuple[int, str] | None = None
        self.end: str | None = None  # why the server ended it: slow_reader, lost, shutdown
        self.writing = False  # a writer task is running
        self.dirty = False  # in the flusher's list
        self.position: Position | None = None  # the latest position not yet queued (coalesced)
        self.ping_in_flight = False
        self.last_seen = trio.current_time()
        self.max_frames = limits.max_queued_frames
        self.max_bytes = limits.max_queued_bytes

    def message(self, raw: str | bytes) -> None:
        """A whole message from the peer (called by the reader, synchronously)."""
        self.server._receive(self, raw)

    def pong(self) -> None:
        self.last_seen = trio.current_time()
        self.ping_in_flight = False

    def push(self, data: bytes) -> bool:
        """Queue one frame; False when the peer is too far behind and must be dropped (R42)."""
        if self.close_after is not None or self.end is not None:
            return True
        self.queue.append(data)
        self.queued_bytes += len(data)
        # The caller flushes once it has queued every frame of the cause.
        # The byte bound applies to what waited before this frame: an open_chat answer may pass
        # max_queued_bytes by itself (R4: the last 500 messages of up to max_text_chars each, R41)
        # and must not make a reading peer look like one that has fallen behind.
        return len(self.queue) <= self.max_frames and self.queued_bytes - len(data) <= self.max_bytes

    def flush(self, counters: _Counters) -> None:
        """Hand the queued frames to the socket now, without a task, when nothing else writes;
        what the socket does not take, or a close to make, goes to a writer task."""
        if self.writing or self.end is not None:
            return
        queue, ws = self.queue, self.ws
        if queue or self.control:
            if not ws.is_open():
                self._discard()  # closed or closing: nothing more can be sent
            else:
                data = self.control + b"".join([text_frame(f) for f in queue])
                if not ws.write_nowait(data):
                    self.start_writer()  # the lock is busy (a pong, a close): the writer waits for it
                    return
                counters.frames_out += len(queue)
                counters.bytes_out += self.queued_bytes
                self._discard()
                del data  # R13: the frames' text is not kept
        if ws.tail or self.close_after is not None:
            self.start_writer()

    def _discard(self) -> None:
        self.queue.clear()
        self.queued_bytes = 0
        self.control = b""

    def start_writer(self) -> None:
        nursery = self.server._nursery
        if not self.writing and nursery is not None and self.end is None:
            # In the server's nursery: a writer ends with its connection (the stream is closed
            # under it) or with the server.
            try:
                nursery.start_soon(self.server._writer, self)
            except RuntimeError:  # the server is past its end ("closed to new arrivals")
                return
            self.writing = True

    def push_close(self, code: int, reason: str) -> None:
        if self.close_after is None:
            self.close_after = (code, reason)
            self.start_writer()

    def drop(self, why: str) -> None:
        self.end = why
        self._discard()
        self.position = None
        self.ws.tail = b""
        self.scope.cancel()


class QueueChatServer:
    """The reference server: a :class:`QueueChatModel` behind trio-websocket.

    ``gc_freeze`` applies the garbage-collection policy of ``_gcpolicy`` (process-wide: for a
    server that has its process to itself, as ``queuechat serve``).
    """

    def __init__(
        self,
        *,
        secret: str | bytes,
        limits: Limits | None = None,
        patient_ids: Callable[[], str] = new_patient_id,
        wall_clock: Callable[[], float] | None = None,
        stats_interval_s: float | None = 60.0,
        close_timeout_s: float = 1.0,
        model_class: type[QueueChatModel] = QueueChatModel,
        gc_freeze: bool = False,
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        # model_class lets tests put a deliberately wrong model behind the real shell.
        self._model = model_class(secret=secret, new_patient_id=patient_ids, limits=self.limits)
        self._wall_clock = wall_clock
        self._wall_base = time.time()
        self._mono_base: float | None = None
        self._stats_interval_s = stats_interval_s
        self._close_timeout_s = close_timeout_s
        self._connections: dict[int, _Connection] = {}
        self._ids = itertools.count(1)
        self._counters = _Counters()
        self._stopping = False
        self._stopped = trio.Event()
        self._all_closed: trio.Event | None = None
        self._urls: list[str] = []
        self._gc = GcPolicy()
        self._gc_freeze = gc_freeze
        # The timer task's heap of (deadline, connection id, kind), and what wakes it early.
        self._timers: list[tuple[float, int, int]] = []
        self._timer_lot = trio.lowlevel.ParkingLot()
        # The flusher task's work: connections with frames to write, rooms whose positions changed
        # (slugs, in order; expanded once per round), positions to queue.
        self._dirty: list[_Connection] = []
        self._position_rooms: dict[str, None] = {}
        self._positions: deque[_Connection] = deque()
        self._flush_lot = trio.lowlevel.ParkingLot()
        # New connections waiting for their turn to handshake, ended ones for their turn to close,
        # and what wakes the admitter.
        self._admission = trio.lowlevel.ParkingLot()
        self._ends = trio.lowlevel.ParkingLot()
        self._admitter_lot = trio.lowlevel.ParkingLot()
        self._wait_to_end = self._wait_for_end_turn  # one bound method shared by every connection
        self._pings = itertools.count(1)
        self._nursery: trio.Nursery | None = None  # while serving: connections' tasks and writers
        self._read_gate: ReadGate | None = None  # while serving, on Linux

    # ------------------------------------------------------------------ public

    @property
    def urls(self) -> list[str]:
        """The ``ws://`` URLs the server listens on (after it started)."""
        return list(self._urls)

    def statistics(self) -> ServerStatistics:
        c = self._counters
        model = self._model.statistics()
        return ServerStatistics(
            connections_open=len(self._connections),
            connections_total=c.connections_total,
            frames_in=c.frames_in,
            frames_out=c.frames_out,
            bytes_out=c.bytes_out,
            slow_reader_drops=c.slow_reader_drops,
            rate_limited=c.rate_limited,
            lost_connections=c.lost_connections,
            hello_timeouts=c.hello_timeouts,
            internal_errors=c.internal_errors,
            errors_by_code=dict(c.errors_by_code),
            rooms_active=model["rooms_active"],
            patients_present=model["patients_present"],
            **self._gc.statistics(),
        )

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on TCP and serve until :meth:`shutdown`; ``started`` gives the first URL."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: Iterable[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = list(listeners)
        self._gc.start(freeze=self._gc_freeze)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                handler = self._contained(self._handle_connection)
                await nursery.start(functools.partial(
                    trio.serve_listeners, handler, listeners, handler_nursery=nursery))
                nursery.start_soon(self._run_timers)
                nursery.start_soon(self._flush_forever)
                nursery.start_soon(self._admit_forever)
                self._read_gate = new_read_gate(_JUNIOR_READS_PER_ROUND)
                if self._read_gate is not None:
                    nursery.start_soon(self._read_gate.run)
                self._urls = [_ws_url(listener) for listener in listeners]
                if self._stats_interval_s is not None:
                    nursery.start_soon(self._log_statistics_forever, self._stats_interval_s)
                log.info("server.listening", urls=self._urls, limits=self.limits.as_wire())
                task_status.started(self._urls[0] if self._urls else "")
                await self._stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = self._read_gate = None
            self._gc.stop()
        log.info("server.stopped", **_stats_fields(self.statistics()))

    def _contained(
        self, handle: Callable[[trio.abc.Stream], Awaitable[None]]
    ) -> Callable[[trio.abc.Stream], Awaitable[None]]:
        """Keep a failure inside a connection's task to that connection.

        Each connection's task runs under the server's nursery: an exception there (a bug in
        the library's parts or ours) would end the server and every session. Count it, log its
        type only, and drop that connection alone.
        """

        async def handle_connection(stream: trio.abc.Stream) -> None:
            try:
                await self._wait_for_turn()
                # A browser's plain GET of the console or the patient page (_pages.py); every
                # other request, the WebSocket endpoint's above all, goes on to its handshake.
                gate = self._read_gate
                first_bytes = None
                if gate is not None and type(stream) is trio.SocketStream:
                    first_bytes = functools.partial(gate.wait_readable, stream.socket.fileno())
                if await serve_page_if_asked(stream, self.limits.hello_timeout_s or 60.0, first_bytes):
                    return
                await handle(stream)
            except Exception as error:
                self._counters.internal_errors += 1
                leaf: BaseException = error
                while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
                    leaf = leaf.exceptions[0]
                log.error("connection.internal_error", error=type(leaf).__name__, where="websocket")
                await trio.aclose_forcefully(stream)

        return handle_connection

    async def shutdown(self) -> None:
        """R46: close every connection with 1001, wait at most the close timeout, drop the rest."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        log.info("server.shutting_down", connections=len(self._connections))
        self._all_closed = trio.Event()
        for conn in list(self._connections.values()):
            conn.push_close(CloseCode.GOING_AWAY, "server shutting down")
        if not self._connections:
            self._all_closed.set()
        with trio.move_on_after(self._close_timeout_s):
            await self._all_closed.wait()
        for conn in list(self._connections.values()):
            conn.drop("shutdown")
        self._stopped.set()

    # ------------------------------------------------------------------ per connection

    def _now(self) -> float:
        if self._wall_clock is not None:
            return self._wall_clock()
        # Monotonic from a wall-clock base: timestamps never go backwards, and follow
        # Trio's clock (virtual under MockClock).
        current = trio.current_time()
        if self._mono_base is None:
            self._mono_base = current
        return self._wall_base + (current - self._mono_base)

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        """One TCP connection's only task: the HTTP handshake, then the connection's frames."""
        ws = ServerWebSocket(stream, max_message_size=self.limits.max_frame_bytes)
        ws.wait_to_end = self._wait_to_end
        if self._read_gate is not None and type(stream) is trio.SocketStream:
            ws.read_gate = self._read_gate
            ws.junior_until = trio.current_time() + _JUNIOR_S
        try:
            # A peer that never sends its HTTP request is closed after the hello timeout.
            arrived = False
            with trio.move_on_after(self.limits.hello_timeout_s or 60.0):
                arrived = await ws.read_request()
            if arrived:
                await self._handle_request(ws.take_request())
        finally:
            if ws.closed is None and ws.is_open():
                with trio.move_on_after(self._close_timeout_s):
                    await ws.aclose()
            if type(stream) is trio.SocketStream:
                stream.socket.close()  # at once: aclose_forcefully adds a schedule point per connection
            else:
                await trio.aclose_forcefully(stream)

    async def _handle_request(self, request: WebSocketRequest) -> None:
        """One connection, from handshake to close; nothing that goes wrong here reaches other sessions."""
        ws: ServerWebSocket | None = None
        try:
            if request.path != WS_PATH:
                await request.reject(404, body=b"queuechat speaks WebSocket at /v1/ws\n")
                return
            ws = await request.accept()  # type: ignore[assignment]  # the ServerWebSocket itself
            assert isinstance(ws, ServerWebSocket)
            del request  # not needed after the handshake (an object fewer per connection)
            if self._stopping:
                with trio.move_on_after(self._close_timeout_s):
                    await ws.aclose(CloseCode.GOING_AWAY, "server shutting down")
                return
            await self._serve_connection(ws)
        except ConnectionClosed:
            return  # the peer went away during the handshake
        except Exception as error:
            # A bug, not the peer's doing: count it, log its type only (an exception's text
            # could quote a frame), and close this connection alone with 1011.
            self._counters.internal_errors += 1
            log.error("connection.internal_error", error=type(error).__name__)
            if ws is not None:
                with trio.move_on_after(self._close_timeout_s):
                    await ws.aclose(1011, "internal error")

    async def _serve_connection(self, ws: ServerWebSocket) -> None:
        conn = _Connection(next(self._ids), ws, self.limits, self)
        self._connections[conn.id] = conn
        try:
            with conn.scope:
                self._counters.connections_total += 1
                self._model.connect(conn.id, self._now())
                if log.is_enabled_for(logging.DEBUG):  # the peer's address costs a system call
                    log.debug("connection.opened", conn=conn.id, peer=str(ws.remote))
                self._start_timers(conn)
                ws.on_message = conn.message
                ws.on_pong = conn.pong
                await ws.read_frames()
        finally:
            ws.on_message = ws.on_pong = _nothing
            self._connections.pop(conn.id, None)
            if self._all_closed is not None and not self._connections:
                self._all_closed.set()
            self._apply(self._model.disconnected(conn.id, self._now()))
            if conn.end is not None:
                # Dropped, lost or past the shutdown window: no close handshake to wait for.
                await ws.abort()
            closed = ws.closed
            log.debug(
                "connection.closed", conn=conn.id, end=conn.end,
                code=closed.code if closed is not None else None,
            )

    async def _wait_for_turn(self) -> None:
        """A new connection waits here for its turn to read its request (a page's or the HTTP
        upgrade) and handshake: at most _HANDSHAKES_PER_ROUND a scheduler round, so that 2,000
        connections arriving at once do not put 2,000 reads and handshakes in one round ahead of
        everyone else's messages. It waits before its first read: a connection waiting for its
        request would otherwise be woken with all the others when the requests arrive."""
        self._admitter_lot.unpark()
        await self._admission.park()

    async def _wait_for_end_turn(self) -> None:
        """A connection its peer ended waits here for its turn to close: at most _ENDS_PER_ROUND a
        scheduler round, so that 2,000 peers leaving at once do not put 2,000 closes (close
        frames, model departures, socket closes) in one round ahead of everyone else's messages."""
        self._admitter_lot.unpark()
        await self._ends.park()

    async def _admit_forever(self) -> None:
        while True:
            if not self._admission and not self._ends:
                await self._admitter_lot.park()
            self._admission.unpark(count=_HANDSHAKES_PER_ROUND)
            self._ends.unpark(count=_ENDS_PER_ROUND)
            await trio.lowlevel.checkpoint()

    def _receive(self, conn: _Connection, raw: str | bytes) -> None:
        """One message from a connection's peer, handed to the model in the reader's own task."""
        conn.last_seen = trio.current_time()
        self._counters.frames_in += 1
        if conn.close_after is not None:
            return  # closing: nothing more from this connection reaches the model
        max_bytes = self.limits.max_frame_bytes
        # trio-websocket bounds a text message in characters; R41 bounds it in bytes. A text
        # of n characters is at most 4n bytes, so only long ones need encoding to check.
        if len(raw) > max_bytes // 4 and len(raw.encode() if isinstance(raw, str) else raw) > max_bytes:
            conn.push_close(CloseCode.TOO_BIG, f"frame over {max_bytes} bytes")
            return
        self._apply(self._model.receive(conn.id, raw, self._now()), conn)

    def _apply(self, effects: list[Effect], requester: _Connection | None = None) -> None:
        """Queue the effects of one cause, then write the requester's frames at once; the other
        connections' frames go to the flusher, which writes what several causes queued for one
        connection (e.g. a clinician with many patients) in one write per scheduler round."""
        try:
            self._queue_effects(effects)
        finally:
            if requester is not None and requester.dirty:
                requester.flush(self._counters)
            if self._dirty or self._positions or self._position_rooms:
                self._flush_lot.unpark()

    def _queue_effects(self, effects: list[Effect]) -> None:
        connections, counters = self._connections, self._counters
        for effect in effects:
            if isinstance(effect, PositionsChanged):
                self._position_rooms[effect.room] = None  # expanded by the flusher
                continue
            conn = connections.get(effect.conn)
            if conn is None:
                continue
            if type(effect) is Send:
                frame = effect.frame
                if type(frame) is Position:
                    # R30, coalesced: the latest position waits for the flusher (or for the next
                    # frame to this connection, which it goes before).
                    if conn.position is None:
                        self._positions.append(conn)
                    conn.position = frame
                    continue
                if type(frame) is Error:
                    counters.errors_by_code[frame.code] = counters.errors_by_code.get(frame.code, 0) + 1
                    if frame.code == ErrorCode.RATE_LIMITED:
                        counters.rate_limited += 1
                elif type(frame) in _LOGGED_FRAMES:
                    _log_frame(conn.id, frame)
                if conn.position is not None:
                    self._push(conn, conn.position)
                    conn.position = None
                self._push(conn, frame)
            else:
                assert isinstance(effect, Close)
                conn.position = None  # nothing more reaches a closing connection's peer
                conn.push_close(effect.code, effect.reason)

    def _push(self, conn: _Connection, frame: Any) -> None:
        if not conn.push(encode_bytes(frame)):
            self._counters.slow_reader_drops += 1
            log.warning("connection.slow_reader_dropped", conn=conn.id,
                        queued_frames=len(conn.queue), queued_bytes=conn.queued_bytes)
            conn.drop("slow_reader")
        elif not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)

    async def _flush_forever(self) -> None:
        """The server's one flusher: writes what causes queued for connections other than their
        requester, expands the rooms whose positions changed (once per round, however many
        departures), and queues coalesced positions a slice per scheduler round."""
        while True:
            await self._flush_lot.park()
            while True:
                self._flush_dirty()
                if self._position_rooms:
                    self._expand_positions()
                if not self._positions:
                    break
                self._queue_positions(_POSITIONS_PER_ROUND)
                self._flush_dirty()
                if self._positions:
                    await trio.lowlevel.checkpoint()  # the rest after everyone else's turn

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        counters = self._counters
        for conn in dirty:
            conn.dirty = False
            conn.flush(counters)

    def _expand_positions(self) -> None:
        """Each changed room's pushes, as pending positions (a later frame to the patient, or the
        slices below, send them); the model has marked them told."""
        rooms, self._position_rooms = self._position_rooms, {}
        model = self._model
        for room in rooms:
            self._queue_effects(model.pending_positions(room))

    def _queue_positions(self, n: int) -> None:
        positions = self._positions
        while positions and n:
            conn = positions.popleft()
            frame, conn.position = conn.position, None
            if frame is not None and conn.end is None:
                self._push(conn, frame)
                n -= 1

    async def _writer(self, conn: _Connection) -> None:
        """A connection's writer, while its socket is full or it is closing: drains the queue, then
        makes the close if one is due, and ends."""
        ws, queue, counters = conn.ws, conn.queue, self._counters
        try:
            while True:
                if queue or conn.control or ws.tail:
                    n, size = len(queue), conn.queued_bytes
                    data = conn.control + b"".join([text_frame(f) for f in queue])
                    conn._discard()
                    try:
                        await ws.write(data)
                    except ConnectionClosed:
                        return
                    counters.frames_out += n
                    counters.bytes_out += size
                    del data  # R13: sent frames (message text) are not kept while waiting
                elif conn.close_after is not None:
                    code, reason = conn.close_after
                    with trio.move_on_after(self._close_timeout_s):
                        await ws.close_with(code, reason)
                    return
                else:
                    return
        finally:
            conn.writing = False

    # ------------------------------------------------------------------ timers (R45)

    def _start_timers(self, conn: _Connection) -> None:
        now, limits = trio.current_time(), self.limits
        if limits.hello_timeout_s is not None:
            self._add_timer(now + limits.hello_timeout_s, conn.id, _HELLO)
        if limits.ping_interval_s is not None:
            self._add_timer(now + limits.ping_interval_s, conn.id, _PING)
            # R45: "not answered" needs a question; with pings off, a quiet connection is not lost.
            if limits.ping_timeout_s is not None:
                self._add_timer(now + limits.ping_timeout_s, conn.id, _LIVE)

    def _add_timer(self, deadline: float, conn_id: int, kind: int) -> None:
        timers = self._timers
        if not timers or deadline < timers[0][0]:
            self._timer_lot.unpark()  # sleeping until a later deadline (or none)
        heapq.heappush(timers, (deadline, conn_id, kind))

    async def _run_timers(self) -> None:
        """Every connection's hello deadline, heartbeat and liveness deadline, in one task and one heap;
        and the GC policy's tick, when it is on."""
        timers, gc_every = self._timers, self._gc.freeze_every_s
        next_gc = trio.current_time() + gc_every
        while True:
            now = trio.current_time()
            self._fire_timers(now)
            if self._gc_freeze and now >= next_gc:
                self._gc.tick()
                next_gc = now + gc_every
            deadline = timers[0][0] if timers else math.inf
            if self._gc_freeze:
                deadline = min(deadline, next_gc)
            with trio.move_on_at(deadline):
                await self._timer_lot.park()

    def _fire_timers(self, now: float) -> None:
        """The timers due at ``now`` (a function of its own: no connection stays in the task's locals)."""
        timers, connections, limits = self._timers, self._connections, self.limits
        while timers and timers[0][0] <= now:
            _, conn_id, kind = heapq.heappop(timers)
            conn = connections.get(conn_id)
            if conn is None or conn.end is not None:
                continue
            if kind == _HELLO:
                effects = self._model.hello_timed_out(conn.id)
                if effects:  # empty once the connection said hello
                    self._counters.hello_timeouts += 1
                self._apply(effects)
            elif kind == _PING:
                self._ping(conn)
                assert limits.ping_interval_s is not None
                heapq.heappush(timers, (now + limits.ping_interval_s, conn_id, _PING))
            else:
                assert limits.ping_timeout_s is not None
                due = conn.last_seen + limits.ping_timeout_s
                if due > now:
                    heapq.heappush(timers, (due, conn_id, _LIVE))
                else:
                    self._counters.lost_connections += 1  # the liveness deadline passed (R45)
                    conn.drop("lost")

    def _ping(self, conn: _Connection) -> None:
        if conn.ping_in_flight or conn.close_after is not None or not conn.ws.is_open():
            # The last ping is unanswered: one in flight is enough (with ping_timeout_s off, a
            # silent peer otherwise gathered a ping every interval, forever).
            return
        conn.ping_in_flight = True
        conn.control += ping_frame(next(self._pings).to_bytes(8, "big"))
        conn.flush(self._counters)

    async def _log_statistics_forever(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s)
            log.info("server.statistics", **_stats_fields(self.statistics()))


def _nothing(_: Any = None) -> None:
    """What a connection's reader calls once the connection is forgotten."""


_LOGGED_FRAMES = (ClinicianWelcome, PatientWelcome, Erased)


def _log_frame(conn: int, frame: Any) -> None:
    # ids and reasons only: never the name in a welcome or patient_joined.
    if type(frame) is PatientWelcome:
        log.info("session.patient_checked_in", conn=conn, patient=frame.patient, position=frame.position)
    elif type(frame) is ClinicianWelcome:
        log.info("session.clinician_connected", conn=conn, room=frame.room, queue=len(frame.queue))
    else:
        log.info("conversation.erased", conn=conn, patient=frame.patient, reason=frame.reason)


def _stats_fields(stats: ServerStatistics) -> dict[str, Any]:
    fields = {name: getattr(stats, name) for name in stats.__dataclass_fields__}
    return fields


def _ws_url(listener: trio.abc.Listener[Any]) -> str:
    socket = getattr(listener, "socket", None)
    if socket is None:
        return "memory://" + WS_PATH
    host, port = socket.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{port}{WS_PATH}"
