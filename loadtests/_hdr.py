"""Latency recording in HDR histograms: per process (:class:`Recorder`) and merged (:class:`Collector`).

Values are microseconds, recorded into HdrHistogram (the ``hdrhistogram``
package) with three significant digits from 1 µs to one hour. Each
generator process records into per-interval histograms aligned on the wall
clock (``interval_s``, 1 s by default); a completed interval is added into
the process's whole-run histogram and shipped, encoded, to whoever merges
(the master, or the same process when it runs alone). The merger adds
encoded histograms, which is lossless: the merged whole-run histogram is
the one that all samples from every process would have given in one.

Message entries carry two histograms: the latency from the *intended* send
time (corrected for coordinated omission, as wrk2 does; the primary figure)
and from the *actual* send time (uncorrected, kept beside it).

Each interval also carries a timeline row: the users and connections open
at its end (gauges, changed by the users as they happen) and the errors and
disconnects recorded in it; the merger adds rows of the same interval start
from every process, as it adds histograms.

The files written from here (the interval log, the timeline) are defined in ``formats.hlog`` and
``formats.timeline``, beside their readers; so are the entry names.

No Locust, no gevent, no I/O here except the output writers.
"""

from __future__ import annotations

import ctypes
import io
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]  # hdrhistogram ships no types

from formats.hlog import (
    DISCONNECTS,
    ERRORS,
    HIGHEST_US,
    MESSAGE_ENTRIES,
    UNCORRECTED_SUFFIX,
    decode,
    encode,
    merge,
    new_histogram,
    value_at_percentiles,
    write_interval_log,
)
from formats.timeline import GAUGES, write_timeline

REPORT_PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


def _clamp(value_us: float) -> int:
    if not value_us > 0:  # also NaN
        return 0
    return HIGHEST_US if value_us >= HIGHEST_US else int(value_us)


# hdrhistogram's own mean and standard deviation walk every one of the histogram's ~23,000 counters in
# Python, one call each (about half a second per histogram). These give the same answers from the
# non-zero counters only; tests compare them. (Percentiles: ``formats.hlog.value_at_percentiles``.)


def _nonzero(histogram: HdrHistogram) -> list[tuple[int, int]]:
    counts = histogram.counts
    length = min(histogram.counts_len, len(counts))
    return [(index, count) for index, count in enumerate(counts[:length]) if count]


def mean_and_stddev(histogram: HdrHistogram) -> tuple[float, float]:
    """``get_mean_value()`` and ``get_stddev()``, in one pass over the non-zero counters."""
    total = histogram.get_total_count()
    if not total:
        return 0.0, 0.0
    points = [(histogram._hdr_median_equiv_value(histogram.get_value_from_index(index)), count)
              for index, count in _nonzero(histogram)]
    mean = float(sum(value * count for value, count in points)) / total
    variance = sum((value * 1.0 - mean) ** 2 * count for value, count in points) / total
    return mean, math.sqrt(variance)


def reset(histogram: HdrHistogram) -> None:
    """``histogram.reset()`` without its Python loop over every counter."""
    counts = histogram.counts
    ctypes.memset(ctypes.addressof(counts), 0, ctypes.sizeof(counts))
    histogram.total_count = 0
    histogram.min_value = sys.maxsize
    histogram.max_value = 0
    histogram.start_time_stamp_msec = sys.maxsize
    histogram.end_time_stamp_msec = 0


def summarize(histogram: HdrHistogram) -> dict[str, Any]:
    """Count, min, mean, max and the report percentiles, in microseconds."""
    count = histogram.get_total_count()
    if not count:
        return {"count": 0}
    mean, stddev = mean_and_stddev(histogram)
    out: dict[str, Any] = {
        "count": count,
        "min": histogram.get_min_value(),
        "mean": round(mean, 1),
        "stddev": round(stddev, 1),
        "max": histogram.get_max_value(),
    }
    for percentile, value in zip(REPORT_PERCENTILES, value_at_percentiles(histogram, REPORT_PERCENTILES),
                                 strict=True):
        out[f"p{percentile:g}"] = value
    return out


