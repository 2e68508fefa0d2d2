"""``queuechat simulate`` and ``queuechat check``: run a scenario, write its history, report what broke.

Exit codes (docs/simulator.md):
0 no violation (liveness judged, or plainly said not judged);
1 violations: the server broke a rule;
2 the run could not do what it set out to do: a usage or scenario error, a
  server at ``--url`` that cannot be reached, a wrong secret or path, limits
  that refuse every clinician's hello, a history that cannot be read;
3 incomplete: interrupted, or the server went away part-way.
A run that ends with 2 or 3 never reports the server's violations.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import click

from formats.duration import DurationError, parse_duration
from formats.summary import write_simulation_summary
from reference_server.protocol import is_loopback_host
from simulator import (
    MAX_SHOWN_PER_RULE,
    HistoryError,
    RunResult,
    Scenario,
    ScenarioError,
    check_history,
    history_name,
    load_scenario,
    read_lines,
    run_in_process,
    run_over_sockets,
)

EXIT_OK = 0
EXIT_VIOLATIONS = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3


def _fail(message: str) -> None:
    click.echo(f"queuechat: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _progress(total_s: float, label: str, enabled: bool) -> tuple[Any, Any]:
    """A tqdm bar over the run's (virtual or real) seconds, on stderr; (callback, bar)."""
    if not enabled:
        return None, None
    from tqdm import tqdm

    total = max(1, round(total_s / 60.0))
    bar = tqdm(total=total, unit="min", desc=label, file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} of clinic "
                          "[{elapsed}]")
    shown = [0]

    def update(now_s: float) -> None:
        done = min(round(now_s / 60.0), total)
        if done > shown[0]:
            bar.update(done - shown[0])
            shown[0] = done
            if done == total:
                bar.refresh()  # tqdm skips updates closer than its interval: the last one is shown

    return update, bar


def _only_with_url(url: str | None, secret: str | None, allow_remote: bool) -> None:
    """``--secret`` and ``--allow-remote`` mean something only with ``--url``: say so, do not ignore them.
    (A secret that only comes from QUEUECHAT_SECRET is the environment's, not a mistake on this line.)"""
    if url is not None:
        return
    if allow_remote:
        _fail("--allow-remote applies only with --url (in-process runs need no network)")
    if secret is not None and secret != os.environ.get("QUEUECHAT_SECRET"):
        _fail("--secret applies only with --url (the in-process server has its own secret)")


def simulate(scenario_name: str, seed: int | None, duration: str | None, url: str | None, secret: str | None,
             allow_remote: bool, out: str, progress: bool | None, quiet: bool, jobs: int = 1,
             speed: float = 1.0) -> None:
    _only_with_url(url, secret, allow_remote)
    if speed != 1.0 and url is None:
        _fail("--speed applies only with --url (in-process runs are in virtual time already)")
    if not speed >= 1.0:
        _fail(f"--speed: expected a number of at least 1, got {speed!r}")
    try:
        scenario = load_scenario(scenario_name)
    except ScenarioError as error:
        _fail(str(error))
        return
    if seed is not None:
        scenario = replace(scenario, seed=seed)
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except DurationError:
            seconds = 0.0
        if seconds <= 0:
            _fail("--duration: expected a positive duration such as \"90s\", \"1.5m\", \"2m30\" or \"2h\", "
                  f"got {duration!r}")
            return
        scenario = scenario.with_duration(seconds)
    if jobs > 1 and url is not None:
        _fail("--jobs applies to in-process runs only (not with --url)")
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _fail(f"--out: cannot create {out_dir}: {error.strerror or error}")
    path = out_dir / history_name(scenario)
    show = progress if progress is not None else sys.stderr.isatty()
    update, bar = _progress(scenario.duration_s, scenario.name, show)
    try:
        if url is None:
            from reference_server.server import configure_logging

            # the in-process server's own warnings (a slow reader dropped...) are part of the scenario
            configure_logging("error" if quiet else "warning")
            result = run_in_process(scenario, path, progress=update, jobs=jobs)
        else:
            result = _over_sockets(scenario, url, secret, allow_remote, path, update, speed)
        if update is not None and result.outcome == "complete":
            update(scenario.duration_s)  # the bar ends full: its last minute is not left out
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        click.echo(f"queuechat: interrupted: the run is incomplete; nothing was judged ({path} is partial)",
                   err=True)
        sys.exit(EXIT_INCOMPLETE)
    except BaseExceptionGroup as group:  # Trio's nurseries group what their tasks raised
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        if bar is not None:
            bar.close()
        click.echo(f"queuechat: interrupted: the run is incomplete; nothing was judged ({path} is partial)",
                   err=True)
        sys.exit(EXIT_INCOMPLETE)
    finally:
        if bar is not None:
            bar.close()
    _report(result, sys.stdout, quiet=quiet)
    summary_path = write_simulation_summary(path, _summary_document(result))
    if not quiet:
        click.echo(f"history: {path}\nsummary: {summary_path}")
    sys.exit(_exit_code(result))


