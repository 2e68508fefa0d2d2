"""A minimal queue-chat server for measuring the load generator, not a server.

It speaks just enough of the protocol for the load users (hello/welcome,
``send`` relayed as ``message`` with the sender's ``ok``, ``open_chat``,
``start_call``/``end_call``, ``ping``, ``leave``) over the project's lean
WebSocket codec (``reference_server.wscodec``) on asyncio, so that it costs far less per message than the
reference server. Knobs make it a deliberately bad server for the
measurement-truth tests:

- ``--delay-ms D`` delays every delivery (the ``message`` event) by D;
- ``--stall-after-s T --stall-s S``: T seconds after the first ``send``
  arrives, the whole server stalls (its event loop sleeps) for S seconds,
  once;
- ``--error-every N`` refuses every Nth ``send`` (server-wide) with
  ``error{rate_limited}``, and ``--drop-every N`` closes the sender of every
  Nth ``send`` with 1011 instead of relaying it: known errors and
  disconnects for the tests that count them.

It runs in a process of its own (``python -m loadtests.sink --port 0``) and
prints ``loadtests.sink: ready on ws://HOST:PORT/v1/ws`` when it listens.
It keeps no message text beyond relaying it, checks no token, and logs
nothing. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from reference_server.wscodec import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    OPCODE_BITS,
    FrameParser,
    parse_head,
    server_frame,
    text_frame,
    upgrade_response,
)

MAX_HANDSHAKE_BYTES = 16384
MAX_FRAME_BYTES = 65536

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class _Delayer:
    """Runs callbacks on the event loop at given times, to within about 0.1 ms.

    asyncio's own timers wake up to a millisecond late (epoll counts in
    milliseconds), which a test of the generator's precision cannot afford:
    a thread sleeps precisely and hands each callback to the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Callable[[bytes], None], bytes]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="sink-delayer", daemon=True).start()

    def call_at(self, due: float, callback: Callable[[bytes], None], data: bytes) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._order), callback, data))
            self._cond.notify()

    def _run(self) -> None:
        heap, cond = self._heap, self._cond
        while True:
            with cond:
                while not heap or heap[0][0] > time.monotonic():
                    cond.wait(None if not heap else heap[0][0] - time.monotonic())
                _, _, callback, data = heapq.heappop(heap)
            self._loop.call_soon_threadsafe(callback, data)


class _Room:
    __slots__ = ("clinician", "patients")

    def __init__(self) -> None:
        self.clinician: _Conn | None = None
        self.patients: dict[str, _Conn] = {}


class _Settings:
    def __init__(self, delay_s: float, stall_after_s: float | None, stall_s: float,
                 error_every: int = 0, drop_every: int = 0) -> None:
        self.delay_s = delay_s
        self.stall_after_s = stall_after_s
        self.stall_s = stall_s
        self.error_every = error_every
        self.drop_every = drop_every
        self.first_send: float | None = None
        self.stalled = False
        self.sends = 0


