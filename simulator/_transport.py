"""How agents reach a server: one WebSocket client per connection, over memory or TCP.

The client side is sans-IO (:class:`ClientProtocol`, wsproto's client framing:
masked frames, the HTTP upgrade, close handshake, pong) and is driven by a
transport:

- :class:`MemoryNetwork` (in-process, virtual time): a lean in-memory stream
  pair. The server end is an ordinary ``trio.abc.Stream`` handed to the
  reference server through a :class:`MemoryListener`, so the server runs its
  own trio-websocket stack unchanged. The client end needs no task: bytes the
  server writes are fed to the client's wsproto at once (push), and bytes the
  client writes wake the server's reader. A paused or slow client stops
  taking bytes; past a small buffer the server's ``send_all`` blocks, as TCP
  back-pressure would, so R42 can happen.
- :class:`TcpTransport` (real sockets, real time): a reader task and a writer
  task around ``trio.open_tcp_stream``.

Nothing here knows the protocol's rules; frames are JSON objects.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import trio
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from reference_server import wscodec
from reference_server.wscodec import FrameParser
from reference_server.wscodec import client_frame as _client_frame

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

# Bytes a paused in-memory client holds before the server's send_all blocks (like a socket buffer).
MEMORY_BUFFER_BYTES = 4 * 1024
# Close code recorded when the stream ended without a close frame (RFC 6455's "abnormal closure").
ABNORMAL_CLOSURE = 1006


class ConnectionHandler(Protocol):
    """What a :class:`ClientProtocol` reports to its owner (an agent)."""

    def on_open(self) -> None: ...

    def on_frame(self, frame: dict[str, Any], size: int) -> None: ...

    def on_close(self, code: int, by: str) -> None: ...


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def drop(self) -> None: ...


class ClientConnection(Protocol):
    """What an agent's connection drives: :class:`ClientProtocol`, or a benchmark's comparison client."""

    def send(self, frame: dict[str, Any]) -> int: ...

    def close(self, code: int = 1000) -> None: ...

    def drop(self) -> None: ...


# Opens a connection over the in-memory network with another client stack than the simulator's own
# (``benchmarks/_plain_client.py``, for comparison): (handler, nursery, the server's listener, target).
OpenClient = Callable[[ConnectionHandler, trio.Nursery, "MemoryListener", str], ClientConnection]


class ClientProtocol:
    """One client WebSocket connection, sans-IO: JSON frames in and out."""

    __slots__ = ("_closed", "_handler", "_parts", "_transport", "_ws", "open")

    def __init__(self, handler: ConnectionHandler) -> None:
        self._handler = handler
        self._ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._transport: Transport | None = None
        self._parts: list[str] = []
        self._closed = False
        self.open = False

    def start(self, transport: Transport, host: str, target: str) -> None:
        self._transport = transport
        transport.write(self._ws.send(Request(host=host, target=target)))

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, frame: dict[str, Any]) -> int:
        """Send one JSON frame; returns its size in bytes (0 when the connection is no longer open)."""
        if not self.open or self._closed:
            return 0
        text = _encode(frame).decode("utf-8")
        try:
            data = self._ws.send(TextMessage(data=text))
        except LocalProtocolError:
            return 0
        assert self._transport is not None
        self._transport.write(data)
        return len(text.encode("utf-8")) if not text.isascii() else len(text)

    def close(self, code: int = 1000) -> None:
        """Start the close handshake (the server answers and closes the stream)."""
        if self.open and not self._closed:
            try:
                data = self._ws.send(CloseConnection(code=code))
            except LocalProtocolError:
                return
            assert self._transport is not None
            self._transport.write(data)

    def drop(self) -> None:
        """Lose the connection without a close frame (a fault)."""
        if self._transport is not None:
            self._transport.drop()
        self._finish(ABNORMAL_CLOSURE, "client")

    def receive_data(self, data: bytes | None) -> None:
        """Bytes from the server; ``None`` is the end of the stream."""
        if self._closed:
            return
        ws = self._ws
        try:
            ws.receive_data(data)
        except RemoteProtocolError:
            self._finish(ABNORMAL_CLOSURE, "protocol_error")
            return
        handler = self._handler
        for event in ws.events():
            kind = type(event)
            if kind is TextMessage:
                assert isinstance(event, TextMessage)
                if not event.message_finished:
                    self._parts.append(event.data)
                    continue
                text = event.data
                if self._parts:
                    self._parts.append(text)
                    text = "".join(self._parts)
                    self._parts.clear()
                try:
                    frame = _decode(text)
                except msgspec.DecodeError:
                    frame = {"type": None, "undecodable": True}
                if not isinstance(frame, dict):
                    frame = {"type": None, "not_an_object": True}
                handler.on_frame(frame, len(text) if text.isascii() else len(text.encode("utf-8")))
            elif kind is Ping:
                assert isinstance(event, Ping)
                self._write_event(event.response())
            elif kind is AcceptConnection:
                self.open = True
                handler.on_open()
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                self._write_event(event.response())
                self._finish(event.code, "server")
                return
            elif kind in (RejectConnection, RejectData):
                self._finish(ABNORMAL_CLOSURE, "rejected")
                return
            elif kind is BytesMessage:
                handler.on_frame({"type": None, "binary": True}, 0)
        if data is None:
            self._finish(ABNORMAL_CLOSURE, "server")

    def _write_event(self, event: Any) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError:
            return
        if self._transport is not None and data:
            self._transport.write(data)

    def _finish(self, code: int, by: str) -> None:
        if not self._closed:
            self._closed = True
            self.open = False
            self._handler.on_close(code, by)


class FastClientProtocol(ClientProtocol):
    """The same client, with the project's lean RFC 6455 codec (``reference_server.wscodec``) instead of
    wsproto's.

    Used over in-memory connections, where wsproto's general-purpose parser was a large share of a
    simulation's time. It speaks the same framing: the HTTP upgrade (the accept key is checked), masked
    client frames, text and continuation frames, ping/pong and the close handshake. The server side is
    untouched: trio-websocket and wsproto parse every byte it sends.
    """

    __slots__ = ("_close_sent", "_fragments", "_handshaking", "_head", "_key", "_mask_rng", "_parser")

    def __init__(self, handler: ConnectionHandler) -> None:
        super().__init__(handler)
        self._fragments: list[bytes] = []  # a text message's fragments until its last
        self._head = b""
        self._parser = FrameParser(masked=False)
        self._handshaking = True
        self._key = b""
        self._close_sent = False
        self._mask_rng = _mask_random

    def start(self, transport: Transport, host: str, target: str) -> None:
        self._transport = transport
        self._key = wscodec.new_key(self._mask_rng.getrandbits(128).to_bytes(16, "big"))
        transport.write(wscodec.upgrade_request(host, target, self._key))

    def send(self, frame: dict[str, Any]) -> int:
        if not self.open or self._closed or self._close_sent:
            return 0
        payload = _encode(frame)
        assert self._transport is not None
        self._transport.write(self._frame(0x1, payload))
        return len(payload)

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        return _client_frame(payload, opcode, True, self._mask_rng.getrandbits(32).to_bytes(4, "big"))

    def close(self, code: int = 1000) -> None:
        if self.open and not self._closed and not self._close_sent:
            self._close_sent = True
            assert self._transport is not None
            self._transport.write(self._frame(wscodec.OP_CLOSE, code.to_bytes(2, "big")))

    def receive_data(self, data: bytes | None) -> None:
        if self._closed:
            return
        if data is None:
            self._finish(ABNORMAL_CLOSURE, "server")
            return
        if self._handshaking:
            split = wscodec.split_head(self._head + data)
            if split is None:
                self._head += data
                return
            head, data = split
            self._handshaking = False
            self._head = b""
            if not wscodec.is_accepted(head, self._key):
                self._finish(ABNORMAL_CLOSURE, "rejected")
                return
            self.open = True
            self._handler.on_open()
        handler = self._handler
        for first, payload in self._parser.feed(data):
            if self._closed:
                return
            opcode = first & 0x0F
            if opcode == 0x1 or opcode == 0x0:
                if not first & 0x80:
                    self._fragments.append(payload)
                    continue
                text = payload
                if self._fragments:
                    self._fragments.append(payload)
                    text = b"".join(self._fragments)
                    self._fragments.clear()
                try:
                    frame = _decode(text)
                except msgspec.DecodeError:
                    frame = {"type": None, "undecodable": True}
                if not isinstance(frame, dict):
                    frame = {"type": None, "not_an_object": True}
                handler.on_frame(frame, len(text))
            elif opcode == 0x9:
                assert self._transport is not None
                if not self._close_sent:
                    self._transport.write(self._frame(wscodec.OP_PONG, payload))
            elif opcode == 0x8:
                code = wscodec.close_code(payload)
                if not self._close_sent:
                    self._close_sent = True
                    assert self._transport is not None
                    self._transport.write(self._frame(wscodec.OP_CLOSE, payload[:2]))
                self._finish(code, "server")
                return
            elif opcode == 0x2:
                handler.on_frame({"type": None, "binary": True}, len(payload))
        if self._parser.error is not None and not self._closed:  # a server must not mask
            self._finish(ABNORMAL_CLOSURE, "protocol_error")


# Mask keys and handshake keys: unpredictable is all RFC 6455 asks; they never reach the history.
_mask_random = random.Random()


# --------------------------------------------------------------------------- in memory


class _ServerEnd(trio.abc.Stream):
    """The server's side of one in-memory connection: a plain Trio stream."""

    def __init__(self, client: MemoryTransport) -> None:
        self._client = client
        self._writers: list[trio.lowlevel.Task] = []  # the server's tasks that wrote to this connection
        self._incoming = bytearray()
        self._eof = False  # the client will write no more
        self._closed = False
        self._readable = trio.lowlevel.ParkingLot()

    # client -> server
    def _feed(self, data: bytes) -> None:
        if not self._closed:
            self._incoming += data
            self._readable.unpark_all()

    def _feed_eof(self) -> None:
        self._eof = True
        self._readable.unpark_all()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            incoming = self._incoming
            if incoming:
                if max_bytes is None or max_bytes >= len(incoming):
                    data = bytes(incoming)
                    incoming.clear()
                else:
                    data = bytes(incoming[:max_bytes])
                    del incoming[:max_bytes]
                return data
            if self._eof:
                return b""
            await self._readable.park()

    # server -> client
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        client = self._client
        task = trio.lowlevel.current_task()
        if task not in self._writers:
            self._writers.append(task)
            client.network.writers[task] = client
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            if client.gone:
                raise trio.BrokenResourceError("the client dropped the connection")
            if client.backlog <= MEMORY_BUFFER_BYTES:
                break
            await client.drained.park()
        client.deliver(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            for task in self._writers:
                self._client.network.writers.pop(task, None)
            self._writers.clear()
            self._readable.unpark_all()
            self._client.server_closed()
        await trio.lowlevel.checkpoint()


class MemoryTransport:
    """The client's side of one in-memory connection; it has no task of its own."""

    __slots__ = ("_network", "_paused", "_pending", "backlog", "drained", "gone", "on_held", "owner",
                 "protocol", "server", "slow")

    def __init__(self, network: MemoryNetwork, protocol: ClientProtocol) -> None:
        self._network = network
        self.protocol = protocol
        self.owner: Any = None  # the simulator's connection object, for the seeded patient ids
        self.server = _ServerEnd(self)
        self.gone = False  # the client dropped or finished
        self._paused = False  # stalled: takes nothing
        self.slow = False  # a slow reader: takes what arrives only through take()
        self.on_held: Callable[[], None] | None = None  # called when a slow reader starts holding writes
        self._pending: list[bytes | None] = []  # held writes; None is the end of the stream
        self.backlog = 0
        self.drained = trio.lowlevel.ParkingLot()

    # the client writes
    def write(self, data: bytes) -> None:
        if not self.gone:
            self.server._feed(data)

    def drop(self) -> None:
        if not self.gone:
            self.gone = True
            self._pending.clear()
            self.backlog = 0
            self.server._feed_eof()
            self.drained.unpark_all()

    # the server writes
    def deliver(self, data: bytes) -> None:
        if self._paused or self.slow or self._pending:
            self._hold(data)
            return
        self._network.guarded(self.protocol.receive_data, data)

    def _hold(self, data: bytes | None) -> None:
        pending = self._pending
        pending.append(data)
        if data is not None:
            self.backlog += len(data)
        if len(pending) == 1 and self.slow and not self._paused and self.on_held is not None:
            self.on_held()

    def server_closed(self) -> None:
        if self.gone:
            return
        if self._paused or self.slow or self._pending:
            self._hold(None)
            return
        self.gone = True
        self._network.guarded(self.protocol.receive_data, None)

    # faults
    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        if not self.slow:
            self.take(math.inf)
        elif self._pending and self.on_held is not None:
            self.on_held()

    def take(self, max_chunks: float) -> None:
        """Hand up to ``max_chunks`` held writes to the client (a slow reader takes a few at a time)."""
        if self._paused:
            return
        taken = 0
        while self._pending and taken < max_chunks and not self.gone:
            data = self._pending.pop(0)
            taken += 1
            if data is None:
                self.gone = True
                self._network.guarded(self.protocol.receive_data, None)
                break
            self.backlog -= len(data)
            self._network.guarded(self.protocol.receive_data, data)
        if self.backlog <= MEMORY_BUFFER_BYTES:
            self.drained.unpark_all()

    @property
    def held(self) -> int:
        return len(self._pending)

    @property
    def network(self) -> MemoryNetwork:
        return self._network


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Hands the server the server ends of in-memory connections."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)

    def connect(self, stream: trio.abc.Stream) -> None:
        self._send.send_nowait(stream)

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class MemoryNetwork:
    """In-memory connections to one in-process server.

    Client code runs inside the server's writer tasks (bytes are pushed); an
    exception there is kept in :attr:`failure` and reported by the run, never
    swallowed as a server error.
    """

    def __init__(self) -> None:
        self.listener = MemoryListener()
        self.failure: BaseException | None = None
        self.on_failure: Callable[[], None] | None = None
        # The server's tasks that write to a connection -> that connection. The server handles a
        # hello in the task that wrote the handshake's answer, so an in-process server's id
        # generator can tell whose hello it is answering (ids per agent, not per call order).
        self.writers: dict[trio.lowlevel.Task, MemoryTransport] = {}

    def owner_of_current_task(self) -> Any:
        """The connection the current server task writes to (its ``owner``), or None."""
        transport = self.writers.get(trio.lowlevel.current_task())
        return transport.owner if transport is not None else None

    def connect(self, protocol: ClientProtocol, target: str, owner: Any = None) -> MemoryTransport:
        transport = MemoryTransport(self, protocol)
        transport.owner = owner
        self.listener.connect(transport.server)
        protocol.start(transport, "simulator.invalid", target)
        return transport

    def guarded(self, function: Callable[[bytes | None], None], data: bytes | None) -> None:
        if self.failure is not None:
            return
        try:
            function(data)
        except Exception as error:  # reported by the run with its traceback
            self.failure = error
            if self.on_failure is not None:
                self.on_failure()


# --------------------------------------------------------------------------- TCP


class TcpTransport:
    """One real connection: a writer task drains what the client wrote; a reader task feeds it bytes."""

    def __init__(self, protocol: ClientProtocol, on_failure: Callable[[BaseException], None],
                 on_unreachable: Callable[[OSError], None] | None = None) -> None:
        self.protocol = protocol
        self._on_unreachable = on_unreachable
        self._outgoing = bytearray()
        self._writable = trio.lowlevel.ParkingLot()
        self._stream: trio.SocketStream | None = None
        self._on_failure = on_failure
        self._resumed = trio.Event()
        self._resumed.set()
        self._slow_delay_s = 0.0
        self.gone = False

    def write(self, data: bytes) -> None:
        if not self.gone:
            self._outgoing += data
            self._writable.unpark_all()

    def drop(self) -> None:
        self.gone = True
        self._writable.unpark_all()
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.socket.close()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> None:
        if self._resumed.is_set():
            self._resumed = trio.Event()

    def resume(self) -> None:
        self._resumed.set()

    def set_slow(self, delay_s: float) -> None:
        self._slow_delay_s = delay_s

    async def run(self, host: str, port: int, target: str,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then read and write until the connection ends."""
        try:
            self._stream = await trio.open_tcp_stream(host, port)
        except OSError as error:
            if self._on_unreachable is not None:
                self._on_unreachable(error)
            task_status.started()
            self.protocol.receive_data(None)
            return
        self.protocol.start(self, host if ":" not in host else f"[{host}]", target)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self.gone = True
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)

    async def _reader(self) -> None:
        assert self._stream is not None
        while not self.gone:
            await self._resumed.wait()
            if self._slow_delay_s:
                await trio.sleep(self._slow_delay_s)
            try:
                data = await self._stream.receive_some(16384)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            self._feed(data if data else None)
            if not data:
                return

    def _feed(self, data: bytes | None) -> None:
        try:
            self.protocol.receive_data(data)
        except Exception as error:
            self._on_failure(error)
            raise

    async def _writer(self) -> None:
        assert self._stream is not None
        while True:
            if self._outgoing:
                data = bytes(self._outgoing)
                self._outgoing.clear()
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
            elif self.gone:
                return
            else:
                await self._writable.park()
