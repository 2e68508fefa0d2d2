"""Issue 12, the run's side: --jobs as a pure speed setting, runs that cannot run (exit 2 / 3), loops
that would spin, the history's pace, the probes that exercise R9/R13/R40/R41/R43/R44/R46, and the CLI's
summary lines.

In-process runs are in virtual time and short; runs over sockets use the second server
(tests/support/) or the reference server on loopback, bounded in time.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reference_server._domain import Send
from reference_server._frames import Unread
from reference_server._logging import configure_logging
from reference_server.domain import QueueChatModel
from simulator import (
    RunResult,
    ScenarioError,
    check_history,
    load_scenario,
    parse_scenario,
    read_history,
    run_in_process,
    run_over_sockets,
)
from simulator._scenario import pace
from tests.support.processes import second_server
from tests.support.scenarios import slow_readers

ROOT = Path(__file__).resolve().parent.parent
QUEUECHAT = [sys.executable, "-m", "queuechat"]

# Two rooms, ten virtual minutes: enough departures, erasures and calls for every probe.
SMALL = """
name = "small_runs"
seed = 5
duration = "10m"
healing = "3m"
[rooms]
count = 3
prefix = "runs"
[arrivals]
rate_per_hour = 30
initial_queue = 3
[patients]
message_interval = { dist = "exponential", mean = "20s", min = "1s" }
patience = { dist = "exponential", mean = "3m" }
[clinicians]
think_time = { dist = "exponential", mean = "5s", min = "1s" }
call_probability = 0.05
call_length = { dist = "uniform", min = "30s", max = "90s" }
[faults]
refresh_per_hour = 3
patient_drop_per_hour = 1
"""


pytestmark = pytest.mark.usefixtures("quiet_server_logs")


def small(**changes: Any) -> Any:
    scenario = parse_scenario(tomllib.loads(SMALL), "small_runs.toml")
    return replace(scenario, **changes) if changes else scenario


def run_cli(*args: str, timeout: float = 120.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QUEUECHAT, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})}, check=False)


def short_url_run(folder: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Ten seconds of quiet_morning over ``--url`` against the second server, and its wall time."""
    with second_server() as url:
        started = time.monotonic()
        done = run_cli("simulate", "quiet_morning", "--url", url, "--duration", "10s", "--out", folder,
                       "--no-progress", timeout=60.0)
        took = time.monotonic() - started
    return done, took


def dying_server_run(folder: str) -> tuple[RunResult, Path]:
    """demo against a second server that stops accepting connections after 4 s: the result, the history."""
    configure_logging("error")
    history = Path(folder) / "h.jsonl"
    scenario = replace(load_scenario("demo"), duration_s=20.0, healing_s=8.0)
    with second_server(die_after=4) as url:
        return run_over_sockets(scenario, url, history), history


SOCKET_RUNS = {"short_url_run": ("test_a_short_url_run_takes_about_its_duration", short_url_run),
               "dying_server": ("test_a_server_that_dies_mid_run_is_incomplete_exit_3", dying_server_run)}


@pytest.fixture(scope="module", autouse=True)
def socket_runs(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Any]]]:
    """The selected runs of this module that wait for real time (about 13 s and 6 s), started with its
    first test in worker processes: they go on beside the in-process runs (CPU) instead of after them."""
    selected = {getattr(item, "originalname", "") for item in request.session.items
                if getattr(item, "module", None) is request.module}
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold Trio's state
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(SOCKET_RUNS), mp_context=context) as pool:
        futures = {key: pool.submit(run, str(tmp_path_factory.mktemp(key)))
                   for key, (test, run) in SOCKET_RUNS.items() if test in selected}
        yield futures
        for future in futures.values():
            future.cancel()


def frames(path: Path) -> list[dict[str, Any]]:
    _, records = read_history(path)
    return [record for _, record in records]


# --------------------------------------------------------------------------- item 4: --jobs


