"""Follow-ups to issue 12's checker: no false violation where the client's view of time cannot order two
events (a slow answer decided before a refresh the client saw first; a drop the server acted on before the
client saw it close), a server that ignores the rate limit is caught, an empty text is `invalid`.

Histories are built record by record with test_checker_verdicts' Script.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

from test_checker_verdicts import Script

from simulator import Checker, parse_scenario, run_in_process
from tests.support.scenarios import slow_readers


def rules(checker: Checker) -> Counter[str]:
    return Counter(v.rule for v in checker.violations)


def test_an_answer_decided_before_a_refresh_the_client_saw_first_is_not_judged_by_it() -> None:
    """open_chat sent on the old tab; the new tab's welcome arrives; only then the old tab's (slow) answer,
    with the conversation. The server may well have handled open_chat before the new tab's hello: no R12 or
    R13."""
    script = Script()
    script.clinician(queue=[{"patient": "A", "name": 3, "state": "waiting", "unread": 0, "joined_at": 0}])
    script.at(10.0).got("c01", 1, {"type": "message", "patient": "A", "id": 1, "from": "patient", "text": 5,
                                   "ts": 1, "client_ts": 1})
    script.got("c01", 1, {"type": "unread", "patient": "A", "count": 1})
    script.got("c01", 1, {"type": "notify", "patient": "A", "id": 1})
    script.at(20.0).out("c01", 1, {"type": "open_chat", "patient": "A", "ref": "2"})
    script.at(30.0).connect("c01", 2, "clinician")
    script.out("c01", 2, {"type": "hello", "role": "clinician", "room": "r", "token": 64})
    script.at(40.0).got("c01", 2, {"type": "welcome", "room": "r",
                                   "queue": [{"patient": "A", "name": 3, "state": "waiting", "unread": 0,
                                              "joined_at": 0}],
                                   "chat_box": {"state": "closed", "patient": None, "patient_present": False},
                                   "call": None, "settings": {"chat_notifications": True},
                                   "room_settings": {"patient_initiated_chat": True},
                                   "provider_status": "online", "limits": None})
    script.at(50.0).got("c01", 1, {"type": "chat_box", "state": "open", "patient": "A",
                                   "patient_present": True, "reason": "open_chat"})
    script.got("c01", 1, {"type": "unread", "patient": "A", "count": 0})
    script.got("c01", 1, {"type": "ok", "ref": "2", "truncated": False,
                                 "messages": {"count": 1, "ids": [[1, 1]], "patients": ["A"]}})
    script.at(60.0).got("c01", 1, {"type": "erased", "patient": "A", "reason": "refresh"})
    script.got("c01", 1, {"type": "chat_box", "state": "closed", "patient": None, "patient_present": False,
                          "reason": "erased"})
    script.close("c01", 1, 4000)
    assert rules(script.check()) == Counter()


def test_an_open_chat_sent_after_the_new_tabs_welcome_is_judged_by_the_refresh() -> None:
    """The same, but open_chat on the new tab after its welcome returns the old conversation: R12."""
    script = Script()
    script.clinician(queue=[{"patient": "A", "name": 3, "state": "waiting", "unread": 0, "joined_at": 0}])
    script.at(10.0).got("c01", 1, {"type": "message", "patient": "A", "id": 1, "from": "patient", "text": 5,
                                   "ts": 1, "client_ts": 1})
    script.got("c01", 1, {"type": "unread", "patient": "A", "count": 1})
    script.got("c01", 1, {"type": "notify", "patient": "A", "id": 1})
    script.at(30.0).connect("c01", 2, "clinician")
    script.out("c01", 2, {"type": "hello", "role": "clinician", "room": "r", "token": 64})
    script.at(35.0).close("c01", 1, 4000)
    script.at(40.0).got("c01", 2, {"type": "welcome", "room": "r",
                                   "queue": [{"patient": "A", "name": 3, "state": "waiting", "unread": 0,
                                              "joined_at": 0}],
                                   "chat_box": {"state": "closed", "patient": None, "patient_present": False},
                                   "call": None, "settings": {"chat_notifications": True},
                                   "room_settings": {"patient_initiated_chat": True},
                                   "provider_status": "online", "limits": None})
    script.at(50.0).out("c01", 2, {"type": "open_chat", "patient": "A", "ref": "2"})
    script.at(60.0).got("c01", 2, {"type": "chat_box", "state": "open", "patient": "A",
                                   "patient_present": True, "reason": "open_chat"})
    script.got("c01", 2, {"type": "unread", "patient": "A", "count": 0})
    script.got("c01", 2, {"type": "ok", "ref": "2", "truncated": False,
                                 "messages": {"count": 1, "ids": [[1, 1]], "patients": ["A"]}})
    assert rules(script.check())["R12"] == 1


SLOW_READERS = slow_readers("5m")


def test_very_slow_readers_dropped_by_the_reference_server_give_no_violation(tmp_path: Path) -> None:
    """Every connection reads 5 s late and the server drops it past 8 queued frames (R42): the server
    erases (R12) and shows the clinician away (R30) at the drop, long before the client reads the close.
    The checker must not count the refresh, or the clinician's presence, from the close it read."""
    scenario = parse_scenario(tomllib.loads(SLOW_READERS), "slow_readers")
    result = run_in_process(scenario, tmp_path / "slow.jsonl")
    assert result.outcome == "complete"
    assert result.summary.server_closes, "the server dropped no slow reader: the test tests nothing"
    assert result.violations == [], [(v.rule, v.message) for v in result.violations[:5]]


def _empty_text(answer: dict[str, object]) -> Checker:
    script = Script()
    script.clinician(queue=[{"patient": "A", "name": 3, "state": "waiting", "unread": 0, "joined_at": 0}])
    script.at(10.0).out("c01", 1, {"type": "send", "patient": "A", "text": 0, "client_ts": 1, "ref": "2"})
    script.at(11.0).got("c01", 1, {**answer, "ref": "2"})
    return script.check()


def test_an_empty_text_answered_invalid_is_right() -> None:
    """The contract (R40): an empty `text` is `invalid`. Not an R1 violation, and R40 is exercised."""
    checker = _empty_text({"type": "error", "code": "invalid", "field": "text", "message": "empty"})
    assert rules(checker) == Counter()
    assert checker.summary.as_dict()["exercised"]["R40"] >= 1


def test_an_empty_text_accepted_is_r40() -> None:
    checker = _empty_text({"type": "ok", "id": 1, "ts": 1})
    assert rules(checker)["R40"] == 1


def test_the_clinicians_send_one_empty_text_and_the_reference_server_refuses_it(tmp_path: Path) -> None:
    from simulator import load_scenario

    result = run_in_process(load_scenario("refresh_storm").with_duration(120.0), tmp_path / "q.jsonl")
    assert result.violations == []
    history = (tmp_path / "q.jsonl").read_text(encoding="utf-8")
    assert '"text":0,' in history and '"code":"invalid"' in history
