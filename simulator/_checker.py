"""The checker: reads a history and checks the contract's rules from the clients' side.

It does not import the server's domain model: this is an independent
reading of the contract (docs/protocol.md), replayed per connection.

What it can know, and how:

- One connection's frames are in the server's order. A clinician connection
  (a *console*) receives every change of the chat box, badges and queue, and
  the answers to its own requests, so a replica of the console, advanced
  frame by frame, says exactly what the next frames must be: after a
  patient's ``message``, the ``chat_box`` (auto-open), ``unread`` and
  ``notify`` that R3/R6/R7/R8/R10 call for; for each request, its effects
  (R4, R5, R9, R11, R20) then its answer.
- Across connections only *happened-before* is used: record A happened
  before record B when A's time is earlier, or when both are on the same
  connection and A comes first in the file (records of one instant are
  sorted by agent and connection, so nothing is read from their order
  across connections). From that:
  a patient's message must reach a console that was welcomed before the
  message was sent and that later saw the patient leave (or was replaced
  after the message's ``ok``); it must not reach a console that said hello
  after its ``ok`` (R12: no replay).
- Provider status (R30) and the room setting (R31) are checked on a
  patient's answers that fall wholly inside an interval where the
  clinician's state is certain.

Each violation names its rule, the seed, and the lines of the history that
led to it. Beyond that (docs/simulator.md):

- Frame order: an effect that comes before its cause is held until the cause
  arrives, then reported once as ``order``; an answer that overtakes its
  effects is ``order`` only if they then come.
- No cascade: the replica follows the server; where a violation leaves it
  unsure of the server's box or a badge, frames about them are not judged
  (optional) until a ``chat_box`` or ``unread`` frame says what they are.
- Notes: what the contract leaves open (extra frames to a console being
  replaced, a refused hello) is counted and kept, never a violation.
- Exercises: every check that puts a contract rule to the test counts, so a
  run says which rules it never tested; liveness is judged per room only
  where the healing phase is long enough for the scenario's pace.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

CONTEXT_LINES: Final = 8
MAX_SHOWN_PER_RULE: Final = 5
MAX_NOTES_SHOWN: Final = 50  # in the summary, the first by history line
MAX_NOTES_KEPT: Final = 10_000  # in memory, before the summary picks the first

# Every rule of the contract (/work/shared/PROTOCOL.md): the keys of the summary's "exercised" counts.
CONTRACT_RULES: Final = ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "R11", "R12", "R13",
                         "R20", "R30", "R31", "R40", "R41", "R42", "R43", "R44", "R45", "R46")
# Besides these the checker names "order" (Transport: the order of one cause's frames), "WIRE" (every
# request answered once, in order, with its ref), "LIVENESS" and "PRIVACY".
# Frames only a clinician's console may receive (a patient never sees another patient's id).
CLINICIAN_ONLY: Final = frozenset({"patient_joined", "patient_left", "chat_box", "unread", "notify",
                                   "erased"})
# The order of one cause's frames on one connection (Transport: Order); the request's answer comes last.
FRAME_ORDER: Final = ("patient_left", "erased", "message", "chat_box", "unread", "notify")

# Liveness: the simulator's clinicians, once the healing phase begins, answer one waiting patient per
# tick, a tick being the scenario's think time capped at HEAL_TICK_CAP_MS (simulator/_agents.py). See
# liveness_bound_ms() and docs/simulator.md, "Liveness".
HEAL_TICK_CAP_MS: Final = 10_000.0

Stamp = tuple[float, str, int]  # (t ms, "agent/connection", line)


def hb(a: Stamp | None, b: Stamp | None) -> bool:
    """A certainly happened before B: earlier in time, or earlier on the same connection.

    Records of one instant are sorted by agent and connection, so the file says nothing about the
    order of two connections' records at one instant."""
    if a is None or b is None:
        return False
    return a[0] < b[0] or (a[1] == b[1] and a[2] < b[2])


@dataclass(slots=True)
class Violation:
    rule: str
    message: str
    lines: list[int]
    room: str | None = None
    agent: str | None = None


@dataclass(slots=True)
class Request:
    ref: str | None
    type: str
    frame: dict[str, Any]
    stamp: Stamp
    # A clinician's send: the highest place in the queue its patient can have (R30), from the console.
    position_bound: int | None = None


class _Conn:
    __slots__ = ("agent", "close", "closed_stamp", "end_stamp", "key", "lines", "number", "pending",
                 "refused", "room")

    def __init__(self, agent: str, number: int, room: str) -> None:
        self.agent = agent
        self.number = number
        self.room = room
        self.key = (agent, number)
        self.lines: deque[int] = deque(maxlen=CONTEXT_LINES)
        self.pending: deque[Request] = deque()
        self.close: tuple[int, str] | None = None  # (code, by)
        self.closed_stamp: Stamp | None = None
        self.end_stamp: Stamp | None = None  # the client started to end it (drop, close, refresh, stall)
        self.refused: str | None = None  # the hello's error code, when the server refused it


@dataclass(slots=True)
class _Sent:
    length: int
    client_ts: Any
    ts: int
    send: Stamp
    ok: Stamp


class _Patient(_Conn):
    __slots__ = (
        "answers",
        "call_ended",
        "call_started",
        "client_ended",
        "clinician_sends_seen",
        "departed_by",
        "errors",
        "expect_on_call",
        "got",
        "id",
        "last_id",
        "leave_ok",
        "leave_sent",
        "position",
        "position_at",
        "send_requests",
        "sends",
        "setting",
        "state",
        "status",
        "unanswered_sends",
        "welcome",
        "wrote",
    )

    def __init__(self, agent: str, number: int, room: str) -> None:
        super().__init__(agent, number, room)
        self.id: str | None = None
        self.welcome: Stamp | None = None
        self.status = "away"
        self.setting = True
        self.state = "new"
        self.wrote = False  # the clinician has written to this patient (R31)
        self.last_id = 0
        self.position = 0
        self.position_at: dict[int, int] = {}  # clinician message id -> position shown when it arrived
        self.sends: dict[int, _Sent] = {}
        self.got: dict[int, tuple[int, Any, int, Stamp]] = {}  # id -> (length, client_ts, ts, stamp)
        self.answers: list[tuple[Stamp, Stamp, str, bool]] = []  # (request, answer, status, setting)
        self.leave_sent: Stamp | None = None
        self.leave_ok: Stamp | None = None
        self.call_started: Stamp | None = None
        self.call_ended: Stamp | None = None
        self.expect_on_call = False
        self.unanswered_sends = 0
        self.clinician_sends_seen = 0
        self.departed_by: Stamp | None = None  # the client's own departure: leave sent, close, drop
        self.errors = 0
        self.send_requests = 0
        self.client_ended = False  # the patient's side closed or dropped the connection


class _Console(_Conn):
    __slots__ = (
        "badge_unknown",
        "box_patient",
        "box_present",
        "box_state",
        "box_unknown",
        "call",
        "call_departures",
        "call_windows",
        "calls_started",
        "chats",
        "consumed",
        "delivered",
        "disturbed",
        "early",
        "erased_departed",
        "erased_upto",
        "expect",
        "group",
        "hello",
        "last_id",
        "left",
        "lenient",
        "limits",
        "notifications",
        "order_reported",
        "passed",
        "patient_chat",
        "position_bounds",
        "present",
        "refresh_seen",
        "replaced_by",
        "replacing",
        "seen_ids",
        "sent_ok",
        "set_room_windows",
        "suspects",
        "unanswered_sends",
        "unsure_settings",
        "welcome",
        "welcome_status",
    )

    def __init__(self, agent: str, number: int, room: str) -> None:
        super().__init__(agent, number, room)
        self.hello: Stamp | None = None
        self.welcome: Stamp | None = None
        self.welcome_status: str | None = None
        self.present: dict[str, list[Any]] = {}  # id -> [state, unread]
        self.box_state = "closed"
        self.box_patient: str | None = None
        self.box_present = False
        self.call: str | None = None
        self.notifications = True
        self.patient_chat = True
        self.limits: dict[str, Any] | None = None
        self.expect: deque[tuple[dict[str, Any], str, str]] = deque()  # (spec, rule, why)
        self.group: Request | None = None  # the request whose effects are being matched
        self.consumed = 0
        self.lenient: str | None = None  # after a violation: "message" or "request", until the group ends
        self.last_id: dict[str, int] = {}
        self.seen_ids: dict[str, list[int]] = {}
        self.delivered: dict[tuple[str, int], tuple[int, Any, int, Stamp]] = {}
        self.sent_ok: dict[tuple[str, int], _Sent] = {}
        self.position_bounds: dict[tuple[str, int], int] = {}  # (patient, message id) -> R30 bound
        self.left: dict[str, tuple[str, Stamp]] = {}  # patient -> (reason, stamp)
        self.erased_upto: dict[str, int] = {}
        self.erased_departed: set[str] = set()
        self.replaced_by: Stamp | None = None  # the same agent's next hello, sent while this one was open
        self.replacing: Stamp | None = None  # the clinician opened the console again (a refresh, new tab)
        self.unanswered_sends: dict[str, int] = {}
        # the call changed within (from, to); a call in progress after it?
        self.call_windows: list[tuple[float, float, Any]] = []
        # the call's patient left by themselves: (id, when the console saw it)
        self.call_departures: list[tuple[str, float]] = []
        self.calls_started: list[tuple[str, Stamp]] = []
        self.unsure_settings = False  # a settings request was never answered
        self.set_room_windows: list[tuple[float, float, Any]] = []  # (from, to, the setting after or None)
        self.disturbed: float | None = None  # first time the client stalled, dropped, refreshed or closed
        # Frames no cause explains yet, held until the next cause: its effects sent before it ("order").
        self.early: list[tuple[dict[str, Any], Stamp]] = []
        # Expected frames that a later one of the same cause overtook (id of the spec): seen later -> order.
        self.passed: set[int] = set()
        self.order_reported = False  # one "order" violation per cause
        self.refresh_seen = False  # erased{refresh} arrived: the server is replacing this console
        self.chats: set[str] = set()  # patients this console has written to (R2)
        # After a violation the server's box or a badge may differ from the replica, unseen: until a
        # chat_box (unread) frame says what it is, frames about it are not judged (no cascade).
        self.box_unknown = False
        self.badge_unknown: set[str] = set()
        # Violations named R3 (a badge that did not go up, notifications off) that are R7/R8 if the box
        # turns out to have moved: (the violation, the box rule).
        self.suspects: list[tuple[Violation, str]] = []