def _exit_code(result: RunResult) -> int:
    if result.outcome == "failed":
        return EXIT_USAGE
    if result.outcome == "incomplete" or not result.summary.complete:
        return EXIT_INCOMPLETE
    return EXIT_VIOLATIONS if result.violations else EXIT_OK


def _over_sockets(scenario: Scenario, url: str, secret: str | None, allow_remote: bool, path: Path,
                  update: Any, speed: float = 1.0) -> RunResult:
    from simulator import parse_url

    try:
        host, port, _ = parse_url(url)
    except ValueError as error:
        _fail(f"--url: {error}")
        raise AssertionError("unreachable") from None
    if not is_loopback_host(host) and not allow_remote:
        _fail(f"--url: {host} is not a loopback address; pass --allow-remote to load a remote server")
    secret = secret or os.environ.get("QUEUECHAT_SECRET")
    if secret is None and not is_loopback_host(host):
        _fail("--secret (or QUEUECHAT_SECRET) is needed for a remote server")
    import socket

    try:
        with socket.create_connection((host, port), timeout=5.0):
            pass
    except OSError as error:
        _fail(f"--url: cannot reach {host}:{port}: {error.strerror or error}")
    return run_over_sockets(scenario, url, path, secret=secret, progress=update, speed=speed)


def check(history: str, quiet: bool) -> None:
    try:
        result = check_history(Path(history))
    except HistoryError as error:
        _fail(str(error))
        return
    _report(result, sys.stdout, quiet=quiet, checked=True)
    sys.exit(_exit_code(result))


def _run_meta(wall_s: float) -> dict[str, Any]:
    """Which code ran, on what: kept in the summary, never the history (which is byte-identical per seed)."""
    import datetime as dt

    from loadtests import environment

    meta = environment(locust_version=None)
    del meta["locust_version"]
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=wall_s)
    meta["started"] = started.strftime("%Y-%m-%dT%H:%M:%SZ")
    return meta


def _summary_document(result: RunResult) -> dict[str, Any]:
    return {
        "meta": _run_meta(result.wall_s),
        "scenario": result.scenario,
        "seed": result.seed,
        "mode": result.mode,
        "jobs": result.jobs,
        "outcome": result.outcome,
        "reason": result.reason,
        "exit_code": _exit_code(result),
        "wall_s": round(result.wall_s, 3),
        "run_s": round(result.virtual_s, 3),
        "summary": result.summary.as_dict(),
        "violations": [
            {"rule": v.rule, "message": v.message, "room": v.room, "agent": v.agent, "lines": v.lines}
            for v in result.violations
        ],
    }