class _Conn(asyncio.Protocol):
    """One WebSocket connection: handshake, frames, and the few requests the load users make."""

    def __init__(self, server: SinkServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()  # the HTTP head, until the upgrade
        self.parser = FrameParser(masked=True, max_payload=MAX_FRAME_BYTES)
        self.upgraded = False
        self.closed = False
        self.role: str | None = None
        self.room: _Room | None = None
        self.patient: str | None = None
        self.message_ids = itertools.count(1)

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._depart()

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HANDSHAKE_BYTES:
                    self._abort()
                return
            head = bytes(self.buffer[:end])
            data = bytes(self.buffer[end + 4:])
            self.buffer.clear()
            if not self._handshake(head):
                return
        self._read_frames(data)

    def _handshake(self, head: bytes) -> bool:
        first, headers = parse_head(head)
        parts = first.split(" ")
        key = headers.get("sec-websocket-key")
        if len(parts) < 2 or parts[1] != "/v1/ws" or key is None:
            self._write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self._abort()
            return False
        self._write(upgrade_response(key))
        self.upgraded = True
        return True

    def _read_frames(self, data: bytes) -> None:
        parser = self.parser
        for first, payload in parser.feed(data):
            if self.closed:
                return
            opcode = first & OPCODE_BITS
            if opcode == OP_TEXT:
                self._on_text(payload)
            elif opcode == OP_CLOSE:
                self._close(1000)
            elif opcode == OP_PING:
                self._write(server_frame(payload, OP_PONG))
            elif opcode != OP_PONG:
                self._close(1003)
        if parser.error is not None:  # over MAX_FRAME_BYTES (1009), or not masked (1002)
            self._close(parser.error.close_code)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def send_frame(self, obj: dict[str, Any]) -> None:
        self._write(text_frame(_encode(obj)))

    def _close(self, code: int) -> None:
        if self.closed:
            return
        self._write(server_frame(code.to_bytes(2, "big"), OP_CLOSE))
        self.closed = True
        self._depart()
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ protocol

    def _on_text(self, payload: bytes) -> None:
        try:
            obj = _decode(payload)
        except msgspec.DecodeError:
            self.send_frame({"type": "error", "code": "bad_frame", "message": "frame is not valid JSON"})
            return
        if not isinstance(obj, dict):
            self.send_frame({"type": "error", "code": "bad_frame", "message": "frame is not a JSON object"})
            return
        kind = obj.get("type")
        ref = obj.get("ref")
        if self.role is None:
            if kind != "hello":
                self._error("hello_required", ref)
                self._close(1008)
                return
            self._hello(obj, ref)
        elif kind == "send":
            self._send(obj, ref)
        elif kind in ("ping", "open_chat", "minimize_chat", "close_chat", "set_notifications", "set_room"):
            reply: dict[str, Any] = {"type": "ok"}
            if kind == "open_chat":
                reply.update(messages=[], truncated=False)
            self._ok(reply, ref)
        elif kind == "start_call" and self.role == "clinician":
            self._start_call(obj, ref)
        elif kind == "end_call" and self.role == "clinician":
            self._end_call(ref)
        elif kind == "leave" and self.role == "patient":
            self._ok({"type": "ok"}, ref)
            self._close(1000)
        else:
            self._error("unknown_type", ref)

    def _ok(self, reply: dict[str, Any], ref: Any) -> None:
        if isinstance(ref, str):
            reply["ref"] = ref
        self.send_frame(reply)

    def _error(self, code: str, ref: Any) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": code.replace("_", " ")}
        if isinstance(ref, str):
            frame["ref"] = ref
        self.send_frame(frame)

    def _hello(self, obj: dict[str, Any], ref: Any) -> None:
        room_name = obj.get("room")
        if not isinstance(room_name, str):
            self._error("invalid", ref)
            self._close(1008)
            return
        room = self.server.rooms.setdefault(room_name, _Room())
        self.room = room
        if obj.get("role") == "clinician":
            if room.clinician is not None:
                room.clinician._close(4000)
            room.clinician = self
            self.role = "clinician"
            limits = dict.fromkeys(("rate_per_s", "rate_burst", "max_patients_per_room", "max_rooms",
                                    "hello_timeout_s", "ping_interval_s", "ping_timeout_s"))
            limits.update(max_text_chars=4096, max_frame_bytes=MAX_FRAME_BYTES, max_queued_frames=1024,
                          max_queued_bytes=4 * 1024 * 1024)
            self._ok({"type": "welcome", "room": room_name, "queue": [],
                      "chat_box": {"state": "closed", "patient": None, "patient_present": False},
                      "call": None, "settings": {"chat_notifications": True},
                      "room_settings": {"patient_initiated_chat": True},
                      "provider_status": "online", "limits": limits}, ref)
        else:
            self.role = "patient"
            self.patient = secrets.token_urlsafe(16)
            room.patients[self.patient] = self
            self._ok({"type": "welcome", "patient": self.patient, "position": len(room.patients),
                      "provider_status": "online", "patient_initiated_chat": True}, ref)

    def _send(self, obj: dict[str, Any], ref: Any) -> None:
        settings = self.server.settings
        now = time.monotonic()
        if settings.first_send is None:
            settings.first_send = now
        elif (settings.stall_after_s is not None and not settings.stalled
              and now - settings.first_send >= settings.stall_after_s):
            settings.stalled = True
            time.sleep(settings.stall_s)  # the stall: nothing at all runs meanwhile
        settings.sends += 1
        if settings.drop_every and settings.sends % settings.drop_every == 0:
            self._close(1011)
            return
        if settings.error_every and settings.sends % settings.error_every == 0:
            self._error("rate_limited", ref)
            return
        room = self.room
        assert room is not None
        if self.role == "clinician":
            target = room.patients.get(obj.get("patient"))  # type: ignore[arg-type]
            patient = obj.get("patient")
            if target is None:
                self._error("not_found", ref)
                return
        else:
            target = room.clinician
            patient = self.patient
        owner = room.patients.get(patient) if isinstance(patient, str) else None
        message_id = next(owner.message_ids) if owner is not None else 0
        ts = int(time.time() * 1000)
        message: dict[str, Any] = {"type": "message", "patient": patient, "id": message_id,
                                   "from": self.role, "text": obj.get("text"), "ts": ts}
        if "client_ts" in obj:
            message["client_ts"] = obj["client_ts"]
        if target is not None:
            data = text_frame(_encode(message))
            if settings.delay_s > 0:
                self.server.delayer().call_at(now + settings.delay_s, target._write, data)
            else:
                target._write(data)
        self._ok({"type": "ok", "id": message_id, "ts": ts}, ref)

    def _start_call(self, obj: dict[str, Any], ref: Any) -> None:
        assert self.room is not None
        target = self.room.patients.get(obj.get("patient"))  # type: ignore[arg-type]
        if target is None:
            self._error("not_found", ref)
            return
        self.server.calls[self.room] = target
        target.send_frame({"type": "call", "state": "started"})
        self._ok({"type": "ok"}, ref)

    def _end_call(self, ref: Any) -> None:
        assert self.room is not None
        target = self.server.calls.pop(self.room, None)
        if target is None:
            self._error("not_in_call", ref)
            return
        target.send_frame({"type": "call", "state": "ended"})
        self.send_frame({"type": "patient_left", "patient": target.patient, "reason": "call_ended"})
        target._close(1000)
        self._ok({"type": "ok"}, ref)

    def _depart(self) -> None:
        room = self.room
        if room is None:
            return
        if self.role == "clinician" and room.clinician is self:
            room.clinician = None
        elif self.role == "patient" and self.patient is not None:
            room.patients.pop(self.patient, None)
            if self.server.calls.get(room) is self:
                del self.server.calls[room]
        self.room = None


class SinkServer:
    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.rooms: dict[str, _Room] = {}
        self.calls: dict[_Room, _Conn] = {}
        self._delayer: _Delayer | None = None

    def delayer(self) -> _Delayer:
        if self._delayer is None:
            self._delayer = _Delayer(asyncio.get_running_loop())
        return self._delayer


async def _serve(host: str, port: int, settings: _Settings) -> None:
    loop = asyncio.get_running_loop()
    server = SinkServer(settings)
    listener = await loop.create_server(lambda: _Conn(server), host, port)
    sock = listener.sockets[0]
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"loadtests.sink: ready on ws://{shown}:{bound_port}/v1/ws", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.sink", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay every delivery by this much")
    parser.add_argument("--stall-after-s", type=float, default=None,
                        help="stall the whole server this long after the first send arrives")
    parser.add_argument("--stall-s", type=float, default=0.0, help="how long the stall lasts")
    parser.add_argument("--error-every", type=int, default=0,
                        help="refuse every Nth send with error rate_limited; 0: never")
    parser.add_argument("--drop-every", type=int, default=0,
                        help="close the sender of every Nth send with 1011 instead; 0: never")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("the sink listens on loopback only")
    if args.delay_ms < 0 or args.stall_s < 0 or (args.stall_after_s is not None and args.stall_after_s < 0):
        parser.error("delays and stalls must not be negative")
    if args.error_every < 0 or args.drop_every < 0:
        parser.error("--error-every and --drop-every must not be negative")
    settings = _Settings(args.delay_ms / 1000.0, args.stall_after_s, args.stall_s, args.error_every,
                         args.drop_every)
    try:
        asyncio.run(_serve(args.host, args.port, settings))
    except OSError as error:
        print(f"loadtests.sink: cannot listen on {args.host}:{args.port}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
