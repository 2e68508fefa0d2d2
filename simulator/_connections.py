"""The history's connections, and the requests and answers on them.

Each connection's record says what its client did and saw: hello and welcome, the requests waiting for
an answer, how it ended. :class:`Connections` owns them all (by agent and number, patients by id,
consoles by room) and pairs every answer with the oldest request waiting on its connection: one answer
per request, in order, with its ref (``WIRE``), and a burst of pings judged against the rate limit
(R43). Positions in the history, and which came certainly before which, are defined here too: the
console replica and the cross checks both reason with them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from ._frame_specs import describe
from ._run_stats import Findings, ReportsFindings, Violation

CONTEXT_LINES: Final = 8


# Where a record is in the history: its time (ms), its connection ("agent/number") and its line, read as
# position[TIME], position[CONNECTION], position[LINE]. A plain tuple, not a NamedTuple: the garbage
# collector stops tracking a tuple of numbers and strings (never an instance of a tuple subclass), and a
# busy day keeps hundreds of thousands of them, which every full collection would otherwise walk.
HistoryPosition = tuple[float, str, int]
TIME: Final = 0
CONNECTION: Final = 1
LINE: Final = 2


def happened_before(a: HistoryPosition | None, b: HistoryPosition | None) -> bool:
    """A certainly happened before B: earlier in time, or earlier on the same connection.

    Records of one instant are sorted by agent and connection, so the file says nothing about the
    order of two connections' records at one instant."""
    if a is None or b is None:
        return False
    return a[TIME] < b[TIME] or (a[CONNECTION] == b[CONNECTION] and a[LINE] < b[LINE])


@dataclass(slots=True)
class Request:
    ref: str | None
    type: str
    frame: dict[str, Any]
    stamp: HistoryPosition
    # A clinician's send: the highest place in the queue its patient can have (R30), from the console.
    position_bound: int | None = None


class Connection:
    __slots__ = ("agent", "alive", "burst", "close", "closed_stamp", "end_stamp", "key", "lines", "number",
                 "pending", "refused", "room")

    def __init__(self, agent: str, number: int, room: str) -> None:
        self.agent = agent
        self.number = number
        self.room = room
        self.key = (agent, number)
        self.lines: deque[int] = deque(maxlen=CONTEXT_LINES)
        self.pending: deque[Request] = deque()
        self.close: tuple[int, str] | None = None  # (code, by)
        self.closed_stamp: HistoryPosition | None = None
        # the client started to end it (drop, close, refresh, stall)
        self.end_stamp: HistoryPosition | None = None
        self.refused: str | None = None  # the hello's error code, when the server refused it
        # The latest time the server certainly still served this connection: the hello, or the sending of
        # the latest request it answered. A server's close (a drop of a slow reader, a lost heartbeat) may
        # have been decided any time after it: the client sees it only when it reads that far.
        self.alive: float | None = None
        self.burst: PingBurst | None = None  # the latest pings sent at one instant (R43's probe)


@dataclass(slots=True)
class SentMessage:
    """A message its sender had acknowledged: what the receiver must get, unchanged (R1)."""

    length: int
    client_ts: Any
    ts: int
    send: HistoryPosition
    ok: HistoryPosition


# A message as it arrived: (length, client_ts, ts, its HistoryPosition), read with ARRIVED_AT and
# arrived_unchanged(). A plain tuple for HistoryPosition's reason: a day keeps one per message.
ReceivedMessage = tuple[int, Any, int, HistoryPosition]
ARRIVED_AT: Final = 3


def arrived_unchanged(got: ReceivedMessage, sent: SentMessage) -> bool:
    """The message arrived as it was sent and acknowledged: length, client_ts and ts (R1)."""
    return not (got[0] != sent.length or got[1] != sent.client_ts or got[2] != sent.ts)


@dataclass(slots=True)
class PingBurst:
    """Pings sent at one instant (R43's probe), and their answers so far."""

    sent_at: float
    last_answer_at: float
    sent: int = 1
    answered: int = 0
    accepted: int = 0


