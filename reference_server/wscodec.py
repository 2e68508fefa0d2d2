"""RFC 6455 WebSocket framing, written once: bytes in, frames out; frames in, bytes out.

Sans-IO like wsproto and h11: no sockets, no clock, no async framework (the gevent load tests, the
asyncio sink and the Trio simulator all use it). It is the lean codec of the project's fast paths
(the server's own writes, the simulator's in-memory clients, the load-test sink, the benchmark
clients) and of every raw test client, which is why it also builds frames that break the RFC on
purpose: the tests need a peer that misbehaves in exactly one way.

What it leaves to its callers: what an opcode means to them, when to answer a ping or a close,
and the connection's state. The HTTP upgrade is the handful of helpers a raw client or a minimal
server needs, not an HTTP parser.

Speed matters on the hot paths (``benchmarks/relay.py``, ``simulate_throughput.py``,
``load_generator.py``): headers of short frames are precomputed, masking is one XOR of two big
integers, and :class:`FrameParser` returns plain tuples.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from typing import Final

# RFC 6455 1.3: the GUID that turns a Sec-WebSocket-Key into its Sec-WebSocket-Accept.
GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

# The first header byte of a frame, as :class:`FrameParser` returns it: FIN, RSV1-3, the opcode.
FIN: Final = 0x80
RSV_BITS: Final = 0x70
OPCODE_BITS: Final = 0x0F

CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005  # a close frame without a code (never sent, only reported)
CLOSE_ABNORMAL: Final = 1006  # the stream ended without a close frame (never sent, only reported)
CLOSE_TOO_BIG: Final = 1009

MAX_CONTROL_PAYLOAD: Final = 125

# One frame as the parser hands it over: (its first header byte, its payload, unmasked).
Frame = tuple[int, bytes]


class FrameError(Exception):
    """The peer's bytes break RFC 6455 (or a limit); ``close_code`` is the close to answer with."""

    def __init__(self, message: str, close_code: int) -> None:
        super().__init__(message)
        self.close_code = close_code


# --------------------------------------------------------------------------- the handshake


def new_key(raw: bytes | None = None) -> bytes:
    """A ``Sec-WebSocket-Key``: 16 bytes (random unless given), base64."""
    return base64.b64encode(raw if raw is not None else os.urandom(16))


