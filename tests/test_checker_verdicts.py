"""The checker is right in both directions (issue 12): no false violations where the contract is silent or a
run is too short to judge, no missed or misnamed ones, no cascade after a first violation, every rule's
exercises counted, and a damaged history is refused with the line and field named.

Small histories here are built record by record (what a client would see), so that each test shows exactly
the frames it is about; the runs are in-process, in virtual time, against the reference server or a
deliberately wrong model (tests/variants.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from variants import VARIANTS

from simulator import (
    Checker,
    HistoryError,
    check_history,
    load_scenario,
    parse_scenario,
    read_history,
    run_in_process,
)
from simulator._checker import CONTRACT_RULES, liveness_bound_ms

ROOT = Path(__file__).resolve().parent.parent
PACE = {"clinician_think_ms": 1000.0, "clinician_typing_ms": 2000.0, "patient_message_interval_ms": 5000.0,
        "patient_reply_delay_ms": 2000.0, "arrivals_per_hour_per_room": 10.0, "rooms": 1}


pytestmark = pytest.mark.usefixtures("quiet_server_logs")


class Script:
    """A history written record by record: a header, then frames and closes of named connections."""

    def __init__(self, *, heal_ms: float = 50_000.0, end_ms: float = 100_000.0,
                 pace: dict[str, Any] | None = None) -> None:
        self.header: dict[str, Any] = {"format": "queuechat-history", "version": 1, "scenario": "script",
                                       "seed": 7, "mode": "virtual", "server": "test", "limits": None,
                                       "rooms": ["r"], "epoch_ms": 0, "duration_ms": end_ms,
                                       "heal_ms": heal_ms, "end_ms": end_ms}
        if pace is not None:
            self.header["pace"] = pace
        self.records: list[dict[str, Any]] = []
        self.t = 0.0

    def at(self, t: float) -> Script:
        self.t = t
        return self

    def connect(self, agent: str, conn: int, role: str) -> None:
        self.records.append({"t": self.t, "agent": agent, "conn": conn, "kind": "connect", "role": role,
                             "room": "r"})

    def out(self, agent: str, conn: int, frame: dict[str, Any]) -> None:
        self.records.append({"t": self.t, "agent": agent, "conn": conn, "kind": "frame", "dir": "out",
                             "size": 10, "frame": frame})

    def got(self, agent: str, conn: int, frame: dict[str, Any]) -> None:
        self.records.append({"t": self.t, "agent": agent, "conn": conn, "kind": "frame", "dir": "in",
                             "size": 10, "frame": frame})

    def close(self, agent: str, conn: int, code: int, by: str = "server") -> None:
        self.records.append({"t": self.t, "agent": agent, "conn": conn, "kind": "close", "code": code,
                             "by": by})

    def action(self, agent: str, conn: int, action: str, **details: Any) -> None:
        self.records.append({"t": self.t, "agent": agent, "conn": conn, "kind": "action", "action": action,
                             **details})

    def check(self) -> Checker:
        checker = Checker(self.header)
        for number, record in enumerate(self.records, start=2):
            checker.feed(number, record)
        checker.feed(len(self.records) + 2, {"t": self.t, "kind": "end", "records": len(self.records)})
        checker.finish()
        return checker

    def write(self, path: Path) -> Path:
        lines = [self.header, *self.records, {"t": self.t, "kind": "end", "records": len(self.records)}]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        return path

    def clinician(self, conn: int = 1, queue: list[dict[str, Any]] | None = None) -> None:
        self.connect("c01", conn, "clinician")
        self.out("c01", conn, {"type": "hello", "role": "clinician", "room": "r", "token": 64})
        self.got("c01", conn, {"type": "welcome", "room": "r", "queue": queue or [],
                               "chat_box": {"state": "closed", "patient": None, "patient_present": False},
                               "call": None, "settings": {"chat_notifications": True},
                               "room_settings": {"patient_initiated_chat": True}, "provider_status": "online",
                               "limits": None})


def rules(checker: Checker) -> Counter[str]:
    return Counter(v.rule for v in checker.violations)


def two_waiting(script: Script) -> None:
    """A console with patients A and B waiting, box open on A."""
    script.clinician(queue=[{"patient": "A", "name": 3, "state": "waiting", "unread": 0, "joined_at": 0},
                            {"patient": "B", "name": 3, "state": "waiting", "unread": 0, "joined_at": 0}])
    script.out("c01", 1, {"type": "open_chat", "patient": "A", "ref": "1"})
    script.got("c01", 1, {"type": "chat_box", "state": "open", "patient": "A", "patient_present": True,
                          "reason": "open_chat"})
    script.got("c01", 1, {"type": "ok", "ref": "1", "messages": {"count": 0, "ids": [], "patients": []},
                          "truncated": False})


def patient_message(script: Script, patient: str, message_id: int) -> None:
    script.got("c01", 1, {"type": "message", "patient": patient, "id": message_id, "from": "patient",
                          "text": 5, "ts": 1, "client_ts": 1})


# ---------------------------------------------------------- item 1: liveness, judged only when it can be


def test_a_short_run_does_not_judge_liveness_and_says_why(tmp_path: Path) -> None:
    """busy_clinic_day for 30 s: a 15 s healing phase is far too short for a 9 s think time; no LIVENESS."""
    scenario = load_scenario("busy_clinic_day").with_duration(30.0)
    result = run_in_process(scenario, tmp_path / "short.jsonl")
    assert "LIVENESS" not in {v.rule for v in result.violations}
    liveness = result.summary.liveness()
    assert liveness["judged"] is False
    assert "healing phase" in liveness["reason"] and "shorter than" in liveness["reason"]
    assert liveness["bound_ms"] > scenario.healing_s * 1000


def test_a_long_enough_healing_phase_judges_liveness(tmp_path: Path) -> None:
    scenario = load_scenario("busy_clinic_day").with_duration(20 * 60.0)
    result = run_in_process(scenario, tmp_path / "long.jsonl")
    assert result.violations == []
    liveness = result.summary.liveness()
    assert liveness["judged"] is True and liveness["reason"] is None
    assert liveness["bound_ms"] <= scenario.healing_s * 1000


def test_the_bound_grows_with_the_queue_and_the_think_time() -> None:
    assert liveness_bound_ms(9000.0, 5) < liveness_bound_ms(9000.0, 10) < liveness_bound_ms(30_000.0, 10)


def test_a_history_without_pace_says_liveness_was_not_judged() -> None:
    script = Script()
    checker = script.check()
    assert checker.summary.liveness() == {"judged": False, "reason": checker.summary.liveness_reason,
                                          "bound_ms": None, "rooms": 0, "rooms_judged": 0}
    assert "pace" in str(checker.summary.liveness_reason)


def test_the_liveness_message_says_in_a_call_since_not_waiting() -> None:
    """A patient in a call since 7.99 s was not "waiting when the healing phase began" at 10 s."""
    script = Script(heal_ms=10_000.0, end_ms=100_000.0, pace=PACE)
    script.clinician()
    script.connect("p01", 1, "patient")
    script.out("p01", 1, {"type": "hello", "role": "patient", "room": "r", "name": 3})
    script.got("p01", 1, {"type": "welcome", "patient": "A", "position": 1, "provider_status": "online",
                          "patient_initiated_chat": True})
    script.got("c01", 1, {"type": "patient_joined", "patient": "A", "name": 3, "position": 1,
                          "joined_at": 0})
    script.at(7990.0)
    script.out("c01", 1, {"type": "start_call", "patient": "A", "ref": "1"})
    script.got("c01", 1, {"type": "ok", "ref": "1"})
    script.got("p01", 1, {"type": "call", "state": "started"})
    script.got("p01", 1, {"type": "provider_status", "status": "on_call"})
    script.at(100_000.0)
    checker = script.check()
    assert rules(checker) == Counter({"LIVENESS": 1})
    message = checker.violations[0].message
    assert "in a call since 7.99 s" in message and "healing phase began at 10.0 s" in message
    assert "waiting" not in message


# ---------------------------------------------------------- item 2: frames where the protocol is silent


def test_frames_to_a_replaced_console_after_its_refresh_are_notes() -> None:
    """chat_box{closed} and unread{0} after erased{refresh}, before the 4000 close: notes, not WIRE."""
    script = Script()
    two_waiting(script)
    script.at(1000.0)
    script.action("c01", 1, "refresh", style="new_tab")
    script.connect("c01", 2, "clinician")
    script.out("c01", 2, {"type": "hello", "role": "clinician", "room": "r", "token": 64})
    script.got("c01", 1, {"type": "erased", "patient": "A", "reason": "refresh"})
    script.got("c01", 1, {"type": "erased", "patient": "B", "reason": "refresh"})
    script.got("c01", 1, {"type": "chat_box", "state": "closed", "patient": None, "patient_present": False,
                          "reason": "erased"})
    script.got("c01", 1, {"type": "unread", "patient": "A", "count": 0})
    script.close("c01", 1, 4000)
    checker = script.check()
    assert checker.violations == []
    assert checker.summary.notes_by_rule == {"R12": 2}
    assert checker.summary.exercised["R12"] >= 2


# ---------------------------------------------------------- item 3: a correct refusal


def test_a_full_room_refusing_a_patient_is_not_a_violation(tmp_path: Path) -> None:
    """max_patients_per_room = 1: every second patient gets capacity and 1013; R44 exercised, no WIRE."""
    toml = """