class PatientConnection(Connection):
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
        self.welcome: HistoryPosition | None = None
        self.status = "away"
        self.setting = True
        self.state = "new"
        self.wrote = False  # the clinician has written to this patient (R31)
        self.last_id = 0
        self.position = 0
        self.position_at: dict[int, int] = {}  # clinician message id -> position shown when it arrived
        self.sends: dict[int, SentMessage] = {}
        self.got: dict[int, ReceivedMessage] = {}  # by message id
        # (request, answer, status, setting)
        self.answers: list[tuple[HistoryPosition, HistoryPosition, str, bool]] = []
        self.leave_sent: HistoryPosition | None = None
        self.leave_ok: HistoryPosition | None = None
        self.call_started: HistoryPosition | None = None
        self.call_ended: HistoryPosition | None = None
        self.expect_on_call = False
        self.unanswered_sends = 0
        self.clinician_sends_seen = 0
        self.departed_by: HistoryPosition | None = None  # the client's own departure: leave sent, close, drop
        self.errors = 0
        self.send_requests = 0
        self.client_ended = False  # the patient's side closed or dropped the connection


class ConsoleConnection(Connection):
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
        self.hello: HistoryPosition | None = None
        self.welcome: HistoryPosition | None = None
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
        self.delivered: dict[tuple[str, int], ReceivedMessage] = {}  # by (patient, message id)
        self.sent_ok: dict[tuple[str, int], SentMessage] = {}
        self.position_bounds: dict[tuple[str, int], int] = {}  # (patient, message id) -> R30 bound
        self.left: dict[str, tuple[str, HistoryPosition]] = {}  # patient -> (reason, stamp)
        self.erased_upto: dict[str, int] = {}
        self.erased_departed: set[str] = set()
        # the same agent's next hello, sent while this one was open
        self.replaced_by: HistoryPosition | None = None
        # the clinician opened the console again (a refresh, new tab)
        self.replacing: HistoryPosition | None = None
        self.unanswered_sends: dict[str, int] = {}
        # the call changed within (from, to); a call in progress after it?
        self.call_windows: list[tuple[float, float, Any]] = []
        # the call's patient left by themselves: (id, when the console saw it)
        self.call_departures: list[tuple[str, float]] = []
        self.calls_started: list[tuple[str, HistoryPosition]] = []
        self.unsure_settings = False  # a settings request was never answered
        self.set_room_windows: list[tuple[float, float, Any]] = []  # (from, to, the setting after or None)
        self.disturbed: float | None = None  # first time the client stalled, dropped, refreshed or closed
        # Frames no cause explains yet, held until the next cause: its effects sent before it ("order").
        self.early: list[tuple[dict[str, Any], HistoryPosition]] = []
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


class ClinicianAgent:
    __slots__ = ("consoles", "erased_said", "known_departed", "seen_max")

    def __init__(self) -> None:
        self.consoles: list[ConsoleConnection] = []
        self.known_departed: set[str] = set()
        # Each with the stamp from which it certainly holds (another connection's request is judged by it
        # only if that stamp certainly came before the request was sent: a slow answer may have been
        # decided by the server before a refresh that the client saw first).
        # The highest id of each patient seen on an earlier console, from the new console's welcome on.
        self.seen_max: dict[str, list[tuple[HistoryPosition, int]]] = {}
        # Ids up to which the server said (erased{...}) it erased, from that frame on.
        self.erased_said: dict[str, list[tuple[HistoryPosition, int]]] = {}


def number_field(value: Any) -> float:
    """A number from a record or frame field; 0.0 when it is not one (the history reader names bad fields)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)


def int_field(value: Any, default: int = 0) -> int:
    """An integer field of a server's frame; ``default`` when it is not one (never a traceback)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return value