def test_jobs_is_a_speed_setting_same_bytes_and_same_verdict_for_every_jobs(tmp_path: Path) -> None:
    """One seed, --jobs 1, 2 and 3: byte-identical histories (ids and instants per room, not per process),
    and the same verdict, the one `check` gives on the file."""
    results = {}
    for jobs in (1, 2, 3):
        results[jobs] = run_in_process(small(), tmp_path / f"j{jobs}.jsonl", jobs=jobs)
    first = (tmp_path / "j1.jsonl").read_bytes()
    assert (tmp_path / "j2.jsonl").read_bytes() == first
    assert (tmp_path / "j3.jsonl").read_bytes() == first
    checked = check_history(tmp_path / "j1.jsonl")
    verdict = checked.summary.as_dict()
    for result in results.values():
        assert result.violations == checked.violations == []
        mine = result.summary.as_dict()
        assert mine["liveness"] == verdict["liveness"] and mine["liveness"]["judged"]
        assert mine["exercised"] == verdict["exercised"]
        assert mine["patients_served"] == verdict["patients_served"] > 0
        assert mine["wait_to_first_answer_s"] == verdict["wait_to_first_answer_s"]
        assert mine["wait_to_first_answer_s"]["p50"] is not None


def test_jobs_gives_the_same_violations_at_the_same_lines_as_one_process(tmp_path: Path) -> None:
    """A wrong server: --jobs 2 reports exactly what one process and `check` report, line for line."""
    from variants import VARIANTS

    wrong = VARIANTS["badge_never_resets"].model
    one = run_in_process(small(), tmp_path / "one.jsonl", model_class=wrong)
    two = run_in_process(small(), tmp_path / "two.jsonl", model_class=wrong, jobs=2)
    again = check_history(tmp_path / "two.jsonl")
    assert one.violations, "the wrong model was not caught at all"
    shown = [(v.rule, v.message, v.lines) for v in one.violations]
    assert [(v.rule, v.message, v.lines) for v in two.violations] == shown
    assert [(v.rule, v.message, v.lines) for v in again.violations] == shown


class ZeroesBadgesAfterARefresh(QueueChatModel):
    """The reference model, plus a freedom the second server takes: after erased{refresh} a replaced
    console gets unread{0} for every present patient before its 4000 close (notes, not violations)."""

    def _refresh(self, room: Any, old_conn: int | None, out: list[Any]) -> None:
        super()._refresh(room, old_conn, out)
        if old_conn is not None:
            out.extend(Send(old_conn, Unread(patient=p.id, count=0)) for p in room.patients.values())


def test_jobs_gives_the_same_summary_with_notes_as_one_process(tmp_path: Path) -> None:
    """Notes carry history lines too: --jobs 2 gives the summary (notes included, their lines the merged
    history's) that one process and `check` give."""
    model = ZeroesBadgesAfterARefresh
    scenario = small(refresh_per_hour=6.0, refresh_style={"reload": 0.0, "new_tab": 1.0})
    one = run_in_process(scenario, tmp_path / "one.jsonl", model_class=model)
    two = run_in_process(scenario, tmp_path / "two.jsonl", model_class=model, jobs=2)
    again = check_history(tmp_path / "two.jsonl")
    assert one.summary.as_dict()["notes"], "no note: the test tests nothing"
    assert one.violations == []
    assert two.summary.as_dict() == one.summary.as_dict() == again.summary.as_dict()


