"""The ``queuechat`` command. Each subcommand imports its machinery only when it runs (the imports
inside the command functions below), so that the load tests' gevent never shares a process with Trio
and ``queuechat --help`` starts without Trio, Locust or matplotlib; the subcommand modules never import
this one back.

Exit codes: 0 success, 1 runtime failure, 2 usage error (``queuechat load``: 0 pass,
1 SLO breach, 2 usage or connection error, 3 invalid or incomplete run; ``queuechat report --compare``:
3 also for runs that are not comparable).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from formats.duration import DurationError, parse_duration
from reference_server.protocol import DEVELOPMENT_SECRET, ROOM_PATTERN, Limits, is_loopback_host

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _LimitValue(click.ParamType):  # type: ignore[type-arg]
    """A positive number, or ``off`` for a limit that can be switched off."""

    name = "number|off"

    def __init__(self, kind: type, can_be_off: bool) -> None:
        self.kind = kind
        self.can_be_off = can_be_off

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, int | float):
            return value
        text = str(value).strip().lower()
        if text == "off":
            if self.can_be_off:
                return None
            self.fail("this limit cannot be switched off", param, ctx)
        try:
            number = self.kind(text)
        except ValueError:
            self.fail(f"{value!r} is not a {'whole ' if self.kind is int else ''}number", param, ctx)
        if not number > 0:
            self.fail(f"{value!r} must be greater than 0", param, ctx)
        if number == float("inf"):  # JSON has no infinity: the welcome would show it as null (off)
            self.fail(f"{value!r} is not a finite number (use 'off' where a limit can be off)", param, ctx)
        return number


# option name -> (Limits field, type, can be off)
_LIMIT_OPTIONS: dict[str, tuple[type, bool]] = {
    "max_text_chars": (int, False),
    "max_frame_bytes": (int, False),
    "max_queued_frames": (int, False),
    "max_queued_bytes": (int, False),
    "rate_per_s": (float, True),
    "rate_burst": (int, True),
    "max_patients_per_room": (int, True),
    "max_rooms": (int, True),
    "hello_timeout_s": (float, True),
    "ping_interval_s": (float, True),
    "ping_timeout_s": (float, True),
}


def _limit_options(func: Any) -> Any:
    defaults = Limits()
    for name, (kind, can_be_off) in reversed(_LIMIT_OPTIONS.items()):
        default = getattr(defaults, name)
        func = click.option(
            "--" + name.replace("_", "-"),
            name,
            type=_LimitValue(kind, can_be_off),
            default=None,
            show_default=False,
            help=f"Limit {name} (default {default if default is not None else 'off'})"
            + ("; 'off' switches it off." if can_be_off else "."),
        )(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="queuechat")
def main() -> None:
    """queuechat: reference server, simulator and load tests for patient-queue chat."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port; 0 picks a free one.")
@click.option("--secret", envvar="QUEUECHAT_SECRET", default=None,
              help="Secret for clinician tokens (or QUEUECHAT_SECRET). Without it, a development "
                   "secret is used, on loopback only.")
@_limit_options
@click.option("--stats-interval-s", type=_LimitValue(float, True), default=60.0, show_default=True,
              help="Seconds between statistics log lines; 'off' for none.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Structured logs (JSON lines) go to stderr.")
def serve(host: str, port: int, secret: str | None, stats_interval_s: float | None, log_level: str,
          **limit_values: Any) -> None:
    """Run the reference server until SIGINT or SIGTERM."""
    changes = {name: value for name, value in limit_values.items() if value is not None}
    # An explicit "off" arrives as None too: tell them apart through the raw parameter source.
    ctx = click.get_current_context()
    for name in limit_values:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT" and limit_values[name] is None:
            changes[name] = None
    try:
        limits = Limits(**changes)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if secret is None:
        if not is_loopback_host(host):
            raise click.UsageError(
                f"refusing the development secret on non-loopback host {host!r}: "
                "give --secret or set QUEUECHAT_SECRET"
            )
        secret = DEVELOPMENT_SECRET
        click.echo("queuechat serve: using the development secret (loopback only; "
                   "set --secret or QUEUECHAT_SECRET for anything else)")
    elif not secret:
        raise click.UsageError("the secret must not be empty")

    from ._serve import run_server

    sys.exit(run_server(host=host, port=port, secret=secret, limits=limits,
                        stats_interval_s=stats_interval_s, log_level=log_level))


