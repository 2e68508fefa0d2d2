"""The load report: one page a product team can read, built from a ``queuechat load`` results folder."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from reports._errors import ReportError
from reports._load_charts import (
    entry_distribution,
    errors_chart,
    ms,
    percentiles_over_time,
    throughput_chart,
    users_chart,
)
from reports._load_run import ENTRY_LABELS, LoadRun, entry_label, read_load_run
from reports._page import Cell, Page, ReportResult, write_page

VERDICTS = {
    "pass": ("PASS: every service-level objective was met", "pass"),
    "slo_breach": ("FAIL: a service-level objective was missed", "fail"),
    "invalid": ("INVALID RUN: the figures cannot be trusted", "warn"),
    "incomplete": ("INCOMPLETE RUN: it was stopped before its planned end", "warn"),
    "usage_error": ("NOT RUN: the load test could not start", "fail"),
}
NO_TIMELINE = (
    "This run recorded no timeline (timeline.csv), so users, connections and errors over time "
    "cannot be shown; the totals are below."
)
LATENCY_HEADERS = (
    "what was timed",
    "samples",
    "errors",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "uncorrected p99 ms",
)


def when(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def latency_rows(run: LoadRun) -> list[list[Cell | str]]:
    rows: list[list[Cell | str]] = []
    for entry in run.entries:
        figures = run.figures(entry)
        uncorrected = figures.uncorrected["p99"] if figures.uncorrected else None
        rows.append(
            [
                Cell(entry_label(entry)),
                Cell(f"{figures.count:,}", "num"),
                Cell(f"{figures.errors:,}", "num fail" if figures.errors else "num"),
                *(
                    Cell(ms(figures.latency.get(name)), "num")
                    for name in ("p50", "p90", "p99", "p99.9", "max")
                ),
                Cell(ms(uncorrected) if uncorrected is not None else "n/a", "num"),
            ]
        )
    return rows


def build_load_page(run: LoadRun) -> Page:
    summary = run.summary
    settings = summary.get("run", {})
    meta = run.meta
    page = Page(
        title="Load test report: message delivery latency",
        subtitle=f"{settings.get('users', '?')} simulated rooms against {settings.get('host', '?')}, "
        f"{when(run.start_epoch_s)}, {duration_text(run.duration_s)}",
    )
    headline, kind = VERDICTS.get(run.verdict, (f"Verdict: {run.verdict}", "warn"))
    slo = summary.get("slo", {})
    results = slo.get("results", []) if isinstance(slo, dict) else []
    failed = [r for r in results if not r.get("passed")]
    detail = (
        f"{len(results) - len(failed)} of {len(results)} thresholds met."
        if results
        else "No service-level thresholds were set for this run."
    )
    if not run.valid:
        detail += " " + " ".join(summary.get("validity", {}).get("problems", []))
    page.verdict(headline, kind, detail)
    rates = rates_text(summary)
    if rates:
        page.paragraph(rates)

    message_figures = [
        run.figures(e) for e in ("patient_to_clinician", "clinician_to_patient") if e in run.entries
    ]
    if message_figures:
        worst = max(message_figures, key=lambda f: f.latency.get("p99", 0))
        delivered = sum(f.count for f in message_figures)
        page.paragraph(
            f"{delivered:,} chat messages were delivered in {duration_text(run.duration_s)}. "
            f"99 % of them arrived within {ms(worst.latency.get('p99'))} ms "
            f"(worst direction: {entry_label(worst.name).lower()}); the slowest took "
            f"{ms(max(f.latency.get('max', 0) for f in message_figures))} ms."
        )

    page.section(
        "Latency",
        "Milliseconds, over the whole run, computed from the run's HDR histograms. "
        "pN: N % of samples took no longer than this. Message latencies count from when the message "
        "was due to be sent (corrected for coordinated omission); the last column counts from the "
        "actual send.",
    )
    page.table(LATENCY_HEADERS, latency_rows(run), table_id="latency")
    explained = [
        f"{entry_label(name)}: {what}." for name, (_, what) in ENTRY_LABELS.items() if name in run.entries
    ]
    page.bullet_list(explained, css_class="explain")

    page.section(
        "Service-level objectives",
        "Each threshold from the SLO file, the value this run measured, "
        "and whether it was met."
        + (f" File: {slo.get('file')}." if isinstance(slo, dict) and slo.get("file") else ""),
    )
    if results:
        page.table(
            ("measured on", "threshold", "measured", "result"),
            [
                [
                    Cell(str(r.get("entry", ""))),
                    Cell(str(r.get("threshold", ""))),
                    Cell(str(r.get("measured", "")), "num"),
                    Cell("met" if r.get("passed") else "MISSED", "pass" if r.get("passed") else "fail"),
                ]
                for r in results
            ],
            table_id="slo",
        )
    else:
        page.paragraph("No thresholds were set (the run was made with --no-slo).")

    page.section("Throughput and load")
    page.chart(throughput_chart(run))
    if run.timeline is not None:
        page.chart(users_chart(run))
        page.chart(errors_chart(run))
    else:
        page.paragraph(NO_TIMELINE, note=True)
    errors = summary.get("errors", {})
    disconnects = summary.get("disconnects", {})
    page.paragraph(
        f"Errors in all: {errors.get('total', 0):,}"
        + (
            " (" + ", ".join(f"{code}: {n:,}" for code, n in errors.get("by_code", {}).items()) + ")"
            if errors.get("by_code")
            else ""
        )
        + f". Unexpected disconnects: {disconnects.get('count', 0):,}"
        + (
            " ("
            + ", ".join(
                f"close code {code}: {n:,}" for code, n in disconnects.get("by_close_code", {}).items()
            )
            + ")"
            if disconnects.get("by_close_code")
            else ""
        )
        + "."
    )

    page.section("Latency over time", "One chart per kind of message or request.")
    for entry in run.entries:
        page.chart(percentiles_over_time(run, entry))
    page.section("Latency distribution", "The whole run, down to the rarest samples.")
    for entry in run.entries:
        page.chart(entry_distribution(run, entry))

    page.section("What was run")
    page.facts(run_facts(run, settings, meta))
    page.section(
        "Is the run valid?",
        "A load generator that is short of CPU sends late and measures its "
        "own delays; one that sent clearly less than planned (under 90 % of the messages its "
        "schedule had due), or whose users stopped before the end, did not put the planned load on "
        "the server; such runs are marked invalid. A run stopped before its planned end is incomplete.",
    )
    validity = summary.get("validity", {})
    page.verdict(
        "Valid: the load generators had the CPU they needed and sent the planned load"
        if run.valid
        else ("Incomplete run" if run.verdict == "incomplete" else "Invalid run"),
        "pass" if run.valid else "warn",
    )
    if validity.get("problems"):
        page.bullet_list([str(p) for p in validity["problems"]])
    if validity.get("warnings"):
        page.bullet_list([f"warning: {w}" for w in validity["warnings"]])
    generators = summary.get("generators", [])
    if generators:
        page.table(
            (
                "generator",
                "CPU mean %",
                "CPU demand mean %",
                "demand max %",
                "time over the limit s",
                "wait for a CPU per wake-up ms",
            ),
            [
                [
                    Cell(str(g.get("id", "?"))),
                    *(
                        Cell(_plain((g.get("cpu") or {}).get(key)), "num")
                        for key in (
                            "mean_cpu_percent",
                            "mean_demand_percent",
                            "max_demand_percent",
                            "over_limit_s",
                            "mean_wait_for_cpu_ms",
                        )
                    ),
                ]
                for g in generators
            ],
            table_id="generators",
        )
    return page


def rates_text(summary: dict[str, Any]) -> str | None:
    """Planned against sent against delivered messages per second, as wrk2 shows them; None for runs that
    did not record them."""
    messages = summary.get("messages")
    if not isinstance(messages, dict):
        return None

    def rate(key: str) -> str:
        value = messages.get(key)
        return f"{value:,.1f}" if isinstance(value, int | float) else "n/a"

    run = summary.get("run", {})
    planned_s, drain = run.get("planned_duration_s"), run.get("drain_s")
    text = (
        f"Message rate: planned {rate('planned_per_s')}/s, sent {rate('sent_per_s')}/s "
        f"({messages.get('sent', 0):,} of {messages.get('planned', 0):,} due), delivered "
        f"{rate('delivered_per_s')}/s ({messages.get('delivered', 0):,}), over the "
        f"{duration_text(float(messages.get('window_s') or 0.0))} send schedule"
        + (f" (planned: {duration_text(float(planned_s))})" if isinstance(planned_s, int | float) else "")
        + ". "
    )
    undelivered = int(messages.get("undelivered", 0)) + int(messages.get("no_delivery", 0))
    if isinstance(drain, int | float):
        text += (
            f"{undelivered:,} messages were still undelivered after the {drain:g} s drain window (or "
            "past the timeout); each is an error, and is counted in the latency figures with the "
            "latency it had reached."
        )
    for stop in summary.get("users_stopped", []):
        text += (
            f" {stop['users']} users stopped before the end (from {stop['first_at_s']:.1f} s): "
            f"{stop['reason']}."
        )
    return text


def _plain(value: Any) -> str:
    return "n/a" if value is None else str(value)


def run_facts(run: LoadRun, settings: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, str]]:
    command = meta.get("command")
    if not isinstance(command, dict):
        command = {}
    rate_per_user = settings.get("rate_per_user")
    users = settings.get("users")
    total_rate = (
        rate_per_user * users if isinstance(rate_per_user, int | float) and isinstance(users, int) else None
    )
    planned_s = settings.get("planned_duration_s")
    length = duration_text(run.duration_s)
    if isinstance(planned_s, int | float):
        length += f" of the planned {duration_text(float(planned_s))}"
    facts = [
        ("server", str(command.get("server") or settings.get("host", "?"))),
        ("started", when(run.start_epoch_s)),
        ("length", length),
        ("simulated rooms (users)", _plain(users)),
        ("patients per room", _plain(settings.get("patients_per_room"))),
        (
            "planned message rate",
            f"{total_rate:g} messages/s in all ({rate_per_user:g} per room)"
            if total_rate is not None and isinstance(rate_per_user, int | float)
            else "not recorded",
        ),
        ("message size", f"{settings.get('text_chars', '?')} characters"),
        (
            "generator processes",
            f"{max(1, len(run.summary.get('generators', [])))} "
            f"({'master and workers' if settings.get('workers') else 'one process'})",
        ),
        ("seed", _plain(command.get("seed")) if command else "not recorded"),
        ("interval of the time charts", f"{settings.get('interval_s', 1.0):g} s"),
        ("SLO file", str(run.summary.get("slo", {}).get("file") or "none")),
    ]
    commit = meta.get("commit")
    if meta:
        facts.append(
            (
                "commit",
                (str(commit)[:12] + (" (with uncommitted changes)" if meta.get("dirty") else ""))
                if commit
                else "not a git checkout",
            )
        )
        facts.append(
            (
                "software",
                f"queuechat {meta.get('queuechat_version', '?')}, Python "
                f"{meta.get('python', '?')} ({meta.get('implementation', '?')}), Locust "
                f"{meta.get('locust_version', '?')}",
            )
        )
        facts.append(("machine", f"{meta.get('cores', '?')} cores, {meta.get('platform', '?')}"))
    else:
        facts.append(("commit, software, machine", "not recorded by this run"))
    facts.append(("results folder", str(run.path)))
    return facts


def write_load_report(run_dir: Path, out_dir: Path | None = None) -> ReportResult:
    """Read the run, draw the charts, write report.html and one PNG per chart into ``out_dir``."""
    run = read_load_run(Path(run_dir))
    target = Path(out_dir) if out_dir is not None else run.path / "report"
    try:
        page = build_load_page(run)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(
            f"{run.path / 'summary.json'}: a field has an unexpected shape ({type(exc).__name__})"
        ) from None
    try:
        return write_page(
            page,
            target,
            footer="Written by queuechat report. Message text and patient names "
            "are never recorded; this page holds counts and times only.",
        )
    except OSError as exc:
        raise ReportError(
            f"{target}: cannot write the report ({exc.strerror or type(exc).__name__})"
        ) from None
