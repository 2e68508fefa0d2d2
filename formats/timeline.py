"""The load run's timeline (``timeline.csv``): one row per interval of the run, what was open at its end
and what went wrong in it. Written by the load tests, read by the reports::

    start_epoch_s,length_s,users,connections,errors,disconnects
    1795600000.000,1.000,50,150,0,0

``users`` and ``connections`` are gauges (what was running at the interval's end); ``errors`` and
``disconnects`` are counts within the interval. Every interval but the last is whole; the last is as
long as its longest report (partial, as in the ``.hlog``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from formats.hlog import DISCONNECTS, ERRORS

TIMELINE_FILE: Final = "timeline.csv"
# Gauges: what is running at the end of each interval.
USERS: Final = "users"
CONNECTIONS: Final = "connections"
GAUGES: Final = (USERS, CONNECTIONS)
COLUMNS: Final = ("start_epoch_s", "length_s", USERS, CONNECTIONS, ERRORS, DISCONNECTS)
TIMELINE_HEADER: Final = ",".join(COLUMNS)


class TimelineError(Exception):
    """A timeline that cannot be read (the message names the file and line)."""


def write_timeline(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write the rows (``start``, ``length`` and the four counts) under :data:`TIMELINE_HEADER`; returns
    how many."""
    written = 0
    with open(path, "w", encoding="ascii", newline="") as out:
        out.write(TIMELINE_HEADER + "\n")
        for row in rows:
            out.write(f"{row['start']:.3f},{row['length']:.3f},{row[USERS]},{row[CONNECTIONS]},"
                      f"{row[ERRORS]},{row[DISCONNECTS]}\n")
            written += 1
    return written


@dataclass(frozen=True)
class TimelineRow:
    start_s: float  # since the run's start
    length_s: float
    users: int
    connections: int
    errors: int
    disconnects: int


def read_timeline(path: Path, start_epoch_s: float) -> list[TimelineRow]:
    """The rows, their starts made relative to the run's start; TimelineError names the line."""
    rows: list[TimelineRow] = []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(header) != COLUMNS:
                raise TimelineError(f"{path}: line 1: expected the header {TIMELINE_HEADER}")
            for number, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != len(COLUMNS):
                    raise TimelineError(f"{path}: line {number}: expected {len(COLUMNS)} fields")
                try:
                    start, length = float(fields[0]), float(fields[1])
                    counts = [int(value) for value in fields[2:]]
                except ValueError:
                    raise TimelineError(f"{path}: line {number}: a field is not a number") from None
                if not (math.isfinite(start) and math.isfinite(length)) or min(counts) < 0:
                    raise TimelineError(f"{path}: line {number}: a field is out of range")
                rows.append(TimelineRow(start - start_epoch_s, length, *counts))
    except (OSError, UnicodeDecodeError) as exc:
        raise TimelineError(f"{path}: cannot be read ({type(exc).__name__})") from None
    return rows
