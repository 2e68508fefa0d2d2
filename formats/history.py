"""The history of a run: JSON Lines, format ``queuechat-history`` version 1.

Line 1 is the header::

    {"format": "queuechat-history", "version": 1, "scenario": ..., "seed": ..., "mode": "virtual"|"socket",
     "server": ..., "limits": {...}|null, "rooms": [...], "epoch_ms": ..., "duration_ms": ...,
     "heal_ms": ..., "end_ms": ..., "redaction": "..."}

then one record per line, in time order::

    {"t": 1234.567, "agent": "p0007", "conn": 1, "kind": "connect", "role": "patient", "room": "clinic-01"}
    {"t": ..., "agent": ..., "conn": ..., "kind": "frame", "dir": "out"|"in", "size": 57, "frame": {...}}
    {"t": ..., "agent": ..., "conn": ..., "kind": "action", "action": "drop"|"stall"|..., ...}
    {"t": ..., "agent": ..., "conn": ..., "kind": "close", "code": 1000, "by": "server"|"client"|...}

and a last line ``{"t": ..., "kind": "end", "records": N}``. ``t`` is the
run's time in milliseconds (virtual in-process, real over sockets) since
the run started; ``frame`` is the frame as sent or received with every
``text`` and ``name`` replaced by its length (as ``reference_server.protocol.redact`` does):
ids, sizes, codes and times only, never text or names (R13). One exception in
shape: the ``messages`` of an ``open_chat`` ok are summarized as
``{"count": N, "ids": [[first, last], ...], "patients": [...]}`` (id ranges),
since each ``open_chat`` returns a whole conversation again.

Determinism: records of one instant are written sorted by (agent,
connection, the connection's own order), so the order in which Trio happened
to wake the connections' tasks within an instant never reaches the file.

Two readers: :func:`read_history` checks every field of every record, the time order and the end
record's count (the checker judges a run from it); :func:`quick_header` and :func:`quick_records` decode
each record into a typed :class:`Record` with msgspec and check only the fields each kind needs, for
readers that fold a long history in one pass (the reports).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final, TypeGuard

import msgspec

FORMAT: Final = "queuechat-history"
VERSION: Final = 1

# A history's file name: the scenario's name and seed (``quiet_morning-seed6.jsonl``); its summary goes
# beside it (formats.summary).
HISTORY_NAME_PATTERN: Final = re.compile(r"^(?P<scenario>.+)-seed(?P<seed>-?\d+)\.jsonl$")


def history_file_name(scenario: str, seed: int) -> str:
    """The file name a run of ``scenario`` with ``seed`` is saved under; HISTORY_NAME_PATTERN reads it."""
    return f"{scenario}-seed{seed}.jsonl"

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class HistoryError(Exception):
    """A history file that cannot be read (the message names the file and line)."""


class HistoryWriter:
    """Collects records, writes them in (time, agent, agent order) order, and feeds each to listeners."""

    def __init__(self, path: Path | None, header: dict[str, Any]) -> None:
        self.header = {"format": FORMAT, "version": VERSION, **header}
        self._file: IO[bytes] | None = None
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "wb")  # noqa: SIM115 -- closed by close()
            self._file.write(_encode(self.header) + b"\n")
        self._instant: float | None = None
        self._pending: list[tuple[int, int, dict[str, Any]]] = []
        self._seq = 0
        self.count = 0
        self.listeners: list[Callable[[int, dict[str, Any]], None]] = []
        self._chunks: list[bytes] = []

    def record(self, now_s: float, agent_order: int, record: dict[str, Any]) -> None:
        """Add one record at ``now_s`` (seconds since the run started).

        ``agent_order`` sorts the records of one instant: an agent's index times 1000 plus the
        connection's number, so each connection's own order is kept and nothing else is.
        """
        if now_s != self._instant:
            self._flush_instant()
            self._instant = now_s
        self._seq += 1
        t = round(now_s * 1000.0, 3)
        if "t" in record:  # the agents put "t" first, for people reading the file
            record["t"] = t
        else:
            record = {"t": t, **record}
        self._pending.append((agent_order, self._seq, record))

    def _flush_instant(self) -> None:
        pending = self._pending
        if not pending:
            return
        if len(pending) > 1:
            pending.sort(key=_order)
        listeners = self.listeners
        chunks = self._chunks
        for _, _, line in pending:
            self.count += 1
            number = self.count + 1  # the header is line 1
            for listener in listeners:
                listener(number, line)
            if self._file is not None:
                chunks.append(_encode(line))
        pending.clear()
        if len(chunks) > 2048:
            self._write_chunks()

    def _write_chunks(self) -> None:
        if self._file is not None and self._chunks:
            self._chunks.append(b"")
            self._file.write(b"\n".join(self._chunks))
        self._chunks.clear()

    def close(self, now_s: float) -> None:
        self._flush_instant()
        end = {"t": round(now_s * 1000.0, 3), "kind": "end", "records": self.count}
        for listener in self.listeners:
            listener(self.count + 2, end)
        if self._file is not None:
            self._chunks.append(_encode(end))
            self._write_chunks()
            self._file.close()
            self._file = None


def _order(item: tuple[int, int, dict[str, Any]]) -> tuple[int, int]:
    return item[0], item[1]


def summarize_messages(messages: list[Any]) -> dict[str, Any]:
    """The ``messages`` of an ``open_chat`` ok as the history keeps them: how many, their ids as ranges
    ``[[first, last], ...]`` (in the order given), and the conversations they belong to.

    A conversation comes back whole at every ``open_chat`` (up to 500 messages); the checker needs only
    which ids came back, so the history does not repeat every message's lengths and times.
    """
    ranges: list[list[Any]] = []
    patients: list[Any] = []
    for message in messages:
        if type(message) is not dict:
            ranges.append([None, None])
            continue
        message_id = message.get("id")
        patient = message.get("patient")
        if patient not in patients:
            patients.append(patient)
        if ranges and type(message_id) is int and ranges[-1][1] == message_id - 1:
            ranges[-1][1] = message_id
        else:
            ranges.append([message_id, message_id])
    return {"count": len(messages), "ids": ranges, "patients": patients}


def _lengths(value: Any) -> Any:
    """Every ``text`` and ``name`` string, at any depth, replaced by its length (R13); the same rule as
    ``reference_server.protocol.redact`` (a test compares them), kept here so that this module imports
    nothing of the server."""
    if isinstance(value, dict):
        return {key: len(item) if key in ("text", "name") and isinstance(item, str) else _lengths(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_lengths(item) for item in value]
    return value


def redacted(frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` fit to save (every ``text`` and ``name`` string replaced by its length), with a shortcut
    for flat frames, the common case, and an ``open_chat`` ok's messages summarized
    (:func:`summarize_messages`)."""
    for value in frame.values():
        if type(value) is dict or type(value) is list:
            messages = frame.get("messages")
            if frame.get("type") == "ok" and type(messages) is list:
                frame = {**frame, "messages": summarize_messages(messages)}
            return dict(_lengths(frame))
    text = frame.get("text")
    name = frame.get("name")
    if type(text) is not str and type(name) is not str:
        return frame
    copy = dict(frame)
    if type(text) is str:
        copy["text"] = len(text)
    if type(name) is str:
        copy["name"] = len(name)
    return copy


