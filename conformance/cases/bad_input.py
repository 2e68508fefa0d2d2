"""Bad input (R40): bad_frame, unknown_type, forbidden, invalid with field, not_found; none closes."""

from __future__ import annotations

import json
from typing import Any

from .._client import Conn
from .._context import CaseContext
from .._expect import error
from .._patterns import OPTIONAL
from .._registry import group
from ._steps import clinician_writes

case = group("bad_input")


@case(
    "R40.bad-frame",
    "Text that is not JSON, not an object, or has no string type answers bad_frame; "
    "the connection stays and nobody else is disturbed",
    checks=("R1",),
)
async def bad_frame(t: CaseContext) -> None:
    """C sends text that is not JSON, a JSON array, an object without type and one with a numeric type: four
    bad_frame errors; then C writes to A as usual, and A received nothing else."""
    c, a = await t.setup("A")
    await t.request(
        c,
        {},
        raw="this is not JSON",
        ref=False,
        answer=error("bad_frame"),
        title="C sends text that is not JSON",
    )
    await t.request(
        c, {}, raw="[1, 2, 3]", ref=False, answer=error("bad_frame"), title="C sends a JSON array"
    )
    await t.request(
        c,
        {},
        raw='{"ref": "no-type"}',
        ref=False,
        answer={**error("bad_frame"), "ref": OPTIONAL},
        title="C sends an object without type",
    )
    await t.request(
        c,
        {},
        raw='{"type": 5}',
        ref=False,
        answer=error("bad_frame"),
        title="C sends an object whose type is a number",
    )
    await clinician_writes(t, c, a, id=1, title="C writes to A: the session goes on")


@case("R40.unknown-type", "An unknown type answers unknown_type, for either role")
async def unknown_type(t: CaseContext) -> None:
    """C sends type dance, A sends type open_door: error{unknown_type} with their refs."""
    c, a = await t.setup("A")
    await t.request(c, {"type": "dance"}, answer=error("unknown_type"), title="C sends an unknown type")
    await t.request(a, {"type": "open_door"}, answer=error("unknown_type"), title="A sends an unknown type")


@case("R40.forbidden-for-role", "A request the role may not make answers forbidden")
async def forbidden_for_role(t: CaseContext) -> None:
    """A sends open_chat, start_call and set_room (clinician requests); C sends leave (a patient's): forbidden
    each time, and nothing happens."""
    c, a = await t.setup("A")
    await t.request(
        a, {"type": "open_chat", "patient": a.pid}, answer=error("forbidden"), title="A: open_chat"
    )
    await t.request(
        a, {"type": "start_call", "patient": a.pid}, answer=error("forbidden"), title="A: start_call"
    )
    await t.request(
        a,
        {"type": "set_room", "patient_initiated_chat": False},
        answer=error("forbidden"),
        title="A: set_room",
    )
    await t.request(c, {"type": "leave"}, answer=error("forbidden"), title="C: leave")


@case("R40.invalid-field", "Wrong or missing fields answer invalid with field naming the field")
async def invalid_field(t: CaseContext) -> None:
    """Each request below misses a field or has one of the wrong type: error{invalid, field} names it."""
    c, a = await t.setup("A")
    cases: list[tuple[Conn, dict[str, Any], str, str]] = [
        (a, {"type": "send"}, "text", "A: send without text"),
        (a, {"type": "send", "text": 5}, "text", "A: send with a number as text"),
        (c, {"type": "send", "patient": a.pid}, "text", "C: send without text"),
        (c, {"type": "send", "text": t.text()}, "patient", "C: send without patient"),
        (c, {"type": "open_chat", "patient": 7}, "patient", "C: open_chat with a number as patient"),
        (c, {"type": "start_call"}, "patient", "C: start_call without patient"),
        (c, {"type": "set_notifications", "chat": "yes"}, "chat", "C: set_notifications with a string"),
        (c, {"type": "set_room"}, "patient_initiated_chat", "C: set_room without patient_initiated_chat"),
    ]
    for conn, frame, field, title in cases:
        await t.request(conn, frame, answer=error("invalid", field), title=title)


@case("R40.invalid-ref", "A ref that is not a string of at most 64 characters answers invalid, field ref")
async def invalid_ref(t: CaseContext) -> None:
    """C sends close_chat with a 65-character ref, a numeric ref and a null ref: error{invalid, field ref}
    each time."""
    (c,) = await t.setup()
    for value, title in (("r" * 65, "a 65-character ref"), (5, "a numeric ref"), (None, "a null ref")):
        await t.request(
            c,
            {"type": "close_chat", "ref": value},
            ref=False,
            answer={**error("invalid", "ref"), "ref": OPTIONAL},
            title=f"C sends close_chat with {title}",
        )


@case(
    "R40.empty-text-and-lone-surrogate",
    "An empty text, or a string with a lone surrogate, answers invalid naming the field",
)
async def empty_text_lone_surrogate(t: CaseContext) -> None:
    """A sends an empty text and a text with a lone surrogate (\\ud800): invalid, field text; C writes to a
    patient id with a lone surrogate: invalid, field patient; a patient hello whose name has a lone
    surrogate: invalid, field name, and a 1008 close."""
    c, a = await t.setup("A")
    await t.request(
        a, {"type": "send", "text": ""}, answer=error("invalid", "text"), title="A sends an empty text"
    )
    ref = t.ref(a)
    await t.request(
        a,
        {"type": "send", "ref": ref},
        ref=ref,
        raw=json.dumps({"type": "send", "text": "a\ud800b", "ref": ref}),
        answer=error("invalid", "text"),
        title="A sends a text with a lone surrogate",
    )
    ref = t.ref(c)
    await t.request(
        c,
        {"type": "send", "ref": ref},
        ref=ref,
        raw=json.dumps({"type": "send", "patient": "x\udc00", "text": t.text(), "ref": ref}),
        answer=error("invalid", "patient"),
        title="C writes to a patient id with a lone surrogate",
    )
    room = c.welcome.get("room", "")
    x = await t.connect("X")
    await t.request(
        x,
        {"type": "hello"},
        ref=False,
        raw=json.dumps({"type": "hello", "role": "patient", "room": room, "name": "n\ud800"}),
        answer=error("invalid", "name"),
        close=1008,
        title="X: patient hello with a lone surrogate in the name",
    )


@case("R40.unknown-patient-not-found", "A patient id the room never had answers not_found")
async def unknown_patient(t: CaseContext) -> None:
    """C sends to, opens the chat of, and starts a call with a made-up id: not_found each time."""
    (c,) = await t.setup()
    made_up = "BBBBBBBBBBBBBBBBBBBBBB"
    await t.request(
        c,
        {"type": "send", "patient": made_up, "text": t.text()},
        answer=error("not_found"),
        title="C writes to a made-up id",
    )
    await t.request(
        c,
        {"type": "open_chat", "patient": made_up},
        answer=error("not_found"),
        title="C opens a made-up id's chat",
    )
    await t.request(
        c,
        {"type": "start_call", "patient": made_up},
        answer=error("not_found"),
        title="C starts a call with a made-up id",
    )
    await t.still_works(c, "C still works")
