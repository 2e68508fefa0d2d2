"""A simulation run's output read into plain numbers: its history (``queuechat-history`` version 1, JSON
Lines) and, when it lies beside it, its summary.

Only the files are read, never the simulator, so that a report can be drawn from a run folder anywhere.
The history keeps the lengths of message texts and patient names, not the words; this reader never keeps
a ``text`` or ``name`` field, and if a history carries strings there anyway (a foreign or hand-edited
file) it counts them and withholds any message from the summary that quotes one.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from formats.history import HISTORY_NAME_PATTERN, HistoryError, quick_header, quick_records
from formats.summary import SummaryError, read_simulation_summary, simulation_summary_path

from ._errors import ReportError
from ._sim_history import HistoryFold, QueueSeries, Visit

# A withheld string shorter than this is not searched for in messages (it would match everywhere).
_MIN_WITHHELD = 3
# The simulator's shipped scenarios, installed beside this package (read as files, never imported).
_SCENARIOS = Path(__file__).resolve().parent.parent / "simulator" / "scenarios"
_SLUG = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass(frozen=True)
class Violation:
    """A rule violation as the simulator's checker reported it (from the summary)."""

    rule: str
    message: str
    room: str | None
    agent: str | None
    lines: tuple[int, ...]
    t_ms: float | None  # the time of its last history line


@dataclass(frozen=True)
class Liveness:
    """Whether the checker judged liveness, and why not when it did not."""

    judged: bool
    reason: str | None
    bound_ms: float | None


@dataclass(frozen=True)
class MessageTotals:
    patient_sent: int
    patient_delivered: int
    clinician_sent: int
    clinician_delivered: int


@dataclass(frozen=True)
class RunInfo:
    """What the run was, on what: from the header and the summary; None where not recorded."""

    scenario: str
    seed: int
    mode: str
    server: str | None
    jobs: int | None
    rooms: tuple[str, ...]
    limits: dict[str, Any] | None
    duration_ms: float | None
    heal_ms: float | None
    epoch_ms: float | None
    wall_s: float | None
    description: str | None
    description_source: str | None
    commit: str | None
    python: str | None
    cores: str | None
    machine: str | None
    started: str | None


@dataclass(frozen=True)
class SimRun:
    """Everything a report shows, as plain numbers."""

    history: Path
    summary_file: Path | None
    info: RunInfo
    complete: bool  # the history ends with its end record
    last_t_ms: float
    records: int
    queue: QueueSeries
    visits: tuple[Visit, ...]
    messages: MessageTotals
    erasures: dict[str, int]
    departures: dict[str, int]
    server_closes: dict[str, int]
    faults: dict[str, int]
    violations: tuple[Violation, ...] | None  # None: not checked (no summary)
    patients_served: int
    withheld_frames: int  # frames that carried a text or name string (never shown)
    notes: tuple[str, ...] = field(default=())
    # From the summary's checker (None: an older summary without them): how many times each rule of the
    # contract was exercised, liveness judged or not and why, and the checker's notes by rule.
    exercised: dict[str, int] | None = None
    liveness: Liveness | None = None
    checker_notes: dict[str, int] | None = None

    @property
    def patients(self) -> int:
        return len(self.visits)

    @property
    def virtual(self) -> bool:
        return self.info.mode == "virtual"

    def violations_by_rule(self) -> dict[str, int]:
        counts = Counter(v.rule for v in self.violations or ())
        return dict(sorted(counts.items(), key=lambda item: _rule_key(item[0])))


def _rule_key(rule: str) -> tuple[int, int, str]:
    match = re.match(r"^R(\d+)", rule)
    return (0, int(match.group(1)), rule) if match else (1, 0, rule)


# --------------------------------------------------------------------------- finding the files


def find_history(source: Path) -> Path:
    """The history a report is for: ``source`` itself, or the one ``SCENARIO-seedN.jsonl`` in a folder."""
    if source.is_dir():
        found = sorted(p for p in source.glob("*.jsonl") if HISTORY_NAME_PATTERN.match(p.name))
        if not found:
            raise ReportError(f"{source}: no simulation history (SCENARIO-seedN.jsonl) in this folder")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ReportError(f"{source}: {len(found)} simulation histories ({names}); "
                              "give the .jsonl file to report on")
        return found[0]
    if not source.exists():
        raise ReportError(f"{source}: no such file or folder")
    return source


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        return read_simulation_summary(path)
    except SummaryError as error:
        raise ReportError(str(error)) from None


def _description(scenario: str) -> tuple[str | None, str | None]:
    """The scenario's description from this checkout's scenarios folder, when it has that scenario."""
    if not _SLUG.match(scenario):
        return None, None
    path = _SCENARIOS / f"{scenario}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None, None
    text = data.get("description")
    if data.get("name") != scenario or not isinstance(text, str) or not text.strip():
        return None, None
    return text.strip(), f"simulator/scenarios/{scenario}.toml"


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _machine_fact(header: dict[str, Any], summary: dict[str, Any], *keys: str) -> str | None:
    """A fact about the run's machine or code, wherever a newer simulator may put it: the summary, its
    ``meta`` object (as ``queuechat simulate`` writes it), or the header."""
    for source in (summary.get("meta"), summary, summary.get("machine"), header, header.get("machine")):
        if isinstance(source, dict):
            for key in keys:
                value = _text(source.get(key))
                if value:
                    return value
    return None