def frame_record(agent: str, conn: int, direction: str, size: int, frame: dict[str, Any]) -> dict[str, Any]:
    return {"t": 0.0, "agent": agent, "conn": conn, "kind": "frame", "dir": direction, "size": size,
            "frame": redacted(frame)}


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# Header fields: name -> (check, what it must be, may it be null or absent).
_HEADER_FIELDS: Final[dict[str, tuple[Callable[[Any], bool], str, bool]]] = {
    "scenario": (lambda v: isinstance(v, str), "a string", False),
    "seed": (_is_int, "an integer", False),
    "mode": (lambda v: v in ("virtual", "socket"), "\"virtual\" or \"socket\"", False),
    "heal_ms": (_is_number, "a number of milliseconds", True),
    "end_ms": (_is_number, "a number of milliseconds", True),
    "duration_ms": (_is_number, "a number of milliseconds", True),
    "epoch_ms": (_is_number, "a number of milliseconds", True),
    "rooms": (lambda v: isinstance(v, list) and all(isinstance(r, str) for r in v), "a list of room names",
              True),
    "limits": (lambda v: isinstance(v, dict), "an object", True),
    "pace": (lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values()),
             "an object of numbers", True),
    "jobs": (_is_int, "an integer", True),
}
_KINDS: Final = ("connect", "frame", "action", "close", "end")


