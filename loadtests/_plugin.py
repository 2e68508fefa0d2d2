"""Locust wiring: the ``--qc-*`` options, per-process recording, histograms shipped to the master,
the results at the end of each test, and the process's exit code.

Roles, from Locust's runner:

- *local* (one process): records, and merges its own results;
- *worker*: records; every report to the master (Locust's ``report_to_master``
  event, every 3 s) carries its completed interval histograms, encoded; at
  the end the master asks for the rest (``queuechat_flush``) and the worker
  answers with its last intervals and its whole-run histograms
  (``queuechat_final``), and also writes them to ``workers/`` in the output
  folder;
- *master*: merges (adds the encoded histograms: lossless), prints progress,
  and at the end waits (bounded) for every worker's final answer before it
  writes the results.

When the test stops (Locust's ``test_stopping``, before the users stop),
each recording process ends every user's send schedule and waits for the
drain window (``--qc-drain``, bounded) so that late deliveries land; what
is still missing then becomes ``undelivered`` errors (see
:mod:`loadtests._users`). The run's duration is the send schedule's: it
ends when the test starts stopping, and neither the drain, nor waiting for
a lost worker, nor writing the results stretches it; progress lines stop
there too. A process asked to quit while its test runs (Ctrl-C, SIGTERM)
marks the run incomplete, in every output, with exit code 3.

Exit code of a Locust process run directly: the run's own (1 SLO breach,
2 usage error, 3 invalid or incomplete); a run that passed leaves it to
Locust, so that ``--exit-code-on-error`` still applies when requests
failed.

The master (or single process) also picks the users' seed when none is
given (``--qc-seed``) and hands it to the workers with the options, as it
hands them the run's id.

Locust's messaging is used as is (``runner.send_message`` /
``register_message`` and the report events): no second channel to keep
secure or alive.
"""

from __future__ import annotations

import itertools
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]  # gevent ships no type information
import locust
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from formats.hlog import MESSAGE_ENTRIES, new_histogram, value_at_percentiles
from formats.summary import write_json

from . import _meta, _report
from ._cpu import CpuSampler, assess
from ._hdr import Collector, Recorder
from ._settings import OPTIONS, Settings, from_options, host_problem
from ._slo import SloError, Threshold, load_thresholds
from ._state import LIVE_CLIENTS, ROLE_LOCAL, ROLE_MASTER, ROLE_WORKER, RecordingState, register_process_state

MSG_JOIN, MSG_FLUSH, MSG_FINAL = "queuechat_join", "queuechat_flush", "queuechat_final"
FLUSH_TIMEOUT_S = 15.0
# A run whose send schedule ended before its planned run time (``--run-time``) by more than this (or
# than INCOMPLETE_TOLERANCE of it) is incomplete: stopped early other than by Ctrl-C or SIGTERM.
INCOMPLETE_TOLERANCE_S = 2.0
INCOMPLETE_TOLERANCE = 0.1
LOCAL_SOURCE = "local"
PROGRESS_PREFIX = "queuechat progress:"


