"""``queuechat demo``: the first thing a new user runs, and everything at once, bounded and on loopback.

It starts the reference server (``queuechat serve --port 0``, request limits raised for load, through
:func:`queuechat._load.reference_server`), runs the ``demo`` scenario over real sockets against it
(Trio, in this process), then a short load test against the same server (``queuechat load``'s own
:func:`queuechat._load.run`: Locust in a subprocess, so gevent never shares this process with Trio),
writes the simulation and load reports, and prints where they are and what they found.

Bounded: a hard deadline over the whole run (the durations plus :data:`DEADLINE_GRACE_S`) interrupts
it the way Ctrl-C does; every child is stopped (SIGTERM, then SIGKILL) in ``finally``, and each one
was started to get SIGTERM if this process dies first.

Exit codes: 0 all went well; 1 the simulation found violations, the load test breached its SLOs or was
invalid, a report could not be written, or the deadline passed; 2 a usage error, or something could
not be started (the server, the load test); 130 interrupted (SIGINT).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from formats.summary import SUMMARY_FILE, write_simulation_summary

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The longest --sim-duration / --load-duration: a demo, not a soak test.
MAX_PHASE_S = 600
# The shortest --sim-duration: in less, patients still waiting when the (halved) healing phase ends are
# reported by the checker's liveness rule (rightly: the run was too short to answer them).
MIN_SIM_S = 8
# Beyond the two durations: the server's start, Locust's start and final flush, the simulation's
# teardown, and both reports (matplotlib's first import on a fresh machine builds its font cache).
DEADLINE_GRACE_S = 90.0
PROGRESS_EVERY_S = 10.0
LOAD_USERS = 10
LOAD_RATE = 200.0
DEFAULT_LOAD_S = 20
SCENARIO = "demo"
PREFIX = "queuechat demo:"

Echo = Callable[[str], None]


class DemoUsageError(Exception):
    """Bad options: exit code 2 with this message."""


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    out: Path
    seed: int | None = None
    sim_duration_s: int | None = None  # None: the scenario's own duration
    load_duration_s: int = DEFAULT_LOAD_S
    quiet: bool = False
    users: int = LOAD_USERS
    rate: float = LOAD_RATE


@dataclass
class _Outcome:
    """What each phase found, for the closing lines and the exit code."""

    server_url: str = ""
    sim_history: Path | None = None
    sim_violations: int | None = None
    # the run's outcome as `queuechat simulate` gives it: "complete", "failed" (could not run: exit code 2
    # there) or "incomplete" (exit code 3 there), with its reason; never a pass unless "complete"
    sim_outcome: str | None = None
    sim_reason: str | None = None
    sim_line: str = ""
    load_code: int | None = None
    load_summary: dict[str, Any] | None = None
    reports: dict[str, Path] = field(default_factory=dict)
    report_errors: dict[str, str] = field(default_factory=dict)


class _Interrupts:
    """Tells a Ctrl-C from the deadline, and sees an interrupt that ``queuechat load``'s ``run`` swallows.

    The deadline is a timer thread that sends this process SIGINT, so that it takes the one path an
    interrupt takes in every phase (Trio turns SIGINT into KeyboardInterrupt; so does Python elsewhere).
    """

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.deadline_passed = threading.Event()
        self.seen = threading.Event()
        self._timer = threading.Timer(deadline_s, self._on_deadline)
        self._timer.daemon = True

    def _on_deadline(self) -> None:
        self.deadline_passed.set()
        os.kill(os.getpid(), signal.SIGINT)

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    @contextlib.contextmanager
    def noticed(self) -> Iterator[None]:
        """While inside: a SIGINT is remembered, then raised as usual (not while Trio runs: Trio
        installs its own handler only over Python's default one)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.seen.set()
            raise KeyboardInterrupt

        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with SIGINT ignored (nohup, &)
            yield
            return
        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def run(options: DemoOptions, *, echo: Echo = print) -> int:
    """Everything ``queuechat demo`` does; returns the exit code."""
    started = time.monotonic()
    say = (lambda line: None) if options.quiet else echo
    try:
        scenario, load_s = _plan(options)
        sim_dir, load_dir = options.out / "simulation", options.out / "load"
        sim_dir.mkdir(parents=True, exist_ok=True)
        load_dir.mkdir(parents=True, exist_ok=True)
    except DemoUsageError as error:
        echo(f"{PREFIX} {error}")
        return EXIT_USAGE
    except OSError as error:
        echo(f"{PREFIX} cannot create {options.out}: {error.strerror or error}")
        return EXIT_USAGE
    from ._load import LoadUsageError, reference_server

    deadline_s = scenario.duration_s + load_s + DEADLINE_GRACE_S
    interrupts = _Interrupts(deadline_s)
    outcome = _Outcome()
    interrupts.start()
    try:
        say(f"{PREFIX} starting the reference server on 127.0.0.1 (a free port; log in "
            f"{options.out / 'server.log'})")
        with reference_server(secret=None, log_path=options.out / "server.log") as url:
            outcome.server_url = url
            say(f"{PREFIX} reference server on {url}")
            code = _simulation(scenario, url, sim_dir, outcome, say, echo)
            if code is not None:
                return code
            code = _load_test(options, load_s, url, load_dir, outcome, interrupts, say, echo)
            if code is not None:
                return code
        say(f"{PREFIX} reference server stopped")
        say(f"{PREFIX} reports…")
        _reports(sim_dir, load_dir, outcome)
    except LoadUsageError as error:
        echo(f"{PREFIX} {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        interrupts.seen.set()
    finally:
        interrupts.cancel()
    if interrupts.deadline_passed.is_set():
        echo(f"{PREFIX} stopped: the demo did not finish within its deadline of {deadline_s:g} s; "
             "everything it started is stopped")
        return EXIT_FAILED
    if interrupts.seen.is_set():
        echo(f"{PREFIX} interrupted; everything it started is stopped (partial results in {options.out})")
        return EXIT_INTERRUPTED
    return _conclude(options, outcome, time.monotonic() - started, echo)


def _plan(options: DemoOptions) -> tuple[Any, int]:
    """The demo scenario, with the seed and duration asked for, and the load test's duration."""
    from simulator import SCENARIO_DIR, ScenarioError, load_scenario

    for name, value, least in (("--sim-duration", options.sim_duration_s, MIN_SIM_S),
                               ("--load-duration", options.load_duration_s, 1)):
        if value is not None and not least <= value <= MAX_PHASE_S:
            raise DemoUsageError(f"{name} must be from {least} s to {MAX_PHASE_S // 60} minutes, "
                                 f"got {value} s")
    try:
        scenario = load_scenario(str(SCENARIO_DIR / f"{SCENARIO}.toml"))
    except ScenarioError as error:
        raise DemoUsageError(str(error)) from None
    if options.seed is not None:
        scenario = replace(scenario, seed=options.seed)
    if options.sim_duration_s is not None:
        # Longer or shorter than the file's; the healing phase stays at most half of it (as the parser wants).
        seconds = float(options.sim_duration_s)
        scenario = replace(scenario, duration_s=seconds, healing_s=min(scenario.healing_s, seconds / 2))
    return scenario, options.load_duration_s


@contextlib.contextmanager
def _ticker(label: str, total_s: float, say: Echo) -> Iterator[None]:
    """A progress line every :data:`PROGRESS_EVERY_S` while a phase runs (the simulator prints none)."""
    stop = threading.Event()
    began = time.monotonic()

    def tick() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            say(f"{PREFIX} {label}: {time.monotonic() - began:.0f} of about {total_s:g} s")

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)


def _simulation(scenario: Any, url: str, sim_dir: Path, outcome: _Outcome, say: Echo,
                echo: Echo) -> int | None:
    """The scenario over real sockets; its history, summary and checker's verdict. None: go on."""
    from simulator import history_name, run_over_sockets

    from ._simulate import _report, _summary_document

    say(f"{PREFIX} simulation {scenario.duration_s:g} s: scenario {scenario.name} seed {scenario.seed}, "
        f"{scenario.rooms} rooms over real sockets, in real time (healing in the last "
        f"{scenario.healing_s:g} s)")
    history = sim_dir / history_name(scenario)
    try:
        with _ticker("simulation", scenario.duration_s, say):
            result = run_over_sockets(scenario, url, history, progress=_first_step(say))
    except KeyboardInterrupt:
        raise
    except BaseExceptionGroup as group:  # Trio's nurseries group what their tasks raised
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        error = _first_leaf(group)
        echo(f"{PREFIX} the simulation failed: {type(error).__name__}: {error}; see "
             f"{sim_dir.parent / 'server.log'}")
        return EXIT_FAILED
    except Exception as error:  # the server died, a socket failed: a one-line reason, not a traceback
        echo(f"{PREFIX} the simulation failed: {type(error).__name__}: {error}; see "
             f"{sim_dir.parent / 'server.log'}")
        return EXIT_FAILED
    write_simulation_summary(history, _summary_document(result))
    report = io.StringIO()
    _report(result, report)
    for line in report.getvalue().splitlines():
        say(f"  {line}" if line else "")
    summary = result.summary.as_dict()
    outcome.sim_history = history
    outcome.sim_violations = len(result.violations)
    outcome.sim_outcome = "complete" if result.outcome == "complete" and result.summary.complete else (
        "failed" if result.outcome == "failed" else "incomplete")
    outcome.sim_reason = result.reason or (None if result.summary.complete else "the run did not finish")
    p2c, c2p = summary["messages_patient_to_clinician"], summary["messages_clinician_to_patient"]
    outcome.sim_line = (f"{summary['patients']} patients, {p2c['delivered'] + c2p['delivered']} messages "
                        f"delivered")
    return None


def _first_step(say: Echo) -> Callable[[float], None]:
    """The simulator's progress callback (called from inside its Trio run): a line at its first step."""
    said = [False]

    def progress(now_s: float) -> None:
        if not said[0]:
            said[0] = True
            say(f"{PREFIX} simulation: the agents are running")

    return progress


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _load_test(options: DemoOptions, load_s: int, url: str, load_dir: Path, outcome: _Outcome,
               interrupts: _Interrupts, say: Echo, echo: Echo) -> int | None:
    """``queuechat load --url URL`` in this process (Locust itself in a subprocess). None: go on."""
    from loadtests import EXIT_USAGE as LOAD_USAGE

    from . import _load

    say(f"{PREFIX} load test {load_s} s: {options.users} users, {options.rate:g} msgs/s in all "
        f"(Locust; results in {load_dir})")
    load_options = _load.LoadOptions(
        url=url, secret=None, allow_remote=False, users=options.users, spawn_rate=float(options.users),
        rate=options.rate, duration_s=load_s, workers=0, slo=_load.SHIPPED_SLO, out=load_dir.resolve(),
    )
    with interrupts.noticed():
        code = _load.run(load_options, echo=say)
    if interrupts.seen.is_set():
        raise KeyboardInterrupt  # `run` reports an interrupt as an invalid run; here it stops the demo
    outcome.load_code = code
    try:
        outcome.load_summary = json.loads((load_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        outcome.load_summary = None
    if outcome.load_summary is None and code == LOAD_USAGE:
        echo(f"{PREFIX} the load test could not be started; see {load_dir / 'locust.log'}")
        return EXIT_USAGE
    return None


def _reports(sim_dir: Path, load_dir: Path, outcome: _Outcome) -> None:
    from reports import ReportError, write_load_report, write_simulation_report

    if outcome.sim_history is not None:
        try:
            outcome.reports["simulation"] = write_simulation_report(sim_dir).html
        except (ReportError, OSError) as error:
            outcome.report_errors["simulation"] = str(error)
    if outcome.load_summary is not None:
        try:
            outcome.reports["load"] = write_load_report(load_dir).html
        except (ReportError, OSError) as error:
            outcome.report_errors["load"] = str(error)
    else:
        outcome.report_errors["load"] = "the load test left no summary.json"


def _conclude(options: DemoOptions, outcome: _Outcome, elapsed_s: float, echo: Echo) -> int:
    """The closing lines (always printed, --quiet or not): where the reports are, and the verdicts."""
    failures: list[str] = []
    echo(f"{PREFIX} finished in {elapsed_s:.0f} s; everything is in {options.out.resolve()}")
    for kind, label in (("simulation", "simulation report"), ("load", "load test report")):
        html = outcome.reports.get(kind)
        if html is not None:
            path = html.resolve()
            echo(f"  {label + ':':<19}{path}")
            echo(f"  {'':<19}{path.as_uri()}")
        else:
            reason = outcome.report_errors.get(kind, "not written")
            echo(f"  {label + ':':<19}NOT WRITTEN: {reason}")
            failures.append(f"the {label} could not be written")
    violations = outcome.sim_violations
    reason = f": {outcome.sim_reason}" if outcome.sim_reason else ""
    if outcome.sim_outcome == "failed":
        verdict = f"COULD NOT RUN{reason}"
        failures.append(f"the simulation could not run{reason}")
    elif outcome.sim_outcome == "incomplete":
        verdict = f"INCOMPLETE{reason}"
        failures.append(f"the simulation was incomplete{reason}")
    elif violations is None:
        verdict = "NOT CHECKED"
    elif violations == 0:
        verdict = "no violations"
    else:
        verdict = f"{violations} VIOLATION(S) (see the history's summary)"
        failures.append(f"the simulation found {violations} violation(s) of the rules")
    echo(f"  {'simulation:':<19}{verdict} ({outcome.sim_line})")
    echo(f"  {'load test:':<19}{_load_verdict(outcome, failures)}")
    if failures:
        echo(f"{PREFIX} FAILED: " + "; ".join(failures))
        return EXIT_FAILED
    echo(f"{PREFIX} all went well")
    return EXIT_OK


def _load_verdict(outcome: _Outcome, failures: list[str]) -> str:
    summary = outcome.load_summary
    if summary is None:
        failures.append(f"the load test gave no results (exit code {outcome.load_code})")
        return f"NO RESULTS (exit code {outcome.load_code})"
    results = summary.get("slo", {}).get("results", [])
    passed = sum(1 for result in results if result.get("passed"))
    verdict = summary.get("verdict")
    if verdict == "pass":
        return f"PASS ({passed} of {len(results)} SLO thresholds met)"
    if verdict == "slo_breach":
        failures.append("the load test breached its SLOs")
        breaches = [str(r.get("message")) for r in results if not r.get("passed")]
        return f"FAIL ({len(breaches)} SLO breach(es): {'; '.join(breaches[:3])})"
    problems = summary.get("validity", {}).get("problems", [])
    failures.append("the load run was invalid")
    return "INVALID RUN" + (f" ({problems[0]})" if problems else "")


def main(options: DemoOptions) -> None:
    """The command's body: run, then exit with its code (no traceback for what a user can cause)."""
    # SIGTERM takes Ctrl-C's path, so that the children are stopped in order then too. (The handler only
    # sends SIGINT: raising here could land inside Trio's run loop.)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))
    try:
        code = run(options, echo=_echo)
    except KeyboardInterrupt:  # a second Ctrl-C, or one in the last instants: the children are stopped
        _echo(f"{PREFIX} interrupted")
        code = EXIT_INTERRUPTED
    sys.exit(code)


def _echo(line: str) -> None:
    import click

    click.echo(line)
