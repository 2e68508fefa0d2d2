"""The HdrHistogram interval log (``latency.hlog``): the names of what is timed, the histograms' range,
their encoded form, the writer (the load tests) and the reader (the reports), and the one percentile
query both use.

The log is HdrHistogram's log format 1.3: a few ``#[...]`` comment lines (the base time among them),
a CSV header, then one line per tag and interval::

    Tag=patient_to_clinician,12.000,1.000,3.125,HISTFAAAA...

(start in seconds since the base time, length in seconds, the interval's max in milliseconds, the
histogram compressed and base64-encoded). Values are microseconds. Message entries carry a second tag,
``<entry>.uncorrected``: the latency from the actual send time beside the primary one from the intended
send time (coordinated omission corrected).

hdrhistogram's own percentile query walks all ~23,000 counters in Python for each call; a report asks
for five percentiles of every interval of every entry, so :func:`value_at_percentiles` walks them once
per histogram with numpy, giving exactly what ``get_value_at_percentile`` gives (tests compare them).
"""

from __future__ import annotations

import binascii
import math
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]  # hdrhistogram ships no types

HLOG_FILE: Final = "latency.hlog"

# The histograms: microseconds from 1 us to one hour, 3 significant digits.
LOWEST_US: Final = 1
HIGHEST_US: Final = 3_600_000_000
SIGNIFICANT_DIGITS: Final = 3

# Every entry the load users time (one tag each), in the order reports show them.
PATIENT_TO_CLINICIAN: Final = "patient_to_clinician"
CLINICIAN_TO_PATIENT: Final = "clinician_to_patient"
CLINICIAN_HELLO: Final = "clinician_hello"
CHECK_IN: Final = "check_in"
CALL_START: Final = "call_start"
OPEN_CHAT: Final = "open_chat"
# Message deliveries: the entries with an uncorrected tag too, and what "messages per second" counts.
MESSAGE_ENTRIES: Final = (PATIENT_TO_CLINICIAN, CLINICIAN_TO_PATIENT)
LATENCY_ENTRIES: Final = (*MESSAGE_ENTRIES, CLINICIAN_HELLO, CHECK_IN, CALL_START, OPEN_CHAT)
# Counted, not timed (no tag in the log): errors (by code, over all entries) and disconnects (by close code).
ERRORS: Final = "errors"
DISCONNECTS: Final = "disconnects"
COUNTED_ENTRIES: Final = (ERRORS, DISCONNECTS)
UNCORRECTED_SUFFIX: Final = ".uncorrected"


class HlogError(Exception):
    """An interval log that cannot be read (the message names the file and line)."""


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def encode(histogram: HdrHistogram) -> str:
    """The histogram's standard compressed, base64 form (as in ``.hlog`` lines)."""
    return bytes(histogram.encode()).decode("ascii")


def decode(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded)


def merge(encoded: Iterable[str]) -> HdrHistogram:
    """Encoded histograms added into one (lossless)."""
    total = new_histogram()
    for item in encoded:
        total.decode_and_add(item)
    return total


def add_all(histograms: Iterable[HdrHistogram]) -> HdrHistogram:
    total = new_histogram()
    for histogram in histograms:
        total.add(histogram)
    return total


# --------------------------------------------------------------------------- percentiles


def counters(histogram: HdrHistogram) -> np.ndarray:
    """The histogram's counters (one per bucket index), as a numpy view of its own array."""
    length = min(histogram.counts_len, len(histogram.counts))
    return np.ctypeslib.as_array(histogram.counts)[:length]


def value_at_percentiles(histogram: HdrHistogram, wanted: Sequence[float]) -> list[int]:
    """Values at each percentile, as ``get_value_at_percentile`` gives them (0 for an empty histogram)."""
    total = histogram.get_total_count()
    if not total:
        return [0 for _ in wanted]
    cumulative = np.cumsum(counters(histogram), dtype=np.int64)
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


# --------------------------------------------------------------------------- writing


def write_interval_log(path: Path, intervals: Iterable[tuple[float, str, float, HdrHistogram]], *,
                       base_s: float, comment: str = "") -> int:
    """Write the log: ``intervals`` are (start, tag, length, histogram) in the order to write them, the
    starts in seconds since the epoch, written relative to ``base_s``; returns the interval lines."""
    lines = 0
    with open(path, "w", encoding="ascii") as out:
        out.write("#[Histogram log format version 1.3]\n")
        if comment:
            out.write(f"#[{comment}]\n")
        out.write(f"#[StartTime: {base_s:.3f} (seconds since epoch), "
                  f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(base_s))}Z]\n")
        out.write(f"#[BaseTime: {base_s:.3f} (seconds since epoch)]\n")
        out.write("#[Values are microseconds; Interval_Max is in milliseconds]\n")
        out.write('"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"\n')
        for start, tag, length, histogram in intervals:
            out.write(f"Tag={tag},{start - base_s:.3f},{length:.3f},"
                      f"{histogram.get_max_value() / 1000.0:.3f},{encode(histogram)}\n")
            lines += 1
    return lines


# --------------------------------------------------------------------------- reading


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
    """Read an HdrHistogram interval log (format 1.2/1.3, tagged or not); HlogError names the line."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise HlogError(f"{path}: not found (a load run writes {HLOG_FILE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HlogError(f"{path}: cannot be read as an interval log ({type(exc).__name__})") from None
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
            raise HlogError(f"{path}: line {number}: expected 'start,length,max,histogram' fields")
        try:
            start_s, length_s = float(parts[0]), float(parts[1])
        except ValueError:
            raise HlogError(f"{path}: line {number}: the start or length is not a number") from None
        if not (math.isfinite(start_s) and math.isfinite(length_s) and length_s >= 0):
            raise HlogError(f"{path}: line {number}: the start or length is out of range")
        histogram = _decode_line(parts[3], path, number)
        tags.setdefault(tag, []).append(Interval(start_s, length_s, histogram))
    if not tags:
        raise HlogError(f"{path}: holds no interval (was the run stopped before its first second?)")
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


def _decode_line(encoded: str, path: Path, number: int) -> HdrHistogram:
    try:
        decoded = decode(encoded.strip())
    except (ValueError, TypeError, binascii.Error, zlib.error, IndexError, KeyError, OverflowError):
        raise HlogError(f"{path}: line {number}: not an encoded HdrHistogram") from None
    except Exception as exc:  # hdrhistogram raises its own (undocumented) classes for bad data
        raise HlogError(
            f"{path}: line {number}: not an encoded HdrHistogram ({type(exc).__name__})"
        ) from None
    histogram = new_histogram()
    histogram.add(decoded)
    return histogram
