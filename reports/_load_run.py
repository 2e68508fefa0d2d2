"""A load run's output folder (written by ``queuechat load``), read and checked for a report.

Reads ``summary.json`` (settings, counts, SLO results, validity), ``latency.hlog`` (the interval
histograms; every latency figure a report prints is computed from these) and, when the run wrote
one, ``timeline.csv`` (users, connections, errors and disconnects per interval).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from reports._errors import ReportError
from reports._hdr import UNCORRECTED_SUFFIX, Interval, IntervalLog, figures, read_interval_log
from reports._load_shape import check_summary

SUMMARY_FILE = "summary.json"
HLOG_FILE = "latency.hlog"
TIMELINE_FILE = "timeline.csv"
TIMELINE_COLUMNS = ("start_epoch_s", "length_s", "users", "connections", "errors", "disconnects")
SUPPORTED_SUMMARY_VERSIONS = (1,)

# Message deliveries: what "messages per second" counts.
MESSAGE_ENTRIES = ("patient_to_clinician", "clinician_to_patient")

# Entry -> (what a reader calls it, what is timed).
ENTRY_LABELS: dict[str, tuple[str, str]] = {
    "patient_to_clinician": (
        "Patient to clinician messages",
        "from the moment the patient's message was due to be sent until the clinician's console received it",
    ),
    "clinician_to_patient": (
        "Clinician to patient messages",
        "from the moment the clinician's message was due to be sent until the patient received it",
    ),
    "clinician_hello": (
        "Clinician console opening",
        "from the clinician's hello until the console (welcome) arrived",
    ),
    "check_in": ("Patient check-in", "from the patient's hello until its welcome arrived"),
    "call_start": ("Call start", "from the clinician's start_call until the patient was told"),
    "open_chat": ("Opening a chat", "from the clinician's open_chat until its answer arrived"),
}


def entry_label(name: str) -> str:
    return ENTRY_LABELS.get(name, (name.replace("_", " ").capitalize(), ""))[0]


@dataclass(frozen=True)
class TimelineRow:
    start_s: float  # since the run's start
    length_s: float
    users: int
    connections: int
    errors: int
    disconnects: int


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
    summary = _read_summary(summary_path)
    log = read_interval_log(path / HLOG_FILE)
    run = summary["run"]
    start = _number(run.get("started"), summary_path, "run.started")
    duration = _number(run.get("duration_s"), summary_path, "run.duration_s")
    timeline_path = path / TIMELINE_FILE
    timeline = _read_timeline(timeline_path, start) if timeline_path.exists() else None
    return LoadRun(
        path=path, summary=summary, log=log, timeline=timeline, start_epoch_s=start, duration_s=duration
    )


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot be read ({type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    version = data.get("version")
    if version not in SUPPORTED_SUMMARY_VERSIONS:
        raise ReportError(
            f"{path}: summary version {version!r} is not one this report reads "
            f"({', '.join(map(str, SUPPORTED_SUMMARY_VERSIONS))})"
        )
    for key, kind in (("run", dict), ("entries", dict)):
        if not isinstance(data.get(key), kind):
            raise ReportError(f"{path}: '{key}' is missing or not an object")
    check_summary(data, path)
    return data


def _number(value: Any, path: Path, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReportError(f"{path}: '{key}' is missing or not a number")
    return float(value)


def _read_timeline(path: Path, start_epoch_s: float) -> list[TimelineRow]:
    rows: list[TimelineRow] = []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(header) != TIMELINE_COLUMNS:
                raise ReportError(f"{path}: line 1: expected the header {','.join(TIMELINE_COLUMNS)}")
            for number, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != len(TIMELINE_COLUMNS):
                    raise ReportError(f"{path}: line {number}: expected {len(TIMELINE_COLUMNS)} fields")
                try:
                    start, length = float(fields[0]), float(fields[1])
                    counts = [int(value) for value in fields[2:]]
                except ValueError:
                    raise ReportError(f"{path}: line {number}: a field is not a number") from None
                if not (math.isfinite(start) and math.isfinite(length)) or min(counts) < 0:
                    raise ReportError(f"{path}: line {number}: a field is out of range")
                rows.append(TimelineRow(start - start_epoch_s, length, *counts))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot be read ({type(exc).__name__})") from None
    return rows