def accept_key(key: bytes | str) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server answers ``key`` with (RFC 6455 4.2.2)."""
    raw = key.encode("ascii") if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(raw + GUID).digest())


def upgrade_request(host: str, target: str, key: bytes) -> bytes:
    """A client's HTTP upgrade request; ``host`` is the Host header as the caller wants it."""
    return (
        b"GET " + target.encode("ascii") + b" HTTP/1.1\r\nHost: " + host.encode("ascii")
        + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def upgrade_response(key: bytes | str) -> bytes:
    """A server's ``101 Switching Protocols`` for a request that sent ``key``."""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n")


def split_head(buffer: bytes | bytearray) -> tuple[bytes, bytes] | None:
    """(the HTTP head without its blank line, the bytes after it) once the head is whole, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    return bytes(buffer[:end]), bytes(buffer[end + 4:])


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """An HTTP head's first line and its headers (names lower-cased; the last of a repeated one)."""
    first, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return first, headers


def response_status(first_line: str) -> int:
    """The status code of an HTTP response's first line (``HTTP/1.1 101 Switching Protocols``)."""
    return int(first_line.split(" ", 2)[1])


def is_accepted(head: bytes, key: bytes) -> bool:
    """Whether a response head is the ``101`` that upgrades the request which sent ``key``."""
    first, headers = parse_head(head)
    return response_status(first) == 101 and headers.get("sec-websocket-accept") == accept_key(key).decode()


# --------------------------------------------------------------------------- frames out


def mask(payload: bytes | bytearray, key: bytes | bytearray) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key`` (masking and unmasking are the same)."""
    n = len(payload)
    if not n:
        return b""
    repeated = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def _length_header(first: int, mask_bit: int, n: int) -> bytes:
    if n < 126:
        return bytes((first, mask_bit | n))
    if n < 65536:
        return bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    return bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")


_TEXT_HEADERS: Final = [bytes((FIN | OP_TEXT, n)) for n in range(126)]


def text_frame(payload: bytes) -> bytes:
    """A server's text frame (unmasked, final) around UTF-8 ``payload``: the server's hot path."""
    n = len(payload)
    if n < 126:
        return _TEXT_HEADERS[n] + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def server_frame(payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True) -> bytes:
    """A server's frame (unmasked) with any opcode; ``fin`` off for all but a message's last fragment."""
    return _length_header((FIN if fin else 0) | opcode, 0, len(payload)) + payload


def ping_frame(payload: bytes) -> bytes:
    """A server's ping (unmasked); ``payload`` at most 125 bytes."""
    return bytes((FIN | OP_PING, len(payload))) + payload


def client_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True, key: bytes | None = None) -> bytes:
    """A client's frame, masked with ``key`` (4 random bytes unless given), as RFC 6455 asks of clients.

    The simulator's and the benchmarks' hot path: written out in full, no helper calls."""
    if key is None:
        key = os.urandom(4)
    first = (FIN | opcode) if fin else opcode
    n = len(payload)
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = bytes((first, 0xFE)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 0xFF)) + n.to_bytes(8, "big")
    if n:
        masked = int.from_bytes(payload, "little") ^ int.from_bytes((key * ((n >> 2) + 1))[:n], "little")
        return header + key + masked.to_bytes(n, "little")
    return header + key


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, then the reason in UTF-8."""
    return code.to_bytes(2, "big") + reason.encode("utf-8")


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload (1005 when it has none)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NO_STATUS


def fragments(payload: bytes, cuts: list[int], opcode: int = OP_TEXT, *,
              between: bytes = b"", key: bytes | None = None) -> bytes:
    """One client message in several frames, cut at the given byte offsets (anywhere, even inside a
    character); ``between`` (whole frames, e.g. a ping) goes between each fragment and the next."""
    points = [0, *sorted({cut for cut in cuts if 0 < cut < len(payload)}), len(payload)]
    parts = [payload[a:b] for a, b in itertools.pairwise(points)] or [b""]
    last = len(parts) - 1
    out = []
    for index, part in enumerate(parts):
        out.append(client_frame(part, opcode if index == 0 else OP_CONTINUATION, fin=index == last, key=key))
        if index < last and between:
            out.append(between)
    return b"".join(out)


# --------------------------------------------------------------------------- broken frames, for tests


def raw_frame(payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True, rsv: int = 0, masked: bool = True,
              key: bytes | None = None, declared_length: int | None = None) -> bytes:
    """A frame with every field as given, right or wrong: ``rsv`` (0-7) sets RSV1-3, ``masked`` the mask
    bit, ``declared_length`` a length that need not match the payload that follows."""
    first = (FIN if fin else 0) | ((rsv & 0x7) << 4) | (opcode & OPCODE_BITS)
    length = len(payload) if declared_length is None else declared_length
    if not masked:
        return _length_header(first, 0, length) + payload
    if key is None:
        key = os.urandom(4)
    return _length_header(first, 0x80, length) + key + mask(payload, key)


def reserved_bits_frame(payload: bytes, rsv: int = 4) -> bytes:
    """A client text frame with reserved bits set and no extension that defines them: 1002."""
    return raw_frame(payload, rsv=rsv)


def bad_opcode_frame(payload: bytes, opcode: int = 0x3) -> bytes:
    """A client frame with a reserved opcode (0x3-0x7, 0xB-0xF): 1002."""
    return raw_frame(payload, opcode)


def unmasked_client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A client frame without a mask: 1002 (RFC 6455 5.1)."""
    return raw_frame(payload, opcode, masked=False)


