"""``queuechat load``: run the Locust load test (``loadtests/locustfile.py``) and gate on SLOs.

This process imports neither Trio nor Locust (gevent): the reference server,
when it is wanted, runs as ``queuechat serve`` in a process of its own, and
Locust runs as ``python -m locust`` (with ``--processes N`` for workers).
Here: check the options, start the server (or check the one given), read
its limits from a clinician's welcome, run Locust with a deadline, show
its progress lines, print the summary it wrote, and return the exit code:

    0 pass, 1 SLO breach (fail), 2 usage or connection error,
    3 invalid run, or incomplete run (interrupted, or Locust overran its deadline).

An interrupted run (Ctrl-C, SIGTERM) stops Locust, which writes its results
marked incomplete; they are shown, and the exit code is 3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import websocket

import loadtests
from formats import duration
from formats.summary import SUMMARY_FILE
from loadtests import (
    DEFAULT_DRAIN_S,
    EXIT_INVALID,
    EXIT_USAGE,
    Settings,
    SloError,
    format_summary,
    load_thresholds,
)
from reference_server.protocol import (
    DEVELOPMENT_SECRET,
    LOAD_TEST_RATE_BURST,
    LOAD_TEST_RATE_PER_S,
    WS_PATH,
    EndpointError,
    UrlFault,
    check_ws_url,
    clinician_token,
)

from .children import die_with_parent

PROGRESS_PREFIXES = ("queuechat progress:", "queuechat: ")
SERVER_READY = re.compile(r"ready on (ws://\S+)")
SERVER_START_TIMEOUT_S = 20.0
PREFLIGHT_TIMEOUT_S = 5.0
# Beyond the run itself: Locust's start (imports, workers connecting), spawning, the final flush, exit.
LOCUST_GRACE_S = 90.0
# Per generator process: up to this many connections, libev's select backend (timers within ~0.2 ms);
# above it, gevent's default epoll (timers up to 1 ms late), since select scans every connection on
# each wake-up: at 150 connections it cost 10-25 % more CPU per message (benchmarks/README.md).
SELECT_MAX_CONNECTIONS = 64
SHIPPED_LOCUSTFILE = Path(loadtests.__file__).resolve().parent / "locustfile.py"
SHIPPED_SLO = Path(loadtests.__file__).resolve().parent / "slo.toml"


class LoadUsageError(Exception):
    """Bad options or an unreachable / refusing server: exit code 2 with this message."""


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    url: str | None
    secret: str | None
    allow_remote: bool
    users: int
    spawn_rate: float
    rate: float
    duration_s: int
    workers: int
    slo: Path | None
    out: Path
    patients: int = 2
    text_chars: int = 64
    locustfile: Path = SHIPPED_LOCUSTFILE
    progress_s: float = 3.0
    seed: int | None = None  # the users' start offsets; None: :func:`run` picks one (and says which)
    drain_s: float = DEFAULT_DRAIN_S  # after the send schedule: late deliveries still count


# --------------------------------------------------------------------------- checks


def parse_whole_seconds(text: str) -> int:
    """``30``, ``30s``, ``1.5m``, ``2m30``, ``1h`` (formats.duration) -> whole seconds, at least 1.

    Locust's run time counts whole seconds: a fraction rounds up (``2.5s`` runs 3 s)."""
    try:
        seconds = duration.parse_duration(text)
    except duration.DurationError:
        raise LoadUsageError(f"--duration {text!r}: use seconds or a span such as 30s, 1.5m, 2m30, "
                             "1h30m") from None
    if seconds < 1:
        raise LoadUsageError("--duration must be at least 1 second")
    return duration.whole_seconds(seconds)


def check_url(url: str, *, allow_remote: bool) -> str:
    """A ``ws://`` or ``wss://`` URL; a non-loopback host only with ``--allow-remote``."""
    try:
        check_ws_url(url, allow_remote=allow_remote)
    except EndpointError as error:
        if error.fault is UrlFault.REMOTE:
            raise LoadUsageError(f"refusing to send load to non-loopback host {error.host!r}: load tests "
                                 "target 127.0.0.1 or ::1; pass --allow-remote if this server is yours to "
                                 "load") from None
        raise LoadUsageError(f"--url {error}") from None
    return url


