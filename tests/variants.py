"""Deliberately wrong domain models, to show that the wire tests catch each broken rule.

Each variant subclasses :class:`QueueChatModel` and overrides as little as
possible to break one rule of the contract. ``test_variants.py`` runs
``test_rules_wire.py`` against each (the conftest picks the model named by
the ``QUEUECHAT_TEST_VARIANT`` environment variable) and checks that the
failing tests are exactly those named after the rules the variant breaks,
plus a small, justified allowance (``also_fails``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reference_server._domain import Effect, QueueChatModel, Send, _ms, _opt, _Room, _Session
from reference_server._frames import SendOk, Unread

# --------------------------------------------------------------------------- the variants


class BoxFollowsNewestWriter(QueueChatModel):
    """R8: an open or minimized box moves to whichever patient wrote last."""

    def _patient_send(self, session: _Session, request: Any, ref: str | None, now: float,
                      out: list[Effect]) -> None:
        room = session.room
        if room is not None and room.clinician is not None and room.box_state != "closed":
            room.box_patient = session.patient
        super()._patient_send(session, request, ref, now, out)


class ErasureForgetsViewedOther(QueueChatModel):
    """R11b: opening another patient's chat silently drops the departed conversation the box showed
    (no erased{viewed_other}, no chat_box{erased})."""

    def _erase_shown(self, room: _Room, reason: str, out: list[Effect]) -> None:
        if reason == "viewed_other":
            return
        super()._erase_shown(room, reason, out)


class BadgeNeverResets(QueueChatModel):
    """R3: open_chat leaves the unread badge as it was and pushes no unread{count:0}."""

    def _open_chat(self, session: _Session, request: Any, ref: str | None, now: float,
                   out: list[Effect]) -> None:
        assert session.room is not None
        target = session.room.patients.get(request.patient)
        kept = target.unread if target is not None else 0
        start = len(out)
        super()._open_chat(session, request, ref, now, out)
        if target is not None:
            target.unread = kept
        out[start:] = [e for e in out[start:] if not (isinstance(e, Send) and type(e.frame) is Unread)]


class DepartedPatientStillReachable(QueueChatModel):
    """R9: a clinician's send to a departed patient is answered ok (and goes nowhere)."""

    def _clinician_send(self, session: _Session, request: Any, ref: str | None, now: float,
                        out: list[Effect]) -> None:
        room = session.room
        assert room is not None
        if request.patient not in room.patients and request.patient in room.departed:
            out.append(Send(session.conn, SendOk(ref=_opt(ref), id=1, ts=_ms(now))))
            return
        super()._clinician_send(session, request, ref, now, out)


class NotifyWhileOff(QueueChatModel):
    """R10: notify is pushed for unshown messages even with notifications off."""

    def _patient_send(self, session: _Session, request: Any, ref: str | None, now: float,
                      out: list[Effect]) -> None:
        room = session.room
        assert room is not None
        setting = room.chat_notifications
        room.chat_notifications = True
        try:
            super()._patient_send(session, request, ref, now, out)
        finally:
            room.chat_notifications = setting


class NoAutoOpen(QueueChatModel):
    """R6: a minimized box stays minimized when a patient writes (the message counts as unshown)."""

    def _patient_send(self, session: _Session, request: Any, ref: str | None, now: float,
                      out: list[Effect]) -> None:
        room = session.room
        assert room is not None
        minimized = room.box_state == "minimized"
        if minimized:
            room.box_state = "minimized, not opening"  # neither "open" nor "minimized" for the send
        try:
            super()._patient_send(session, request, ref, now, out)
        finally:
            if minimized:
                room.box_state = "minimized"


class _OnlineDuringCalls(_Room):
    __slots__ = ()

    def provider_status(self) -> str:
        return "away" if self.clinician is None else "online"


class CallKeepsProviderOnline(QueueChatModel):
    """R30/R20: a call in progress does not make the provider status on_call."""

    def _room_for_hello(self, slug: str) -> _Room:
        room = super()._room_for_hello(slug)
        room.__class__ = _OnlineDuringCalls
        return room


class RateLimitIgnored(QueueChatModel):
    """R43: no request is ever rate_limited."""

    def connect(self, conn: int, now: float) -> None:
        super().connect(conn, now)
        self._sessions[conn].bucket = None


class TooLargeNotChecked(QueueChatModel):
    """R41: a text longer than max_text_chars is accepted."""

    def _check_text(self, text: str) -> None:
        return None


