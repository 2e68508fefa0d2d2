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
``text`` and ``name`` replaced by its length (``reference_server.protocol.redact``):
ids, sizes, codes and times only, never text or names (R13). One exception in
shape: the ``messages`` of an ``open_chat`` ok are summarized as
``{"count": N, "ids": [[first, last], ...], "patients": [...]}`` (id ranges),
since each ``open_chat`` returns a whole conversation again.

Determinism: records of one instant are written sorted by (agent,
connection, the connection's own order), so the order in which Trio happened
to wake the connections' tasks within an instant never reaches the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final

import msgspec

from reference_server.protocol import redact

FORMAT: Final = "queuechat-history"
VERSION: Final = 1

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


def redacted(frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` fit to save, as ``reference_server.protocol.redact`` makes it (every ``text`` and ``name``
    string replaced by its length), with a shortcut for flat frames, the common case, and an
    ``open_chat`` ok's messages summarized (:func:`summarize_messages`)."""
    for value in frame.values():
        if type(value) is dict or type(value) is list:
            messages = frame.get("messages")
            if frame.get("type") == "ok" and type(messages) is list:
                frame = {**frame, "messages": summarize_messages(messages)}
            return dict(redact(frame))
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


def read_history(path: Path) -> tuple[dict[str, Any], Iterator[tuple[int, dict[str, Any]]]]:
    """The header and an iterator of (line number, record); errors name the file and line."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline()
    except OSError as error:
        raise HistoryError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        header = _decode(first)
    except msgspec.DecodeError:
        raise HistoryError(f"{path}:1: not a queuechat history (the first line is not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise HistoryError(f"{path}:1: not a queuechat history (no \"format\": \"{FORMAT}\" header)")
    if header.get("version") != VERSION:
        raise HistoryError(f"{path}:1: history format version {header.get('version')!r}; "
                           f"this checker reads version {VERSION}")

    def records() -> Iterator[tuple[int, dict[str, Any]]]:
        with open(path, "rb") as handle:
            handle.readline()
            for number, line in enumerate(handle, start=2):
                if not line.strip():
                    continue
                try:
                    record = _decode(line)
                except msgspec.DecodeError:
                    raise HistoryError(f"{path}:{number}: not a JSON object") from None
                if not isinstance(record, dict) or "kind" not in record or "t" not in record:
                    raise HistoryError(f"{path}:{number}: a record needs \"t\" and \"kind\"")
                yield number, record

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
