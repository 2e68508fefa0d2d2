"""Connections the suite opens to the server under test, each with a redacted wire log.

:class:`Conn` is a trio-websocket client connection. Every frame it receives
becomes a dict (a close becomes ``{"type": "(close)", "code": N}``, once) and
is kept in the connection's buffer until a step takes it. :class:`RawConn`
speaks WebSocket through wsproto directly, for what a well-behaved client
library will not do: send a text frame that is not UTF-8 (1007), or leave the
server's pings unanswered (R45).

The wire log keeps ids, sizes and times, never a ``text`` or ``name``: they
are replaced by their lengths (``reference_server.protocol.redact``), and any
string the suite sent as a text or a name is blanked wherever else it shows.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import h11
import trio
import wsproto
import wsproto.connection
import wsproto.events as wse
import wsproto.utilities
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, wrap_client_stream

from reference_server.protocol import SERVER_FRAME_TYPES, redact
from reference_server.wscodec import client_frame

from ._patterns import CLOSE_TYPE

MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024  # open_chat may return 500 long messages
WIRE_LOG_MAX: Final = 120  # entries kept per connection (the last ones)


class ConnectFailed(Exception):
    """The WebSocket connection could not be opened (refused, rejected, timed out)."""


@dataclass
class WireLog:
    """The frames one connection sent and received, redacted, with milliseconds since the case began."""

    origin: float
    secrets: set[str]
    entries: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=WIRE_LOG_MAX))
    dropped: int = 0

    def add(self, direction: str, frame: Any) -> None:
        if len(self.entries) == self.entries.maxlen:
            self.dropped += 1
        self.entries.append(
            {
                "t_ms": round((trio.current_time() - self.origin) * 1000, 1),
                "dir": direction,
                "frame": sanitize(frame, self.secrets),
            }
        )

    def as_list(self) -> list[dict[str, Any]]:
        return list(self.entries)


def sanitize(value: Any, secrets: Iterable[str]) -> Any:
    """``redact`` (text and name by their lengths, a clinician token too), and blank any secret string
    found elsewhere."""
    cleaned = redact(value)
    if isinstance(cleaned, dict) and isinstance(cleaned.get("token"), str):
        cleaned = {**cleaned, "token": f"<{len(cleaned['token'])} chars>"}
    secrets = [s for s in secrets if s]
    if not secrets:
        return cleaned

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {key: walk(sub) for key, sub in item.items()}
        if isinstance(item, list):
            return [walk(sub) for sub in item]
        if isinstance(item, str) and any(secret in item for secret in secrets):
            return f"<redacted {len(item)} chars>"
        return item

    return walk(cleaned)


def decode(raw: str | bytes) -> dict[str, Any]:
    """A received WebSocket message as a dict; what is not a JSON object with a string type is marked."""
    if isinstance(raw, bytes):
        return {"type": "(binary)", "bytes": len(raw)}
    try:
        obj = json.loads(raw)
    except ValueError:
        return {"type": "(not json)", "chars": len(raw)}
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return {"type": "(no type)", "chars": len(raw)}
    return obj


class Conn:
    """One WebSocket connection of a case: a label (``C``, ``A``...), a buffer of frames, a wire log."""

    def __init__(self, label: str, ws: WebSocketConnection, log: WireLog, on_extension: Any = None) -> None:
        self.label = label
        self.ws = ws
        self.log = log
        self.buffer: deque[dict[str, Any]] = deque()
        self.welcome: dict[str, Any] = {}
        self.patient_id: str | None = None
        self.close_code: int | None = None
        self.closed = False  # the close has been read (or we closed it)
        self.welcomed = False
        # Every frame received, unredacted, for checks within the case; never saved.
        self.history: deque[dict[str, Any]] = deque(maxlen=1000)
        self._on_extension = on_extension

    def __repr__(self) -> str:
        return f"Conn({self.label})"

    @property
    def pid(self) -> str:
        if self.patient_id is None:
            raise AssertionError(f"connection {self.label} has no patient id")
        return self.patient_id

    async def send(self, frame: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(frame, ensure_ascii=False), logged=frame)

    async def send_raw(self, data: str | bytes, *, logged: Any = None) -> None:
        if logged is None:
            logged = {"(raw)": len(data), "binary": isinstance(data, bytes)}
        self.log.add("out", logged)
        with contextlib.suppress(ConnectionClosed):  # the close shows up when the connection is next read
            await self.ws.send_message(data)

    async def recv(self, within_s: float) -> dict[str, Any]:
        """The next frame (or the close, once); raises trio.TooSlowError after ``within_s``."""
        if self.buffer:
            return self.buffer.popleft()
        return await self._read(within_s)

    async def _read(self, within_s: float) -> dict[str, Any]:
        if self.closed:
            raise trio.TooSlowError  # nothing more will ever come
        with trio.fail_after(within_s):
            while True:
                try:
                    raw = await self.ws.get_message()
                except ConnectionClosed as closed:
                    reason = closed.reason
                    self.close_code = (
                        int(reason.code) if reason is not None and reason.code is not None else None
                    )
                    self.closed = True
                    record = {"type": CLOSE_TYPE, "code": self.close_code}
                    self.log.add("in", record)
                    return record
                frame = decode(raw)
                self.log.add("in", frame)
                self.history.append(frame)
                kind = frame["type"]
                if kind not in SERVER_FRAME_TYPES and not kind.startswith("("):
                    if self._on_extension is not None:
                        self._on_extension(kind)
                    continue  # a frame type the contract does not define: an extension, noted
                return frame

    async def read_until(self, predicate: Any, within_s: float) -> list[dict[str, Any]]:
        """Frames up to and including the first for which ``predicate`` is true, or up to the close."""
        frames: list[dict[str, Any]] = []
        with trio.fail_after(within_s):
            while True:
                frame = await self.recv(within_s)
                frames.append(frame)
                if predicate(frame) or frame["type"] == CLOSE_TYPE:
                    return frames

    async def read_count(self, count: int, within_s: float) -> list[dict[str, Any]]:
        """Up to ``count`` frames, stopping at a close or when ``within_s`` passes (never raises)."""
        frames: list[dict[str, Any]] = []
        with trio.move_on_after(within_s):
            while len(frames) < count:
                try:
                    frame = await self.recv(within_s)
                except trio.TooSlowError:
                    break
                frames.append(frame)
                if frame["type"] == CLOSE_TYPE:
                    break
        return frames

    async def read_quiet(self, window: float, limit: float) -> list[dict[str, Any]]:
        """Frames until none came for ``window`` seconds (at most ``limit`` seconds in all)."""
        frames: list[dict[str, Any]] = []
        with trio.move_on_after(limit):
            while True:
                try:
                    frame = await self.recv(window)
                except trio.TooSlowError:
                    break
                frames.append(frame)
                if frame["type"] == CLOSE_TYPE:
                    break
        return frames

    def take_buffer(self) -> list[dict[str, Any]]:
        frames = list(self.buffer)
        self.buffer.clear()
        return frames

    async def aclose(self, code: int = 1000) -> None:
        """Close from our side (bounded); what the server sent meanwhile is dropped."""
        if not self.closed:
            self.log.add("out", {"type": CLOSE_TYPE, "code": code})
        self.closed = True
        await self.release(code, 1.0)

    async def release(self, code: int = 1000, within_s: float = 0.5) -> None:
        """A close handshake if there is still time for one, then the socket is closed regardless."""
        with trio.move_on_after(within_s):
            await self.ws.aclose(code)
        await trio.aclose_forcefully(self.ws._stream)


class _GuardedNursery:
    """Stands in for the nursery ``wrap_client_stream`` starts the connection's reader task in.

    trio-websocket raises a refused handshake (an HTTP 404, say) *in that reader task*, which would
    crash the caller's whole nursery (an ExceptionGroup) while the handshake wait hangs. Until the
    handshake is done, this catches what the reader raises, keeps it, and cancels the wait; after
    it, errors propagate as before, but for a pong refused while our own close is under way.
    """

    def __init__(self, nursery: trio.Nursery, handshake: trio.CancelScope) -> None:
        self._nursery = nursery
        self._handshake = handshake
        self.established = False
        self.error: BaseException | None = None
        self.ended = False

    def start_soon(self, func: Callable[[], Awaitable[object]], *args: object) -> None:
        async def guarded() -> None:
            try:
                await func(*args)
            except Exception as error:
                if self.established:
                    if isinstance(error, wsproto.utilities.LocalProtocolError):
                        # trio-websocket 0.12 answers a server ping that arrives after our close frame
                        # went out; wsproto refuses a pong in LOCAL_CLOSING. The connection is closing
                        # at our request anyway: end its reader quietly, not the whole case.
                        return
                    raise
                self.error = error
                self._handshake.cancel()
            else:
                if not self.established:
                    self.ended = True
                    self._handshake.cancel()

        self._nursery.start_soon(guarded)


def handshake_failure(error: BaseException) -> str:
    """A short reason for a failed WebSocket open; never the server's HTTP body or headers."""
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status} instead of a WebSocket upgrade"
    causes = _causes(error)
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return "connection refused"
    if any(isinstance(e, socket.gaierror) for e in causes):
        return "unknown host"
    if any(isinstance(e, ssl.SSLError) for e in causes):
        return "TLS handshake failed"
    if isinstance(error, wsproto.utilities.ProtocolError | h11.ProtocolError | trio.BrokenResourceError):
        return "the server's answer is not a WebSocket handshake"
    if isinstance(error, OSError):
        return f"cannot connect ({error.strerror or error or type(error).__name__})"
    return f"WebSocket handshake failed ({type(error).__name__})"