def test_jobs_cli_summary_and_progress(tmp_path: Path) -> None:
    """--jobs 2 prints real counts (not "0 served ... p50 None"), shows its progress bar to the end, and
    its history passes `check` as it passed the run."""
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL, encoding="utf-8")
    done = run_cli("simulate", str(scenario), "--jobs", "2", "--out", str(tmp_path), "--progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "None" not in done.stdout
    served = re.search(r"patients: (\d+) checked in, (\d+) served", done.stdout)
    assert served is not None and int(served.group(2)) > 0
    assert "liveness: judged" in done.stdout
    assert "10/10 min of clinic" in done.stderr  # the bar reaches its end, from the worker processes
    checked = run_cli("check", str(tmp_path / "small_runs-seed5.jsonl"))
    assert checked.returncode == 0 and "liveness: judged" in checked.stdout


def test_the_progress_bar_of_one_process_ends_full(tmp_path: Path) -> None:
    """The bar counts the clinic's minutes and ends on the last one (it once stopped at 479/480)."""
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL, encoding="utf-8")
    done = run_cli("simulate", str(scenario), "--out", str(tmp_path), "--progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10/10 min of clinic" in done.stderr


# --------------------------------------------------------------------------- the header's pace


def test_the_header_says_the_scenarios_pace_and_not_the_jobs(tmp_path: Path) -> None:
    scenario = small()
    run_in_process(scenario, tmp_path / "h.jsonl")
    header, _ = read_history(tmp_path / "h.jsonl")
    assert header["pace"] == {
        "clinician_think_ms": 5000.0, "clinician_typing_ms": 8500.0, "patient_message_interval_ms": 20000.0,
        "patient_reply_delay_ms": 20000.0, "arrivals_per_hour_per_room": 30.0, "rooms": 3,
    }
    assert "jobs" not in header
    compressed = pace(scenario, speed=10.0)
    assert compressed["clinician_think_ms"] == 500.0 and compressed["arrivals_per_hour_per_room"] == 300.0


def test_the_history_keeps_no_clinician_token(tmp_path: Path) -> None:
    """A token opens its room on the server (over --url, a long-lived one): the history keeps its length."""
    from reference_server.protocol import clinician_token
    from simulator._run import IN_PROCESS_SECRET

    run_in_process(small(), tmp_path / "h.jsonl")
    header, records = read_history(tmp_path / "h.jsonl")
    raw = (tmp_path / "h.jsonl").read_text(encoding="utf-8")
    assert all(clinician_token(IN_PROCESS_SECRET, room) not in raw for room in header["rooms"])
    hellos = [r["frame"] for _, r in records if r["kind"] == "frame" and r["frame"].get("type") == "hello"
              and r["frame"].get("role") == "clinician"]
    assert hellos and all(hello["token"] == 64 for hello in hellos)


# --------------------------------------------------------------------------- item 8: loops that would spin


@pytest.mark.parametrize(("text", "key"), [
    ('[clinicians]\nthink_time = "0s"', "clinicians.think_time"),
    ('[clinicians]\nthink_time = { dist = "uniform", min = "0s", max = "0s" }', "clinicians.think_time"),
    ('[patients]\nmessage_interval = "0s"', "patients.message_interval"),
    ('[patients]\nmessage_interval = { dist = "exponential", mean = "1ms" }', "patients.message_interval"),
])
def test_a_zero_think_time_or_message_interval_is_refused_not_spun(tmp_path: Path, text: str,
                                                                   key: str) -> None:
    path = tmp_path / "spin.toml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=re.escape(f"{path}: {key}: expected a distribution with a mean "
                                                      "of at least 50ms")):
        load_scenario(str(path))
    done = run_cli("simulate", str(path), "--duration", "5s", "--out", str(tmp_path), timeout=60.0)
    assert done.returncode == 2 and f"{key}: expected" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- item 7: runs that cannot run