class RefreshKeepsConversations(QueueChatModel):
    """R12/R11d: a refresh closes the box and clears badges but erases no conversation."""

    def _refresh(self, room: _Room, old_conn: int | None, out: list[Effect]) -> None:
        room.box_state, room.box_patient = "closed", None
        for patient in room.patients.values():
            patient.unread = 0


class NoPositionPush(QueueChatModel):
    """R30: a waiting patient's new place in the queue is never pushed."""

    def _settle_positions(self, room: _Room, out: list[Effect]) -> None:
        return None


class ChatDisabledIgnored(QueueChatModel):
    """R31: patient_initiated_chat false does not stop a waiting patient from writing."""

    def _patient_send(self, session: _Session, request: Any, ref: str | None, now: float,
                      out: list[Effect]) -> None:
        room = session.room
        assert room is not None
        setting = room.patient_initiated_chat
        room.patient_initiated_chat = True
        try:
            super()._patient_send(session, request, ref, now, out)
        finally:
            room.patient_initiated_chat = setting


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Variant:
    """A wrong model, the rules it breaks (test name prefixes) and the other tests allowed to fail."""

    name: str
    model: type[QueueChatModel]
    breaks: tuple[str, ...]
    description: str
    # test function name -> why it fails although it is not named after a broken rule
    also_fails: dict[str, str] = field(default_factory=dict)


# Every failing test must name a rule the variant breaks; ``also_fails`` lists the few that do not,
# each because its scenario necessarily passes through the broken rule.
_ORDER_TEST = "test_transport_frames_of_one_cause_follow_the_contract_order"

_VARIANTS = [
    Variant(
        "box_follows_newest_writer", BoxFollowsNewestWriter, ("R8", "R6"),
        "on a patient message the open/minimized box moves to the writer (R8: the box stays on A; "
        "R6: the auto-open is still on the patient the box showed)",
        also_fails={
            _ORDER_TEST: "its third cause is a minimized box that another patient's message opens",
            "test_R3_message_shown_only_when_box_is_open_on_its_patient":
                "R3's unshown case is a message from B while the box is open on A (R8's situation)",
        },
    ),
    Variant(
        "erasure_forgets_viewed_other", ErasureForgetsViewedOther, ("R11b",),
        "open_chat on another patient drops the departed conversation without erased/chat_box frames",
        also_fails={_ORDER_TEST: "its second cause is an R11b open_chat, whose exact frames it checks"},
    ),
    Variant(
        "badge_never_resets", BadgeNeverResets, ("R3",),
        "open_chat neither resets the unread badge nor pushes unread{count:0}",
        also_fails={
            _ORDER_TEST: "its second cause (open_chat on a patient with a badge) ends with unread{0}",
        },
    ),
    Variant(
        "departed_patient_still_reachable", DepartedPatientStillReachable, ("R9",),
        "a send to a departed patient is answered ok",
    ),
    Variant(
        "notify_while_off", NotifyWhileOff, ("R10",),
        "notify is pushed for unshown messages even while notifications are off",
    ),
    Variant(
        "no_auto_open", NoAutoOpen, ("R6",),
        "a minimized box stays minimized when a patient writes",
        also_fails={
            "test_R8_minimized_box_on_a_opens_on_a_when_b_writes":
                "R8's own clause for a minimized box is R6's auto-open (the box must open, on A)",
            _ORDER_TEST: "its third cause is an auto-open, whose exact frames it checks",
        },
    ),
    Variant(
        "call_keeps_provider_online", CallKeepsProviderOnline, ("R30", "R20"),
        "the provider status stays online during a call (no on_call)",
    ),
    Variant(
        "rate_limit_ignored", RateLimitIgnored, ("R43",),
        "no request is ever rate_limited",
    ),
    Variant(
        "too_large_not_checked", TooLargeNotChecked, ("R41",),
        "a text of more than max_text_chars characters is accepted",
    ),
    Variant(
        "refresh_keeps_conversations", RefreshKeepsConversations, ("R12", "R11d"),
        "a refresh erases nothing (and pushes no erased{refresh})",
    ),
    Variant(
        "no_position_push", NoPositionPush, ("R30",),
        "a waiting patient's new position is never pushed",
    ),
    Variant(
        "chat_disabled_ignored", ChatDisabledIgnored, ("R31",),
        "patient_initiated_chat false does not stop waiting patients from writing",
        also_fails={
            "test_R12_refresh_by_new_hello_closes_old_with_4000_and_keeps_the_room":
                "R12 checks that the room setting is still in force after a refresh by a chat_disabled",
        },
    ),
]

VARIANTS: dict[str, Variant] = {variant.name: variant for variant in _VARIANTS}

