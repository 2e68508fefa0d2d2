"""Two load runs side by side, and a verdict a CI job can gate on.

A regression is called when an entry's gated percentile (p99 by default) got worse by more than the
bound (10 %) *and* by more than the floor (1 ms): sub-millisecond figures move by more than 10 % from
run to run on an idle machine, and a floor keeps that noise from failing a build. Entries with too
few samples in either run are shown but not judged.

The run as a whole is judged too, so that a faster server that drops messages is not "better":

- the error rate (errors over attempts: requests and messages sent) and the disconnect rate
  (unexpected disconnects over connections opened) regress when they rose by more than
  ``RATE_FLOOR_PCT`` percentage points (0.1) *and* by more than the bound (relative; any rise from
  zero past the floor counts);
- the delivered message rate (messages/s) regresses when it fell by more than the bound.

Verdicts: ``same``, ``better`` (exit 0), ``worse`` (1), ``inconclusive`` (3: a run is invalid or
incomplete, or nothing could be judged) and ``not comparable`` (3: the runs had different settings:
server, users, message rate, patients per room, message size; ``force`` judges them anyway and says
so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from formats.junit import Case, Outcome, Suite
from formats.junit import junit_xml as junit_xml_document
from reports._errors import ReportError
from reports._hdr import FIGURE_NAMES, figures
from reports._load_charts import Curve, TimeAxis, distribution_chart, midpoint, ms
from reports._load_report import duration_text, when
from reports._load_run import EntryFigures, LoadRun, entry_label, read_load_run
from reports._mpl import BASELINE_COLOUR, CANDIDATE_COLOUR, new_figure, no_data, png_bytes
from reports._page import Cell, Chart, Page, ReportResult, write_page

EXIT_SAME_OR_BETTER = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3

EXIT_NOT_COMPARABLE = 3
RATE_FLOOR_PCT = 0.1  # percentage points: an error or disconnect rate must rise by more to regress

REGRESSION = "regression"
IMPROVEMENT = "improvement"
SAME = "no significant change"
NOT_JUDGED = "not judged"


@dataclass(frozen=True)
class RegressionBounds:
    """What counts as a regression: ``figure`` worse by more than ``max_increase_pct`` and ``floor_ms``."""

    figure: str = "p99"
    max_increase_pct: float = 10.0
    floor_ms: float = 1.0
    min_samples: int = 100

    def __post_init__(self) -> None:
        if self.figure not in FIGURE_NAMES:
            raise ReportError(
                f"the gated figure must be one of {', '.join(FIGURE_NAMES)}, not {self.figure!r}"
            )
        for name, value in (("the bound", self.max_increase_pct), ("the floor", self.floor_ms)):
            if not (math.isfinite(value) and value >= 0):
                raise ReportError(f"{name} must be a number of 0 or more, not {value!r}")
        if self.min_samples < 1:
            raise ReportError(f"the minimum number of samples must be 1 or more, not {self.min_samples}")

    def describe(self) -> str:
        return (
            f"{self.figure} worse by more than {self.max_increase_pct:g} % and by more than "
            f"{self.floor_ms:g} ms, on entries with at least {self.min_samples:,} samples in both runs"
        )


def change_pct(before: float, after: float) -> float | None:
    if before <= 0:
        return None
    return 100.0 * (after - before) / before


@dataclass(frozen=True)
class EntryComparison:
    entry: str
    baseline: EntryFigures | None
    candidate: EntryFigures | None
    status: str
    reason: str

    def change(self, figure: str) -> float | None:
        if self.baseline is None or self.candidate is None:
            return None
        return change_pct(self.baseline.latency.get(figure, 0), self.candidate.latency.get(figure, 0))


@dataclass(frozen=True)
class RunMeasure:
    """One figure of a whole run, judged beside the latencies: an error rate, a disconnect rate, the
    delivered message rate."""

    name: str
    unit: str  # "%" or "msgs/s"
    baseline: float | None
    candidate: float | None
    status: str
    reason: str


@dataclass
class Comparison:
    baseline: LoadRun
    candidate: LoadRun
    bounds: RegressionBounds
    entries: list[EntryComparison]
    problems: list[str] = field(default_factory=list)
    measures: list[RunMeasure] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # settings that differ between the runs
    forced: bool = False  # judged although the settings differ

    @property
    def regressions(self) -> list[EntryComparison]:
        return [e for e in self.entries if e.status == REGRESSION]

    @property
    def improvements(self) -> list[EntryComparison]:
        return [e for e in self.entries if e.status == IMPROVEMENT]

    @property
    def verdict(self) -> str:
        if self.differences and not self.forced:
            return "not comparable"
        if self.problems:
            return "inconclusive"
        if self.regressions or any(m.status == REGRESSION for m in self.measures):
            return "worse"
        if self.improvements or any(m.status == IMPROVEMENT for m in self.measures):
            return "better"
        return "same"

    @property
    def exit_code(self) -> int:
        if self.verdict == "not comparable":
            return EXIT_NOT_COMPARABLE
        if self.verdict == "inconclusive":
            return EXIT_INCONCLUSIVE
        return EXIT_REGRESSION if self.verdict == "worse" else EXIT_SAME_OR_BETTER

    def headline(self) -> str:
        forced = (
            " (judged with --force although the settings differ: " + "; ".join(self.differences) + ")"
            if self.forced and self.differences
            else ""
        )
        if self.verdict == "not comparable":
            return (
                "NOT COMPARABLE: the runs had different settings: "
                + "; ".join(self.differences)
                + ". Give --force to judge them anyway."
            )
        if self.verdict == "inconclusive":
            return "INCONCLUSIVE: " + " ".join(self.problems)
        if self.verdict == "worse":
            names = [entry_label(e.entry).lower() for e in self.regressions]
            names += [m.name for m in self.measures if m.status == REGRESSION]
            return f"WORSE: regressed beyond the bound: {', '.join(names)}{forced}"
        if self.verdict == "better":
            names = [entry_label(e.entry).lower() for e in self.improvements]
            names += [m.name for m in self.measures if m.status == IMPROVEMENT]
            return f"BETTER: improved beyond the bound: {', '.join(names)}, and nothing regressed{forced}"
        return (
            f"SAME: no {self.bounds.figure}, error rate, disconnect rate or delivered rate moved beyond "
            f"the bound{forced}"
        )


def judge(
    entry: str, baseline: EntryFigures | None, candidate: EntryFigures | None, bounds: RegressionBounds
) -> EntryComparison:
    if baseline is None or not baseline.count:
        return EntryComparison(entry, baseline, candidate, NOT_JUDGED, "not measured in the baseline")
    if candidate is None or not candidate.count:
        return EntryComparison(entry, baseline, candidate, NOT_JUDGED, "not measured in the candidate")
    fewest = min(baseline.count, candidate.count)
    if fewest < bounds.min_samples:
        return EntryComparison(
            entry,
            baseline,
            candidate,
            NOT_JUDGED,
            f"too few samples to judge ({fewest:,} < {bounds.min_samples:,})",
        )
    before = baseline.latency[bounds.figure] / 1000.0
    after = candidate.latency[bounds.figure] / 1000.0
    delta = after - before
    pct = change_pct(before, after)
    shown = f"{bounds.figure} {before:,.3f} → {after:,.3f} ms ({_signed_pct(pct)}, {delta:+,.3f} ms)"
    beyond_pct = pct is None or abs(pct) > bounds.max_increase_pct
    if delta > bounds.floor_ms and beyond_pct:
        return EntryComparison(entry, baseline, candidate, REGRESSION, shown)
    if -delta > bounds.floor_ms and beyond_pct:
        return EntryComparison(entry, baseline, candidate, IMPROVEMENT, shown)
    return EntryComparison(entry, baseline, candidate, SAME, shown)


# Settings that must match for two runs to be compared: (what a reader calls it, where it is read).
SETTINGS: tuple[tuple[str, Callable[[LoadRun], object]], ...] = (
    ("server", lambda r: _command(r).get("server") or r.summary.get("run", {}).get("host")),
    ("users (rooms)", lambda r: r.summary.get("run", {}).get("users")),
    ("messages/s per room", lambda r: r.summary.get("run", {}).get("rate_per_user")),
    ("patients per room", lambda r: r.summary.get("run", {}).get("patients_per_room")),
    ("message size (characters)", lambda r: r.summary.get("run", {}).get("text_chars")),
)


def _command(run: LoadRun) -> dict[str, object]:
    command = run.meta.get("command")
    return command if isinstance(command, dict) else {}


def setting_differences(baseline: LoadRun, candidate: LoadRun) -> list[str]:
    """The settings the two runs did not share, as "name: baseline → candidate"."""
    out = []
    for name, get in SETTINGS:
        before, after = get(baseline), get(candidate)
        if before != after:
            out.append(f"{name}: {before} → {after}")
    return out


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def error_rate(run: LoadRun) -> float | None:
    """Errors over attempts (every timed sample and every error; a message missing at the end is both a
    sample and an error, and counted once), in percent."""
    summary = run.summary
    errors = _int(summary.get("errors", {}).get("total"))
    samples = sum(_int(entry.get("count")) for entry in summary.get("entries", {}).values())
    counters = summary.get("counters", {})
    lost = _int(counters.get("undelivered")) + _int(counters.get("no_delivery"))
    attempts = samples + errors - lost
    return 100.0 * errors / attempts if attempts > 0 else None


def disconnect_rate(run: LoadRun) -> float | None:
    """Unexpected disconnects over connections opened (welcomed hellos), in percent."""
    summary = run.summary
    entries = summary.get("entries", {})
    opened = sum(_int(entries.get(name, {}).get("count")) for name in ("clinician_hello", "check_in"))
    disconnects = _int(summary.get("disconnects", {}).get("count"))
    return 100.0 * disconnects / opened if opened > 0 else None


def delivered_rate(run: LoadRun) -> float | None:
    """Messages delivered per second of the send schedule (None for runs that did not record it)."""
    messages = run.summary.get("messages")
    value = messages.get("delivered_per_s") if isinstance(messages, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def judge_rate(name: str, before: float | None, after: float | None, bounds: RegressionBounds) -> RunMeasure:
    """An error or disconnect rate (percent): worse when it rose by more than ``RATE_FLOOR_PCT`` points and
    by more than the bound."""
    if before is None or after is None:
        return RunMeasure(name, "%", before, after, NOT_JUDGED, "not measured in both runs")
    delta = after - before
    pct = change_pct(before, after)
    shown = f"{before:.3f} % → {after:.3f} % ({delta:+.3f} points)"
    beyond = pct is None or abs(pct) > bounds.max_increase_pct
    if delta > RATE_FLOOR_PCT and beyond:
        return RunMeasure(name, "%", before, after, REGRESSION, shown)
    if -delta > RATE_FLOOR_PCT and beyond:
        return RunMeasure(name, "%", before, after, IMPROVEMENT, shown)
    return RunMeasure(name, "%", before, after, SAME, shown)


def judge_throughput(before: float | None, after: float | None, bounds: RegressionBounds) -> RunMeasure:
    """The delivered message rate: worse when it fell by more than the bound."""
    name = "delivered messages/s"
    if before is None or after is None:
        return RunMeasure(name, "msgs/s", before, after, NOT_JUDGED, "not recorded in both runs")
    pct = change_pct(before, after)
    shown = f"{before:,.1f} → {after:,.1f} msgs/s ({_signed_pct(pct)})"
    if pct is not None and pct < -bounds.max_increase_pct:
        return RunMeasure(name, "msgs/s", before, after, REGRESSION, shown)
    if pct is not None and pct > bounds.max_increase_pct:
        return RunMeasure(name, "msgs/s", before, after, IMPROVEMENT, shown)
    return RunMeasure(name, "msgs/s", before, after, SAME, shown)


def compare_runs(
    baseline: LoadRun, candidate: LoadRun, bounds: RegressionBounds, *, force: bool = False
) -> Comparison:
    names = list(baseline.entries)
    names += [name for name in candidate.entries if name not in names]
    entries = [
        judge(
            name,
            baseline.figures(name) if name in baseline.entries else None,
            candidate.figures(name) if name in candidate.entries else None,
            bounds,
        )
        for name in names
    ]
    problems = [
        f"The {which} run is {'incomplete' if run.verdict == 'incomplete' else 'invalid'} "
        f"({'; '.join(run.summary.get('validity', {}).get('problems', []))})."
        for which, run in (("baseline", baseline), ("candidate", candidate))
        if not run.valid
    ]
    if not any(e.status != NOT_JUDGED for e in entries) and not problems:
        problems.append("No entry had enough samples in both runs to judge.")
    measures = [
        judge_rate("error rate", error_rate(baseline), error_rate(candidate), bounds),
        judge_rate("disconnect rate", disconnect_rate(baseline), disconnect_rate(candidate), bounds),
        judge_throughput(delivered_rate(baseline), delivered_rate(candidate), bounds),
    ]
    return Comparison(
        baseline,
        candidate,
        bounds,
        entries,
        problems,
        measures=measures,
        differences=setting_differences(baseline, candidate),
        forced=force,
    )


def _count(figures: EntryFigures | None) -> int:
    return figures.count if figures is not None else 0


def _signed_pct(value: float | None) -> str:
    return "new" if value is None else f"{value:+.1f} %"


def _rows(entry: EntryComparison) -> list[list[Cell]]:
    """An entry's block: samples, then each figure in ms; its name and result on the first row only."""
    rows = [[Cell(entry_label(entry.entry)), Cell("samples"), Cell(f"{_count(entry.baseline):,}", "num"),
             Cell(f"{_count(entry.candidate):,}", "num"), Cell(""),
             Cell(f"{entry.status}: {entry.reason}", STATUS_KIND[entry.status])]]
    for figure in FIGURE_NAMES:
        before = entry.baseline.latency.get(figure) if entry.baseline else None
        after = entry.candidate.latency.get(figure) if entry.candidate else None
        change = change_pct(before, after) if before is not None and after is not None else None
        rows.append([Cell(""), Cell(f"{figure} ms", "nowrap"), Cell(ms(before), "num"),
                     Cell(ms(after), "num"),
                     Cell(_signed_pct(change) if before is not None and after is not None else "n/a", "num"),
                     Cell("")])
    return rows


