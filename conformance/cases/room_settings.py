"""Room settings (R31): patient-initiated chat off until the clinician writes first; in a call, always."""

from __future__ import annotations

from .._context import CaseContext
from .._expect import call, error, ok, provider_status, room_settings
from .._patterns import Unordered
from .._registry import group
from ._steps import clinician_writes, patient_writes

case = group("room_settings")


@case(
    "R31.chat-disabled-until-clinician-writes",
    "While patient-initiated chat is off, a waiting patient's "
    "send answers chat_disabled until the clinician has written to them",
    checks=("R1", "R3", "R10"),
)
async def chat_disabled(t: CaseContext) -> None:
    """C turns patient-initiated chat off (A and B get room_settings false); A writes: chat_disabled; C writes
    to A; A writes: ok (id 2); B writes: still chat_disabled."""
    c, a, b = await t.setup("A", "B")
    await t.request(
        c,
        {"type": "set_room", "patient_initiated_chat": False},
        answer=ok(),
        lenient=[c],
        events={a: [room_settings(False)], b: [room_settings(False)]},
        title="C turns patient-initiated chat off",
    )
    await t.request(
        a,
        {"type": "send", "text": t.text()},
        answer=error("chat_disabled"),
        title="A writes before the clinician has",
    )
    await clinician_writes(t, c, a, id=1)
    await patient_writes(t, a, c, id=2, badge=1, title="A writes after the clinician has written")
    await t.request(
        b,
        {"type": "send", "text": t.text()},
        answer=error("chat_disabled"),
        title="B, not written to, still cannot write",
    )


@case("R31.in-call-may-write", "A patient in a call may always write", checks=("R20", "R30", "R3", "R10"))
async def in_call_may_write(t: CaseContext) -> None:
    """C turns patient-initiated chat off and starts a call with A; A writes: ok, and C gets the message."""
    c, a = await t.setup("A")
    await t.request(
        c,
        {"type": "set_room", "patient_initiated_chat": False},
        answer=ok(),
        lenient=[c],
        events={a: [room_settings(False)]},
        title="C turns patient-initiated chat off",
    )
    await t.request(
        c,
        {"type": "start_call", "patient": a.pid},
        answer=ok(),
        events={a: [Unordered(call("started"), provider_status("on_call"))]},
        title="C starts a call with A",
    )
    await patient_writes(t, a, c, id=1, badge=1, title="A, in the call, writes")


@case(
    "R31.changes-pushed",
    "Every change of patient_initiated_chat is pushed to present patients; the "
    "patient's welcome carries the value",
)
async def changes_pushed(t: CaseContext) -> None:
    """C turns patient-initiated chat off, then on: A gets room_settings false, then true; a patient who
    checks in while it is off gets patient_initiated_chat false in the welcome."""
    c, a = await t.setup("A")
    room = c.welcome.get("room", "")
    await t.request(
        c,
        {"type": "set_room", "patient_initiated_chat": False},
        answer=ok(),
        lenient=[c],
        events={a: [room_settings(False)]},
        title="C turns patient-initiated chat off",
    )
    b = await t.connect("B")
    await t.request(
        b,
        {"type": "hello", "role": "patient", "room": room, "name": t.name("B")},
        ref=False,
        answer={"type": "welcome", "patient_initiated_chat": False},
        events={c: [{"type": "patient_joined"}]},
        title="B checks in while it is off",
    )
    await t.request(
        c,
        {"type": "set_room", "patient_initiated_chat": True},
        answer=ok(),
        lenient=[c],
        events={a: [room_settings(True)], b: [room_settings(True)]},
        title="C turns patient-initiated chat on",
    )
