"""Folding a simulation history's records (read by ``formats.history.quick_records``, in one pass) into
what a report needs: the queue as the clinicians saw it, each patient's visit, message, erasure,
departure, close and fault counts.

``text`` and ``name`` fields are never kept: a history holds their lengths; strings found there anyway are
only collected so that nothing quoting them is shown.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from formats.history import Record


@dataclass(frozen=True)
class Visit:
    """One patient's visit (a checked-in patient connection): its conversation and its wait."""

    room: str
    agent: str
    checkin_ms: float
    first_answer_ms: float | None  # the clinician's first message delivered, or the call starting
    sent: int  # the patient's messages the server accepted
    received: int  # the clinician's messages delivered to the patient

    @property
    def wait_s(self) -> float | None:
        if self.first_answer_ms is None:
            return None
        return max(0.0, (self.first_answer_ms - self.checkin_ms) / 1000.0)

    @property
    def messages(self) -> int:
        return self.sent + self.received


@dataclass(frozen=True)
class QueueSeries:
    """Patients in all queues as the clinicians' screens showed them; each value holds from its time on."""

    times_ms: tuple[float, ...]
    waiting: tuple[int, ...]
    in_call: tuple[int, ...]

    def at(self, t_ms: float) -> tuple[int, int]:
        """(waiting, in a call) at ``t_ms``, after every change recorded at that instant."""
        index = bisect.bisect_right(self.times_ms, t_ms) - 1
        if index < 0:
            return 0, 0
        return self.waiting[index], self.in_call[index]

    def peak(self) -> tuple[int, float]:
        """The most patients waiting at once (not counting calls), and when it first happened."""
        best, when = 0, 0.0
        for t, value in zip(self.times_ms, self.waiting, strict=True):
            if value > best:
                best, when = value, t
        return best, when


class _Patient:
    __slots__ = ("agent", "checkin", "first", "id", "pending", "received", "room", "sent")

    def __init__(self, agent: str, room: str) -> None:
        self.agent = agent
        self.room = room
        self.id: str | None = None
        self.checkin: float | None = None
        self.first: float | None = None
        self.sent = 0
        self.received = 0
        self.pending: deque[str] = deque()