class Connections(ReportsFindings):
    """Every connection of the history, and the request book of each."""

    def __init__(self, header: dict[str, Any], findings: Findings) -> None:
        self.header = header
        super().__init__(findings)
        self.by_key: dict[tuple[str, int], Connection] = {}
        self.patients_by_id: dict[tuple[str, str], PatientConnection] = {}
        self.patients: list[PatientConnection] = []
        self.consoles: list[ConsoleConnection] = []
        self.clinicians: dict[str, ClinicianAgent] = {}

    def connect(self, agent: str, number: int, record: dict[str, Any], stamp: HistoryPosition) -> None:
        self.summary.connections += 1
        room = str(record.get("room"))
        conn: Connection
        if record.get("role") == "clinician":
            console = ConsoleConnection(agent, number, room)
            self.clinicians.setdefault(agent, ClinicianAgent()).consoles.append(console)
            self.consoles.append(console)
            conn = console
        else:
            patient = PatientConnection(agent, number, room)
            self.patients.append(patient)
            conn = patient
        conn.lines.append(stamp[LINE])
        self.by_key[conn.key] = conn

    def action(self, conn: Connection, record: dict[str, Any], stamp: HistoryPosition) -> None:
        action = record.get("action")
        if action in ("drop", "close", "stall", "refresh"):
            if conn.end_stamp is None and action in ("drop", "close"):
                conn.end_stamp = stamp
            if isinstance(conn, ConsoleConnection) and conn.disturbed is None:
                conn.disturbed = stamp[TIME]
            if isinstance(conn, PatientConnection) and action in ("drop", "close"):
                conn.client_ended = True
                if conn.departed_by is None:
                    conn.departed_by = stamp
        if action == "refresh":
            self.summary.refreshes += 1
            if isinstance(conn, ConsoleConnection) and record.get("style") == "new_tab":
                conn.replacing = stamp
                if conn.replaced_by is None:
                    conn.replaced_by = stamp
        elif action == "drop":
            self.summary.drops += 1
        elif action == "stall":
            self.summary.stalls += 1
            self.exercise("R42")  # a connection stops reading; everyone else's delivery must go on

    def closed(self, conn: Connection, record: dict[str, Any], stamp: HistoryPosition) -> None:
        code = int_field(record.get("code"))
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
        if isinstance(conn, ConsoleConnection):
            if conn.disturbed is None:
                # the server's own close (R12's drop: it erases then) may have come long before the client
                # read it (a slow reader): the refresh happened at some time since the server last certainly
                # served the connection
                alive = conn.alive if by == "server" and conn.alive is not None else stamp[TIME]
                conn.disturbed = min(stamp[TIME], alive)
            conn.expect.clear()
            for request in conn.pending:
                if request.type in ("set_notifications", "set_room"):
                    conn.unsure_settings = True
                if request.type == "set_room":
                    conn.set_room_windows.append((request.stamp[TIME], float("inf"), None))
                elif request.type in ("start_call", "end_call"):
                    conn.call_windows.append((request.stamp[TIME], float("inf"), None))
            if code == 4000 and conn.replaced_by is None and conn.replacing is None:
                self.violation("R12", "closed with 4000 (replaced) although this clinician opened no newer "
                               "connection", conn)
        elif isinstance(conn, PatientConnection):
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
            if isinstance(conn, ConsoleConnection) and request.type == "send":
                patient = str(request.frame.get("patient"))
                conn.unanswered_sends[patient] = conn.unanswered_sends.get(patient, 0) + 1
        conn.pending.clear()

    def sent(self, conn: Connection, frame: dict[str, Any], stamp: HistoryPosition) -> None:
        kind = str(frame.get("type"))
        ref = frame.get("ref")
        if kind == "hello":
            conn.alive = stamp[TIME]
            if isinstance(conn, ConsoleConnection):
                conn.hello = stamp
                agent = self.clinicians[conn.agent]
                for older in agent.consoles:
                    if older is not conn and older.closed_stamp is None and (
                            older.end_stamp is None or older.replacing is not None):
                        if older.replaced_by is None:
                            older.replaced_by = stamp
                        if older.end_stamp is None:
                            older.end_stamp = stamp
                        if older.disturbed is None:
                            older.disturbed = stamp[TIME]
            return
        request = Request(ref if isinstance(ref, str) else None, kind, frame, stamp)
        if kind == "ping":
            if conn.burst is not None and conn.burst.sent_at == stamp[TIME]:
                conn.burst.sent += 1
            else:
                conn.burst = PingBurst(sent_at=stamp[TIME], last_answer_at=stamp[TIME])
        if isinstance(conn, ConsoleConnection) and kind == "send":
            request.position_bound = self._position_bound(conn, str(frame.get("patient")))
        conn.pending.append(request)
        if isinstance(conn, PatientConnection):
            if kind == "leave":
                conn.leave_sent = stamp
                if conn.departed_by is None:
                    conn.departed_by = stamp
            elif kind == "send":
                conn.send_requests += 1

    @staticmethod
    def _position_bound(conn: ConsoleConnection, patient: str) -> int | None:
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

    def pop_answer(self, conn: Connection, frame: dict[str, Any], stamp: HistoryPosition) -> Request | None:
        if not conn.pending:
            self.violation("WIRE", f"an answer with no request waiting: {describe(frame)}", conn)
            return None
        request = conn.pending.popleft()
        conn.alive = request.stamp[TIME] if conn.alive is None else max(conn.alive, request.stamp[TIME])
        burst = conn.burst
        if request.type == "ping" and burst is not None and burst.sent_at == request.stamp[TIME]:
            burst.answered += 1
            burst.accepted += frame.get("type") == "ok"
            burst.last_answer_at = stamp[TIME]
            if burst.answered == burst.sent:
                self._judge_burst(conn, burst)
        if request.ref is not None and frame.get("ref") != request.ref:
            self.violation("WIRE", f"answer {describe(frame)} does not carry the ref {request.ref!r} of the "
                           f"oldest unanswered request ({request.type}); answers must come in order with "
                           "their ref", conn)
        return request

    def _judge_burst(self, conn: Connection, burst: PingBurst) -> None:
        """R43: pings sent at one instant, all answered. The server handled them between their sending and
        the last answer (``T``), so a rate limit of ``rate_per_s`` with bursts of ``rate_burst`` (the
        welcome's) admits at most ``rate_burst + rate_per_s * T`` of them: more accepted is a limit not kept,
        whatever the timing. (A burst no larger than that bound proves nothing either way.)"""
        limits = conn.limits if isinstance(conn, ConsoleConnection) else None
        if limits is None:
            limits = next((c.limits for c in reversed(self.consoles)
                           if c.room == conn.room and c.limits is not None), None)
        if not isinstance(limits, dict):
            return
        rate, most = limits.get("rate_per_s"), limits.get("rate_burst")
        if not (isinstance(rate, int | float) and isinstance(most, int | float)):
            return
        if isinstance(rate, bool) or isinstance(most, bool) or rate <= 0 or most <= 0:
            return
        sent, accepted = burst.sent, burst.accepted
        elapsed_s = max(0.0, burst.last_answer_at - burst.sent_at) / 1000.0
        bound = math.floor(float(most) + float(rate) * elapsed_s + 1e-9)
        if sent <= bound:
            return
        self.exercise("R43")
        if accepted > bound:
            self.violation("R43", f"{accepted} of {sent} pings sent at one instant were accepted within "
                           f"{elapsed_s:.3f} s; a limit of {rate} per second with bursts of {most} admits at "
                           f"most {bound}: some must be rate_limited", conn)

    def hello_refused(self, conn: Connection, frame: dict[str, Any]) -> None:
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

    def limit(self, room: str, name: str, default: int | None) -> int | None:
        """A limit in force: from the room's latest console welcome, else the history's header."""
        for console in reversed(self.consoles):
            if console.room == room and console.limits is not None and name in console.limits:
                value = console.limits[name]
                return value if isinstance(value, int) and not isinstance(value, bool) else None
        limits = self.header.get("limits")
        if isinstance(limits, dict) and name in limits:
            value = limits[name]
            return value if isinstance(value, int) and not isinstance(value, bool) else None
        return default

    def check_unanswered(self, complete: bool) -> None:
        """A finished run leaves no request unanswered on a connection that stayed open."""
        for conn in self.by_key.values():
            if conn.close is None and conn.pending and complete:
                self.violation("LIVENESS", f"{len(conn.pending)} request(s) never answered "
                               f"({conn.pending[0].type} first) and the connection never closed", conn)
