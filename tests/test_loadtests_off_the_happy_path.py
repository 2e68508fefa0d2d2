"""Load runs that do not go to plan, and runs against the second server (tests/support/second_server.py),
each in processes of their own and bounded in time. Each checks one verdict the load test once got wrong:

- the second server keeps the contract but takes its freedoms the other way (no ``ref`` on ``welcome``,
  other ids, fragmented frames, pings at odd times): the run measures every entry and passes;
- it stops delivering for good part-way through: the messages still missing after the drain window are
  ``undelivered`` errors and samples of the corrected histogram, so the run fails and its p99 shows the
  stall;
- it dies mid-run: the users stop, the output says when and why, and the run is invalid;
- ``queuechat load`` interrupted (SIGINT, as Ctrl-C sends): summary.json, the JUnit file and the
  report all say incomplete, with the planned and actual durations; exit code 3;
- Locust run directly with a wrong secret says ``unauthorized: is the secret right?`` once, with no
  traceback; a worker lost mid-run does not stretch the duration, and progress stops at the time limit.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped]  # psutil ships no type information

from formats.hlog import LATENCY_ENTRIES, MESSAGE_ENTRIES
from queuechat.children import die_with_parent
from reports import write_load_report
from tests.reports_html import read_page
from tests.support.processes import second_server
from tests.test_loadtests_runs import LOCUSTFILE, RUN_TIMEOUT_S, Run, _free_port, queuechat_load

# Request limits raised for load, as `queuechat load` does for the reference server.
LOAD_LIMITS: dict[str, object] = {"rate_per_s": 1000, "rate_burst": 2000}
LINE_TIMEOUT_S = 60.0
# Nothing lost, nothing refused, nothing dropped; latencies bounded loosely (a shared CI machine).
NOTHING_LOST_SLO = """
"patient_to_clinician" = ["errors == 0", "p(99) < 1s"]
"clinician_to_patient" = ["errors == 0", "p(99) < 1s"]
"clinician_hello" = ["errors == 0"]
"check_in" = ["errors == 0"]
"call_start" = ["errors == 0"]
"open_chat" = ["errors == 0"]
"errors" = ["count == 0"]
"disconnects" = ["count == 0"]
"""


def test_against_the_second_server_every_entry_is_measured_and_the_run_passes(tmp_path: Path) -> None:
    """No ``ref`` on ``welcome`` (each hello's answer is the first welcome on its connection), ids of
    another shape, every frame in fragments: all measured, nothing lost, the default SLOs met."""
    slo = tmp_path / "slo.toml"
    slo.write_text(NOTHING_LOST_SLO)
    with second_server(**LOAD_LIMITS) as url:
        run = queuechat_load(tmp_path / "out", "--url", url, "--users", "2", "--rate", "40",
                             "--duration", "3s", "--slo", str(slo))
    assert run.code == 0, run.output
    summary = run.summary
    entries = summary["entries"]
    assert entries["clinician_hello"]["count"] >= 2 and entries["check_in"]["count"] >= 4
    assert [name for name in LATENCY_ENTRIES if not entries[name]["count"]] == []
    messages = summary["messages"]
    assert messages["delivered"] == messages["sent"] > 0.9 * messages["planned"] > 0
    assert messages["undelivered"] == 0 and summary["errors"]["total"] == 0
    assert messages["planned_per_s"] == 40.0 and 30.0 < messages["sent_per_s"] <= 41.0
    assert "queuechat load: PASS, exit code 0" in run.output


def test_a_server_that_stops_delivering_fails_the_run_with_undelivered_messages_and_a_p99_that_shows_it(
        tmp_path: Path) -> None:
    rate = 40
    # The stall starts 5 s after the server does: some 3 s into the 7 s run (Locust takes 1-2 s to start).
    with second_server(**LOAD_LIMITS, stall_after=5, stall_for=float("inf")) as url:
        run = queuechat_load(tmp_path / "out", "--url", url, "--users", "2", "--rate", str(rate),
                             "--duration", "7s", "--drain", "1")
    assert run.code == 1, run.output
    summary = run.summary
    assert summary["verdict"] == "slo_breach" and summary["validity"]["valid"]
    messages = summary["messages"]
    undelivered = messages["undelivered"]
    assert undelivered >= rate * 1.5  # at least 1.5 s of the schedule went undelivered
    by_entry = [entry["errors_by_code"].get("undelivered", 0) for entry in summary["entries"].values()]
    assert undelivered == sum(by_entry)
    assert summary["counters"].get("in_flight_at_end", 0) == 0  # nothing left uncounted
    for name in MESSAGE_ENTRIES:
        entry = summary["entries"][name]
        # Every missing message is a sample too, with the latency it reached: the p99 shows the stall.
        assert entry["latency_us"]["p99"] >= 1_500_000, (name, entry)
        assert entry["count"] == entry["latency_us"]["count"]
    delivered_and_lost = messages["delivered"] + undelivered
    assert delivered_and_lost == sum(summary["entries"][name]["count"] for name in MESSAGE_ENTRIES)
    assert re.search(r"undelivered after the 1(\.0)? s drain: [1-9]", run.output), run.output
    assert "FAIL (SLO breach), exit code 1" in run.output


def test_a_server_that_dies_mid_run_makes_the_run_invalid_and_says_when_and_why(tmp_path: Path) -> None:
    # It dies some 1-2 s into the run; the users give up after 3 failed connects, about 1 s apart.
    with second_server(**LOAD_LIMITS, die_after=3) as url:
        run = queuechat_load(tmp_path / "out", "--url", url, "--users", "2", "--rate", "40",
                             "--duration", "8s", "--no-slo")
    assert run.code == 3, run.output
    summary = run.summary
    assert summary["verdict"] == "invalid"
    stops = summary["users_stopped"]
    assert [stop["users"] for stop in stops] == [2], stops
    assert "cannot connect" in stops[0]["reason"] and 0 < stops[0]["first_at_s"] < 8
    assert re.search(r"queuechat: a user stopped at \d+\.\d s: cannot connect", run.output), run.output
    problems = summary["validity"]["problems"]
    assert any(problem.startswith("2 of 2 users stopped before the end") for problem in problems), problems
    assert any("messages its schedule had due" in problem for problem in problems), problems
    assert "INVALID RUN, exit code 3" in run.output


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """The stream's lines, read by a thread (None at its end), so that a test can wait for one with a
    bound."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str | None], prefix: str, seen: list[str]) -> str:
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while (remaining := deadline - time.monotonic()) > 0:
        line = lines.get(timeout=remaining)
        if line is None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting {prefix!r}; saw: {''.join(seen)[-3000:]}")


def _rest(lines: queue.Queue[str | None], seen: list[str]) -> str:
    while (line := lines.get(timeout=LINE_TIMEOUT_S)) is not None:
        seen.append(line)
    return "".join(seen)


def test_an_interrupted_run_says_incomplete_in_every_output_with_exit_3(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with second_server(**LOAD_LIMITS) as url:
        process = subprocess.Popen(
            die_with_parent([sys.executable, "-m", "queuechat", "load", "--out", str(out), "--url", url,
                             "--users", "2", "--rate", "20", "--duration", "30s"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert process.stdout is not None
            lines, seen = _lines(process.stdout), list[str]()
            _wait_for(lines, "queuechat progress:", seen)
            process.send_signal(signal.SIGINT)  # what Ctrl-C sends
            code = process.wait(timeout=RUN_TIMEOUT_S)
            output = _rest(lines, seen)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
    assert code == 3, output
    summary = Run(code, output, out).summary
    assert summary["verdict"] == "incomplete" and summary["exit_code"] == 3
    assert summary["validity"]["complete"] is False
    assert summary["run"]["planned_duration_s"] == 30 and 2 < summary["run"]["duration_s"] < 20
    problem = summary["validity"]["problems"][0]
    assert re.fullmatch(r"the run was interrupted: its send schedule ran \d+\.\d s of the planned 30 s",
                        problem)
    assert "INCOMPLETE RUN, exit code 3" in output and f"INCOMPLETE: {problem}" in output
    junit = (out / "junit.xml").read_text()
    assert 'errors="1"' in junit and 'type="IncompleteRun"' in junit and "of the planned 30 s" in junit
    report = write_load_report(out, tmp_path / "report")
    _, text = read_page(report.html)
    assert "INCOMPLETE RUN" in text and "PASS:" not in text
    assert "of the planned 30.0 s" in text


def _locust(*args: str) -> list[str]:
    return die_with_parent([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", *args])


def test_locust_directly_with_a_wrong_secret_says_so_once_without_tracebacks(tmp_path: Path) -> None:
    with second_server(**LOAD_LIMITS) as url:
        done = subprocess.run(_locust("--host", url, "-u", "3", "-r", "3", "-t", "2s",
                                      "--qc-secret", "not-it", "--qc-out", str(tmp_path / "out")),
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output[-3000:]
    # Said once when it happens, and once more in the summary's list of problems.
    assert output.count("unauthorized: is the secret right?") == 2
    assert "queuechat: unauthorized: is the secret right?\n" in output
    assert "Traceback" not in output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verdict"] == "invalid"
    assert summary["users_stopped"][0]["reason"] == "unauthorized: is the secret right?"


def _worker_pids(master: int) -> list[int]:
    children = psutil.Process(master).children(recursive=True)
    return [child.pid for child in children if "locust" in " ".join(child.cmdline())]


def test_a_lost_worker_does_not_stretch_the_duration_and_progress_stops_at_the_time_limit(
        tmp_path: Path) -> None:
    out, run_s = tmp_path / "out", 5
    port = _free_port()
    with second_server(**LOAD_LIMITS) as url:
        process = subprocess.Popen(
            _locust("--host", url, "-u", "2", "-r", "2", "-t", f"{run_s}s", "--processes", "2",
                    "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                    "--master-port", str(port),
                    "--qc-rate", "10", "--qc-progress", "1", "--qc-out", str(out)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert process.stdout is not None
            lines, seen = _lines(process.stdout), list[str]()
            while "users 2 |" not in _wait_for(lines, "queuechat progress:", seen):
                pass  # both workers run their user
            workers = _worker_pids(process.pid)
            assert len(workers) == 2, workers
            os.kill(workers[0], signal.SIGKILL)  # a worker lost, as to a crash or the OOM killer
            process.wait(timeout=RUN_TIMEOUT_S)
            output = _rest(lines, seen)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert abs(summary["run"]["duration_s"] - run_s) < 0.5, summary["run"]
    shown = [float(m) for m in re.findall(r"queuechat progress:\s+(\d+\.\d)s", output)]
    assert shown and max(shown) <= run_s + 0.2, shown
    assert summary["verdict"] == "invalid", output[-3000:]
    assert any("sent no final results" in problem for problem in summary["validity"]["problems"])
