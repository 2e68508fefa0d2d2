"""The Trio shell around the domain model: sockets in, effects out.

One task group per connection, owned by the connection's handler: a reader
(this handler's own task), a writer draining a bounded outbound queue (R42),
a hello timer and a heartbeat (R45). The model is called synchronously from
the reader, so the effects of one cause reach every connection's queue in
order before anything else runs. Shutdown (R46) closes every connection with
1001, waits at most ``close_timeout_s``, then cancels what is left.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from ._codec import encode_bytes
from ._domain import Close, Effect, QueueChatModel, Send
from ._frames import WS_PATH, ClinicianWelcome, CloseCode, Erased, Error, ErrorCode, PatientWelcome
from ._limits import Limits
from ._logging import get_logger
from ._pages import serve_page_if_asked

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


class _Connection:
    """One accepted WebSocket and its bounded outbound queue."""

    __slots__ = (
        "close_after",
        "end",
        "hello_scope",
        "id",
        "max_bytes",
        "max_frames",
        "ping_timeout",
        "queue",
        "queued_bytes",
        "scope",
        "tail",
        "wakeup",
        "ws",
    )

    def __init__(self, conn_id: int, ws: WebSocketConnection, limits: Limits) -> None:
        self.id = conn_id
        self.ws = ws
        self.scope = trio.CancelScope()
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.tail = b""  # framed bytes a socket took only part of (flush), for the writer to finish
        # trio-websocket's own writes (pongs, close replies) take this lock too: whoever takes
        # it next must finish a pending tail first, or their bytes would land inside a frame.
        ws._stream_lock = _TailFirstLock(ws._stream_lock, self)  # type: ignore[assignment]
        self.close_after: tuple[int, str] | None = None
        self.wakeup = trio.lowlevel.ParkingLot()
        self.end: str | None = None  # why the server ended it: dropped, lost, shutdown
        # The hello timer's scope, until the connection is welcomed: then the timer has nothing
        # left to do and is cancelled rather than left sleeping out hello_timeout_s.
        self.hello_scope: trio.CancelScope | None = None
        self.max_frames = limits.max_queued_frames
        self.max_bytes = limits.max_queued_bytes
        # R45: "not answered" needs a question; with pings off, a quiet connection is not lost.
        self.ping_timeout = limits.ping_timeout_s if limits.ping_interval_s is not None else None
        self.alive()

    def alive(self) -> None:
        if self.ping_timeout is not None:
            self.scope.deadline = trio.current_time() + self.ping_timeout

    def push(self, data: bytes) -> bool:
        """Queue one frame; False when the peer is too far behind and must be dropped (R42)."""
        if self.close_after is not None or self.end is not None:
            return True
        self.queue.append(data)
        self.queued_bytes += len(data)
        # The caller flushes (below) once it has queued every frame of the cause.
        # The byte bound applies to what waited before this frame: an open_chat answer may pass
        # max_queued_bytes by itself (R4: the last 500 messages of up to max_text_chars each, R41)
        # and must not make a reading peer look like one that has fallen behind.
        return len(self.queue) <= self.max_frames and self.queued_bytes - len(data) <= self.max_bytes

    def flush(self, counters: _Counters) -> None:
        """Hand the queued frames on: written at once when the writer is parked and the socket
        takes them (one trip of the writer through the scheduler less per batch), else by the
        writer, woken here. Order is kept: the writer is parked, so it holds nothing unsent."""
        queue, ws, writer = self.queue, self.ws, self.wakeup
        if not queue:
            return
        if writer and not ws._stream_lock.locked() and ws.closed is None:
            proto = ws._wsproto.connection
            if proto is not None and proto.state is ConnectionState.OPEN and not proto._proto.extensions:
                data = b"".join([_text_frame(f) for f in queue])
                sent = _send_nowait(ws._stream, data)
                if sent:
                    counters.frames_out += len(queue)
                    counters.bytes_out += self.queued_bytes
                    queue.clear()
                    self.queued_bytes = 0
                    if sent == len(data):
                        return
                    self.tail = data[sent:]
        writer.unpark()

    def push_close(self, code: int, reason: str) -> None:
        if self.close_after is None:
            self.close_after = (code, reason)
            self.wakeup.unpark()

    def drop(self, why: str) -> None:
        self.end = why
        self.queue.clear()
        self.queued_bytes = 0
        self.tail = b""
        self.scope.cancel()


class _TailFirstLock:
    """The connection's stream lock, which writes a pending partial frame before anything else.

    ``_Connection.flush`` writes without waiting and may leave the end of a frame (``tail``)
    for the writer task; until it is written, no other bytes may go on the stream.
    """

    def __init__(self, lock: trio.StrictFIFOLock, conn: _Connection) -> None:
        self._lock = lock
        self._conn = conn

    def locked(self) -> bool:
        return self._lock.locked()

    def acquire_nowait(self) -> None:
        self._lock.acquire_nowait()

    async def acquire(self) -> None:
        await self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        tail = self._conn.tail
        if tail:
            self._conn.tail = b""
            try:
                await self._conn.ws._stream.send_all(tail)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the caller's own write meets the same broken stream and reports it
            except BaseException:
                self._lock.release()
                raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


# RFC 6455 5.2: FIN + opcode 1 (text), no mask bit, then the payload length.
_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]


def _text_frame(payload: bytes) -> bytes:
    """One unmasked text frame around ``payload`` (UTF-8), as wsproto frames it."""
    n = len(payload)
    if n < 126:
        return _TEXT_HEADERS[n] + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


async def _send_frames(ws: WebSocketConnection, frames: list[bytes]) -> None:
    """Write several text frames in one stream write.

    trio-websocket writes one socket send per message; the relay's hot path
    sends up to four frames per cause, so they are framed here with the
    connection's own wsproto object and written together under its lock.
    This reaches into trio-websocket 0.12's internals (pinned in pyproject).
    Frames are built by hand (the bytes wsproto would write: server frames are
    unmasked and trio-websocket negotiates no extension), from the encoded
    JSON as it is, without a bytes -> str -> bytes round trip.
    """
    if ws.closed is not None:
        raise ConnectionClosed(ws.closed)
    proto = ws._wsproto.connection
    if proto is not None and proto.state is ConnectionState.OPEN and not proto._proto.extensions:
        data = b"".join([_text_frame(f) for f in frames])
    else:
        try:
            data = b"".join([ws._wsproto.send(TextMessage(data=f.decode("utf-8"))) for f in frames])
        except LocalProtocolError:
            raise ConnectionClosed(ws.closed) from None
    await _send_data(ws, data)


async def _send_data(ws: WebSocketConnection, data: bytes) -> None:
    """Write framed bytes under the connection's lock."""
    if ws.closed is not None:
        raise ConnectionClosed(ws.closed)
    # The writer has just woken from park: take the lock and write what the socket takes
    # without further schedule points (Lock.acquire and socket send each yield once even
    # when they need not wait); only a busy lock or a full socket buffer waits.
    lock = ws._stream_lock
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        sent = _send_nowait(ws._stream, data)
        if sent < len(data):
            await ws._stream.send_all(data[sent:])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await ws._abort_web_socket()
        raise ConnectionClosed(ws.closed) from None
    finally:
        lock.release()


