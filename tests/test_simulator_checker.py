"""The checker catches broken servers: the agents run against deliberately wrong models behind the real
shell (tests/variants.py), and each run must be reported with the rule the model breaks.

The histories come from those runs, never written by hand. The drill scenario is small and busy (many
departures, box moves, toggles and refreshes in a few virtual minutes) so that every broken rule is
met within one run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from variants import VARIANTS

from simulator import Scenario, check_history, parse_scenario, run_in_process

ROOT = Path(__file__).resolve().parent.parent

DRILL = """
name = "checker_drill"
seed = 5
duration = "40m"
healing = "8m"
[rooms]
count = 4
prefix = "drill"
[arrivals]
rate_per_hour = 30
initial_queue = 4
[patients]
message_interval = { dist = "exponential", mean = "20s", min = "1s" }
patience = { dist = "exponential", mean = "6m" }
try_when_disabled = 0.5
departure = { leave = 0.6, close = 0.3, drop = 0.1 }
[clinicians]
think_time = { dist = "exponential", mean = "5s", min = "1s" }
typing_time = { dist = "uniform", min = "1s", max = "4s" }
call_probability = 0.05
call_length = { dist = "uniform", min = "1m", max = "4m" }
[clinicians.habits]
reply = 6
chat_new = 2
minimize = 3
close = 2
open_other = 3
toggle_notifications = 1
toggle_patient_chat = 1
idle = 1
[faults]
refresh_per_hour = 3
"""

# variant -> the rule ids the checker must report for it (the variant's own ids, R11b -> R11)
EXPECTED = {
    # the four the issue names
    "box_follows_newest_writer": {"R8"},
    "erasure_forgets_viewed_other": {"R11"},
    "badge_never_resets": {"R3"},
    "departed_patient_still_reachable": {"R9"},
    # and more of the catalogue
    "notify_while_off": {"R10"},
    "no_auto_open": {"R6"},
    "call_keeps_provider_online": {"R30"},
    "refresh_keeps_conversations": {"R12"},
    "chat_disabled_ignored": {"R31"},
    "no_position_push": {"R30"},
    # the clinicians' one burst (twice rate_burst, at one instant) must meet some rate_limited
    "rate_limit_ignored": {"R43"},
}


pytestmark = pytest.mark.usefixtures("quiet_server_logs")


def drill() -> Scenario:
    return parse_scenario(tomllib.loads(DRILL), "drill.toml")


def test_the_reference_server_passes_the_drill(tmp_path: Path) -> None:
    result = run_in_process(drill(), tmp_path / "reference.jsonl")
    assert result.violations == [], [(v.rule, v.message) for v in result.violations[:5]]
    assert result.summary.complete
    assert result.chat_messages > 500


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_a_broken_server_is_reported_with_the_rule_it_breaks(tmp_path: Path, variant: str) -> None:
    wrong = VARIANTS[variant]
    assert EXPECTED[variant] <= {rule[:3].rstrip("abcd") for rule in wrong.breaks}, "the catalogue changed"
    history = tmp_path / f"{variant}.jsonl"
    result = run_in_process(drill(), history, model_class=wrong.model)
    found = {v.rule for v in result.violations}
    assert EXPECTED[variant] <= found, f"{variant}: expected {EXPECTED[variant]}, found {sorted(found)}"
    # each violation names its rule and points at the lines that led to it
    first = next(v for v in result.violations if v.rule in EXPECTED[variant])
    assert first.lines and first.message
    # re-checking the saved history finds the same
    again = check_history(history)
    assert [(v.rule, v.message, v.lines) for v in again.violations] == \
        [(v.rule, v.message, v.lines) for v in result.violations]


def test_check_prints_the_rule_the_seed_and_the_events(tmp_path: Path) -> None:
    """`queuechat check` on a broken server's history: exit 1, the rule id, the seed, the history lines."""
    history = tmp_path / "badge.jsonl"
    run_in_process(drill(), history, model_class=VARIANTS["badge_never_resets"].model)
    done = subprocess.run([sys.executable, "-m", "queuechat", "check", str(history)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 1, done.stderr
    assert "VIOLATION R3 (seed 5" in done.stdout
    assert '"type":"open_chat"' in done.stdout  # the short run of events that led to it
    assert "violations by rule: R3 " in done.stdout


def test_a_run_split_into_processes_reports_the_same_lines_as_check(tmp_path: Path) -> None:
    """--jobs 2 checks each process's rooms where they ran; the lines it reports are the merged history's,
    the same that `check` finds in it."""
    history = tmp_path / "split.jsonl"
    result = run_in_process(drill(), history, model_class=VARIANTS["badge_never_resets"].model, jobs=2)
    assert {v.rule for v in result.violations} >= {"R3"}
    again = check_history(history)
    assert sorted((v.rule, v.message, v.lines) for v in result.violations) == \
        sorted((v.rule, v.message, v.lines) for v in again.violations)


DATA = Path(__file__).resolve().parent / "data"


def test_a_message_delivered_out_of_turn_is_still_counted_as_delivered() -> None:
    """Against a wrong server, a patient's message can arrive where the checker expected another frame:
    that is one violation, and the message still counts as delivered (no knock-on "never reached")."""
    (history,) = (DATA / "sim-violations").glob("*.jsonl")
    result = check_history(history)
    assert {v.rule for v in result.violations} >= {"R8"}  # the wrong server is still caught
    assert not [v for v in result.violations if "never reached" in v.message]
    delivered = result.summary.as_dict()["messages_patient_to_clinician"]
    # every message that had a console to go to: one (id 12 of the patient at line 2012) was sent while the
    # clinician's page reloaded, and was read with open_chat after it, not pushed
    assert delivered["delivered"] == delivered["sent"] - 1 > 0


def test_a_message_missing_from_the_console_is_reported_as_never_delivered(tmp_path: Path) -> None:
    """Positive control for the above: remove one delivered patient message from a clean history (a
    patient who later left) and the checker reports it under R1."""
    (history,) = (DATA / "sim-small").glob("*.jsonl")
    lines = history.read_text().splitlines()
    left = {json.loads(line)["frame"]["patient"] for line in lines
            if '"type":"patient_left"' in line and '"dir":"in"' in line}
    records = [json.loads(line) for line in lines]
    index = next(i for i, record in enumerate(records)
                 if record.get("kind") == "frame" and record["agent"].startswith("c")
                 and record["frame"].get("type") == "message" and record["frame"].get("from") == "patient"
                 and record["frame"]["patient"] in left)
    assert not check_history(history).violations
    broken = tmp_path / history.name
    end = records[-1]
    end["records"] -= 1  # the end record counts the records: one fewer, or the file is damaged
    kept = lines[:index] + lines[index + 1:-1] + [json.dumps(end, separators=(",", ":"))]
    broken.write_text("\n".join(kept) + "\n")
    found = check_history(broken).violations
    assert any(v.rule == "R1" and "never reached the clinician's console" in v.message for v in found), found
