"""The Trio shell around the domain model: sockets in, effects out.

One task group per connection, owned by the connection's handler: a reader
(this handler's own task), a writer draining a bounded outbound queue (R42),
a hello timer and a heartbeat (R45). The model is called synchronously from
the reader, so the effects of one cause reach every connection's queue in
order before anything else runs. Shutdown (R46) closes every connection with
1001, waits at most ``close_timeout_s``, then cancels what is left.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError

from ._codec import encode_bytes
from ._domain import Close, Effect, QueueChatModel, Send
from ._frames import WS_PATH, ClinicianWelcome, CloseCode, Erased, Error, ErrorCode, PatientWelcome
from ._limits import Limits
from ._logging import get_logger

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
        "id",
        "max_bytes",
        "max_frames",
        "ping_timeout",
        "queue",
        "queued_bytes",
        "scope",
        "wakeup",
        "ws",
    )

    def __init__(self, conn_id: int, ws: WebSocketConnection, limits: Limits) -> None:
        self.id = conn_id
        self.ws = ws
        self.scope = trio.CancelScope()
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.close_after: tuple[int, str] | None = None
        self.wakeup = trio.lowlevel.ParkingLot()
        self.end: str | None = None  # why the server ended it: dropped, lost, shutdown
        self.max_frames = limits.max_queued_frames
        self.max_bytes = limits.max_queued_bytes
        self.ping_timeout = limits.ping_timeout_s
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
        if len(self.queue) > self.max_frames or self.queued_bytes > self.max_bytes:
            return False
        self.wakeup.unpark()
        return True

    def push_close(self, code: int, reason: str) -> None:
        if self.close_after is None:
            self.close_after = (code, reason)
            self.wakeup.unpark()

    def drop(self, why: str) -> None:
        self.end = why
        self.queue.clear()
        self.queued_bytes = 0
        self.scope.cancel()


async def _send_frames(ws: WebSocketConnection, frames: list[bytes]) -> None:
    """Write several text frames in one stream write.

    trio-websocket writes one socket send per message; the relay's hot path
    sends up to four frames per cause, so they are framed here with the
    connection's own wsproto object and written together under its lock.
    This reaches into trio-websocket 0.12's internals (pinned in pyproject).
    """
    if ws.closed is not None:
        raise ConnectionClosed(ws.closed)
    try:
        data = b"".join([ws._wsproto.send(TextMessage(data=f.decode("utf-8"))) for f in frames])
    except LocalProtocolError:
        raise ConnectionClosed(ws.closed) from None
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws.closed) from None


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
            await nursery.start(ws_server.run)
            self._urls = [_ws_url(listener) for listener in listeners]
            if self._stats_interval_s is not None:
                nursery.start_soon(self._log_statistics_forever, self._stats_interval_s)
            log.info("server.listening", urls=self._urls, limits=self.limits.as_wire())
            task_status.started(self._urls[0] if self._urls else "")
            await self._stopped.wait()
            nursery.cancel_scope.cancel()
        log.info("server.stopped", **_stats_fields(self.statistics()))

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
                        nursery.start_soon(self._hello_timer, conn, self.limits.hello_timeout_s)
                    if self.limits.ping_interval_s is not None:
                        nursery.start_soon(self._heartbeat, conn, nursery, self.limits.ping_interval_s)
                    await self._reader(conn)
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
                continue  # closing: nothing more from this connection reaches the model
            if len(raw) > surely_small and len(raw.encode() if isinstance(raw, str) else raw) > max_bytes:
                conn.push_close(CloseCode.TOO_BIG, f"frame over {max_bytes} bytes")
                continue
            self._apply(model.receive(conn.id, raw, self._now()))

    def _apply(self, effects: list[Effect]) -> None:
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
            else:
                assert isinstance(effect, Close)
                if effect.code == CloseCode.POLICY and effect.reason == "hello required":
                    counters.hello_timeouts += 1
                conn.push_close(effect.code, effect.reason)

    async def _writer(self, conn: _Connection) -> None:
        ws, queue, counters = conn.ws, conn.queue, self._counters
        while True:
            if queue:
                frames = list(queue)
                queue.clear()
                conn.queued_bytes = 0
                try:
                    await _send_frames(ws, frames)
                except ConnectionClosed:
                    return
                counters.frames_out += len(frames)
                counters.bytes_out += sum(len(f) for f in frames)
            elif conn.close_after is not None:
                code, reason = conn.close_after
                with trio.move_on_after(self._close_timeout_s):
                    await ws.aclose(code, reason)
                return
            else:
                await conn.wakeup.park()

    async def _hello_timer(self, conn: _Connection, timeout_s: float) -> None:
        await trio.sleep(timeout_s)
        self._apply(self._model.hello_timed_out(conn.id))

    async def _heartbeat(self, conn: _Connection, nursery: trio.Nursery, interval_s: float) -> None:
        for sequence in itertools.count(1):
            await trio.sleep(interval_s)
            nursery.start_soon(self._ping_once, conn, sequence.to_bytes(8, "big"))

    async def _ping_once(self, conn: _Connection, payload: bytes) -> None:
        try:
            await conn.ws.ping(payload)
        except (ConnectionClosed, ValueError):
            return
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