@main.command()
@click.argument("room")
@click.option("--secret", envvar="QUEUECHAT_SECRET", default=None,
              help="The server's secret (or QUEUECHAT_SECRET); default: the development secret.")
@click.option("--console", "console", is_flag=True,
              help="Print a link to the server's clinician console for ROOM (the token in the URL fragment, "
                   "which a browser never sends), not the bare token.")
@click.option("--url", default=None, metavar="ws://HOST:PORT/v1/ws",
              help="With --console: the server's WebSocket endpoint (default ws://127.0.0.1:8765/v1/ws).")
def token(room: str, secret: str | None, console: bool, url: str | None) -> None:
    """Print the clinician token for ROOM (with --console: a ready console link)."""
    from reference_server.protocol import clinician_token

    if not re.fullmatch(ROOM_PATTERN.strip("^$"), room):
        raise click.UsageError(f"room must match {ROOM_PATTERN.strip('^$')}")
    if secret is not None and not secret:
        raise click.UsageError("the secret must not be empty")
    value = clinician_token(secret if secret is not None else DEVELOPMENT_SECRET, room)
    if not console:
        if url is not None:
            raise click.UsageError("--url goes with --console")
        click.echo(value)
        return
    from ._links import LinkError, console_link

    try:
        click.echo(console_link(url or "ws://127.0.0.1:8765/v1/ws", room, value))
    except LinkError as error:
        raise click.UsageError(f"--url {error}") from None


@main.command(context_settings={"show_default": True})
@click.argument("scenario", default="demo")
@click.option("--room", default="play", help="The room the patients check into.")
@click.option("--host", default="127.0.0.1", help="Loopback address to listen on.")
@click.option("--port", default=8765, type=click.IntRange(0, 65535), help="TCP port; 0 picks a free one.")
@click.option("--duration", default="30m",
              help="Stop by itself after this long (from 1s to 8h): 90s, 1.5m, 30m, 1h30m.")
@click.option("--pace", default=3.0, type=click.FloatRange(0.1, 100.0),
              help="Multiplies every patient time of the scenario (arrivals, message intervals, patience, "
                   "replies): 3 is three times slower than the scenario, for a person at the keyboard.")
@click.option("--max-patients", default=6, type=click.IntRange(1, 100),
              help="Patients present at once, at most.")
@click.option("--seed", default=None, type=click.IntRange(0, 2**63 - 1), show_default=False,
              help="The patients' random seed (default: the scenario's).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
              help="The server's structured logs (JSON lines) on stderr.")
