"""Frame order (contract, Transport, "Order"): one case per pair of frames a client can make a server send.

The contract: the frames that one cause produces for one connection are sent
in the order ``patient_left``, ``erased``, ``message``, ``chat_box``,
``unread``, ``notify`` and, when the cause is a request on that connection,
before the request's ``ok``. Every case here provokes one cause that makes the
clinician's connection receive two or more of these frames and checks them in
exactly that order. Together they cover each adjacent pair a client can
provoke: patient_left → erased, patient_left → chat_box, erased → chat_box,
message → chat_box, message → unread, chat_box → chat_box (R11 b),
chat_box → unread, unread → notify, and each of them before the ``ok``.
(No cause makes a server send ``erased`` and ``message``, or ``patient_left``
and ``message``, to one connection, so those pairs cannot be provoked.)

Other cases check the same frames as part of their rule; these name the
order, so a server that sends the right frames in the wrong order fails a
case called ``order.*`` and the report says which pair was swapped.
"""

from __future__ import annotations

from .._context import CaseContext
from .._expect import (
    call,
    chat_box,
    erased,
    message,
    notify,
    ok,
    patient_left,
    provider_status,
    send_ok,
    stored,
    unread,
)
from .._patterns import Unordered, close
from .._registry import group
from ._steps import (
    end_call_not_in_view,
    leave,
    minimize,
    open_chat,
    patient_writes,
    start_call_erasing_shown_departed,
    start_call_while_b_waits,
)

case = group("order")


@case(
    "order.message-chat-box-unread-notify",
    "A patient message to a box minimized on another patient: message, chat_box (auto_open), unread, notify",
    checks=("R6", "R8", "R3", "R10"),
)
async def message_chat_box_unread_notify(t: CaseContext) -> None:
    """C opens A's chat and minimizes it; B writes: C gets message{B}, chat_box{open, A, auto_open},
    unread{B, 1}, notify{B, 1}, in that order."""
    c, a, b = await t.setup("A", "B")
    await open_chat(t, c, a)
    await minimize(t, c, a)
    text = t.text()
    await t.request(
        b,
        {"type": "send", "text": text},
        answer=send_ok(1),
        events={
            c: [
                message(b, 1, "patient", text),
                chat_box("open", a, True, "auto_open"),
                unread(b, 1),
                notify(b, 1),
            ]
        },
        title="B writes to the box minimized on A",
    )


@case(
    "order.message-chat-box",
    "A patient message to the box minimized on that patient: message, then chat_box (auto_open)",
    checks=("R6",),
)
async def message_chat_box(t: CaseContext) -> None:
    """C opens A's chat and minimizes it; A writes: C gets message{A} then chat_box{open, A, auto_open}
    (the message is shown: no unread, no notify)."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await minimize(t, c, a)
    await patient_writes(t, a, c, id=1, shown=True, auto_open=a, title="A writes to the box minimized on A")


@case(
    "order.message-unread-notify",
    "A patient message to a closed box: message, unread, notify",
    checks=("R7", "R3", "R10"),
)
async def message_unread_notify(t: CaseContext) -> None:
    """The box is closed; A writes twice: each time C gets message{A}, unread{A, n}, notify{A, id}, in that
    order."""
    c, a = await t.setup("A")
    await patient_writes(t, a, c, id=1, badge=1, title="A writes to the closed box")
    await patient_writes(t, a, c, id=2, badge=2, title="A writes again")


@case(
    "order.chat-box-unread-before-ok",
    "open_chat on a patient with unread messages: chat_box, unread 0, then the ok",
    checks=("R4", "R3", "R10"),
)
async def chat_box_unread_before_ok(t: CaseContext) -> None:
    """A writes (badge 1); C opens A's chat: C gets chat_box{open, A, open_chat}, unread{A, 0}, then the
    ok with the message."""
    c, a = await t.setup("A")
    text = await patient_writes(t, a, c, id=1, badge=1)
    await open_chat(t, c, a, badge=1, messages=[stored(a, 1, "patient", text)])


@case(
    "order.patient-left-chat-box",
    "A patient leaves while the box shows them: patient_left, then chat_box (patient_left)",
    checks=("R9", "R4"),
)
async def patient_left_chat_box(t: CaseContext) -> None:
    """C opens A's chat; A leaves: C gets patient_left{A, left} then chat_box{open, A, present false,
    patient_left}."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await leave(t, a, c, box=("open", False), title="A leaves while the box shows A")


