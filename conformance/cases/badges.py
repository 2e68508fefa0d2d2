"""Badges and notifications (R3, R10): unread counts, open_chat resets, notify on and off."""

from __future__ import annotations

from .._context import CaseContext
from .._expect import box_view, clinician_welcome, ok, provider_status, queue_entry, send_ok, stored
from .._registry import group
from ._steps import leave, open_chat, patient_writes, replaced_console

case = group("badges")


@case(
    "R3.badge-counts-up",
    "Each patient message not shown adds one to the badge, pushed as unread",
    checks=("R10",),
)
async def badge_counts_up(t: CaseContext) -> None:
    """With the box closed, A writes three times: unread 1, 2, 3 (each after the message, before notify)."""
    c, a = await t.setup("A")
    for n in (1, 2, 3):
        await patient_writes(t, a, c, id=n, badge=n, title=f"A writes message {n} (box closed)")


@case(
    "R3.open-chat-resets-badge",
    "open_chat sets the badge to 0 and pushes unread 0; messages then shown add nothing",
    checks=("R4", "R10"),
)
async def open_chat_resets(t: CaseContext) -> None:
    """A writes twice (badge 2); C opens A's chat: chat_box, unread{A, 0}; A writes again: only the
    message."""
    c, a = await t.setup("A")
    first = await patient_writes(t, a, c, id=1, badge=1)
    second = await patient_writes(t, a, c, id=2, badge=2)
    await open_chat(
        t, c, a, badge=2, messages=[stored(a, 1, "patient", first), stored(a, 2, "patient", second)]
    )
    await patient_writes(t, a, c, id=3, shown=True, title="A writes while C has A's chat open")


@case(
    "R3.open-chat-zero-badge-no-unread",
    "open_chat on a patient whose badge is 0 pushes no unread",
    checks=("R4",),
)
async def zero_badge_no_push(t: CaseContext) -> None:
    """C opens the chat of A, who has not written: chat_box only, no unread."""
    c, a = await t.setup("A")
    await open_chat(t, c, a, badge=0)


@case(
    "R3.departure-removes-badge",
    "A departed patient's badge is removed with no unread push",
    checks=("R9", "R11", "R10"),
)
async def departure_removes_badge(t: CaseContext) -> None:
    """A writes (badge 1) and leaves: C gets patient_left and erased, no unread."""
    c, a = await t.setup("A")
    await patient_writes(t, a, c, id=1, badge=1)
    await leave(t, a, c)


@case(
    "R3.nothing-shown-while-away",
    "While no clinician is connected nothing is shown: messages count in the badge and open_chat reads them",
    checks=("R12", "R4", "R30"),
)
async def nothing_shown_while_away(t: CaseContext) -> None:
    """A checks in with no clinician and writes (ok, id 1); C connects: the welcome's queue shows A with
    unread 1 and A gets provider_status online; C opens A's chat: unread 0 and the message."""
    room = t.room()
    a = await t.patient(room, "A")
    text = t.text()
    await t.request(
        a, {"type": "send", "text": text}, answer=send_ok(1), title="A writes while no clinician is connected"
    )
    c = await t.clinician(
        room,
        answer=clinician_welcome(queue=[queue_entry(a, unread=1)]),
        events={a: [provider_status("online")]},
    )
    await open_chat(t, c, a, badge=1, messages=[stored(a, 1, "patient", text)])


@case(
    "R10.notifications-off",
    "While notifications are off no notify is pushed; on again, it is",
    checks=("R3",),
)
async def notifications_off(t: CaseContext) -> None:
    """C turns notifications off; A writes: message and unread, no notify. C turns them on; A writes:
    message, unread, notify."""
    c, a = await t.setup("A")
    await t.request(
        c,
        {"type": "set_notifications", "chat": False},
        answer=ok(),
        lenient=[c],
        title="C turns chat notifications off",
    )
    await patient_writes(t, a, c, id=1, badge=1, notify_on=False, title="A writes, notifications off")
    await t.request(
        c,
        {"type": "set_notifications", "chat": True},
        answer=ok(),
        lenient=[c],
        title="C turns chat notifications on",
    )
    await patient_writes(t, a, c, id=2, badge=2, title="A writes, notifications on")


@case("R10.setting-survives-refresh", "The notification setting survives a refresh", checks=("R12", "R3"))
async def setting_survives_refresh(t: CaseContext) -> None:
    """C turns notifications off; a new clinician connection replaces C: its welcome says
    chat_notifications false; A writes: message and unread, no notify."""
    c, a = await t.setup("A")
    room = c.welcome.get("room", "")
    await t.request(
        c,
        {"type": "set_notifications", "chat": False},
        answer=ok(),
        lenient=[c],
        title="C turns chat notifications off",
    )
    c2 = await t.clinician(
        room,
        "C2",
        answer=clinician_welcome(
            settings={"chat_notifications": False}, chat_box=box_view("closed", None, False)
        ),
        events={c: replaced_console()},
        lenient=[c, a],
    )
    await patient_writes(t, a, c2, id=1, badge=1, notify_on=False, title="A writes after the refresh")