# --------------------------------------------------------------------------- the whole run


def load_run(source: Path) -> SimRun:
    """Read ``source`` (a run folder or its history) and, when present, its summary; ReportError on bad
    input, naming the file and line."""
    history = find_history(source)
    summary_file = simulation_summary_path(history)
    summary_doc = _read_summary(summary_file) if summary_file.is_file() else None
    raw_violations = summary_doc.get("violations", []) if summary_doc is not None else []
    wanted = {max(item["lines"]) for item in raw_violations if item["lines"]}
    reader = HistoryFold(wanted)
    try:
        with open(history, "rb") as handle:
            header = quick_header(history, handle)
            for number, record in quick_records(history, handle):
                try:
                    reader.feed(number, record)
                except (TypeError, ValueError, AttributeError, KeyError, IndexError) as error:
                    # A frame whose fields have shapes the server never sends (a hand-edited history).
                    raise ReportError(f"{history}: line {number}: a frame field has an unexpected type "
                                      f"({type(error).__name__})") from None
    except HistoryError as error:
        raise ReportError(str(error)) from None
    except OSError as error:
        raise ReportError(f"{history}: cannot read: {error.strerror or error}") from None
    try:
        return _assemble(history, summary_file if summary_doc is not None else None, header, summary_doc,
                         raw_violations, reader)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as error:
        named = summary_file if summary_doc is not None else history
        raise ReportError(f"{named}: a field has an unexpected type ({type(error).__name__})") from None


