"""The run's results: summary (JSON), percentile tables (.hgrm), interval log (.hlog), timeline (CSV),
JUnit XML.

Built at the master (or the single process) from a :class:`~loadtests._hdr.Collector`.
The verdict and exit code: 0 pass, 1 an SLO threshold failed, 3 the run is
invalid (a generator was short of CPU, a worker's results are missing,
nothing was delivered). Nothing here carries message text or names: only
entry names, counts, codes and times.

No Locust and no gevent here: ``queuechat load`` prints the summary from
the JSON with :func:`format_summary`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._hdr import (
    DISCONNECTS,
    ERRORS,
    LATENCY_ENTRIES,
    MESSAGE_ENTRIES,
    UNCORRECTED_SUFFIX,
    Collector,
    summarize,
    write_hgrm,
    write_json,
)
from ._slo import EntryResult, Threshold, ThresholdResult, evaluate, junit_xml

EXIT_PASS = 0
EXIT_SLO_BREACH = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
SUMMARY_FILE = "summary.json"
HLOG_FILE = "latency.hlog"
TIMELINE_FILE = "timeline.csv"
JUNIT_FILE = "junit.xml"
SUMMARY_VERSION = 1
WAIT_WARNING_MS = 0.5


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
    if not any(entries[name]["count"] for name in MESSAGE_ENTRIES):
        problems.append("no message was delivered: nothing was measured")
    warnings = [f"interval reports from {source} do not add up to its totals (the .hlog and the timeline "
                "miss some)" for source in collector.inconsistent_sources()]
    for generator in generators:
        wait = (generator["cpu"] or {}).get("mean_wait_for_cpu_ms")
        if isinstance(wait, int | float) and wait > WAIT_WARNING_MS:
            warnings.append(f"load generator {generator['id']} waited {wait:.2f} ms on average for a CPU "
                            "each time it woke: the machine is busy, and its latencies include that wait")

    results = evaluate(thresholds, slo_inputs)
    breaches = [r for r in results if not r.passed]
    if problems:
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
        "counters": collector.counters(),
        "generators": generators,
        "validity": {"valid": not problems, "problems": problems, "warnings": warnings},
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
                                duration_s=float(summary["run"].get("duration_s", 0.0))))
    written.append(junit)
    path = out_dir / SUMMARY_FILE
    write_json(path, {**summary, "files": sorted(p.name for p in [*written, path])})
    written.append(path)
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
    for problem in validity.get("problems", []):
        lines.append(f"  INVALID: {problem}")
    for warning in validity.get("warnings", []):
        lines.append(f"  warning: {warning}")
    verdict = summary.get("verdict")
    names = {"pass": "PASS", "slo_breach": "FAIL (SLO breach)", "invalid": "INVALID RUN",
             "usage_error": "NOT RUN (usage error)"}
    shown = names.get(str(verdict), "?")
    lines.append(f"queuechat load: {shown}, exit code {summary.get('exit_code')}")
    return "\n".join(lines)