class HistoryFold:
    """Folds the records, in order, into the report's numbers."""

    def __init__(self, wanted_lines: set[int]) -> None:
        self.wanted = wanted_lines
        self.line_t: dict[int, float] = {}
        self.patients: dict[tuple[str, int], _Patient] = {}
        self.consoles: dict[tuple[str, int], str] = {}  # clinician connection -> room
        self.console_pending: dict[tuple[str, int], deque[tuple[str, Any]]] = {}
        self.room_console: dict[str, tuple[str, int]] = {}  # the room's newest welcomed connection
        self.room_queue: dict[str, dict[str, str]] = {}  # room -> patient -> "waiting" | "in_call"
        self.waiting = 0
        self.in_call = 0
        self.times: list[float] = []
        self.waiting_series: list[int] = []
        self.in_call_series: list[int] = []
        self.patient_acked: set[tuple[str, str, Any]] = set()
        self.console_got: set[tuple[str, str, Any]] = set()
        self.clinician_acked: set[tuple[str, str, Any]] = set()
        self.clinician_sent = 0
        self.patient_got: set[tuple[str, str, Any]] = set()
        self.erased: set[tuple[str, str, str, float]] = set()
        self.erasures: Counter[str] = Counter()
        self.departed: dict[tuple[str, str], str] = {}
        self.server_closes: Counter[str] = Counter()
        self.faults: Counter[str] = Counter({"refreshes": 0, "drops": 0, "stalls": 0})
        self.withheld: set[str] = set()
        self.withheld_frames = 0
        self.records = 0
        self.last_t = 0.0
        self.end_records: int | None = None

    # the queue ------------------------------------------------------------------

    def _set_room(self, t: float, room: str, queue: dict[str, str]) -> None:
        old = self.room_queue.get(room, {})
        self.waiting -= sum(1 for s in old.values() if s == "waiting")
        self.in_call -= sum(1 for s in old.values() if s != "waiting")
        self.room_queue[room] = queue
        self.waiting += sum(1 for s in queue.values() if s == "waiting")
        self.in_call += sum(1 for s in queue.values() if s != "waiting")
        self._mark(t)

    def _mark(self, t: float) -> None:
        if self.times and self.times[-1] == t:
            self.waiting_series[-1] = self.waiting
            self.in_call_series[-1] = self.in_call
        else:
            self.times.append(t)
            self.waiting_series.append(self.waiting)
            self.in_call_series.append(self.in_call)

    def _queue_change(self, t: float, room: str, patient: str, state: str | None) -> None:
        queue = self.room_queue.setdefault(room, {})
        old = queue.get(patient)
        if old == state:
            return
        if old is not None:
            if old == "waiting":
                self.waiting -= 1
            else:
                self.in_call -= 1
        if state is None:
            queue.pop(patient, None)
        else:
            queue[patient] = state
            if state == "waiting":
                self.waiting += 1
            else:
                self.in_call += 1
        self._mark(t)

    # records --------------------------------------------------------------------

    def feed(self, number: int, record: Record) -> None:
        t = record.t
        self.last_t = t
        if number in self.wanted:
            self.line_t[number] = t
        kind = record.kind
        if kind == "end":
            self.end_records = record.records
            return
        self.records += 1
        key = (str(record.agent), int(record.conn or 0))
        if kind == "connect":
            if record.role == "clinician":
                self.consoles[key] = str(record.room)
                self.console_pending[key] = deque()
            else:
                self.patients[key] = _Patient(key[0], str(record.room))
        elif kind == "frame":
            frame = record.frame or {}
            self._scan_private(frame)
            room = self.consoles.get(key)
            if room is not None:
                self._console_frame(t, key, room, record.dir == "out", frame)
            else:
                patient = self.patients.get(key)
                if patient is not None:
                    self._patient_frame(t, patient, record.dir == "out", frame)
        elif kind == "close":
            if record.by == "server":
                self.server_closes[str(record.code)] += 1
        elif kind == "action":
            action = record.action
            if action == "refresh":
                self.faults["refreshes"] += 1
            elif action == "drop":
                self.faults["drops"] += 1
            elif action == "stall":
                self.faults["stalls"] += 1

    def _scan_private(self, frame: dict[str, Any]) -> None:
        """Count (never keep for display) text and name strings a history should not hold."""
        found = False
        for key in ("text", "name"):
            value = frame.get(key)
            if isinstance(value, str):
                self.withheld.add(value)
                found = True
        for value in frame.values():
            if isinstance(value, dict | list):
                found = self._scan_nested(value) or found
        if found:
            self.withheld_frames += 1

    def _scan_nested(self, value: Any) -> bool:
        found = False
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("text", "name") and isinstance(item, str):
                    self.withheld.add(item)
                    found = True
                elif isinstance(item, dict | list):
                    found = self._scan_nested(item) or found
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict | list):
                    found = self._scan_nested(item) or found
        return found

    def _console_frame(self, t: float, key: tuple[str, int], room: str, out: bool,
                       frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        pending = self.console_pending[key]
        if out:
            if kind != "hello":
                pending.append((str(kind), frame.get("patient")))
            return
        current = self.room_console.get(room) == key
        if kind == "welcome":
            queue: dict[str, str] = {}
            entries = frame.get("queue")
            for entry in entries if isinstance(entries, list) else ():
                if isinstance(entry, dict) and isinstance(entry.get("patient"), str):
                    queue[entry["patient"]] = "in_call" if entry.get("state") == "in_call" else "waiting"
            call = frame.get("call")
            if isinstance(call, dict) and call.get("patient") in queue:
                queue[call["patient"]] = "in_call"
            self.room_console[room] = key
            self._set_room(t, room, queue)
        elif kind == "ok" or kind == "error":
            request = pending.popleft() if pending else None
            if request is None or kind != "ok":
                return
            rtype, patient = request
            if rtype == "send":
                self.clinician_sent += 1
                self.clinician_acked.add((room, str(patient), frame.get("id")))
            elif rtype == "start_call" and current and patient in self.room_queue.get(room, {}):
                self._queue_change(t, room, str(patient), "in_call")
        elif kind == "message":
            if frame.get("from") == "patient":
                self.console_got.add((room, str(frame.get("patient")), frame.get("id")))
        elif kind == "patient_joined":
            if current and isinstance(frame.get("patient"), str):
                self._queue_change(t, room, frame["patient"], "waiting")
        elif kind == "patient_left":
            patient = str(frame.get("patient"))
            self.departed.setdefault((room, patient), str(frame.get("reason")))
            if current:
                self._queue_change(t, room, patient, None)
        elif kind == "erased":
            item = (room, str(frame.get("patient")), str(frame.get("reason")), t)
            if item not in self.erased:  # one erasure seen on two connections of a room counts once
                self.erased.add(item)
                self.erasures[item[2]] += 1

    def _patient_frame(self, t: float, patient: _Patient, out: bool, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if out:
            if kind != "hello":
                patient.pending.append(str(kind))
            return
        if kind == "welcome":
            if patient.checkin is None:
                patient.checkin = t
                patient.id = str(frame.get("patient"))
        elif kind == "ok" or kind == "error":
            request = patient.pending.popleft() if patient.pending else None
            if request == "send" and kind == "ok" and patient.id is not None:
                patient.sent += 1
                self.patient_acked.add((patient.room, patient.id, frame.get("id")))
        elif kind == "message":
            if frame.get("from") == "clinician" and frame.get("patient") == patient.id and patient.id:
                patient.received += 1
                self.patient_got.add((patient.room, patient.id, frame.get("id")))
                if patient.first is None or t < patient.first:
                    patient.first = t
        elif kind == "call" and frame.get("state") == "started":
            patient.first = t if patient.first is None else min(patient.first, t)

    def visits(self) -> list[Visit]:
        out = [Visit(p.room, p.agent, p.checkin, p.first, p.sent, p.received)
               for p in self.patients.values() if p.checkin is not None]
        out.sort(key=lambda v: (v.checkin_ms, v.agent))
        return out

