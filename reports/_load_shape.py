"""The shape a load run's ``summary.json`` must have for a report: every field a report reads, with
its type. Checked once, when the run is read, so that a file edited by hand or written by another
tool gives one clear error naming the field (``$.run.started``), not a crash somewhere in a chart.

Unknown fields are allowed (newer runs may add some); the report keeps reading the plain document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from reports._errors import ReportError

Number = int | float


class _Shape(msgspec.Struct, forbid_unknown_fields=False):
    pass


class Run(_Shape):
    started: Number
    duration_s: Number
    host: str | None = None
    users: int | None = None
    rate_per_user: Number | None = None
    patients_per_room: int | None = None
    text_chars: int | None = None
    interval_s: Number = 1.0
    workers: int | None = None
    planned_duration_s: Number | None = None
    drain_s: Number | None = None
    drain_waited_s: Number | None = None


class Entry(_Shape):
    count: int = 0
    errors: int = 0
    errors_by_code: dict[str, int] = {}


class Errors(_Shape):
    total: int = 0
    by_code: dict[str, int] = {}


class Disconnects(_Shape):
    count: int = 0
    by_close_code: dict[str, int] = {}


class Cpu(_Shape):
    mean_cpu_percent: Number | None = None
    mean_demand_percent: Number | None = None
    max_demand_percent: Number | None = None
    over_limit_s: Number | None = None
    mean_wait_for_cpu_ms: Number | None = None


class Generator(_Shape):
    id: str = "?"
    cpu: Cpu | None = None


class Messages(_Shape):
    """Planned against sent against delivered (runs before this block was added have none)."""

    planned: int = 0
    sent: int = 0
    delivered: int = 0
    undelivered: int = 0
    no_delivery: int = 0
    sends_skipped: int = 0
    window_s: Number | None = None
    planned_per_s: Number | None = None
    due_per_s: Number | None = None
    sent_per_s: Number | None = None
    delivered_per_s: Number | None = None


class UserStop(_Shape):
    reason: str
    users: int
    first_at_s: Number
    last_at_s: Number


class Validity(_Shape):
    valid: bool = False
    complete: bool = True
    problems: list[str] = []
    warnings: list[str] = []


class SloResult(_Shape):
    entry: str
    threshold: str
    passed: bool
    measured: str | None = None


class Slo(_Shape):
    file: str | None = None
    results: list[SloResult] = []


class Command(_Shape):
    seed: int | None = None
    server: str | None = None
    users: int | None = None
    rate_per_user: Number | None = None
    patients_per_room: int | None = None
    text_chars: int | None = None
    duration_s: Number | None = None


class Meta(_Shape):
    queuechat_version: str | None = None
    commit: str | None = None
    dirty: bool | None = None
    python: str | None = None
    implementation: str | None = None
    platform: str | None = None
    cores: int | None = None
    locust_version: str | None = None
    command: Command | None = None


class Summary(_Shape):
    version: int
    run: Run
    entries: dict[str, Entry]
    errors: Errors = msgspec.field(default_factory=Errors)
    disconnects: Disconnects = msgspec.field(default_factory=Disconnects)
    generators: list[Generator] = []
    validity: Validity = msgspec.field(default_factory=Validity)
    slo: Slo | None = None
    verdict: str = "unknown"
    meta: Meta | None = None
    messages: Messages | None = None
    users_stopped: list[UserStop] = []
    counters: dict[str, int] = {}


def check_summary(data: Any, path: Path) -> None:
    """ReportError naming the first field that has the wrong type (or is missing)."""
    try:
        msgspec.convert(data, Summary, strict=True)
    except msgspec.ValidationError as error:
        raise ReportError(f"{path}: {error}") from None