# --------------------------------------------------------------------------- per process


class _EntryRecording:
    __slots__ = ("interval", "interval_uncorrected", "uncorrected", "whole", "whole_uncorrected")

    def __init__(self, uncorrected: bool) -> None:
        self.uncorrected = uncorrected
        self.interval = new_histogram()
        self.whole = new_histogram()
        self.interval_uncorrected = new_histogram() if uncorrected else None
        self.whole_uncorrected = new_histogram() if uncorrected else None


class Recorder:
    """One generator process's recordings: latencies per entry and interval, errors, disconnects.

    Not thread-safe; under gevent every greenlet of the process shares it.
    After :meth:`close`, nothing more is recorded, so that what the final
    :meth:`drain` reports is exactly what was recorded.
    """

    def __init__(self, *, interval_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._clock = clock
        self._entries: dict[str, _EntryRecording] = {}
        self._index = self._interval_index()
        self._completed: list[dict[str, Any]] = []
        self._errors: dict[str, dict[str, int]] = {}  # entry -> code -> count (whole run)
        self._errors_sent: dict[str, dict[str, int]] = {}
        self._disconnects: dict[str, int] = {}  # close code (as text) -> count
        self._disconnects_sent: dict[str, int] = {}
        self.counters: dict[str, int] = {}  # planned, sent, delivered, undelivered, skipped sends, ...
        self.stops: dict[str, dict[str, Any]] = {}  # users that gave up: reason -> count, first, last
        self.gauges: dict[str, int] = dict.fromkeys(GAUGES, 0)
        self._interval_errors = 0
        self._interval_disconnects = 0
        self._timeline: list[dict[str, Any]] = []  # completed intervals' rows, not yet drained
        self.closed = False

    def _interval_index(self) -> int:
        return math.floor(self._clock() / self.interval_s)

    def _now(self) -> None:
        """Close the current interval if the clock has left it, so that what follows counts in the next."""
        index = math.floor(self._clock() / self.interval_s)
        if index != self._index:
            self._roll(index)

    def _entry(self, name: str) -> _EntryRecording:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = _EntryRecording(uncorrected=name in MESSAGE_ENTRIES)
        return entry

    def record(self, name: str, value_us: float, uncorrected_us: float | None = None) -> None:
        """One sample: ``value_us`` is the primary (for messages: corrected) latency."""
        if self.closed:
            return
        index = math.floor(self._clock() / self.interval_s)
        if index != self._index:
            self._roll(index)
        entry = self._entries.get(name) or self._entry(name)
        entry.interval.record_value(_clamp(value_us))
        if entry.interval_uncorrected is not None:
            uncorrected = value_us if uncorrected_us is None else uncorrected_us
            entry.interval_uncorrected.record_value(_clamp(uncorrected))

    def error(self, name: str, code: str) -> None:
        if self.closed:
            return
        self._now()
        by_code = self._errors.setdefault(name, {})
        by_code[code] = by_code.get(code, 0) + 1
        self._interval_errors += 1

    def disconnect(self, close_code: int | None) -> None:
        if self.closed:
            return
        self._now()
        key = str(close_code) if close_code is not None else "dropped"
        self._disconnects[key] = self._disconnects.get(key, 0) + 1
        self._interval_disconnects += 1

    def adjust(self, gauge: str, delta: int) -> None:
        """A gauge (users, connections) changed now: the interval it ends in shows the new value."""
        if self.closed:
            return
        self._now()
        self.gauges[gauge] = self.gauges.get(gauge, 0) + delta

    def count(self, name: str, n: int = 1) -> None:
        """An informational counter (not an error): messages skipped, in flight at the end, ..."""
        if not self.closed:
            self.counters[name] = self.counters.get(name, 0) + n

    def user_stopped(self, reason: str) -> None:
        """A user gave up before the end (why, and when: epoch seconds)."""
        now = self._clock()
        seen = self.stops.get(reason)
        if seen is None:
            self.stops[reason] = {"count": 1, "first": now, "last": now}
        else:
            seen["count"] += 1
            seen["last"] = now

    def close(self) -> None:
        self.closed = True

    def _roll(self, new_index: int, *, partial_end: float | None = None) -> None:
        """Close the current interval: ship what it holds, add it to the whole run, start the next."""
        start = self._index * self.interval_s
        length = self.interval_s
        if partial_end is not None:
            length = min(self.interval_s, max(0.0, partial_end - start))
        for name, entry in self._entries.items():
            count = entry.interval.get_total_count()
            if not count:
                continue
            item: dict[str, Any] = {
                "entry": name,
                "start": start,
                "length": round(length, 6),
                "count": count,
                "hist": encode(entry.interval),
                "uhist": None,
            }
            entry.whole.add(entry.interval)
            reset(entry.interval)
            if entry.interval_uncorrected is not None and entry.whole_uncorrected is not None:
                item["uhist"] = encode(entry.interval_uncorrected)
                entry.whole_uncorrected.add(entry.interval_uncorrected)
                reset(entry.interval_uncorrected)
            self._completed.append(item)
        self._timeline.append({
            "start": start,
            "length": round(length, 6),
            **{gauge: self.gauges.get(gauge, 0) for gauge in GAUGES},
            "errors": self._interval_errors,
            "disconnects": self._interval_disconnects,
        })
        self._interval_errors = self._interval_disconnects = 0
        self._index = new_index

    def drain(self, *, final: bool = False) -> dict[str, Any]:
        """What is new since the last drain: completed intervals (histograms and timeline rows) and
        error/disconnect count deltas.

        With ``final``, the current (partial) interval is closed too, the
        recorder is closed, and the whole-run totals are added under
        ``final``.
        """
        now_index = self._interval_index()
        if now_index != self._index:
            self._roll(now_index)
        if final:
            self._roll(now_index, partial_end=self._clock())  # the timeline ends in the interval of now
            self.closed = True
        intervals, self._completed = self._completed, []
        timeline, self._timeline = self._timeline, []
        payload: dict[str, Any] = {
            "intervals": intervals,
            "timeline": timeline,
            "errors": _delta(self._errors, self._errors_sent),
            "disconnects": {k: v - self._disconnects_sent.get(k, 0) for k, v in self._disconnects.items()
                            if v != self._disconnects_sent.get(k, 0)},
        }
        self._errors_sent = {name: dict(codes) for name, codes in self._errors.items()}
        self._disconnects_sent = dict(self._disconnects)
        if final:
            payload["final"] = {
                "entries": {
                    name: {
                        "count": entry.whole.get_total_count(),
                        "hist": encode(entry.whole),
                        "uhist": (encode(entry.whole_uncorrected)
                                  if entry.whole_uncorrected is not None else None),
                    }
                    for name, entry in self._entries.items()
                },
                "errors": {name: dict(codes) for name, codes in self._errors.items()},
                "disconnects": dict(self._disconnects),
                "counters": dict(self.counters),
                "stops": {reason: dict(seen) for reason, seen in self.stops.items()},
            }
        return payload


def _delta(now: Mapping[str, Mapping[str, int]],
           sent: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, codes in now.items():
        before = sent.get(name, {})
        changed = {code: n - before.get(code, 0) for code, n in codes.items() if n != before.get(code, 0)}
        if changed:
            out[name] = changed
    return out


# --------------------------------------------------------------------------- merged


@dataclass
class _Window:
    """What arrived since the progress line was last printed."""

    histograms: dict[str, HdrHistogram] = field(default_factory=dict)
    errors: int = 0
    disconnects: int = 0


class Collector:
    """Merges what every generator process recorded: progress, the interval log and the whole run."""

    def __init__(self, *, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        # (interval start, tag) -> encoded interval histograms from every source
        self._intervals: dict[tuple[float, str], list[str]] = {}
        self._interval_lengths: dict[tuple[float, str], float] = {}
        self._interval_counts: dict[str, dict[str, int]] = {}  # source -> entry -> samples seen in intervals
        self._timeline: dict[str, dict[int, dict[str, Any]]] = {}  # source -> interval index -> its row
        self.finals: dict[str, dict[str, Any]] = {}  # source -> its final payload (plus extras)
        self._window = _Window()
        self.sources: set[str] = set()

    def add_report(self, source: str, payload: Mapping[str, Any]) -> None:
        self.sources.add(source)
        counts = self._interval_counts.setdefault(source, {})
        for item in payload.get("intervals", ()):
            entry = item["entry"]
            counts[entry] = counts.get(entry, 0) + int(item["count"])
            for tag, encoded in ((entry, item["hist"]), (entry + UNCORRECTED_SUFFIX, item.get("uhist"))):
                if encoded is None:
                    continue
                key = (float(item["start"]), tag)
                self._intervals.setdefault(key, []).append(encoded)
                self._interval_lengths[key] = max(self._interval_lengths.get(key, 0.0), float(item["length"]))
            window = self._window.histograms.get(entry)
            if window is None:
                window = self._window.histograms[entry] = new_histogram()
            window.decode_and_add(item["hist"])
        rows = self._timeline.setdefault(source, {})
        for row in payload.get("timeline", ()):
            index = round(float(row["start"]) / self.interval_s)
            counts = {name: int(row.get(name, 0)) for name in (*GAUGES, ERRORS, DISCONNECTS)}
            seen = rows.get(index)
            if seen is None:
                rows[index] = {"length": float(row["length"]), **counts}
            else:  # the interval came round again (the wall clock went back): add its counts
                seen["length"] = max(seen["length"], float(row["length"]))
                seen.update({gauge: counts[gauge] for gauge in GAUGES})
                seen[ERRORS] += counts[ERRORS]
                seen[DISCONNECTS] += counts[DISCONNECTS]
        self._window.errors += sum(sum(codes.values()) for codes in payload.get("errors", {}).values())
        self._window.disconnects += sum(payload.get("disconnects", {}).values())

    def add_final(self, source: str, payload: Mapping[str, Any]) -> None:
        """The source's last drain (with ``final``): its last intervals and whole-run totals."""
        self.add_report(source, payload)
        self.finals[source] = dict(payload)

    def take_window(self) -> _Window:
        window, self._window = self._window, _Window()
        return window

    # ------------------------------------------------------------------ whole run

    def merged(self) -> dict[str, tuple[HdrHistogram, HdrHistogram | None]]:
        """Entry -> (primary, uncorrected) whole-run histograms, added from every source's final totals."""
        out: dict[str, tuple[HdrHistogram, HdrHistogram | None]] = {}
        for final in self.finals.values():
            for name, entry in final["final"]["entries"].items():
                primary, uncorrected = out.get(name) or (new_histogram(), None)
                primary.decode_and_add(entry["hist"])
                if entry.get("uhist") is not None:
                    if uncorrected is None:
                        uncorrected = new_histogram()
                    uncorrected.decode_and_add(entry["uhist"])
                out[name] = (primary, uncorrected)
        return out

    def errors(self) -> dict[str, dict[str, int]]:
        """Entry -> error code -> count, over every source."""
        out: dict[str, dict[str, int]] = {}
        for final in self.finals.values():
            for name, codes in final["final"]["errors"].items():
                target = out.setdefault(name, {})
                for code, n in codes.items():
                    target[code] = target.get(code, 0) + n
        return out

    def disconnects(self) -> dict[str, int]:
        return self._add_up("disconnects")

    def counters(self) -> dict[str, int]:
        return self._add_up("counters")

    def stops(self) -> list[dict[str, Any]]:
        """Users that gave up, by reason over every source: how many, first and last time (epoch s)."""
        merged: dict[str, dict[str, Any]] = {}
        for final in self.finals.values():
            for reason, seen in final["final"].get("stops", {}).items():
                into = merged.get(reason)
                if into is None:
                    merged[reason] = dict(seen)
                else:
                    into["count"] += seen["count"]
                    into["first"] = min(into["first"], seen["first"])
                    into["last"] = max(into["last"], seen["last"])
        return [{"reason": reason, **seen} for reason, seen in sorted(merged.items(),
                                                                      key=lambda item: item[1]["first"])]

    def _add_up(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for final in self.finals.values():
            for name, n in final["final"].get(key, {}).items():
                out[name] = out.get(name, 0) + n
        return out

    def inconsistent_sources(self) -> list[str]:
        """Sources whose interval reports do not add up to their final totals (a report was lost)."""
        bad = []
        for source, final in self.finals.items():
            seen = self._interval_counts.get(source, {})
            totals = {name: entry["count"] for name, entry in final["final"]["entries"].items()}
            rows = self._timeline.get(source, {}).values()
            counted = (sum(row[ERRORS] for row in rows), sum(row[DISCONNECTS] for row in rows))
            whole = (sum(sum(codes.values()) for codes in final["final"]["errors"].values()),
                     sum(final["final"].get("disconnects", {}).values()))
            if any(seen.get(name, 0) != n for name, n in totals.items()) or counted != whole:
                bad.append(source)
        return sorted(bad)

    def timeline(self) -> list[dict[str, Any]]:
        """One row per interval from the first to the last one reported (histograms or rows).

        Errors and disconnects are added over the sources; the gauges (users,
        connections) too, each source carrying its last known value over the
        intervals it did not report (nothing changed there), 0 before its first.
        Every interval but the last is whole; the last is as long as its
        longest report (partial, as in the .hlog).
        """
        indices = {index for rows in self._timeline.values() for index in rows}
        indices.update(round(start / self.interval_s) for start, _ in self._intervals)
        if not indices:
            return []
        first, last = min(indices), max(indices)
        carried = {source: dict.fromkeys(GAUGES, 0) for source in self._timeline}
        out = []
        for index in range(first, last + 1):
            row: dict[str, Any] = {"start": index * self.interval_s, "length": self.interval_s,
                                   **dict.fromkeys((*GAUGES, ERRORS, DISCONNECTS), 0)}
            lengths = []
            for source, rows in self._timeline.items():
                reported = rows.get(index)
                if reported is not None:
                    carried[source] = {gauge: reported[gauge] for gauge in GAUGES}
                    row[ERRORS] += reported[ERRORS]
                    row[DISCONNECTS] += reported[DISCONNECTS]
                    lengths.append(reported["length"])
                for gauge in GAUGES:
                    row[gauge] += carried[source][gauge]
            if index == last:
                lengths.extend(length for (start, _), length in self._interval_lengths.items()
                               if round(start / self.interval_s) == last)
                row["length"] = max(lengths, default=self.interval_s)
            out.append(row)
        return out

    # ------------------------------------------------------------------ outputs

    def write_hlog(self, path: Path, *, start_time_s: float, comment: str = "") -> int:
        """Write the interval log (``formats.hlog``, one tag per entry); returns its lines."""
        base = min((start for start, _ in self._intervals), default=start_time_s)
        base = min(base, start_time_s)

        def merged() -> Iterator[tuple[float, str, float, HdrHistogram]]:
            for start, tag in sorted(self._intervals):
                parts = self._intervals[(start, tag)]
                yield start, tag, self._interval_lengths[(start, tag)], (
                    merge(parts) if len(parts) > 1 else decode(parts[0]))

        return write_interval_log(path, merged(), base_s=base, comment=comment)

    def write_timeline(self, path: Path) -> int:
        """Write :meth:`timeline` (``formats.timeline``); returns its rows."""
        return write_timeline(path, self.timeline())


def write_hgrm(path: Path, histogram: HdrHistogram) -> None:
    """The percentile distribution in HdrHistogram's ``.hgrm`` text form, values in milliseconds."""
    buffer = io.BytesIO()
    mean, stddev = mean_and_stddev(histogram)
    # The same table and footer as hdrhistogram writes, without its slow mean and deviation.
    fast = HdrHistogram.decode(encode(histogram))
    fast.get_mean_value = lambda: mean
    # hdrhistogram scales the mean but not the deviation; HdrHistogram's .hgrm shows both in the unit.
    fast.get_stddev = lambda: stddev / 1000.0
    fast.output_percentile_distribution(buffer, 1000.0)
    path.write_bytes(buffer.getvalue())
