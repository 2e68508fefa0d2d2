"""Every frame of the queue-chat protocol, version 1, defined once.

Requests (client to server) and events (server to client) are msgspec
Structs: the same classes validate what arrives, encode what leaves, and
give the JSON Schemas that ``docs/asyncapi.yaml`` is checked against.
Nothing here does I/O or imports Trio.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

PROTOCOL_VERSION: Final = 1
WS_PATH: Final = "/v1/ws"

ROOM_PATTERN: Final = r"^[a-z0-9-]{1,64}$"
MAX_REF_CHARS: Final = 64
MAX_NAME_CHARS: Final = 64

Room = Annotated[str, Meta(pattern=ROOM_PATTERN)]
PatientName = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
# The upper bound of text is a server setting (max_text_chars): past it the answer is too_large.
Text = Annotated[str, Meta(min_length=1)]
# client_ts is copied unchanged; numbers outside +-2**53 cannot round-trip through every JSON peer.
ClientTs = Annotated[int, Meta(ge=-(2**53), le=2**53)] | float

Role = Literal["clinician", "patient"]
PatientState = Literal["waiting", "in_call"]
BoxState = Literal["closed", "open", "minimized"]
ProviderStatusValue = Literal["online", "on_call", "away"]
Sender = Literal["clinician", "patient"]
BoxReason = Literal["open_chat", "minimize_chat", "close_chat", "auto_open", "patient_left", "erased"]
ErasedReason = Literal["chat_closed", "viewed_other", "call_started", "refresh", "not_in_view"]
LeftReason = Literal["left", "disconnected", "call_ended"]
CallStateValue = Literal["started", "ended"]


class ErrorCode:
    """The contract's error codes; each ``error`` frame carries one."""

    HELLO_REQUIRED: Final = "hello_required"
    UNAUTHORIZED: Final = "unauthorized"
    BAD_FRAME: Final = "bad_frame"
    UNKNOWN_TYPE: Final = "unknown_type"
    INVALID: Final = "invalid"
    FORBIDDEN: Final = "forbidden"
    NOT_FOUND: Final = "not_found"
    PATIENT_GONE: Final = "patient_gone"
    CALL_IN_PROGRESS: Final = "call_in_progress"
    NOT_IN_CALL: Final = "not_in_call"
    CHAT_DISABLED: Final = "chat_disabled"
    TOO_LARGE: Final = "too_large"
    RATE_LIMITED: Final = "rate_limited"
    CAPACITY: Final = "capacity"


ERROR_CODES: Final = tuple(
    value for name, value in vars(ErrorCode).items() if name.isupper() and isinstance(value, str)
)


class CloseCode:
    """WebSocket close codes the server uses."""

    NORMAL: Final = 1000  # leave, end_call
    GOING_AWAY: Final = 1001  # server shutdown (R46)
    INVALID_PAYLOAD: Final = 1007  # text frame that is not UTF-8
    POLICY: Final = 1008  # errors before welcome, slow reader (R42), hello timeout (R45)
    TOO_BIG: Final = 1009  # frame over max_frame_bytes (R41)
    TRY_AGAIN_LATER: Final = 1013  # capacity (R44)
    REPLACED: Final = 4000  # a newer clinician connection took the room (R12)


# --------------------------------------------------------------------------- requests


class _Request(msgspec.Struct, kw_only=True, frozen=True):
    """Base of requests. ``ref`` is checked apart, so that errors can echo it."""


class Hello(_Request, frozen=True):
    role: Role
    room: Room


class ClinicianHello(_Request, frozen=True):
    room: Room
    token: str


class PatientHello(_Request, frozen=True):
    room: Room
    name: PatientName


class Ping(_Request, frozen=True):
    pass


class ClinicianSend(_Request, frozen=True):
    patient: str
    text: Text
    client_ts: ClientTs | UnsetType = UNSET


class PatientSend(_Request, frozen=True):
    text: Text
    client_ts: ClientTs | UnsetType = UNSET


class OpenChat(_Request, frozen=True):
    patient: str


class MinimizeChat(_Request, frozen=True):
    pass


class CloseChat(_Request, frozen=True):
    pass


class SetNotifications(_Request, frozen=True):
    chat: bool


class SetRoom(_Request, frozen=True):
    patient_initiated_chat: bool


class StartCall(_Request, frozen=True):
    patient: str


class EndCall(_Request, frozen=True):
    pass


class Leave(_Request, frozen=True):
    pass


# Which request types each role may send after welcome: type -> payload class.
CLINICIAN_REQUESTS: Final[dict[str, type[_Request]]] = {
    "ping": Ping,
    "send": ClinicianSend,
    "open_chat": OpenChat,
    "minimize_chat": MinimizeChat,
    "close_chat": CloseChat,
    "set_notifications": SetNotifications,
    "set_room": SetRoom,
    "start_call": StartCall,
    "end_call": EndCall,
}
PATIENT_REQUESTS: Final[dict[str, type[_Request]]] = {
    "ping": Ping,
    "send": PatientSend,
    "leave": Leave,
}
REQUEST_TYPES: Final = frozenset({"hello", *CLINICIAN_REQUESTS, *PATIENT_REQUESTS})


# --------------------------------------------------------------------------- events