class ProcessState(RecordingState):
    """What this Locust process records or merges, for the test that runs now."""

    def __init__(self, environment: Environment, role: str) -> None:
        super().__init__(environment, role)
        self.collector: Collector | None = None
        self.thresholds: list[Threshold] = []
        self.run_id: str | None = None
        self.cpu: CpuSampler | None = None
        self.participants: set[str] = set()
        self.latest_cpu: dict[str, float] = {}
        self.exit_code: int | None = None
        self.summary: dict[str, Any] | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self._finishing = False
        self.host_problem: str | None = None
        self.environment_meta: dict[str, Any] = {}
        self.schedule_ended_at: float | None = None
        self.drain_waited_s: float | None = None
        self.interrupted = False
        self._progress: gevent.Greenlet | None = None

    # ------------------------------------------------------------------ starting

    def read_settings(self) -> None:
        """Options, checked; the SLO file read (master or single process)."""
        settings = from_options(self.environment.parsed_options)
        problems = settings.problems()
        thresholds: list[Threshold] = []
        if self.role != ROLE_WORKER and settings.slo:
            try:
                thresholds = load_thresholds(settings.slo)
            except SloError as error:
                problems.append(str(error))
        if problems:
            raise SettingsError("; ".join(problems))
        self.settings, self.thresholds = settings, thresholds

    def on_test_start(self, environment: Environment, **_: Any) -> None:
        self._kill_greenlets()
        try:
            self.read_settings()
        except SettingsError as error:  # typed into the web UI: say so, and keep the settings in force
            print(f"queuechat: {error}; keeping the previous settings", file=sys.stderr, flush=True)
        problem = host_problem(environment.host, allow_remote=self.settings.allow_remote)
        self.host_problem = problem
        if problem is not None and self.role != ROLE_WORKER:
            print(f"queuechat: {problem}", file=sys.stderr, flush=True)  # the users refuse to start
        self.recorder = Recorder(interval_s=self.settings.interval_s)
        self.started_at = time.time()
        self.exit_code = None
        self.summary = None
        self._finishing = False
        self.schedule_ended_at = None
        self.drain_waited_s = None
        self.interrupted = False
        self._said = set()
        self._user_numbers = itertools.count()
        options = environment.parsed_options
        if self.role == ROLE_WORKER:
            self.run_id = getattr(options, "queuechat_run_id", None)
            handed = getattr(options, "queuechat_seed", None)
            self.seed = self.settings.seed if self.settings.seed is not None else (
                int(handed) if handed is not None else secrets.randbits(32))
            self._start_cpu()
            if environment.runner is not None:
                environment.runner.send_message(MSG_JOIN, {"run": self.run_id})
            return
        self.run_id = secrets.token_hex(8)
        self.seed = self.settings.seed if self.settings.seed is not None else secrets.randbits(32)
        if options is not None:
            options.queuechat_run_id = self.run_id  # handed to the workers with each spawn
            options.queuechat_seed = self.seed  # likewise (a new one per test unless --qc-seed is given)
        self.environment_meta = _meta.environment(locust_version=locust.__version__)
        self.collector = Collector(interval_s=self.settings.interval_s)
        self.participants = set()
        self.latest_cpu = {}
        if self.role == ROLE_LOCAL:
            self._start_cpu()
        if self.settings.progress_s > 0:
            self._progress = gevent.spawn(self._progress_forever)
            self._greenlets.append(self._progress)

    def _start_cpu(self) -> None:
        self.cpu = CpuSampler()
        self._greenlets.append(gevent.spawn(self._sample_cpu_forever, self.cpu))

    def _sample_cpu_forever(self, sampler: CpuSampler) -> None:
        interval = self.settings.cpu_sample_s
        while True:
            gevent.sleep(interval)
            sampler.sample()

    def _kill_greenlets(self) -> None:
        current = gevent.getcurrent()
        greenlets, self._greenlets = self._greenlets, []
        gevent.killall([g for g in greenlets if g is not current], block=True, timeout=2.0)

    # ------------------------------------------------------------------ stopping

    def on_test_stopping(self, environment: Environment, **_: Any) -> None:
        """The send schedule ends now: the run's duration ends here, progress lines stop; the recording
        processes drain."""
        if self.schedule_ended_at is None:
            self.schedule_ended_at = time.time()
        progress, self._progress = self._progress, None
        if progress is not None and progress is not gevent.getcurrent():
            progress.kill(block=True, timeout=2.0)
        if self.role != ROLE_MASTER:
            self.drain()

    def drain(self) -> None:
        """End every user's schedule, wait (bounded) for what is in flight, then count what is missing
        as ``undelivered``. Neither when the run was interrupted (the run is incomplete anyway)."""
        clients = list(LIVE_CLIENTS)
        for client in clients:
            client.end_schedule()
        started = time.monotonic()
        deadline = started + (0.0 if self.interrupted else self.settings.drain_s)
        while time.monotonic() < deadline and any(client.pending for client in clients):
            gevent.sleep(0.01)
        self.drain_waited_s = round(time.monotonic() - started, 3)
        if self.interrupted:
            return  # what is in flight was cut by the interruption: counted as in_flight_at_end, not errors
        for client in clients:
            client.expire_pending("undelivered")

    # ------------------------------------------------------------------ recording side

    def _final_payload(self) -> dict[str, Any]:
        live = list(LIVE_CLIENTS)  # users still running when the master asks (headless --run-time)
        self.recorder.count("in_flight_at_end", sum(len(client.pending) for client in live))
        for client in live:
            client.stopping = True  # the schedule ends: nothing is sent after the measured window
        cpu = self.cpu
        verdict: dict[str, Any] = {}
        if cpu is not None:
            cpu.sample()
            verdict = assess(cpu.samples, limit_percent=self.settings.cpu_limit_percent,
                             sustained_fraction=self.settings.cpu_sustained_fraction,
                             min_sustained_s=self.settings.cpu_min_sustained_s).as_dict()
            wait = cpu.mean_wait_ms
            verdict["mean_wait_for_cpu_ms"] = round(wait, 3) if wait is not None else None
        payload = self.recorder.drain(final=True)
        payload["run"] = self.run_id
        payload["schedule_ended"] = self.schedule_ended_at
        payload["drain_waited_s"] = self.drain_waited_s
        payload["seed"] = self.seed  # the workers' own copy: each used the master's
        payload["cpu"] = verdict
        self._kill_greenlets()
        return payload

    def on_report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        if self.run_id is None or self.recorder.closed:
            return
        payload = self.recorder.drain()
        payload["run"] = self.run_id
        payload["cpu_now"] = self.cpu.latest if self.cpu is not None else None
        data["queuechat"] = payload

    def on_flush(self, environment: Environment, msg: Any, **_: Any) -> None:
        runner = environment.runner
        if runner is None or msg.data.get("run") != self.run_id or self.recorder.closed:
            return
        payload = self._final_payload()
        runner.send_message(MSG_FINAL, payload)
        if self.settings.out:
            client_id = str(getattr(runner, "client_id", "worker"))
            folder = Path(self.settings.out) / "workers"
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / f"{_report.safe_name(client_id)}.json", {"id": client_id, **payload})

    # ------------------------------------------------------------------ merging side

    def on_worker_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        payload = data.get("queuechat")
        if self.collector is None or not isinstance(payload, dict) or payload.get("run") != self.run_id:
            return
        self.participants.add(client_id)
        if isinstance(payload.get("cpu_now"), int | float):
            self.latest_cpu[client_id] = float(payload["cpu_now"])
        self.collector.add_report(client_id, payload)

    def on_join(self, environment: Environment, msg: Any, **_: Any) -> None:
        if msg.data.get("run") == self.run_id:
            self.participants.add(msg.node_id)

    def on_final(self, environment: Environment, msg: Any, **_: Any) -> None:
        if self.collector is not None and msg.data.get("run") == self.run_id:
            self.collector.add_final(msg.node_id, msg.data)

    def on_test_stop(self, environment: Environment, **_: Any) -> None:
        if self.collector is None or self._finishing or self.role == ROLE_WORKER:
            return
        self._finishing = True
        missing: list[str] = []
        if self.role == ROLE_LOCAL:
            self.collector.add_final(LOCAL_SOURCE, self._final_payload())
        else:
            runner = environment.runner
            expected = set(self.participants) | set(self.collector.sources)
            if runner is not None:
                for client_id in sorted(expected):
                    runner.send_message(MSG_FLUSH, {"run": self.run_id}, client_id=client_id)
            deadline = time.monotonic() + FLUSH_TIMEOUT_S
            while time.monotonic() < deadline and not expected <= set(self.collector.finals) | _lost(runner):
                gevent.sleep(0.02)  # a worker Locust has marked missing will not answer: no wait for it
            missing = sorted(expected - set(self.collector.finals))
        self._kill_greenlets()
        self._finish(missing)

    def _finish(self, missing: list[str]) -> None:
        assert self.collector is not None
        finished = time.time()
        ended = self.schedule_ended_at if self.schedule_ended_at is not None else finished
        options = self.environment.parsed_options
        run_time = getattr(options, "run_time", None)
        planned = float(run_time) if isinstance(run_time, int | float) and run_time > 0 else None
        duration = ended - self.started_at
        incomplete = None
        early = planned is not None and duration < planned - max(INCOMPLETE_TOLERANCE_S,
                                                                  INCOMPLETE_TOLERANCE * planned)
        if self.interrupted or early:
            how = "was interrupted" if self.interrupted else "stopped early"
            incomplete = (f"the run {how}: its send schedule ran {duration:.1f} s"
                          + (f" of the planned {planned:g} s" if planned is not None else ""))
        drained = [final.get("drain_waited_s") for final in self.collector.finals.values()]
        run = {
            "started": round(self.started_at, 3),
            "ended": round(ended, 3),
            "duration_s": round(duration, 3),
            "planned_duration_s": planned,
            "drain_s": self.settings.drain_s,
            "drain_waited_s": max((d for d in drained if isinstance(d, int | float)), default=None),
            "finished": round(finished, 3),
            "host": self.environment.host,
            "users": getattr(options, "num_users", None),
            "rate_per_user": self.settings.rate_per_user,
            "patients_per_room": self.settings.patients,
            "text_chars": self.settings.text_chars,
            "interval_s": self.settings.interval_s,
            "role": self.role,
            "workers": len(self.collector.finals) if self.role == ROLE_MASTER else 0,
        }
        summary, results, merged = _report.build(self.collector, run=run, thresholds=self.thresholds,
                                                 slo_file=self.settings.slo, missing_sources=missing,
                                                 meta={**self.environment_meta, "command": self.command()},
                                                 incomplete=incomplete)
        if self.host_problem is not None:  # nothing was loaded: a usage error, not a measurement
            summary["validity"]["problems"].insert(0, self.host_problem)
            summary["verdict"], summary["exit_code"] = "usage_error", _report.EXIT_USAGE
        out = self.out_dir()
        if out is not None:
            try:
                _report.write(out, self.collector, summary, results, merged)
            except OSError as error:
                print(f"queuechat: cannot write the results to {out}: {error.strerror or error}",
                      file=sys.stderr, flush=True)
                summary["validity"]["problems"].append("the results could not be written")
                summary["verdict"], summary["exit_code"] = "invalid", _report.EXIT_INVALID
        self.summary = summary
        self.exit_code = int(summary["exit_code"])
        print(_report.format_summary(summary), flush=True)
        if out is not None:
            print(f"queuechat results: {out}", flush=True)

    def command(self) -> dict[str, Any]:
        """The settings a reader of the results needs to know what load this was (``meta.command``)."""
        options = self.environment.parsed_options
        users = getattr(options, "num_users", None)
        run_time = getattr(options, "run_time", None)
        reference = bool(getattr(options, "qc_reference_server", False))
        return {
            "users": users,
            "spawn_rate": getattr(options, "spawn_rate", None),
            "rate_per_user": self.settings.rate_per_user,
            "rate": round(self.settings.rate_per_user * users, 6) if isinstance(users, int) else None,
            "duration_s": run_time if isinstance(run_time, int | float) and run_time else None,
            "workers": getattr(options, "expect_workers", None) if self.role == ROLE_MASTER else 0,
            "patients_per_room": self.settings.patients,
            "text_chars": self.settings.text_chars,
            "interval_s": self.settings.interval_s,
            "slo": self.settings.slo,
            "seed": self.seed,
            "server": _meta.REFERENCE_SERVER if reference else self.environment.host,
        }

    def out_dir(self) -> Path | None:
        if self.settings.out:
            return Path(self.settings.out)
        csv_prefix = getattr(self.environment.parsed_options, "csv_prefix", None)
        if csv_prefix:
            return Path(csv_prefix).parent
        return None

    def _progress_forever(self) -> None:
        interval = self.settings.progress_s
        while True:
            gevent.sleep(interval)
            self.print_progress()

    def print_progress(self) -> None:
        collector = self.collector
        if collector is None:
            return
        if self.role == ROLE_LOCAL and not self.recorder.closed:
            collector.add_report(LOCAL_SOURCE, self.recorder.drain())
            if self.cpu is not None and self.cpu.latest is not None:
                self.latest_cpu[LOCAL_SOURCE] = self.cpu.latest
        window = collector.take_window()
        delivered = new_histogram()
        for name in MESSAGE_ENTRIES:
            if name in window.histograms:
                delivered.add(window.histograms[name])
        runner = self.environment.runner
        users = runner.user_count if runner is not None else 0
        count = delivered.get_total_count()
        p50, p99 = value_at_percentiles(delivered, (50.0, 99.0))
        latency = (f"p50 {p50 / 1000:.2f}ms p99 {p99 / 1000:.2f}ms "
                   f"max {delivered.get_max_value() / 1000:.2f}ms") if count else "no deliveries"
        cpu = max(self.latest_cpu.values(), default=None)
        cpu_shown = f"{cpu:.0f}%" if cpu is not None else "-"
        print(f"{PROGRESS_PREFIX} {time.time() - self.started_at:5.1f}s users {users} | delivered {count} "
              f"| {latency} | errors {window.errors} | disconnects {window.disconnects} | "
              f"generator CPU demand {cpu_shown}", flush=True)

    def on_quitting(self, environment: Environment, **_: Any) -> None:
        """Locust is quitting. While a test runs (Ctrl-C, SIGTERM), that makes the run incomplete: Locust
        stops the test after this, and the results say so. The exit code: the run's own, but a pass
        leaves it to Locust (its ``--exit-code-on-error`` when requests failed)."""
        if self.role != ROLE_WORKER and self.collector is not None and not self._finishing:
            self.interrupted = True
            print("queuechat: interrupted; the run is incomplete", file=sys.stderr, flush=True)
        self._kill_greenlets()
        if self.role == ROLE_WORKER:
            environment.process_exit_code = 0  # the master's exit code is the run's
        elif self.interrupted:
            environment.process_exit_code = _report.EXIT_INVALID
        elif self.exit_code:
            environment.process_exit_code = self.exit_code