@case(
    "order.patient-left-erased",
    "A patient leaves while the box does not show them: patient_left, then erased (not_in_view)",
    checks=("R9", "R11"),
)
async def patient_left_erased(t: CaseContext) -> None:
    """The box is closed; A leaves: C gets patient_left{A, left} then erased{A, not_in_view}."""
    c, a = await t.setup("A")
    await leave(t, a, c, title="A leaves while the box is closed")


@case(
    "order.erased-chat-box-before-ok",
    "close_chat on a departed patient the box shows: erased, chat_box (close_chat), then the ok",
    checks=("R11a", "R9", "R5", "R4"),
)
async def erased_chat_box_before_ok(t: CaseContext) -> None:
    """C opens A's chat; A leaves; C closes the box: C gets erased{A, chat_closed}, chat_box{closed, null,
    close_chat}, then ok."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await leave(t, a, c, box=("open", False))
    await t.request(
        c,
        {"type": "close_chat"},
        answer=ok(),
        events={c: [erased(a, "chat_closed"), chat_box("closed", None, False, "close_chat")]},
        title="C closes the box on departed A",
    )


@case(
    "order.erased-chat-box-chat-box-unread-before-ok",
    "open_chat on another patient while the box shows a departed one: erased, chat_box (erased), "
    "chat_box (open_chat), unread 0, then the ok",
    checks=("R11b", "R9", "R4", "R3", "R10"),
)
async def erased_two_chat_boxes_unread_before_ok(t: CaseContext) -> None:
    """A writes (badge 1); C opens B's chat; B leaves; C opens A's chat: C gets erased{B, viewed_other},
    chat_box{closed, null, erased}, chat_box{open, A, open_chat}, unread{A, 0}, then the ok."""
    c, a, b = await t.setup("A", "B")
    text = await patient_writes(t, a, c, id=1, badge=1)
    await open_chat(t, c, b)
    await leave(t, b, c, box=("open", False))
    await open_chat(
        t,
        c,
        a,
        badge=1,
        messages=[stored(a, 1, "patient", text)],
        before=[erased(b, "viewed_other"), chat_box("closed", None, False, "erased")],
        title="C opens A's chat while the box shows departed B",
    )


@case(
    "order.erased-chat-box-on-start-call",
    "start_call while the box shows a departed patient: erased (call_started), chat_box (erased), "
    "then the ok",
    checks=("R11c", "R9", "R20", "R30", "R4"),
)
async def erased_chat_box_on_start_call(t: CaseContext) -> None:
    """C opens B's chat; B leaves; C starts a call with A: C gets erased{B, call_started}, chat_box{closed,
    null, erased}, then ok; A gets call started and provider_status on_call (in either order)."""
    c, a, b = await t.setup("A", "B")
    await open_chat(t, c, b)
    await leave(t, b, c, box=("open", False))
    await start_call_erasing_shown_departed(t, c, a, b)


@case(
    "order.patient-left-erased-before-ok",
    "end_call while the box does not show the patient: patient_left (call_ended), erased, then the ok",
    checks=("R20", "R9", "R11", "R30"),
)
async def patient_left_erased_before_ok(t: CaseContext) -> None:
    """C starts a call with A (B waits); C ends it: C gets patient_left{A, call_ended}, erased{A,
    not_in_view}, then ok; A gets call ended and a 1000 close; B gets provider_status online."""
    c, a, b = await t.setup("A", "B")
    await start_call_while_b_waits(t, c, a, b)
    await end_call_not_in_view(t, c, a, b, title="C ends the call; the box is closed")


@case(
    "order.patient-left-chat-box-before-ok",
    "end_call while the box shows the patient: patient_left (call_ended), chat_box (patient_left), "
    "then the ok",
    checks=("R20", "R9", "R4", "R30"),
)
async def patient_left_chat_box_before_ok(t: CaseContext) -> None:
    """C opens A's chat and starts a call with A; C ends it: C gets patient_left{A, call_ended},
    chat_box{open, A, present false, patient_left}, then ok; A gets call ended and a 1000 close."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await t.request(
        c,
        {"type": "start_call", "patient": a.pid},
        answer=ok(),
        events={a: [Unordered(call("started"), provider_status("on_call"))]},
        title="C starts a call with A",
    )
    await t.request(
        c,
        {"type": "end_call"},
        answer=ok(),
        events={
            c: [patient_left(a, "call_ended"), chat_box("open", a, False, "patient_left")],
            a: [call("ended"), close(1000)],
        },
        title="C ends the call; the box shows A",
    )

