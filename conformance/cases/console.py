"""The clinician's welcome (the console): every field of a new room, and the queue in order."""

from __future__ import annotations

from .._context import CaseContext
from .._expect import LIMITS, box_view, clinician_welcome, patient_welcome, provider_status, queue_entry
from .._registry import group

case = group("console")


@case(
    "console.welcome-new-room",
    "A clinician's welcome in a new room: empty queue, closed box, no call, "
    "notifications and patient-initiated chat on, online, and the limits by name",
)
async def welcome_new_room(t: CaseContext) -> None:
    """C says hello in a fresh room: welcome{room, queue [], chat_box{closed, null, false}, call null,
    settings{chat_notifications true}, room_settings{patient_initiated_chat true}, provider_status online,
    limits{the 11 names}}."""
    room = t.room()
    await t.clinician(
        room,
        answer=clinician_welcome(
            room=room,
            queue=[],
            chat_box=box_view("closed", None, False),
            call=None,
            settings={"chat_notifications": True},
            room_settings={"patient_initiated_chat": True},
            provider_status="online",
            limits=LIMITS,
        ),
    )


@case(
    "console.queue-in-order",
    "The welcome's queue lists present patients in check-in order with name, state, unread and joined_at",
    checks=("R30",),
)
async def queue_in_order(t: CaseContext) -> None:
    """A then B check in while no clinician is connected (welcomes: away, positions 1 and 2); C says hello:
    queue [A, B], each waiting with unread 0, their names and check-in times; A and B get provider_status
    online."""
    room = t.room()
    a = await t.patient(room, "A", answer=patient_welcome(position=1, provider_status="away"))
    b = await t.patient(room, "B", answer=patient_welcome(position=2, provider_status="away"))
    await t.clinician(
        room,
        answer=clinician_welcome(
            room=room,
            queue=[queue_entry(a, name=t.name("A")), queue_entry(b, name=t.name("B"))],
            call=None,
            provider_status="online",
        ),
        events={a: [provider_status("online")], b: [provider_status("online")]},
    )