def play(scenario: str, room: str, host: str, port: int, duration: str, pace: float, max_patients: int,
         seed: int | None, log_level: str) -> None:
    """Play the clinician: start the reference server on loopback, print the console link, and let the
    patients of SCENARIO (a simulator scenario) arrive and write; there is no simulated clinician.

    Runs until Ctrl-C, or --duration (default 30m). Exit codes: 0 stopped, 1 the port cannot be bound,
    2 usage error.
    """
    from simulator import ScenarioError, load_scenario

    from ._play import MAX_DURATION_S, PlayOptions
    from ._play import play as run_play

    if not re.fullmatch(ROOM_PATTERN.strip("^$"), room):
        raise click.UsageError(f"--room must match {ROOM_PATTERN.strip('^$')}")
    if not is_loopback_host(host):
        raise click.UsageError(f"--host {host!r}: play runs the server with the development secret, on a "
                               "loopback address only")
    try:
        duration_s = parse_duration(duration)
    except DurationError:
        raise click.UsageError(f"--duration {duration!r}: use seconds or a span such as 90s, 1.5m, 30m, "
                               "1h30m") from None
    if not 1 <= duration_s <= MAX_DURATION_S:
        raise click.UsageError(f"--duration {duration!r}: from 1s to 8h")
    try:
        loaded = load_scenario(scenario)
    except ScenarioError as error:
        raise click.UsageError(str(error)) from None
    sys.exit(run_play(PlayOptions(
        scenario=loaded, room=room, host=host, port=port, duration_s=float(duration_s), pace=pace,
        max_patients=max_patients, seed=seed if seed is not None else loaded.seed, log_level=log_level,
    ), echo=lambda line: click.echo(line)))


@main.command(context_settings={"show_default": True})
@click.option("--url", default=None, help="Server to load, ws://HOST:PORT/v1/ws. Without it, the reference "
              "server is started on loopback with request limits raised for load, and stopped after.")
@click.option("--secret", envvar="QUEUECHAT_SECRET", default=None, show_default=False,
              help="The server's secret for clinician tokens (or QUEUECHAT_SECRET); default: the "
                   "development secret.")
@click.option("--allow-remote", is_flag=True, help="Allow a --url whose host is not loopback.")
@click.option("--users", default=10, type=click.IntRange(1, 100_000),
              help="Users; each is one room: a clinician and its patients.")
@click.option("--spawn-rate", default=None, type=click.FloatRange(min=0.01), show_default=False,
              help="Users started per second (default: all within a second).")
@click.option("--rate", default=100.0, type=click.FloatRange(min=0.0, min_open=True),
              help="Messages per second in all, both directions, on a schedule (open model).")
@click.option("--duration", default="30s",
              help="Run time: seconds, or a span such as 30s, 1.5m, 2m30 (whole seconds, rounded up).")
@click.option("--workers", default=0, type=click.IntRange(0, 256),
              help="Locust worker processes on this machine (master/worker mode); 0 runs one process.")
@click.option("--slo", type=click.Path(dir_okay=False, path_type=Path), default=None, show_default=False,
              help="SLO thresholds (TOML, k6-like); default: loadtests/slo.toml.")
@click.option("--no-slo", is_flag=True, help="Gate on nothing but the run's validity.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, show_default=False,
              help="Results folder; default: runs/load-<date-time>.")
@click.option("--patients-per-room", "patients", default=2, type=click.IntRange(1, 500),
              help="Patients per room.")
