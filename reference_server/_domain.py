"""The queue-chat state machine: the whole of the protocol's behaviour lives in this file.

Sans-IO, in the manner of h11 and wsproto: the shell tells the model that a
connection opened, that a text frame arrived, that a timer fired or that a
connection ended, and gets back the effects to carry out -- frames to send
and connections to close, in order. Time (``now``, seconds since the epoch)
and patient ids come in as arguments; nothing here reads a clock, a global
random generator, a socket or a log.

A room holds its queue of present patients (in check-in order), the call,
the clinician's chat box, badges, settings, and the ids of departed patients.
A departed patient's record survives only while the chat box shows its
conversation (R11); then it is dropped, and with it every message text.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from msgspec import UNSET

from ._codec import ProtocolError, checked_ref, parse_object, validate
from ._frames import (
    CLINICIAN_REQUESTS,
    PATIENT_REQUESTS,
    REQUEST_TYPES,
    Call,
    CallView,
    ChatBox,
    ChatBoxView,
    ChatMessage,
    ClinicianHello,
    ClinicianSend,
    ClinicianSettings,
    ClinicianWelcome,
    CloseChat,
    CloseCode,
    EndCall,
    Erased,
    Error,
    ErrorCode,
    Hello,
    Leave,
    Message,
    MinimizeChat,
    Notify,
    Ok,
    OpenChat,
    OpenChatOk,
    PatientHello,
    PatientJoined,
    PatientLeft,
    PatientSend,
    PatientWelcome,
    Ping,
    Position,
    ProviderStatus,
    QueueEntry,
    RoomSettings,
    RoomSettingsView,
    SendOk,
    ServerFrame,
    SetNotifications,
    SetRoom,
    StartCall,
    Unread,
)
from ._limits import OPEN_CHAT_MAX_MESSAGES, Limits
from ._ratelimit import TokenBucket
from ._tokens import token_is_valid

# Departed ids are remembered per active room for patient_gone (R9); they carry no patient data.
MAX_DEPARTED_IDS_PER_ROOM: Final = 10_000
# Idle rooms (no clinician, no patient) keep their settings, least recently used forgotten first.
MAX_IDLE_ROOMS: Final = 10_000

WAITING: Final = "waiting"
IN_CALL: Final = "in_call"
DEPARTED: Final = "departed"


class Send(NamedTuple):
    """Send ``frame`` on connection ``conn``."""

    conn: int
    frame: ServerFrame


class Close(NamedTuple):
    """Close connection ``conn`` with ``code`` after the frames queued before it."""

    conn: int
    code: int
    reason: str


class PositionsChanged(NamedTuple):
    """Waiting patients' places in ``room`` changed: :meth:`QueueChatModel.pending_positions` gives
    the pushes. One effect, not one ``position`` per patient behind the change (R30, coalesced:
    docs/protocol.md Choice 24): the shell asks for them once per scheduler round and room."""

    room: str


Effect = Send | Close | PositionsChanged


class _Patient:
    __slots__ = (
        "clinician_wrote",
        "conn",
        "id",
        "joined_at",
        "messages",
        "name",
        "next_id",
        "state",
        "told_position",
        "total",
        "unread",
    )

    def __init__(self, patient_id: str, name: str, conn: int, joined_at: int) -> None:
        self.id = patient_id
        self.name = name
        self.state = WAITING
        self.conn: int | None = conn
        self.joined_at = joined_at
        self.unread = 0
        # Only the newest OPEN_CHAT_MAX_MESSAGES are kept: open_chat returns no more.
        self.messages: deque[ChatMessage] = deque(maxlen=OPEN_CHAT_MAX_MESSAGES)
        self.total = 0
        self.next_id = 1
        self.clinician_wrote = False
        self.told_position = 0  # the place this patient was last told (welcome or position push)

    def erase(self) -> None:
        self.messages.clear()
        self.total = 0


class _Room:
    __slots__ = (
        "box_patient",
        "box_state",
        "call",
        "chat_notifications",
        "clinician",
        "departed",
        "patient_initiated_chat",
        "patients",
        "positions_stale",
        "slug",
        "waiting",
    )

    def __init__(self, slug: str) -> None:
        self.slug = slug
        self.clinician: int | None = None
        self.patients: dict[str, _Patient] = {}  # present patients, in queue order
        self.waiting = 0  # how many of them wait (not in the call): a hello's place, without a walk
        self.box_state = "closed"
        self.box_patient: _Patient | None = None
        self.call: _Patient | None = None
        self.chat_notifications = True
        self.patient_initiated_chat = True
        self.departed: OrderedDict[str, None] = OrderedDict()
        # Some waiting patient's place may differ from what it was last told (R30).
        self.positions_stale = False

    def provider_status(self) -> str:
        if self.clinician is None:
            return "away"
        return "on_call" if self.call is not None else "online"

    def waiting_count(self) -> int:
        return self.waiting

    def is_idle(self) -> bool:
        return self.clinician is None and not self.patients


class _Session:
    __slots__ = ("bucket", "closed", "conn", "patient", "role", "room")

    def __init__(self, conn: int, bucket: TokenBucket | None) -> None:
        self.conn = conn
        self.role: str | None = None
        self.room: _Room | None = None
        self.patient: _Patient | None = None
        self.bucket = bucket
        self.closed = False


def _ms(now: float) -> int:
    return int(now * 1000)


def _fail(code: str, message: str) -> ProtocolError:
    return ProtocolError(code, message)


class QueueChatModel:
    """Every room of one server: events in, effects out."""

    def __init__(
        self,
        *,
        secret: str | bytes,
        new_patient_id: Callable[[], str],
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        self._secret = secret
        self._new_patient_id = new_patient_id
        self._sessions: dict[int, _Session] = {}
        self._rooms: dict[str, _Room] = {}  # active rooms: count toward max_rooms
        self._idle_rooms: OrderedDict[str, _Room] = OrderedDict()
        self._handlers: dict[type[Any], Callable[[_Session, Any, str | None, float, list[Effect]], None]] = {
            Ping: self._ping,
            ClinicianSend: self._clinician_send,
            PatientSend: self._patient_send,
            OpenChat: self._open_chat,
            MinimizeChat: self._minimize_chat,
            CloseChat: self._close_chat,
            SetNotifications: self._set_notifications,
            SetRoom: self._set_room,
            StartCall: self._start_call,
            EndCall: self._end_call,
            Leave: self._leave,
        }

    # ------------------------------------------------------------------ inputs

    def connect(self, conn: int, now: float) -> None:
        """A WebSocket connection was accepted; it must say hello next."""
        if conn in self._sessions:
            raise ValueError(f"connection {conn} is already open")
        limits = self.limits
        bucket = None
        if limits.rate_per_s is not None and limits.rate_burst is not None:
            bucket = TokenBucket(limits.rate_per_s, limits.rate_burst, now)
        self._sessions[conn] = _Session(conn, bucket)

    def receive(self, conn: int, raw: str | bytes, now: float) -> list[Effect]:
        """A whole WebSocket message arrived on ``conn``."""
        session = self._sessions.get(conn)
        if session is None or session.closed:
            return []
        out: list[Effect] = []
        if session.role is None:
            self._hello(session, raw, now, out)
            return out
        room = session.room
        if session.patient is not None and room is not None and room.positions_stale:
            self._settle_positions(room, out)  # a pending place goes before the answer (Choice 24)
        try:
            obj = parse_object(raw)
        except ProtocolError as error:
            if session.bucket is not None:
                session.bucket.take(now)
            out.append(Send(conn, _error(error, error.ref)))
            return out
        ref = checked_ref(obj)
        try:
            if session.bucket is not None and not session.bucket.take(now):
                raise _fail(ErrorCode.RATE_LIMITED, "too many requests; slow down")
            frame_type = obj["type"]
            if frame_type not in REQUEST_TYPES:
                raise _fail(ErrorCode.UNKNOWN_TYPE, "unknown request type")
            table = CLINICIAN_REQUESTS if session.role == "clinician" else PATIENT_REQUESTS
            payload_type = table.get(frame_type)
            if payload_type is None:
                raise _fail(ErrorCode.FORBIDDEN, f"a {session.role} may not send '{frame_type}' now")
            request = validate(obj, payload_type)
            self._handlers[payload_type](session, request, ref, now, out)
        except ProtocolError as error:
            out.append(Send(conn, _error(error, ref)))
        return out

    def hello_timed_out(self, conn: int) -> list[Effect]:
        """The hello timer (R45) fired; a connection still without welcome is closed."""
        session = self._sessions.get(conn)
        if session is None or session.closed or session.role is not None:
            return []
        session.closed = True
        return [
            Send(conn, Error(code=ErrorCode.HELLO_REQUIRED, message="no hello in time")),
            Close(conn, CloseCode.POLICY, "hello required"),
        ]

    def disconnected(self, conn: int, now: float) -> list[Effect]:
        """The connection ended, by either side or lost (R45, R42); the session is forgotten."""
        session = self._sessions.pop(conn, None)
        if session is None or session.closed or session.room is None:
            return []
        out: list[Effect] = []
        room = session.room
        if session.role == "patient" and session.patient is not None:
            self._depart(room, session.patient, "disconnected", out)
        elif session.role == "clinician" and room.clinician == conn:
            self._clinician_ends(room, None, out)
        self._maybe_idle(room)
        return out

    def pending_positions(self, room_slug: str) -> list[Effect]:
        """The ``position`` pushes a :class:`PositionsChanged` announced: one per waiting patient
        whose place differs from what it was last told, with its current place (R30)."""
        out: list[Effect] = []
        room = self._rooms.get(room_slug)
        if room is not None:
            self._settle_positions(room, out)
        return out

    def with_positions(self, effects: list[Effect]) -> list[Send | Close]:
        """The effects of one cause, then the ``position`` pushes its PositionsChanged announced,
        expanded at once: for drivers that do not coalesce across causes (tests, tools); the shell
        expands them once per scheduler round instead."""
        rooms = dict.fromkeys(e.room for e in effects if isinstance(e, PositionsChanged))
        out: list[Send | Close] = [e for e in effects if not isinstance(e, PositionsChanged)]
        for room in rooms:
            out += [e for e in self.pending_positions(room) if not isinstance(e, PositionsChanged)]
        return out

    def is_welcomed(self, conn: int) -> bool:
        session = self._sessions.get(conn)
        return session is not None and session.role is not None

    def statistics(self) -> dict[str, int]:
        return {
            "sessions": len(self._sessions),
            "rooms_active": len(self._rooms),
            "rooms_idle": len(self._idle_rooms),
            "patients_present": sum(len(room.patients) for room in self._rooms.values()),
        }

    # ------------------------------------------------------------------ hello

    def _hello(self, session: _Session, raw: str | bytes, now: float, out: list[Effect]) -> None:
        ref: str | None = None
        try:
            try:
                obj = parse_object(raw)
            except ProtocolError:
                raise _fail(ErrorCode.HELLO_REQUIRED, "the first frame must be hello") from None
            if obj["type"] != "hello":
                raise _fail(ErrorCode.HELLO_REQUIRED, "the first frame must be hello")
            ref = checked_ref(obj)
            hello = validate(obj, Hello)
            if hello.role == "clinician":
                self._clinician_hello(session, validate(obj, ClinicianHello), ref, now, out)
            else:
                self._patient_hello(session, validate(obj, PatientHello), ref, now, out)
        except ProtocolError as error:
            session.closed = True
            code = CloseCode.TRY_AGAIN_LATER if error.code == ErrorCode.CAPACITY else CloseCode.POLICY
            out.append(Send(session.conn, _error(error, ref)))
            out.append(Close(session.conn, code, error.code))

    def _room_for_hello(self, slug: str) -> _Room:
        room = self._rooms.get(slug)
        if room is not None:
            return room
        max_rooms = self.limits.max_rooms
        if max_rooms is not None and len(self._rooms) >= max_rooms:
            raise _fail(ErrorCode.CAPACITY, "the server holds its maximum number of rooms")
        room = self._idle_rooms.pop(slug, None) or _Room(slug)
        self._rooms[slug] = room
        return room

    def _maybe_idle(self, room: _Room) -> None:
        if room.is_idle() and self._rooms.get(room.slug) is room:
            del self._rooms[room.slug]
            room.departed.clear()
            room.box_state, room.box_patient = "closed", None
            room.positions_stale = False
            self._idle_rooms[room.slug] = room
            if len(self._idle_rooms) > MAX_IDLE_ROOMS:
                self._idle_rooms.popitem(last=False)

    def _clinician_hello(
        self, session: _Session, hello: ClinicianHello, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        if not token_is_valid(self._secret, hello.room, hello.token):
            raise _fail(ErrorCode.UNAUTHORIZED, "wrong clinician token for this room")
        room = self._room_for_hello(hello.room)
        status_before = room.provider_status()
        if room.clinician is not None:
            old = self._sessions.get(room.clinician)
            if old is not None:
                old.closed = True
            self._refresh(room, room.clinician, out)
            out.append(Close(room.clinician, CloseCode.REPLACED, "replaced by a newer clinician connection"))
        session.role, session.room = "clinician", room
        room.clinician = session.conn
        out.append(Send(session.conn, ClinicianWelcome(
            ref=_opt(ref),
            room=room.slug,
            queue=[
                QueueEntry(patient=p.id, name=p.name, state=p.state,  # type: ignore[arg-type]
                           unread=p.unread, joined_at=p.joined_at)
                for p in room.patients.values()
            ],
            chat_box=_box_view(room),
            call=CallView(patient=room.call.id) if room.call is not None else None,
            settings=ClinicianSettings(chat_notifications=room.chat_notifications),
            room_settings=RoomSettingsView(patient_initiated_chat=room.patient_initiated_chat),
            provider_status=room.provider_status(),  # type: ignore[arg-type]
            limits=self.limits.as_wire(),
        )))
        self._push_status_change(room, status_before, out)

    def _patient_hello(
        self, session: _Session, hello: PatientHello, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        room = self._rooms.get(hello.room)
        max_patients = self.limits.max_patients_per_room
        if room is not None and max_patients is not None and len(room.patients) >= max_patients:
            raise _fail(ErrorCode.CAPACITY, "the waiting room is full")
        room = self._room_for_hello(hello.room)
        patient_id = self._new_patient_id()
        while patient_id in room.patients or patient_id in room.departed:
            patient_id = self._new_patient_id()
        patient = _Patient(patient_id, hello.name, session.conn, _ms(now))
        room.patients[patient_id] = patient
        room.waiting += 1
        session.role, session.room, session.patient = "patient", room, patient
        position = room.waiting_count()
        patient.told_position = position
        out.append(Send(session.conn, PatientWelcome(
            ref=_opt(ref),
            patient=patient_id,
            position=position,
            provider_status=room.provider_status(),  # type: ignore[arg-type]
            patient_initiated_chat=room.patient_initiated_chat,
        )))
        if room.clinician is not None:
            out.append(Send(room.clinician, PatientJoined(
                patient=patient_id, name=hello.name, position=position, joined_at=patient.joined_at,
            )))

    # ------------------------------------------------------------------ requests

    def _ping(self, session: _Session, request: Ping, ref: str | None, now: float, out: list[Effect]) -> None:
        out.append(Send(session.conn, Ok(ref=_opt(ref))))

    def _check_text(self, text: str) -> None:
        if len(text) > self.limits.max_text_chars:
            raise _fail(ErrorCode.TOO_LARGE, f"text is longer than {self.limits.max_text_chars} characters")

    def _patient_send(
        self, session: _Session, request: PatientSend, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        self._check_text(request.text)
        room, patient = session.room, session.patient
        assert room is not None and patient is not None
        if patient.state == WAITING and not room.patient_initiated_chat and not patient.clinician_wrote:
            raise _fail(ErrorCode.CHAT_DISABLED, "the clinician has turned off chat started by patients")
        message_id, ts = patient.next_id, _ms(now)
        patient.next_id += 1
        patient.messages.append(ChatMessage(
            patient=patient.id, id=message_id, from_="patient", text=request.text, ts=ts,
            client_ts=request.client_ts,
        ))
        patient.total += 1
        clinician = room.clinician
        if clinician is None:
            patient.unread += 1  # nothing is shown while no clinician is connected (R3, R12)
        else:
            out.append(Send(clinician, Message(
                patient=patient.id, id=message_id, from_="patient", text=request.text, ts=ts,
                client_ts=request.client_ts,
            )))
            if room.box_state == "minimized":  # R6, whatever the notification setting
                room.box_state = "open"
                out.append(Send(clinician, _box_event(room, "auto_open")))
            if not (room.box_state == "open" and room.box_patient is patient):  # R3, R7, R8
                patient.unread += 1
                out.append(Send(clinician, Unread(patient=patient.id, count=patient.unread)))
                if room.chat_notifications:  # R10
                    out.append(Send(clinician, Notify(patient=patient.id, id=message_id)))
        out.append(Send(session.conn, SendOk(ref=_opt(ref), id=message_id, ts=ts)))

    def _present_patient(self, room: _Room, patient_id: str) -> _Patient:
        patient = room.patients.get(patient_id)
        if patient is not None:
            return patient
        shown = room.box_patient  # the box keeps its departed patient even past the id memory (R9)
        if patient_id in room.departed or (shown is not None and shown.id == patient_id):
            raise _fail(ErrorCode.PATIENT_GONE, "that patient has left")
        raise _fail(ErrorCode.NOT_FOUND, "no such patient in this room")

    def _clinician_send(
        self, session: _Session, request: ClinicianSend, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        self._check_text(request.text)
        room = session.room
        assert room is not None
        patient = self._present_patient(room, request.patient)
        message_id, ts = patient.next_id, _ms(now)
        patient.next_id += 1
        patient.clinician_wrote = True  # R31
        patient.messages.append(ChatMessage(
            patient=patient.id, id=message_id, from_="clinician", text=request.text, ts=ts,
            client_ts=request.client_ts,
        ))
        patient.total += 1
        assert patient.conn is not None
        self._settle_positions(room, out)  # the patient's pending place goes first (Choice 24)
        out.append(Send(patient.conn, Message(
            patient=patient.id, id=message_id, from_="clinician", text=request.text, ts=ts,
            client_ts=request.client_ts,
        )))
        out.append(Send(session.conn, SendOk(ref=_opt(ref), id=message_id, ts=ts)))

    def _open_chat(
        self, session: _Session, request: OpenChat, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        room = session.room
        assert room is not None
        target = room.patients.get(request.patient)
        shown = room.box_patient
        if target is None:
            if shown is not None and shown.id == request.patient:
                target = shown  # a departed patient whose conversation the box still holds (R4, R11)
            else:
                raise _fail(ErrorCode.NOT_FOUND, "no such conversation in this room")
        if not (shown is target and room.box_state == "open"):
            if shown is not None and shown is not target and shown.state == DEPARTED:
                self._erase_shown(room, "viewed_other", out)  # R11b
            room.box_state, room.box_patient = "open", target
            out.append(Send(session.conn, _box_event(room, "open_chat")))
            if target.unread:
                target.unread = 0
                out.append(Send(session.conn, Unread(patient=target.id, count=0)))
        out.append(Send(session.conn, OpenChatOk(
            ref=_opt(ref), messages=list(target.messages), truncated=target.total > len(target.messages),
        )))

    def _minimize_chat(
        self, session: _Session, request: MinimizeChat, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        room = session.room
        assert room is not None
        if room.box_state == "open":
            room.box_state = "minimized"
            out.append(Send(session.conn, _box_event(room, "minimize_chat")))
        out.append(Send(session.conn, Ok(ref=_opt(ref))))

    def _close_chat(
        self, session: _Session, request: CloseChat, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        room = session.room
        assert room is not None
        shown = room.box_patient
        if room.box_state != "closed":
            if shown is not None and shown.state == DEPARTED:
                shown.erase()
                out.append(Send(session.conn, Erased(patient=shown.id, reason="chat_closed")))  # R11a
            room.box_state, room.box_patient = "closed", None
            out.append(Send(session.conn, _box_event(room, "close_chat")))
        out.append(Send(session.conn, Ok(ref=_opt(ref))))

    def _set_notifications(
        self, session: _Session, request: SetNotifications, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        assert session.room is not None
        session.room.chat_notifications = request.chat
        out.append(Send(session.conn, Ok(ref=_opt(ref))))

    def _set_room(
        self, session: _Session, request: SetRoom, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        room = session.room
        assert room is not None
        if room.patient_initiated_chat != request.patient_initiated_chat:
            room.patient_initiated_chat = request.patient_initiated_chat
            frame = RoomSettings(patient_initiated_chat=request.patient_initiated_chat)
            self._settle_positions(room, out)
            for patient in room.patients.values():
                assert patient.conn is not None
                out.append(Send(patient.conn, frame))
        out.append(Send(session.conn, Ok(ref=_opt(ref))))

    def _start_call(
        self, session: _Session, request: StartCall, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        room = session.room
        assert room is not None
        patient = self._present_patient(room, request.patient)
        if room.call is not None:
            raise _fail(ErrorCode.CALL_IN_PROGRESS, "a call is already in progress")
        self._settle_positions(room, out)  # places from before the call go before its frames (§5)
        status_before = room.provider_status()
        assert patient.state == WAITING  # the one call is nobody else's (checked above)
        patient.state = IN_CALL
        room.waiting -= 1
        room.call = patient
        shown = room.box_patient
        if shown is not None and shown.state == DEPARTED:
            self._erase_shown(room, "call_started", out)  # R11c
        assert patient.conn is not None
        out.append(Send(patient.conn, Call(state="started")))
        self._push_status_change(room, status_before, out)
        self._positions_moved(room, out)
        out.append(Send(session.conn, Ok(ref=_opt(ref))))

    def _end_call(
        self, session: _Session, request: EndCall, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        room = session.room
        assert room is not None
        patient = room.call
        if patient is None:
            raise _fail(ErrorCode.NOT_IN_CALL, "there is no call in progress")
        conn = patient.conn
        assert conn is not None
        out.append(Send(conn, Call(state="ended")))
        out.append(Close(conn, CloseCode.NORMAL, "call ended"))
        patient_session = self._sessions.get(conn)
        if patient_session is not None:
            patient_session.closed = True
        self._depart(room, patient, "call_ended", out)
        out.append(Send(session.conn, Ok(ref=_opt(ref))))

    def _leave(
        self, session: _Session, request: Leave, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        room, patient = session.room, session.patient
        assert room is not None and patient is not None
        session.closed = True
        self._depart(room, patient, "left", out)
        out.append(Send(session.conn, Ok(ref=_opt(ref))))
        out.append(Close(session.conn, CloseCode.NORMAL, "left the queue"))
        self._maybe_idle(room)

    # ------------------------------------------------------------------ transitions

    def _depart(self, room: _Room, patient: _Patient, reason: str, out: list[Effect]) -> None:
        """A present patient departs (R9, R11): badge gone, conversation kept only if in the box."""
        status_before = room.provider_status()
        was_waiting = patient.state == WAITING
        del room.patients[patient.id]
        room.waiting -= was_waiting
        patient.state, patient.conn, patient.unread = DEPARTED, None, 0
        if room.call is patient:
            room.call = None
        room.departed[patient.id] = None
        if len(room.departed) > MAX_DEPARTED_IDS_PER_ROOM:
            room.departed.popitem(last=False)
        clinician = room.clinician
        if clinician is not None:
            left = PatientLeft(patient=patient.id, reason=reason)  # type: ignore[arg-type]
            out.append(Send(clinician, left))
        if room.box_patient is patient:
            if clinician is not None:
                out.append(Send(clinician, _box_event(room, "patient_left")))
        else:
            patient.erase()
            if clinician is not None:
                out.append(Send(clinician, Erased(patient=patient.id, reason="not_in_view")))
        self._push_status_change(room, status_before, out)
        if was_waiting and room.patients:
            self._positions_moved(room, out)

    def _erase_shown(self, room: _Room, reason: str, out: list[Effect]) -> None:
        """Erase the departed conversation the box shows; the box closes (R11)."""
        shown = room.box_patient
        assert shown is not None and shown.state == DEPARTED and room.clinician is not None
        shown.erase()
        room.box_state, room.box_patient = "closed", None
        out.append(Send(room.clinician, Erased(patient=shown.id, reason=reason)))  # type: ignore[arg-type]
        out.append(Send(room.clinician, _box_event(room, "erased")))

    def _refresh(self, room: _Room, old_conn: int | None, out: list[Effect]) -> None:
        """R12: the clinician's page is gone; every conversation it held is erased."""
        shown = room.box_patient
        if shown is not None and shown.state == DEPARTED:
            shown.erase()
            if old_conn is not None:
                out.append(Send(old_conn, Erased(patient=shown.id, reason="refresh")))
        for patient in room.patients.values():
            patient.erase()
            patient.unread = 0
            if old_conn is not None:
                out.append(Send(old_conn, Erased(patient=patient.id, reason="refresh")))
        room.box_state, room.box_patient = "closed", None

    def _clinician_ends(self, room: _Room, old_conn: int | None, out: list[Effect]) -> None:
        status_before = room.provider_status()
        self._refresh(room, old_conn, out)
        room.clinician = None
        self._push_status_change(room, status_before, out)

    def _push_status_change(self, room: _Room, before: str, out: list[Effect]) -> None:
        after = room.provider_status()
        if after != before:
            frame = ProviderStatus(status=after)  # type: ignore[arg-type]
            self._settle_positions(room, out)
            for patient in room.patients.values():
                assert patient.conn is not None
                out.append(Send(patient.conn, frame))

    def _positions_moved(self, room: _Room, out: list[Effect]) -> None:
        """Waiting patients behind a removed place moved up: one effect for all of them, however
        many (a departure near the head of a 500-patient room is not 499 effects)."""
        if not room.positions_stale:
            room.positions_stale = True
            out.append(PositionsChanged(room.slug))

    def _settle_positions(self, room: _Room, out: list[Effect]) -> None:
        """Push each waiting patient's place where it differs from what it was last told. Called by
        :meth:`pending_positions`, and before any other frame to a patient of a stale room, so that a
        ``position`` is never older than a frame sent after it (Choice 24)."""
        if not room.positions_stale:
            return
        room.positions_stale = False
        position = 0
        for patient in room.patients.values():
            if patient.state == WAITING:
                position += 1
                if patient.told_position != position:
                    patient.told_position = position
                    assert patient.conn is not None
                    out.append(Send(patient.conn, Position(position=position)))

def _opt(ref: str | None) -> Any:
    return UNSET if ref is None else ref


def _error(error: ProtocolError, ref: str | None) -> Error:
    return Error(
        ref=UNSET if ref is None else ref,
        code=error.code,
        message=error.message,
        field=UNSET if error.field is None else error.field,
    )


def _box_view(room: _Room) -> ChatBoxView:
    shown = room.box_patient
    return ChatBoxView(
        state=room.box_state,  # type: ignore[arg-type]
        patient=shown.id if shown is not None else None,
        patient_present=shown is not None and shown.state != DEPARTED,
    )


def _box_event(room: _Room, reason: str) -> ChatBox:
    shown = room.box_patient
    return ChatBox(
        state=room.box_state,  # type: ignore[arg-type]
        patient=shown.id if shown is not None else None,
        patient_present=shown is not None and shown.state != DEPARTED,
        reason=reason,  # type: ignore[arg-type]
    )