def _jobs(doc: dict[str, Any], header: dict[str, Any]) -> int | None:
    """The number of processes: the summary file says it (the history's header does not: one seed gives
    the same history for every --jobs); histories written before then had it in the header."""
    for value in (doc.get("jobs"), header.get("jobs")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def _assemble(history: Path, summary_file: Path | None, header: dict[str, Any],
              summary_doc: dict[str, Any] | None, raw_violations: list[dict[str, Any]],
              reader: HistoryFold) -> SimRun:
    notes: list[str] = []
    doc = summary_doc or {}
    counts: dict[str, Any] = doc.get("summary", {}) if summary_doc is not None else {}
    withheld = {s for s in reader.withheld if len(s) >= _MIN_WITHHELD}

    def safe(value: Any) -> str | None:
        text = _text(value)
        if text is None:
            return None
        return "(withheld: it quotes text from the history)" if any(s in text for s in withheld) else text

    description, description_source = _description(header["scenario"])
    info = RunInfo(
        scenario=header["scenario"], seed=header["seed"], mode=header["mode"],
        server=safe(header.get("server")),
        jobs=_jobs(doc, header),
        rooms=tuple(safe(r) or "" for r in header["rooms"]),
        limits=header.get("limits"),
        duration_ms=header.get("duration_ms"), heal_ms=header.get("heal_ms"), epoch_ms=header.get("epoch_ms"),
        wall_s=doc.get("wall_s") if isinstance(doc.get("wall_s"), int | float) else None,
        description=description, description_source=description_source,
        commit=safe(_machine_fact(header, doc, "commit", "git_commit")),
        python=safe(_machine_fact(header, doc, "python", "python_version")),
        cores=safe(_machine_fact(header, doc, "cores", "cpu_count")),
        machine=safe(_machine_fact(header, doc, "platform", "machine", "host")),
        started=safe(_machine_fact(header, doc, "started", "started_at")),
    )
    visits = reader.visits()
    served = sum(1 for v in visits if v.first_answer_ms is not None)
    messages = MessageTotals(
        patient_sent=sum(v.sent for v in visits),
        patient_delivered=len(reader.patient_acked & reader.console_got),
        clinician_sent=reader.clinician_sent,
        clinician_delivered=len(reader.clinician_acked & reader.patient_got),
    )
    departures = Counter(reader.departed.values())
    erasures = dict(reader.erasures)
    server_closes = dict(reader.server_closes)
    faults = dict(reader.faults)
    violations: tuple[Violation, ...] | None = None
    complete = reader.end_records is not None
    if summary_doc is None:
        expected = simulation_summary_path(history).name
        notes.append(f"No summary file ({expected}) beside the history: the rules were not checked, and "
                     "every number here was counted from the history.")
    else:
        violations = tuple(
            Violation(str(item["rule"]), safe(item["message"]) or "", safe(item.get("room")),
                      safe(item.get("agent")), tuple(item["lines"]),
                      reader.line_t.get(max(item["lines"])) if item["lines"] else None)
            for item in raw_violations)
        if doc.get("scenario") not in (None, info.scenario) or doc.get("seed") not in (None, info.seed):
            notes.append(f"The summary is for {doc.get('scenario')} seed {doc.get('seed')}, not for this "
                         f"history ({info.scenario} seed {info.seed}); its figures may not belong to it.")
        if isinstance(counts.get("records"), int) and counts["records"] != reader.records:
            notes.append(f"The summary counted {counts['records']} records, the history has "
                         f"{reader.records}: the summary may belong to another run of the same scenario "
                         "and seed.")
        erasures = _from_summary("erasures", counts.get("erasures_by_reason"), erasures, notes)
        departures = Counter(_from_summary("departures", counts.get("departures_by_reason"),
                                           dict(departures), notes))
        server_closes = _from_summary("server close codes", counts.get("server_closes_by_code"),
                                      server_closes, notes)
        faults = _from_summary("faults", counts.get("faults"), faults, notes)
        for name, value, mine in (("patients", counts.get("patients"), len(visits)),
                                  ("patients served", counts.get("patients_served"), served)):
            if isinstance(value, int) and value != mine:
                notes.append(f"The summary counts {value} {name}; the history shows {mine}.")
        messages = _messages_from_summary(counts, messages, notes)
    if not complete:
        notes.append("The history has no end record: the run did not finish (or the file was cut short at a "
                     "line's end). The figures cover what was recorded.")
    elif reader.end_records is not None and reader.end_records != reader.records:
        notes.append(f"The end record counts {reader.end_records} records; the history has {reader.records}.")
    if reader.withheld_frames:
        notes.append(f"{reader.withheld_frames} frame(s) in this history carry message text or a name as "
                     "words instead of a length; none of it is shown here.")
    queue = QueueSeries(tuple(reader.times), tuple(reader.waiting_series), tuple(reader.in_call_series))
    return SimRun(history=history, summary_file=summary_file, info=info, complete=complete,
                  last_t_ms=reader.last_t, records=reader.records, queue=queue, visits=tuple(visits),
                  messages=messages, erasures=erasures, departures=dict(departures),
                  server_closes=server_closes, faults=faults, violations=violations, patients_served=served,
                  withheld_frames=reader.withheld_frames, notes=tuple(notes),
                  exercised=_int_counts(counts.get("exercised")),
                  liveness=_liveness(counts.get("liveness"), safe),
                  checker_notes=_int_counts(counts.get("notes_by_rule")))


def _int_counts(value: Any) -> dict[str, int] | None:
    """A summary's {name: count} (None when absent or of another shape)."""
    if not isinstance(value, dict):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        return None
    return {str(k): v for k, v in value.items()}


def _liveness(value: Any, safe: Any) -> Liveness | None:
    if not isinstance(value, dict) or not isinstance(value.get("judged"), bool):
        return None
    bound = value.get("bound_ms")
    return Liveness(judged=value["judged"], reason=safe(value.get("reason")),
                    bound_ms=float(bound) if isinstance(bound, int | float) and not isinstance(bound, bool)
                    else None)


def _from_summary(what: str, value: Any, counted: dict[str, int], notes: list[str]) -> dict[str, int]:
    """The summary's counts (the simulator's own figures), with a note where the history shows others."""
    if not isinstance(value, dict) or not all(isinstance(v, int) for v in value.values()):
        notes.append(f"The summary has no {what}; they were counted from the history.")
        return counted
    theirs = {str(k): int(v) for k, v in value.items()}
    differ = sorted(k for k in set(theirs) | set(counted) if theirs.get(k, 0) != counted.get(k, 0))
    if differ:
        shown = ", ".join(f"{k} {theirs.get(k, 0)} in the summary, {counted.get(k, 0)} in the history"
                          for k in differ)
        notes.append(f"The {what} differ between the summary and the history: {shown}.")
    return theirs


def _whole(value: Any) -> int:
    """A count as the simulator writes it: a whole number (not a bool, a float, infinity or text)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not a count")
    return value


def _messages_from_summary(counts: dict[str, Any], counted: MessageTotals, notes: list[str]) -> MessageTotals:
    p2c: Any = counts.get("messages_patient_to_clinician")
    c2p: Any = counts.get("messages_clinician_to_patient")
    try:
        theirs = MessageTotals(_whole(p2c["sent"]), _whole(p2c["delivered"]), _whole(c2p["sent"]),
                               _whole(c2p["delivered"]))
    except (TypeError, KeyError, ValueError):
        notes.append("The summary has no message totals; they were counted from the history.")
        return counted
    if theirs != counted:
        notes.append(f"The message totals differ between the summary and the history (the summary says "
                     f"{theirs.patient_sent}/{theirs.patient_delivered} from patients and "
                     f"{theirs.clinician_sent}/{theirs.clinician_delivered} from clinicians, sent/delivered; "
                     f"the history shows {counted.patient_sent}/{counted.patient_delivered} and "
                     f"{counted.clinician_sent}/{counted.clinician_delivered}).")
    return theirs