class _ClinicianAgent:
    __slots__ = ("consoles", "erased_said", "known_departed", "seen_max")

    def __init__(self) -> None:
        self.consoles: list[_Console] = []
        self.known_departed: set[str] = set()
        self.seen_max: dict[str, int] = {}  # highest id of each patient seen on an earlier console
        self.erased_said: dict[str, int] = {}  # ids up to which the server said (erased{...}) it erased


def _number(value: Any) -> float:
    """A number from a record or frame field; 0.0 when it is not one (the history reader names bad fields)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)


def _int(value: Any, default: int = 0) -> int:
    """An integer field of a server's frame; ``default`` when it is not one (never a traceback)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return value


def _by_line(item: Violation) -> tuple[int, str, str]:
    """History order (the same for every --jobs once a part's lines are mapped to the whole history's)."""
    return (item.lines[-1] if item.lines else 0, item.rule, item.message)


def _no_mark(rule: str) -> None:
    """Counts nothing (a look at what a request would cause, not a judgment)."""


def _matches(frame: dict[str, Any], spec: dict[str, Any]) -> bool:
    for key, want in spec.items():
        if key == OPTIONAL:
            continue
        got = frame.get(key, _ABSENT)
        if isinstance(want, tuple):
            if got not in want:
                return False
        elif got != want or (type(got) is bool) != (type(want) is bool):
            return False
    return True


_ABSENT: Final = object()
OPTIONAL: Final = "_optional"  # a spec key: the frame may come or not (the replica lost track of it)


def _optional(spec: dict[str, Any], *drop: str) -> dict[str, Any]:
    """``spec`` as a frame that may or may not come, without the fields the replica cannot know."""
    return {**{k: v for k, v in spec.items() if k not in drop}, OPTIONAL: True}


def _describe(frame: dict[str, Any]) -> str:
    hidden = ("messages", "limits", "queue", OPTIONAL)
    return "{" + ", ".join(f"{k}: {v!r}" if not isinstance(v, tuple) else f"{k}: one of {v!r}"
                           for k, v in frame.items() if k not in hidden) + "}"