def _send_nowait(stream: trio.abc.Stream, data: bytes) -> int:
    """Bytes a TCP stream's socket takes now (one non-blocking send); 0 leaves it all to send_all,
    which then waits, or raises an error the Trio way."""
    if type(stream) is not trio.SocketStream or stream.socket.did_shutdown_SHUT_WR:
        return 0
    try:
        sent: int = stream.socket._sock.send(data)  # type: ignore[attr-defined]
    except OSError:
        return 0
    return sent


_library_close_handler = WebSocketConnection._handle_close_connection_event


async def _close_on_parse_failure(self: WebSocketConnection, event: CloseConnection) -> None:
    """Send the close frame RFC 6455 asks for when a client's frame cannot be parsed.

    wsproto reports a frame it cannot parse (a text frame that is not UTF-8: 1007; a
    broken frame: 1002) as a CloseConnection while the connection is still OPEN, and
    trio-websocket 0.12 then closes the TCP connection without any close frame. On
    server connections, send the close with wsproto's code first. (trio-websocket
    internals, pinned in pyproject, like _send_frames.)
    """
    state = self._wsproto.state
    if self.is_server and state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
        if state == ConnectionState.OPEN:
            # As aclose() does: the reason first, so that a concurrent ping() or send sees the close.
            self._close_reason = CloseReason(event.code, event.reason or None)
            with contextlib.suppress(ConnectionClosed):
                await self._send(CloseConnection(code=event.code, reason=event.reason))
        # In LOCAL_CLOSING our own close frame (leave, end_call...) may still wait for the
        # stream lock behind a pong: the library would close the stream under it. The
        # linger takes the lock (FIFO) before its FIN, so that frame goes out first.
        await _linger(self)
    await _library_close_handler(self, event)