class SettingsError(ValueError):
    """Options that cannot be used."""


def _lost(runner: Any) -> set[str]:
    """Workers the master has marked missing (no heartbeat): they will send nothing more."""
    clients = getattr(runner, "clients", None)
    if clients is None:
        return set()
    return {str(client.id) for client in clients.all if getattr(client, "state", None) == "missing"}


def _listen(hook: Any, handler: Any) -> None:
    """``hook.add_listener(handler)``; Locust's EventHook is untyped."""
    hook.add_listener(handler)


def _add_options(parser: Any, **_: Any) -> None:
    defaults = Settings()
    for option, (name, kind, help_text) in OPTIONS.items():
        default = getattr(defaults, name)
        parser.add_argument(f"--qc-{option}", type=kind, default=None if default is None else default,
                           help=help_text + (f" Default: {default}." if default is not None else ""))
    parser.add_argument("--qc-allow-remote", action="store_true", default=False,
                        help="Allow a --host that is not loopback (127.0.0.1, ::1, localhost).")
    parser.add_argument("--qc-reference-server", action="store_true", default=False, include_in_web_ui=False,
                        help="Set by queuechat load: the --host is the reference server it started "
                             "(said so in summary.json's meta.command.server).")
    parser.add_argument("--qc-secret", default=None, is_secret=True,
                       help="The server's secret for clinician tokens; default: $QUEUECHAT_SECRET, "
                            "else the development secret.")