def validate_header(header: Any) -> str | None:
    """What is wrong with a history's header (None: nothing); names the field."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return f"not a queuechat history (no \"format\": \"{FORMAT}\" header)"
    if header.get("version") != VERSION:
        return f"history format version {header.get('version')!r}; this checker reads version {VERSION}"
    for name, (check, what, optional) in _HEADER_FIELDS.items():
        value = header.get(name)
        if value is None and optional:
            continue
        if not check(value):
            return f"header field \"{name}\" must be {what}, not {_shown(value)}"
    heal, end = header.get("heal_ms"), header.get("end_ms")
    if _is_number(heal) and _is_number(end) and heal > end:
        return f"header field \"heal_ms\" ({heal}) is after \"end_ms\" ({end})"
    return None


def validate_record(record: Any, last_t: float) -> str | None:
    """What is wrong with one record (None: nothing); names the field."""
    if not isinstance(record, dict):
        return "a record must be a JSON object"
    t = record.get("t")
    if not _is_number(t):
        return f"field \"t\" must be a number of milliseconds, not {_shown(t)}"
    if t < last_t:
        return f"field \"t\" goes back in time ({t} after {last_t}): records are in time order"
    kind = record.get("kind")
    if kind not in _KINDS:
        return f"field \"kind\" must be one of {', '.join(_KINDS)}, not {_shown(kind)}"
    if kind == "end":
        records = record.get("records")
        return None if _is_int(records) else f"field \"records\" must be an integer, not {_shown(records)}"
    if not isinstance(record.get("agent"), str):
        return f"field \"agent\" must be a string, not {_shown(record.get('agent'))}"
    if not _is_int(record.get("conn")):
        return f"field \"conn\" must be an integer, not {_shown(record.get('conn'))}"
    if kind == "connect":
        if record.get("role") not in ("patient", "clinician"):
            return f"field \"role\" must be \"patient\" or \"clinician\", not {_shown(record.get('role'))}"
        if not isinstance(record.get("room"), str):
            return f"field \"room\" must be a string, not {_shown(record.get('room'))}"
    elif kind == "frame":
        if record.get("dir") not in ("in", "out"):
            return f"field \"dir\" must be \"in\" or \"out\", not {_shown(record.get('dir'))}"
        frame = record.get("frame")
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            return f"field \"frame\" must be an object with a string \"type\", not {_shown(frame)}"
    elif kind == "action":
        if not isinstance(record.get("action"), str):
            return f"field \"action\" must be a string, not {_shown(record.get('action'))}"
    elif kind == "close":
        if not _is_int(record.get("code")):
            return f"field \"code\" must be an integer, not {_shown(record.get('code'))}"
        if not isinstance(record.get("by"), str):
            return f"field \"by\" must be a string, not {_shown(record.get('by'))}"
    return None


def _shown(value: Any) -> str:
    """A field's value for an error message: its JSON type, and the value only when it is short and not
    a string (a string could be a patient's text in a hand-edited file)."""
    if value is None:
        return "null (or absent)"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 20 else type(value).__name__


def read_history(path: Path) -> tuple[dict[str, Any], Iterator[tuple[int, dict[str, Any]]]]:
    """The header and an iterator of (line number, record), each validated on reading: a damaged file
    (a field of the wrong type, a record after the end, no end record: cut short) raises
    :class:`HistoryError` naming the file, the line and the field."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline()
    except OSError as error:
        raise HistoryError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        header = _decode(first)
    except msgspec.DecodeError:
        raise HistoryError(f"{path}:1: not a queuechat history (the first line is not JSON)") from None
    problem = validate_header(header)
    if problem is not None:
        raise HistoryError(f"{path}:1: {problem}")

    def records() -> Iterator[tuple[int, dict[str, Any]]]:
        last_t = 0.0
        ended: int | None = None
        count = 0
        with open(path, "rb") as handle:
            handle.readline()
            number = 1
            for number, line in enumerate(handle, start=2):
                if not line.strip():
                    continue
                if ended is not None:
                    raise HistoryError(f"{path}:{number}: a record after the end record (line {ended})")
                if not line.endswith(b"\n"):
                    raise HistoryError(f"{path}:{number}: the last line is cut short (no line end): the file "
                                       "is truncated")
                try:
                    record = _decode(line)
                except msgspec.DecodeError:
                    raise HistoryError(f"{path}:{number}: not a JSON object") from None
                problem = validate_record(record, last_t)
                if problem is not None:
                    raise HistoryError(f"{path}:{number}: {problem}")
                last_t = float(record["t"])
                if record["kind"] == "end":
                    ended = number
                    if record["records"] != count:
                        raise HistoryError(f"{path}:{number}: the end record counts {record['records']} "
                                           f"records, the file has {count}: records are missing or added")
                else:
                    count += 1
                yield number, record
        if ended is None:
            raise HistoryError(f"{path}:{number}: the history ends without its end record: the file is "
                               "truncated (or the run was interrupted before it could finish the file)")

    return header, records()


def read_lines(path: Path, numbers: set[int]) -> dict[int, str]:
    """The text of some lines of a file (for showing the events around a violation)."""
    out: dict[int, str] = {}
    if not numbers:
        return out
    last = max(numbers)
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if number in numbers:
                out[number] = line.rstrip("\n")
            if number >= last:
                break
    return out


# --------------------------------------------------------------------------- the quick reader


class Record(msgspec.Struct):
    """One history line after the header, as :func:`quick_records` decodes it; fields not named here are
    ignored."""

    t: float
    kind: str
    agent: str | None = None
    conn: int | None = None
    dir: str | None = None
    frame: dict[str, Any] | None = None
    role: str | None = None
    room: str | None = None
    action: str | None = None
    code: int | None = None
    by: str | None = None
    records: int | None = None


# The fields a quick reader relies on, per kind.
_QUICK_NEEDS: Final[dict[str, tuple[str, ...]]] = {
    "connect": ("agent", "conn", "role", "room"),
    "frame": ("agent", "conn", "dir", "frame"),
    "action": ("agent", "conn", "action"),
    "close": ("agent", "conn", "code"),
    "end": (),
}


def quick_header(path: Path, handle: IO[bytes]) -> dict[str, Any]:
    """The header, read from the first line of ``handle`` (opened in binary on ``path``), with the fields
    every reader relies on checked; HistoryError names the field."""
    first = handle.readline()
    if not first.strip():
        raise HistoryError(f"{path}: empty file, not a queuechat history")
    try:
        header = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        raise HistoryError(f"{path}:1: not a queuechat history (the first line is not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise HistoryError(f'{path}:1: not a queuechat history (no "format": "{FORMAT}" header)')
    if header.get("version") != VERSION:
        version = header.get("version")
        shown = version if isinstance(version, int | float) else "missing or not a number"
        raise HistoryError(f"{path}:1: history format version {shown}; this report reads version {VERSION}")
    checks: list[tuple[str, Any]] = [("scenario", str), ("seed", int), ("mode", str), ("rooms", list)]
    for key, kind in checks:
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise HistoryError(f'{path}:1: the header needs "{key}" ({kind.__name__})')
    for key in ("duration_ms", "heal_ms", "end_ms", "epoch_ms"):
        value = header.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise HistoryError(f'{path}:1: the header\'s "{key}" is not a number')
    if header.get("limits") is not None and not isinstance(header.get("limits"), dict):
        raise HistoryError(f'{path}:1: the header\'s "limits" is not an object')
    return header


def quick_records(path: Path, handle: IO[bytes]) -> Iterator[tuple[int, Record]]:
    """(line number, record) for each line after the header (:func:`quick_header` read it), each decoded
    into a :class:`Record` and checked for the fields its kind needs; HistoryError names the line. Time
    order and the end record's count are left to the caller."""
    decode = msgspec.json.Decoder(Record).decode
    number = 1
    for line in handle:
        number += 1
        if not line.strip():
            continue
        try:
            record = decode(line)
        except msgspec.ValidationError as error:
            raise HistoryError(f"{path}:{number}: a record that does not fit the history format: "
                               f"{_short(str(error))}") from None
        except msgspec.DecodeError:
            if not line.endswith(b"\n"):  # only the last line can lack its newline
                raise HistoryError(f"{path}:{number}: the last line is cut short (the history was truncated "
                                   "while being written?)") from None
            raise HistoryError(f"{path}:{number}: not a JSON object") from None
        for name in _QUICK_NEEDS.get(record.kind, ()):
            if getattr(record, name) is None:
                raise HistoryError(f'{path}:{number}: a "{record.kind}" record needs "{name}"')
        yield number, record


def _short(message: str) -> str:
    """msgspec's own words (field paths and types, never values), on one short line."""
    return " ".join(message.split())[:160]