def test_limits_that_refuse_every_hello_end_with_exit_2_and_no_violation(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text('name = "tiny"\nduration = "1h"\n[server]\nmax_frame_bytes = 10\n', encoding="utf-8")
    started = time.monotonic()
    done = run_cli("simulate", str(path), "--out", str(tmp_path), "--no-progress", timeout=60.0)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "could not run" in done.stdout and "closed with 1009" in done.stdout
    assert "max_frame_bytes" in done.stdout and "VIOLATION" not in done.stdout
    assert time.monotonic() - started < 30.0
    summary = json.loads((tmp_path / "tiny-seed1.summary.json").read_text(encoding="utf-8"))
    assert summary["outcome"] == "failed" and summary["exit_code"] == 2 and summary["violations"] == []
    end = frames(tmp_path / "tiny-seed1.jsonl")[-1]
    assert end["kind"] == "end" and "refused" in end["incomplete"]  # never taken for a whole run
    rechecked = run_cli("check", str(tmp_path / "tiny-seed1.jsonl"))
    assert rechecked.returncode == 3 and "VIOLATION" not in rechecked.stdout


def test_a_wrong_secret_ends_at_once_with_exit_2(tmp_path: Path) -> None:
    with second_server(secret="the-servers-own-secret") as url:
        started = time.monotonic()
        done = run_cli("simulate", "quiet_morning", "--url", url, "--secret", "a-wrong-secret", "--out",
                       str(tmp_path), "--no-progress", timeout=60.0)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unauthorized" in done.stdout and "--secret" in done.stdout
    assert "VIOLATION" not in done.stdout and "LIVENESS" not in done.stdout
    assert time.monotonic() - started < 20.0  # not the scenario's three hours


def test_a_wrong_path_ends_with_exit_2(tmp_path: Path) -> None:
    with second_server() as url:
        wrong = url.replace("/v1/ws", "/no/such/path")
        done = run_cli("simulate", "quiet_morning", "--url", wrong, "--out", str(tmp_path), "--no-progress",
                       timeout=60.0)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "upgrade was refused" in done.stdout and "VIOLATION" not in done.stdout


def test_a_server_that_dies_mid_run_is_incomplete_exit_3(socket_runs: dict[str, Future[Any]]) -> None:
    result, history = socket_runs["dying_server"].result(timeout=120)
    assert result.outcome == "incomplete", result.reason
    assert result.reason is not None and "stopped accepting connections" in result.reason
    assert result.wall_s < 15.0  # noticed at the first reconnect, not at the end of the scenario
    end = frames(history)[-1]
    assert end["kind"] == "end" and end["incomplete"] == result.reason
    from queuechat._simulate import _exit_code

    assert _exit_code(result) == 3


def test_an_interrupted_run_exits_3(tmp_path: Path) -> None:
    """Ctrl-C mid-run: exit 3 ("incomplete"), one line, no verdict, and a history whose end record says
    so. The interrupt is sent once the run has visibly started (its history file is open), never after a
    guessed sleep."""
    scenario = tmp_path / "long.toml"
    scenario.write_text('name = "long_one"\nduration = "8h"\n[rooms]\ncount = 2\n', encoding="utf-8")
    with second_server() as url:
        process = subprocess.Popen([*QUEUECHAT, "simulate", str(scenario), "--url", url, "--out",
                                    str(tmp_path), "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            history = tmp_path / "long_one-seed1.jsonl"
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline and not history.exists():
                time.sleep(0.05)
            assert history.exists(), "the run never started"
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30.0)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 3, out + err
    assert "interrupted" in err and "Traceback" not in err and "VIOLATION" not in out
    end = frames(history)[-1]
    assert end["kind"] == "end" and "interrupted" in end["incomplete"]


# --------------------------------------------------------------------------- item 10: the CLI


def test_secret_and_allow_remote_without_url_are_refused(tmp_path: Path) -> None:
    env = {"QUEUECHAT_SECRET": ""}
    done = run_cli("simulate", "quiet_morning", "--secret", "s3cret", "--duration", "1m", "--out",
                   str(tmp_path), env=env)
    assert done.returncode == 2 and "--secret applies only with --url" in done.stderr
    done = run_cli("simulate", "quiet_morning", "--allow-remote", "--duration", "1m", "--out", str(tmp_path))
    assert done.returncode == 2 and "--allow-remote applies only with --url" in done.stderr


def test_the_summary_lists_rules_exercised_and_liveness_and_check_says_what_it_did(tmp_path: Path) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL, encoding="utf-8")
    done = run_cli("simulate", str(scenario), "--out", str(tmp_path), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"rules exercised: R1 \d+", done.stdout)
    zero = re.search(r"rules exercised zero times: (.*)", done.stdout)
    assert zero is not None and "R44" in zero.group(1)  # no room of this scenario is ever full
    assert "liveness: judged" in done.stdout
    checked = run_cli("check", str(tmp_path / "small_runs-seed5.jsonl"))
    assert checked.returncode == 0
    assert re.search(r"of virtual time, \d+ records checked in [\d.]+ s", checked.stdout)
    assert "summary" not in checked.stdout


def test_no_patient_answered_reads_as_words_not_none(tmp_path: Path) -> None:
    """A run in which no clinician gets round to anyone: the wait line says so, not "p50 None s"."""
    scenario = tmp_path / "slow_clinicians.toml"
    scenario.write_text('name = "slow_clinicians"\nduration = "20s"\n[arrivals]\ninitial_queue = 2\n'
                        '[clinicians]\nthink_time = "2h"\n', encoding="utf-8")
    done = run_cli("simulate", str(scenario), "--out", str(tmp_path), "--no-progress")
    assert "None" not in done.stdout
    assert "wait to first answer: no patient was answered (never answered 2)" in done.stdout


SLOW_READERS = slow_readers("3m")


def test_quiet_hides_the_in_process_servers_warnings(tmp_path: Path) -> None:
    """Readers so slow that the server drops them (its warning ``connection.slow_reader_dropped``): shown
    by default, never under --quiet."""
    scenario = tmp_path / "slow.toml"
    scenario.write_text(SLOW_READERS, encoding="utf-8")
    loud = run_cli("simulate", str(scenario), "--out", str(tmp_path), "--no-progress")
    quiet = run_cli("simulate", str(scenario), "--out", str(tmp_path), "--no-progress", "--quiet")
    assert "slow_reader_dropped" in loud.stderr  # the control: there was a warning to hide
    assert "slow_reader_dropped" not in quiet.stdout + quiet.stderr
    assert quiet.stderr == ""


def test_a_short_url_run_takes_about_its_duration(socket_runs: dict[str, Future[Any]]) -> None:
    done, took = socket_runs["short_url_run"].result(timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert took < 18.0  # ten seconds of clinic, a bounded teardown, Python's start-up


# --------------------------------------------------------------------------- item 6: the probes


def test_agents_exercise_r9_r13_r40_r41_r43_r44_r46_and_the_history_shows_each(tmp_path: Path) -> None:
    """A short run of refresh_storm (its room 1 fills past max_patients_per_room): each probe's answer is
    in the history, whatever the checker counts."""
    scenario = load_scenario("refresh_storm").with_duration(120.0)
    path = tmp_path / "h.jsonl"
    result = run_in_process(scenario, path)
    assert result.violations == [], [(v.rule, v.message) for v in result.violations[:3]]
    records = frames(path)
    codes: dict[str, int] = {}
    for record in records:
        frame = record.get("frame") or {}
        if record["kind"] == "frame" and frame.get("type") == "error":
            codes[frame["code"]] = codes.get(frame["code"], 0) + 1
    for code in ("patient_gone", "not_found", "unknown_type", "too_large", "rate_limited", "capacity"):
        assert codes.get(code, 0) > 0, (code, codes)
    shutdown = [r for r in records if r["kind"] == "close" and r["code"] == 1001 and r["by"] == "server"]
    assert len(shutdown) == scenario.rooms  # every console open at the end is closed by the shutdown
    exercised = result.summary.as_dict()["exercised"]
    assert all(exercised[rule] > 0 for rule in ("R9", "R13", "R40", "R41", "R43", "R44", "R46")), exercised


@pytest.mark.parametrize("variant", ["too_large_not_checked", "departed_patient_still_reachable"])
def test_a_short_shipped_run_catches_what_only_the_probes_exercise(variant: str) -> None:
    """R41 and R9 break only when an agent goes past a limit or writes to someone gone: the probes make
    a two-minute run of a shipped scenario catch them."""
    from variants import VARIANTS

    wrong = VARIANTS[variant]
    scenario = load_scenario("busy_clinic_day").with_duration(120.0)
    result = run_in_process(scenario, None, model_class=wrong.model)
    rules = {v.rule for v in result.violations}
    assert rules & set(wrong.breaks), (variant, rules)