def _on_init(environment: Environment, runner: Any = None, **_: Any) -> None:
    # libev's clock is cached and was last read before Locust imported the locust file: a timer set from
    # it (Locust's --run-time) fires early by the import time. Read it now, before Locust sets that timer.
    gevent.get_hub().loop.update_now()
    if isinstance(runner, MasterRunner):
        role = ROLE_MASTER
    elif isinstance(runner, WorkerRunner):
        role = ROLE_WORKER
    else:
        role = ROLE_LOCAL
    state = ProcessState(environment, role)
    register_process_state(environment, state)
    if role != ROLE_WORKER:
        try:
            state.read_settings()
        except SettingsError as error:
            print(f"queuechat: {error}", file=sys.stderr, flush=True)
            sys.exit(_report.EXIT_USAGE)
    _listen(environment.events.test_start, state.on_test_start)
    _listen(environment.events.test_stopping, state.on_test_stopping)
    _listen(environment.events.test_stop, state.on_test_stop)
    _listen(environment.events.quitting, state.on_quitting)
    if role == ROLE_MASTER:
        runner.register_message(MSG_JOIN, state.on_join)
        runner.register_message(MSG_FINAL, state.on_final)
        _listen(environment.events.worker_report, state.on_worker_report)
    elif role == ROLE_WORKER:
        runner.register_message(MSG_FLUSH, state.on_flush)
        _listen(environment.events.report_to_master, state.on_report_to_master)


_listen(events.init_command_line_parser, _add_options)
_listen(events.init, _on_init)
