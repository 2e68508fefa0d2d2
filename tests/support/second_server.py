"""A second, independent queuechat server, written from the protocol documents alone.

It exists so that every client tool (simulator, load tests, conformance suite) can be run against a server
that keeps the contract (docs/protocol.md) but takes each freedom the contract leaves the other way
from the reference server: no `ref` on `welcome`, ids of another shape, every frame split into fragments,
jittered pings, extra frames on clinician replacement, other check and frame orders where the contract is
silent. It can also misbehave on purpose (fault switches, `--break RULE`) so that checkers can be checked.

Only the standard library and `websockets` (asyncio API) are used; nothing of the project is imported.
Run: ``python tests/support/second_server.py --port 0`` prints ``{"url": ..., "pid": ...}`` on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import enum
import hashlib
import hmac
import ipaddress
import json
import math
import os
import random
import re
import secrets
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

DEV_SECRET = "queuechat-development-secret"
PATH = "/v1/ws"
MAX_MESSAGES_KEPT = 500
MAX_DEPARTED_REMEMBERED = 10_000
MAX_IDLE_ROOMS = 10_000
BREAKS = ("R3", "R8", "R9", "R10", "R11", "R12", "R13", "R30", "R31", "order")
SLUG = re.compile(r"[a-z0-9-]{1,64}")
CLINICIAN_TYPES = frozenset(
    {"ping", "send", "open_chat", "minimize_chat", "close_chat", "set_notifications", "set_room",
     "start_call", "end_call"}
)
PATIENT_TYPES = frozenset({"ping", "send", "leave"})
ALL_TYPES = CLINICIAN_TYPES | PATIENT_TYPES | {"hello"}
ORDER_RANK = {"patient_left": 0, "erased": 1, "message": 2, "chat_box": 3, "unread": 4, "notify": 5}
Frame = dict[str, Any]
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux value; Python 3.11 lacks the name


def log(event: str, **fields: object) -> None:
    """One line on stderr; callers pass ids and counts only, never text or names (R13)."""
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"second_server: {event} {parts}".rstrip(), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The limits in force, listed in the clinician's welcome under the contract's names."""

    max_text_chars: int = 4096
    max_frame_bytes: int = 65536
    max_queued_frames: int = 1024
    max_queued_bytes: int = 4 * 1024 * 1024
    rate_per_s: float | None = 100.0
    rate_burst: int | None = 200
    max_patients_per_room: int | None = 500
    max_rooms: int | None = 10_000
    hello_timeout_s: float | None = 10.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 60.0

    def as_welcome(self) -> dict[str, object]:
        return {
            "max_text_chars": self.max_text_chars,
            "max_frame_bytes": self.max_frame_bytes,
            "max_queued_frames": self.max_queued_frames,
            "max_queued_bytes": self.max_queued_bytes,
            "rate_per_s": self.rate_per_s,
            "rate_burst": self.rate_burst,
            "max_patients_per_room": self.max_patients_per_room,
            "max_rooms": self.max_rooms,
            "hello_timeout_s": self.hello_timeout_s,
            "ping_interval_s": self.ping_interval_s,
            "ping_timeout_s": self.ping_timeout_s,
        }


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Deliberate misbehaviour; all off by default (then the server keeps the contract)."""

    delay_ms: float = 0.0
    stall_after: float | None = None
    stall_for: float = 0.0
    refuse_every: int | None = None
    die_after: float | None = None
    break_rule: str | None = None
    ok_jitter_ms: float = 2.0


# --------------------------------------------------------------------------------------------- errors


class Reject(Exception):
    """A request refused with an error frame (never carries text or names)."""

    def __init__(self, code: str, message: str, field_name: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.field_name = field_name


def has_lone_surrogate(value: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)


def is_good_string(value: object, low: int, high: int | None) -> bool:
    if not isinstance(value, str) or has_lone_surrogate(value):
        return False
    return len(value) >= low and (high is None or len(value) <= high)


def good_ref(frame: Frame) -> str | None:
    ref = frame.get("ref")
    return ref if is_good_string(ref, 0, 64) else None


def check_client_ts(frame: Frame) -> None:
    if "client_ts" not in frame:
        return
    value = frame["client_ts"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Reject("invalid", "client_ts must be a number", "client_ts")
    if isinstance(value, float) and not math.isfinite(value):
        raise Reject("invalid", "client_ts must be finite", "client_ts")
    if isinstance(value, int) and abs(value) > 2**53:
        raise Reject("invalid", "client_ts is out of range", "client_ts")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------------------------- connections


@dataclass
class Batch:
    """The frames one cause produced for one connection, encoded, in the order they must be written."""

    frames: list[tuple[str, bytes]]  # (type, encoded frame)
    not_before: float = 0.0
    close: tuple[int, str] | None = None

    @classmethod
    def of(cls, frames: list[Frame], not_before: float = 0.0, close: tuple[int, str] | None = None) -> Batch:
        return cls([(str(f["type"]), encode(f)) for f in frames], not_before, close)

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.frames)


class Role(enum.Enum):
    NONE = "none"
    CLINICIAN = "clinician"
    PATIENT = "patient"


class Conn:
    """One WebSocket connection: a bounded outbound queue and one writer task, so frames go out in order."""

    def __init__(self, server: QueueChatServer, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.role = Role.NONE
        self.room: Room | None = None
        self.patient: Patient | None = None
        self.queue: collections.deque[Batch] = collections.deque()
        self.queued_frames = 0
        self.queued_bytes = 0
        self.wake = asyncio.Event()
        self.dead = False  # no more frames are queued for it
        self.gone_handled = False
        self.tokens = float(server.limits.rate_burst or 0)
        self.tokens_at = time.monotonic()
        self.last_pong = time.monotonic()
        self.ident = secrets.token_hex(4)

    # -- writing ------------------------------------------------------------------------------------

    def push(self, batch: Batch) -> None:
        """Queue a batch; past the R42 bound the connection is closed with 1008 as a slow reader."""
        if self.dead:
            return
        limits = self.server.limits
        frames = self.queued_frames + len(batch.frames)
        size = self.queued_bytes + batch.size
        # The byte bound applies once something already waits: one large answer (open_chat with 500 long
        # messages) to a reader that keeps up must not look like a reader that has fallen behind.
        if frames > limits.max_queued_frames or (self.queued_bytes and size > limits.max_queued_bytes):
            log("slow_reader", conn=self.ident, frames=self.queued_frames, bytes=self.queued_bytes)
            self.queue.clear()
            self.queued_frames = self.queued_bytes = 0
            self.dead = True
            self.server.spawn(force_close(self.ws, 1008, "you stopped reading", 1.0))
            asyncio.get_running_loop().call_soon(self.server.connection_gone, self)
            return
        self.queued_frames = frames
        self.queued_bytes = size
        self.queue.append(batch)
        if batch.close is not None:
            self.dead = True
            code, reason = batch.close  # a peer that does not read gets its close, or is dropped, within 6 s
            asyncio.get_running_loop().call_later(
                5.0, lambda: self.server.spawn(force_close(self.ws, code, reason, 1.0))
            )
        self.wake.set()

    async def writer(self) -> None:
        """Write batches in order; hold `ok` answers back a little; split each frame into fragments."""
        faults = self.server.faults
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            batch = self.queue.popleft()
            delay = batch.not_before - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for kind, data in batch.frames:
                if kind == "ok" and faults.ok_jitter_ms > 0:
                    await asyncio.sleep(random.uniform(0, faults.ok_jitter_ms) / 1000)
                await self.ws.send(fragments(data), text=True)
                self.queued_frames -= 1
                self.queued_bytes -= len(data)
            if batch.close is not None:
                code, reason = batch.close
                await self.ws.close(code, reason)
                return


def encode(frame: Frame) -> bytes:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def fragments(data: bytes) -> list[bytes]:
    """One or two pieces (websockets adds an empty final fragment: 2 or 3 fragments on the wire).

    The split falls at any byte, also inside a multi-byte character: RFC 6455 only asks the whole message
    to be valid UTF-8."""
    if len(data) < 2 or random.random() < 0.5:
        return [data]
    cut = random.randint(1, len(data) - 1)
    return [data[:cut], data[cut:]]


async def force_close(ws: ServerConnection, code: int, reason: str, grace_s: float) -> None:
    """Send a close frame even in the middle of a fragmented send, then drop the TCP connection at the
    deadline (a control frame may sit between fragments, RFC 6455 5.4)."""
    with contextlib.suppress(Exception):
        if ws.protocol.state is State.OPEN:
            ws.protocol.send_close(code, reason)
            ws.send_data()
    try:
        async with asyncio.timeout(grace_s):
            await ws.wait_closed()
    except TimeoutError:
        ws.transport.abort()


# --------------------------------------------------------------------------------------------- rooms


@dataclass
class Patient:
    """A present or departed patient; `messages` is None once the conversation is erased (R13)."""

    id: str
    name: str
    joined_at: int
    conn: Conn | None
    state: str = "waiting"  # waiting, in_call, departed
    unread: int = 0
    next_id: int = 1
    messages: collections.deque[Frame] | None = field(default_factory=lambda: collections.deque(maxlen=500))
    had_more: bool = False
    clinician_wrote: bool = False
    erased: bool = False


@dataclass
class Room:
    slug: str
    clinician: Conn | None = None
    patients: dict[str, Patient] = field(default_factory=dict)  # present, check-in order
    departed: collections.OrderedDict[str, Patient] = field(default_factory=collections.OrderedDict)
    notifications: bool = True
    patient_initiated_chat: bool = True
    call: str | None = None
    box_state: str = "closed"
    box_patient: str | None = None

    @property
    def active(self) -> bool:
        return self.clinician is not None or bool(self.patients)

    def status(self) -> str:
        if self.clinician is None:
            return "away"
        return "on_call" if self.call is not None else "online"

    def positions(self) -> dict[str, int]:
        waiting = [p for p in self.patients.values() if p.state == "waiting"]
        return {p.id: i for i, p in enumerate(waiting, start=1)}

    def find(self, pid: str) -> Patient | None:
        return self.patients.get(pid) or self.departed.get(pid)


class Outbox:
    """Frames one cause produces, per connection; flushed as one batch each (order rule applied)."""

    def __init__(self, server: QueueChatServer) -> None:
        self.server = server
        self.frames: dict[Conn, list[Frame]] = {}
        self.closes: dict[Conn, tuple[int, str]] = {}

    def add(self, conn: Conn | None, frame: Frame) -> None:
        if conn is not None:
            self.frames.setdefault(conn, []).append(frame)

    def close(self, conn: Conn | None, code: int, reason: str) -> None:
        if conn is not None:
            self.frames.setdefault(conn, [])
            self.closes[conn] = (code, reason)

    def flush(self) -> None:
        server = self.server
        faults = server.faults
        for conn, frames in self.frames.items():
            frames = server.order(frames)
            has_message = any(f["type"] == "message" for f in frames)
            now = time.monotonic()
            not_before = now + faults.delay_ms / 1000 if has_message and faults.delay_ms > 0 else 0.0
            batch = Batch.of(frames, not_before, self.closes.get(conn))
            if has_message and server.stalled(now):
                server.hold(conn, batch)
                continue
            conn.push(batch)
        self.frames.clear()


# --------------------------------------------------------------------------------------------- server


class QueueChatServer:
    """The whole protocol state: rooms, connections and the rules (single asyncio thread, no locks)."""

    def __init__(
        self, *, secret: str, limits: Limits, faults: Faults, notsent_lowat: int | None = 16384
    ) -> None:
        self.key = secret.encode()
        self.notsent_lowat = notsent_lowat
        self.limits = limits
        self.faults = faults
        self.rooms: collections.OrderedDict[str, Room] = collections.OrderedDict()
        self.conns: set[Conn] = set()
        self.started = time.monotonic()
        self.sends_seen = 0
        self.active: set[str] = set()
        self.background: set[asyncio.Task[None]] = set()
        self.ws_server: Server | None = None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A background task, referenced until it ends (asyncio keeps only weak references)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def breaks(self, rule: str) -> bool:
        return self.faults.break_rule == rule

    # -- faults ---------------------------------------------------------------------------------------

    def stalled(self, now: float) -> bool:
        after = self.faults.stall_after
        if after is None:
            return False
        start = self.started + after
        return start <= now < start + self.faults.stall_for

    def hold(self, conn: Conn, batch: Batch) -> None:
        """A batch with a `message` during a stall: dropped for an endless stall, else sent when it ends."""
        assert self.faults.stall_after is not None
        if math.isinf(self.faults.stall_for):
            return
        end = self.started + self.faults.stall_after + self.faults.stall_for
        asyncio.get_running_loop().call_at(
            asyncio.get_running_loop().time() + max(0.0, end - time.monotonic()), conn.push, batch
        )

    def order(self, frames: list[Frame]) -> list[Frame]:
        """Under --break order the cause's frames go out in the wrong order (`unread` first)."""
        if not self.breaks("order"):
            return frames
        ranked = [f for f in frames if f["type"] in ORDER_RANK]
        rest = [f for f in frames if f["type"] not in ORDER_RANK]
        return sorted(ranked, key=lambda f: -ORDER_RANK[f["type"]]) + rest

    # -- rooms ----------------------------------------------------------------------------------------

    def touch(self, room: Room) -> None:
        """Keep the set of active rooms (those counting toward max_rooms, R44) up to date."""
        if room.active:
            self.active.add(room.slug)
        else:
            self.active.discard(room.slug)

    def room(self, slug: str) -> Room:
        """The room, created on first hello; idle rooms (settings and departed ids) are kept, LRU-bounded."""
        room = self.rooms.get(slug)
        if room is None:
            room = self.rooms[slug] = Room(slug)
            if len(self.rooms) > MAX_IDLE_ROOMS + len(self.active):
                for stale, old in self.rooms.items():
                    if not old.active and stale != slug:
                        del self.rooms[stale]
                        break
        self.rooms.move_to_end(slug)
        return room

    def push_status(self, room: Room, before: str, out: Outbox) -> None:
        after = room.status()
        if after != before:
            for p in room.patients.values():
                out.add(p.conn, {"type": "provider_status", "status": after})

    def push_positions(self, room: Room, before: dict[str, int], out: Outbox) -> None:
        if self.breaks("R30"):
            return
        for pid, pos in room.positions().items():
            if before.get(pid) != pos:
                out.add(room.patients[pid].conn, {"type": "position", "position": pos})

    def box_frame(self, room: Room, reason: str) -> Frame:
        shown = room.box_patient
        present = shown is not None and shown in room.patients
        return {"type": "chat_box", "state": room.box_state, "patient": shown, "patient_present": present,
                "reason": reason}

    def erase(self, room: Room, patient: Patient, reason: str, out: Outbox) -> None:
        """Erase a conversation (R11/R12): text goes, ids go on; pushed to the clinician."""
        self.drop_text(patient)
        out.add(room.clinician, {"type": "erased", "patient": patient.id, "reason": reason})

    def drop_text(self, patient: Patient) -> None:
        """Forget a conversation's text (kept under --break R13); a departed one can no longer be read."""
        if not self.breaks("R13"):
            departed = patient.state == "departed"
            patient.messages = None if departed else collections.deque(maxlen=MAX_MESSAGES_KEPT)
        patient.had_more = False
        if patient.state == "departed":
            patient.erased = True

    def erase_shown_departed(
        self, room: Room, reason: str, out: Outbox, *, box_reason: str = "erased"
    ) -> None:
        """If the box shows a departed patient, erase that conversation and close the box."""
        pid = room.box_patient
        if pid is None or pid in room.patients:
            return
        departed = room.departed.get(pid)
        if departed is not None and not departed.erased:
            self.erase(room, departed, reason, out)
        room.box_state, room.box_patient = "closed", None
        out.add(room.clinician, self.box_frame(room, box_reason))

    def refresh(self, room: Room, out: Outbox, old: Conn | None) -> None:
        """R12: the end of a live clinician connection erases every conversation the console held."""
        if self.breaks("R12"):
            room.box_state, room.box_patient = "closed", None
            return
        held = list(room.patients.values())
        shown = room.departed.get(room.box_patient) if room.box_patient else None
        if shown is not None and not shown.erased:
            held.append(shown)
        for patient in held:
            self.drop_text(patient)
            if old is not None:
                out.add(old, {"type": "erased", "patient": patient.id, "reason": "refresh"})
        if old is not None:
            out.add(old, {"type": "chat_box", "state": "closed", "patient": None, "patient_present": False,
                          "reason": "erased"})
        for patient in room.patients.values():
            if old is not None:
                out.add(old, {"type": "unread", "patient": patient.id, "count": 0})
            patient.unread = 0
        room.box_state, room.box_patient = "closed", None

    def depart(self, room: Room, patient: Patient, reason: str, out: Outbox) -> None:
        """A patient leaves for good: the clinician hears, the box says so or the conversation is erased."""
        before_status = room.status()
        before_pos = room.positions()
        del room.patients[patient.id]
        patient.state = "departed"
        patient.unread = 0
        patient.conn = None
        patient.name = ""  # names are patient data: not kept past departure
        room.departed[patient.id] = patient
        while len(room.departed) > MAX_DEPARTED_REMEMBERED:
            room.departed.popitem(last=False)
        if room.call == patient.id:
            room.call = None
        out.add(room.clinician, {"type": "patient_left", "patient": patient.id, "reason": reason})
        if room.clinician is not None and room.box_patient == patient.id:
            out.add(room.clinician, self.box_frame(room, "patient_left"))
        else:
            self.erase(room, patient, "not_in_view", out)
        self.push_status(room, before_status, out)
        self.push_positions(room, before_pos, out)
        self.touch(room)

    def connection_gone(self, conn: Conn) -> None:
        """A connection ended (closed, lost, dropped): a patient departs, a clinician's end is a refresh."""
        if conn.gone_handled:
            return
        conn.gone_handled = True
        conn.dead = True
        self.conns.discard(conn)
        room = conn.room
        if room is None:
            return
        out = Outbox(self)
        if conn.role is Role.PATIENT and conn.patient is not None and conn.patient.state != "departed":
            self.depart(room, conn.patient, "disconnected", out)
        elif conn.role is Role.CLINICIAN and room.clinician is conn:
            before = room.status()
            self.refresh(room, out, None)
            room.clinician = None
            self.push_status(room, before, out)
            self.touch(room)
        out.flush()

    # -- hello ----------------------------------------------------------------------------------------

    def hello(self, conn: Conn, frame: object) -> tuple[int, str] | None:
        """Check and carry out the first frame; returns the close (code, reason) for a refused hello."""
        out = Outbox(self)
        try:
            if not isinstance(frame, dict) or frame.get("type") != "hello":
                raise Reject("hello_required", "say hello first")
            if "ref" in frame and good_ref(frame) is None:
                raise Reject("invalid", "ref must be a string of at most 64 characters", "ref")
            role = frame.get("role")
            if role not in ("clinician", "patient"):
                raise Reject("invalid", "role must be clinician or patient", "role")
            slug = frame.get("room")
            if not isinstance(slug, str) or not SLUG.fullmatch(slug):
                raise Reject("invalid", "room must be a slug", "room")
            if role == "clinician":
                token = frame.get("token")
                if not isinstance(token, str) or has_lone_surrogate(token):
                    raise Reject("invalid", "token must be a string", "token")
                expected = hmac.new(self.key, slug.encode(), hashlib.sha256).hexdigest()
                if not hmac.compare_digest(token.encode(), expected.encode()):
                    raise Reject("unauthorized", "that token does not open this room")
            else:
                name = frame.get("name")
                if not is_good_string(name, 1, 64):
                    raise Reject("invalid", "name must be 1 to 64 characters", "name")
            existing = self.rooms.get(slug)
            max_rooms, max_patients = self.limits.max_rooms, self.limits.max_patients_per_room
            adds_room = existing is None or not existing.active
            if adds_room and max_rooms is not None and len(self.active) >= max_rooms:
                raise Reject("capacity", "the server is full")
            if role == "patient" and max_patients is not None and existing is not None \
                    and len(existing.patients) >= max_patients:
                raise Reject("capacity", "this waiting room is full")
        except Reject as rej:
            error: Frame = {"type": "error", "code": rej.code, "message": rej.message}
            if rej.field_name is not None:
                error["field"] = rej.field_name
            code = 1013 if rej.code == "capacity" else 1008
            log("hello_refused", conn=conn.ident, code=rej.code)
            return code, self.refuse(conn, error, code)
        room = self.room(slug)
        conn.room = room
        if role == "clinician":
            self.hello_clinician(conn, room, out)
        else:
            self.hello_patient(conn, room, str(frame["name"]), out)
        self.touch(room)
        out.flush()
        return None

    def refuse(self, conn: Conn, error: Frame, code: int) -> str:
        reason = {1013: "no room for you right now", 1008: "hello refused"}[code]
        conn.push(Batch.of([error], close=(code, reason)))
        return reason

    def hello_clinician(self, conn: Conn, room: Room, out: Outbox) -> None:
        old = room.clinician
        before = room.status()
        if old is not None:
            self.refresh(room, out, old)
            out.close(old, 4000, "another console took over this room")
            old.gone_handled = True
            self.conns.discard(old)
            log("clinician_replaced", room_conn=old.ident)
        conn.role = Role.CLINICIAN
        room.clinician = conn
        call = {"patient": room.call} if room.call is not None else None
        out.add(conn, {
            "type": "welcome",
            "room": room.slug,
            "queue": [
                {"patient": p.id, "name": p.name, "state": p.state, "unread": p.unread,
                 "joined_at": p.joined_at}
                for p in room.patients.values()
            ],
            "chat_box": {"state": room.box_state, "patient": room.box_patient,
                         "patient_present": room.box_patient in room.patients},
            "call": call,
            "settings": {"chat_notifications": room.notifications},
            "room_settings": {"patient_initiated_chat": room.patient_initiated_chat},
            "provider_status": room.status(),
            "limits": self.limits.as_welcome(),
        })
        self.push_status(room, before, out)
        log("clinician_hello", conn=conn.ident, patients=len(room.patients))

    def hello_patient(self, conn: Conn, room: Room, name: str, out: Outbox) -> None:
        pid = "pt-" + secrets.token_hex(16)
        while room.find(pid) is not None:
            pid = "pt-" + secrets.token_hex(16)
        patient = Patient(pid, name, now_ms(), conn)
        room.patients[pid] = patient
        conn.role = Role.PATIENT
        conn.patient = patient
        position = room.positions()[pid]
        out.add(conn, {"type": "welcome", "patient": pid, "position": position,
                       "provider_status": room.status(),
                       "patient_initiated_chat": room.patient_initiated_chat})
        out.add(room.clinician, {"type": "patient_joined", "patient": pid, "name": name, "position": position,
                                 "joined_at": patient.joined_at})
        log("patient_hello", conn=conn.ident, patient=pid)

    # -- requests -------------------------------------------------------------------------------------

    def take_token(self, conn: Conn) -> bool:
        rate, burst = self.limits.rate_per_s, self.limits.rate_burst
        if rate is None or burst is None:
            return True
        now = time.monotonic()
        conn.tokens = min(float(burst), conn.tokens + (now - conn.tokens_at) * rate)
        conn.tokens_at = now
        if conn.tokens < 1:
            return False
        conn.tokens -= 1
        return True

    def request(self, conn: Conn, raw: str | bytes) -> None:
        """One frame after welcome: checks in the contract's order, then the rule, then the answer."""
        out = Outbox(self)
        ref: str | None = None
        try:
            frame: object = None
            if isinstance(raw, str):
                with contextlib.suppress(ValueError):
                    frame = json.loads(raw)
            if isinstance(frame, dict):
                ref = good_ref(frame)
            allowed = self.take_token(conn)
            if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                raise Reject("bad_frame", "a request is a JSON object with a string type")
            kind = frame["type"]
            if not allowed:
                raise Reject("rate_limited", "slow down")
            if kind == "send" and self.faults.refuse_every is not None:
                self.sends_seen += 1
                if self.sends_seen % self.faults.refuse_every == 0:
                    raise Reject("rate_limited", "slow down (refused on purpose)")
            if kind not in ALL_TYPES:
                raise Reject("unknown_type", "no such request type")
            allowed_types = CLINICIAN_TYPES if conn.role is Role.CLINICIAN else PATIENT_TYPES
            if kind not in allowed_types:
                raise Reject("forbidden", "not allowed for your role or at this point")
            room = conn.room
            assert room is not None
            answer: Frame = {"type": "ok"}
            if conn.role is Role.CLINICIAN:
                self.clinician_request(conn, room, kind, frame, answer, out)
            else:
                assert conn.patient is not None
                self.patient_request(conn, room, conn.patient, kind, frame, answer, out)
            if ref is not None:
                answer["ref"] = ref
            out.add(conn, answer)
            if kind in ("leave",):
                out.close(conn, 1000, "goodbye")
        except Reject as rej:
            error: Frame = {"type": "error", "code": rej.code, "message": rej.message}
            if rej.field_name is not None:
                error["field"] = rej.field_name
            if ref is not None:
                error["ref"] = ref
            out.frames.pop(conn, None)
            out.add(conn, error)
        out.flush()
        if conn.role is Role.PATIENT and conn.patient is not None and conn.patient.state == "departed":
            conn.gone_handled = True

    @staticmethod
    def check_ref(frame: Frame) -> None:
        """The `ref` is checked after the other fields (the contract leaves the order of fields open)."""
        if "ref" in frame and good_ref(frame) is None:
            raise Reject("invalid", "ref must be a string of at most 64 characters", "ref")

    @staticmethod
    def patient_field(frame: Frame) -> str:
        pid = frame.get("patient")
        if not isinstance(pid, str) or has_lone_surrogate(pid):
            raise Reject("invalid", "patient must be a patient id", "patient")
        return pid

    @staticmethod
    def bool_field(frame: Frame, name: str) -> bool:
        value = frame.get(name)
        if not isinstance(value, bool):
            raise Reject("invalid", f"{name} must be true or false", name)
        return value

    def text_field(self, frame: Frame) -> str:
        text = frame.get("text")
        if not is_good_string(text, 1, None):
            raise Reject("invalid", "text must be a non-empty string", "text")
        assert isinstance(text, str)
        return text

    def check_size(self, text: str) -> None:
        if len(text) > self.limits.max_text_chars:
            raise Reject("too_large", f"text is longer than {self.limits.max_text_chars} characters")

    def clinician_request(
        self, conn: Conn, room: Room, kind: str, frame: Frame, answer: Frame, out: Outbox
    ) -> None:
        if kind == "ping":
            self.check_ref(frame)
        elif kind == "send":
            pid = self.patient_field(frame)
            text = self.text_field(frame)
            check_client_ts(frame)
            self.check_ref(frame)
            patient = room.find(pid)
            if patient is None:
                raise Reject("not_found", "no such patient in this room")
            if patient.state == "departed" and not self.breaks("R9"):
                raise Reject("patient_gone", "that patient has left")
            self.check_size(text)
            message = self.deliver(patient, "clinician", text, frame)
            patient.clinician_wrote = True
            if patient.state != "departed":
                out.add(patient.conn, message)
            answer.update(id=message["id"], ts=message["ts"])
        elif kind == "open_chat":
            pid = self.patient_field(frame)
            self.check_ref(frame)
            patient = room.find(pid)
            if patient is None or patient.messages is None:
                raise Reject("not_found", "no such conversation in this room")
            if room.box_patient != pid:
                self.erase_shown_departed(room, "viewed_other", out)
            if room.box_patient != pid or room.box_state != "open":
                room.box_state, room.box_patient = "open", pid
                out.add(conn, self.box_frame(room, "open_chat"))
            if patient.unread:
                patient.unread = 0
                out.add(conn, {"type": "unread", "patient": pid, "count": 0})
            answer.update(messages=list(patient.messages), truncated=patient.had_more)
        elif kind == "minimize_chat":
            self.check_ref(frame)
            if room.box_state == "open":
                room.box_state = "minimized"
                out.add(conn, self.box_frame(room, "minimize_chat"))
        elif kind == "close_chat":
            self.check_ref(frame)
            if room.box_state != "closed":
                if room.box_patient not in room.patients and not self.breaks("R11"):
                    self.erase_shown_departed(room, "chat_closed", out, box_reason="close_chat")
                else:
                    room.box_state, room.box_patient = "closed", None
                    out.add(conn, self.box_frame(room, "close_chat"))
        elif kind == "set_notifications":
            room.notifications = self.bool_field(frame, "chat")
            self.check_ref(frame)
        elif kind == "set_room":
            value = self.bool_field(frame, "patient_initiated_chat")
            self.check_ref(frame)
            room.patient_initiated_chat = value
            for p in room.patients.values():  # pushed even when unchanged: the contract is silent there
                out.add(p.conn, {"type": "room_settings", "patient_initiated_chat": value})
        elif kind == "start_call":
            pid = self.patient_field(frame)
            self.check_ref(frame)
            if room.call is not None:  # call_in_progress first: the contract leaves the order open
                raise Reject("call_in_progress", "a call is in progress")
            patient = room.find(pid)
            if patient is None:
                raise Reject("not_found", "no such patient in this room")
            if patient.state == "departed":
                raise Reject("patient_gone", "that patient has left")
            before_status, before_pos = room.status(), room.positions()
            self.erase_shown_departed(room, "call_started", out)
            patient.state = "in_call"
            room.call = pid
            # Frames to patients in the other order from the reference server's Choice 6: waiting patients get
            # `position` before `provider_status`; the patient in the call gets `provider_status` first.
            self.push_positions(room, before_pos, out)
            self.push_status(room, before_status, out)
            out.add(patient.conn, {"type": "call", "state": "started"})
        elif kind == "end_call":
            self.check_ref(frame)
            if room.call is None:
                raise Reject("not_in_call", "there is no call")
            patient = room.patients[room.call]
            for other in room.patients.values():
                if other is not patient:
                    out.add(other.conn, {"type": "provider_status", "status": "online"})
            pconn = patient.conn
            out.add(pconn, {"type": "call", "state": "ended"})
            out.close(pconn, 1000, "the call is over")
            room.call = None  # so depart() sees no status change: the others were told above
            if pconn is not None:
                pconn.gone_handled = True
                self.conns.discard(pconn)
            self.depart(room, patient, "call_ended", out)

    def patient_request(
        self, conn: Conn, room: Room, patient: Patient, kind: str, frame: Frame, answer: Frame, out: Outbox
    ) -> None:
        if kind == "ping":
            self.check_ref(frame)
        elif kind == "leave":
            self.check_ref(frame)
            self.depart(room, patient, "left", out)
        elif kind == "send":
            text = self.text_field(frame)
            check_client_ts(frame)
            self.check_ref(frame)
            if (
                patient.state == "waiting"
                and not room.patient_initiated_chat
                and not patient.clinician_wrote
                and not self.breaks("R31")
            ):
                raise Reject("chat_disabled", "the clinician has not opened the chat yet")
            self.check_size(text)
            message = self.deliver(patient, "patient", text, frame)
            answer.update(id=message["id"], ts=message["ts"])
            clinician = room.clinician
            if clinician is None:
                patient.unread += 1
                return
            out.add(clinician, message)
            if room.box_state == "minimized":
                room.box_state = "open"
                out.add(clinician, self.box_frame(room, "auto_open"))
            if self.breaks("R8") and room.box_state == "open" and room.box_patient != patient.id:
                self.erase_shown_departed(room, "viewed_other", out)
                room.box_state, room.box_patient = "open", patient.id
                out.add(clinician, self.box_frame(room, "auto_open"))
            shown = room.box_state == "open" and room.box_patient == patient.id
            if shown:
                return
            if not self.breaks("R3"):
                patient.unread += 1
                out.add(clinician, {"type": "unread", "patient": patient.id, "count": patient.unread})
            if room.notifications or self.breaks("R10"):
                out.add(clinician, {"type": "notify", "patient": patient.id, "id": message["id"]})

    def deliver(self, patient: Patient, sender: str, text: str, frame: Frame) -> Frame:
        message: Frame = {"type": "message", "patient": patient.id, "id": patient.next_id, "from": sender,
                          "text": text, "ts": now_ms()}
        if "client_ts" in frame:
            message["client_ts"] = frame["client_ts"]
        patient.next_id += 1
        if patient.messages is not None:
            if len(patient.messages) == MAX_MESSAGES_KEPT:
                patient.had_more = True
            patient.messages.append({k: v for k, v in message.items() if k != "type"})
        return message

    # -- connections ----------------------------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        conn = Conn(self, ws)
        self.conns.add(conn)
        if self.notsent_lowat is not None:
            # Without it the kernel holds megabytes of unsent frames (send-buffer autotuning) and a reader
            # that stalls reaches the R42 queue bound only after thousands of messages.
            sock = ws.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, self.notsent_lowat)
        tasks = [asyncio.create_task(conn.writer()), asyncio.create_task(self.heartbeat(conn))]
        try:
            await self.serve_connection(conn)
        except ConnectionClosed:
            pass
        finally:
            self.connection_gone(conn)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def serve_connection(self, conn: Conn) -> None:
        ws = conn.ws
        try:
            async with asyncio.timeout(self.limits.hello_timeout_s):
                first = await ws.recv()
        except TimeoutError:
            error: Frame = {"type": "error", "code": "hello_required", "message": "no hello in time"}
            self.refuse(conn, error, 1008)
            await ws.wait_closed()
            return
        parsed: object = None
        if isinstance(first, str):
            with contextlib.suppress(ValueError):
                parsed = json.loads(first)
        if self.hello(conn, parsed) is not None:
            await ws.wait_closed()
            return
        while True:
            raw = await ws.recv()
            if not conn.dead:
                self.request(conn, raw)

    async def heartbeat(self, conn: Conn) -> None:
        """Pings at jittered intervals (never longer than ping_interval_s); only pongs count as answers."""
        interval, timeout = self.limits.ping_interval_s, self.limits.ping_timeout_s
        if interval is None:
            return
        ws = conn.ws
        conn.last_pong = time.monotonic()
        while True:
            await asyncio.sleep(interval * random.uniform(0.15, 1.0))
            if timeout is not None and time.monotonic() - conn.last_pong > timeout:
                log("heartbeat_lost", conn=conn.ident)
                conn.dead = True
                self.connection_gone(conn)
                await force_close(ws, 1011, "no pong, presumed lost", 1.0)
                return
            try:
                waiter = await ws.ping()
            except ConnectionClosed:
                return
            asyncio.ensure_future(waiter).add_done_callback(lambda fut: self.pong(conn, fut))

    @staticmethod
    def pong(conn: Conn, fut: asyncio.Future[float]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            conn.last_pong = time.monotonic()

    async def shutdown(self) -> None:
        """R46: close every connection with 1001, wait at most 1 s, then drop what is left."""
        conns = list(self.conns)
        for conn in conns:
            conn.dead = True
        await asyncio.gather(*(force_close(c.ws, 1001, "server shutting down", 1.0) for c in conns))


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    """HTTP 404 for any other path, and for a plain request that does not ask for a WebSocket."""
    path = urllib.parse.urlsplit(request.path).path
    upgrade = request.headers.get("Upgrade", "")
    if path != PATH or "websocket" not in upgrade.lower():
        return connection.respond(404, "Not Found\n")
    return None


# --------------------------------------------------------------------------------------------- CLI


class UsageError(Exception):
    """A bad option: one line on stderr, exit 2."""


def positive_int(name: str, value: str, *, can_be_off: bool = False) -> int | None:
    if can_be_off and value == "off":
        return None
    try:
        number = int(value)
    except ValueError:
        wanted = "a whole number or off" if can_be_off else "a whole number"
        raise UsageError(f"--{name}: expected {wanted}, got {value!r}") from None
    if number < 1:
        raise UsageError(f"--{name}: must be at least 1")
    return number


def positive_float(name: str, value: str, *, can_be_off: bool = False, allow_inf: bool = False,
                   allow_zero: bool = False) -> float | None:
    if can_be_off and value == "off":
        return None
    try:
        number = float(value)
    except ValueError:
        wanted = "a number or off" if can_be_off else "a number"
        raise UsageError(f"--{name}: expected {wanted}, got {value!r}") from None
    if math.isnan(number) or (math.isinf(number) and not allow_inf) or number < 0:
        raise UsageError(f"--{name}: must be a finite number >= 0")
    if number == 0 and not allow_zero:
        raise UsageError(f"--{name}: must be greater than 0")
    return number


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block) and exit code 2 via UsageError."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="second_server.py",
        description="A second, independent queuechat server for testing client tools.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", default="0", help="port; 0 picks a free one (default)")
    add("--secret", default=None, help="clinician token secret (else QUEUECHAT_SECRET, else the dev secret)")
    limits = Limits()
    for name in ("max-text-chars", "max-frame-bytes", "max-queued-frames", "max-queued-bytes", "rate-per-s",
                 "rate-burst", "max-patients-per-room", "max-rooms", "hello-timeout-s", "ping-interval-s",
                 "ping-timeout-s"):
        add(f"--{name}", default=None, metavar="N",
            help=f"limit (default {getattr(limits, name.replace('-', '_'))}; 'off' where it can be off)")
    add("--delay-ms", default="0", metavar="N", help="hold every message event N ms")
    add("--stall-after", default=None, metavar="S", help="start a stall S s after start (with --stall-for)")
    add("--stall-for", default=None, metavar="S", help="stall length in s; inf: never deliver again")
    add("--refuse-every", default=None, metavar="N", help="every Nth send answers rate_limited")
    add("--die-after", default=None, metavar="S", help="exit at once S s after start, no close frames")
    add("--break", dest="break_rule", default=None, metavar="RULE",
        help=f"break one rule: {', '.join(BREAKS)}")
    add("--ok-jitter-ms", default="2", metavar="X", help="hold each ok back 0-X ms (default 2; 0: off)")
    add("--notsent-lowat", default="16384", metavar="N", help="TCP_NOTSENT_LOWAT per socket; off: kernel's")
    return parser


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the command line decides."""

    host: str
    port: int
    secret: str
    dev_secret: bool
    limits: Limits
    faults: Faults
    notsent_lowat: int | None


def parse_options(argv: list[str]) -> Settings:
    """Turn argv into settings; raises UsageError with one line for anything wrong."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        port = int(args.port)
    except ValueError:
        raise UsageError(f"--port: expected a whole number, got {args.port!r}") from None
    if not 0 <= port <= 65535:
        raise UsageError("--port: must be 0-65535")
    loopback = args.host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(args.host).is_loopback
    secret = args.secret if args.secret is not None else os.environ.get("QUEUECHAT_SECRET")
    dev = secret is None
    if secret == "":
        raise UsageError("--secret: must not be empty")
    if secret is None:
        if not loopback:
            raise UsageError("--secret: required when the host is not a loopback address")
        secret = DEV_SECRET
    d = Limits()
    ints: dict[str, int | None] = {}
    for name, off in (("max_text_chars", False), ("max_frame_bytes", False), ("max_queued_frames", False),
                      ("max_queued_bytes", False), ("rate_burst", True), ("max_patients_per_room", True),
                      ("max_rooms", True)):
        raw = getattr(args, name)
        ints[name] = getattr(d, name) if raw is None else positive_int(name.replace("_", "-"), raw,
                                                                         can_be_off=off)
    floats: dict[str, float | None] = {}
    for name in ("rate_per_s", "hello_timeout_s", "ping_interval_s", "ping_timeout_s"):
        raw = getattr(args, name)
        floats[name] = getattr(d, name) if raw is None else positive_float(name.replace("_", "-"), raw,
                                                                             can_be_off=True)
    if (floats["rate_per_s"] is None) != (ints["rate_burst"] is None):
        raise UsageError("--rate-per-s and --rate-burst: switch both off or neither")
    limits = Limits(
        max_text_chars=ints["max_text_chars"] or d.max_text_chars,
        max_frame_bytes=ints["max_frame_bytes"] or d.max_frame_bytes,
        max_queued_frames=ints["max_queued_frames"] or d.max_queued_frames,
        max_queued_bytes=ints["max_queued_bytes"] or d.max_queued_bytes,
        rate_per_s=floats["rate_per_s"],
        rate_burst=ints["rate_burst"],
        max_patients_per_room=ints["max_patients_per_room"],
        max_rooms=ints["max_rooms"],
        hello_timeout_s=floats["hello_timeout_s"],
        ping_interval_s=floats["ping_interval_s"],
        ping_timeout_s=floats["ping_timeout_s"],
    )
    if args.break_rule is not None and args.break_rule not in BREAKS:
        raise UsageError(f"--break: expected one of {', '.join(BREAKS)}, got {args.break_rule!r}")
    if (args.stall_after is None) != (args.stall_for is None):
        raise UsageError("--stall-after and --stall-for: give both or neither")
    refuse = None if args.refuse_every is None else positive_int("refuse-every", args.refuse_every)
    faults = Faults(
        delay_ms=positive_float("delay-ms", args.delay_ms, allow_zero=True) or 0.0,
        stall_after=None if args.stall_after is None
        else positive_float("stall-after", args.stall_after, allow_zero=True),
        stall_for=0.0 if args.stall_for is None
        else positive_float("stall-for", args.stall_for, allow_inf=True) or 0.0,
        refuse_every=refuse,
        die_after=None if args.die_after is None
        else positive_float("die-after", args.die_after, allow_zero=True),
        break_rule=args.break_rule,
        ok_jitter_ms=positive_float("ok-jitter-ms", args.ok_jitter_ms, allow_zero=True) or 0.0,
    )
    lowat = positive_int("notsent-lowat", args.notsent_lowat, can_be_off=True)
    return Settings(host=args.host, port=port, secret=secret, dev_secret=dev, limits=limits, faults=faults,
                    notsent_lowat=lowat)