STATUS_KIND = {REGRESSION: "fail", IMPROVEMENT: "pass", SAME: "", NOT_JUDGED: "warn"}


def build_comparison_page(comparison: Comparison) -> Page:
    base, cand = comparison.baseline, comparison.candidate
    page = Page(
        title="Load test comparison: baseline against candidate",
        subtitle=f"baseline {base.path} · candidate {cand.path}",
    )
    kind = {
        "worse": "fail",
        "better": "pass",
        "same": "pass",
        "inconclusive": "warn",
        "not comparable": "warn",
    }[comparison.verdict]
    page.verdict(comparison.headline(), kind, "Regression bound: " + comparison.bounds.describe() + ".")
    page.section(
        "The runs as a whole",
        f"Error rate: errors over attempts; disconnect rate: unexpected disconnects over connections "
        f"opened; each regresses when it rose by more than {RATE_FLOOR_PCT:g} percentage points and by "
        f"more than {comparison.bounds.max_increase_pct:g} %. Delivered messages/s regresses when it "
        f"fell by more than {comparison.bounds.max_increase_pct:g} %.",
    )
    page.table(
        ("figure", "baseline", "candidate", "result"),
        [
            [
                Cell(m.name),
                Cell(_measure(m.baseline, m.unit), "num"),
                Cell(_measure(m.candidate, m.unit), "num"),
                Cell(f"{m.status}: {m.reason}", STATUS_KIND[m.status]),
            ]
            for m in comparison.measures
        ],
        table_id="measures",
    )
    page.section(
        "Latency, side by side",
        "Milliseconds, baseline → candidate (change). Computed from each "
        "run's HDR histograms, message latencies corrected for coordinated omission.",
    )
    page.table(
        ("what was timed", "figure", "baseline", "candidate", "change", "result"),
        [row for e in comparison.entries for row in _rows(e)],
        table_id="comparison",
    )
    page.chart(change_chart(comparison))
    page.section("Distributions overlaid")
    for entry in comparison.entries:
        if entry.baseline is None or entry.candidate is None:
            continue
        label = entry_label(entry.entry)
        page.chart(
            distribution_chart(
                [
                    Curve("baseline", base.log.whole(entry.entry), BASELINE_COLOUR),
                    Curve("candidate", cand.log.whole(entry.entry), CANDIDATE_COLOUR),
                ],
                title=f"{label}: baseline and candidate distributions",
                chart_title=f"{label}: latency by percentile, both runs",
                how_to_read=(
                    "Where the candidate's line (orange) runs above the baseline's (blue), the candidate "
                    "was slower at that percentile; the right-hand end is the rarest, slowest samples."
                ),
                alt=f"Percentile distributions of {label} latency for the baseline and the candidate",
                slug=f"{entry.entry}-distribution-compared",
            )
        )
    page.section("p99 over time, both runs")
    for entry in comparison.entries:
        if entry.baseline is not None and entry.candidate is not None:
            page.chart(p99_over_time(comparison, entry.entry))
    page.section("The two runs")
    page.table(
        ("", "baseline", "candidate"),
        [[Cell(label), Cell(b), Cell(c)] for label, b, c in _run_rows(base, cand)],
        table_id="runs",
    )
    return page


