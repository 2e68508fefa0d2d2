"""Reports: self-contained HTML pages and PNG charts from the files the load tests and the simulator
write, and a comparison of two load runs.

Reads files only (``summary.json``, ``latency.hlog``, ``timeline.csv``, simulation histories and their
summaries), through the readers in ``formats``, where each format is defined beside its writer: it
imports neither the server, the simulator nor the load tests. Matplotlib is imported when a chart is
drawn, with the Agg backend and a private config folder.
"""

from __future__ import annotations

from reports._compare import (
    Comparison,
    ComparisonResult,
    RegressionBounds,
    format_comparison,
    write_comparison,
)
from reports._errors import ReportError
from reports._load_report import write_load_report
from reports._page import ReportResult
from reports._sim_report import write_simulation_report

__all__ = [
    "ReportError",
    "ReportResult",
    "write_load_report",
    "write_simulation_report",
    "Comparison",
    "ComparisonResult",
    "RegressionBounds",
    "write_comparison",
    "format_comparison",
]

