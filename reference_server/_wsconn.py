"""The server's own WebSocket connections: every private name of trio-websocket, wsproto and Trio lives here.

trio-websocket 0.12 gives each connection a reader task and hands messages over a
memory channel; the shell wants one task per connection and messages handed to the
model synchronously, frames written without waiting when the socket takes them, and
three fixes of the library's handlers (see the methods below). :class:`ServerWebSocket`
is a subclass used for the connections this server accepts, and only for them: a
trio-websocket client (or another server) in the same process is unchanged.

Everything here that is not public API of those libraries is listed in
:data:`PRIVATE_NAMES`; ``tests/test_wsconn.py`` checks each one against the installed
versions (pinned in pyproject), so an upgrade that moves one fails loudly there, and
checks that no other private name is used by the shell. docs/server-internals.md says
what each is relied on for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from ._readgate import ReadGate

# (where, name, what): the private names this module uses. "attr" is an instance attribute a
# WebSocketConnection has after __init__, "method" an attribute of the class.
PRIVATE_NAMES: tuple[tuple[str, str, str], ...] = (
    ("trio_websocket.WebSocketConnection", "_stream", "attr"),
    ("trio_websocket.WebSocketConnection", "_stream_lock", "attr"),
    ("trio_websocket.WebSocketConnection", "_wsproto", "attr"),
    ("trio_websocket.WebSocketConnection", "_close_reason", "attr"),
    ("trio_websocket.WebSocketConnection", "_close_handshake", "attr"),
    ("trio_websocket.WebSocketConnection", "_reader_running", "attr"),
    ("trio_websocket.WebSocketConnection", "_message_parts", "attr"),
    ("trio_websocket.WebSocketConnection", "_message_size", "attr"),
    ("trio_websocket.WebSocketConnection", "_max_message_size", "attr"),
    ("trio_websocket.WebSocketConnection", "_receive_buffer_size", "attr"),
    ("trio_websocket.WebSocketConnection", "_connection_proposal", "attr"),
    ("trio_websocket.WebSocketConnection", "_recv_channel", "attr"),
    ("trio_websocket.WebSocketConnection", "_send_channel", "attr"),
    ("trio_websocket.WebSocketConnection", "_open_handshake", "attr"),
    ("trio_websocket.WebSocketConnection", "_for_testing_peer_closed_connection", "attr"),
    ("trio_websocket.WebSocketConnection", "_send", "method"),
    ("trio_websocket.WebSocketConnection", "_abort_web_socket", "method"),
    ("trio_websocket.WebSocketConnection", "_close_stream", "method"),
    ("trio_websocket.WebSocketConnection", "_close_web_socket", "method"),
    ("trio_websocket.WebSocketConnection", "_handle_request_event", "method"),
    ("trio_websocket.WebSocketConnection", "_handle_close_connection_event", "method"),
    ("trio_websocket.WebSocketConnection", "_handle_message_event", "method"),
    ("trio_websocket.WebSocketConnection", "_handle_ping_event", "method"),
    ("trio_websocket.WebSocketConnection", "_handle_pong_event", "method"),
    ("trio.SocketStream.socket", "_sock", "attr"),
)

def send_nowait(stream: trio.abc.Stream, data: bytes) -> int:
    """Bytes a TCP stream's socket takes now (one non-blocking send); 0 leaves it all to send_all,
    which then waits, or raises an error the Trio way."""
    if type(stream) is not trio.SocketStream or stream.socket.did_shutdown_SHUT_WR:
        return 0
    try:
        sent: int = stream.socket._sock.send(data)  # type: ignore[attr-defined]
    except OSError:
        return 0
    return sent


class _TailFirstLock:
    """The connection's stream lock, which writes a pending partial frame before anything else.

    ``ServerWebSocket.write_nowait`` may leave the end of a frame (``tail``) for a writer task;
    until it is written, no other bytes (trio-websocket's pongs and close frames) may go on the
    stream, or they would land inside that frame. The lock holds the tail and the stream, not
    the connection: no reference cycle, so a closed connection is freed by reference counts
    (with a cycle, its ~40 objects waited for a full collection, or for ever once frozen).
    """

    __slots__ = ("_lock", "stream", "tail")

    def __init__(self, lock: trio.StrictFIFOLock, stream: trio.abc.Stream) -> None:
        self._lock = lock
        self.stream = stream
        self.tail = b""

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
        tail = self.tail
        if tail:
            self.tail = b""
            try:
                await self.stream.send_all(tail)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the caller's own write meets the same broken stream and reports it
            except BaseException:
                self._lock.release()
                raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


_LINGER_S = 1.0
_MESSAGES_PER_TURN = 4  # frames handled from one read before the reader lets the others run

# Stand-ins for per-connection objects of the library that a server connection no longer needs
# once it is open (see ServerWebSocket.read_frames): shared, already set / closed.
_DONE = trio.Event()
_DONE.set()
_CLOSED_SEND, _CLOSED_RECEIVE = trio.open_memory_channel[Any](0)
_CLOSED_SEND.close()
_CLOSED_RECEIVE.close()


def _ignore(_: Any = None) -> None:
    """The sink before the shell sets its own (no message can arrive before the handshake)."""


async def _no_wait() -> None:
    """Ending at once: the default of ``wait_to_end`` (the shell sets its own)."""


class ServerWebSocket(WebSocketConnection):
    """A connection this server accepted: read by the connection's own task, no reader task.

    :meth:`read_request` reads up to the HTTP upgrade request; after ``request.accept()``,
    :meth:`read_frames` reads until the connection ends, handing each whole message to
    ``on_message`` and each pong to ``on_pong`` synchronously (no channel, no second task).
    """

    def __init__(self, stream: trio.abc.Stream, *, max_message_size: int) -> None:
        super().__init__(stream, WSConnection(ConnectionType.SERVER), max_message_size=max_message_size)
        self._lock = _TailFirstLock(self._stream_lock, stream)
        self._stream_lock = self._lock  # type: ignore[assignment]
        self.on_message: Callable[[str | bytes], None] = _ignore
        self.on_pong: Callable[[], None] = _ignore
        # Awaited when the peer ends the connection (its close frame, EOF or a reset), before the
        # close is answered: the shell lets a few connection ends run per scheduler round.
        self.wait_to_end: Callable[[], Awaitable[None]] = _no_wait
        self.request: WebSocketRequest | None = None
        # Until junior_until (Trio's clock) this connection's reads wait their turn at the shell's
        # gate (a few per scheduler round, see _readgate.py); then they are Trio's, as any socket's.
        self.read_gate: ReadGate | None = None
        self.junior_until = 0.0
        self._connection_proposal = None  # the library's hand-over to its handler task: not used

    # ------------------------------------------------------------------ reading

    async def read_request(self) -> bool:
        """Read until the HTTP upgrade request has arrived (True; see :meth:`take_request`); False if
        the connection ended first."""
        await self._read(until_request=True)
        return self.request is not None

    def take_request(self) -> WebSocketRequest:
        """The request, held by the caller only (this connection forgets it)."""
        request, self.request = self.request, None
        assert request is not None
        return request

    async def read_frames(self) -> None:
        """Read and dispatch frames until the connection ends (closed, lost, or a protocol error)."""
        if self._wsproto.state is ConnectionState.OPEN:
            self._forget_handshake()
        await self._read(until_request=False)

    def _forget_handshake(self) -> None:
        """Drop what only the handshake needed (fewer objects per connection for the collector):
        the HTTP machinery (only the frame protocol is kept), the request, the library's message
        channel (messages go to ``on_message``) and its handshake events (shared, set)."""
        connection = self._wsproto.connection
        if connection is not None:
            self._wsproto = connection  # type: ignore[assignment]  # same interface, after the handshake
        self.request = None
        self._send_channel, self._recv_channel = _CLOSED_SEND, _CLOSED_RECEIVE
        self._open_handshake = self._for_testing_peer_closed_connection = _DONE

    async def _read(self, *, until_request: bool) -> None:
        """trio-websocket 0.12's ``_reader_task`` loop, run in the caller's task, without its channel."""
        event: Event | None = None
        while self._reader_running:
            for handled, event in enumerate(self._wsproto.events(), start=1):
                try:
                    await self._dispatch(event)
                except ConnectionClosed:
                    self._reader_running = False
                    break
                if until_request and self.request is not None:
                    return
                if handled % _MESSAGES_PER_TURN == 0:
                    # A peer pipelining many frames in one read does not keep the others waiting:
                    # its next frames after everyone else's turn (trio-websocket's channel gave
                    # the same, one message per turn).
                    await trio.lowlevel.checkpoint()
            event = None  # R13 and fewer objects: the last event is not kept while waiting
            if not self._reader_running:
                break
            try:
                data = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.wait_to_end()
                await self._abort_web_socket()
                break
            if not data:
                if self._wsproto.state != ConnectionState.CLOSED:
                    await self.wait_to_end()
                    await self._abort_web_socket()  # TCP closed before the WebSocket: abnormal
                break
            if self._wsproto.state != ConnectionState.CLOSED:
                try:
                    self._wsproto.receive_data(bytes(data))
                except RemoteProtocolError as err:
                    if err.event_hint:
                        await self._send(err.event_hint)
                    await self._close_stream()
            del data  # R13: not kept while waiting for the next read

    async def _receive(self) -> bytes | bytearray:
        """The next bytes from the peer (b"" at its end): through the gate while the connection is
        junior, as trio's ``receive_some`` after that (same errors, same checkpoint)."""
        gate = self.read_gate
        if gate is not None:
            raw = self._stream.socket._sock  # type: ignore[attr-defined]  # a SocketStream (set by the shell)
            if trio.current_time() < self.junior_until:
                while True:
                    await gate.wait_readable(raw.fileno())
                    try:
                        data: bytes = raw.recv(self._receive_buffer_size)
                    except BlockingIOError:
                        continue  # woken by a hang-up already read, or spuriously: wait again
                    except OSError as error:
                        raise trio.BrokenResourceError(*error.args) from error
                    return data
            self.read_gate = None
            gate.forget(raw.fileno())
        return await self._stream.receive_some(self._receive_buffer_size)

    def _gate_notify_closing(self) -> None:
        gate = self.read_gate
        if gate is not None:
            self.read_gate = None
            gate.notify_closing(self._stream.socket.fileno())  # type: ignore[attr-defined]

    async def _dispatch(self, event: Event) -> None:
        kind = type(event)
        if kind is TextMessage or kind is BytesMessage:
            await self._handle_message_event(event)  # type: ignore[arg-type]
        elif kind is Ping:
            await self._handle_ping_event(event)  # type: ignore[arg-type]
        elif kind is Pong:
            await self._handle_pong_event(event)  # type: ignore[arg-type]
        elif kind is CloseConnection:
            if self._wsproto.state is not ConnectionState.CLOSED:
                await self.wait_to_end()  # the peer ends it (the reply to our own close is not held)
            await self._handle_close_connection_event(event)  # type: ignore[arg-type]
        elif kind is Request:
            await self._handle_request_event(event)  # type: ignore[arg-type]
        # A server sees no other event (accept/reject events are a client's).

    # ------------------------------------------------------------------ the library's handlers, overridden

    async def _handle_request_event(self, event: Request) -> None:
        self.request = WebSocketRequest(self, event)

    async def _handle_message_event(self, event: TextMessage | BytesMessage) -> None:
        """A whole message goes to ``on_message`` at once; fragments are joined first.

        R13: once handed on, the event no longer holds the text (wsproto events are frozen
        dataclasses: emptied in place), nor does the list of parts.
        """
        if self._wsproto.state != ConnectionState.OPEN:
            # Our close frame is out: a message arriving now reaches nobody, and a too-large one
            # must not be answered with a second close frame, which wsproto refuses.
            self._message_parts, self._message_size = [], 0
        elif event.message_finished and not self._message_parts and len(event.data) <= self._max_message_size:
            self.on_message(event.data)  # type: ignore[arg-type]  # wsproto's data: str or bytes
        else:
            self._message_size += len(event.data)
            self._message_parts.append(event.data)  # type: ignore[arg-type]
            if self._message_size > self._max_message_size:
                err = f"Exceeded maximum message size: {self._max_message_size} bytes"
                self._message_size, self._message_parts = 0, []
                self._close_reason = CloseReason(1009, err)
                await self._send(CloseConnection(code=1009, reason=err))
                self._reader_running = False
                await self.linger()
            elif event.message_finished:
                parts = self._message_parts
                self._message_size, self._message_parts = 0, []
                message = b"".join(parts) if type(event) is BytesMessage else "".join(parts)  # type: ignore[arg-type]
                parts.clear()
                self.on_message(message)
                del message
        object.__setattr__(event, "data", type(event.data)())

    async def _handle_ping_event(self, event: Ping) -> None:
        """Answer a client's ping only while the connection is open.

        trio-websocket 0.12 answers every ping; after the server has sent its close frame
        wsproto refuses the pong with LocalProtocolError, which ended the connection's task
        with an internal error (and, with the library's own tasks, the whole server).
        """
        if self._wsproto.state == ConnectionState.OPEN:
            await self._send(event.response())

    async def _handle_pong_event(self, event: Pong) -> None:
        """The heartbeat's answer (R45): the shell keeps its own one-ping-in-flight state."""
        self.on_pong()

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        """Send the close frame RFC 6455 asks for when a client's frame cannot be parsed.

        wsproto reports a frame it cannot parse (a text frame that is not UTF-8: 1007; a
        broken frame: 1002) as a CloseConnection while the connection is still OPEN, and
        trio-websocket 0.12 then closes the TCP connection without any close frame: send
        the close with wsproto's code first.
        """
        state = self._wsproto.state
        if state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            if state == ConnectionState.OPEN:
                # As aclose() does: the reason first, so that a concurrent ping() or send sees the close.
                self._close_reason = CloseReason(event.code, event.reason or None)
                with contextlib.suppress(ConnectionClosed):
                    await self._send(CloseConnection(code=event.code, reason=event.reason))
            # In LOCAL_CLOSING our own close frame (leave, end_call...) may still wait for the
            # stream lock behind a pong: the library would close the stream under it. The
            # linger takes the lock (FIFO) before its FIN, so that frame goes out first.
            await self.linger()
        await super()._handle_close_connection_event(event)

    async def linger(self) -> None:
        """After the close frame of a connection the server fails: FIN, then drop what the peer still sends.

        Closing a socket with unread input resets the connection, and the reset discards the
        close frame if it has not left yet: a client that had sent more than the broken frame
        (the rest of an oversized one, pipelined requests) saw no 1007/1009, only a reset.
        Bounded: at most _LINGER_S and 64 reads; a well-behaved peer answers the close and
        closes its side at once.
        """
        stream = self._stream
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            return
        with trio.move_on_after(_LINGER_S), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError
        ):
            async with self._stream_lock:
                await stream.send_eof()
            for _ in range(64):
                if not await stream.receive_some(65536):
                    return

    # ------------------------------------------------------------------ writing

    @property
    def tail(self) -> bytes:
        """Framed bytes the socket took only part of, for the writer to finish (kept by the lock)."""
        return self._lock.tail

    @tail.setter
    def tail(self, value: bytes) -> None:
        self._lock.tail = value

    def is_open(self) -> bool:
        return self._close_reason is None and self._wsproto.state is ConnectionState.OPEN

    def write_nowait(self, data: bytes) -> bool:
        """Write framed bytes now if nothing else is writing: False when the lock is busy (the
        caller's writer task must do it). What the socket does not take now stays in ``tail``."""
        if self.tail or self._stream_lock.locked():
            return False
        sent = send_nowait(self._stream, data)
        if sent < len(data):
            self.tail = data[sent:] if sent else data
        return True

    async def write(self, data: bytes) -> None:
        """Write framed bytes under the connection's lock (after any tail); ConnectionClosed if it is gone."""
        if self._close_reason is not None:
            raise ConnectionClosed(self._close_reason)
        await self._write_now(data)

    async def _write_now(self, data: bytes) -> None:
        """Write under the lock, after any tail, without the schedule points the socket takes at once
        (Lock.acquire and socket send each yield once even when they need not wait)."""
        lock = self._stream_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self.tail:
                data, self.tail = self.tail + data, b""
            sent = send_nowait(self._stream, data)
            if sent < len(data):
                await self._stream.send_all(data[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._abort_web_socket()
            assert self._close_reason is not None
            raise ConnectionClosed(self._close_reason) from None
        finally:
            lock.release()

    async def close_with(self, code: int, reason: str) -> None:
        """The close handshake started by this side (R46 and the contract's closes), as ``aclose``."""
        await self.aclose(code, reason)

    async def wait_closed(self) -> None:
        await self._close_handshake.wait()

    async def abort(self) -> None:
        """Close the TCP connection now, no close frame (a dropped or lost connection)."""
        self._gate_notify_closing()
        await trio.aclose_forcefully(self._stream)

    async def _close_stream(self) -> None:
        """The library's stream close (from any task): a reader waiting at the gate hears of it, and
        a TCP socket is closed at once (the library's way adds a schedule point per close, which a
        burst of 2,000 leaving clients paid 2,000 times in a few rounds)."""
        self._gate_notify_closing()
        if type(self._stream) is trio.SocketStream:
            self._reader_running = False
            self._stream.socket.close()
        else:
            await super()._close_stream()

    async def _close_web_socket(self, code: int, reason: str | None = None) -> None:
        """Mark the connection closed, as the library does; its message channel is the shared closed
        one once the connection is open (nothing to close, no schedule point)."""
        self._close_reason = CloseReason(code, reason)
        if self._send_channel is not _CLOSED_SEND:
            await self._send_channel.aclose()

    async def _send(self, event: Event) -> None:
        """The library's send of a control frame (handshake answer, pong, close), as the shell's
        frames are written: at once when the socket takes it (the library's way has two schedule
        points per frame, which a burst of 2,000 leaving clients paid 2,000 times), else under the
        lock. Unlike :meth:`write`, it goes out while closing: it is the close frame."""
        await self._write_now(self._wsproto.send(event))

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream


