"""The run's results: summary (JSON), percentile tables (.hgrm), interval log (.hlog), timeline (CSV),
JUnit XML.

Built at the master (or the single process) from a :class:`~loadtests._hdr.Collector`.
The verdict and exit code:

- ``pass`` (0): the run is valid and complete and every SLO threshold held;
- ``slo_breach`` (1, "FAIL"): a threshold failed;
- ``usage_error`` (2): nothing was loaded (a bad ``--host``);
- ``invalid`` (3): the figures cannot be trusted: a generator was short of
  CPU, a worker's results are missing, users stopped before the end (the
  server refused or dropped every connection, or refused the token), fewer
  users ran than were asked for, the
  generator sent clearly less than planned (under ``MIN_SENT_FRACTION``,
  90 %, of the messages its schedule had due), or nothing was delivered;
- ``incomplete`` (3): the run was interrupted (Ctrl-C, SIGTERM) or stopped
  before its planned run time; the figures cover only part of it.

Nothing here carries message text or names: only entry names, counts,
codes and times.

No Locust and no gevent here: ``queuechat load`` prints the summary from
the JSON with :func:`format_summary`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from formats.hlog import DISCONNECTS, ERRORS, HLOG_FILE, LATENCY_ENTRIES, MESSAGE_ENTRIES, UNCORRECTED_SUFFIX
from formats.summary import SUMMARY_FILE, SUMMARY_VERSION, write_summary
from formats.timeline import TIMELINE_FILE, USERS

from ._hdr import Collector, summarize, write_hgrm
from ._slo import EntryResult, Threshold, ThresholdResult, evaluate, junit_xml

EXIT_PASS = 0
EXIT_SLO_BREACH = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
JUNIT_FILE = "junit.xml"
WAIT_WARNING_MS = 0.5
# A run whose generators sent fewer than this fraction of the messages their schedules had due is invalid:
# it did not put the planned load on the server (wrk2's rule: measure at the rate you asked for).
MIN_SENT_FRACTION = 0.9
VERDICT_NAMES = {"pass": "PASS", "slo_breach": "FAIL (SLO breach)", "invalid": "INVALID RUN",
                 "incomplete": "INCOMPLETE RUN", "usage_error": "NOT RUN (usage error)"}


def safe_name(text: str) -> str:
    """A file name made of the text's safe characters (worker ids carry a host name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:120] or "unnamed"


def build(
    collector: Collector,
    *,
    run: Mapping[str, Any],
    thresholds: Sequence[Threshold],
    slo_file: str | None,
    missing_sources: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
    incomplete: str | None = None,
) -> tuple[dict[str, Any], list[ThresholdResult], dict[str, Any]]:
    """The summary, the threshold results and the merged histograms (entry -> (primary, uncorrected)).

    ``meta`` (versions, commit, machine, the command's settings; see :mod:`loadtests._meta`) goes
    under its own key so that ``run`` keeps the shape its readers know.
    """
    merged = collector.merged()
    errors = collector.errors()
    entries: dict[str, Any] = {}
    slo_inputs: dict[str, EntryResult] = {}
    for name in (*LATENCY_ENTRIES, *sorted(set(merged) - set(LATENCY_ENTRIES))):
        primary, uncorrected = merged.get(name, (None, None))
        entry_errors = errors.get(name, {})
        count = primary.get_total_count() if primary is not None else 0
        entries[name] = {
            "count": count,
            "errors": sum(entry_errors.values()),
            "errors_by_code": dict(sorted(entry_errors.items())),
            "latency_us": summarize(primary) if primary is not None else {"count": 0},
            "uncorrected_latency_us": (summarize(uncorrected) if uncorrected is not None
                                       else ({"count": 0} if name in MESSAGE_ENTRIES else None)),
        }
        slo_inputs[name] = EntryResult(count=count, errors=sum(entry_errors.values()), latency=primary,
                                       uncorrected=uncorrected)
    for name, codes in errors.items():  # errors that belong to no timed entry
        if name not in entries:
            entries[name] = {"count": 0, "errors": sum(codes.values()),
                             "errors_by_code": dict(sorted(codes.items())),
                             "latency_us": None, "uncorrected_latency_us": None}
    by_code: dict[str, int] = {}
    for codes in errors.values():
        for code, n in codes.items():
            by_code[code] = by_code.get(code, 0) + n
    disconnects = collector.disconnects()
    slo_inputs[ERRORS] = EntryResult(count=sum(by_code.values()), errors=0)
    slo_inputs[DISCONNECTS] = EntryResult(count=sum(disconnects.values()), errors=0)

    generators: list[dict[str, Any]] = []
    problems: list[str] = []
    for source, final in sorted(collector.finals.items()):
        cpu = final.get("cpu") or {}
        generators.append({
            "id": source,
            "cpu": cpu,
            "counts": {name: entry["count"] for name, entry in final["final"]["entries"].items()},
            "errors": sum(sum(codes.values()) for codes in final["final"]["errors"].values()),
        })
        if cpu and not cpu.get("ok", True):
            problems.append(
                f"load generator {source} was short of CPU: it needed over {cpu.get('limit_percent')}% "
                f"of a core (running or waiting to run) for {cpu.get('over_limit_s')} s of "
                f"{cpu.get('sampled_s')} s sampled (max {cpu.get('max_demand_percent')}%)")
    for source in missing_sources:
        problems.append(f"load generator {source} sent no final results")
    counters = collector.counters()
    messages = message_rates(counters, run)
    started = float(run.get("started", 0.0))
    stops = [{"reason": stop["reason"], "users": stop["count"],
              "first_at_s": round(stop["first"] - started, 3), "last_at_s": round(stop["last"] - started, 3)}
             for stop in collector.stops()]
    for stop in stops:
        first, last = f"{stop['first_at_s']:.1f}", f"{stop['last_at_s']:.1f}"
        when = f"at {first} s" if first == last else f"between {first} s and {last} s"
        problems.append(f"{stop['users']} of {run.get('users', '?')} users stopped before the end ({when}): "
                        f"{stop['reason']}")
    users, peak = run.get("users"), max((row[USERS] for row in collector.timeline()), default=0)
    if isinstance(users, int) and peak < users:
        problems.append(f"at most {peak} of the {users} users ran at once: the server did not get the "
                        "planned load")
    if messages["planned"] and messages["sent"] < MIN_SENT_FRACTION * messages["planned"]:
        problems.append(f"the generator sent {messages['sent']:,} of the {messages['planned']:,} messages "
                        f"its schedule had due ({messages['sent'] / messages['planned']:.0%}, under "
                        f"{MIN_SENT_FRACTION:.0%}): the server did not get the planned load")
    if not counters.get("delivered", 0) and not any(entries[name]["count"] for name in MESSAGE_ENTRIES):
        problems.append("no message was delivered: nothing was measured")
    if incomplete is not None:
        problems.insert(0, incomplete)
    warnings = [f"interval reports from {source} do not add up to its totals (the .hlog and the timeline "
                "miss some)" for source in collector.inconsistent_sources()]
    for generator in generators:
        wait = (generator["cpu"] or {}).get("mean_wait_for_cpu_ms")
        if isinstance(wait, int | float) and wait > WAIT_WARNING_MS:
            warnings.append(f"load generator {generator['id']} waited {wait:.2f} ms on average for a CPU "
                            "each time it woke: the machine is busy, and its latencies include that wait")

    results = evaluate(thresholds, slo_inputs)
    breaches = [r for r in results if not r.passed]
    if incomplete is not None:
        verdict, exit_code = "incomplete", EXIT_INVALID
    elif problems:
        verdict, exit_code = "invalid", EXIT_INVALID
    elif breaches:
        verdict, exit_code = "slo_breach", EXIT_SLO_BREACH
    else:
        verdict, exit_code = "pass", EXIT_PASS
    summary: dict[str, Any] = {
        "version": SUMMARY_VERSION,
        "run": dict(run),
        "meta": dict(meta) if meta is not None else {},
        "entries": entries,
        "errors": {"total": sum(by_code.values()), "by_code": dict(sorted(by_code.items()))},
        "disconnects": {"count": sum(disconnects.values()),
                        "by_close_code": dict(sorted(disconnects.items()))},
        "counters": counters,
        "messages": messages,
        "users_stopped": stops,
        "generators": generators,
        "validity": {"valid": not problems, "complete": incomplete is None, "problems": problems,
                     "warnings": warnings},
        "slo": {
            "file": slo_file,
            "passed": not breaches,
            "results": [
                {"entry": r.threshold.entry, "threshold": r.threshold.expression, "passed": r.passed,
                 "measured": r.measured, "message": r.message}
                for r in results
            ],
        },
        "verdict": verdict,
        "exit_code": exit_code,
    }
    return summary, results, merged


def message_rates(counters: Mapping[str, int], run: Mapping[str, Any]) -> dict[str, Any]:
    """Planned against sent against delivered, as counts and as messages per second over the send
    schedule (``run.duration_s``), as wrk2 shows the rate it asked for beside the one it got.

    ``planned`` counts the messages the users' schedules had due (a user's schedule starts once
    it is connected); ``planned_per_s`` is the rate asked for (per user, times users).
    """
    window = float(run.get("duration_s") or 0.0)
    rate, users = run.get("rate_per_user"), run.get("users")
    asked = float(rate) * users if isinstance(rate, int | float) and isinstance(users, int) else None

    def per_s(n: int) -> float | None:
        return round(n / window, 3) if window > 0 else None

    counts = {name: int(counters.get(name, 0)) for name in ("planned", "sent", "delivered", "undelivered",
                                                             "no_delivery", "sends_skipped")}
    return {**counts, "window_s": round(window, 3), "planned_per_s": asked,
            "due_per_s": per_s(counts["planned"]), "sent_per_s": per_s(counts["sent"]),
            "delivered_per_s": per_s(counts["delivered"])}


def write(out_dir: Path, collector: Collector, summary: Mapping[str, Any], results: Sequence[ThresholdResult],
          merged: Mapping[str, Any]) -> list[Path]:
    """Write every result file into ``out_dir``; returns what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (primary, uncorrected) in merged.items():
        for suffix, histogram in (("", primary), (UNCORRECTED_SUFFIX, uncorrected)):
            if histogram is not None:
                path = out_dir / f"{safe_name(name)}{suffix}.hgrm"
                write_hgrm(path, histogram)
                written.append(path)
    hlog = out_dir / HLOG_FILE
    collector.write_hlog(hlog, start_time_s=float(summary["run"].get("started", time.time())),
                         comment="queuechat load: one tag per entry; '.uncorrected' tags are latencies "
                                 "from the actual send time")
    written.append(hlog)
    timeline = out_dir / TIMELINE_FILE
    collector.write_timeline(timeline)
    written.append(timeline)
    junit = out_dir / JUNIT_FILE
    junit.write_bytes(junit_xml(results, validity_problems=summary["validity"]["problems"],
                                duration_s=float(summary["run"].get("duration_s", 0.0)),
                                incomplete=summary["verdict"] == "incomplete"))
    written.append(junit)
    files = sorted([*(p.name for p in written), SUMMARY_FILE])
    written.append(write_summary(out_dir, {**summary, "files": files}))
    return written


def _ms(value: Any) -> str:
    return f"{value / 1000.0:.2f}" if isinstance(value, int | float) else "-"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The end-of-run summary for people: one line per entry, then the SLOs and the verdict."""
    lines = []
    run = summary.get("run", {})
    seed = (summary.get("meta") or {}).get("command", {}).get("seed")
    lines.append(f"queuechat load: {run.get('duration_s', 0):.1f} s against {run.get('host', '?')}, "
                 f"{run.get('users', '?')} users, {run.get('rate_per_user', '?')} msgs/s per user, "
                 f"{max(1, len(summary.get('generators', [])))} generator process(es)"
                 + (f", seed {seed}" if seed is not None else ""))
    header = f"  {'entry':<24}{'count':>9}{'errors':>8}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}" \
             f"{'p99.9 ms':>10}{'max ms':>10}{'p99 uncorr':>12}"
    lines.append(header)
    for name, entry in summary.get("entries", {}).items():
        latency = entry.get("latency_us") or {}
        uncorrected = entry.get("uncorrected_latency_us") or {}
        lines.append(f"  {name:<24}{entry.get('count', 0):>9}{entry.get('errors', 0):>8}"
                     f"{_ms(latency.get('p50')):>10}{_ms(latency.get('p90')):>10}{_ms(latency.get('p99')):>10}"
                     f"{_ms(latency.get('p99.9')):>10}{_ms(latency.get('max')):>10}"
                     f"{_ms(uncorrected.get('p99')):>12}")
    errors = summary.get("errors", {})
    disconnects = summary.get("disconnects", {})
    by_code = ", ".join(f"{code} {n}" for code, n in errors.get("by_code", {}).items()) or "none"
    lines.append(f"  errors: {errors.get('total', 0)} ({by_code}); "
                 f"disconnects: {disconnects.get('count', 0)}")
    messages = summary.get("messages")
    if isinstance(messages, dict):
        def rate(key: str) -> str:
            value = messages.get(key)
            return f"{value:,.1f}/s" if isinstance(value, int | float) else "-/s"

        if summary.get("verdict") == "incomplete":
            missing = (f"not drained (interrupted): in flight at the end "
                       f"{summary.get('counters', {}).get('in_flight_at_end', 0):,}")
        else:
            missing = (f"undelivered after the {run.get('drain_s', '?')} s drain: "
                       f"{messages.get('undelivered', 0):,}")
        lines.append(f"  messages: planned {rate('planned_per_s')} ({messages.get('planned', 0):,} due), "
                     f"sent {rate('sent_per_s')} ({messages.get('sent', 0):,}), delivered "
                     f"{rate('delivered_per_s')} ({messages.get('delivered', 0):,}); {missing}")
    for generator in summary.get("generators", []):
        cpu = generator.get("cpu") or {}
        if cpu:
            lines.append(f"  generator {generator['id']}: CPU mean {cpu.get('mean_cpu_percent')}%; "
                         f"demand (running + waiting to run) mean {cpu.get('mean_demand_percent')}%, "
                         f"max {cpu.get('max_demand_percent')}%, over {cpu.get('limit_percent')}% for "
                         f"{cpu.get('over_limit_s')} of {cpu.get('sampled_s')} s; waited "
                         f"{cpu.get('mean_wait_for_cpu_ms')} ms for a CPU per wake-up")
    slo = summary.get("slo", {})
    results = slo.get("results", [])
    failed = [result for result in results if not result["passed"]]
    for result in failed:
        lines.append(f"  SLO breach: {result['message']}")
    if results:
        lines.append(f"  SLO {slo.get('file')}: {len(results) - len(failed)} of {len(results)} "
                     "thresholds passed")
    validity = summary.get("validity", {})
    label = "INCOMPLETE" if summary.get("verdict") == "incomplete" else "INVALID"
    for problem in validity.get("problems", []):
        lines.append(f"  {label}: {problem}")
    for warning in validity.get("warnings", []):
        lines.append(f"  warning: {warning}")
    verdict = summary.get("verdict")
    shown = VERDICT_NAMES.get(str(verdict), "?")
    lines.append(f"queuechat load: {shown}, exit code {summary.get('exit_code')}")
    return "\n".join(lines)