async def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then shut down as R46 says; the ready line goes to stdout."""
    host, port, limits, faults = settings.host, settings.port, settings.limits, settings.faults
    server = QueueChatServer(secret=settings.secret, limits=limits, faults=faults,
                             notsent_lowat=settings.notsent_lowat)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if faults.die_after is not None:
        loop.call_later(faults.die_after, die)
    try:
        ws_server = await serve(
            server.handle, host, port, process_request=process_request, max_size=limits.max_frame_bytes,
            ping_interval=None, ping_timeout=None, close_timeout=2, server_header="second_server",
        )
    except OSError as exc:
        print(f"second_server: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    server.ws_server = ws_server
    bound = ws_server.sockets[0].getsockname()
    shown_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    if settings.dev_secret:
        log("development_secret", note="using the fixed development secret (loopback only)")
    if faults != Faults():
        log("faults", delay_ms=faults.delay_ms, stall_after=faults.stall_after, stall_for=faults.stall_for,
            refuse_every=faults.refuse_every, die_after=faults.die_after, break_rule=faults.break_rule)
    print(json.dumps({"url": f"ws://{shown_host}:{bound[1]}{PATH}", "pid": os.getpid()}), flush=True)
    await stop.wait()
    log("shutdown", connections=len(server.conns))
    ws_server.close(close_connections=False)
    await server.shutdown()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.5):
            await ws_server.wait_closed()
    return 0


def die() -> None:
    """--die-after: exit at once; the kernel drops every socket with no close frame."""
    log("dying_on_purpose")
    os._exit(3)


def main(argv: Iterable[str] | None = None) -> int:
    try:
        settings = parse_options(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        print(f"second_server.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