def _measure(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} %" if unit == "%" else f"{value:,.1f}"


def _run_rows(base: LoadRun, cand: LoadRun) -> list[tuple[str, str, str]]:
    def row(label: str, get: Callable[[LoadRun], object]) -> tuple[str, str, str]:
        return label, str(get(base)), str(get(cand))

    return [
        row("folder", lambda r: r.path),
        row("started", lambda r: when(r.start_epoch_s)),
        row("length", lambda r: duration_text(r.duration_s)),
        *(row(name, get) for name, get in SETTINGS),
        row("commit", lambda r: (r.meta.get("commit") or "not recorded")[:12]),
        row("valid", lambda r: "yes" if r.valid else f"no ({r.verdict})"),
        row("verdict of its own SLOs", lambda r: r.verdict),
    ]


def change_chart(comparison: Comparison) -> Chart:
    figure, axes = new_figure()
    figure_name = comparison.bounds.figure
    rows = [(entry_label(e.entry), e.change(figure_name), e.status) for e in comparison.entries]
    rows = [(label, change, status) for label, change, status in rows if change is not None]
    if not rows:
        no_data(figure, axes, "no entry was measured in both runs")
    else:
        colours = {
            REGRESSION: CANDIDATE_COLOUR,
            IMPROVEMENT: "#009E73",
            SAME: "#999999",
            NOT_JUDGED: "#DDDDDD",
        }
        labels = [label for label, _, _ in rows][::-1]
        values = [change for _, change, _ in rows][::-1]
        axes.barh(labels, values, color=[colours[status] for _, _, status in rows][::-1])
        bound = comparison.bounds.max_increase_pct
        axes.axvline(bound, color=CANDIDATE_COLOUR, linestyle="--", linewidth=1, label=f"bound +{bound:g} %")
        axes.axvline(-bound, color="#009E73", linestyle="--", linewidth=1, label=f"-{bound:g} %")
        axes.axvline(0, color="#333333", linewidth=0.8)
        axes.set_xlabel(f"change in {figure_name} from baseline to candidate (%)")
        axes.legend(loc="lower right")
    axes.set_title(f"Change in {figure_name} latency per entry")
    return Chart(
        title=f"How much {figure_name} changed",
        how_to_read=(
            "Bars to the right mean the candidate was slower. Orange: a regression (past the bound "
            "and the floor); green: an improvement; grey: within the noise or too few samples."
        ),
        png=png_bytes(figure),
        alt=f"Horizontal bar chart of the change in {figure_name} per entry, in percent",
        slug="change",
    )