_EVENT = {"kw_only": True, "tag_field": "type", "omit_defaults": True}


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One message of a conversation, as ``open_chat`` returns it."""

    patient: str
    id: int
    from_: Sender = msgspec.field(name="from")
    text: str
    ts: int
    client_ts: int | float | UnsetType = UNSET


class QueueEntry(msgspec.Struct, kw_only=True):
    patient: str
    name: str
    state: PatientState
    unread: int
    joined_at: int


class ChatBoxView(msgspec.Struct, kw_only=True):
    state: BoxState
    patient: str | None
    patient_present: bool


class CallView(msgspec.Struct, kw_only=True):
    patient: str


class ClinicianSettings(msgspec.Struct, kw_only=True):
    chat_notifications: bool


class RoomSettingsView(msgspec.Struct, kw_only=True):
    patient_initiated_chat: bool


class ClinicianWelcome(msgspec.Struct, tag="welcome", **_EVENT):
    room: str
    queue: list[QueueEntry]
    chat_box: ChatBoxView
    call: CallView | None
    settings: ClinicianSettings
    room_settings: RoomSettingsView
    provider_status: ProviderStatusValue
    limits: dict[str, Any]
    ref: str | UnsetType = UNSET


class PatientWelcome(msgspec.Struct, tag="welcome", **_EVENT):
    patient: str
    position: int
    provider_status: ProviderStatusValue
    patient_initiated_chat: bool
    ref: str | UnsetType = UNSET


class Ok(msgspec.Struct, tag="ok", **_EVENT):
    ref: str | UnsetType = UNSET


class SendOk(msgspec.Struct, tag="ok", **_EVENT):
    id: int
    ts: int
    ref: str | UnsetType = UNSET


class OpenChatOk(msgspec.Struct, tag="ok", **_EVENT):
    messages: list[ChatMessage]
    truncated: bool
    ref: str | UnsetType = UNSET


class Error(msgspec.Struct, tag="error", **_EVENT):
    code: str
    message: str
    field: str | UnsetType = UNSET
    ref: str | UnsetType = UNSET


class Message(msgspec.Struct, tag="message", **_EVENT):
    patient: str
    id: int
    from_: Sender = msgspec.field(name="from")
    text: str
    ts: int
    client_ts: int | float | UnsetType = UNSET


class Unread(msgspec.Struct, tag="unread", **_EVENT):
    patient: str
    count: int


class Notify(msgspec.Struct, tag="notify", **_EVENT):
    patient: str
    id: int


class ChatBox(msgspec.Struct, tag="chat_box", **_EVENT):
    state: BoxState
    patient: str | None
    patient_present: bool
    reason: BoxReason


class Erased(msgspec.Struct, tag="erased", **_EVENT):
    patient: str
    reason: ErasedReason


class PatientJoined(msgspec.Struct, tag="patient_joined", **_EVENT):
    patient: str
    name: str
    position: int
    joined_at: int


class PatientLeft(msgspec.Struct, tag="patient_left", **_EVENT):
    patient: str
    reason: LeftReason


class ProviderStatus(msgspec.Struct, tag="provider_status", **_EVENT):
    status: ProviderStatusValue


class Position(msgspec.Struct, tag="position", **_EVENT):
    position: int


class Call(msgspec.Struct, tag="call", **_EVENT):
    state: CallStateValue


class RoomSettings(msgspec.Struct, tag="room_settings", **_EVENT):
    patient_initiated_chat: bool


ServerFrame = (
    ClinicianWelcome
    | PatientWelcome
    | Ok
    | SendOk
    | OpenChatOk
    | Error
    | Message
    | Unread
    | Notify
    | ChatBox
    | Erased
    | PatientJoined
    | PatientLeft
    | ProviderStatus
    | Position
    | Call
    | RoomSettings
)

# Server frame type -> the classes that carry it (welcome and ok have variants).
SERVER_FRAME_CLASSES: Final[dict[str, tuple[type[msgspec.Struct], ...]]] = {
    "welcome": (ClinicianWelcome, PatientWelcome),
    "ok": (Ok, SendOk, OpenChatOk),
    "error": (Error,),
    "message": (Message,),
    "unread": (Unread,),
    "notify": (Notify,),
    "chat_box": (ChatBox,),
    "erased": (Erased,),
    "patient_joined": (PatientJoined,),
    "patient_left": (PatientLeft,),
    "provider_status": (ProviderStatus,),
    "position": (Position,),
    "call": (Call,),
    "room_settings": (RoomSettings,),
}
SERVER_FRAME_TYPES: Final = frozenset(SERVER_FRAME_CLASSES)

# The contract's order for frames one cause produces for one connection.
EVENT_ORDER: Final = ("patient_left", "erased", "message", "chat_box", "unread", "notify")

__all__ = [
    "BoxReason", "BoxState", "CLINICIAN_REQUESTS", "Call", "CallStateValue", "CallView", "ChatBox",
    "ChatBoxView", "ChatMessage", "ClientTs", "ClinicianHello", "ClinicianSend", "ClinicianSettings",
    "ClinicianWelcome", "CloseChat", "CloseCode", "EVENT_ORDER", "ERROR_CODES", "EndCall", "Erased",
    "ErasedReason", "Error", "ErrorCode", "Hello", "LeftReason", "Leave", "MAX_NAME_CHARS",
    "MAX_REF_CHARS", "Message", "MinimizeChat", "Notify", "Ok", "OpenChat", "OpenChatOk",
    "PATIENT_REQUESTS", "PROTOCOL_VERSION", "PatientHello", "PatientJoined", "PatientLeft",
    "PatientSend", "PatientState", "PatientWelcome", "Ping", "Position", "ProviderStatus",
    "ProviderStatusValue", "QueueEntry", "REQUEST_TYPES", "ROOM_PATTERN", "Role", "RoomSettings",
    "RoomSettingsView", "SERVER_FRAME_CLASSES", "SERVER_FRAME_TYPES", "Sender", "SendOk",
    "ServerFrame", "SetNotifications", "SetRoom", "StartCall", "Unread", "WS_PATH",
]
