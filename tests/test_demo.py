"""``queuechat demo``, run for real in a subprocess with short durations: the reports and results it
promises exist and are printed, and nothing it started outlives it, whether it finishes or is
interrupted (SIGINT) in the middle of the simulation or of the load test.

Every wait is on an output line or on the process's exit, each with a timeout; the demo is killed in
``finally`` if it is still running.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from reference_server.protocol import WS_PATH

QUEUECHAT = Path(sys.executable).parent / "queuechat"
SERVER_LINE = re.compile(r"^queuechat demo: reference server on ws://127\.0\.0\.1:(\d+)" + re.escape(WS_PATH))
RUN_S = 120.0  # the short demo takes about 25 s
LINE_S = 60.0


class Demo:
    """``queuechat demo ARGS`` with its output read line by line on a thread (so waits can time out)."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("QUEUECHAT_SECRET", None)
        self.process = subprocess.Popen([str(QUEUECHAT), "demo", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                        env=env)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.descendants: dict[int, psutil.Process] = {}
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str | re.Pattern[str], timeout_s: float = LINE_S) -> re.Match[str]:
        """The first new line matching ``pattern``; fails on exit or timeout, showing the output."""
        compiled = re.compile(pattern)
        while True:
            try:
                line = self._queue.get(timeout=timeout_s)
            except queue.Empty:
                pytest.fail(f"no line matching {compiled.pattern!r} within {timeout_s} s:\n" + self.output())
            if line is None:
                pytest.fail(f"the demo ended before a line matching {compiled.pattern!r}:\n" + self.output())
            self.lines.append(line)
            match = compiled.search(line)
            if match:
                return match

    def note_descendants(self) -> None:
        """Remember every process the demo has started so far (the server, Locust)."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            self.descendants[child.pid] = child

    def finish(self, timeout_s: float = RUN_S) -> int:
        code = self.process.wait(timeout=timeout_s)
        while (line := self._queue.get(timeout=10.0)) is not None:
            self.lines.append(line)
        return code

    def output(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        """Kill whatever still runs (the demo, then its children), then close the pipe."""
        if self.process.poll() is None:
            children = psutil.Process(self.process.pid).children(recursive=True)
            self.process.kill()
            for child in children:
                child.kill()
            self.process.wait(timeout=10.0)
        self._reader.join(timeout=10.0)
        assert self.process.stdout is not None
        self.process.stdout.close()


def port_is_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return False
    except OSError:
        return True


def assert_nothing_left(demo: Demo, port: int) -> None:
    assert demo.descendants, "the demo's children were never seen"
    alive = [child for child in demo.descendants.values() if child.is_running()
             and child.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [child.cmdline() for child in alive]
    assert port_is_closed(port), f"the demo's server port {port} still accepts connections"


@pytest.mark.slow
def test_demo_writes_both_reports_prints_them_and_stops_everything(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    demo = Demo("--out", str(out), "--sim-duration", "8s", "--load-duration", "5s")
    try:
        port = int(demo.wait_for(SERVER_LINE).group(1))
        demo.note_descendants()  # the server
        demo.wait_for(r"^queuechat demo: simulation 8 s:")
        demo.wait_for(r"^queuechat progress:")  # Locust is running
        demo.note_descendants()  # the server and Locust
        code = demo.finish()
    finally:
        demo.close()
    text = demo.output()
    assert code == 0, text
    assert "Traceback" not in text
    assert_nothing_left(demo, port)

    printed: dict[str, Path] = {}
    for kind, label in (("simulation", "simulation report"), ("load", "load test report")):
        match = re.search(rf"^  {label}: +(/\S+)\n +(file://\S+)$", text, re.MULTILINE)
        assert match, text
        html = Path(match.group(1))
        assert html.is_absolute() and html.is_file()
        assert html.is_relative_to(out / kind)
        assert match.group(2) == html.as_uri()
        assert html.stat().st_size > 0
        printed[kind] = html
    assert printed["simulation"] != printed["load"]

    history = out / "simulation" / "demo-seed1.jsonl"
    header = json.loads(history.read_text(encoding="utf-8").splitlines()[0])
    assert header["scenario"] == "demo" and header["mode"] == "socket"
    assert header["server"] == f"ws://127.0.0.1:{port}{WS_PATH}"
    sim_summary = json.loads(history.with_suffix(".summary.json").read_text(encoding="utf-8"))
    assert sim_summary["violations"] == []
    assert sim_summary["summary"]["patients"] > 0
    load_summary = json.loads((out / "load" / "summary.json").read_text(encoding="utf-8"))
    assert load_summary["verdict"] == "pass"
    assert load_summary["run"]["host"] == f"ws://127.0.0.1:{port}{WS_PATH}"
    assert re.search(r"^  simulation: +no violations", text, re.MULTILINE)
    assert re.search(r"^  load test: +PASS", text, re.MULTILINE)
    assert text.splitlines()[-1] == "queuechat demo: all went well"


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "args", "cue"), [
    ("simulation", ("--sim-duration", "30s"), r"^queuechat demo: simulation: the agents are running$"),
    ("load", ("--sim-duration", "8s", "--load-duration", "60s"), r"^queuechat progress:"),
])
def test_sigint_in_the_middle_stops_everything(tmp_path: Path, phase: str, args: tuple[str, ...],
                                               cue: str) -> None:
    demo = Demo("--out", str(tmp_path / "demo"), *args)
    try:
        port = int(demo.wait_for(SERVER_LINE).group(1))
        demo.wait_for(cue)
        demo.note_descendants()
        demo.process.send_signal(signal.SIGINT)
        code = demo.finish(timeout_s=30.0)
    finally:
        demo.close()
    text = demo.output()
    assert code == 130, text
    assert "Traceback" not in text
    assert "queuechat demo: interrupted; everything it started is stopped" in text
    assert "all went well" not in text
    assert_nothing_left(demo, port)


@pytest.mark.parametrize(("args", "message"), [
    (("--load-duration", "11m"), "--load-duration '11m': at most 10m"),
    (("--sim-duration", "nope"), "--sim-duration 'nope'"),
    (("--sim-duration", "5s"), "--sim-duration '5s': at least 8s"),
    (("--seed", "-1"), "--seed"),
])
def test_usage_errors_exit_2_before_starting_anything(tmp_path: Path, args: tuple[str, ...],
                                                      message: str) -> None:
    done = subprocess.run([str(QUEUECHAT), "demo", "--out", str(tmp_path / "demo"), *args],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(("violations", "load", "named"), [
    (2, {"verdict": "pass", "slo": {"results": [{"passed": True}]}},
     ["the simulation found 2 violation(s) of the rules"]),
    (0, {"verdict": "slo_breach", "slo": {"results": [{"passed": False, "message": "p(99) 80ms >= 50ms"}]}},
     ["the load test breached its SLOs"]),
    (0, {"verdict": "invalid", "validity": {"problems": ["load generator local was short of CPU"]}},
     ["the load run was invalid"]),
    (1, None, ["the simulation found 1 violation(s)", "the load test gave no results"]),
])
def test_the_closing_lines_name_each_failure_and_exit_1(tmp_path: Path, violations: int,
                                                        load: dict[str, object] | None,
                                                        named: list[str]) -> None:
    from queuechat._demo import EXIT_FAILED, DemoOptions, _conclude, _Outcome

    html = tmp_path / "report.html"
    outcome = _Outcome(sim_violations=violations, sim_line="3 patients", load_code=3, load_summary=load,
                       reports={"simulation": html, "load": html})
    lines: list[str] = []
    assert _conclude(DemoOptions(out=tmp_path), outcome, 1.0, lines.append) == EXIT_FAILED
    assert lines[-1].startswith("queuechat demo: FAILED: ")
    for name in named:
        assert name in lines[-1]
    assert f"  simulation report: {html}" in lines


@pytest.mark.parametrize(("sim_outcome", "named"), [
    ("failed", "the simulation could not run: unauthorized"),
    ("incomplete", "the simulation was incomplete: unauthorized"),
])
def test_a_simulation_that_could_not_run_or_finish_is_no_pass(tmp_path: Path, sim_outcome: str,
                                                              named: str) -> None:
    """No violations counted, but the run could not run (exit 2 for `simulate`) or stopped part-way (3):
    the closing lines say so and the demo exits 1, never "all went well"."""
    from queuechat._demo import EXIT_FAILED, DemoOptions, _conclude, _Outcome

    html = tmp_path / "report.html"
    outcome = _Outcome(sim_violations=0, sim_outcome=sim_outcome, sim_reason="unauthorized",
                       sim_line="0 patients", load_code=0,
                       load_summary={"verdict": "pass", "slo": {"results": [{"passed": True}]}},
                       reports={"simulation": html, "load": html})
    lines: list[str] = []
    assert _conclude(DemoOptions(out=tmp_path), outcome, 1.0, lines.append) == EXIT_FAILED
    assert named in lines[-1]
    assert not any("all went well" in line or "no violations" in line for line in lines)
