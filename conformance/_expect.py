"""Builders for the frames the contract says a server sends (``docs/protocol.md``).

Each returns a pattern (see :mod:`conformance._patterns`). Events never carry
``ref``; answers get the request's ``ref`` filled in by the step that sends
the request. Patients are given as connections, whose ids are known once
their welcome has been read.
"""

from __future__ import annotations

from typing import Any, Final

from ._client import Conn
from ._patterns import ABSENT, ANY, INT, OPTIONAL, STR, TS, Matcher, PatientId, Satisfies

LIMIT_NAMES: Final = (
    "max_text_chars",
    "max_frame_bytes",
    "max_queued_frames",
    "max_queued_bytes",
    "rate_per_s",
    "rate_burst",
    "max_patients_per_room",
    "max_rooms",
    "hello_timeout_s",
    "ping_interval_s",
    "ping_timeout_s",
)


def pid(patient: Conn | Matcher | str | None) -> Any:
    """A patient given as a connection (its id, once welcomed), a matcher, a literal id or None."""
    if isinstance(patient, Conn):
        conn = patient
        return PatientId(lambda: conn.patient_id, conn.label)
    return patient


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields, "ref": ABSENT}


# --------------------------------------------------------------------------- events


def message(
    patient: Conn | Matcher | str, id: Any, from_: str, text: Any, *, ts: Any = TS, client_ts: Any = ABSENT
) -> dict[str, Any]:
    return _event(
        "message", patient=pid(patient), id=id, **{"from": from_}, text=text, ts=ts, client_ts=client_ts
    )


def unread(patient: Conn | Matcher | str, count: Any) -> dict[str, Any]:
    return _event("unread", patient=pid(patient), count=count)


def notify(patient: Conn | Matcher | str, id: Any) -> dict[str, Any]:
    return _event("notify", patient=pid(patient), id=id)


def chat_box(state: str, patient: Conn | Matcher | str | None, present: bool, reason: str) -> dict[str, Any]:
    return _event("chat_box", state=state, patient=pid(patient), patient_present=present, reason=reason)


def erased(patient: Conn | Matcher | str, reason: str) -> dict[str, Any]:
    return _event("erased", patient=pid(patient), reason=reason)


def patient_joined(
    patient: Conn | Matcher | str, *, name: Any = STR, position: Any = INT, joined_at: Any = ANY
) -> dict[str, Any]:
    return _event("patient_joined", patient=pid(patient), name=name, position=position, joined_at=joined_at)


def patient_left(patient: Conn | Matcher | str, reason: str) -> dict[str, Any]:
    return _event("patient_left", patient=pid(patient), reason=reason)


def provider_status(status: str) -> dict[str, Any]:
    return _event("provider_status", status=status)


def position(value: Any) -> dict[str, Any]:
    return _event("position", position=value)


def call(state: str) -> dict[str, Any]:
    return _event("call", state=state)


def room_settings(patient_initiated_chat: bool) -> dict[str, Any]:
    return _event("room_settings", patient_initiated_chat=patient_initiated_chat)


# --------------------------------------------------------------------------- answers


def ok(**fields: Any) -> dict[str, Any]:
    """An ``ok``; the step fills in ``ref``."""
    return {"type": "ok", **fields}


def send_ok(id: Any, ts: Any = TS) -> dict[str, Any]:
    return ok(id=id, ts=ts)


def open_ok(messages: Any, truncated: Any = False) -> dict[str, Any]:
    return ok(messages=messages, truncated=truncated)


def stored(
    patient: Conn | Matcher | str, id: Any, from_: str, text: Any, *, ts: Any = TS, client_ts: Any = ABSENT
) -> dict[str, Any]:
    """One message as ``open_chat`` returns it."""
    return {"patient": pid(patient), "id": id, "from": from_, "text": text, "ts": ts, "client_ts": client_ts}


def error(code: str, field: Any = None) -> dict[str, Any]:
    """An ``error``; every error carries ``code`` and a human ``message``, ``invalid`` a ``field``."""
    frame: dict[str, Any] = {"type": "error", "code": code, "message": STR}
    if code == "invalid":
        frame["field"] = STR if field is None else field
    return frame


def _limits_ok(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for name in LIMIT_NAMES:
        if name not in value:
            return False
        limit = value[name]
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0
        ):
            return False
    return True


LIMITS: Final = Satisfies(_limits_ok, "an object with the 11 limits by name, each a number > 0 or null")


def clinician_welcome(
    *,
    room: Any = STR,
    queue: Any = ANY,
    chat_box: Any = ANY,
    call: Any = ANY,
    settings: Any = ANY,
    room_settings: Any = ANY,
    provider_status: Any = ANY,
    limits: Any = LIMITS,
) -> dict[str, Any]:
    return {
        "type": "welcome",
        "room": room,
        "queue": queue,
        "chat_box": chat_box,
        "call": call,
        "settings": settings,
        "room_settings": room_settings,
        "provider_status": provider_status,
        "limits": limits,
        "ref": OPTIONAL,
    }


def patient_welcome(
    *, patient: Any = STR, position: Any = INT, provider_status: Any = STR, patient_initiated_chat: Any = ANY
) -> dict[str, Any]:
    return {
        "type": "welcome",
        "patient": patient,
        "position": position,
        "provider_status": provider_status,
        "patient_initiated_chat": patient_initiated_chat,
        "ref": OPTIONAL,
    }


def queue_entry(
    patient: Conn | Matcher | str,
    *,
    name: Any = STR,
    state: str = "waiting",
    unread: Any = 0,
    joined_at: Any = ANY,
) -> dict[str, Any]:
    return {"patient": pid(patient), "name": name, "state": state, "unread": unread, "joined_at": joined_at}


def box_view(state: str, patient: Conn | Matcher | str | None, present: bool) -> dict[str, Any]:
    return {"state": state, "patient": pid(patient), "patient_present": present}
