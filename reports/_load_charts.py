"""The charts of a load report (and, overlaid, of a comparison): latency percentiles over time,
the HDR percentile distribution, throughput, users and connections, errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from formats.hlog import MESSAGE_ENTRIES, Interval
from reports._hdr import FIGURE_NAMES, distribution, figures
from reports._load_run import LoadRun, entry_label
from reports._mpl import PERCENTILE_COLOURS, SERIES_COLOURS, new_figure, no_data, png_bytes
from reports._page import Chart


@dataclass(frozen=True)
class TimeAxis:
    """Seconds for short runs, minutes for long ones: the unit is always in the axis label."""

    divisor: float
    label: str

    @classmethod
    def for_length(cls, seconds: float) -> TimeAxis:
        if seconds > 3 * 3600:
            return cls(3600.0, "time since the run started (hours)")
        if seconds > 600:
            return cls(60.0, "time since the run started (minutes)")
        return cls(1.0, "time since the run started (seconds)")


def midpoint(interval: Interval, offset_s: float) -> float:
    """Where an interval's figures are drawn: its middle, in seconds since the run started (not before it)."""
    start = max(interval.start_s + offset_s, 0.0)
    return (start + interval.start_s + offset_s + interval.length_s) / 2


def covered(interval: Interval, offset_s: float) -> float:
    """The part of the interval the run covered: the first interval starts on a whole second, the run
    a little later, and a rate over the whole interval would show a dip that did not happen."""
    end = interval.start_s + offset_s + interval.length_s
    return max(end - max(interval.start_s + offset_s, 0.0), 1e-3)


def _use_log_scale(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) > 30


def percentiles_over_time(run: LoadRun, entry: str) -> Chart:
    label = entry_label(entry)
    figure, axes = new_figure()
    intervals = run.intervals(entry)
    axis = TimeAxis.for_length(max(run.duration_s, run.log.end_s()))
    offset = run.offset_s()
    if not intervals:
        no_data(figure, axes, "no sample of this entry was recorded")
    else:
        times = np.array([midpoint(i, offset) / axis.divisor for i in intervals])
        per_interval = [figures(i.histogram) for i in intervals]
        marker = "o" if len(intervals) <= 30 else None
        everything: list[float] = []
        for name in reversed(FIGURE_NAMES):
            values = [f[name] / 1000.0 for f in per_interval]
            everything += values
            axes.plot(
                times,
                values,
                label=name,
                color=PERCENTILE_COLOURS[name],
                marker=marker,
                markersize=3,
                linewidth=1.4 if name != "max" else 1.0,
            )
        uncorrected = run.intervals(entry, uncorrected=True)
        if uncorrected:
            u_times = [midpoint(i, offset) / axis.divisor for i in uncorrected]
            u_values = [figures(i.histogram)["p99"] / 1000.0 for i in uncorrected]
            everything += u_values
            axes.plot(
                u_times,
                u_values,
                label="uncorrected p99",
                color=PERCENTILE_COLOURS["uncorrected p99"],
                linestyle="--",
                marker=marker,
                markersize=3,
                linewidth=1.2,
            )
        log = _use_log_scale(everything)
        if log:
            axes.set_yscale("log")
        else:
            axes.set_ylim(bottom=0)
        axes.set_ylabel("latency (ms" + (", log scale)" if log else ")"))
        axes.set_xlabel(axis.label)
        axes.legend(loc="upper left", ncols=6)
    axes.set_title(f"{label}: latency percentiles each {_interval_word(run)}")
    return Chart(
        title=f"{label}: how latency changed during the run",
        how_to_read=(
            "Each line is one percentile of the latency in each interval: 99 % of the messages in "
            "that interval took no longer than the p99 line. The dashed line is p99 measured from "
            "the actual send; the solid ones count from when the send was due, so a stalled "
            "server shows up."
        )
        if run.intervals(entry, uncorrected=True)
        else (
            "Each line is one percentile of the latency in each interval: 99 % of the requests in "
            "that interval took no longer than the p99 line."
        ),
        png=png_bytes(figure),
        alt=f"Line chart of {label} latency percentiles (p50 to max) in milliseconds over the run",
        slug=f"{entry}-over-time",
    )


def _interval_word(run: LoadRun) -> str:
    interval = run.summary.get("run", {}).get("interval_s", 1.0)
    return "second" if interval == 1.0 else f"{interval:g} s"


