"""HdrHistogram interval logs (``.hlog``) and the percentile figures a report prints.

hdrhistogram's own percentile query walks all ~23,000 counters in Python for each call; a report
asks for five percentiles of every interval of every entry, so the walk is done here once per
histogram with numpy, giving exactly what ``get_value_at_percentile`` gives (tests compare them).
"""

from __future__ import annotations

import binascii
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from reports._errors import ReportError

# The load tests' histograms: microseconds from 1 us to one hour, 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3

UNCORRECTED_SUFFIX = ".uncorrected"
# The figures a report prints for each entry, in this order.
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
FIGURE_NAMES = (*(name for name, _ in PERCENTILES), "max")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def _counts(histogram: HdrHistogram) -> np.ndarray:
    length = min(histogram.counts_len, len(histogram.counts))
    return np.ctypeslib.as_array(histogram.counts)[:length]


def value_at_percentiles(histogram: HdrHistogram, wanted: Sequence[float]) -> list[int]:
    """Values at each percentile, as ``get_value_at_percentile`` gives them (0 for an empty histogram)."""
    total = histogram.get_total_count()
    if not total:
        return [0 for _ in wanted]
    cumulative = np.cumsum(_counts(histogram), dtype=np.int64)
    out = []
    for percentile in wanted:
        target = histogram.get_target_count_at_percentile(percentile)
        index = int(np.searchsorted(cumulative, target, side="left"))
        index = min(index, len(cumulative) - 1)
        at = histogram.get_value_from_index(index)
        out.append(
            int(
                histogram.get_highest_equivalent_value(at)
                if percentile
                else histogram.get_lowest_equivalent_value(at)
            )
        )
    return out


def figures(histogram: HdrHistogram) -> dict[str, int]:
    """p50, p90, p99, p99.9 and max, in microseconds."""
    values = value_at_percentiles(histogram, [p for _, p in PERCENTILES])
    out = {name: value for (name, _), value in zip(PERCENTILES, values, strict=True)}
    out["max"] = int(histogram.get_max_value()) if histogram.get_total_count() else 0
    return out


def distribution(histogram: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    """The percentile distribution (HdrHistogram's plot): for each recorded bucket, the percentile
    reached (0-100) and the bucket's highest equivalent value (us)."""
    counts = _counts(histogram)
    total = histogram.get_total_count()
    nonzero = np.flatnonzero(counts)
    if not total or not len(nonzero):
        return np.zeros(0), np.zeros(0)
    cumulative = np.cumsum(counts[nonzero], dtype=np.int64)
    percentiles = 100.0 * cumulative / total
    values = np.array(
        [histogram.get_highest_equivalent_value(histogram.get_value_from_index(int(i))) for i in nonzero],
        dtype=np.float64,
    )
    return percentiles, values


@dataclass(frozen=True)
class Interval:
    """One interval of a tag: start in seconds since the log's base time, length in seconds."""

    start_s: float
    length_s: float
    histogram: HdrHistogram

    @property
    def count(self) -> int:
        return int(self.histogram.get_total_count())


@dataclass
class IntervalLog:
    """What an ``.hlog`` file holds: the base time (s since the epoch) and the intervals per tag."""

    base_epoch_s: float | None
    tags: dict[str, list[Interval]]
    _wholes: dict[str, HdrHistogram] = field(default_factory=dict, repr=False)

    def whole(self, tag: str) -> HdrHistogram:
        """Every interval of the tag added up: the whole run (added once; callers only read it)."""
        total = self._wholes.get(tag)
        if total is None:
            total = self._wholes[tag] = add_all(interval.histogram for interval in self.tags.get(tag, ()))
        return total

    def end_s(self) -> float:
        return max((i.start_s + i.length_s for items in self.tags.values() for i in items), default=0.0)


def read_interval_log(path: Path) -> IntervalLog:
    """Read an HdrHistogram interval log (format 1.2/1.3, tagged or not); ReportError names the line."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ReportError(f"{path}: not found (a load run writes latency.hlog)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot be read as an interval log ({type(exc).__name__})") from None
    base: float | None = None
    start_time: float | None = None
    tags: dict[str, list[Interval]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            for key in ("#[BaseTime:", "#[StartTime:"):
                if line.startswith(key):
                    value = _leading_float(line[len(key) :])
                    if key == "#[BaseTime:":
                        base = value
                    else:
                        start_time = value
            continue
        if line.startswith('"StartTimestamp"'):
            continue
        tag = ""
        if line.startswith("Tag="):
            tag, _, line = line[4:].partition(",")
        parts = line.split(",")
        if len(parts) != 4:
            raise ReportError(f"{path}: line {number}: expected 'start,length,max,histogram' fields")
        try:
            start_s, length_s = float(parts[0]), float(parts[1])
        except ValueError:
            raise ReportError(f"{path}: line {number}: the start or length is not a number") from None
        if not (math.isfinite(start_s) and math.isfinite(length_s) and length_s >= 0):
            raise ReportError(f"{path}: line {number}: the start or length is out of range")
        histogram = _decode(parts[3], path, number)
        tags.setdefault(tag, []).append(Interval(start_s, length_s, histogram))
    if not tags:
        raise ReportError(f"{path}: holds no interval (was the run stopped before its first second?)")
    for items in tags.values():
        items.sort(key=lambda interval: interval.start_s)
    return IntervalLog(base if base is not None else start_time, tags)


def _leading_float(text: str) -> float | None:
    token = text.strip().split(" ", 1)[0]
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _decode(encoded: str, path: Path, number: int) -> HdrHistogram:
    try:
        decoded = HdrHistogram.decode(encoded.strip())
    except (ValueError, TypeError, binascii.Error, zlib.error, IndexError, KeyError, OverflowError):
        raise ReportError(f"{path}: line {number}: not an encoded HdrHistogram") from None
    except Exception as exc:  # hdrhistogram raises its own (undocumented) classes for bad data
        raise ReportError(
            f"{path}: line {number}: not an encoded HdrHistogram ({type(exc).__name__})"
        ) from None
    histogram = new_histogram()
    histogram.add(decoded)
    return histogram


def add_all(histograms: Iterable[HdrHistogram]) -> HdrHistogram:
    total = new_histogram()
    for histogram in histograms:
        total.add(histogram)
    return total