name = "tiny_room"
seed = 2
duration = "4m"
healing = "2m"
[rooms]
count = 1
[server]
max_patients_per_room = 1
[arrivals]
rate_per_hour = 60
initial_queue = 3
[clinicians]
think_time = { dist = "exponential", mean = "3s", min = "1s" }
"""
    scenario = parse_scenario(tomllib.loads(toml), "tiny_room.toml")
    result = run_in_process(scenario, tmp_path / "tiny.jsonl")
    assert result.violations == [], [(v.rule, v.message) for v in result.violations[:3]]
    summary = result.summary.as_dict()
    assert summary["connections"]["hello_refused"].get("capacity", 0) > 0
    assert summary["exercised"]["R44"] == summary["connections"]["hello_refused"]["capacity"]


def test_a_capacity_refusal_closed_with_the_wrong_code_is_r44() -> None:
    script = Script()
    script.clinician()
    script.connect("p01", 1, "patient")
    script.out("p01", 1, {"type": "hello", "role": "patient", "room": "r", "name": 3})
    script.got("p01", 1, {"type": "error", "code": "capacity", "message": 10})
    script.close("p01", 1, 1008)
    assert rules(script.check()) == Counter({"R44": 1})


def test_a_wrong_secret_is_counted_as_refused_hellos_not_as_violations() -> None:
    """Every clinician hello answered unauthorized: no WIRE, no LIVENESS; the summary says why."""
    script = Script(pace=PACE)
    script.connect("c01", 1, "clinician")
    script.out("c01", 1, {"type": "hello", "role": "clinician", "room": "r", "token": 64})
    script.got("c01", 1, {"type": "error", "code": "unauthorized", "message": 20})
    script.close("c01", 1, 1008)
    script.connect("p01", 1, "patient")
    script.out("p01", 1, {"type": "hello", "role": "patient", "room": "r", "name": 3})
    script.got("p01", 1, {"type": "welcome", "patient": "A", "position": 1, "provider_status": "away",
                          "patient_initiated_chat": True})
    script.at(100_000.0)
    checker = script.check()
    assert checker.violations == []
    connections = checker.summary.as_dict()["connections"]
    assert connections == {"opened": 2, "welcomed": 1, "hello_refused": {"unauthorized": 1}}
    assert checker.summary.liveness()["judged"] is False  # no clinician ever connected to answer


@pytest.mark.parametrize(("answer", "expected"), [
    ({"type": "error", "code": "too_large", "message": 10}, Counter()),
    ({"type": "ok", "id": 1, "ts": 1}, Counter({"R41": 1})),
])
def test_an_over_long_text_must_be_refused_as_too_large(answer: dict[str, Any],
                                                         expected: Counter[str]) -> None:
    script = Script()
    script.clinician()
    script.connect("p01", 1, "patient")
    script.out("p01", 1, {"type": "hello", "role": "patient", "room": "r", "name": 3})
    script.got("p01", 1, {"type": "welcome", "patient": "A", "position": 1, "provider_status": "online",
                          "patient_initiated_chat": True})
    script.got("c01", 1, {"type": "patient_joined", "patient": "A", "name": 3, "position": 1,
                          "joined_at": 0})
    script.out("p01", 1, {"type": "send", "text": 4097, "ref": "1"})
    script.got("p01", 1, {**answer, "ref": "1"})
    checker = script.check()
    assert Counter(v.rule for v in checker.violations) == expected, [v.message for v in checker.violations]
    assert checker.summary.exercised["R41"] == 1


# ---------------------------------------------------------- item 5: the rule to recognise, no cascade


def test_a_box_that_follows_the_newest_writer_is_r8_without_a_cascade(tmp_path: Path) -> None:
    from test_simulator_checker import drill

    wrong = VARIANTS["box_follows_newest_writer"].model
    result = run_in_process(drill(), tmp_path / "r8.jsonl", model_class=wrong)
    found = Counter(v.rule for v in result.violations)
    assert "WIRE" not in found and "R5" not in found and "R9" not in found, found
    assert found["R8"] >= 0.9 * sum(found.values()), found


def test_a_badge_never_reset_is_r3_only(tmp_path: Path) -> None:
    from test_simulator_checker import drill

    wrong = VARIANTS["badge_never_resets"].model
    result = run_in_process(drill(), tmp_path / "r3.jsonl", model_class=wrong)
    assert set(Counter(v.rule for v in result.violations)) == {"R3"}


def test_an_effect_sent_before_its_message_is_one_order_violation() -> None:
    """unread and notify before the message that causes them: "order", once, and nothing invented."""
    script = Script()
    two_waiting(script)
    script.got("c01", 1, {"type": "unread", "patient": "B", "count": 1})
    script.got("c01", 1, {"type": "notify", "patient": "B", "id": 1})
    patient_message(script, "B", 1)
    patient_message(script, "B", 2)
    script.got("c01", 1, {"type": "unread", "patient": "B", "count": 2})
    script.got("c01", 1, {"type": "notify", "patient": "B", "id": 2})
    checker = script.check()
    assert rules(checker) == Counter({"order": 1}), [v.message for v in checker.violations]
    assert "before the patient's message" in checker.violations[0].message


def test_an_answer_before_its_effects_is_one_order_violation() -> None:
    script = Script()
    two_waiting(script)
    script.out("c01", 1, {"type": "open_chat", "patient": "B", "ref": "2"})
    script.got("c01", 1, {"type": "ok", "ref": "2", "messages": {"count": 0, "ids": [], "patients": []},
                          "truncated": False})
    script.got("c01", 1, {"type": "chat_box", "state": "open", "patient": "B", "patient_present": True,
                          "reason": "open_chat"})
    patient_message(script, "A", 1)
    script.got("c01", 1, {"type": "unread", "patient": "A", "count": 1})
    script.got("c01", 1, {"type": "notify", "patient": "A", "id": 1})
    checker = script.check()
    assert rules(checker) == Counter({"order": 1}), [v.message for v in checker.violations]


def test_a_missing_effect_is_named_by_its_rule_not_order() -> None:
    """The box moved to the writer with no unread for them: R8 once; later frames are judged normally."""
    script = Script()
    two_waiting(script)
    patient_message(script, "B", 1)
    script.got("c01", 1, {"type": "chat_box", "state": "open", "patient": "B", "patient_present": True,
                          "reason": "auto_open"})
    patient_message(script, "A", 1)
    script.got("c01", 1, {"type": "unread", "patient": "A", "count": 1})
    script.got("c01", 1, {"type": "notify", "patient": "A", "id": 1})
    checker = script.check()
    assert rules(checker) == Counter({"R8": 1}), [v.message for v in checker.violations]


# ---------------------------------------------------------- item 6: exercises per rule


def test_every_contract_rule_has_an_exercise_count_zero_included(tmp_path: Path) -> None:
    scenario = load_scenario("quiet_morning").with_duration(10 * 60.0)
    result = run_in_process(scenario, tmp_path / "q.jsonl")
    exercised = result.summary.as_dict()["exercised"]
    assert list(exercised) == list(CONTRACT_RULES)
    assert exercised["R1"] > 0 and exercised["R4"] > 0
    assert any(count == 0 for count in exercised.values())  # a short quiet run leaves some untested


def test_merged_parts_add_their_exercises_and_keep_liveness_per_room() -> None:
    one, two = Script(pace=PACE), Script(pace=PACE)
    two_waiting(one)
    patient_message(one, "B", 1)
    one.got("c01", 1, {"type": "unread", "patient": "B", "count": 1})
    one.got("c01", 1, {"type": "notify", "patient": "B", "id": 1})
    first, second = one.check().summary, two.check().summary
    total = first.exercised["R8"] + second.exercised["R8"]
    first.merge(second)
    assert first.exercised["R8"] == total == 1


# ---------------------------------------------------------- item 9: damaged histories


def good_history(tmp_path: Path) -> Path:
    script = Script(pace=PACE)
    two_waiting(script)
    return script.write(tmp_path / "good.jsonl")


def damage(path: Path, line: int, change: dict[str, Any] | None = None, raw: str | None = None) -> Path:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if raw is not None:
        lines[line - 1] = raw
    else:
        record = json.loads(lines[line - 1])
        record.update(change or {})
        lines[line - 1] = json.dumps(record) + "\n"
    out = path.with_name(f"damaged-{line}.jsonl")
    out.write_text("".join(lines), encoding="utf-8")
    return out


def read_all(path: Path) -> None:
    _, records = read_history(path)
    for _ in records:
        pass


@pytest.mark.parametrize(("line", "change", "field"), [
    (1, {"seed": "abc"}, '"seed"'),
    (1, {"heal_ms": "abc"}, '"heal_ms"'),
    (1, {"pace": {"clinician_think_ms": "slow"}}, '"pace"'),
    (3, {"t": "abc"}, '"t"'),
    (3, {"frame": "hello"}, '"frame"'),
    (3, {"kind": "bogus"}, '"kind"'),
    (4, {"conn": "1"}, '"conn"'),
])
def test_a_damaged_field_is_named_with_its_line(tmp_path: Path, line: int, change: dict[str, Any],
                                                  field: str) -> None:
    damaged = damage(good_history(tmp_path), line, change)
    with pytest.raises(HistoryError) as caught:
        read_all(damaged)
    assert f":{line}:" in str(caught.value) and field in str(caught.value)


def test_a_history_cut_at_a_line_boundary_is_damaged_not_checked(tmp_path: Path) -> None:
    path = good_history(tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:-2]), encoding="utf-8")
    with pytest.raises(HistoryError, match="end record"):
        check_history(cut)


def test_an_end_record_in_the_middle_is_damaged(tmp_path: Path) -> None:
    path = good_history(tmp_path)
    damaged = damage(path, 3, raw=json.dumps({"t": 0.0, "kind": "end", "records": 1}) + "\n")
    with pytest.raises(HistoryError, match=r"after the end record|counts"):
        read_all(damaged)


def test_check_on_a_damaged_file_exits_2_with_one_line(tmp_path: Path) -> None:
    damaged = damage(good_history(tmp_path), 1, {"seed": "abc"})
    done = subprocess.run([sys.executable, "-m", "queuechat", "check", str(damaged)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and '"seed"' in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_valid_history_reads_whole(tmp_path: Path) -> None:
    path = good_history(tmp_path)
    result = check_history(path)
    assert result.violations == [] and result.summary.complete
