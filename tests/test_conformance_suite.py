"""The conformance suite against the reference server (all pass) and against deliberately wrong servers.

Each wrong server is the reference shell around a model that breaks one rule
(``tests/variants.py``, plus a few more here for the groups it leaves out):
the suite must fail some case of the broken rule, and every case that fails
must name a rule the variant breaks (as its own rule or one it checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from variants import VARIANTS

from conformance import GROUPS, SuiteResult, Verdict, all_cases, base_rule, run_suite
from reference_server._domain import Close, Effect, QueueChatModel, Send, _box_event, _Session
from reference_server._frames import Error, Message, Ok, OpenChatOk, SendOk, Unread
from reference_server.protocol import Limits
from reference_server.server import QueueChatServer

SECRET = "conformance-test-secret"

# Small limits and short timers, so that every case runs (none is skipped for its cost) in a few seconds.
# The reference server also bounds its HTTP handshake by hello_timeout_s: 2 s stays safe on a busy machine.
CONFORMANCE_LIMITS = Limits(
    hello_timeout_s=2.0,
    ping_interval_s=0.2,
    ping_timeout_s=1.0,
    max_patients_per_room=6,
    max_rooms=40,
    max_queued_frames=300,
    max_queued_bytes=512 * 1024,
)
# Not pass, against the reference server, and why: neither can be judged over the wire.
EXPECTED_NOT_PASS = {
    "R13.nothing-kept": Verdict.INFORMATIONAL,  # memory, logs and disk are not observable
    "R46.shutdown": Verdict.SKIPPED,  # destructive
}


async def run_against(nursery: trio.Nursery, model: type[QueueChatModel], **options: Any) -> SuiteResult:
    server = QueueChatServer(
        secret=SECRET, limits=CONFORMANCE_LIMITS, stats_interval_s=None, model_class=model
    )
    url = await nursery.start(
        lambda task_status: server.serve(host="127.0.0.1", port=0, task_status=task_status)
    )
    try:
        return await run_suite(url, SECRET, **options)
    finally:
        await server.shutdown()


def _summary(suite: SuiteResult) -> str:
    return "\n".join(
        f"{r.verdict.value:<13} {r.case.id}: {r.reason}"
        for r in suite.results
        if r.verdict is not Verdict.PASS
    )


async def test_every_case_passes_against_the_reference_server(nursery: trio.Nursery) -> None:
    """Against the reference server every case passes, but R13.nothing-kept (informational) and R46
    (skipped)."""
    with trio.fail_after(60):
        suite = await run_against(nursery, QueueChatModel)
    assert suite.has_ping
    assert suite.limits == CONFORMANCE_LIMITS.as_wire()
    not_pass = {r.case.id: r.verdict for r in suite.results if r.verdict is not Verdict.PASS}
    assert not_pass == EXPECTED_NOT_PASS, _summary(suite)
    assert {r.case.id for r in suite.results} == set(all_cases())
    assert suite.exit_code == 0
    for group in GROUPS:
        assert any(r.case.group == group for r in suite.results), group


# --------------------------------------------------------------------------- more wrong models


class InvalidWithoutField(QueueChatModel):
    """R40: ``invalid`` errors do not say which field."""

    def receive(self, conn: int, raw: str | bytes, now: float) -> list[Effect]:
        effects = super().receive(conn, raw, now)
        return [
            Send(e.conn, Error(code=e.frame.code, message=e.frame.message, ref=e.frame.ref))
            if isinstance(e, Send) and isinstance(e.frame, Error) and e.frame.code == "invalid"
            else e
            for e in effects
        ]


class NoOpBoxRequestsPush(QueueChatModel):
    """R5: minimizing an already minimized box pushes chat_box again instead of nothing."""

    def _minimize_chat(
        self, session: _Session, request: Any, ref: str | None, now: float, out: list[Effect]
    ) -> None:
        room = session.room
        assert room is not None
        if room.box_state == "minimized" and room.clinician is not None:
            out.append(Send(room.clinician, _box_event(room, "minimize_chat")))
        super()._minimize_chat(session, request, ref, now, out)


class CapacityClosesWith1008(QueueChatModel):
    """R44: a hello refused for capacity is closed with 1008 instead of 1013."""

    def receive(self, conn: int, raw: str | bytes, now: float) -> list[Effect]:
        return [
            Close(e.conn, 1008, e.reason) if isinstance(e, Close) and e.code == 1013 else e
            for e in super().receive(conn, raw, now)
        ]


class UnreadBeforeMessage(QueueChatModel):
    """Order: a patient message not shown pushes the clinician's ``unread`` before the ``message``."""

    def receive(self, conn: int, raw: str | bytes, now: float) -> list[Effect]:
        effects = super().receive(conn, raw, now)
        for index, effect in enumerate(effects):
            if isinstance(effect, Send) and isinstance(effect.frame, Unread):
                earlier = next(
                    (
                        i
                        for i in range(index)
                        if isinstance(effects[i], Send)
                        and effects[i].conn == effect.conn
                        and isinstance(effects[i].frame, Message)
                    ),
                    None,
                )
                if earlier is not None:
                    effects.insert(earlier, effects.pop(index))
        return effects


