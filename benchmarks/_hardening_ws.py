"""A raw WebSocket client for the hardening tests and benchmarks: any frame, however broken.

trio-websocket and websocket-client only send well-formed frames; the
hardening work needs the others too: fragmented messages, invalid UTF-8,
binary frames, frames cut off mid-way, reserved bits, clients that never
read. So frames are built here by hand (RFC 6455 section 5), and the
server's frames are parsed by a small sans-IO reader.

Three layers:
- :func:`client_frame`, :class:`FrameReader`, :func:`handshake_request` and
  :func:`split_handshake_response`: bytes in, bytes or frames out, no I/O;
- :class:`SyncClient`: blocking sockets with timeouts (fuzz.py, soak and the
  out-of-process tests);
- :class:`TrioClient`: the same over a Trio stream (in-process tests).

Both clients answer the server's pings by themselves unless told not to (a
half-open client), and every read is bounded by a timeout.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_sync_refs = 0

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class WsError(Exception):
    """The peer broke the protocol, or a read timed out."""


class WsTimeout(WsError):
    pass


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame from the server: text and binary messages are whole (reassembled)."""

    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE:
            return None
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005

    def json(self) -> dict[str, Any]:
        value = json.loads(self.payload.decode("utf-8"))
        assert isinstance(value, dict)
        return value


def client_frame(
    payload: bytes,
    opcode: int = OP_TEXT,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    mask_key: bytes | None = None,
) -> bytes:
    """One client frame; every bit can be set wrong on purpose."""
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = bytes((first, mask_bit | n))
    elif n < 65536:
        header = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
    else:
        header = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
    if not masked:
        return header + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    repeated = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big") if n else b""
    return header + key + body


def text_frame(text: str | bytes) -> bytes:
    return client_frame(text.encode("utf-8") if isinstance(text, str) else text, OP_TEXT)


def json_frame(obj: Any) -> bytes:
    return text_frame(json.dumps(obj, separators=(",", ":")))


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    return client_frame(struct.pack("!H", code) + reason.encode(), OP_CLOSE)


def fragments(payload: bytes, cuts: list[int], opcode: int = OP_TEXT) -> bytes:
    """``payload`` as one message in several frames, cut at the given byte offsets."""
    points = [0, *sorted({c for c in cuts if 0 < c < len(payload)}), len(payload)]
    parts = [payload[a:b] for a, b in itertools.pairwise(points)] or [b""]
    out = []
    for i, part in enumerate(parts):
        out.append(client_frame(part, opcode if i == 0 else OP_CONTINUATION, fin=i == len(parts) - 1))
    return b"".join(out)


def handshake_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """The HTTP upgrade request and the ``Sec-WebSocket-Accept`` value it must get back."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept


def split_handshake_response(buf: bytes, accept: bytes) -> tuple[int, bytes] | None:
    """(status, bytes after the headers) once the response head is in, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head, rest = buf[:end], buf[end + 4 :]
    status = int(head.split(b" ", 2)[1])
    if status == 101 and accept not in head:
        raise WsError("bad Sec-WebSocket-Accept")
    return status, rest


def parse_url(url: str) -> tuple[str, int, str]:
    """``ws://HOST:PORT/PATH`` into its parts."""
    assert url.startswith("ws://"), url
    hostport, _, path = url[5:].partition("/")
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port), "/" + path


class FrameReader:
    """Server frames out of a byte stream: messages reassembled, control frames as they come."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._parts: list[bytes] = []
        self._opcode = 0

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        out: list[Frame] = []
        while True:
            buf = self.buf
            if len(buf) < 2:
                return out
            fin, opcode = buf[0] & 0x80, buf[0] & 0x0F
            if buf[1] & 0x80:
                raise WsError("the server sent a masked frame")
            n, pos = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return out
                n, pos = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return out
                n, pos = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < pos + n:
                return out
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            if opcode >= 0x8:
                out.append(Frame(opcode, payload))
                continue
            if opcode != OP_CONTINUATION:
                self._opcode, self._parts = opcode, []
            self._parts.append(payload)
            if fin:
                out.append(Frame(self._opcode, b"".join(self._parts)))
                self._parts = []


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
        request, accept = handshake_request(host, port, path)
        self.sock.sendall(request)
        buf = b""
        deadline = time.monotonic() + timeout
        while (got := split_handshake_response(buf, accept)) is None:
            if time.monotonic() > deadline:
                raise WsTimeout("no handshake response")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise WsError("closed during the handshake")
            buf += chunk
        self.status, rest = got
        if self.status != 101:
            raise WsError(f"handshake answered HTTP {self.status}")
        self.reader = FrameReader()
        self.pending: list[Frame] = list(self.reader.feed(rest))
        self.closed: Frame | None = None

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, obj: Any) -> None:
        self.sock.sendall(json_frame(obj))

    def recv(self, timeout: float | None = None) -> Frame:
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
                if frame.opcode == OP_CLOSE:
                    if self.closed is None:
                        self.closed = frame
                        self._send_quietly(client_frame(frame.payload[:2], OP_CLOSE))
                    return frame
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
                self.closed = Frame(OP_CLOSE, struct.pack("!H", 1006))  # dropped without a close frame
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
        global _sync_refs
        _sync_refs += 1
        ref = f"h{_sync_refs}"
        self.send_json({**frame, "ref": ref})
        events: list[dict[str, Any]] = []
        while True:
            got = self.recv_json()
            if got.get("ref") == ref and got.get("type") in ("ok", "error"):
                return events, got
            events.append(got)

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
        try:
            if self.closed is None:
                self.sock.sendall(close_frame(1000))
        except OSError:
            pass
        self.sock.close()

    def abort(self) -> None:
        """Drop the TCP connection with a reset, no close frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# --------------------------------------------------------------------------- Trio client


class TrioClient:
    """The same client over a Trio stream. Create with :meth:`connect`."""

    def __init__(self, stream: Any, leftover: bytes, answer_pings: bool) -> None:
        self.stream = stream
        self.reader = FrameReader()
        self.pending: list[Frame] = list(self.reader.feed(leftover))
        self.answer_pings = answer_pings
        self.closed: Frame | None = None
        self.welcome_frame: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, *, answer_pings: bool = True, wait_s: float = 10.0,
                      rcvbuf: int | None = None) -> TrioClient:
        import trio

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
                request, accept = handshake_request(host, port, path)
                await stream.send_all(request)
                buf = b""
                while (got := split_handshake_response(buf, accept)) is None:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        raise WsError("closed during the handshake")
                    buf += chunk
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

    async def recv(self, wait_s: float = 10.0) -> Frame:
        import trio

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
                    self.closed = Frame(OP_CLOSE, struct.pack("!H", 1006))
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
        import trio

        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def aclose(self) -> None:
        import trio

        if self.closed is None:
            await self._send_quietly(close_frame(1000))
        await trio.aclose_forcefully(self.stream)

    async def abort(self) -> None:
        """Drop the TCP connection with a reset, no close frame."""
        import trio

        self.stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(self.stream)
