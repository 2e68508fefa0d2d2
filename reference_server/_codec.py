"""Turning text frames into checked requests and events into text, with the contract's error codes.

Checks run in the contract's order: ``bad_frame`` (here, :func:`parse_object`),
``rate_limited`` (the caller's, between the two steps), ``unknown_type`` and
``forbidden`` (the caller's tables), ``invalid`` (:func:`validate`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, TypeVar

import msgspec

from ._frames import MAX_REF_CHARS, ROOM_PATTERN, ErrorCode, ServerFrame

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode

R = TypeVar("R", bound=msgspec.Struct)


class ProtocolError(Exception):
    """A request the contract answers with ``error``; carries no user text, only the code and field."""

    def __init__(self, code: str, message: str, *, field: str | None = None, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.ref = ref  # set only where the request's ref is known before the failing check


def parse_object(raw: str | bytes) -> dict[str, Any]:
    """Decode one text frame into a JSON object with a string ``type``, or raise ``bad_frame``."""
    if not isinstance(raw, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frames are JSON objects in text frames, not binary")
    try:
        obj = _json_decode(raw)
    except (msgspec.DecodeError, UnicodeEncodeError):
        # msgspec refuses lone surrogates (escaped, or raw in a str that did not come
        # through a WebSocket) and out-of-range numbers; the standard library keeps them,
        # so that the field can be named (invalid).
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not valid JSON") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not a JSON object")
    if not isinstance(obj.get("type"), str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame has no string field 'type'", ref=checked_ref(obj))
    return obj


def has_lone_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def checked_ref(obj: dict[str, Any]) -> str | None:
    """The request's ``ref`` when it is a valid one, else None (validate() reports a bad one)."""
    ref = obj.get("ref")
    if isinstance(ref, str) and len(ref) <= MAX_REF_CHARS and not has_lone_surrogate(ref):
        return ref
    return None


# msgspec's pattern check is a search, where "$" also matches before a final newline.
_ROOM_EXACT = re.compile(ROOM_PATTERN.removeprefix("^").removesuffix("$"))
_FIELD_HINTS: Final = {
    "ref": "must be a string of at most 64 characters",
    "room": "must match [a-z0-9-]{1,64}",
    "name": "must be a string of 1 to 64 characters",
    "text": "must be a non-empty string",
    "client_ts": "must be a finite number (integers within +-2**53)",
    "role": "must be 'clinician' or 'patient'",
    "chat": "must be a boolean",
    "patient_initiated_chat": "must be a boolean",
    "patient": "must be a string (a patient id)",
    "token": "must be a string",
}


def _invalid(field: str) -> ProtocolError:
    hint = _FIELD_HINTS.get(field, "is missing or has the wrong type")
    return ProtocolError(ErrorCode.INVALID, f"field '{field}' {hint}", field=field)


def validate(obj: dict[str, Any], payload_type: type[R]) -> R:
    """Check ``ref`` and the payload's fields; raise ``invalid`` naming the first bad field
    in the order the payload declares its fields (not the order the frame lists them)."""
    if "ref" in obj and checked_ref(obj) is None:
        raise _invalid("ref")
    try:
        request = msgspec.convert(obj, payload_type)
    except (msgspec.ValidationError, UnicodeEncodeError):
        # The slow path. msgspec also raises UnicodeEncodeError on a lone surrogate
        # (which only the standard library's decoder lets through) in a key or in a
        # string it must match: an unknown field is ignored whatever it holds.
        known = {key: value for key, value in obj.items() if key in payload_type.__struct_fields__}
        bad = _first_bad_field(known, payload_type)
        if bad is not None:
            raise _invalid(bad) from None
        request = msgspec.convert(known, payload_type)
    for field in payload_type.__struct_fields__:
        if _bad_value(field, getattr(request, field)):
            raise _invalid(field)
    return request


def _bad_value(field: str, value: Any) -> bool:
    if isinstance(value, str):
        return has_lone_surrogate(value) or (field == "room" and not _ROOM_EXACT.fullmatch(value))
    return isinstance(value, float) and not math.isfinite(value)


def _first_bad_field(obj: dict[str, Any], payload_type: type[msgspec.Struct]) -> str | None:
    for info in msgspec.structs.fields(payload_type):
        if info.name not in obj:
            if info.required:
                return info.name
            continue
        value = obj[info.name]
        if _holds_lone_surrogate(value):
            return info.name
        try:
            converted = msgspec.convert(value, info.type)
        except (msgspec.ValidationError, UnicodeEncodeError):
            return info.name
        if _bad_value(info.name, converted):
            return info.name
    return None


def _holds_lone_surrogate(value: Any) -> bool:
    stack = [value]  # iterative: the value may be nested as deep as the JSON decoder allowed
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def encode(frame: ServerFrame) -> str:
    """One event as the text of a WebSocket text frame."""
    return _json_encode(frame).decode("utf-8")


def encode_bytes(frame: ServerFrame) -> bytes:
    return _json_encode(frame)


def decode_event(raw: str | bytes) -> dict[str, Any]:
    """Decode a frame the server sent (for clients: simulator, load tests, conformance)."""
    obj = _json_decode(raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ValueError("server frame is not a JSON object with a string 'type'")
    return obj


def redact(value: Any) -> Any:
    """A copy fit to save: every ``text`` and ``name`` string replaced by its length (R13)."""
    if isinstance(value, dict):
        return {
            key: (len(item) if key in ("text", "name") and isinstance(item, str) else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value
