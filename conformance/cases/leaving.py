"""Leaving (R9 and the patient lifecycle): leave and disconnect, patient_gone, the box says so."""

from __future__ import annotations

from .._context import CaseContext
from .._expect import chat_box, erased, error, patient_left
from .._registry import group
from ._steps import close_box, leave, minimize, open_chat

case = group("leaving")


@case(
    "lifecycle.leave",
    "leave is answered ok, then the server closes with 1000; the clinician hears patient_left{left}",
    checks=("R11",),
)
async def leave_case(t: CaseContext) -> None:
    """A leaves: A gets ok and a 1000 close; C gets patient_left{A, left} then erased{A, not_in_view}."""
    c, a = await t.setup("A")
    await leave(t, a, c)


@case(
    "lifecycle.disconnect",
    "A patient closing the connection departs: patient_left{disconnected}",
    checks=("R11",),
)
async def disconnect_case(t: CaseContext) -> None:
    """A closes its connection: C gets patient_left{A, disconnected} then erased{A, not_in_view}."""
    c, a = await t.setup("A")
    await t.close(
        a, "A closes its connection", {c: [patient_left(a, "disconnected"), erased(a, "not_in_view")]}
    )


@case("R9.send-to-departed-patient-gone", "send to a departed patient answers patient_gone", checks=("R11",))
async def send_to_departed(t: CaseContext) -> None:
    """A leaves (box closed, so the conversation is erased); C writes to A: error{patient_gone}."""
    c, a = await t.setup("A")
    await leave(t, a, c)
    await t.request(
        c,
        {"type": "send", "patient": a.pid, "text": t.text()},
        answer=error("patient_gone"),
        title="C writes to A, who has left",
    )


@case(
    "R9.box-says-patient-left",
    "When the open box shows a patient who departs it says so "
    "(patient_present false, reason patient_left); send still answers patient_gone",
    checks=("R11", "R4"),
)
async def box_says_left(t: CaseContext) -> None:
    """C opens A's chat; A leaves: patient_left{A, left}, chat_box{open, A, false, patient_left}, no erased;
    C writes to A: patient_gone."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await leave(t, a, c, box=("open", False))
    await t.request(
        c,
        {"type": "send", "patient": a.pid, "text": t.text()},
        answer=error("patient_gone"),
        title="C writes to A, who has left but is still shown",
    )


@case(
    "R9.minimized-box-says-patient-left",
    "A minimized box on a patient who disconnects says so and stays minimized",
    checks=("R11", "R5"),
)
async def minimized_box_says_left(t: CaseContext) -> None:
    """C opens A's chat and minimizes it; A disconnects: patient_left{A, disconnected},
    chat_box{minimized, A, false, patient_left}."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await minimize(t, c, a)
    await t.close(
        a,
        "A closes its connection while the box is minimized on A",
        {c: [patient_left(a, "disconnected"), chat_box("minimized", a, False, "patient_left")]},
    )


@case(
    "R9.gone-after-erasure",
    "send to a departed patient answers patient_gone also after the conversation is erased",
    checks=("R11",),
)
async def gone_after_erasure(t: CaseContext) -> None:
    """C opens A's chat; A leaves; C closes the box (erased{chat_closed}); C writes to A: patient_gone."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await leave(t, a, c, box=("open", False))
    await close_box(t, c, before=[erased(a, "chat_closed")])
    await t.request(
        c,
        {"type": "send", "patient": a.pid, "text": t.text()},
        answer=error("patient_gone"),
        title="C writes to A after A's conversation was erased",
    )
