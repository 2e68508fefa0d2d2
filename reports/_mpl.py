"""Matplotlib, set up for reports: the Agg backend (no display), a private config folder (never
the home folder), one figure size for every chart, and PNG bytes that are the same for the same data."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Every chart is this size, so that a page reads evenly and tests can check it.
WIDTH_IN = 9.0
HEIGHT_IN = 4.2
DPI = 100
WIDTH_PX = int(WIDTH_IN * DPI)
HEIGHT_PX = int(HEIGHT_IN * DPI)

# Percentile lines keep one colour everywhere (colour-blind-safe, after Okabe and Ito).
PERCENTILE_COLOURS = {
    "p50": "#0072B2",
    "p90": "#009E73",
    "p99": "#E69F00",
    "p99.9": "#D55E00",
    "max": "#555555",
    "uncorrected p99": "#CC79A7",
}
BASELINE_COLOUR = "#0072B2"
CANDIDATE_COLOUR = "#D55E00"
SERIES_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#555555")

_ready = False


def prepare() -> None:
    """Matplotlib writes a font cache to MPLCONFIGDIR (by default under the home folder)."""
    global _ready
    if _ready:
        return
    if not os.environ.get("MPLCONFIGDIR"):
        folder = (
            Path(tempfile.gettempdir())
            / f"queuechat-matplotlib-{os.getuid() if hasattr(os, 'getuid') else 0}"
        )
        folder.mkdir(mode=0o700, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(folder)
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "font.size": 10,
            "axes.titlesize": 12,
            "axes.titleweight": "bold",
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.fontsize": 9,
            "legend.frameon": False,
            "svg.hashsalt": "queuechat",
        }
    )
    _ready = True


def new_figure(rows: int = 1, cols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure of the report's size, with constrained layout (the size never changes with labels)."""
    prepare()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, cols, **kwargs)
    return figure, axes


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG, without a timestamp or software tag, so equal data gives equal files."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def no_data(figure: Figure, axes: Any, message: str) -> None:
    """Say so in the chart itself rather than leave an empty frame a reader might misread."""
    axes.set_xticks([])
    axes.set_yticks([])
    axes.grid(False)
    axes.text(
        0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, fontsize=12, color="#555555"
    )
