"""What a check found and counted: violations, notes, exercised rules, and the run's summary.

:class:`Findings` is the one owner of the violations, the notes and the counts: the console replica,
the patient checks, the connection book and the cross checks all report through it, so the violations
keep the order in which the history's records revealed them. :class:`Summary` turns the counts into
the summary's figures (percentiles of waits, the liveness verdict and, when it was not judged, why).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

MAX_NOTES_SHOWN: Final = 50  # in the summary, the first by history line
MAX_NOTES_KEPT: Final = 10_000  # in memory, before the summary picks the first

# Every rule of the contract (docs/protocol.md): the keys of the summary's "exercised" counts.
CONTRACT_RULES: Final = ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "R11", "R12", "R13",
                         "R20", "R30", "R31", "R40", "R41", "R42", "R43", "R44", "R45", "R46")
# Besides these the checker names "order" (Transport: the order of one cause's frames), "WIRE" (every


@dataclass(slots=True)
class Violation:
    rule: str
    message: str
    lines: list[int]
    room: str | None = None
    agent: str | None = None


class Whereabouts(Protocol):
    """Where a finding was made: a connection's room, agent and latest history lines."""

    @property
    def lines(self) -> Iterable[int]: ...
    @property
    def room(self) -> str: ...
    @property
    def agent(self) -> str: ...


class Findings:
    """The violations and notes, in the order found, and the summary's counts."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.notes: list[Violation] = []
        self.summary = Summary()

    def violation(self, rule: str, message: str, conn: Whereabouts | None, extra: Iterable[int] = ()) -> None:
        lines = sorted(set(conn.lines if conn is not None else ()) | set(extra))
        self.violations.append(Violation(rule, message, lines, conn.room if conn else None,
                                         conn.agent if conn else None))
        self.summary.violations[rule] = self.summary.violations.get(rule, 0) + 1

    def note(self, rule: str, message: str, conn: Whereabouts | None, extra: Iterable[int] = ()) -> None:
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

    def rename(self, violation: Violation, rule: str, why: str) -> None:
        """Later evidence says which rule a violation already reported broke (its count moves with it)."""
        counts = self.summary.violations
        counts[violation.rule] -= 1
        if not counts[violation.rule]:
            del counts[violation.rule]
        violation.rule = rule
        violation.message += why
        counts[rule] = counts.get(rule, 0) + 1


class ReportsFindings:
    """A part of the checker: it reports through the run's one :class:`Findings`, whose order is the
    order of the violations."""

    def __init__(self, findings: Findings) -> None:
        self.findings = findings
        self.violation = findings.violation
        self.note = findings.note
        self.exercise = findings.exercise
        self.summary = findings.summary


def by_history_line(item: Violation) -> tuple[int, str, str]:
    """History order (the same for every --jobs once a part's lines are mapped to the whole history's)."""
    return (item.lines[-1] if item.lines else 0, item.rule, item.message)


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
    # Liveness: judged per room (see CrossChecks._check_liveness); bound_ms is the largest room's bound.
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
        heal, think = seconds_text(self.liveness_heal_ms), seconds_text(self.liveness_think_ms)
        return (f"not judged in {len(self.liveness_short)} of {self.liveness_rooms} room(s): the healing "
                f"phase ({heal}) is shorter than the {seconds_text(bound)} this "
                f"scenario's pace needs (room {room}: {count} patient(s) to answer, a clinician thinking "
                f"{think} on average); run longer or with a longer healing phase")

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
                      for n in sorted(self.notes, key=by_history_line)[:MAX_NOTES_SHOWN]],
            "records": self.records,
            "duration_ms": self.duration_ms,
            "complete": self.complete,
        }


def seconds_text(ms: float) -> str:
    seconds = ms / 1000.0
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"

