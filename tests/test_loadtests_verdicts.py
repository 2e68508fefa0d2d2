"""Every verdict of a load run, decided from recorded results with no network: pass, fail (an SLO
breach), invalid (users stopped, fewer users than asked for, clearly less sent than planned) and
incomplete (interrupted), each with its exit code and what the summary, its text and the JUnit file say;
and the planned / sent / delivered rates beside them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from formats.hlog import PATIENT_TO_CLINICIAN
from formats.timeline import USERS
from loadtests._hdr import Collector, Recorder
from loadtests._report import (
    EXIT_INVALID,
    EXIT_PASS,
    EXIT_SLO_BREACH,
    MIN_SENT_FRACTION,
    build,
    format_summary,
    message_rates,
    write,
)
from loadtests._slo import parse_expression

START = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def collector(*, planned: int = 100, sent: int = 100, delivered: int = 100, users: int = 2,
              stops: tuple[tuple[str, float], ...] = ()) -> Collector:
    """One generator's results: ``delivered`` samples of 1 ms, the message counters, ``users`` running
    at once, and users that gave up (reason, seconds after the start)."""
    clock = Clock()
    recorder = Recorder(clock=clock)
    recorder.adjust(USERS, users)
    for _ in range(delivered):
        recorder.record(PATIENT_TO_CLINICIAN, 1_000, 900)
    recorder.count("planned", planned)
    recorder.count("sent", sent)
    recorder.count("delivered", delivered)
    for reason, at in stops:
        clock.now = START + at
        recorder.user_stopped(reason)
    clock.now = START + 10
    merged = Collector()
    payload = recorder.drain(final=True)
    payload["cpu"] = {}
    merged.add_final("local", payload)
    return merged


RUN: dict[str, Any] = {"started": START, "duration_s": 10.0, "planned_duration_s": 10.0, "drain_s": 3.0,
                       "host": "ws://127.0.0.1:1/v1/ws", "users": 2, "rate_per_user": 5.0}


def verdict(summary: dict[str, Any]) -> tuple[str, int]:
    return summary["verdict"], summary["exit_code"]


def test_a_valid_complete_run_that_meets_its_slos_passes_with_exit_0() -> None:
    summary, _, _ = build(collector(), run=RUN, thresholds=[], slo_file=None)
    assert verdict(summary) == ("pass", EXIT_PASS)
    assert summary["validity"] == {"valid": True, "complete": True, "problems": [], "warnings": []}
    assert format_summary(summary).endswith("queuechat load: PASS, exit code 0")


def test_a_missed_threshold_fails_with_exit_1() -> None:
    threshold = parse_expression(PATIENT_TO_CLINICIAN, "p(99) < 0.5ms")
    summary, _, _ = build(collector(), run=RUN, thresholds=[threshold], slo_file=None)
    assert verdict(summary) == ("slo_breach", EXIT_SLO_BREACH)
    assert format_summary(summary).endswith("queuechat load: FAIL (SLO breach), exit code 1")


def test_users_that_stopped_make_the_run_invalid_and_the_summary_says_when_and_why() -> None:
    stops = (("cannot connect: connection refused", 5.04), ("cannot connect: connection refused", 6.2))
    summary, _, _ = build(collector(stops=stops), run=RUN, thresholds=[], slo_file=None)
    assert verdict(summary) == ("invalid", EXIT_INVALID)
    assert summary["users_stopped"] == [{"reason": "cannot connect: connection refused", "users": 2,
                                         "first_at_s": 5.04, "last_at_s": 6.2}]
    problem = ("2 of 2 users stopped before the end (between 5.0 s and 6.2 s): cannot connect: connection "
               "refused")
    assert summary["validity"]["problems"] == [problem]
    assert f"  INVALID: {problem}" in format_summary(summary)


@pytest.mark.parametrize(("sent", "valid"), [(90, True), (89, False)])
def test_a_generator_that_sent_clearly_less_than_planned_makes_the_run_invalid(sent: int,
                                                                              valid: bool) -> None:
    """ "Clearly less": under MIN_SENT_FRACTION (90 %) of the messages the schedules had due."""
    assert MIN_SENT_FRACTION == 0.9
    summary, _, _ = build(collector(planned=100, sent=sent, delivered=sent), run=RUN, thresholds=[],
                          slo_file=None)
    assert summary["validity"]["valid"] is valid
    if not valid:
        assert summary["validity"]["problems"] == [
            "the generator sent 89 of the 100 messages its schedule had due (89%, under 90%): the server "
            "did not get the planned load"]


def test_fewer_users_than_asked_for_make_the_run_invalid() -> None:
    summary, _, _ = build(collector(users=1), run=RUN, thresholds=[], slo_file=None)
    assert verdict(summary) == ("invalid", EXIT_INVALID)
    assert summary["validity"]["problems"] == [
        "at most 1 of the 2 users ran at once: the server did not get the planned load"]


def test_an_interrupted_run_is_incomplete_everywhere_with_exit_3(tmp_path: Path) -> None:
    said = "the run was interrupted: its send schedule ran 4.2 s of the planned 10 s"
    summary, results, merged = build(collector(), run=RUN, thresholds=[], slo_file=None, incomplete=said)
    assert verdict(summary) == ("incomplete", EXIT_INVALID)
    assert summary["validity"]["complete"] is False and summary["validity"]["problems"] == [said]
    text = format_summary(summary)
    assert f"  INCOMPLETE: {said}" in text and text.endswith("queuechat load: INCOMPLETE RUN, exit code 3")
    write(tmp_path, collector(), summary, results, merged)
    assert json.loads((tmp_path / "summary.json").read_text())["verdict"] == "incomplete"
    error = ET.parse(tmp_path / "junit.xml").getroot().find(".//testcase[@name='the run is valid']/error")
    assert error is not None and error.get("type") == "IncompleteRun" and error.get("message") == said


def test_the_summary_shows_planned_sent_and_delivered_messages_per_second() -> None:
    rates = message_rates({"planned": 100, "sent": 95, "delivered": 90, "undelivered": 5}, RUN)
    assert rates == {"planned": 100, "sent": 95, "delivered": 90, "undelivered": 5, "no_delivery": 0,
                     "sends_skipped": 0, "window_s": 10.0, "planned_per_s": 10.0, "due_per_s": 10.0,
                     "sent_per_s": 9.5, "delivered_per_s": 9.0}
    summary, _, _ = build(collector(planned=100, sent=95, delivered=90), run=RUN, thresholds=[],
                          slo_file=None)
    assert ("  messages: planned 10.0/s (100 due), sent 9.5/s (95), delivered 9.0/s (90); undelivered after "
            "the 3.0 s drain: 0") in format_summary(summary)


def test_stopped_users_from_every_generator_are_merged_by_reason() -> None:
    merged = Collector()
    for source, at in (("a", 3.0), ("b", 1.0)):
        clock = Clock()
        recorder = Recorder(clock=clock)
        clock.now = START + at
        recorder.user_stopped("unauthorized: is the secret right?")
        merged.add_final(source, recorder.drain(final=True))
    assert merged.stops() == [{"reason": "unauthorized: is the secret right?", "count": 2,
                               "first": START + 1.0, "last": START + 3.0}]