def _report(result: RunResult, stream: TextIO, *, quiet: bool = False, checked: bool = False) -> None:
    """The run (or the check) in a few lines; then each violation with the history lines around it."""
    summary = result.summary.as_dict()
    write = stream.write
    if result.outcome != "complete":
        what = "could not run" if result.outcome == "failed" else "incomplete"
        write(f"{result.scenario} seed {result.seed} ({result.mode}): {what}: {result.reason}\n")
        write("  violations: not judged (the run did not do what it set out to do)\n")
        return
    if not quiet:
        kind = "virtual" if result.mode == "virtual" else "real"
        if checked:
            write(f"{result.scenario} seed {result.seed} ({result.mode}): {_span(result.virtual_s)} of "
                  f"{kind} time, {summary['records']} records checked in {result.wall_s:.1f} s\n")
        else:
            jobs = f", {result.jobs} processes" if result.jobs > 1 else ""
            write(f"{result.scenario} seed {result.seed} ({result.mode}): {_span(result.virtual_s)} of "
                  f"{kind} time in {result.wall_s:.1f} s{jobs}\n")
        p2c, c2p = summary["messages_patient_to_clinician"], summary["messages_clinician_to_patient"]
        waits = summary["wait_to_first_answer_s"]
        write(f"  patients: {summary['patients']} checked in, {summary['patients_served']} served "
              f"(answered or called)\n")
        write(f"  messages: patient->clinician {p2c['sent']} sent, {p2c['delivered']} delivered; "
              f"clinician->patient {c2p['sent']} sent, {c2p['delivered']} delivered\n")
        if waits["p50"] is None:
            write(f"  wait to first answer: no patient was answered (never answered {waits['unanswered']})\n")
        else:
            write(f"  wait to first answer: p50 {waits['p50']} s, p90 {waits['p90']} s, "
                  f"max {waits['max']} s, never answered {waits['unanswered']}\n")
        write(f"  erasures by reason: {_counts(summary['erasures_by_reason'])}\n")
        write(f"  departures by reason: {_counts(summary['departures_by_reason'])}\n")
        write(f"  faults: {_counts(summary['faults'])}; server closes by code: "
              f"{_counts(summary['server_closes_by_code'])}\n")
        exercised = summary.get("exercised")
        if isinstance(exercised, dict):
            done = {rule: n for rule, n in exercised.items() if n}
            never = [rule for rule, n in exercised.items() if not n]
            write(f"  rules exercised: {_counts(done)}\n")
            write(f"  rules exercised zero times: {', '.join(never) if never else 'none'}\n")
        notes = summary.get("notes_by_rule")
        if isinstance(notes, dict) and notes:
            write(f"  notes (the protocol leaves these open; not violations): {_counts(notes)}\n")
    liveness = summary.get("liveness")
    if isinstance(liveness, dict):
        if liveness.get("judged"):
            bound = liveness.get("bound_ms")
            within = f" (every waiting patient answered within {bound / 1000:.0f} s)" if isinstance(
                bound, int | float) else ""
            write(f"  liveness: judged{within}\n")
        else:
            write(f"  liveness: not judged: {liveness.get('reason')}\n")
    violations = result.violations
    write(f"  violations by rule: {_counts(summary['violations_by_rule']) if violations else 'none'}\n")
    if not violations:
        return
    shown: dict[str, int] = {}
    wanted: set[int] = set()
    chosen = []
    for violation in violations:
        if shown.get(violation.rule, 0) < MAX_SHOWN_PER_RULE:
            shown[violation.rule] = shown.get(violation.rule, 0) + 1
            chosen.append(violation)
            wanted.update(violation.lines)
    history = result.history
    lines = read_lines(history, wanted) if history is not None and history.exists() else {}
    for violation in chosen:
        where = ", ".join(x for x in (violation.room, violation.agent) if x)
        write(f"\nVIOLATION {violation.rule} (seed {result.seed}{', ' + where if where else ''}): "
              f"{violation.message}\n")
        for number in violation.lines:
            write(f"  {number}: {lines.get(number, '')}\n")
    hidden = len(violations) - len(chosen)
    if hidden:
        where = "" if checked else "; every one is in the summary file"
        write(f"\n({hidden} more violation(s) not shown{where})\n")


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items()) or "none"
