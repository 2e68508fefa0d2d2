"""The simulation report's charts, drawn with matplotlib (Agg) from plain numbers: each function returns a
:class:`Chart` with a title that says what it shows, units on both axes and one sentence on reading it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._mpl import PERCENTILE_COLOURS, SERIES_COLOURS, new_figure, no_data, png_bytes
from ._page import Chart

WAITING_COLOUR = SERIES_COLOURS[0]
CALL_COLOUR = SERIES_COLOURS[1]
VIOLATION_COLOUR = "#B3261E"
HEALING_COLOUR = "#888888"

# Reasons in plain words, in the order a reader meets them.
ERASURE_WORDS = {
    "not_in_view": "patient left, chat not on screen",
    "chat_closed": "clinician closed the chat",
    "viewed_other": "clinician opened another chat",
    "call_started": "another call started",
    "refresh": "clinician's page refreshed",
}


@dataclass(frozen=True)
class TimeAxis:
    """Minutes for runs under two hours, hours beyond; virtual or real time said in the label."""

    per_unit_ms: float
    unit: str
    label: str

    def __call__(self, t_ms: float) -> float:
        return t_ms / self.per_unit_ms


def time_axis(end_ms: float, virtual: bool) -> TimeAxis:
    kind = "virtual " if virtual else ""
    if end_ms >= 2 * 3_600_000:
        return TimeAxis(3_600_000.0, "h", f"time since the run started ({kind}hours)")
    if end_ms < 5 * 60_000:
        return TimeAxis(1_000.0, "s", f"time since the run started ({kind}seconds)")
    return TimeAxis(60_000.0, "min", f"time since the run started ({kind}minutes)")


# Bins for counting over time: the first that gives at most 30 bars (name, milliseconds).
_BINS = (("5 seconds", 5_000.0), ("10 seconds", 10_000.0), ("30 seconds", 30_000.0), ("minute", 60_000.0),
         ("5 minutes", 300_000.0), ("10 minutes", 600_000.0), ("hour", 3_600_000.0))


def count_bin(end_ms: float) -> tuple[str, float]:
    for name, ms in _BINS:
        if end_ms / ms <= 30:
            return name, ms
    return _BINS[-1]


@dataclass(frozen=True)
class WaitUnit:
    per_unit_s: float
    name: str


def wait_unit(longest_s: float) -> WaitUnit:
    return WaitUnit(60.0, "minutes") if longest_s >= 180 else WaitUnit(1.0, "seconds")


def _healing(axes: Any, axis: TimeAxis, heal_ms: float | None, end_ms: float) -> None:
    if heal_ms is None or not 0 < heal_ms < end_ms:
        return
    axes.axvspan(axis(heal_ms), axis(end_ms), color=HEALING_COLOUR, alpha=0.12, lw=0,
                 label="healing phase (no faults; everyone waiting is answered)")
    axes.axvline(axis(heal_ms), color=HEALING_COLOUR, lw=1, ls="--")


def _integer_y(axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.yaxis.set_major_locator(MaxNLocator(integer=True))


def queue_chart(times_ms: Sequence[float], waiting: Sequence[int], in_call: Sequence[int], end_ms: float,
                heal_ms: float | None, axis: TimeAxis, violation_ms: Sequence[float]) -> Chart:
    import numpy as np

    figure, axes = new_figure()
    x = np.array([0.0, *(axis(t) for t in times_ms), axis(end_ms)])
    w = np.array([0, *waiting, waiting[-1] if waiting else 0])
    c = np.array([0, *in_call, in_call[-1] if in_call else 0])
    axes.fill_between(x, 0, w, step="post", color=WAITING_COLOUR, alpha=0.85, lw=0, label="waiting")
    axes.fill_between(x, w, w + c, step="post", color=CALL_COLOUR, alpha=0.85, lw=0,
                      label="on a call with the clinician")
    _healing(axes, axis, heal_ms, end_ms)
    if violation_ms:
        axes.plot([axis(t) for t in violation_ms], [0] * len(violation_ms), ls="none", marker="^",
                  color=VIOLATION_COLOUR, ms=7, clip_on=False, zorder=5, label="a rule violation")
    axes.set_xlim(0, axis(end_ms))
    axes.set_ylim(0, max(1, int((w + c).max())) * 1.4 + 0.5)  # room for the legend above the steps
    _integer_y(axes)
    axes.set_xlabel(axis.label)
    axes.set_ylabel("patients in the queue (all rooms)")
    axes.set_title("Patients in the queue over the run")
    axes.legend(loc="upper right")
    return Chart(
        "Patients in the queue over the run",
        "Each step up is a patient checking in and each step down a patient leaving, as the clinicians' "
        "screens showed it; blue is patients waiting, orange the patient each clinician has on a call, "
        "and the grey band at the right is the healing phase.",
        png_bytes(figure),
        "Step chart of patients waiting and on a call, summed over all rooms, over the run's time.",
        "queue-length")


def waits_scatter(checkins_ms: Sequence[float], waits_s: Sequence[float | None], end_ms: float,
                  heal_ms: float | None, axis: TimeAxis, unit: WaitUnit, p50_s: float | None,
                  p90_s: float | None) -> Chart:
    figure, axes = new_figure()
    answered = [(axis(t), w / unit.per_unit_s) for t, w in zip(checkins_ms, waits_s, strict=True)
                if w is not None]
    never = [axis(t) for t, w in zip(checkins_ms, waits_s, strict=True) if w is None]
    _healing(axes, axis, heal_ms, end_ms)
    if not answered and not never:
        no_data(figure, axes, "No patient checked in")
    else:
        top = max((w for _, w in answered), default=1.0) or 1.0
        if answered:
            axes.scatter([a for a, _ in answered], [w for _, w in answered], s=14, color=WAITING_COLOUR,
                         alpha=0.7, lw=0, label=f"answered ({len(answered)})")
        if never:
            axes.scatter(never, [top * 1.08] * len(never), marker="x", s=30, color=VIOLATION_COLOUR,
                         label=f"never answered ({len(never)}), shown at the top")
        for name, value in (("p50", p50_s), ("p90", p90_s)):
            if value is not None:
                axes.axhline(value / unit.per_unit_s, color=PERCENTILE_COLOURS[name], ls="--", lw=1,
                             label=f"{'median' if name == 'p50' else '9 in 10 within'}: "
                                   f"{_fmt(value / unit.per_unit_s)} {unit.name}")
        axes.set_ylim(0, top * 1.15)
        axes.set_xlim(0, axis(end_ms))
        axes.legend(loc="best")
    axes.set_xlabel(f"check-in {axis.label}")
    axes.set_ylabel(f"wait for a first answer ({unit.name})")
    axes.set_title("How long each patient waited for a first answer")
    return Chart(
        "How long each patient waited for a first answer",
        "Each dot is one patient: across, when they checked in; up, how long until the clinician's first "
        "message reached them or a call started; red crosses along the top are patients who were never "
        "answered.",
        png_bytes(figure),
        "Scatter chart of each patient's wait for a first answer against check-in time.",
        "waits-over-time")


def waits_histogram(waits_s: Sequence[float], unit: WaitUnit,
                    percentiles: Sequence[tuple[str, float]]) -> Chart:
    import numpy as np

    figure, axes = new_figure()
    if not waits_s:
        no_data(figure, axes, "No patient was answered")
    else:
        values = np.array(waits_s) / unit.per_unit_s
        edges = np.histogram_bin_edges(values, bins=min(40, max(5, int(len(values) ** 0.5) + 1)))
        axes.hist(values, bins=edges, color=WAITING_COLOUR, alpha=0.85)
        for name, value in percentiles:
            axes.axvline(value / unit.per_unit_s, color=PERCENTILE_COLOURS.get(name, "#555555"), ls="--",
                         lw=1.2, label=f"{name}: {_fmt(value / unit.per_unit_s)} {unit.name}")
        axes.set_xlim(left=0)
        _integer_y(axes)
        axes.legend(loc="upper right")
    axes.set_xlabel(f"wait for a first answer ({unit.name})")
    axes.set_ylabel("patients")
    axes.set_title("How waits for a first answer were spread")
    return Chart(
        "How waits for a first answer were spread",
        "Each bar counts the patients whose wait fell in its range; the dashed lines mark the median (p50) "
        "and the waits that 90 % and 99 % of answered patients stayed within.",
        png_bytes(figure),
        "Histogram of waits for a first answer with percentile lines.",
        "waits-distribution")


def arrivals_chart(checkins_ms: Sequence[float], answers_ms: Sequence[float], end_ms: float,
                   axis: TimeAxis) -> Chart:
    import numpy as np

    figure, axes = new_figure()
    per, bin_ms = count_bin(end_ms)
    count = max(1, int(np.ceil(end_ms / bin_ms - 0.01)))  # a run ends a moment after its planned length
    edges = np.arange(count + 1) * bin_ms
    last = edges[-1] - 1.0  # what happens in that moment counts in the last bin
    arrived, _ = np.histogram(np.minimum(np.array(checkins_ms, dtype=float), last), bins=edges)
    answered, _ = np.histogram(np.minimum(np.array(answers_ms, dtype=float), last), bins=edges)
    centres = np.array([axis(e) for e in edges[:-1]]) + axis(bin_ms) / 2
    width = axis(bin_ms) * 0.4
    axes.bar(centres - width / 2, arrived, width=width, color=SERIES_COLOURS[0], label="checked in")
    axes.bar(centres + width / 2, answered, width=width, color=SERIES_COLOURS[2],
             label="answered for the first time")
    axes.set_xlim(0, axis(edges[-1]))
    _integer_y(axes)
    axes.set_xlabel(axis.label)
    axes.set_ylabel(f"patients per {per}")
    axes.set_title(f"Patients checking in and answered, per {per}")
    axes.legend(loc="upper right")
    return Chart(
        f"Patients checking in and answered, per {per}",
        f"For each {per} of the run, the blue bar counts patients who checked in and the green bar those "
        "who got their first answer (a message or a call); green keeping up with blue means the clinic "
        "kept pace.",
        png_bytes(figure),
        f"Grouped bar chart of check-ins and first answers per {per}.",
        "arrivals-and-answers")


def messages_histogram(per_visit: Sequence[int]) -> Chart:
    import numpy as np

    figure, axes = new_figure()
    if not per_visit:
        no_data(figure, axes, "No patient checked in")
    else:
        values = np.array(per_visit)
        top = int(values.max())
        edges = np.arange(-0.5, top + 1.5, 1.0) if top <= 60 else np.histogram_bin_edges(values, bins=40)
        axes.hist(values, bins=edges, color=SERIES_COLOURS[2], alpha=0.85)
        median = float(np.median(values))
        axes.axvline(median, color=PERCENTILE_COLOURS["p50"], ls="--", lw=1.2,
                     label=f"median: {_fmt(median)} messages")
        axes.set_xlim(left=-0.5)
        _integer_y(axes)
        axes.legend(loc="upper right")
    axes.set_xlabel("messages in the conversation (both ways)")
    axes.set_ylabel("conversations (patients' visits)")
    axes.set_title("Messages per conversation")
    return Chart(
        "Messages per conversation",
        "Each bar counts the patients' visits that had that many chat messages, the patient's and the "
        "clinician's together; the dashed line is the median visit.",
        png_bytes(figure),
        "Histogram of the number of messages per patient visit.",
        "messages-per-conversation")


def erasures_chart(erasures: dict[str, int]) -> Chart:
    figure, axes = new_figure()
    order = [r for r in ERASURE_WORDS if r in erasures]
    order += sorted(r for r in erasures if r not in ERASURE_WORDS)
    if not order or not any(erasures.values()):
        no_data(figure, axes, "No conversation was erased")
    else:
        labels = [f"{ERASURE_WORDS.get(r, r)} ({r})" for r in order]
        values = [erasures[r] for r in order]
        positions = list(range(len(order)))[::-1]
        bars = axes.barh(positions, values, color=SERIES_COLOURS[4])
        axes.set_yticks(positions, labels)
        axes.bar_label(bars, padding=3)
        axes.set_xlim(0, max(values) * 1.15 or 1)
        axes.grid(axis="y", visible=False)
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("conversations erased")
    axes.set_title("Conversations erased, by reason")
    return Chart(
        "Conversations erased, by reason",
        "Each bar counts the conversations erased for one reason (the protocol's reason code in "
        "brackets); erasing is intended: no conversation is kept after the patient has gone.",
        png_bytes(figure),
        "Horizontal bar chart of erased conversations by reason.",
        "erasures-by-reason")


def violations_chart(by_rule: dict[str, int], titles: dict[str, str]) -> Chart:
    figure, axes = new_figure()
    rules = list(by_rule)
    positions = list(range(len(rules)))
    bars = axes.bar(positions, [by_rule[r] for r in rules], color=VIOLATION_COLOUR)
    wordy = len(rules) <= 6  # more rules than that: ids only, the table below names them
    axes.set_xticks(positions, [f"{r}\n{titles[r]}" if wordy and titles.get(r) else r for r in rules])
    axes.bar_label(bars, padding=2)
    _integer_y(axes)
    axes.set_ylim(0, max(by_rule.values()) * 1.15 + 0.5)
    axes.grid(axis="x", visible=False)
    axes.set_xlabel("rule (see docs/protocol.md)")
    axes.set_ylabel("violations found")
    axes.set_title("Rule violations found, by rule")
    return Chart(
        "Rule violations found, by rule",
        "Each bar counts the times the checker saw the server break that rule; the table below gives each "
        "one with the history lines that show it.",
        png_bytes(figure),
        "Bar chart of rule violations by rule id.",
        "violations-by-rule")


def _fmt(value: float) -> str:
    if value == int(value):
        return f"{value:.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}" if value < 1 else f"{value:.1f}"