@dataclass
class Summary:
    """Counts for the end of a run (ids, sizes and times only)."""

    patients: int = 0
    patients_served: int = 0
    patient_messages: int = 0
    patient_messages_delivered: int = 0
    clinician_messages: int = 0
    clinician_messages_delivered: int = 0
    waits_s: list[float] = field(default_factory=list)
    erasures: dict[str, int] = field(default_factory=dict)
    departures: dict[str, int] = field(default_factory=dict)
    refreshes: int = 0
    drops: int = 0
    stalls: int = 0
    server_closes: dict[str, int] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)
    records: int = 0
    duration_ms: float = 0.0
    complete: bool = False
    # How many times the run exercised each rule of the contract (zero included).
    exercised: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CONTRACT_RULES, 0))
    # Where the protocol is silent or lets the server choose: counted and kept, never violations.
    notes_by_rule: dict[str, int] = field(default_factory=dict)
    notes: list[Violation] = field(default_factory=list)
    # Connections: opened, welcomed, and hellos refused by code (a wrong secret, a full room...).
    connections: int = 0
    welcomed: int = 0
    hello_refused: dict[str, int] = field(default_factory=dict)
    # Liveness: judged per room (see Checker._check_liveness); bound_ms is the largest room's bound.
    liveness_rooms: int = 0
    liveness_rooms_judged: int = 0
    liveness_reason: str | None = None  # not judged at all: why
    liveness_bound_ms: float | None = None
    # Rooms not judged, the healing phase being too short for them: (room, patients, bound ms), and
    # what the reason quotes (the healing phase's length, the mean think time).
    liveness_short: list[tuple[str, int, float]] = field(default_factory=list)
    liveness_heal_ms: float = 0.0
    liveness_think_ms: float = 0.0

    def merge(self, other: Summary) -> None:
        """Add the counts of another part of the same run (rooms checked in another process)."""
        first = self.records == 0 and not self.complete
        for name in ("patients", "patients_served", "patient_messages", "patient_messages_delivered",
                     "clinician_messages", "clinician_messages_delivered", "refreshes", "drops", "stalls",
                     "records", "connections", "welcomed", "liveness_rooms", "liveness_rooms_judged"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.waits_s.extend(other.waits_s)
        for name in ("erasures", "departures", "server_closes", "violations", "exercised", "notes_by_rule",
                     "hello_refused"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        self.notes.extend(other.notes[:max(0, MAX_NOTES_KEPT - len(self.notes))])
        if self.liveness_reason is None:
            self.liveness_reason = other.liveness_reason
        self.liveness_short = sorted(self.liveness_short + other.liveness_short)
        self.liveness_heal_ms = max(self.liveness_heal_ms, other.liveness_heal_ms)
        self.liveness_think_ms = max(self.liveness_think_ms, other.liveness_think_ms)
        if other.liveness_bound_ms is not None:
            self.liveness_bound_ms = max(self.liveness_bound_ms or 0.0, other.liveness_bound_ms)
        self.duration_ms = max(self.duration_ms, other.duration_ms)
        self.complete = other.complete if first else self.complete and other.complete

    @property
    def liveness_judged(self) -> bool:
        """Judged only when every room with a patient waiting at the healing phase's start was judged."""
        return self.liveness_reason is None and self.complete and not self.liveness_short

    def liveness(self) -> dict[str, Any]:
        judged = self.liveness_judged
        reason = None if judged else (self.liveness_reason or self._short_reason()
                                      or "the run did not finish (no end record)")
        return {"judged": judged, "reason": reason, "bound_ms": self.liveness_bound_ms,
                "rooms": self.liveness_rooms, "rooms_judged": self.liveness_rooms_judged}

    def _short_reason(self) -> str | None:
        if not self.liveness_short:
            return None
        room, count, bound = max(self.liveness_short, key=lambda item: (item[2], item[0]))
        return (f"not judged in {len(self.liveness_short)} of {self.liveness_rooms} room(s): the healing "
                f"phase ({_seconds(self.liveness_heal_ms)}) is shorter than the {_seconds(bound)} this "
                f"scenario's pace needs (room {room}: {count} patient(s) to answer, a clinician thinking "
                f"{_seconds(self.liveness_think_ms)} on average); run longer or with a longer healing phase")

    def as_dict(self) -> dict[str, Any]:
        waits = sorted(self.waits_s)

        def pct(p: float) -> float | None:
            if not waits:
                return None
            return round(waits[min(len(waits) - 1, int(p * len(waits)))], 1)

        return {
            "patients": self.patients,
            "patients_served": self.patients_served,
            "messages_patient_to_clinician": {"sent": self.patient_messages,
                                              "delivered": self.patient_messages_delivered},
            "messages_clinician_to_patient": {"sent": self.clinician_messages,
                                              "delivered": self.clinician_messages_delivered},
            "wait_to_first_answer_s": {"p50": pct(0.5), "p90": pct(0.9), "max": pct(1.0),
                                       "unanswered": self.patients - len(waits)},
            "erasures_by_reason": dict(sorted(self.erasures.items())),
            "departures_by_reason": dict(sorted(self.departures.items())),
            "faults": {"refreshes": self.refreshes, "drops": self.drops, "stalls": self.stalls},
            "server_closes_by_code": dict(sorted(self.server_closes.items())),
            "connections": {"opened": self.connections, "welcomed": self.welcomed,
                            "hello_refused": dict(sorted(self.hello_refused.items()))},
            "violations_by_rule": dict(sorted(self.violations.items())),
            "exercised": {rule: self.exercised.get(rule, 0) for rule in CONTRACT_RULES},
            "liveness": self.liveness(),
            "notes_by_rule": dict(sorted(self.notes_by_rule.items())),
            "notes": [{"rule": n.rule, "message": n.message, "room": n.room, "agent": n.agent,
                       "lines": n.lines}
                      for n in sorted(self.notes, key=_by_line)[:MAX_NOTES_SHOWN]],
            "records": self.records,
            "duration_ms": self.duration_ms,
            "complete": self.complete,
        }


class Checker:
    """Feed it a history's records in order (:meth:`feed`), then :meth:`finish`."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self.seed = header.get("seed")
        self.heal_ms = _number(header.get("heal_ms"))
        self.end_ms = _number(header.get("end_ms"))
        pace = header.get("pace")
        self.pace: dict[str, Any] | None = pace if isinstance(pace, dict) else None
        self.violations: list[Violation] = []
        self.notes: list[Violation] = []
        self.summary = Summary()
        self._conns: dict[tuple[str, int], _Conn] = {}
        self._patients_by_id: dict[tuple[str, str], _Patient] = {}
        self._patients: list[_Patient] = []
        self._consoles: list[_Console] = []
        self._clinicians: dict[str, _ClinicianAgent] = {}
        self._ended = False
        self._incomplete: str | None = None
        self._refresh_erases = False  # the server has said (erased{refresh}) that a refresh erases
        self._last_t = 0.0

    # ---------------------------------------------------------------- reporting

    def violation(self, rule: str, message: str, conn: _Conn | None, extra: Iterable[int] = ()) -> None:
        lines = sorted(set(conn.lines if conn is not None else ()) | set(extra))
        self.violations.append(Violation(rule, message, lines, conn.room if conn else None,
                                         conn.agent if conn else None))
        self.summary.violations[rule] = self.summary.violations.get(rule, 0) + 1

    def note(self, rule: str, message: str, conn: _Conn | None, extra: Iterable[int] = ()) -> None:
        """Something the protocol leaves open, or that follows from a violation already reported: kept and
        counted, never a violation."""
        summary = self.summary
        summary.notes_by_rule[rule] = summary.notes_by_rule.get(rule, 0) + 1
        if len(summary.notes) < MAX_NOTES_KEPT:
            lines = sorted(set(conn.lines if conn is not None else ()) | set(extra))
            note = Violation(rule, message, lines, conn.room if conn else None, conn.agent if conn else None)
            summary.notes.append(note)
            self.notes.append(note)

    def exercise(self, rule: str) -> None:
        """The run did something that puts ``rule`` to the test, and the checker judged it."""
        exercised = self.summary.exercised
        exercised[rule] = exercised.get(rule, 0) + 1

    # ---------------------------------------------------------------- input

    def feed(self, number: int, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        t = _number(record.get("t"))
        self._last_t = t
        if kind == "end":
            self._ended = True
            incomplete = record.get("incomplete")
            if isinstance(incomplete, str) and incomplete:
                self._incomplete = incomplete
            return
        self.summary.records += 1
        agent = record.get("agent")
        conn_no = record.get("conn")
        if not isinstance(agent, str) or not isinstance(conn_no, int):
            return
        stamp: Stamp = (t, f"{agent}/{conn_no}", number)
        if kind == "connect":
            self._connect(agent, conn_no, record, stamp)
            return
        conn = self._conns.get((agent, conn_no))
        if conn is None:
            return
        conn.lines.append(number)
        if kind == "frame":
            frame = record.get("frame")
            if not isinstance(frame, dict):
                return
            if record.get("dir") == "out":
                self._sent(conn, frame, stamp)
            elif isinstance(conn, _Console):
                self._console_frame(conn, frame, stamp)
            elif isinstance(conn, _Patient):
                self._patient_in(conn, frame, stamp)
        elif kind == "close":
            if isinstance(conn, _Console):
                self._flush_early(conn)
            self._closed(conn, record, stamp)
        elif kind == "action":
            self._action(conn, record, stamp)

    def _connect(self, agent: str, number: int, record: dict[str, Any], stamp: Stamp) -> None:
        self.summary.connections += 1
        room = str(record.get("room"))
        conn: _Conn
        if record.get("role") == "clinician":
            console = _Console(agent, number, room)
            self._clinicians.setdefault(agent, _ClinicianAgent()).consoles.append(console)
            self._consoles.append(console)
            conn = console
        else:
            patient = _Patient(agent, number, room)
            self._patients.append(patient)
            conn = patient
        conn.lines.append(stamp[2])
        self._conns[conn.key] = conn

    def _action(self, conn: _Conn, record: dict[str, Any], stamp: Stamp) -> None:
        action = record.get("action")
        if action in ("drop", "close", "stall", "refresh"):
            if conn.end_stamp is None and action in ("drop", "close"):
                conn.end_stamp = stamp
            if isinstance(conn, _Console) and conn.disturbed is None:
                conn.disturbed = stamp[0]
            if isinstance(conn, _Patient) and action in ("drop", "close"):
                conn.client_ended = True
                if conn.departed_by is None:
                    conn.departed_by = stamp
        if action == "refresh":
            self.summary.refreshes += 1
            if isinstance(conn, _Console) and record.get("style") == "new_tab":
                conn.replacing = stamp
                if conn.replaced_by is None:
                    conn.replaced_by = stamp
        elif action == "drop":
            self.summary.drops += 1
        elif action == "stall":
            self.summary.stalls += 1
            self.exercise("R42")  # a connection stops reading; everyone else's delivery must go on

    def _closed(self, conn: _Conn, record: dict[str, Any], stamp: Stamp) -> None:
        code = _int(record.get("code"))
        by = str(record.get("by"))
        conn.close = (code, by)
        conn.closed_stamp = stamp
        if conn.end_stamp is None:
            conn.end_stamp = stamp
        if by == "server":
            self.summary.server_closes[str(code)] = self.summary.server_closes.get(str(code), 0) + 1
            if code == 1001:
                self.exercise("R46")
        if conn.refused is not None:
            want = 1013 if conn.refused == "capacity" else 1008
            if by == "server" and code != want:
                rule = "R44" if conn.refused == "capacity" else "WIRE"
                self.violation(rule, f"after the hello was refused with {conn.refused!r} the server closed "
                               f"with {code}, not {want}", conn)
        if isinstance(conn, _Console):
            if conn.disturbed is None:
                conn.disturbed = stamp[0]
            conn.expect.clear()
            for request in conn.pending:
                if request.type in ("set_notifications", "set_room"):
                    conn.unsure_settings = True
                if request.type == "set_room":
                    conn.set_room_windows.append((request.stamp[0], float("inf"), None))
                elif request.type in ("start_call", "end_call"):
                    conn.call_windows.append((request.stamp[0], float("inf"), None))
            if code == 4000 and conn.replaced_by is None and conn.replacing is None:
                self.violation("R12", "closed with 4000 (replaced) although this clinician opened no newer "
                               "connection", conn)
        elif isinstance(conn, _Patient):
            if conn.departed_by is None:
                conn.departed_by = stamp
            if conn.call_ended is not None and code not in (1000, 1006):
                self.violation("R20", f"after call ended the server closed with {code}, not 1000", conn)
            if conn.leave_ok is not None and code not in (1000, 1006):
                self.violation("R9", f"after leave's ok the server closed with {code}, not 1000", conn)
            for request in conn.pending:
                if request.type == "send":
                    conn.unanswered_sends += 1
        for request in conn.pending:
            if isinstance(conn, _Console) and request.type == "send":
                patient = str(request.frame.get("patient"))
                conn.unanswered_sends[patient] = conn.unanswered_sends.get(patient, 0) + 1
        conn.pending.clear()

    # ---------------------------------------------------------------- requests

    def _sent(self, conn: _Conn, frame: dict[str, Any], stamp: Stamp) -> None:
        kind = str(frame.get("type"))
        ref = frame.get("ref")
        if kind == "hello":
            if isinstance(conn, _Console):
                conn.hello = stamp
                agent = self._clinicians[conn.agent]
                for older in agent.consoles:
                    if older is not conn and older.closed_stamp is None and (
                            older.end_stamp is None or older.replacing is not None):
                        if older.replaced_by is None:
                            older.replaced_by = stamp
                        if older.end_stamp is None:
                            older.end_stamp = stamp
                        if older.disturbed is None:
                            older.disturbed = stamp[0]
            return
        request = Request(ref if isinstance(ref, str) else None, kind, frame, stamp)
        if isinstance(conn, _Console) and kind == "send":
            request.position_bound = self._position_bound(conn, str(frame.get("patient")))
        conn.pending.append(request)
        if isinstance(conn, _Patient):
            if kind == "leave":
                conn.leave_sent = stamp
                if conn.departed_by is None:
                    conn.departed_by = stamp
            elif kind == "send":
                conn.send_requests += 1

    @staticmethod
    def _position_bound(conn: _Console, patient: str) -> int | None:
        """1 + the waiting patients this console shows ahead of ``patient``: the server's count can only
        be lower (a departure or call start on its way to the console), never higher (nobody joins
        ahead). None when the console does not show the patient waiting."""
        entry = conn.present.get(patient)
        if entry is None or entry[0] != "waiting" or conn.call == patient:
            return None
        ahead = 0
        for other, (state, _) in conn.present.items():
            if other == patient:
                return ahead + 1
            if state == "waiting" and other != conn.call:
                ahead += 1
        return None

    def _pop_answer(self, conn: _Conn, frame: dict[str, Any]) -> Request | None:
        if not conn.pending:
            self.violation("WIRE", f"an answer with no request waiting: {_describe(frame)}", conn)
            return None
        request = conn.pending.popleft()
        if request.ref is not None and frame.get("ref") != request.ref:
            self.violation("WIRE", f"answer {_describe(frame)} does not carry the ref {request.ref!r} of the "
                           f"oldest unanswered request ({request.type}); answers must come in order with "
                           "their ref", conn)
        return request

    def _hello_refused(self, conn: _Conn, frame: dict[str, Any]) -> None:
        """The server answered the hello with an error: not a violation by itself (a wrong secret, a full
        room); counted, so that a run that could not start says why."""
        code = str(frame.get("code"))
        conn.refused = code
        refused = self.summary.hello_refused
        refused[code] = refused.get(code, 0) + 1
        if code == "capacity":
            self.exercise("R44")
        elif code in ("invalid", "bad_frame", "unknown_type", "forbidden"):
            self.note("WIRE", f"the server refused this hello with {code!r}", conn)

    def _limit(self, room: str, name: str, default: int | None) -> int | None:
        """A limit in force: from the room's latest console welcome, else the history's header."""
        for console in reversed(self._consoles):
            if console.room == room and console.limits is not None and name in console.limits:
                value = console.limits[name]
                return value if isinstance(value, int) and not isinstance(value, bool) else None
        limits = self.header.get("limits")
        if isinstance(limits, dict) and name in limits:
            value = limits[name]
            return value if isinstance(value, int) and not isinstance(value, bool) else None
        return default

    def _text_check(self, conn: _Conn, request: Request, code: Any) -> bool:
        """R41 on a send's answer; True when the answer was a ``too_large`` refusal (handled here)."""
        length = request.frame.get("text")
        if not isinstance(length, int) or isinstance(length, bool):
            return False
        limit = self._limit(conn.room, "max_text_chars", 4096)
        over = limit is not None and length > limit
        if code == "too_large":
            self.exercise("R41")
            if not over:
                self.violation("R41", f"a text of {length} characters was refused as too_large; the limit is "
                               f"{limit}", conn)
            return True
        if over:
            self.exercise("R41")
            if code is None:
                self.violation("R41", f"a text of {length} characters was accepted; the limit is {limit} "
                               "(longer answers too_large)", conn)
        return False

    # ---------------------------------------------------------------- patients

    def _patient_in(self, conn: _Patient, frame: dict[str, Any], stamp: Stamp) -> None:
        kind = frame.get("type")
        if conn.welcome is None and kind == "error" and not conn.pending:
            self._hello_refused(conn, frame)
            return
        if conn.expect_on_call and kind not in ("provider_status", "call"):
            conn.expect_on_call = False
            self.violation("R30", f"after call{{started}} expected provider_status{{on_call}}, got "
                           f"{_describe(frame)}", conn)
        if kind == "welcome":
            self.summary.welcomed += 1
            conn.id = str(frame.get("patient"))
            conn.welcome = stamp
            conn.status = str(frame.get("provider_status"))
            conn.setting = bool(frame.get("patient_initiated_chat"))
            conn.state = "waiting"
            conn.position = _int(frame.get("position"))
            self.summary.patients += 1
            if conn.position < 1:
                self.violation("R30", f"welcome position {conn.position} is not a place in the queue", conn)
            self._patients_by_id[(conn.room, conn.id)] = conn
        elif kind in ("ok", "error"):
            request = self._pop_answer(conn, frame)
            if request is None:
                return
            conn.answers.append((request.stamp, stamp, conn.status, conn.setting))
            code = frame.get("code") if kind == "error" else None
            if code == "rate_limited":
                self.exercise("R43")
            if request.type == "send":
                disabled = conn.state == "waiting" and not conn.setting and not conn.wrote
                if disabled or code == "chat_disabled":
                    self.exercise("R31")
                if self._text_check(conn, request, code):
                    if kind == "error":
                        conn.errors += 1
                    return
                if kind == "ok":
                    self.exercise("R1")
                    message_id = _int(frame.get("id"))
                    if disabled:
                        self.violation("R31", "a waiting patient's send was accepted while patient-initiated "
                                       "chat is off and the clinician had not written first", conn)
                    if message_id <= conn.last_id:
                        self.violation("R1", f"message id {message_id} is not above the conversation's "
                                       f"last id {conn.last_id}", conn)
                    conn.last_id = max(conn.last_id, message_id)
                    text = request.frame.get("text")
                    conn.sends[message_id] = _Sent(text if isinstance(text, int) else -1,
                                                   request.frame.get("client_ts"), _int(frame.get("ts")),
                                                   request.stamp, stamp)
                    self.summary.patient_messages += 1
                else:
                    conn.errors += 1
                    if code == "chat_disabled":
                        if not disabled:
                            self.violation("R31", f"send refused with chat_disabled while allowed (state "
                                           f"{conn.state}, setting {conn.setting}, clinician wrote "
                                           f"{conn.wrote})", conn)
                    elif code != "rate_limited":
                        self.violation("R1", f"a patient's send was refused with {code!r}", conn)
            elif request.type == "leave":
                if kind == "ok":
                    self.exercise("R9")
                    conn.leave_ok = stamp
                    conn.state = "departed"
                elif frame.get("code") != "rate_limited":
                    self.violation("R9", f"leave answered {frame.get('code')!r}", conn)
            elif kind == "error" and code != "rate_limited":
                self.violation("WIRE", f"{request.type} answered {code!r}", conn)
        elif kind == "message":
            if frame.get("from") != "clinician" or frame.get("patient") != conn.id:
                self.violation("R1", "a patient received a message that is not the clinician's to them "
                               f"(from {frame.get('from')!r}, conversation {frame.get('patient')!r})", conn)
                return
            message_id = _int(frame.get("id"))
            if message_id <= conn.last_id:
                self.violation("R1", f"message id {message_id} delivered after id {conn.last_id} (lost order "
                               "or duplicate)", conn)
            conn.last_id = max(conn.last_id, message_id)
            text = frame.get("text")
            conn.got[message_id] = (text if isinstance(text, int) else -1, frame.get("client_ts"),
                                    _int(frame.get("ts")), stamp)
            if conn.state == "waiting":
                conn.position_at[message_id] = conn.position
            conn.wrote = True
            self.exercise("R1")
            if conn.status == "away":
                self.violation("R30", "a clinician's message arrived while the patient was shown "
                               "provider status 'away'", conn)
        elif kind == "call":
            self.exercise("R20")
            if frame.get("state") == "started":
                if conn.state != "waiting":
                    self.violation("R20", f"call started for a patient in state {conn.state}", conn)
                conn.state = "in_call"
                conn.call_started = stamp
                conn.expect_on_call = conn.status != "on_call"
            else:
                conn.state = "departed"
                conn.call_ended = stamp
        elif kind == "provider_status":
            self.exercise("R30")
            status = str(frame.get("status"))
            if status not in ("online", "on_call", "away"):
                self.violation("R30", f"provider_status {status!r} is not online, on_call or away", conn)
            if conn.expect_on_call:
                conn.expect_on_call = False
                if status != "on_call":
                    self.violation("R30", f"after call{{started}} the status went to {status!r}, not on_call",
                                   conn)
            conn.status = status
        elif kind == "position":
            self.exercise("R30")
            position = _int(frame.get("position"))
            if conn.state != "waiting":
                self.violation("R30", f"position pushed to a patient in state {conn.state}", conn)
            elif not 1 <= position < conn.position:
                self.violation("R30", f"position went from {conn.position} to {position}: a waiting patient "
                               "only moves up", conn)
            conn.position = position
        elif kind == "room_settings":
            self.exercise("R31")
            conn.setting = bool(frame.get("patient_initiated_chat"))
        elif kind in CLINICIAN_ONLY:
            self.violation("PRIVACY", f"a patient received a clinician-only frame {kind!r}", conn)
        else:
            self.note("WIRE", f"a patient received a frame the contract does not define: {kind!r}", conn)

    # ---------------------------------------------------------------- consoles

    def _console_frame(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> None:
        """A frame to a console: a refused hello, a replaced console's extra frames, or the replica's turn."""
        kind = frame.get("type")
        if conn.welcome is None and kind == "error" and not conn.pending:
            self._hello_refused(conn, frame)
            return
        if self._refresh_extra(conn, frame):
            return
        self._console_in(conn, frame, stamp)

    def _refresh_extra(self, conn: _Console, frame: dict[str, Any]) -> bool:
        """R12 lets a replaced console receive erased{refresh} before its 4000 close and says nothing of
        other frames then: a closed box or a zeroed badge that agrees with the refresh is a note."""
        if not (conn.refresh_seen or conn.replaced_by is not None):
            return False
        kind = frame.get("type")
        agrees = (kind == "chat_box" and frame.get("state") == "closed" and frame.get("patient") is None) or (
            kind == "unread" and frame.get("count") == 0)
        if not agrees or (conn.expect and _matches(frame, conn.expect[0][0])):
            return False
        self.note("R12", f"{_describe(frame)} to a console being replaced (its clinician said hello again; "
                  "before its 4000 close): the contract allows erased{refresh} there and is silent on other "
                  "frames", conn)
        return True

    def _consume(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> bool:
        """``frame`` is one of the frames due: the next, or (frame order broken) a later one."""
        expect = conn.expect
        for index, (spec, _, _) in enumerate(expect):
            if not _matches(frame, spec):
                continue
            if id(spec) in conn.passed:
                self._order(conn, f"{_describe(frame)} came after a frame of the same cause that belongs "
                            "after it")
            items = list(expect)
            if frame.get("type") == "notify":
                for skipped in items[:index]:
                    badge = skipped[0]
                    if badge.get("type") == "unread" and badge.get("patient") == frame.get("patient"):
                        # Not shown (the notify says so), and yet no badge: R3 itself.
                        self.violation("R3", f"expected {_describe(skipped[0])} ({skipped[2]}); the message "
                                       f"was not shown (its notify came) but the badge did not go up", conn)
                        conn.badge_unknown.add(str(frame.get("patient")))
                        items.remove(skipped)
                        index -= 1
            # the frames it overtook: optional ones go, the others are still due (later: "order")
            kept = [item for item in items[:index] if not item[0].get(OPTIONAL)]
            if any(item[0].get(OPTIONAL) and item[0].get("type") == "chat_box" and conn.group is not None
                   for item in items[:index]):
                self._box_moved(conn)
            conn.passed.update(id(item[0]) for item in kept)
            expect.clear()
            expect.extend(kept + items[index + 1:])
            conn.consumed += 1
            if spec.get("type") == "error":
                self._flush_early(conn)  # the request was refused: it caused none of them
            self._apply(conn, frame, stamp)
            if not expect:
                conn.passed.clear()
            return True
        return False

    def _order(self, conn: _Console, what: str) -> None:
        if conn.order_reported:
            return
        conn.order_reported = True
        self.violation("order", f"{what}; the frames of one cause come in the order "
                       f"{', '.join(FRAME_ORDER)}, then the request's answer", conn)

    def _console_in(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> None:
        kind = frame.get("type")
        if conn.expect:
            if self._consume(conn, frame, stamp):
                return
            spec, rule, why = conn.expect[0]
            if (conn.group is not None and conn.consumed == 0 and kind == "error"
                    and frame.get("code") == "rate_limited" and frame.get("ref") == conn.group.ref):
                self.exercise("R43")
                conn.expect.clear()
                conn.passed.clear()
                self._apply(conn, frame, stamp)
                return
            while conn.expect and conn.expect[0][0].get(OPTIONAL):
                dropped = conn.expect.popleft()[0]
                if dropped.get("type") == "chat_box" and conn.group is not None:
                    self._box_moved(conn)  # the request changed nothing the replica thought it would
            if not conn.expect:
                conn.passed.clear()
                self._console_in(conn, frame, stamp)
                return
            spec, rule, why = conn.expect[0]
            overtaken = id(spec) in conn.passed
            request_began = (conn.group is None and bool(conn.pending) and kind not in ("ok", "error")
                             and self._starts_group(conn, frame))
            if overtaken or request_began or self._is_cause(conn, frame) or kind in ("ok", "error"):
                # The next cause began (or an answer came) while frames of the last one were still due.
                if overtaken:
                    message = (f"expected {_describe(spec)} ({why}) before the request's answer; it never "
                               f"came (next: {_describe(frame)})")
                else:
                    # The frame is the next cause's own: it says nothing of what the missing one did.
                    named = self._attribute(conn, spec, rule, {"type": "next"} if request_began else frame)
                    message = f"expected {_describe(spec)} ({why}), got {_describe(frame)}"
                    rule, box_rule = named, rule
                self.violation(rule, message, conn)
                if not overtaken and rule == "R3" and box_rule in ("R7", "R8"):
                    conn.suspects.append((self.violations[-1], box_rule))
                self._lose_track(conn, spec, rule, {})
                conn.expect.clear()
                conn.passed.clear()
                if spec.get("type") == "error" and kind == "ok" and conn.early:
                    # Accepted where it should have been refused: the frames before its ok are its
                    # effects, part of the violation just reported, not more of them.
                    for early, when in conn.early:
                        self._apply(conn, early, when)
                    conn.early = []
                    conn.box_unknown = True
                self._flush_early(conn)
                if kind in ("ok", "error") and conn.group is not None:
                    self._apply(conn, frame, stamp)
                    return
                self._console_in(conn, frame, stamp)
                return
            rule = self._attribute(conn, spec, rule, frame)
            self.violation(rule, f"expected {_describe(spec)} ({why}), got {_describe(frame)}", conn)
            self._lose_track(conn, spec, rule, frame)
            conn.expect.clear()
            conn.passed.clear()
            conn.lenient = "request" if conn.group is not None else "message"
            self._apply(conn, frame, stamp)
            if frame.get("type") == "chat_box":
                conn.box_unknown = False
            return
        if conn.lenient == "message":
            if kind in ("chat_box", "unread", "notify"):
                self._apply(conn, frame, stamp)
                return
            conn.lenient = None
        conn.order_reported = False
        if kind == "message":
            self._patient_message(conn, frame, stamp)
            self._claim_early(conn, "the patient's message that caused it")
        elif kind == "patient_joined":
            self._flush_early(conn)
            patient = str(frame.get("patient"))
            if patient in conn.present:
                self.violation("R1", f"patient_joined for {patient}, already in the queue", conn)
            conn.present[patient] = ["waiting", 0]
        elif kind == "patient_left" and not (frame.get("reason") == "call_ended" and conn.pending):
            self._patient_left(conn, frame, stamp)
            self._claim_early(conn, "the patient_left that caused it")
        elif kind == "erased" and frame.get("reason") == "refresh":
            self._flush_early(conn)
            self.exercise("R12")
            conn.refresh_seen = True
            self._refresh_erases = True
            patient = str(frame.get("patient"))
            said = self._clinicians[conn.agent].erased_said
            said[patient] = max(said.get(patient, 0), conn.last_id.get(patient, 0))
            self.summary.erasures["refresh"] = self.summary.erasures.get("refresh", 0) + 1
            if conn.replaced_by is None and conn.replacing is None:
                self.violation("R12", "erased{refresh} on a connection that was not replaced", conn)
            elif patient not in conn.present and patient != conn.box_patient:
                self.note("R12", f"erased{{refresh}} for {patient}, not in this console's queue or box "
                          "(a conversation this console never showed)", conn)
        elif kind == "welcome":
            self.summary.welcomed += 1
            self._welcome(conn, frame, stamp)
        elif conn.lenient == "request":
            self._apply(conn, frame, stamp)
        elif conn.pending and self._starts_group(conn, frame):
            request = conn.pending[0]
            conn.group = request
            conn.consumed = 0
            conn.passed.clear()
            due = self._soften(conn, self._expected(conn, request))
            conn.expect.extend(due)
            if conn.early and all(spec.get("type") == "error" for spec, _, _ in due):
                pass  # a refusal causes nothing: the answer says whether these came with a wrong acceptance
            elif self._claim_early(conn, f"the {request.type} request that caused it"):
                # An unexplained frame told the replica something new: what the request causes now.
                conn.expect.clear()
                conn.expect.extend(self._soften(conn, self._expected(conn, request, judge=False)))
            self._console_in(conn, frame, stamp)
        elif kind in ("ok", "error"):
            self._flush_early(conn)
            self._apply(conn, frame, stamp)  # an answer with no request waiting (reported there)
        else:
            conn.early.append((frame, stamp))

    @staticmethod
    def _soften(conn: _Console, items: list[tuple[dict[str, Any], str, str]]
                ) -> list[tuple[dict[str, Any], str, str]]:
        """A request's due frames, with those about a box or badge the replica lost track of optional."""
        if not conn.box_unknown and not conn.badge_unknown:
            return items
        out = []
        for spec, rule, why in items:
            kind = spec.get("type")
            if conn.box_unknown and kind == "chat_box":
                if spec.get("reason") == "patient_left":
                    out.append((_optional({"type": "erased", "patient": spec.get("patient"),
                                           "reason": "not_in_view"}), "R11", "erased, perhaps"))
                spec = _optional(spec, "state", "patient", "patient_present")
            elif conn.box_unknown and kind == "erased":
                if spec.get("reason") == "not_in_view":
                    out.append((_optional({"type": "chat_box", "patient": spec.get("patient"),
                                           "reason": "patient_left"}), "R9", "the box, perhaps"))
                spec = _optional(spec)
            elif kind == "unread" and spec.get("patient") in conn.badge_unknown:
                spec = _optional(spec, "count")
            out.append((spec, rule, why))
        return out

    def _lose_track(self, conn: _Console, spec: dict[str, Any], rule: str, frame: dict[str, Any]) -> None:
        """After a violation: what of the server's console state the replica no longer knows."""
        if spec.get("type") == "chat_box" or rule in ("R4", "R5", "R6", "R7", "R8", "R11") or (
                spec.get("type") == "unread" and spec.get("count") != 0):
            conn.box_unknown = True  # a badge that did not go up: perhaps the box showed the message
        if spec.get("type") == "unread":
            conn.badge_unknown.add(str(spec.get("patient")))
        if frame.get("type") == "chat_box":
            conn.box_unknown = False

    def _is_cause(self, conn: _Console, frame: dict[str, Any]) -> bool:
        """A frame that begins a new cause's frames on a console (not an effect of one)."""
        kind = frame.get("type")
        return (kind == "message" or kind == "patient_joined" or kind == "welcome"
                or (kind == "patient_left" and frame.get("reason") != "call_ended")
                or (kind == "erased" and frame.get("reason") == "refresh"))

    def _starts_group(self, conn: _Console, frame: dict[str, Any]) -> bool:
        """The oldest unanswered request explains ``frame``: its answer, or one of its effects."""
        if frame.get("type") in ("ok", "error"):
            return True
        due = self._soften(conn, self._expected(conn, conn.pending[0], judge=False))
        return any(_matches(frame, spec) for spec, _, _ in due)

    def _claim_early(self, conn: _Console, cause: str) -> bool:
        """Frames that came before their cause (now known): each is an effect of it sent out of order, or
        has no cause at all (True when there was such a frame)."""
        if not conn.early:
            return False
        early, conn.early = conn.early, []
        uncaused = False
        for frame, stamp in early:
            index = next((i for i, (spec, _, _) in enumerate(conn.expect) if _matches(frame, spec)), None)
            if index is None:
                self._uncaused(conn, frame, stamp)
                uncaused = True
                continue
            del conn.expect[index]
            self._order(conn, f"{_describe(frame)} was sent before {cause}")
            self._apply(conn, frame, stamp)
        return uncaused

    def _flush_early(self, conn: _Console) -> None:
        early, conn.early = conn.early, []
        for frame, stamp in early:
            self._uncaused(conn, frame, stamp)

    def _box_moved(self, conn: _Console) -> None:
        """Evidence that the server's box was not where the replica had it: the badges that did not go up
        were messages the moved box showed (R7/R8), not a badge rule of their own (R3)."""
        summary = self.summary.violations
        for violation, box_rule in conn.suspects:
            summary[violation.rule] -= 1
            if not summary[violation.rule]:
                del summary[violation.rule]
            violation.rule = box_rule
            violation.message += " (the box had moved: the server showed the message)"
            summary[box_rule] = summary.get(box_rule, 0) + 1
        conn.suspects.clear()

    def _uncaused(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> None:
        """A frame that no request or event explains: named by the rule a clinician would recognise."""
        kind = frame.get("type")
        if kind == "chat_box":
            self._box_moved(conn)
        rule = "WIRE"
        if kind == "chat_box":
            patient = frame.get("patient")
            if conn.box_state == "closed" and frame.get("state") != "closed":
                rule = "R7"
            elif patient != conn.box_patient and frame.get("state") != "closed":
                rule = "R8"
            elif conn.box_state == "minimized" and frame.get("state") == "open":
                rule = "R6"
            else:
                rule = "R5"
        elif kind == "unread":
            rule = "R3"
        elif kind == "notify":
            rule = "R10"
        elif kind == "erased":
            rule = "R11"
        elif kind == "patient_left":
            rule = "R20" if frame.get("reason") == "call_ended" else "R9"
        self.violation(rule, f"{_describe(frame)} with no request or event to cause it", conn)
        self._apply(conn, frame, stamp)

    def _attribute(self, conn: _Console, spec: dict[str, Any], rule: str, frame: dict[str, Any]) -> str:
        """Name the rule a mismatch breaks: a chat box that moved on its own is R8 (or R7 when closed); a
        badge that did not go up, while notifications are off (no notify to tell the box's story), R3."""
        if (spec.get("type") == "unread" and frame.get("type") != "chat_box" and not conn.notifications
                and spec.get("count") != 0):
            return "R3"
        moved = spec.get("type") != "chat_box" or frame.get("patient") != spec.get("patient")
        if frame.get("type") == "chat_box" and conn.group is None and moved:
            if conn.box_state == "closed":
                return "R7"
            if frame.get("patient") != conn.box_patient:
                return "R8"
            return "R6" if conn.box_state == "minimized" else "R8"
        if frame.get("type") == "error" and frame.get("code") == "too_large":
            return "R41"
        if spec.get("type") == "chat_box":
            return rule  # the box change that was due is missing
        if frame.get("type") == "notify" and spec.get("type") != "notify":
            return "R10"
        if frame.get("type") == "unread" and spec.get("type") != "unread":
            return "R3"
        if (frame.get("type") == "unread" and spec.get("type") == "unread"
                and frame.get("patient") == spec.get("patient")):
            return "R3"  # the badge moved, by the wrong amount
        return rule

    def _apply(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> None:
        """Follow the server: the console's state after ``frame`` (checked or not)."""
        kind = frame.get("type")
        if kind == "chat_box":
            conn.box_unknown = False
            conn.box_state = str(frame.get("state"))
            conn.box_patient = frame.get("patient")
            conn.box_present = bool(frame.get("patient_present"))
        elif kind == "unread":
            conn.badge_unknown.discard(str(frame.get("patient")))
            entry = conn.present.get(str(frame.get("patient")))
            if entry is not None:
                entry[1] = _int(frame.get("count"))
        elif kind == "erased":
            patient = str(frame.get("patient"))
            reason = str(frame.get("reason"))
            self.summary.erasures[reason] = self.summary.erasures.get(reason, 0) + 1
            conn.erased_upto[patient] = max(conn.erased_upto.get(patient, 0), conn.last_id.get(patient, 0))
            said = self._clinicians[conn.agent].erased_said
            said[patient] = max(said.get(patient, 0), conn.last_id.get(patient, 0))
            if patient not in conn.present:
                conn.erased_departed.add(patient)
        elif kind == "patient_left":
            patient = str(frame.get("patient"))
            reason = str(frame.get("reason"))
            self.summary.departures[reason] = self.summary.departures.get(reason, 0) + 1
            conn.present.pop(patient, None)
            conn.left[patient] = (reason, stamp)
            self._clinicians[conn.agent].known_departed.add(patient)
            if conn.call == patient:
                conn.call = None
                if reason != "call_ended":
                    conn.call_departures.append((patient, stamp[0]))
            if conn.box_patient == patient:
                conn.box_present = False
        elif kind in ("ok", "error"):
            self._answer(conn, frame, stamp)

    def _answer(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> None:
        request = self._pop_answer(conn, frame)
        conn.group = None
        conn.lenient = None
        if request is None:
            return
        kind = frame.get("type")
        code = frame.get("code")
        if code == "rate_limited":
            self.exercise("R43")
        elif code in ("bad_frame", "unknown_type", "forbidden", "invalid") or (
                code == "not_found" and request.type in ("send", "start_call")):
            self.exercise("R40")
        if request.type == "send" and code == "too_large":
            self.exercise("R41")
            return
        if kind != "ok":
            return
        rtype = request.type
        sent = request.frame
        if rtype == "send":
            if str(sent.get("patient")) not in conn.present:
                return  # a send to someone gone, accepted: reported against R9 where it was answered
            self.exercise("R1")
            conn.chats.add(str(sent.get("patient")))
            if sum(1 for p in conn.chats if p in conn.present) >= 2:
                self.exercise("R2")
            patient = str(sent.get("patient"))
            message_id = _int(frame.get("id"))
            if message_id <= conn.last_id.get(patient, 0):
                self.violation("R1", f"message id {message_id} for {patient} is not above the last id "
                               f"{conn.last_id.get(patient, 0)} this console saw", conn)
            conn.last_id[patient] = max(conn.last_id.get(patient, 0), message_id)
            conn.seen_ids.setdefault(patient, []).append(message_id)
            text = sent.get("text")
            conn.sent_ok[(patient, message_id)] = _Sent(text if isinstance(text, int) else -1,
                                                        sent.get("client_ts"), _int(frame.get("ts")),
                                                        request.stamp, stamp)
            if request.position_bound is not None:
                conn.position_bounds[(patient, message_id)] = request.position_bound
            self.summary.clinician_messages += 1
        elif rtype == "open_chat":
            self.exercise("R4")
            self._check_open_chat(conn, str(sent.get("patient")), frame)
        elif rtype == "set_notifications":
            self.exercise("R10")
            conn.notifications = bool(sent.get("chat"))
        elif rtype == "set_room":
            self.exercise("R31")
            conn.patient_chat = bool(sent.get("patient_initiated_chat"))
            conn.set_room_windows.append((request.stamp[0], stamp[0], conn.patient_chat))
        elif rtype == "start_call":
            self.exercise("R20")
            patient = str(sent.get("patient"))
            conn.call = patient
            if patient in conn.present:
                conn.present[patient][0] = "in_call"
            conn.call_windows.append((request.stamp[0], stamp[0], True))
            conn.calls_started.append((patient, stamp))
        elif rtype == "end_call":
            self.exercise("R20")
            conn.call_windows.append((request.stamp[0], stamp[0], False))

    def _check_open_chat(self, conn: _Console, patient: str, frame: dict[str, Any]) -> None:
        messages = frame.get("messages")
        ids: list[int] = []
        if isinstance(messages, dict):  # the history's summary: id ranges
            if any(p != patient for p in messages.get("patients", [])):
                self.violation("R4", f"open_chat on {patient} returned another conversation's message", conn)
                return
            for first, last in messages.get("ids", []):
                if not isinstance(first, int) or not isinstance(last, int):
                    self.violation("R4", "open_chat returned a message without an integer id", conn)
                    return
                ids.extend(range(first, last + 1))
        elif isinstance(messages, list):  # a history that kept every message
            for message in messages:
                if not isinstance(message, dict) or message.get("patient") != patient:
                    self.violation("R4", f"open_chat on {patient} returned a message of another conversation",
                                   conn)
                    return
                ids.append(_int(message.get("id")))
        else:
            self.violation("R4", "open_chat's ok has no messages list", conn)
            return
        if any(b <= a for a, b in itertools.pairwise(ids)):
            self.violation("R4", "open_chat's messages are not in id order", conn)
        agent = self._clinicians[conn.agent]
        by_refresh = agent.seen_max.get(patient, 0)
        said = max(conn.erased_upto.get(patient, 0), agent.erased_said.get(patient, 0))
        erased = max(said, by_refresh)
        if said:
            self.exercise("R13")  # the server said it erased them: nothing of them may come back
        if by_refresh:
            self.exercise("R12")
        readable = [i for i in ids if i <= erased]
        if readable:
            # Erased, as the server itself said (erased{...}), yet returned: the text was kept (R13). Erased
            # only by the refresh, unannounced: the refresh did not erase (R12).
            rule = "R13" if any(i <= said for i in readable) or (self._refresh_erases and any(
                i <= by_refresh for i in readable)) else "R12"
            self.violation(rule, f"open_chat on {patient} returned message ids {readable[:5]} that were "
                           f"erased (everything up to id {erased} was"
                           f"{', by a refresh' if rule == 'R12' else ', as the server said'})", conn)
        returned = set(ids)
        floor = ids[0] if ids and frame.get("truncated") else 0
        seen = conn.seen_ids.get(patient, [])
        missing = [i for i in seen if i > erased and i >= floor and i not in returned]
        if missing:
            self.violation("R4", f"open_chat on {patient} left out message ids {missing[:5]} of its "
                           "conversation", conn)
        if len(ids) > 500:
            self.violation("R4", f"open_chat returned {len(ids)} messages (at most 500)", conn)

    def _note_delivery(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> int:
        """Record a patient's message as delivered to this console (order and duplicates checked)."""
        patient = str(frame.get("patient"))
        message_id = _int(frame.get("id"))
        last = conn.last_id.get(patient, 0)
        if message_id <= last:
            self.violation("R1", f"message id {message_id} from {patient} delivered after id {last} "
                           "(duplicate or out of order)", conn)
        conn.last_id[patient] = max(last, message_id)
        conn.seen_ids.setdefault(patient, []).append(message_id)
        text = frame.get("text")
        key = (patient, message_id)
        if key in conn.delivered:
            self.violation("R1", f"message {message_id} from {patient} delivered twice", conn)
        conn.delivered[key] = (text if isinstance(text, int) else -1, frame.get("client_ts"),
                               _int(frame.get("ts")), stamp)
        return message_id

    def _patient_message(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> None:
        patient = str(frame.get("patient"))
        if frame.get("from") != "patient":
            self.violation("R1", f"the clinician received a message from {frame.get('from')!r}", conn)
            return
        if patient not in conn.present:
            agent = self._clinicians[conn.agent]
            if patient in conn.left or patient in agent.known_departed:
                self.violation("R9", f"a message from {patient} was delivered after that patient departed",
                               conn)
            else:
                self.violation("R1", f"a message from {patient}, who is not in this console's queue", conn)
            conn.lenient = "message"
            return
        message_id = self._note_delivery(conn, frame, stamp)
        self.exercise("R1")
        expect = conn.expect
        if conn.box_unknown:
            # Shown or not, the replica cannot tell: whatever the server sends about it is not judged.
            expect.append((_optional({"type": "chat_box", "reason": "auto_open"}), "R6",
                           "auto-open, perhaps"))
            expect.append((_optional({"type": "unread", "patient": patient}), "R3", "the badge, perhaps"))
            expect.append((_optional({"type": "notify", "patient": patient, "id": message_id}), "R10",
                           "a notification, perhaps"))
            return
        box_state = conn.box_state
        if box_state == "minimized":
            self.exercise("R6")
            expect.append(({"type": "chat_box", "state": "open", "patient": conn.box_patient,
                            "patient_present": conn.box_present, "reason": "auto_open"}, "R6",
                           "a patient wrote while the box was minimized: it opens by itself, on the same "
                           "patient"))
            box_state = "open"
        if not (box_state == "open" and conn.box_patient == patient):
            count = conn.present[patient][1] + 1
            self.exercise("R3")
            if box_state == "closed":
                self.exercise("R7")
                rule, why = "R7", "the box is closed: it stays closed and the badge goes up"
            else:
                self.exercise("R8")
                rule, why = "R8", (f"the box is on {conn.box_patient}: it stays there and the writer's badge "
                                   "goes up")
            unread = {"type": "unread", "patient": patient, "count": count}
            if patient in conn.badge_unknown:
                del unread["count"]  # it goes up, from a count the replica lost
            expect.append((unread, rule, why))
            self.exercise("R10")
            if conn.notifications:
                expect.append(({"type": "notify", "patient": patient, "id": message_id}, "R10",
                               "notifications are on and the message is not shown"))

    def _patient_left(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> None:
        patient = str(frame.get("patient"))
        if patient not in conn.present:
            self.violation("R9", f"patient_left for {patient}, who is not in this console's queue", conn)
            return
        self._apply(conn, frame, stamp)
        self.exercise("R9")
        if frame.get("reason") == "disconnected":
            self.exercise("R45")
        if conn.box_unknown:
            conn.expect.append((_optional({"type": "chat_box", "patient": patient, "reason": "patient_left"}),
                                "R9", "the box, if it shows the patient who left"))
            conn.expect.append((_optional({"type": "erased", "patient": patient, "reason": "not_in_view"}),
                                "R11", "erased, if the box does not show them"))
        elif conn.box_patient == patient:
            conn.expect.append(({"type": "chat_box", "state": conn.box_state, "patient": patient,
                                 "patient_present": False, "reason": "patient_left"}, "R9",
                                "the box shows the patient who left"))
        else:
            self.exercise("R11")
            conn.expect.append(({"type": "erased", "patient": patient, "reason": "not_in_view"}, "R11",
                                "a departed patient not in the chat box is erased at departure"))

    def _expected(self, conn: _Console, request: Request,
                  judge: bool = True) -> list[tuple[dict[str, Any], str, str]]:
        """What the server must send for ``request``, given the console now: effects, then the answer.
        ``judge`` False: only a look (nothing counted as exercised)."""
        mark = self.exercise if judge else _no_mark
        sent = request.frame
        rtype = request.type
        ref = request.ref
        ok: dict[str, Any] = {"type": "ok", "ref": ref}
        out: list[tuple[dict[str, Any], str, str]] = []
        present = conn.present
        held = conn.box_patient if conn.box_patient is not None and conn.box_patient not in present else None
        known_departed = self._clinicians[conn.agent].known_departed

        def error(code: str | tuple[str, ...], rule: str, why: str) -> list[tuple[dict[str, Any], str, str]]:
            return [({"type": "error", "ref": ref, "code": code}, rule, why)]

        def erase_shown(reason: str) -> None:
            assert held is not None
            mark("R11")
            out.append(({"type": "erased", "patient": held, "reason": reason}, "R11",
                        f"the departed patient's conversation in the box is erased ({reason})"))
            out.append(({"type": "chat_box", "state": "closed", "patient": None, "patient_present": False,
                         "reason": "erased"}, "R11", "erasing the conversation the box shows closes the box"))

        if rtype == "ping":
            return [(ok, "WIRE", "ping answers ok")]
        if rtype == "send":
            patient = str(sent.get("patient"))
            length = sent.get("text")
            limit = self._limit(conn.room, "max_text_chars", 4096)
            if isinstance(length, int) and limit is not None and length > limit:
                codes = ("too_large",) if patient in present else ("too_large", "patient_gone", "not_found")
                return error(codes, "R41", f"a text longer than {limit} characters answers too_large")
            if patient in present:
                return [(ok, "R1", "a present patient can be written to")]
            if patient in conn.left or patient in known_departed or patient == held:
                mark("R9")
                return error("patient_gone", "R9", "the patient has departed")
            return error(("not_found", "patient_gone"), "R9", "the patient is not in the queue")
        if rtype == "open_chat":
            patient = str(sent.get("patient"))
            if patient not in present and not (patient == held and patient not in conn.erased_departed):
                rule = "R13" if patient in conn.erased_departed or patient in known_departed else "R4"
                mark(rule)
                return error("not_found", rule, "no conversation is kept for that patient")
            if not (conn.box_patient == patient and conn.box_state == "open"):
                if held is not None and held != patient:
                    erase_shown("viewed_other")
                out.append(({"type": "chat_box", "state": "open", "patient": patient,
                             "patient_present": patient in present, "reason": "open_chat"}, "R4",
                            "open_chat opens the box on that patient"))
                if patient in present and present[patient][1] > 0:
                    out.append(({"type": "unread", "patient": patient, "count": 0}, "R3",
                                "open_chat sets the badge to 0"))
            out.append((ok, "R4", "open_chat answers ok with the conversation"))
            return out
        if rtype == "minimize_chat":
            mark("R5")
            if conn.box_state == "open":
                out.append(({"type": "chat_box", "state": "minimized", "patient": conn.box_patient,
                             "patient_present": conn.box_present, "reason": "minimize_chat"}, "R5",
                            "minimize_chat turns an open box into a minimized one"))
            out.append((ok, "R5", "minimize_chat answers ok"))
            return out
        if rtype == "close_chat":
            mark("R5")
            if conn.box_state != "closed":
                if held is not None:
                    mark("R11")
                    out.append(({"type": "erased", "patient": held, "reason": "chat_closed"}, "R11",
                                "closing the box erases the departed patient's conversation"))
                out.append(({"type": "chat_box", "state": "closed", "patient": None, "patient_present": False,
                             "reason": "close_chat"}, "R5", "close_chat closes the box"))
            out.append((ok, "R5", "close_chat answers ok"))
            return out
        if rtype in ("set_notifications", "set_room"):
            return [(ok, "R10" if rtype == "set_notifications" else "R31", f"{rtype} answers ok")]
        if rtype == "start_call":
            patient = str(sent.get("patient"))
            if patient not in present:
                if patient in conn.left or patient in known_departed or patient == held:
                    return error("patient_gone", "R20", "the patient has departed")
                return error(("not_found", "patient_gone"), "R20", "the patient is not in the queue")
            if conn.call is not None:
                return error("call_in_progress", "R20", "one call at a time")
            if held is not None:
                erase_shown("call_started")
            out.append((ok, "R20", "start_call on a waiting patient answers ok"))
            return out
        if rtype == "end_call":
            if conn.call is None:
                return error("not_in_call", "R20", "there is no call")
            patient = conn.call
            out.append(({"type": "patient_left", "patient": patient, "reason": "call_ended"}, "R20",
                        "end_call departs the patient in the call"))
            if conn.box_patient == patient:
                out.append(({"type": "chat_box", "state": conn.box_state, "patient": patient,
                             "patient_present": False, "reason": "patient_left"}, "R9",
                            "the box shows the patient who left"))
            else:
                out.append(({"type": "erased", "patient": patient, "reason": "not_in_view"}, "R11",
                            "a departed patient not in the chat box is erased at departure"))
            out.append((ok, "R20", "end_call answers ok"))
            return out
        if rtype == "hello":
            return error("forbidden", "WIRE", "a second hello")
        return [({"type": ("ok", "error"), "ref": ref}, "WIRE", "every request is answered")]

    def _welcome(self, conn: _Console, frame: dict[str, Any], stamp: Stamp) -> None:
        conn.welcome = stamp
        agent = self._clinicians[conn.agent]
        previous = [c for c in agent.consoles if c is not conn and c.welcome is not None]
        for older in previous:
            for patient, last in older.last_id.items():
                agent.seen_max[patient] = max(agent.seen_max.get(patient, 0), last)
        queue = frame.get("queue") or []
        conn.present = {str(e.get("patient")): [str(e.get("state")), _int(e.get("unread"))]
                        for e in queue if isinstance(e, dict)}
        box = frame.get("chat_box") or {}
        conn.box_state = str(box.get("state"))
        conn.box_patient = box.get("patient")
        conn.box_present = bool(box.get("patient_present"))
        call = frame.get("call")
        conn.call = str(call.get("patient")) if isinstance(call, dict) else None
        conn.notifications = bool((frame.get("settings") or {}).get("chat_notifications"))
        conn.patient_chat = bool((frame.get("room_settings") or {}).get("patient_initiated_chat"))
        conn.limits = frame.get("limits") if isinstance(frame.get("limits"), dict) else None
        conn.welcome_status = str(frame.get("provider_status"))
        expected_status = "on_call" if conn.call is not None else "online"
        if conn.welcome_status != expected_status:
            self.violation("R30", f"the console's provider_status is {conn.welcome_status!r}, expected "
                           f"{expected_status!r}", conn)
        if conn.box_state != "closed" or conn.box_patient is not None:
            self.violation("R12", f"a new console's chat box is {conn.box_state} on {conn.box_patient}: a "
                           "refresh closes it", conn)
        if conn.hello is not None:
            conn.set_room_windows.append((conn.hello[0], stamp[0], conn.patient_chat))
        if not previous:
            return
        self.exercise("R12")
        older = previous[-1]
        replacing, hello = older.replacing, conn.hello
        replaced_now = replacing is not None and hello is not None and replacing[0] == hello[0]
        if replaced_now:
            stale = {p: e[1] for p, e in conn.present.items() if e[1]}
            if stale:
                patient, count = next(iter(stale.items()))
                self.violation("R12", f"after the page was replaced, {patient}'s badge is {count}: a refresh "
                               "sets the badges to 0", conn, [older.lines[-1]] if older.lines else [])
        # The refresh happened between the old console's first trouble (a stall, a drop, a reload) and now:
        # messages acknowledged before that trouble were zeroed by it.
        trouble = older.disturbed
        if trouble is not None:
            for patient, entry in conn.present.items():
                other = self._patients_by_id.get((conn.room, patient))
                if other is None or not entry[1]:
                    continue
                before = sum(1 for s in other.sends.values() if s.ok[0] < trouble)
                bound = other.send_requests - other.errors - before
                if entry[1] > bound:
                    self.violation("R12", f"{patient}'s badge is {entry[1]} after a refresh, but at most "
                                   f"{bound} of their messages can have arrived since", conn)
        settings = ("set_notifications", "set_room")
        unsure = older.unsure_settings or any(r.type in settings for r in older.pending)
        if not unsure and older.welcome is not None:
            if conn.notifications != older.notifications:
                self.violation("R10", f"chat_notifications is {conn.notifications} after a refresh; it was "
                               f"set to {older.notifications} (a setting survives a refresh)", conn)
            if conn.patient_chat != older.patient_chat:
                self.violation("R31", f"patient_initiated_chat is {conn.patient_chat} after a refresh; it "
                               f"was {older.patient_chat} (a room setting survives a refresh)", conn)

    # ---------------------------------------------------------------- the end

    def finish(self) -> Summary:
        summary = self.summary
        summary.complete = self._ended and self._incomplete is None
        summary.duration_ms = self._last_t
        for console in self._consoles:
            self._flush_early(console)
            if console.expect and console.close is None and summary.complete:
                spec, rule, why = console.expect[0]
                self.violation(rule, f"expected {_describe(spec)} ({why}); the run ended first", console)
        for conn in self._conns.values():
            if conn.close is None and conn.pending and summary.complete:
                self.violation("LIVENESS", f"{len(conn.pending)} request(s) never answered "
                               f"({conn.pending[0].type} first) and the connection never closed", conn)
        rooms: dict[str, list[_Console]] = {}
        for console in self._consoles:
            rooms.setdefault(console.room, []).append(console)
        self._check_patient_messages(rooms)
        self._check_clinician_messages(rooms)
        self._check_departures(rooms)
        self._check_status(rooms)
        self._check_liveness()
        return summary

    def _check_patient_messages(self, rooms: dict[str, list[_Console]]) -> None:
        summary = self.summary
        for patient in self._patients:
            if patient.id is None:
                continue
            consoles = rooms.get(patient.room, [])
            pid = patient.id
            for message_id, sent in patient.sends.items():
                key = (pid, message_id)
                receivers = [c for c in consoles if key in c.delivered]
                if receivers:
                    summary.patient_messages_delivered += 1
                if len(receivers) > 1:
                    self.violation("R1", f"message {message_id} from {pid} reached {len(receivers)} consoles",
                                   receivers[-1], [sent.ok[2]])
                for console in consoles:
                    got = console.delivered.get(key)
                    if got is not None:
                        if got[0] != sent.length or got[1] != sent.client_ts or got[2] != sent.ts:
                            self.violation("R1", f"message {message_id} from {pid} arrived changed (length, "
                                           "client_ts or ts differ from what was sent and acknowledged)",
                                           console, [sent.send[2], sent.ok[2], got[3][2]])
                        if hb(sent.ok, console.hello):
                            self.violation("R12", f"message {message_id} from {pid}, acknowledged before "
                                           "this console said hello, was replayed to it", console,
                                           [sent.ok[2], got[3][2]])
                        left = console.left.get(pid)
                        if left is not None and left[1][2] < got[3][2]:
                            self.violation("R9", f"message {message_id} from {pid} arrived after its "
                                           "patient_left", console, [got[3][2]])
                        continue
                    if not hb(console.welcome, sent.send):
                        continue
                    left = console.left.get(pid)
                    must = left is not None or (console.replaced_by is not None
                                                and hb(sent.ok, console.replaced_by))
                    if must:
                        self.violation("R1", f"message {message_id} from {pid} (acknowledged to the patient) "
                                       "never reached the clinician's console", console,
                                       [sent.send[2], sent.ok[2]] + ([left[1][2]] if left else []))
            unknown: list[int] = []
            for console in consoles:
                unknown.extend(i for (p, i) in console.delivered if p == pid and i not in patient.sends)
            in_flight = patient.unanswered_sends + len([r for r in patient.pending if r.type == "send"])
            if len(unknown) > in_flight:
                self.violation("R1", f"the console received message ids {unknown[:5]} from {pid} that the "
                               "patient never had acknowledged", patient)

    def _check_clinician_messages(self, rooms: dict[str, list[_Console]]) -> None:
        summary = self.summary
        for consoles in rooms.values():
            for console in consoles:
                for (pid, message_id), sent in console.sent_ok.items():
                    patient = self._patients_by_id.get((console.room, pid))
                    if patient is None:
                        continue
                    twin = patient.sends.get(message_id)
                    if twin is not None:
                        self.violation("R1", f"id {message_id} of {pid}'s conversation was given to two "
                                       "messages", console, [sent.ok[2], twin.ok[2]])
                    got = patient.got.get(message_id)
                    if got is not None:
                        summary.clinician_messages_delivered += 1
                        bound = console.position_bounds.get((pid, message_id))
                        shown = patient.position_at.get(message_id)
                        if bound is not None and shown is not None and shown > bound:
                            # Every departure or call start ahead of the patient that the console had seen
                            # when the clinician wrote came before the message on the patient's connection.
                            self.violation("R30", f"{pid} was shown place {shown} in the queue when message "
                                           f"{message_id} arrived; the clinician, who wrote it, saw at most "
                                           f"{bound - 1} waiting ahead", patient, [sent.send[2], got[3][2]])
                        if got[0] != sent.length or got[1] != sent.client_ts or got[2] != sent.ts:
                            self.violation("R1", f"message {message_id} to {pid} arrived changed", patient,
                                           [sent.ok[2], got[3][2]])
                        continue
                    # Acknowledged means the patient was present: the message was queued before any
                    # departure the server made; only a connection the patient's side ended, or that broke,
                    # may lose it.
                    close = patient.close
                    server_departure = patient.leave_ok is not None or patient.call_ended is not None
                    if close is None or (close[0] == 1000 and server_departure and not patient.client_ended):
                        self.violation("R1", f"message {message_id} to {pid} (acknowledged to the clinician) "
                                       "never reached the patient", console, [sent.send[2], sent.ok[2]])
                for pid, ok in console.calls_started:
                    patient = self._patients_by_id.get((console.room, pid))
                    if patient is None or patient.call_started is not None:
                        continue
                    if patient.close is None or (patient.close[0] == 1000 and not patient.client_ended
                                                 and patient.leave_ok is None):
                        self.violation("R20", f"start_call on {pid} was acknowledged, but the patient never "
                                       "received call{started}", console, [ok[2]])
        for patient in self._patients:
            if patient.id is None:
                continue
            consoles = rooms.get(patient.room, [])
            sent_ids = {i for c in consoles for (p, i) in c.sent_ok if p == patient.id}
            stray = [i for i in patient.got if i not in sent_ids]
            if len(stray) > sum(c.unanswered_sends.get(patient.id, 0) +
                                len([r for r in c.pending if r.type == "send"]) for c in consoles):
                self.violation("R1", f"{patient.id} received clinician message ids {stray[:5]} that no "
                               "console had acknowledged", patient)

    def _check_departures(self, rooms: dict[str, list[_Console]]) -> None:
        for patient in self._patients:
            if patient.id is None:
                continue
            for console in rooms.get(patient.room, []):
                left = console.left.get(patient.id)
                if left is None:
                    if (patient.leave_ok is not None and patient.leave_sent is not None
                            and hb(console.welcome, patient.leave_sent)
                            and console.close is not None and console.close[1] == "client"
                            and console.end_stamp is not None and hb(patient.leave_ok, console.end_stamp)
                            and console.replaced_by is None):
                        self.violation("R9", f"{patient.id} left while this console was connected, but it "
                                       "never received patient_left", console, [patient.leave_ok[2]])
                    continue
                reason = left[0]
                if patient.leave_ok is not None:
                    expected = "left"
                elif patient.call_ended is not None:
                    expected = "call_ended"
                elif patient.leave_sent is not None:
                    continue  # left or lost, whichever the server saw first
                else:
                    expected = "disconnected"
                if reason != expected:
                    self.violation("R9", f"patient_left for {patient.id} says {reason!r}, but the patient's "
                                   f"own side shows {expected!r}", console, [left[1][2]])

    def _check_status(self, rooms: dict[str, list[_Console]]) -> None:
        """R30 and R31 on patients' answers that fall inside intervals where the room's state is certain."""
        by_room: dict[str, list[_Patient]] = {}
        for patient in self._patients:
            by_room.setdefault(patient.room, []).append(patient)
        for room, consoles in rooms.items():
            patients = by_room.get(room, [])
            settings = [w for console in consoles for w in console.set_room_windows]
            stable: list[tuple[float, float, list[tuple[float, float, Any]], bool]] = []
            for console in consoles:
                if console.welcome is None:
                    continue
                windows = list(console.call_windows)
                for pid, seen in console.call_departures:
                    other = self._patients_by_id.get((room, pid))
                    departed = other.departed_by if other is not None else None
                    began = departed[0] if departed is not None else -1.0
                    windows.append((min(began, seen) if began >= 0 else 0.0, seen, False))
                end = console.disturbed if console.disturbed is not None else float("inf")
                stable.append((console.welcome[0], end, windows, console.welcome_status == "on_call"))
            for patient in patients:
                for request, answer, status, setting in patient.answers:
                    lo, hi = request[0], answer[0]
                    expected_setting = _value_at(settings, lo, hi, None)
                    if expected_setting is not None and expected_setting != setting:
                        self.violation("R31", f"the patient saw patient_initiated_chat={setting} while it "
                                       f"was {expected_setting}", patient, [request[2], answer[2]])
                    for start, end, windows, initial in stable:
                        if start < lo and hi < end:
                            in_call = _value_at(windows, lo, hi, initial)
                            if in_call is not None:
                                expected = "on_call" if in_call else "online"
                                if expected != status:
                                    self.violation("R30", f"the patient saw provider status {status!r} while "
                                                   f"it was {expected!r}", patient, [request[2], answer[2]])
                            break

    def _check_liveness(self) -> None:
        """Every patient present when the healing phase begins is answered in it, or gone by its end.

        Judged per room, and only where the healing phase is long enough for the scenario's pace
        (:func:`liveness_bound_ms`, counted from when the room's clinician is connected); otherwise the
        summary says plainly that liveness was not judged, and why."""
        summary = self.summary
        for patient in self._patients:
            if patient.welcome is None:
                continue
            answered = self._answers(patient)
            if answered:
                summary.patients_served += 1
                summary.waits_s.append(max(0.0, (min(answered) - patient.welcome[0]) / 1000.0))
        heal, end = self.heal_ms, self.end_ms
        if not summary.complete:
            summary.liveness_reason = (f"the run did not finish ({self._incomplete})" if self._incomplete
                                       else "the history has no end record: the run did not finish")
            return
        if heal <= 0 or end <= heal:
            summary.liveness_reason = "the history has no healing phase (no heal_ms before end_ms)"
            return
        think = self.pace.get("clinician_think_ms") if self.pace is not None else None
        if isinstance(think, bool) or not isinstance(think, (int, float)) or not think > 0:
            summary.liveness_reason = ("the history does not say the scenario's pace (no \"pace\" with "
                                       "clinician_think_ms in its header)")
            return
        rooms: dict[str, list[_Patient]] = {}
        for patient in self._patients:
            if patient.welcome is None or patient.welcome[0] >= heal:
                continue
            if patient.closed_stamp is not None and patient.closed_stamp[0] < heal:
                continue
            rooms.setdefault(patient.room, []).append(patient)
        short = summary.liveness_short
        summary.liveness_heal_ms = end - heal
        summary.liveness_think_ms = float(think)
        for room, patients in sorted(rooms.items()):
            summary.liveness_rooms += 1
            ready = self._clinician_ready(room, heal)
            bound = liveness_bound_ms(float(think), len(patients)) + ((ready or heal) - heal)
            summary.liveness_bound_ms = max(summary.liveness_bound_ms or 0.0, round(bound, 3))
            if ready is None or heal + bound > end:
                short.append((room, len(patients), round(bound, 3)))
                continue
            summary.liveness_rooms_judged += 1
            for patient in patients:
                self._judge_patient(patient, heal, end)

    def _answers(self, patient: _Patient) -> list[float]:
        """When the clinician answered the patient: each message received, and the call's start."""
        answered = [got[3][0] for got in patient.got.values()]
        if patient.call_started is not None:
            answered.append(patient.call_started[0])
        return answered

    def _clinician_ready(self, room: str, heal: float) -> float | None:
        """From when, in the healing phase, a clinician's console of ``room`` is connected (None: never)."""
        ready: float | None = None
        for console in self._consoles:
            if console.room != room or console.welcome is None:
                continue
            closed = console.closed_stamp[0] if console.closed_stamp is not None else float("inf")
            if closed <= heal:
                continue
            when = max(console.welcome[0], heal)
            ready = when if ready is None else min(ready, when)
        return ready

    def _judge_patient(self, patient: _Patient, heal: float, end: float) -> None:
        answered = self._answers(patient)
        if any(heal <= t <= end for t in answered):
            return
        closed = patient.closed_stamp[0] if patient.closed_stamp is not None else None
        if closed is not None and closed <= end:
            return
        call = patient.call_started
        if call is not None and call[0] < heal:
            state = f"in a call since {_seconds(call[0])}"
        else:
            assert patient.welcome is not None
            state = f"waiting since {_seconds(patient.welcome[0])}"
        self.violation("LIVENESS", f"{patient.id} was {state} when the healing phase began at "
                       f"{_seconds(heal)}, got no message or call from the clinician in it, and was still "
                       f"there at its end ({_seconds(end)})", patient)


def liveness_bound_ms(think_ms: float, patients: int) -> float:
    """How long a healing phase must last to judge liveness in a room with ``patients`` to answer.

    The simulator's clinician, once healing begins, answers one patient per tick: the tick already
    scheduled (a think time, not capped: allowed 5 mean think times) then one tick per patient, each a
    think time capped at HEAL_TICK_CAP_MS (allowed the smaller of that cap and 2 mean think times), plus
    one tick to spare."""
    tick = min(HEAL_TICK_CAP_MS, 2.0 * think_ms)
    return 5.0 * think_ms + (patients + 1) * tick


def _seconds(ms: float) -> str:
    seconds = ms / 1000.0
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def _value_at(windows: list[tuple[float, float, Any]], lo: float, hi: float, initial: Any) -> Any:
    """The value over [lo, hi] given change windows (from, to, value after); None when uncertain."""
    value, best = initial, float("-inf")
    for start, end, after in windows:
        if start <= hi and end >= lo:
            return None
        if end < lo and end > best:
            value, best = after, end
    return value
