"""A load run's output folder (written by ``queuechat load``), read and checked for a report.

Reads ``summary.json`` (settings, counts, SLO results, validity), ``latency.hlog`` (the interval
histograms; every latency figure a report prints is computed from these) and, when the run wrote
one, ``timeline.csv`` (users, connections, errors and disconnects per interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from formats.hlog import (
    CALL_START,
    CHECK_IN,
    CLINICIAN_HELLO,
    CLINICIAN_TO_PATIENT,
    HLOG_FILE,
    OPEN_CHAT,
    PATIENT_TO_CLINICIAN,
    UNCORRECTED_SUFFIX,
    HlogError,
    Interval,
    IntervalLog,
    read_interval_log,
)
from formats.summary import SUMMARY_FILE, SummaryError, read_summary
from formats.timeline import TIMELINE_FILE, TimelineError, TimelineRow, read_timeline
from reports._errors import ReportError
from reports._hdr import figures

# Entry -> (what a reader calls it, what is timed).
ENTRY_LABELS: dict[str, tuple[str, str]] = {
    PATIENT_TO_CLINICIAN: (
        "Patient to clinician messages",
        "from the moment the patient's message was due to be sent until the clinician's console received it",
    ),
    CLINICIAN_TO_PATIENT: (
        "Clinician to patient messages",
        "from the moment the clinician's message was due to be sent until the patient received it",
    ),
    CLINICIAN_HELLO: (
        "Clinician console opening",
        "from the clinician's hello until the console (welcome) arrived",
    ),
    CHECK_IN: ("Patient check-in", "from the patient's hello until its welcome arrived"),
    CALL_START: ("Call start", "from the clinician's start_call until the patient was told"),
    OPEN_CHAT: ("Opening a chat", "from the clinician's open_chat until its answer arrived"),
}


def entry_label(name: str) -> str:
    return ENTRY_LABELS.get(name, (name.replace("_", " ").capitalize(), ""))[0]


@dataclass(frozen=True)
class EntryFigures:
    """An entry's whole-run figures, all in microseconds, computed from the interval log."""

    name: str
    count: int
    errors: int
    latency: dict[str, int]
    uncorrected: dict[str, int] | None


@dataclass
class LoadRun:
    path: Path
    summary: dict[str, Any]
    log: IntervalLog
    timeline: list[TimelineRow] | None
    # Seconds since the epoch of the run's start; interval times are shown relative to it.
    start_epoch_s: float
    duration_s: float

    @property
    def entries(self) -> list[str]:
        """Latency entries: the summary's order first, then any other tag of the log."""
        names = [name for name in self.summary.get("entries", {}) if name in self.log.tags]
        for tag in self.log.tags:
            base = tag.removesuffix(UNCORRECTED_SUFFIX)
            if base not in names and base in self.log.tags:
                names.append(base)
        return names

    def whole(self, entry: str, *, uncorrected: bool = False) -> HdrHistogram | None:
        tag = entry + UNCORRECTED_SUFFIX if uncorrected else entry
        return self.log.whole(tag) if tag in self.log.tags else None

    def intervals(self, entry: str, *, uncorrected: bool = False) -> list[Interval]:
        return self.log.tags.get(entry + UNCORRECTED_SUFFIX if uncorrected else entry, [])

    def offset_s(self) -> float:
        """Add to an interval's start to get seconds since the run's start."""
        base = self.log.base_epoch_s
        return 0.0 if base is None else base - self.start_epoch_s

    def figures(self, entry: str) -> EntryFigures:
        whole = self.whole(entry)
        uncorrected = self.whole(entry, uncorrected=True)
        errors = self.summary.get("entries", {}).get(entry, {}).get("errors", 0)
        return EntryFigures(
            name=entry,
            count=int(whole.get_total_count()) if whole is not None else 0,
            errors=int(errors) if isinstance(errors, int) else 0,
            latency=figures(whole) if whole is not None else {},
            uncorrected=figures(uncorrected) if uncorrected is not None else None,
        )

    @property
    def verdict(self) -> str:
        return str(self.summary.get("verdict", "unknown"))

    @property
    def valid(self) -> bool:
        return bool(self.summary.get("validity", {}).get("valid", False))

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.summary.get("meta")
        return meta if isinstance(meta, dict) else {}


def read_load_run(path: Path) -> LoadRun:
    """Read a load run folder; ReportError says which file is missing or malformed."""
    if not path.exists():
        raise ReportError(f"{path}: no such folder")
    if not path.is_dir():
        raise ReportError(f"{path}: not a folder (a load run is the folder queuechat load wrote)")
    summary_path = path / SUMMARY_FILE
    if not summary_path.exists():
        raise ReportError(f"{path}: has no {SUMMARY_FILE}; is it a load run's results folder?")
    try:
        summary = read_summary(summary_path)
        log = read_interval_log(path / HLOG_FILE)
        run = summary["run"]
        start = _number(run.get("started"), summary_path, "run.started")
        duration = _number(run.get("duration_s"), summary_path, "run.duration_s")
        timeline_path = path / TIMELINE_FILE
        timeline = read_timeline(timeline_path, start) if timeline_path.exists() else None
    except (SummaryError, HlogError, TimelineError) as error:
        raise ReportError(str(error)) from None
    return LoadRun(
        path=path, summary=summary, log=log, timeline=timeline, start_epoch_s=start, duration_s=duration
    )


def _number(value: Any, path: Path, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReportError(f"{path}: '{key}' is missing or not a number")
    return float(value)