def _causes(error: BaseException) -> list[BaseException]:
    """``error``, its causes and, for groups, their members (trio wraps refused connects so)."""
    found: list[BaseException] = []
    todo = [error]
    while todo and len(found) < 50:
        item = todo.pop()
        found.append(item)
        if isinstance(item, BaseExceptionGroup):
            todo.extend(item.exceptions)
        for linked in (item.__cause__, item.__context__):
            if linked is not None and linked not in found:
                todo.append(linked)
    return found


async def open_conn(
    nursery: trio.Nursery, url: str, label: str, log: WireLog, within_s: float, on_extension: Any = None
) -> Conn:
    """A WebSocket connection to ``url``, handshake done within ``within_s``; the socket is ours to close.

    Raises :class:`ConnectFailed` with a one-line reason for anything that keeps the WebSocket from
    opening: a refused port, an HTTP answer that is not an upgrade, a server that closes or says
    nothing, a TLS or HTTP protocol error.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = port == (443 if parts.scheme == "wss" else 80)
    host_header = host if default_port else f"{host}:{port}"
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    ws: WebSocketConnection | None = None
    reason: str | None = None
    try:
        with trio.fail_after(within_s):
            stream = await trio.open_tcp_stream(host, port)
            if parts.scheme == "wss":
                stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
            with trio.CancelScope() as handshake:
                guard = _GuardedNursery(nursery, handshake)
                ws = await wrap_client_stream(
                    cast(trio.Nursery, guard), stream, host_header, resource, message_queue_size=1024,
                    max_message_size=MAX_MESSAGE_SIZE,
                )
            if guard.error is not None:
                reason = handshake_failure(guard.error)
            elif guard.ended or ws is None or ws.closed is not None:
                reason = "the server closed the connection during the WebSocket handshake"
            else:
                guard.established = True
    except BaseException as error:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(error, trio.TooSlowError):
            raise ConnectFailed(f"no WebSocket handshake within {within_s:g} s") from None
        if isinstance(error, OSError | HandshakeError | ConnectionClosed):
            raise ConnectFailed(handshake_failure(error)) from None
        raise
    if reason is not None or ws is None:
        await trio.aclose_forcefully(stream)
        raise ConnectFailed(reason or "WebSocket handshake failed")
    return Conn(label, ws, log, on_extension)


async def _tcp_stream(host: str, port: int, receive_buffer: int | None) -> trio.abc.Stream:
    if receive_buffer is None:
        return await trio.open_tcp_stream(host, port)
    # SO_RCVBUF must be set before connecting to bound the window the server may fill.
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = trio.socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    try:
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


# --------------------------------------------------------------------------- raw wsproto


class RawConn:
    """A bare WebSocket client on wsproto: sends any bytes, never answers pings by itself."""

    def __init__(self, stream: trio.abc.Stream, ws: wsproto.WSConnection, log: WireLog) -> None:
        self.stream = stream
        self.ws = ws
        self.log = log
        self.events: deque[wse.Event] = deque()
        self.eof = False
        self.answer_pings = True  # a heartbeat case turns this off to stay silent
        self._text: list[str] = []

    @classmethod
    async def connect(
        cls, url: str, log: WireLog, within_s: float, *, receive_buffer: int | None = None
    ) -> RawConn:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            with trio.fail_after(within_s):
                stream: trio.abc.Stream = await _tcp_stream(host, port, receive_buffer)
                if parts.scheme == "wss":
                    tls = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
                    await tls.do_handshake()
                    stream = tls
                ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                await stream.send_all(ws.send(wse.Request(host=parts.netloc, target=target)))
                conn = cls(stream, ws, log)
                try:
                    event = await conn._next_event(within_s)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                if not isinstance(event, wse.AcceptConnection):
                    await trio.aclose_forcefully(stream)
                    if isinstance(event, wse.RejectConnection):
                        raise ConnectFailed(f"HTTP {event.status_code} instead of a WebSocket upgrade")
                    raise ConnectFailed("the server closed the connection during the WebSocket handshake")
                return conn
        except trio.TooSlowError:
            raise ConnectFailed(f"no WebSocket handshake within {within_s:g} s") from None
        except (OSError, wsproto.utilities.ProtocolError, trio.BrokenResourceError) as error:
            raise ConnectFailed(handshake_failure(error)) from None

    async def _next_event(self, within_s: float) -> wse.Event | None:
        """The next wsproto event, or None at end of stream."""
        with trio.fail_after(within_s):
            while not self.events:
                if self.eof:
                    return None
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.eof = True
                    self.ws.receive_data(None)
                else:
                    self.ws.receive_data(bytes(data))
                self.events.extend(self.ws.events())
            return self.events.popleft()

    async def send_text(self, frame: dict[str, Any]) -> None:
        self.log.add("out", frame)
        await self._send_bytes(self._encode(wse.Message(data=json.dumps(frame, ensure_ascii=False))))

    async def send_many(self, frames: list[dict[str, Any]]) -> None:
        """Several text frames in one write: the server receives them as one burst."""
        data = b"".join(self._encode(wse.Message(data=json.dumps(f, ensure_ascii=False))) for f in frames)
        for frame in frames:
            self.log.add("out", frame)
        await self._send_bytes(data)

    async def send_frame(self, opcode: int, payload: bytes, *, logged: Any) -> None:
        """One final frame with ``opcode`` and ``payload`` exactly as given (masked, as a client must)."""
        self.log.add("out", logged)
        await self._send_bytes(client_frame(payload, opcode))

    def _encode(self, event: wse.Event) -> bytes:
        """The bytes of a frame, or none once the connection is closing (the close shows up when it is
        next read, as with :class:`Conn`)."""
        if self.ws.state is not wsproto.connection.ConnectionState.OPEN:
            return b""
        return self.ws.send(event)

    async def _send_bytes(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def next(self, within_s: float) -> dict[str, Any]:
        """The next frame as a dict: a JSON frame, ``(ping)``, or ``(close)`` (its code; None at EOF)."""
        while True:
            event = await self._next_event(within_s)
            if event is None:
                record: dict[str, Any] = {"type": CLOSE_TYPE, "code": None}
                self.log.add("in", record)
                return record
            if isinstance(event, wse.TextMessage):
                self._text.append(event.data)
                if not event.message_finished:
                    continue
                frame = decode("".join(self._text))
                self._text.clear()
                self.log.add("in", frame)
                return frame
            if isinstance(event, wse.Ping):
                if self.answer_pings:
                    # A ping may arrive just before the server's close frame is read: a pong can only
                    # go out while the connection is open (wsproto refuses it in REMOTE_CLOSING).
                    await self._send_bytes(self._encode(event.response()))
                    continue
                record = {"type": "(ping)"}
                self.log.add("in", record)
                return record
            if isinstance(event, wse.CloseConnection):
                record = {"type": CLOSE_TYPE, "code": int(event.code)}
                self.log.add("in", record)
                return record

    async def aclose(self) -> None:
        with trio.move_on_after(1.0):
            await trio.aclose_forcefully(self.stream)
