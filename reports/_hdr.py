"""The latency figures a report prints and draws, from the interval log's histograms (read by
``formats.hlog``, whose percentile query these use)."""

from __future__ import annotations

import numpy as np
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from formats.hlog import counters, value_at_percentiles

# The figures a report prints for each entry, in this order.
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
FIGURE_NAMES = (*(name for name, _ in PERCENTILES), "max")


def figures(histogram: HdrHistogram) -> dict[str, int]:
    """p50, p90, p99, p99.9 and max, in microseconds."""
    values = value_at_percentiles(histogram, [p for _, p in PERCENTILES])
    out = {name: value for (name, _), value in zip(PERCENTILES, values, strict=True)}
    out["max"] = int(histogram.get_max_value()) if histogram.get_total_count() else 0
    return out


def distribution(histogram: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    """The percentile distribution (HdrHistogram's plot): for each recorded bucket, the percentile
    reached (0-100) and the bucket's highest equivalent value (us)."""
    counts = counters(histogram)
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
