"""Fewer socket reads for websocket-client: its frame reader, served from one larger read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class _BufferedReads:
    """Socket reads for websocket-client's frame reader, served from one larger read.

    websocket-client reads a frame in two or three socket reads (header,
    extended length, payload); under load, frames arrive together, and one
    read of up to 64 KiB serves them all.
    """

    __slots__ = ("_buffer", "_offset", "_read")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buffer = b""
        self._offset = 0

    def __call__(self, size: int) -> bytes:
        if self._offset >= len(self._buffer):
            self._buffer = self._read(65536)  # raises when the connection is closed
            self._offset = 0
        start = self._offset
        self._offset = start + size
        return self._buffer[start:self._offset]


def buffer_reads(ws: Any) -> bool:
    """Give websocket-client's frame reader buffered reads; False if this version has no place for it."""
    frames = getattr(ws, "frame_buffer", None)
    read = getattr(ws, "_recv", None)
    if frames is None or read is None or not hasattr(frames, "recv"):
        return False
    frames.recv = _BufferedReads(read)
    return True