def p99_over_time(comparison: Comparison, entry: str) -> Chart:
    label = entry_label(entry)
    figure_name = comparison.bounds.figure
    figure, axes = new_figure()
    longest = max(comparison.baseline.duration_s, comparison.candidate.duration_s)
    axis = TimeAxis.for_length(longest)
    for name, run, colour in (
        ("baseline", comparison.baseline, BASELINE_COLOUR),
        ("candidate", comparison.candidate, CANDIDATE_COLOUR),
    ):
        intervals = run.intervals(entry)
        offset = run.offset_s()
        axes.plot(
            [midpoint(i, offset) / axis.divisor for i in intervals],
            [figures(i.histogram)[figure_name] / 1000.0 for i in intervals],
            label=name,
            color=colour,
            marker="o" if len(intervals) <= 30 else None,
            markersize=3,
            linewidth=1.4,
        )
    axes.set_ylim(bottom=0)
    axes.set_xlabel(axis.label)
    axes.set_ylabel(f"{figure_name} latency (ms)")
    axes.legend(loc="upper left")
    axes.set_title(f"{label}: {figure_name} in each interval, both runs")
    return Chart(
        title=f"{label}: {figure_name} over time, both runs",
        how_to_read=(
            "Both runs on one time axis, from their own start: a line that stays above the other "
            "throughout is a steady difference; a spike is one slow moment."
        ),
        png=png_bytes(figure),
        alt=f"Line chart of {label} {figure_name} latency over time for both runs",
        slug=f"{entry}-{figure_name}-over-time-compared",
    )


