"""One WebSocket connection to a queue-chat server, for gevent: websocket-client plus a reader greenlet.

The reader decodes each frame with the project's protocol module and hands
it on: the answer to the ``hello`` is the first ``welcome`` or ``error`` on
the connection, whatever its ``ref`` (the contract does not promise that a
``welcome`` echoes the hello's ``ref``); after it, answers (``ok``/``error``
with a ``ref`` of a waiting request: every answer after ``welcome`` carries
its request's ``ref``) wake the request; ``message`` events go to
``on_message`` with the time they were read; other events to ``on_event``;
errors of fire-and-forget sends (their ``ref`` is the send's key) to
``on_send_error``. Nothing here depends on a choice the reference server
makes where the contract is silent (docs/protocol.md, "Choices"): not the
shape of ids, not extra frames, not how frames are split, not close codes
or reasons, not when an ``ok`` comes.

Exceptions raised here carry codes and entry names only, never a frame's
text or a name: Locust shows and saves their messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from time import perf_counter
from typing import Any

import gevent  # type: ignore[import-untyped]  # gevent ships no type information
import msgspec
import websocket
from gevent.event import AsyncResult  # type: ignore[import-untyped]

from reference_server.protocol import RefNumbers, decode_event

from ._wsbuffer import buffer_reads

_refs = RefNumbers()
UNAUTHORIZED = "unauthorized: is the secret right?"  # said once when the server refuses the token
_json_encode = msgspec.json.Encoder().encode


class LoadTestError(Exception):
    """Base of the errors the load users report to Locust (codes only, no user text)."""


class ServerError(LoadTestError):
    """The server answered ``error{code}``."""

    def __init__(self, code: str) -> None:
        super().__init__(f"server answered error {code}")
        self.code = code


class NoAnswer(LoadTestError):
    """No answer (or no expected event) within the timeout."""

    code = "timeout"

    def __init__(self, what: str, timeout_s: float) -> None:
        super().__init__(f"no {what} within {timeout_s:g} s")


class Disconnected(LoadTestError):
    """The connection ended when the user did not end it."""

    code = "disconnected"

    def __init__(self, close_code: int | None) -> None:
        shown = f"close {close_code}" if close_code is not None else "dropped without a close"
        super().__init__(f"connection ended ({shown})")
        self.close_code = close_code


class ConnectFailed(LoadTestError):
    """The WebSocket could not be opened (refused, handshake failed, timed out)."""

    code = "connect_failed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot connect: {reason}")


def describe_connect_error(error: BaseException) -> str:
    """A short reason for a failed connect; the exception's own text may quote a server's HTTP body."""
    status = getattr(error, "status_code", None)
    if status is not None:
        return f"HTTP {status} instead of a WebSocket upgrade"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError | websocket.WebSocketTimeoutException):
        return "timed out"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return type(error).__name__


class Connection:
    """One connection with a reader greenlet; requests are matched to answers by ``ref``."""

    def __init__(
        self,
        url: str,
        *,
        on_message: Callable[[dict[str, Any], float, int], None],
        on_event: Callable[[dict[str, Any], float], None],
        on_send_error: Callable[[str, str], None],
        on_closed: Callable[[Connection, int | None], None],
        on_open_change: Callable[[int], None] | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self._on_message = on_message
        self._on_event = on_event
        self._on_send_error = on_send_error
        self._on_closed = on_closed
        self._on_open_change = on_open_change
        self._connect_timeout_s = connect_timeout_s
        self._ws: Any = None
        self._reader: gevent.Greenlet | None = None
        self._waiters: dict[str, AsyncResult] = {}
        self._hello_waiter: AsyncResult | None = None  # set until the hello's answer arrives
        self.open = False
        self.expect_close = False  # set before a close the user causes (end_call, leave, stop)
        self.close_code: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def connect(self) -> None:
        try:
            ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True)
            ws.connect(self.url, timeout=self._connect_timeout_s,  # type: ignore[no-untyped-call]
                       suppress_origin=True)
        except Exception as error:  # websocket-client raises many kinds; all mean "could not connect"
            raise ConnectFailed(describe_connect_error(error)) from None
        ws.settimeout(None)
        buffer_reads(ws)
        self._ws = ws
        self._set_open(True)
        self._reader = gevent.spawn(self._read_forever)

    def _set_open(self, value: bool) -> None:
        """``open``, and ``on_open_change`` told once per change (+1 opened, -1 ended), whichever side
        ends the connection first."""
        if value != self.open:
            self.open = value
            if self._on_open_change is not None:
                self._on_open_change(1 if value else -1)

    def close(self) -> None:
        """End the connection now (a close frame, no wait for the answer) and stop the reader."""
        self.expect_close = True
        ws, self._ws = self._ws, None
        if ws is not None:
            # A stalled server may leave no room in the socket for the close frame: do not wait on it.
            with gevent.Timeout(1.0, False), contextlib.suppress(Exception):  # already gone: nothing to say
                ws.send_close(1000)
            with contextlib.suppress(Exception):
                ws.shutdown()
        self._set_open(False)
        reader, self._reader = self._reader, None
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=True, timeout=2.0)
        self._fail_waiters(Disconnected(None))

    # ------------------------------------------------------------------ sending

    def send_bytes(self, data: bytes) -> None:
        ws = self._ws
        if ws is None:
            raise Disconnected(self.close_code)
        try:
            ws.send(data, websocket.ABNF.OPCODE_TEXT)
        except Exception:
            raise Disconnected(self.close_code) from None

    def request(self, frame: dict[str, Any], *, timeout_s: float,
                what: str) -> tuple[dict[str, Any], float, int]:
        """Send a request with a fresh ``ref``; return its answer, when it was read (perf_counter)
        and its size."""
        ref = _refs.fresh("r")
        frame = {**frame, "ref": ref}
        waiter = AsyncResult()
        self._waiters[ref] = waiter
        try:
            self.send_bytes(encode_json(frame))
            try:
                answer, at, size = waiter.get(timeout=timeout_s)
            except gevent.Timeout:
                raise NoAnswer(what, timeout_s) from None
        finally:
            self._waiters.pop(ref, None)
        if answer.get("type") == "error":
            raise ServerError(str(answer.get("code")))
        return answer, at, size

    def hello(self, frame: dict[str, Any], *, timeout_s: float) -> tuple[dict[str, Any], float, int]:
        """Send ``hello``; return its answer (the first ``welcome`` on the connection), when it was read
        and its size. The first ``error`` before it raises :class:`ServerError`; no ``ref`` is needed
        on either."""
        waiter = AsyncResult()
        self._hello_waiter = waiter
        try:
            self.send_bytes(encode_json(frame))
            try:
                answer, at, size = waiter.get(timeout=timeout_s)
            except gevent.Timeout:
                raise NoAnswer("welcome", timeout_s) from None
        finally:
            self._hello_waiter = None
        if answer.get("type") == "error":
            raise ServerError(str(answer.get("code")))
        return answer, at, size

    def _fail_waiters(self, error: Exception) -> None:
        hello, self._hello_waiter = self._hello_waiter, None
        if hello is not None:
            hello.set_exception(error)
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.set_exception(error)

    # ------------------------------------------------------------------ reading

    def _read_forever(self) -> None:
        ws = self._ws
        close_code: int | None = None
        while True:
            try:
                opcode, frame = ws.recv_data_frame(True)
            except gevent.GreenletExit:
                raise
            except Exception:  # the connection broke without a close frame (dropped)
                break
            at = perf_counter()
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._dispatch(frame.data, at)  # a bug in handling shows, it is not a disconnect
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                break
        self._set_open(False)
        self.close_code = close_code
        self._fail_waiters(Disconnected(close_code))
        if not self.expect_close:
            self._on_closed(self, close_code)

    def _dispatch(self, raw: bytes, at: float) -> None:
        try:
            obj = decode_event(raw)
        except Exception:  # the frame itself is never shown: it may hold text
            self._on_send_error("", "unreadable_frame")
            return
        kind = obj["type"]
        if kind == "message":
            self._on_message(obj, at, len(raw))
            return
        hello = self._hello_waiter
        if hello is not None and kind in ("welcome", "error"):
            self._hello_waiter = None
            hello.set((obj, at, len(raw)))
            return
        ref = obj.get("ref")
        if kind in ("ok", "error", "welcome"):
            if isinstance(ref, str):
                waiter = self._waiters.get(ref)
                if waiter is not None:
                    waiter.set((obj, at, len(raw)))
                    return
            if kind == "error":
                self._on_send_error(ref if isinstance(ref, str) else "", str(obj.get("code")))
            return
        self._on_event(obj, at)


def encode_json(frame: dict[str, Any]) -> bytes:
    """A request as the bytes of a text frame (msgspec, the protocol module's own codec)."""
    return _json_encode(frame)