_LINGER_S = 1.0


async def _linger(ws: WebSocketConnection) -> None:
    """After the close frame of a connection the server fails: FIN, then drop what the peer still sends.

    Closing a socket with unread input resets the connection, and the reset discards the
    close frame if it has not left yet: a client that had sent more than the broken frame
    (the rest of an oversized one, pipelined requests) saw no 1007/1009, only a reset.
    Bounded: at most _LINGER_S and 64 reads; a well-behaved peer answers the close and
    closes its side at once.
    """
    stream = ws._stream
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(_LINGER_S), contextlib.suppress(
        trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError
    ):
        async with ws._stream_lock:
            await stream.send_eof()
        for _ in range(64):
            if not await stream.receive_some(65536):
                return


WebSocketConnection._handle_close_connection_event = _close_on_parse_failure  # type: ignore[method-assign]

_library_message_handler = WebSocketConnection._handle_message_event


async def _forget_handled_message(self: WebSocketConnection, event: TextMessage | BytesMessage) -> None:
    """R13: once a message is handed on, its event no longer holds the text.

    trio-websocket 0.12's reader task keeps its last event in a loop variable until
    the next frame arrives, so a patient's last message would outlive its erasure at
    a refresh (R12) for as long as the connection stays quiet. The event is done with
    once handled: empty it (wsproto events are frozen dataclasses).
    """
    if not _hand_over_nowait(self, event):
        if self.is_server and self._wsproto.state != ConnectionState.OPEN:
            # Our close frame is out: a message arriving now reaches nobody, and the library
            # must not answer a too-large one with a second close frame, which wsproto refuses
            # (LocalProtocolError in the reader task: an internal error, 1011 at best).
            self._message_parts, self._message_size = [], 0
        else:
            await _library_message_handler(self, event)
            if self.is_server and not self._reader_running:
                await _linger(self)  # the library closed with 1009: a message over max_message_size
    if self.is_server:
        object.__setattr__(event, "data", type(event.data)())


def _hand_over_nowait(ws: WebSocketConnection, event: TextMessage | BytesMessage) -> bool:
    """The library's message handler for a whole text message in one frame, minus a schedule
    point: handed to a waiting get_message() (or the channel's buffer) at once, where
    MemorySendChannel.send would yield even when it need not wait. False leaves the event to
    the library (fragments, a message too large, a full channel, a connection no longer
    open: see the caller): nothing was changed."""
    if type(event) is not TextMessage or not event.message_finished or ws._message_parts:
        return False
    if len(event.data) > ws._max_message_size or ws._wsproto.state is not ConnectionState.OPEN:
        return False
    try:
        ws._send_channel.send_nowait(event.data)
    except trio.WouldBlock:
        return False
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass  # as the library: nobody reads any more
    return True


WebSocketConnection._handle_message_event = _forget_handled_message  # type: ignore[method-assign]

_library_ping_handler = WebSocketConnection._handle_ping_event


async def _pong_while_open(self: WebSocketConnection, event: Ping) -> None:
    """Answer a client's ping only while the connection is open.

    trio-websocket 0.12 answers every ping; after the server has sent its close frame
    (leave, end_call, an error before welcome, 1009...) wsproto refuses the pong with
    LocalProtocolError, raised in the connection's reader task, which ended the whole
    server: one client could stop every session with a ping after its close.
    """
    if self._wsproto.state == ConnectionState.OPEN:
        await _library_ping_handler(self, event)


WebSocketConnection._handle_ping_event = _pong_while_open  # type: ignore[method-assign]