def check_options(options: LoadOptions) -> None:
    if options.url is not None:
        check_url(options.url, allow_remote=options.allow_remote)
    problems = Settings(rate_per_user=options.rate / options.users, patients=options.patients,
                        text_chars=options.text_chars, secret=options.secret or DEVELOPMENT_SECRET,
                        drain_s=options.drain_s).problems()
    if problems:
        raise LoadUsageError("; ".join(p.replace("--qc-rate", "--rate").replace("--qc-drain", "--drain")
                                       for p in problems))
    if options.slo is not None:
        try:
            load_thresholds(options.slo)
        except SloError as error:
            raise LoadUsageError(str(error)) from None
    if not options.locustfile.is_file():
        raise LoadUsageError(f"--locustfile {str(options.locustfile)!r} does not exist")


# --------------------------------------------------------------------------- the server


@contextlib.contextmanager
def reference_server(*, secret: str | None, log_path: Path) -> Iterator[str]:
    """``queuechat serve`` on loopback, port 0, request limits raised for load; stopped on exit."""
    command = [sys.executable, "-m", "queuechat", "serve", "--host", "127.0.0.1", "--port", "0",
               "--rate-per-s", f"{LOAD_TEST_RATE_PER_S:g}", "--rate-burst", str(LOAD_TEST_RATE_BURST),
               "--stats-interval-s", "off", "--log-level", "warning"]
    env = _child_env(secret)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(die_with_parent(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=log, env=env, text=True, start_new_session=True)
        try:
            url = _wait_for_ready(process, SERVER_START_TIMEOUT_S)
            yield url
        finally:
            _stop(process, timeout_s=5.0)


def _wait_for_ready(process: subprocess.Popen[str], timeout_s: float) -> str:
    lines: queue.Queue[str | None] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            raise LoadUsageError(f"the reference server did not start (exit code {process.wait()}); "
                                 "see server.log in the results folder")
        match = SERVER_READY.search(line)
        if match:
            return match.group(1)
    raise LoadUsageError(f"the reference server did not say it was ready within {timeout_s:g} s")


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _stop(process: subprocess.Popen[Any], *, timeout_s: float) -> None:
    """SIGTERM, then after ``timeout_s`` SIGKILL to the process group we started it in."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session: Locust's workers too
        process.wait(timeout=timeout_s)


def _child_env(secret: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if secret is not None:
        env["QUEUECHAT_SECRET"] = secret  # not on the command line, where ps shows it
    return env


# --------------------------------------------------------------------------- preflight


def read_limits(url: str, secret: str, *, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> dict[str, Any]:
    """Say hello as a clinician of a fresh room and return the welcome's ``limits``.

    Raises :class:`LoadUsageError` with a clear message when the server cannot
    be reached, is not a queue-chat server, or refuses the secret.
    """
    room = f"lt-preflight-{secrets.token_hex(4)}"
    try:
        ws = websocket.create_connection(url, timeout=timeout_s, suppress_origin=True)
    except Exception as error:
        raise LoadUsageError(f"cannot connect to {url}: {_connect_reason(error)}") from None
    try:
        ws.send(json.dumps({"type": "hello", "role": "clinician", "room": room,
                            "token": clinician_token(secret, room), "ref": "preflight"}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            raw = ws.recv()
            try:
                frame = json.loads(raw)
            except (TypeError, ValueError):
                raise LoadUsageError(f"{url} does not speak the queue-chat protocol") from None
            if not isinstance(frame, dict):
                continue
            if frame.get("type") == "welcome":
                limits = frame.get("limits")
                return limits if isinstance(limits, dict) else {}
            if frame.get("type") == "error":
                code = frame.get("code")
                if code == "unauthorized":
                    raise LoadUsageError("the server refused the clinician token (unauthorized): give the "
                                         "server's secret with --secret or QUEUECHAT_SECRET")
                raise LoadUsageError(f"the server answered the clinician's hello with error {code}")
        raise LoadUsageError(f"no welcome from {url} within {timeout_s:g} s")
    except LoadUsageError:
        raise
    except Exception as error:
        raise LoadUsageError(f"{url} closed or failed before its welcome: {_connect_reason(error)}") from None
    finally:
        with contextlib.suppress(Exception):
            ws.close(timeout=1)


def _connect_reason(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    if status is not None:
        return f"HTTP {status} instead of a WebSocket upgrade (is the path {WS_PATH}?)"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, TimeoutError | websocket.WebSocketTimeoutException):
        return "timed out"
    if isinstance(error, websocket.WebSocketConnectionClosedException):
        return "the connection was closed"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return type(error).__name__


def plan_warnings(limits: dict[str, Any], options: LoadOptions, action_interval_s: float = 1.0) -> list[str]:
    """Where the planned load would pass the server's limits (R41-R44)."""
    warnings = []
    per_user = options.rate / options.users
    clinician_rps = per_user / 2 + 2.0 / action_interval_s  # its sends, and its actions with a margin
    patient_rps = per_user / 2 / options.patients
    rate, burst = limits.get("rate_per_s"), limits.get("rate_burst")
    if isinstance(rate, int | float) and clinician_rps > rate:
        warnings.append(f"each clinician connection will send about {clinician_rps:g} requests/s, over the "
                        f"server's rate_per_s {rate:g} (burst {burst}): expect rate_limited errors")
    elif isinstance(rate, int | float) and patient_rps > rate:
        warnings.append(f"each patient connection will send about {patient_rps:g} requests/s, over the "
                        f"server's rate_per_s {rate:g}: expect rate_limited errors")
    max_patients = limits.get("max_patients_per_room")
    if isinstance(max_patients, int) and options.patients > max_patients:
        warnings.append(f"{options.patients} patients per room is over the server's max_patients_per_room "
                        f"{max_patients}: expect capacity errors")
    max_rooms = limits.get("max_rooms")
    if isinstance(max_rooms, int) and options.users > max_rooms:
        warnings.append(f"{options.users} users (one room each) is over the server's max_rooms {max_rooms}")
    max_text = limits.get("max_text_chars")
    if isinstance(max_text, int) and options.text_chars > max_text:
        warnings.append(f"{options.text_chars}-character messages are over the server's max_text_chars "
                        f"{max_text}: expect too_large errors")
    return warnings


# --------------------------------------------------------------------------- Locust


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def locust_command(options: LoadOptions, url: str) -> list[str]:
    per_user = options.rate / options.users
    command = [
        sys.executable, "-m", "locust", "-f", str(options.locustfile), "--headless", "--host", url,
        "--users", str(options.users), "--spawn-rate", f"{options.spawn_rate:g}",
        "--run-time", f"{options.duration_s}s", "--stop-timeout", "0", "--only-summary",
        "--csv", str(options.out / "locust"), "--json-file", str(options.out / "locust"),
        "--loglevel", "INFO",
        "--qc-rate", repr(per_user), "--qc-patients", str(options.patients),
        "--qc-text-chars", str(options.text_chars), "--qc-out", str(options.out),
        "--qc-progress", f"{options.progress_s:g}", "--qc-drain", f"{options.drain_s:g}",
        # The run's exit code is its summary's (SLOs decide about errors), not Locust's error rule.
        "--exit-code-on-error", "0",
    ]
    if options.slo is not None:
        command += ["--qc-slo", str(options.slo)]
    if options.seed is not None:
        command += ["--qc-seed", str(options.seed)]
    if options.url is None:
        command += ["--qc-reference-server"]  # url is the server run() started: said so in the summary
    if options.allow_remote:
        command += ["--qc-allow-remote"]
    if options.workers > 0:
        port = _free_port()
        command += ["--processes", str(options.workers), "--master-bind-host", "127.0.0.1",
                    "--master-bind-port", str(port), "--master-host", "127.0.0.1", "--master-port", str(port)]
    return command


def gevent_backend(options: LoadOptions) -> str | None:
    """libev's ``select`` backend, unless the generator processes hold many connections (or it is set).

    gevent's default (epoll) wakes timers up to a millisecond late (epoll counts in
    milliseconds), and the message schedule's lateness counts in the corrected latency;
    ``select`` wakes within about 0.2 ms, but scans every connection on each wake-up.
    """
    if os.environ.get("GEVENT_BACKEND"):
        return None
    per_process = -(-options.users // max(1, options.workers)) * (1 + options.patients)
    return "select" if per_process <= SELECT_MAX_CONNECTIONS else None


def run_locust(options: LoadOptions, url: str, secret: str, *, echo: Any) -> int:
    """Run Locust to the end (bounded); show its progress lines; everything it says goes to locust.log."""
    command = locust_command(options, url)
    env = _child_env(secret)
    backend = gevent_backend(options)
    if backend is not None:
        env["GEVENT_BACKEND"] = backend
    deadline_s = options.duration_s + options.drain_s + LOCUST_GRACE_S
    log_path = options.out / "locust.log"
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(die_with_parent(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True)
        timed_out = threading.Event()

        def on_deadline() -> None:
            timed_out.set()
            _stop(process, timeout_s=10.0)

        watchdog = threading.Timer(deadline_s, on_deadline)
        watchdog.daemon = True
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                if line.startswith(PROGRESS_PREFIXES):
                    echo(line.rstrip("\n"))
            code = process.wait()
        except KeyboardInterrupt:
            echo("queuechat load: interrupted; stopping Locust (it writes the results, marked incomplete)")
            watchdog.cancel()
            try:
                _stop(process, timeout_s=10.0)
                for line in process.stdout or ():  # what it says while it stops, the summary included
                    log.write(line)
            except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            raise
        finally:
            watchdog.cancel()
    if timed_out.is_set():
        echo(f"queuechat load: Locust did not finish within {deadline_s:g} s; stopped it")
        return EXIT_INVALID
    return code


# --------------------------------------------------------------------------- the whole command


def run(options: LoadOptions, *, echo: Any = print) -> int:
    """Everything ``queuechat load`` does; returns the exit code."""
    try:
        check_options(options)
        options.out.mkdir(parents=True, exist_ok=True)
    except LoadUsageError as error:
        echo(f"queuechat load: {error}")
        return EXIT_USAGE
    except OSError as error:
        echo(f"queuechat load: cannot create {options.out}: {error.strerror or error}")
        return EXIT_USAGE
    secret = options.secret or os.environ.get("QUEUECHAT_SECRET") or DEVELOPMENT_SECRET
    if options.seed is None:  # chosen here so that the start line can say it: a run can be repeated
        options = dataclasses.replace(options, seed=secrets.randbits(32))
    summary_path = options.out / SUMMARY_FILE
    with contextlib.suppress(FileNotFoundError):
        summary_path.unlink()  # a summary left from an earlier run in this folder is not this run's
    try:
        with contextlib.ExitStack() as stack:
            if options.url is None:
                url = stack.enter_context(reference_server(secret=options.secret,
                                                           log_path=options.out / "server.log"))
                echo(f"queuechat load: reference server on {url} (request limits raised for load; "
                     "log in server.log)")
            else:
                url = options.url
            limits = read_limits(url, secret)
            if options.url is not None:
                for warning in plan_warnings(limits, options):
                    echo(f"queuechat load: warning: {warning}")
            echo(f"queuechat load: {options.users} users (rooms of 1 clinician + {options.patients} "
                 "patients), "
                 f"{options.rate:g} msgs/s in all, for {options.duration_s} s"
                 + (f", {options.workers} worker processes" if options.workers else ", one process")
                 + f"; seed {options.seed}; results in {options.out}")
            code = run_locust(options, url, secret, echo=echo)
    except LoadUsageError as error:
        echo(f"queuechat load: {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        echo("queuechat load: interrupted; the run is incomplete")
        with contextlib.suppress(OSError, ValueError):
            echo(format_summary(json.loads(summary_path.read_text(encoding="utf-8"))))
        return EXIT_INVALID
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        last = [line.strip() for line in _tail(options.out / "locust.log", 40) if line.strip()]
        echo(f"queuechat load: Locust ended (exit code {code}) without results"
             + (f"; its last words: {last[-1]}" if last else "") + f"; see {options.out / 'locust.log'}")
        return EXIT_USAGE if code == EXIT_USAGE else EXIT_INVALID
    echo(format_summary(summary))
    echo(f"queuechat load: results in {options.out} (summary.json, junit.xml, latency.hlog, timeline.csv, "
         "*.hgrm, locust_*.csv, locust.json, locust.log)")
    result = int(summary.get("exit_code", EXIT_INVALID))
    if code != result:
        echo(f"queuechat load: note: Locust itself exited with {code}; see locust.log")
    return result


def _tail(path: Path, count: int) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-count:]
    except OSError:
        return []