@dataclass(frozen=True)
class Curve:
    label: str
    histogram: HdrHistogram
    colour: str
    dashed: bool = False


_TICKS = (
    (1.0, "0%"),
    (2.0, "50%"),
    (10.0, "90%"),
    (100.0, "99%"),
    (1e3, "99.9%"),
    (1e4, "99.99%"),
    (1e5, "99.999%"),
    (1e6, "99.9999%"),
)


def distribution_chart(
    curves: Sequence[Curve], *, title: str, chart_title: str, how_to_read: str, alt: str, slug: str
) -> Chart:
    """HdrHistogram's percentile plot: the tail stretched on a log scale so that p99.9 gets room."""
    figure, axes = new_figure()
    drawn = [c for c in curves if c.histogram.get_total_count()]
    if not drawn:
        no_data(figure, axes, "no sample was recorded")
    else:
        highest = max(c.histogram.get_total_count() for c in drawn)
        right = 10.0 ** max(2, math.ceil(math.log10(highest)))
        everything: list[float] = []
        for curve in drawn:
            percentiles, values = distribution(curve.histogram)
            fraction = np.minimum(percentiles / 100.0, 1.0 - 1.0 / right)
            x = np.concatenate(([1.0], 1.0 / (1.0 - fraction)))
            y = np.concatenate(([values[0]], values)) / 1000.0
            everything += list(y)
            axes.step(
                x,
                y,
                where="pre",
                label=f"{curve.label} ({curve.histogram.get_total_count():,} samples)",
                color=curve.colour,
                linestyle="--" if curve.dashed else "-",
                linewidth=1.5,
            )
        axes.set_xscale("log")
        ticks = [(x, text) for x, text in _TICKS if x <= right]
        axes.set_xticks([x for x, _ in ticks], [text for _, text in ticks])
        axes.minorticks_off()
        axes.set_xlim(1.0, right)
        log = _use_log_scale(everything)
        if log:
            axes.set_yscale("log")
        else:
            axes.set_ylim(bottom=0)
        axes.set_xlabel("percentile (log scale of the tail: each step right is ten times rarer)")
        axes.set_ylabel("latency (ms" + (", log scale)" if log else ")"))
        axes.legend(loc="upper left")
    axes.set_title(chart_title)
    return Chart(title=title, how_to_read=how_to_read, png=png_bytes(figure), alt=alt, slug=slug)


def entry_distribution(run: LoadRun, entry: str) -> Chart:
    label = entry_label(entry)
    curves = []
    whole = run.whole(entry)
    if whole is not None:
        curves.append(Curve("from the due time (corrected)", whole, PERCENTILE_COLOURS["p99"]))
    uncorrected = run.whole(entry, uncorrected=True)
    if uncorrected is not None:
        curves.append(
            Curve(
                "from the actual send (uncorrected)",
                uncorrected,
                PERCENTILE_COLOURS["uncorrected p99"],
                dashed=True,
            )
        )
    return distribution_chart(
        curves,
        title=f"{label}: latency distribution over the whole run",
        chart_title=f"{label}: latency by percentile",
        how_to_read=(
            "Read across to a percentile and up to the line: at 99% the line shows the latency "
            "that 99 % of samples stayed under. A line that rises steeply at the right means a "
            "few samples took much longer than the rest."
        ),
        alt=f"Percentile distribution of {label} latency in milliseconds, log-scaled tail",
        slug=f"{entry}-distribution",
    )


def throughput_chart(run: LoadRun) -> Chart:
    figure, axes = new_figure()
    axis = TimeAxis.for_length(max(run.duration_s, run.log.end_s()))
    offset = run.offset_s()
    nominal = float(run.summary.get("run", {}).get("interval_s", 1.0) or 1.0)
    drawn = False
    totals: dict[float, float] = {}
    for colour, entry in zip(SERIES_COLOURS, MESSAGE_ENTRIES, strict=False):
        intervals = [i for i in run.intervals(entry) if covered(i, offset) >= 0.5 * nominal]
        if not intervals:
            continue
        times = [midpoint(i, offset) / axis.divisor for i in intervals]
        rates = [i.count / covered(i, offset) for i in intervals]
        for t, r in zip(times, rates, strict=True):
            totals[t] = totals.get(t, 0.0) + r
        axes.plot(times, rates, label=entry_label(entry), color=colour, linewidth=1.3)
        drawn = True
    if drawn:
        ordered = sorted(totals)
        axes.plot(ordered, [totals[t] for t in ordered], label="all messages", color="#333333", linewidth=1.8)
        messages = run.summary.get("messages")
        planned = messages.get("planned_per_s") if isinstance(messages, dict) else None
        if isinstance(planned, int | float) and planned > 0:
            axes.axhline(planned, color="#333333", linestyle="--", linewidth=1, label="planned rate")
        axes.set_ylim(bottom=0)
        axes.set_xlabel(axis.label)
        axes.set_ylabel("messages delivered per second")
        axes.legend(loc="lower center", ncols=3)
    else:
        no_data(figure, axes, "no message was delivered")
    axes.set_title("Messages delivered per second")
    return Chart(
        title="Throughput: messages delivered each second",
        how_to_read=(
            "The number of chat messages that reached the other side in each second, each way and in "
            "all. A flat line at the dashed one (the planned rate) means the server kept up; dips "
            "mean it fell behind. Messages still missing after the drain window count in the last "
            "interval."
        ),
        png=png_bytes(figure),
        alt="Line chart of messages delivered per second over the run",
        slug="throughput",
    )