class QueueChatServer:
    """The reference server: a :class:`QueueChatModel` behind trio-websocket."""

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
        async with trio.open_nursery() as nursery:
            ws_server = WebSocketServer(
                self._handle_request,
                listeners,  # type: ignore[arg-type]  # any Trio listener works
                handler_nursery=nursery,
                max_message_size=self.limits.max_frame_bytes,
                connect_timeout=self.limits.hello_timeout_s or 60.0,
                disconnect_timeout=self._close_timeout_s,
            )
            ws_server._handle_connection = self._contained(  # type: ignore[method-assign,assignment]
                ws_server._handle_connection)
            await nursery.start(ws_server.run)
            self._urls = [_ws_url(listener) for listener in listeners]
            if self._stats_interval_s is not None:
                nursery.start_soon(self._log_statistics_forever, self._stats_interval_s)
            log.info("server.listening", urls=self._urls, limits=self.limits.as_wire())
            task_status.started(self._urls[0] if self._urls else "")
            await self._stopped.wait()
            nursery.cancel_scope.cancel()
        log.info("server.stopped", **_stats_fields(self.statistics()))

    def _contained(
        self, handle: Callable[[trio.abc.Stream], Awaitable[None]]
    ) -> Callable[[trio.abc.Stream], Awaitable[None]]:
        """Keep a failure inside trio-websocket's per-connection tasks to that connection.

        The library runs each connection (its reader task and our handler) in a nursery
        under the server's: an exception there, a library bug, would end the server and
        every session. Count it, log its type only, and drop that connection alone.
        """

        async def handle_connection(stream: trio.abc.Stream) -> None:
            try:
                # A browser's plain GET of the console or the patient page (_pages.py); every
                # other request, the WebSocket endpoint's above all, goes on to trio-websocket.
                if await serve_page_if_asked(stream, self.limits.hello_timeout_s or 60.0):
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

    async def _handle_request(self, request: WebSocketRequest) -> None:
        """One connection, from handshake to close; nothing that goes wrong here reaches other sessions."""
        ws: WebSocketConnection | None = None
        try:
            if request.path != WS_PATH:
                await request.reject(404, body=b"queuechat speaks WebSocket at /v1/ws\n")
                return
            ws = await request.accept()
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

    async def _serve_connection(self, ws: WebSocketConnection) -> None:
        conn = _Connection(next(self._ids), ws, self.limits)
        self._connections[conn.id] = conn
        self._counters.connections_total += 1
        self._model.connect(conn.id, self._now())
        remote = ws.remote
        log.debug("connection.opened", conn=conn.id, peer=str(remote))
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, conn)
                    if self.limits.hello_timeout_s is not None:
                        conn.hello_scope = trio.CancelScope()
                        nursery.start_soon(self._hello_timer, conn, self.limits.hello_timeout_s)
                    if self.limits.ping_interval_s is not None:
                        nursery.start_soon(self._heartbeat, conn, nursery, self.limits.ping_interval_s)
                    await self._reader(conn)
                    if conn.close_after is not None:
                        # This side started the close and aclose() has ended the reader: cancelling
                        # now would drop TCP before the peer's reply (R46). Wait for it, bounded.
                        with trio.move_on_after(self._close_timeout_s):
                            await ws._close_handshake.wait()
                    nursery.cancel_scope.cancel()
            if conn.scope.cancelled_caught and conn.end is None:
                conn.end = "lost"  # the liveness deadline passed (R45)
                self._counters.lost_connections += 1
        finally:
            del self._connections[conn.id]
            if self._all_closed is not None and not self._connections:
                self._all_closed.set()
            self._apply(self._model.disconnected(conn.id, self._now()))
            if conn.end is not None:
                # Dropped, lost or past the shutdown window: no close handshake to wait for.
                await trio.aclose_forcefully(ws._stream)
            closed = ws.closed
            log.debug(
                "connection.closed", conn=conn.id, end=conn.end,
                code=closed.code if closed is not None else None,
            )

    async def _reader(self, conn: _Connection) -> None:
        ws, model, counters = conn.ws, self._model, self._counters
        max_bytes = self.limits.max_frame_bytes
        # trio-websocket bounds a text message in characters; R41 bounds it in bytes. A text
        # of n characters is at most 4n bytes, so only long ones need encoding to check.
        surely_small = max_bytes // 4
        while True:
            try:
                raw = await ws.get_message()
            except ConnectionClosed:
                return
            conn.alive()
            counters.frames_in += 1
            if conn.close_after is not None:
                pass  # closing: nothing more from this connection reaches the model
            elif len(raw) > surely_small and len(raw.encode() if isinstance(raw, str) else raw) > max_bytes:
                conn.push_close(CloseCode.TOO_BIG, f"frame over {max_bytes} bytes")
            else:
                self._apply(model.receive(conn.id, raw, self._now()), conn)
                if conn.hello_scope is not None and model.is_welcomed(conn.id):
                    conn.hello_scope.cancel()
                    conn.hello_scope = None
            # R13: the frame's text must not wait in this task's locals for the next frame
            # (a refresh may erase that conversation meanwhile).
            del raw

    def _apply(self, effects: list[Effect], requester: _Connection | None = None) -> None:
        """Queue the effects of one cause, then wake the writers of the connections they touch.

        The requester's own frames (its ``ok``, ...) are written here at once when its writer is
        idle (one request in flight: nothing to batch, and a trip through the scheduler saved);
        other connections' writers batch what several causes queue for them (e.g. a clinician
        with many patients) into one write per scheduler round.
        """
        touched: list[_Connection] = []
        try:
            self._queue_effects(effects, touched)
        finally:
            for conn in touched:
                if conn is requester:
                    conn.flush(self._counters)
                else:
                    conn.wakeup.unpark()

    def _queue_effects(self, effects: list[Effect], touched: list[_Connection]) -> None:
        connections, counters = self._connections, self._counters
        for effect in effects:
            conn = connections.get(effect.conn)
            if conn is None:
                continue
            if type(effect) is Send:
                frame = effect.frame
                if type(frame) is Error:
                    counters.errors_by_code[frame.code] = counters.errors_by_code.get(frame.code, 0) + 1
                    if frame.code == ErrorCode.RATE_LIMITED:
                        counters.rate_limited += 1
                elif type(frame) in _LOGGED_FRAMES:
                    _log_frame(conn.id, frame)
                if not conn.push(encode_bytes(frame)):
                    counters.slow_reader_drops += 1
                    log.warning("connection.slow_reader_dropped", conn=conn.id,
                                queued_frames=len(conn.queue), queued_bytes=conn.queued_bytes)
                    conn.drop("slow_reader")
                elif not touched or touched[-1] is not conn:
                    touched.append(conn)
            else:
                assert isinstance(effect, Close)
                conn.push_close(effect.code, effect.reason)

    async def _writer(self, conn: _Connection) -> None:
        ws, queue, counters = conn.ws, conn.queue, self._counters
        while True:
            if conn.tail:
                data, conn.tail = conn.tail, b""
                try:
                    await _send_data(ws, data)
                except ConnectionClosed:
                    return
                del data  # R13, as below
            elif queue:
                frames = list(queue)
                queue.clear()
                conn.queued_bytes = 0
                try:
                    await _send_frames(ws, frames)
                except ConnectionClosed:
                    return
                counters.frames_out += len(frames)
                counters.bytes_out += sum(len(f) for f in frames)
                del frames  # R13: sent frames (message text) are not kept while parked
            elif conn.close_after is not None:
                code, reason = conn.close_after
                with trio.move_on_after(self._close_timeout_s):
                    await ws.aclose(code, reason)
                return
            else:
                await conn.wakeup.park()

    async def _hello_timer(self, conn: _Connection, timeout_s: float) -> None:
        if conn.hello_scope is None:
            return  # welcomed before this task started
        with conn.hello_scope:
            await trio.sleep(timeout_s)
        if conn.hello_scope is None:
            return  # welcomed: cancelled
        conn.hello_scope = None
        effects = self._model.hello_timed_out(conn.id)
        if effects:  # empty once the connection said hello
            self._counters.hello_timeouts += 1
        self._apply(effects)

    async def _heartbeat(self, conn: _Connection, nursery: trio.Nursery, interval_s: float) -> None:
        for sequence in itertools.count(1):
            await trio.sleep(interval_s)
            if conn.ws._pings:
                # The last ping is unanswered: one in flight is enough. (With ping_timeout_s
                # off, a silent peer otherwise gathered a waiting task every interval, forever.)
                continue
            nursery.start_soon(self._ping_once, conn, sequence.to_bytes(8, "big"))

    async def _ping_once(self, conn: _Connection, payload: bytes) -> None:
        try:
            await conn.ws.ping(payload)
        except (ConnectionClosed, ValueError, LocalProtocolError):
            return  # closed, or closing (wsproto refuses a ping after a close frame)
        conn.alive()

    async def _log_statistics_forever(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s)
            log.info("server.statistics", **_stats_fields(self.statistics()))


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