def masked_server_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A server frame with a mask: a client must fail the connection (RFC 6455 5.1)."""
    return raw_frame(payload, opcode, masked=True)


def long_control_frame(size: int = MAX_CONTROL_PAYLOAD + 75, opcode: int = OP_PING) -> bytes:
    """A client control frame over 125 bytes: 1002 (RFC 6455 5.5)."""
    return raw_frame(b"x" * size, opcode)


def fragmented_control_frame(payload: bytes = b"", opcode: int = OP_PING) -> bytes:
    """A client control frame without FIN: 1002 (control frames are never fragmented)."""
    return raw_frame(payload, opcode, fin=False)


def oversized_header(declared_length: int, opcode: int = OP_TEXT) -> bytes:
    """Only the header of a client frame announcing ``declared_length`` bytes (a limit's test needs no
    payload: the length alone is over it)."""
    return raw_frame(b"", opcode, declared_length=declared_length)


def cut_frame(frame: bytes, keep: int | None = None) -> bytes:
    """The first ``keep`` bytes of ``frame`` (half of it by default): a frame cut off mid-way."""
    return frame[: len(frame) // 2 if keep is None else keep]


def not_utf8_text_frame(payload: bytes = b'{"type":"ping","ref":"\xff\xfe"}') -> bytes:
    """A client text frame whose payload is not UTF-8: 1007."""
    return client_frame(payload)


# --------------------------------------------------------------------------- frames in


class FrameParser:
    """Frames out of one direction of a byte stream (bytes in, frames out, nothing written).

    ``masked`` is what the peer must do: True on a server (client frames are masked), False on a
    client. ``max_payload`` bounds one frame's payload, checked as soon as its header is in. A frame
    is ``(first header byte, payload)``, the payload unmasked; fragments are not joined (see
    :class:`MessageAssembler`) and opcodes and RSV bits are the caller's to judge.

    A broken frame (the mask bit wrong, over the limit) ends the parse: :meth:`feed` returns the
    frames before it, :attr:`error` says what broke and why to close, and later input is ignored.
    """

    __slots__ = ("_buffer", "_mask_bit", "error", "max_payload")

    def __init__(self, *, masked: bool, max_payload: int | None = None) -> None:
        self._buffer = bytearray()
        self._mask_bit = 0x80 if masked else 0
        self.max_payload = max_payload
        self.error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        elif self.error is not None:
            return []
        else:
            view = data
        frames: list[Frame] = []
        mask_bit = self._mask_bit
        pos, end = 0, len(view)
        while end - pos >= 2:
            second = view[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(view[pos + 2:pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(view[pos + 2:pos + 10], "big")
                start = pos + 10
            if second & 0x80 != mask_bit or (self.max_payload is not None and length > self.max_payload):
                self._fail(second & 0x80, length)
                buffer.clear()
                return frames
            if mask_bit:
                stop = start + 4 + length
                if stop > end:
                    break
                frames.append((view[pos], mask(view[start + 4:stop], view[start:start + 4])))
            else:
                stop = start + length
                if stop > end:
                    break
                frames.append((view[pos], bytes(view[start:stop])))
            pos = stop
        if buffer:
            del buffer[:pos]
        elif pos < end:
            buffer += view[pos:]
        return frames

    def _fail(self, mask_bit: int, length: int) -> None:
        if self.max_payload is not None and length > self.max_payload:
            self.error = FrameError(f"a frame of {length} bytes, over the limit of {self.max_payload}",
                                    CLOSE_TOO_BIG)
        elif mask_bit:
            self.error = FrameError("a masked server frame", CLOSE_PROTOCOL_ERROR)
        else:
            self.error = FrameError("an unmasked client frame", CLOSE_PROTOCOL_ERROR)


class MessageAssembler:
    """Whole messages out of frames: fragments joined, control frames passed on as they come.

    :meth:`feed` returns ``(opcode, payload)`` per message (text or binary, whole) and per control
    frame. A continuation with no message begun, or a new message inside one, is a
    :class:`FrameError` (1002).
    """

    __slots__ = ("_opcode", "_parts")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._opcode = 0

    def feed(self, frames: list[Frame]) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for first, payload in frames:
            opcode = first & OPCODE_BITS
            if opcode >= OP_CLOSE:
                out.append((opcode, payload))
                continue
            if opcode == OP_CONTINUATION:
                if not self._opcode:
                    raise FrameError("a continuation frame with no message begun", CLOSE_PROTOCOL_ERROR)
            elif self._opcode:
                raise FrameError("a new message inside a fragmented one", CLOSE_PROTOCOL_ERROR)
            else:
                self._opcode = opcode
            if first & FIN:
                if self._parts:
                    self._parts.append(payload)
                    payload = b"".join(self._parts)
                    self._parts = []
                out.append((self._opcode, payload))
                self._opcode = 0
            else:
                self._parts.append(payload)
        return out