def junit_xml(comparison: Comparison) -> bytes:
    """One test case per entry (skipped when not judged), one for the runs' validity."""
    runs = "queuechat.compare.runs"
    cases = [Case(classname=runs, name="both runs are valid",
                  outcome=Outcome(kind="failure", message=" ".join(comparison.problems))
                  if comparison.problems else None)]
    settings = "; ".join(comparison.differences)
    if comparison.differences and not comparison.forced:
        cases.append(Case(classname=runs, name="both runs had the same settings",
                          outcome=Outcome(kind="failure", message="not comparable: " + settings)))
    else:
        cases.append(Case(classname=runs, name="both runs had the same settings",
                          system_out="judged with --force: " + settings if comparison.differences else None))
    bounds = comparison.bounds
    not_comparable = comparison.verdict == "not comparable"
    judged = [
        (f"queuechat.compare.{entry.entry}",
         f"{bounds.figure} not worse by more than {bounds.max_increase_pct:g} % and {bounds.floor_ms:g} ms",
         entry.status, entry.reason)
        for entry in comparison.entries
    ] + [
        ("queuechat.compare.run", f"{measure.name} not worse beyond the bound", measure.status,
         measure.reason)
        for measure in comparison.measures
    ]
    for classname, name, status, reason in judged:
        outcome, said = _judged_case(status, reason, not_comparable=not_comparable)
        cases.append(Case(classname=classname, name=name, outcome=outcome, system_out=said))
    return junit_xml_document(Suite(name="queuechat.compare", cases=cases), indent=False)