@click.option("--text-chars", default=64, type=click.IntRange(1, 4096), help="Characters per message.")
@click.option("--locustfile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              show_default=False, help="Another Locust file (one that imports loadtests.locustfile's users).")
@click.option("--seed", default=None, type=click.IntRange(min=0), show_default=False,
              help="Seed for the users' random start offsets (the same seed, users and workers give the same "
                   "schedule); default: a random one, shown and kept in summary.json.")
@click.option("--drain", "drain_s", default=3.0, type=click.FloatRange(0, 60), metavar="SECONDS",
              help="After the send schedule ends, how long late deliveries still count (no new sends); "
                   "every message missing then is an 'undelivered' error.")
def load(url: str | None, secret: str | None, allow_remote: bool, users: int, spawn_rate: float | None,
         rate: float, duration: str, workers: int, slo: Path | None, no_slo: bool, out: Path | None,
         patients: int, text_chars: int, locustfile: Path | None, seed: int | None, drain_s: float) -> None:
    """Load a server with Locust, measure message delivery and request latencies, gate on SLOs.

    Exit codes: 0 pass, 1 SLO breach (fail), 2 usage or connection error, 3 invalid run (a load
    generator was short of CPU or sent under 90 % of its schedule, users stopped before the end,
    nothing could be measured) or incomplete run (interrupted, or stopped before its run time).
    """
    import time

    from ._load import SHIPPED_LOCUSTFILE, SHIPPED_SLO, LoadOptions, LoadUsageError, parse_whole_seconds, run

    try:
        duration_s = parse_whole_seconds(duration)
    except LoadUsageError as error:
        raise click.UsageError(str(error)) from None
    if slo is not None and no_slo:
        raise click.UsageError("--slo and --no-slo exclude each other")
    if secret is not None and not secret:
        raise click.UsageError("the secret must not be empty")
    options = LoadOptions(
        url=url, secret=secret, allow_remote=allow_remote, users=users,
        spawn_rate=spawn_rate if spawn_rate is not None else float(users), rate=rate, duration_s=duration_s,
        workers=workers, slo=None if no_slo else (slo or SHIPPED_SLO).resolve(),
        out=(out or Path("runs") / time.strftime("load-%Y%m%d-%H%M%S")).resolve(),
        patients=patients, text_chars=text_chars,
        locustfile=(locustfile or SHIPPED_LOCUSTFILE).resolve(), seed=seed, drain_s=drain_s,
    )
    sys.exit(run(options, echo=lambda line: click.echo(line)))


@main.command()
@click.option("--url", default=None, help="The server's WebSocket endpoint, e.g. ws://127.0.0.1:8765/v1/ws.")
@click.option("--secret", envvar="QUEUECHAT_SECRET", default=None,
              help="The server's clinician-token secret (or QUEUECHAT_SECRET).")
@click.option("--cases", "cases", multiple=True, metavar="GLOB",
              help="Run only cases whose id matches (repeat, or separate with commas), e.g. 'R11*'.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out cases whose id matches.")
@click.option("--known-failures", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File of case ids or globs (one a line, then a reason) whose failures don't fail the run.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for result.json and report.html.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write JUnit XML here.")
@click.option("--allow-remote", is_flag=True, help="Allow a server that is not on a loopback address.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Cases run at once.")
@click.option("--case-timeout-s", type=click.FloatRange(1, 600), default=20.0, show_default=True,
              help="Time allowed to each case (cases that wait for a server timer get more).")
@click.option("--max-connections", type=click.IntRange(3, 20000), default=100, show_default=True,
              help="Connections one case may open; capacity cases needing more are skipped.")
@click.option("--max-wait-s", type=click.FloatRange(0, 600), default=12.0, show_default=True,
              help="Longest server timer a case waits for; timer cases needing more are skipped.")
@click.option("--grace-s", type=click.FloatRange(0.05, 30), default=1.0, show_default=True,
              help="How long a missing frame is waited for after the ping barrier.")
@click.option("--connect-timeout-s", type=click.FloatRange(0.1, 120), default=5.0, show_default=True,
              help="How long the preflight waits for the connection, WebSocket handshake and welcome.")
@click.option("--list", "list_only", is_flag=True, help="List the cases (with --cases/--exclude) and exit.")
@click.option("--quiet", is_flag=True, help="Print only the summary lines.")
def conformance(url: str | None, secret: str | None, cases: tuple[str, ...], exclude: tuple[str, ...],
                known_failures: Path | None, out_dir: Path | None, junit: Path | None, allow_remote: bool,
                concurrency: int, case_timeout_s: float, max_connections: int, max_wait_s: float,
                grace_s: float, connect_timeout_s: float, list_only: bool, quiet: bool) -> None:
    """Check a server against the protocol contract, case by case (docs/conformance.md).

    Exit codes: 0 no unexpected failure (known failures allowed), 1 an unexpected failure,
    2 a usage or connection error.
    """
    from . import _conformance

    if list_only:
        sys.exit(_conformance.list_cases(cases, exclude))
    if url is None:
        raise click.UsageError("--url is required (the server's ws:// endpoint)")
    if secret is None:
        raise click.UsageError("--secret (or QUEUECHAT_SECRET) is required: the clinician-token secret")
    _conformance.main(_conformance.ConformanceOptions(
        url=url, secret=secret, cases=cases, exclude=exclude, known_failures=known_failures, out=out_dir,
        junit=junit, allow_remote=allow_remote, concurrency=concurrency, case_timeout_s=case_timeout_s,
        max_connections=max_connections, max_wait_s=max_wait_s, grace_s=grace_s,
        connect_timeout_s=connect_timeout_s, quiet=quiet,
    ))


@main.command()
@click.argument("scenario")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None,
              help="Override the scenario's seed.")
@click.option("--duration", default=None, metavar="D",
              help="Cap the run (virtual or real), e.g. 90s, 1.5m, 2m30, 2h; the healing phase shrinks to "
              "fit.")
@click.option("--url", default=None, metavar="ws://HOST:PORT/v1/ws",
              help="Run the agents over real sockets, in real time, against this server.")
@click.option("--secret", envvar="QUEUECHAT_SECRET", default=None,
              help="With --url: the server's clinician-token secret (or QUEUECHAT_SECRET); default: the "
                   "development secret, on loopback only.")
@click.option("--allow-remote", is_flag=True, help="Allow a --url that is not a loopback address.")
@click.option("--out", default="sim-out", show_default=True, metavar="DIR",
              help="Where the history (JSON Lines) and the summary go.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar on stderr (default: when stderr is a terminal).")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="In-process only: split the rooms among this many processes; a speed setting only (the "
                   "same history and verdict for every jobs).")
@click.option("--speed", type=click.FloatRange(1.0, 100_000.0), default=1.0, show_default=True,
              help="With --url: compress the scenario this many times (every agent's delay divided by it).")
@click.option("--quiet", is_flag=True, help="Print only the verdict.")
def simulate(scenario: str, seed: int | None, duration: str | None, url: str | None, secret: str | None,
             allow_remote: bool, out: str, progress: bool | None, jobs: int, speed: float,
             quiet: bool) -> None:
    """Run SCENARIO (a shipped scenario, one in ./scenarios/, or a TOML file); check its history.

    Shipped scenarios: quiet_morning, busy_clinic_day, flaky_network, refresh_storm, demo.
    Default: in-process, in virtual time, against the reference server. Exit codes: 0 no violation,
    1 violations found, 2 the run could not do what it set out to do (usage or scenario error, wrong
    secret or path, unreachable server), 3 incomplete (interrupted, the server went away).
    """
    from . import _simulate

    _simulate.simulate(scenario, seed, duration, url, secret, allow_remote, out, progress, quiet, jobs,
                       speed)


@main.command()
@click.argument("history", type=click.Path(dir_okay=False))
@click.option("--quiet", is_flag=True, help="Print only the violations.")
def check(history: str, quiet: bool) -> None:
    """Re-check a saved simulation HISTORY (JSON Lines) against the rules.

    Exit codes: 0 no violation, 1 violations found, 2 the history cannot be read or is damaged,
    3 the history is of a run that stopped part-way.
    """
    from . import _simulate

    _simulate.check(history, quiet)


_FIGURES = ("p50", "p90", "p99", "p99.9", "max")


@main.command()
@click.argument("run", required=False, type=click.Path(path_type=Path))
@click.option("--compare", nargs=2, type=click.Path(path_type=Path), default=None,
              metavar="BASELINE CANDIDATE", help="Compare two load runs instead, and give a verdict.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where report.html and the PNGs go; default: RUN/report (a history: beside it), "
                   "with --compare: CANDIDATE/compare.")
@click.option("--figure", type=click.Choice(_FIGURES), default="p99", show_default=True,
              help="With --compare: the latency figure the regression bound applies to.")
@click.option("--max-regression", type=click.FloatRange(0, 10_000), default=10.0, show_default=True,
              metavar="PERCENT", help="With --compare: a figure worse by more than this is a regression ...")
@click.option("--floor-ms", type=click.FloatRange(0, 3_600_000), default=1.0, show_default=True,
              help="... and by more than this many milliseconds (noise on sub-millisecond figures is not a "
                   "regression).")
@click.option("--min-samples", type=click.IntRange(1, None), default=100, show_default=True,
              help="With --compare: entries with fewer samples in either run are shown but not judged.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --compare: where the verdict goes as JUnit XML (default: OUT/junit.xml).")
@click.option("--force", is_flag=True,
              help="With --compare: judge runs whose settings differ (server, users, rate, room shape, "
                   "text size) instead of calling them not comparable.")
def report(run: Path | None, compare: tuple[Path, Path] | None, out: Path | None, figure: str,
           max_regression: float, floor_ms: float, min_samples: int, junit: Path | None,
           force: bool) -> None:
    """Write the report of RUN: a load run's results folder or a simulation's history (or its folder).

    A self-contained HTML page (images embedded; opens from disk) and one PNG per chart. With
    --compare BASELINE CANDIDATE: two load runs side by side and a verdict.

    Exit codes: 0 written (--compare: no regression), 1 --compare found a regression, 2 usage error or
    unreadable input, 3 --compare was inconclusive (a run is invalid or incomplete, or no entry had enough
    samples) or the runs are not comparable (different settings; --force judges them anyway).
    """
    from . import _report

    _report.report(run, compare, out, figure, max_regression, floor_ms, min_samples, junit, force)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results folder (simulation/, load/, server.log); default: runs/demo-<date-time>.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None,
              help="The simulation's seed (default: the demo scenario's).")
