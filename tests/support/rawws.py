"""Raw WebSocket clients for the hardening tests and the benchmarks: any frame, however broken.

trio-websocket and websocket-client only send well-formed frames; the hardening work needs the
others too (fragments, invalid UTF-8, binary frames, frames cut off mid-way, reserved bits, clients
that never read). The bytes come from the project's codec (``reference_server.wscodec``, which also
builds the broken ones); here is only the I/O around it:

- :class:`SyncClient`: blocking sockets with timeouts (fuzz, soak and the out-of-process tests);
- :class:`TrioClient`: the same over a Trio stream (in-process tests).

Both answer the server's pings by themselves unless told not to (a half-open client), and every
read is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import trio

from reference_server.protocol import RefNumbers, answers
from reference_server.wscodec import (
    CLOSE_ABNORMAL,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    MessageAssembler,
    client_frame,
    close_code,
    close_payload,
    is_accepted,
    new_key,
    response_status,
    split_head,
    upgrade_request,
)

_refs = RefNumbers()


class WsError(Exception):
    """The peer broke the protocol, or a read timed out."""


class WsTimeout(WsError):
    """No frame (or no handshake answer) in time."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message or control frame from the server: text and binary messages are whole."""

    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return close_code(self.payload) if self.opcode == OP_CLOSE else None

    def json(self) -> dict[str, Any]:
        value = json.loads(self.payload.decode("utf-8"))
        assert isinstance(value, dict)
        return value


DROPPED = Message(OP_CLOSE, CLOSE_ABNORMAL.to_bytes(2, "big"))  # the connection ended without a close frame


def text_frame(text: str | bytes) -> bytes:
    """A client's text frame (masked) around ``text``."""
    return client_frame(text.encode("utf-8") if isinstance(text, str) else text, OP_TEXT)


def json_frame(obj: Any) -> bytes:
    return text_frame(json.dumps(obj, separators=(",", ":")))


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    return client_frame(close_payload(code, reason), OP_CLOSE)


def parse_url(url: str) -> tuple[str, int, str]:
    """``ws://HOST:PORT/PATH`` into its parts."""
    assert url.startswith("ws://"), url
    hostport, _, path = url[5:].partition("/")
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port), "/" + path