def _judged_case(status: str, reason: str, *, not_comparable: bool) -> tuple[Outcome | None, str | None]:
    """A judged case's outcome, or (when it held) what it says on its ``system-out``."""
    if not_comparable:
        return Outcome(kind="skipped", message="not judged: the runs are not comparable"), None
    if status == REGRESSION:
        return Outcome(kind="failure", message=f"regression: {reason}"), None
    if status == NOT_JUDGED:
        return Outcome(kind="skipped", message=reason), None
    return None, f"{status}: {reason}"


def format_comparison(comparison: Comparison) -> str:
    """The console summary: one line per entry, then the verdict."""
    lines = [f"{'entry':<24}{'samples':>18}  {comparison.bounds.figure + ' ms':>24}  result"]
    for e in comparison.entries:
        samples = f"{e.baseline.count if e.baseline else 0}→{e.candidate.count if e.candidate else 0}"
        before = e.baseline.latency.get(comparison.bounds.figure) if e.baseline else None
        after = e.candidate.latency.get(comparison.bounds.figure) if e.candidate else None
        figure = f"{ms(before)}→{ms(after)}"
        lines.append(
            f"{e.entry:<24}{samples:>18}  {figure:>24}  {e.status}"
            + (
                f" ({_signed_pct(e.change(comparison.bounds.figure))})"
                if e.status != NOT_JUDGED
                else f" ({e.reason})"
            )
        )
    for m in comparison.measures:
        figure = f"{_measure(m.baseline, m.unit)}→{_measure(m.candidate, m.unit)}"
        lines.append(f"{m.name:<24}{'':>18}  {figure:>24}  {m.status} ({m.reason})")
    lines.append(comparison.headline())
    return "\n".join(lines)


@dataclass(frozen=True)
class ComparisonResult:
    report: ReportResult
    comparison: Comparison
    junit: Path


def write_comparison(
    baseline_dir: Path,
    candidate_dir: Path,
    out_dir: Path,
    bounds: RegressionBounds | None = None,
    junit: Path | None = None,
    *,
    force: bool = False,
) -> ComparisonResult:
    """Compare two load runs: the page, its PNGs, and the verdict as JUnit XML (``out_dir/junit.xml``).
    ``force`` judges runs whose settings differ (otherwise: not comparable)."""
    bounds = bounds or RegressionBounds()
    baseline = read_load_run(Path(baseline_dir))
    candidate = read_load_run(Path(candidate_dir))
    comparison = compare_runs(baseline, candidate, bounds, force=force)
    try:
        page = build_comparison_page(comparison)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"a summary.json field has an unexpected shape ({type(exc).__name__})") from None
    target = Path(out_dir)
    junit_path = junit if junit is not None else target / "junit.xml"
    try:
        report = write_page(
            page, target, footer="Written by queuechat report --compare. Counts and times only."
        )
        junit_path.parent.mkdir(parents=True, exist_ok=True)
        junit_path.write_bytes(junit_xml(comparison))
    except OSError as exc:
        raise ReportError(
            f"{target}: cannot write the comparison ({exc.strerror or type(exc).__name__})"
        ) from None
    return ComparisonResult(report, comparison, junit_path)
