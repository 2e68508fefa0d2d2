"""The conformance suite against the second server (tests/support/second_server.py).

The second server keeps the contract but takes every freedom it leaves the
other way from the reference server (no ``ref`` on ``welcome``, other id
shapes, extra frames to a replaced clinician, fragmented frames, odd pings,
other close reasons, late answers). Run against it, the suite must report no
failure: a case that fails there depends on a choice the contract leaves
open. With one deliberate break (``--break RULE``), the cases named after
that rule must fail, and every failing case must name the rule (as its own
or one it checks), so that a report points at the right rule.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from conformance import SuiteResult, Verdict, all_cases, run_suite
from tests.support.processes import open_second_server

SECRET = "conformance-second-server-secret"
# Small capacities and short timers so that every case runs in a few seconds. ping_timeout_s leaves
# R42's flood (paced to the default rate limit) room to finish before the heartbeat would drop the client.
OPTIONS: dict[str, Any] = {
    "secret": SECRET,
    "hello_timeout_s": 2,
    "ping_interval_s": 0.3,
    "ping_timeout_s": 4,
    "max_patients_per_room": 6,
    "max_rooms": 40,
    "max_queued_frames": 300,
    "max_queued_bytes": 512 * 1024,
}
# Not pass, and why; nothing else may be anything but pass.
NOT_JUDGED = {
    "R13.nothing-kept": {Verdict.INFORMATIONAL},  # memory, logs and disk are not observable
    "R46.shutdown": {Verdict.SKIPPED},  # destructive
    # Timing cases report "inconclusive" (skipped) when a busy machine slows the server down too much.
    "R42.slow-reader-dropped": {Verdict.PASS, Verdict.SKIPPED},
    "R43.rate-limited": {Verdict.PASS, Verdict.SKIPPED},
}


async def run_against_second_server(*, include: tuple[str, ...] = (), **options: Any) -> SuiteResult:
    async with open_second_server(**{**OPTIONS, **options}) as url:
        return await run_suite(url, SECRET, include=include, grace_s=0.5)


def summary(suite: SuiteResult) -> str:
    lines = [f"{r.verdict.value:<13} {r.case.id}: {r.reason[:300]}" for r in suite.results]
    return "\n".join(line for line in lines if not line.startswith("pass "))


async def test_every_case_passes_against_the_second_server() -> None:
    """Every case passes (R13.nothing-kept informational, R46 skipped, timing cases at worst
    inconclusive): nothing in the suite depends on a choice the contract leaves open, not even
    ``non-strict`` for the freedoms the second server takes."""
    with trio.fail_after(90):
        suite = await run_against_second_server()
    assert suite.has_ping
    assert {r.case.id for r in suite.results} == set(all_cases())
    for result in suite.results:
        allowed = NOT_JUDGED.get(result.case.id, {Verdict.PASS})
        assert result.verdict in allowed, summary(suite)
    assert suite.exit_code == 0


# The cases named after each broken rule that must fail against ``--break RULE``. Other cases may fail
# too, as long as they name the rule (a check they rely on).
MUST_FAIL: dict[str, set[str]] = {
    "R3": {"R3.badge-counts-up", "R3.open-chat-resets-badge", "R3.departure-removes-badge"},
    "R8": {"R8.box-stays-on-open-patient", "R8.minimized-opens-on-same-patient"},
    "R9": {"R9.send-to-departed-patient-gone", "R9.box-says-patient-left", "R9.gone-after-erasure"},
    "R10": {"R10.notifications-off", "R10.setting-survives-refresh"},
    "R11": {"R11a.close-erases"},
    "R12": {"R12.drop-is-refresh"},
    "R13": {"R13.not-found-after-erasure"},
    "R30": {"R30.positions-move-up", "R30.on-call-again-on-return"},
    "R31": {"R31.chat-disabled-until-clinician-writes"},
}


def cases_naming(rule: str) -> tuple[str, ...]:
    """The ids of every case that names ``rule``: only those can fail when the server breaks it alone."""
    return tuple(case.id for case in all_cases().values() if case.names_rule(rule))


@pytest.mark.parametrize("rule", sorted(MUST_FAIL))
async def test_a_broken_rule_fails_the_cases_named_after_it(rule: str) -> None:
    """``--break RULE``: the rule's own cases fail; every other case that names the rule runs too, and
    whatever fails names it."""
    with trio.fail_after(60):
        suite = await run_against_second_server(include=cases_naming(rule), break_rule=rule)
    failing = {r.case.id for r in suite.results if r.verdict is Verdict.FAIL}
    assert MUST_FAIL[rule] <= failing, summary(suite)
    assert suite.exit_code == 1
    for result in suite.results:
        if result.verdict is Verdict.FAIL:
            assert result.failure is not None and result.wire, result.case.id


async def test_frames_in_the_wrong_order_fail_every_order_case() -> None:
    """``--break order`` (each cause's frames sent in reverse): every ``order.*`` case fails, and every
    case that fails says the frames came in the wrong order (the report points at the Order rule, not at
    whichever rule's frames happened to be swapped)."""
    with trio.fail_after(90):
        suite = await run_against_second_server(break_rule="order")
    by_id = suite.by_id()
    order_cases = [case_id for case_id in by_id if case_id.startswith("order.")]
    assert len(order_cases) >= 10
    for case_id in order_cases:
        assert by_id[case_id].verdict is Verdict.FAIL, summary(suite)
    for result in suite.results:
        if result.verdict is Verdict.FAIL:
            assert "frames in the wrong order" in result.reason, summary(suite)
    assert suite.exit_code == 1


async def test_the_slow_reader_case_does_not_depend_on_kernel_send_buffers() -> None:
    """R42 against a server whose sockets keep the kernel's default send buffering (no
    TCP_NOTSENT_LOWAT, so Linux autotuning holds megabytes of unsent frames before the server's own
    queue grows): the case floods long enough to reach the server's queue limit, and passes. It once
    assumed at most 1 MiB in socket buffers and failed such a server ("the connection was not dropped")."""
    with trio.fail_after(90):
        suite = await run_against_second_server(
            # A long heartbeat: on a busy machine flooding megabytes can take a while, and a drop by
            # the heartbeat would make the case inconclusive instead of showing the queue limit.
            include=("R42.slow-reader-dropped",), notsent_lowat="off", ping_interval_s=5, ping_timeout_s=30
        )
    (result,) = suite.results
    assert result.verdict is Verdict.PASS, summary(suite)


async def test_a_slow_server_is_inconclusive_and_a_stalled_one_fails() -> None:
    """A correct server that answers slowly (each ``ok`` held back up to 100 ms) runs a case of a dozen
    steps out of a short budget: skipped as inconclusive, not failed. A server that stops delivering
    messages (answers still flowing) fails: the missing frame is a departure, whatever the timing."""
    with trio.fail_after(60):
        async with open_second_server(**{**OPTIONS, "ok_jitter_ms": 100}) as url:
            slow = await run_suite(url, SECRET, include=("R11b.viewed-other-erases",), case_timeout_s=0.5)
        async with open_second_server(**{**OPTIONS, "stall_after": 0, "stall_for": float("inf")}) as url:
            stalled = await run_suite(url, SECRET, include=("R1.patient-to-clinician",), grace_s=0.3)
    (result,) = slow.results
    assert result.verdict is Verdict.SKIPPED, summary(slow)
    assert result.reason.startswith("inconclusive: the case's time ran out"), result.reason
    assert slow.exit_code == 0
    (result,) = stalled.results
    assert result.verdict is Verdict.FAIL, summary(stalled)
    assert "missing frame" in result.reason and "message" in result.reason, result.reason
    assert stalled.exit_code == 1
