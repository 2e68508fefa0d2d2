"""The chat box (R5-R8): minimize and close, auto-open, a closed box stays closed, the box stays put."""

from __future__ import annotations

from .._context import CaseContext
from .._expect import ok, stored
from .._registry import group
from ._steps import close_box, minimize, open_chat, patient_writes

case = group("chat_box")


@case(
    "R5.minimize-and-reopen",
    "minimize_chat turns an open box minimized; minimizing again changes "
    "nothing (ok, no push); open_chat opens it again",
    checks=("R4",),
)
async def minimize_and_reopen(t: CaseContext) -> None:
    """C opens A's chat, minimizes the box (chat_box minimized), minimizes it again (ok only), then opens
    A's chat again (chat_box open)."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await minimize(t, c, a)
    await minimize(t, c, a, pushes=False, title="C minimizes the minimized box again: ok, no push")
    await open_chat(t, c, a, title="C opens A's chat from the minimized box")


@case(
    "R5.close-box",
    "close_chat closes the box (patient null); closing or minimizing a closed box "
    "changes nothing (ok, no push)",
    checks=("R4",),
)
async def close_box_case(t: CaseContext) -> None:
    """On a fresh console C closes the closed box and minimizes it (ok only, twice); then opens A's chat
    and closes the box: chat_box{closed, patient null, patient_present false, reason close_chat}."""
    c, a = await t.setup("A")
    await close_box(t, c, pushes=False, title="C closes the closed box: ok, no push")
    await minimize(t, c, None, pushes=False, title="C minimizes the closed box: ok, no push")
    await open_chat(t, c, a)
    await close_box(t, c)


@case(
    "R5.open-same-patient-no-push",
    "open_chat on the patient already open answers ok with the messages and pushes nothing",
    checks=("R4", "R3", "R10"),
)
async def open_same_patient(t: CaseContext) -> None:
    """A writes (box closed), C opens A's chat (chat_box, unread 0), then opens it again: only the ok,
    still carrying A's message."""
    c, a = await t.setup("A")
    text = await patient_writes(t, a, c, id=1, badge=1)
    await open_chat(t, c, a, messages=[stored(a, 1, "patient", text)], badge=1)
    await open_chat(
        t,
        c,
        a,
        messages=[stored(a, 1, "patient", text)],
        pushes=False,
        title="C opens A's chat again: ok with the messages, no push",
    )


@case(
    "R6.auto-open-minimized",
    "A patient message to a minimized box opens it by itself "
    "(chat_box reason auto_open), on the patient it showed",
    checks=("R3",),
)
async def auto_open(t: CaseContext) -> None:
    """C opens A's chat and minimizes it; A writes: C receives the message, then chat_box{open, A,
    auto_open}; the message is then shown, so no badge."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await minimize(t, c, a)
    await patient_writes(
        t, a, c, id=1, shown=True, auto_open=a, title="A writes while the box is minimized on A"
    )


@case(
    "R6.auto-open-notifications-off",
    "Auto-open does not depend on the notification setting",
    checks=("R8", "R3", "R10"),
)
async def auto_open_notifications_off(t: CaseContext) -> None:
    """C turns notifications off, opens A's chat and minimizes it; B writes: message, chat_box{open, A,
    auto_open}, unread{B, 1}, and no notify."""
    c, a, b = await t.setup("A", "B")
    await t.request(
        c,
        {"type": "set_notifications", "chat": False},
        answer=ok(),
        lenient=[c],
        title="C turns chat notifications off",
    )
    await open_chat(t, c, a)
    await minimize(t, c, a)
    await patient_writes(
        t,
        b,
        c,
        id=1,
        badge=1,
        notify_on=False,
        auto_open=a,
        title="B writes while the box is minimized on A, notifications off",
    )


@case(
    "R7.closed-box-stays-closed",
    "A patient message to a closed box leaves it closed: only the badge changes",
    checks=("R3", "R10", "R4"),
)
async def closed_box_stays_closed(t: CaseContext) -> None:
    """A writes to a never-opened box (message, unread 1, notify; no chat_box); C opens A's chat and closes
    it; A writes again: message, unread 1, notify, and still no chat_box."""
    c, a = await t.setup("A")
    text = await patient_writes(t, a, c, id=1, badge=1, title="A writes while the box is closed")
    await open_chat(t, c, a, messages=[stored(a, 1, "patient", text)], badge=1)
    await close_box(t, c)
    await patient_writes(t, a, c, id=2, badge=1, title="A writes after C closed the box")


@case(
    "R8.box-stays-on-open-patient",
    "Open box on A + B writes: the box stays on A, B's badge goes up",
    checks=("R3", "R10"),
)
async def box_stays_on_a(t: CaseContext) -> None:
    """C opens A's chat; B writes: message, unread{B, 1}, notify (no chat_box); A then writes and the
    message is shown (no badge): the box is still on A."""
    c, a, b = await t.setup("A", "B")
    await open_chat(t, c, a)
    await patient_writes(t, b, c, id=1, badge=1, title="B writes while the box is open on A")
    await patient_writes(t, a, c, id=1, shown=True, title="A writes: the box still shows A")


@case(
    "R8.minimized-opens-on-same-patient",
    "Minimized box on A + B writes: the box opens by itself, still on A; B's badge goes up",
    checks=("R6", "R3", "R10"),
)
async def minimized_stays_on_a(t: CaseContext) -> None:
    """C opens A's chat and minimizes it; B writes: message, chat_box{open, A, auto_open}, unread{B, 1},
    notify{B, 1}; then A writes and is shown."""
    c, a, b = await t.setup("A", "B")
    await open_chat(t, c, a)
    await minimize(t, c, a)
    await patient_writes(
        t, b, c, id=1, badge=1, auto_open=a, title="B writes while the box is minimized on A"
    )
    await patient_writes(t, a, c, id=1, shown=True, title="A writes: the box shows A")


@case("R8.open-chat-switches-patient", "The box changes patient by open_chat", checks=("R4",))
async def open_chat_switches(t: CaseContext) -> None:
    """C opens A's chat, then B's: chat_box{open, B, open_chat}."""
    c, a, b = await t.setup("A", "B")
    await open_chat(t, c, a)
    await open_chat(t, c, b, title="C opens B's chat while A's is open")