class OkBeforeEvents(QueueChatModel):
    """Order: a request's ``ok`` goes out before the events it causes on the requester's connection."""

    def receive(self, conn: int, raw: str | bytes, now: float) -> list[Effect]:
        effects = super().receive(conn, raw, now)
        own = [i for i, e in enumerate(effects) if isinstance(e, Send) and e.conn == conn]
        answer = next((i for i in own if isinstance(effects[i].frame, Ok | SendOk | OpenChatOk)), None)
        if answer is not None and own[0] != answer:
            effects.insert(own[0], effects.pop(answer))
        return effects


@dataclass(frozen=True)
class Wrong:
    name: str
    model: type[QueueChatModel]
    breaks: tuple[str, ...]


EXTRA_VARIANTS = [
    Wrong("invalid_without_field", InvalidWithoutField, ("R40",)),
    Wrong("no_op_box_requests_push", NoOpBoxRequestsPush, ("R5",)),
    Wrong("capacity_closes_with_1008", CapacityClosesWith1008, ("R44",)),
]
ALL_VARIANTS = [Wrong(v.name, v.model, tuple(v.breaks)) for v in VARIANTS.values()] + EXTRA_VARIANTS


def is_case_of(rule: str, breaks: Sequence[str]) -> bool:
    """A case of a broken rule: its rule is that rule, or a lettered part of it (R11b of R11)."""
    return any(rule == broken or base_rule(rule) == broken for broken in breaks)


def test_the_variants_cover_every_group_of_the_issue() -> None:
    """At least one wrong model per group: chat box, badges, erasure, leaving, calls, bad input and limits."""
    rules = {base_rule(rule) for variant in ALL_VARIANTS for rule in variant.breaks}
    groups = {
        "chat box": {"R5", "R6", "R7", "R8"},
        "badges": {"R3", "R10"},
        "erasure": {"R11", "R12", "R13"},
        "leaving": {"R9"},
        "calls": {"R20", "R30"},
        "bad input": {"R40"},
        "limits": {"R41", "R42", "R43", "R44", "R45", "R46"},
    }
    missing = [group for group, members in groups.items() if not rules & members]
    assert not missing


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=[v.name for v in ALL_VARIANTS])
async def test_the_suite_catches_a_wrong_server(variant: Wrong, nursery: trio.Nursery) -> None:
    """A case of the broken rule fails, and every failing case names a rule the variant breaks."""
    with trio.fail_after(60):
        suite = await run_against(nursery, variant.model, grace_s=0.5)
    failing = [r for r in suite.results if r.verdict is Verdict.FAIL]
    caught = [r.case.id for r in failing if is_case_of(r.case.rule, variant.breaks)]
    assert caught, f"no case of {variant.breaks} failed:\n{_summary(suite)}"
    stray = [
        f"{r.case.id} (rules {', '.join(r.case.rules)}): {r.reason}"
        for r in failing
        if not any(r.case.names_rule(rule) for rule in variant.breaks)
    ]
    assert not stray, "\n".join(stray)
    assert suite.exit_code == 1
    for result in failing:
        assert result.failure is not None and result.wire, result.case.id


async def test_the_order_cases_catch_frames_in_the_wrong_order(nursery: trio.Nursery) -> None:
    """A server that sends ``unread`` before ``message`` fails the ``order.*`` cases whose cause is a
    patient message not shown, and every case that fails says the frames came in the wrong order."""
    with trio.fail_after(60):
        suite = await run_against(nursery, UnreadBeforeMessage, grace_s=0.5)
    by_id = suite.by_id()
    for case_id in (
        "order.message-chat-box-unread-notify",
        "order.message-unread-notify",
        "order.chat-box-unread-before-ok",
        "order.erased-chat-box-chat-box-unread-before-ok",
    ):
        assert by_id[case_id].verdict is Verdict.FAIL, _summary(suite)
    for case_id in ("order.patient-left-erased", "order.patient-left-chat-box", "order.message-chat-box"):
        assert by_id[case_id].verdict is Verdict.PASS, _summary(suite)  # no unread in these causes
    swapped = "frames in the wrong order: frame 1 (unread) came before frame 2 (message)"
    for result in suite.results:
        if result.verdict is Verdict.FAIL:
            assert swapped in result.reason, result.case.id
    assert suite.exit_code == 1


async def test_the_order_cases_catch_an_ok_before_its_events(nursery: trio.Nursery) -> None:
    """A server that answers ``ok`` before the events the request causes on the same connection fails
    every ``order.*-before-ok`` case, saying the ok came first."""
    with trio.fail_after(60):
        suite = await run_against(nursery, OkBeforeEvents, grace_s=0.5)
    by_id = suite.by_id()
    before_ok = [c for c in by_id if c.startswith("order.") and c.endswith("before-ok")]
    assert len(before_ok) == 5
    for case_id in before_ok:
        assert by_id[case_id].verdict is Verdict.FAIL, _summary(suite)
        assert "frames in the wrong order: frame 1 (ok) came before" in by_id[case_id].reason
    for case_id in ("order.patient-left-erased", "order.message-unread-notify"):
        assert by_id[case_id].verdict is Verdict.PASS, _summary(suite)  # not caused by a request of C's
    assert suite.exit_code == 1
