"""Calls and provider status (R20, R30): start and end a call, one at a time, status and positions."""

from __future__ import annotations

from .._context import CaseContext
from .._expect import (
    call,
    clinician_welcome,
    error,
    ok,
    patient_welcome,
    position,
    provider_status,
)
from .._patterns import Unordered
from .._registry import group
from ._steps import end_call_not_in_view, leave, open_chat, patient_writes, start_call_while_b_waits

case = group("calls")


@case(
    "R20.start-call",
    "start_call moves a waiting patient into the call: call{started} and provider status "
    "on_call to patients; the box stays where it is",
    checks=("R30", "R4"),
)
async def start_call(t: CaseContext) -> None:
    """C opens B's chat and starts a call with A: C gets only the ok; A gets call started and provider_status
    on_call; B gets provider_status on_call and position 1."""
    c, a, b = await t.setup("A", "B")
    await open_chat(t, c, b)
    await start_call_while_b_waits(t, c, a, b)


@case(
    "R20.one-call-at-a-time",
    "A second start_call while a call is in progress answers call_in_progress",
    checks=("R30",),
)
async def one_call(t: CaseContext) -> None:
    """C starts a call with A, then tries one with B: error{call_in_progress}, and nobody gets anything."""
    c, a, b = await t.setup("A", "B")
    await start_call_while_b_waits(t, c, a, b)
    await t.request(
        c,
        {"type": "start_call", "patient": b.pid},
        answer=error("call_in_progress"),
        title="C starts a call with B during A's call",
    )


@case(
    "R20.end-call",
    "end_call departs the patient in the call: call{ended} then close 1000; "
    "patient_left{call_ended}; provider status online again",
    checks=("R30", "R11"),
)
async def end_call(t: CaseContext) -> None:
    """C starts a call with A, then ends it: A gets call ended and a 1000 close; C gets patient_left{A,
    call_ended}, erased{A, not_in_view}, ok; B gets provider_status online."""
    c, a, b = await t.setup("A", "B")
    await start_call_while_b_waits(t, c, a, b)
    await end_call_not_in_view(t, c, a, b, title="C ends the call")


@case("R20.end-call-without-call", "end_call with no call in progress answers not_in_call")
async def end_call_without_call(t: CaseContext) -> None:
    """C, with A waiting, ends a call that does not exist: error{not_in_call}."""
    c, _a = await t.setup("A")
    await t.request(
        c, {"type": "end_call"}, answer=error("not_in_call"), title="C ends a call with none in progress"
    )


@case(
    "R20.call-keeps-conversation",
    "A call leaves the patient's conversation, badge and ids as they were",
    checks=("R3", "R10", "R30"),
)
async def call_keeps_conversation(t: CaseContext) -> None:
    """A writes (badge 1); C starts a call with A (no unread, no chat_box); A writes: message id 2,
    unread 2."""
    c, a = await t.setup("A")
    await patient_writes(t, a, c, id=1, badge=1)
    await t.request(
        c,
        {"type": "start_call", "patient": a.pid},
        answer=ok(),
        events={a: [Unordered(call("started"), provider_status("on_call"))]},
        title="C starts a call with A",
    )
    await patient_writes(t, a, c, id=2, badge=2, title="A writes during the call")


@case(
    "R30.away-online-away",
    "Provider status is away with no clinician, online when one connects, away "
    "when the clinician's connection ends",
)
async def away_online_away(t: CaseContext) -> None:
    """A checks in with no clinician: welcome provider_status away; C connects: A gets online; C closes its
    connection: A gets away."""
    room = t.room()
    a = await t.patient(
        room, "A", answer=patient_welcome(position=1, provider_status="away", patient_initiated_chat=True)
    )
    c = await t.clinician(
        room, answer=clinician_welcome(provider_status="online"), events={a: [provider_status("online")]}
    )
    await t.close(c, "C closes its connection", {a: [provider_status("away")]})


@case(
    "R30.positions-move-up",
    "Each waiting patient's place is in their welcome and pushed when it changes",
    checks=("R11",),
)
async def positions_move_up(t: CaseContext) -> None:
    """A, B and D check in (positions 1, 2, 3); A leaves: B gets position 1, D position 2."""
    room = t.room()
    c = await t.clinician(room)
    a = await t.patient(room, "A", clinician=c, answer=patient_welcome(position=1, provider_status="online"))
    b = await t.patient(room, "B", clinician=c, answer=patient_welcome(position=2, provider_status="online"))
    d = await t.patient(room, "D", clinician=c, answer=patient_welcome(position=3, provider_status="online"))
    await leave(t, a, c, others={b: [position(1)], d: [position(2)]})


@case(
    "R30.on-call-again-on-return",
    "While the clinician is away during a call patients see away; on return, on_call",
    checks=("R20", "R12"),
)
async def on_call_on_return(t: CaseContext) -> None:
    """C starts a call with A and closes its connection: A and B get away; C2 says hello (welcome: on_call,
    call A): A and B get on_call."""
    c, a, b = await t.setup("A", "B")
    room = c.welcome.get("room", "")
    await start_call_while_b_waits(t, c, a, b)
    await t.close(
        c,
        "C closes its connection during the call",
        {a: [provider_status("away")], b: [provider_status("away")]},
    )
    await t.clinician(
        room,
        "C2",
        answer=clinician_welcome(provider_status="on_call", call={"patient": a.pid}),
        events={a: [provider_status("on_call")], b: [provider_status("on_call")]},
    )