def users_chart(run: LoadRun) -> Chart:
    figure, axes = new_figure()
    axis = TimeAxis.for_length(max(run.duration_s, run.log.end_s()))
    if run.timeline:
        times = [max(row.start_s, 0.0) / axis.divisor for row in run.timeline]
        axes.step(
            times,
            [row.connections for row in run.timeline],
            where="post",
            label="open connections",
            color=SERIES_COLOURS[0],
            linewidth=1.6,
        )
        axes.step(
            times,
            [row.users for row in run.timeline],
            where="post",
            label="simulated rooms (Locust users)",
            color=SERIES_COLOURS[1],
            linewidth=1.6,
        )
        axes.set_ylim(bottom=0)
        axes.set_xlabel(axis.label)
        axes.set_ylabel("count")
        axes.legend(loc="lower center", ncols=2)
    else:
        no_data(figure, axes, "this run did not record users over time (no timeline.csv)")
    axes.set_title("Simulated rooms and open connections")
    return Chart(
        title="Load: simulated rooms and open connections",
        how_to_read=(
            "Each simulated room is one Locust user: a clinician and its patients, each with its own "
            "connection. The lines rise while the load ramps up and should stay flat after."
        ),
        png=png_bytes(figure),
        alt="Step chart of simulated rooms and open WebSocket connections over the run",
        slug="users-and-connections",
    )


def errors_chart(run: LoadRun) -> Chart:
    figure, axes = new_figure()
    axis = TimeAxis.for_length(max(run.duration_s, run.log.end_s()))
    if run.timeline:
        times = np.array([max(row.start_s, 0.0) / axis.divisor for row in run.timeline])
        width = (min((row.length_s for row in run.timeline), default=1.0) / axis.divisor) * 0.45
        errors = [row.errors for row in run.timeline]
        disconnects = [row.disconnects for row in run.timeline]
        axes.bar(
            times - width / 2,
            errors,
            width=width,
            label="protocol errors",
            color=SERIES_COLOURS[3],
            align="edge",
        )
        axes.bar(
            times + width / 2,
            disconnects,
            width=width,
            label="unexpected disconnects",
            color=SERIES_COLOURS[4],
            align="edge",
        )
        top = max([*errors, *disconnects, 0])
        axes.set_ylim(0, max(1, top) * 1.15)
        if top == 0:
            axes.text(
                0.5,
                0.5,
                "no error and no unexpected disconnect",
                ha="center",
                va="center",
                transform=axes.transAxes,
                color="#1b7a3a",
                fontsize=12,
            )
        axes.yaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel(axis.label)
        axes.set_ylabel("count in each interval")
        axes.legend(loc="upper right")
    else:
        no_data(figure, axes, "this run did not record errors over time (no timeline.csv)")
    axes.set_title("Errors and unexpected disconnects")
    return Chart(
        title="Errors and unexpected disconnects over time",
        how_to_read=(
            "Bars count the error answers the server gave and the connections it closed or lost "
            "unexpectedly, in each interval. Empty is good."
        ),
        png=png_bytes(figure),
        alt="Bar chart of protocol errors and unexpected disconnects over the run",
        slug="errors",
    )


def ms(value_us: Any) -> str:
    """Microseconds shown as milliseconds with every digit the histogram has (1 us)."""
    if not isinstance(value_us, int | float):
        return "n/a"
    return f"{value_us / 1000.0:,.3f}"