class Handshake:
    """The client's side of the HTTP upgrade: the request to send, then the answer's bytes fed in."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.key = new_key()
        self.request = upgrade_request(f"{host}:{port}", path, self.key)
        self._received = b""

    def feed(self, data: bytes) -> tuple[int, bytes] | None:
        """(the HTTP status, the bytes after the head) once the head is whole, else None."""
        self._received += data
        split = split_head(self._received)
        if split is None:
            return None
        head, rest = split
        status = response_status(head.split(b"\r\n", 1)[0].decode("latin-1"))
        if status == 101 and not is_accepted(head, self.key):
            raise WsError("bad Sec-WebSocket-Accept")
        return status, rest


class MessageReader:
    """Server messages out of a byte stream: fragments joined, control frames as they come."""

    def __init__(self) -> None:
        self._parser = FrameParser(masked=False)
        self._assembler = MessageAssembler()

    def feed(self, data: bytes) -> list[Message]:
        frames = self._parser.feed(data)
        if self._parser.error is not None:
            raise WsError(str(self._parser.error))
        return [Message(opcode, payload) for opcode, payload in self._assembler.feed(frames)]


# --------------------------------------------------------------------------- blocking client


class SyncClient:
    """A blocking client; ``recv`` answers pings (unless ``answer_pings`` is off) and returns messages."""

    def __init__(self, url: str, *, timeout: float = 10.0, rcvbuf: int | None = None,
                 answer_pings: bool = True) -> None:
        host, port, path = parse_url(url)
        self.timeout = timeout
        self.answer_pings = answer_pings
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handshake = Handshake(host, port, path)
        self.sock.sendall(handshake.request)
        deadline = time.monotonic() + timeout
        got = None
        while got is None:
            if time.monotonic() > deadline:
                raise WsTimeout("no handshake response")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise WsError("closed during the handshake")
            got = handshake.feed(chunk)
        self.status, rest = got
        if self.status != 101:
            raise WsError(f"handshake answered HTTP {self.status}")
        self.reader = MessageReader()
        self.pending: list[Message] = list(self.reader.feed(rest))
        self.closed: Message | None = None

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, obj: Any) -> None:
        self.sock.sendall(json_frame(obj))

    def recv(self, timeout: float | None = None) -> Message:
        """The next text, binary or close frame (after a close, the close again)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            while self.pending:
                frame = self.pending.pop(0)
                if frame.opcode == OP_PING:
                    if self.answer_pings and self.closed is None:
                        self._send_quietly(client_frame(frame.payload, OP_PONG))
                    continue
                if frame.opcode == OP_PONG:
                    continue
                if frame.opcode == OP_CLOSE and self.closed is None:
                    self.closed = frame
                    self._send_quietly(client_frame(frame.payload[:2], OP_CLOSE))
                return frame
            if self.closed is not None:
                return self.closed
            left = deadline - time.monotonic()
            if left <= 0:
                raise WsTimeout("no frame in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise WsTimeout("no frame in time") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = DROPPED
                return self.closed
            self.pending.extend(self.reader.feed(chunk))

    def recv_json(self, timeout: float | None = None) -> dict[str, Any]:
        frame = self.recv(timeout)
        if frame.opcode != OP_TEXT:
            raise WsError(f"expected a text frame, got opcode {frame.opcode} (close {frame.close_code})")
        return frame.json()

    def hello(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.send_json(obj)
        welcome = self.recv_json()
        if welcome.get("type") != "welcome":
            raise WsError(f"hello answered {welcome.get('type')} {welcome.get('code')}")
        return welcome

    def request(self, frame: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Send ``frame`` with a fresh ref; (the events before its answer, the answer)."""
        ref = _refs.fresh("h")
        self.send_json({**frame, "ref": ref})
        events: list[dict[str, Any]] = []
        while not answers(got := self.recv_json(), ref):
            events.append(got)
        return events, got

    def ok(self, frame: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        events, answer = self.request(frame)
        if answer["type"] != "ok":
            raise WsError(f"{frame['type']} answered {answer.get('code')}")
        return events, answer

    def barrier(self) -> list[dict[str, Any]]:
        """Every frame caused so far on this connection (the ``ping`` barrier)."""
        return self.ok({"type": "ping"})[0]

    def expect_close(self, timeout: float | None = None) -> tuple[int | None, list[dict[str, Any]]]:
        frames: list[dict[str, Any]] = []
        while True:
            frame = self.recv(timeout)
            if frame.opcode == OP_CLOSE:
                return frame.close_code, frames
            if frame.opcode == OP_TEXT:
                frames.append(frame.json())

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.closed is None:
                self.sock.sendall(close_frame(1000))
        self.sock.close()

    def abort(self) -> None:
        """Drop the TCP connection with a reset, no close frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# --------------------------------------------------------------------------- Trio client


class TrioClient:
    """The same client over a Trio stream. Create with :meth:`connect`."""

    def __init__(self, stream: trio.SocketStream, leftover: bytes, answer_pings: bool) -> None:
        self.stream = stream
        self.reader = MessageReader()
        self.pending: list[Message] = list(self.reader.feed(leftover))
        self.answer_pings = answer_pings
        self.closed: Message | None = None
        self.welcome_frame: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, *, answer_pings: bool = True, wait_s: float = 10.0,
                      rcvbuf: int | None = None) -> TrioClient:
        host, port, path = parse_url(url)
        with trio.fail_after(wait_s):
            if rcvbuf is None:
                stream = await trio.open_tcp_stream(host, port)
            else:
                sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
                await sock.connect((host, port))
                stream = trio.SocketStream(sock)
            try:
                handshake = Handshake(host, port, path)
                await stream.send_all(handshake.request)
                got = None
                while got is None:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        raise WsError("closed during the handshake")
                    got = handshake.feed(chunk)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        status, rest = got
        if status != 101:
            await trio.aclose_forcefully(stream)
            raise WsError(f"handshake answered HTTP {status}")
        return cls(stream, rest, answer_pings)

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_json(self, obj: Any) -> None:
        await self.stream.send_all(json_frame(obj))

    async def recv(self, wait_s: float = 10.0) -> Message:
        with trio.fail_after(wait_s):
            while True:
                while self.pending:
                    frame = self.pending.pop(0)
                    if frame.opcode == OP_PING:
                        if self.answer_pings and self.closed is None:
                            await self._send_quietly(client_frame(frame.payload, OP_PONG))
                        continue
                    if frame.opcode == OP_PONG:
                        continue
                    if frame.opcode == OP_CLOSE and self.closed is None:
                        self.closed = frame
                        await self._send_quietly(client_frame(frame.payload[:2], OP_CLOSE))
                    return frame
                if self.closed is not None:
                    return self.closed
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    self.closed = DROPPED
                    return self.closed
                self.pending.extend(self.reader.feed(chunk))

    async def recv_json(self, wait_s: float = 10.0) -> dict[str, Any]:
        frame = await self.recv(wait_s)
        if frame.opcode != OP_TEXT:
            raise WsError(f"expected a text frame, got opcode {frame.opcode} (close {frame.close_code})")
        return frame.json()

    async def hello(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self.send_json(obj)
        welcome = await self.recv_json()
        if welcome.get("type") != "welcome":
            raise WsError(f"hello answered {welcome.get('type')} {welcome.get('code')}")
        self.welcome_frame = welcome
        return welcome

    async def expect_close(self, wait_s: float = 10.0) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the close; return its code and the text frames before it."""
        frames: list[dict[str, Any]] = []
        while True:
            frame = await self.recv(wait_s)
            if frame.opcode == OP_CLOSE:
                return frame.close_code, frames
            if frame.opcode == OP_TEXT:
                frames.append(frame.json())

    async def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def aclose(self) -> None:
        if self.closed is None:
            await self._send_quietly(close_frame(1000))
        await trio.aclose_forcefully(self.stream)

    async def abort(self) -> None:
        """Drop the TCP connection with a reset, no close frame."""
        self.stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(self.stream)
