"""The summaries runs leave beside their raw data: a load run's ``summary.json`` (written by the load
tests, read by ``queuechat load``, the reports and ``--compare``) and a simulation's
``SCENARIO-seedN.summary.json`` beside its history (written by ``queuechat simulate`` and the demo, read
by the reports).

A load summary is version 1: its shape, every field a reader relies on with its type, is :class:`Summary`.
Unknown fields are allowed (newer runs may add some); readers keep the plain document. A simulation
summary is an object with a ``summary`` object and a list of ``violations``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

SUMMARY_FILE: Final = "summary.json"
SUMMARY_VERSION: Final = 1
SUPPORTED_SUMMARY_VERSIONS: Final = (1,)
SIMULATION_SUMMARY_SUFFIX: Final = ".summary.json"


class SummaryError(Exception):
    """A summary that cannot be read (the message names the file and, when it is one, the field)."""


# --------------------------------------------------------------------------- a load run's summary.json

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


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """``data`` as indented JSON, replacing ``path`` at once (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Write a load run's summary into its results folder; returns its path."""
    path = out_dir / SUMMARY_FILE
    write_json(path, summary)
    return path


def read_summary(path: Path) -> dict[str, Any]:
    """A load run's summary, checked against :class:`Summary`; SummaryError names the field."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SummaryError(f"{path}: cannot be read ({type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise SummaryError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise SummaryError(f"{path}: expected a JSON object")
    version = data.get("version")
    if version not in SUPPORTED_SUMMARY_VERSIONS:
        raise SummaryError(
            f"{path}: summary version {version!r} is not one this report reads "
            f"({', '.join(map(str, SUPPORTED_SUMMARY_VERSIONS))})"
        )
    for key, kind in (("run", dict), ("entries", dict)):
        if not isinstance(data.get(key), kind):
            raise SummaryError(f"{path}: '{key}' is missing or not an object")
    check_summary(data, path)
    return data


def check_summary(data: Any, path: Path) -> None:
    """SummaryError naming the first field that has the wrong type (or is missing)."""
    try:
        msgspec.convert(data, Summary, strict=True)
    except msgspec.ValidationError as error:
        raise SummaryError(f"{path}: {error}") from None


# --------------------------------------------------------------------------- a simulation's summary


def simulation_summary_path(history: Path) -> Path:
    """The summary beside a history: ``SCENARIO-seedN.jsonl`` -> ``SCENARIO-seedN.summary.json``."""
    name = history.name[:-len(".jsonl")] if history.name.endswith(".jsonl") else history.stem
    return history.with_name(name + SIMULATION_SUMMARY_SUFFIX)


def write_simulation_summary(history: Path, document: Mapping[str, Any]) -> Path:
    """Write the summary beside its history; returns its path."""
    path = simulation_summary_path(history)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def read_simulation_summary(path: Path) -> dict[str, Any]:
    """A simulation summary, with each violation's ``rule``, ``message`` and ``lines`` checked;
    SummaryError says what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SummaryError(f"{path}: cannot read: {error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError):
        raise SummaryError(f"{path}: not JSON (a simulation summary is a JSON object)") from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict):
        raise SummaryError(f'{path}: not a simulation summary (no "summary" object)')
    violations = data.get("violations", [])
    if not isinstance(violations, list):
        raise SummaryError(f'{path}: "violations" is not a list')
    for index, item in enumerate(violations):
        ok = (isinstance(item, dict) and isinstance(item.get("rule"), str)
              and isinstance(item.get("message"), str) and isinstance(item.get("lines"), list)
              and all(isinstance(n, int) for n in item["lines"]))
        if not ok:
            raise SummaryError(f'{path}: violation {index + 1} needs "rule", "message" and "lines"')
    return data