@click.option("--sim-duration", default=None, metavar="D",
              help="Real time of the simulation, healing included, e.g. 30s, 1.5m, 2m30 (default: the "
                   "scenario's, 30 s; from 8s to 10m; whole seconds: a fraction rounds up).")
@click.option("--load-duration", default="20s", show_default=True, metavar="D",
              help="Run time of the load test, e.g. 20s, 1.5m (at most 10m; whole seconds: a fraction rounds "
                   "up).")
@click.option("--quiet", is_flag=True,
              help="Print only the closing lines: where the reports are, and the verdicts.")
def demo(out: Path | None, seed: int | None, sim_duration: str | None, load_duration: str,
         quiet: bool) -> None:
    """Start the reference server on loopback, run a short simulation and a short load test against it,
    write both reports and print where they are. About a minute; everything it starts is stopped.

    Exit codes: 0 all went well, 1 the simulation found violations or the load test failed its SLOs or
    was invalid (the closing lines say which), 2 usage error or something could not be started,
    130 interrupted.
    """
    import time

    from ._demo import MAX_PHASE_S, MIN_SIM_S, DemoOptions
    from ._demo import main as run_demo
    from ._load import LoadUsageError, parse_whole_seconds

    def seconds(option: str, text: str, least: int = 1) -> int:
        try:
            value = parse_whole_seconds(text)
        except LoadUsageError as error:
            raise click.UsageError(str(error).replace("--duration", option)) from None
        if value > MAX_PHASE_S:
            raise click.UsageError(f"{option} {text!r}: at most 10m (this is a demo, not a soak test)")
        if value < least:
            raise click.UsageError(f"{option} {text!r}: at least {least}s (a shorter simulation ends before "
                                   "its healing phase can answer everyone)")
        return value

    run_demo(DemoOptions(
        out=(out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")).resolve(), seed=seed,
        sim_duration_s=None if sim_duration is None else seconds("--sim-duration", sim_duration, MIN_SIM_S),
        load_duration_s=seconds("--load-duration", load_duration), quiet=quiet,
    ))


if __name__ == "__main__":  # pragma: no cover
    main()
