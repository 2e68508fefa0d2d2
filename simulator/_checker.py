"""The checker: reads a history and checks the contract's rules from the clients' side.

This module only feeds the records to the parts that judge them, each named for its job:
``_connections`` (the connections, and each request paired with its answer), ``_console_replica``
(what one clinician connection must be showing, frame by frame), ``_patient_checks`` (the same for a
patient's connection), ``_cross_checks`` (what needs several connections or the whole run: delivery,
departures, status, liveness) and ``_run_stats`` (the violations, notes and counts, and the summary).

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

from typing import Any, Final

from ._connections import Connections, ConsoleConnection, HistoryPosition, PatientConnection, number_field
from ._console_replica import ConsoleReplica
from ._cross_checks import CrossChecks, liveness_bound_ms
from ._patient_checks import PatientChecks
from ._run_stats import CONTRACT_RULES, Findings, Summary, Violation

__all__ = ["CONTRACT_RULES", "MAX_SHOWN_PER_RULE", "Checker", "Summary", "Violation", "liveness_bound_ms"]

MAX_SHOWN_PER_RULE: Final = 5  # violations printed per rule by the CLI


class Checker:
    """Feed it a history's records in order (:meth:`feed`), then :meth:`finish`."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self.seed = header.get("seed")
        self.heal_ms = number_field(header.get("heal_ms"))
        self.end_ms = number_field(header.get("end_ms"))
        pace = header.get("pace")
        self.pace: dict[str, Any] | None = pace if isinstance(pace, dict) else None
        self.findings = Findings()
        self.connections = Connections(header, self.findings)
        self.consoles = ConsoleReplica(self.connections, self.findings)
        self.patients = PatientChecks(self.connections, self.findings)
        self._ended = False
        self._incomplete: str | None = None
        self._last_t = 0.0

    @property
    def violations(self) -> list[Violation]:
        return self.findings.violations

    @property
    def notes(self) -> list[Violation]:
        return self.findings.notes

    @property
    def summary(self) -> Summary:
        return self.findings.summary

    def feed(self, number: int, record: dict[str, Any]) -> None:
        """One record of the history, ``number`` being its line."""
        kind = record.get("kind")
        t = number_field(record.get("t"))
        self._last_t = t
        if kind == "end":
            self._ended = True
            incomplete = record.get("incomplete")
            if isinstance(incomplete, str) and incomplete:
                self._incomplete = incomplete
            return
        self.findings.summary.records += 1
        agent = record.get("agent")
        conn_no = record.get("conn")
        if not isinstance(agent, str) or not isinstance(conn_no, int):
            return
        position: HistoryPosition = (t, f"{agent}/{conn_no}", number)
        connections = self.connections
        if kind == "connect":
            connections.connect(agent, conn_no, record, position)
            return
        conn = connections.by_key.get((agent, conn_no))
        if conn is None:
            return
        conn.lines.append(number)
        if kind == "frame":
            frame = record.get("frame")
            if not isinstance(frame, dict):
                return
            if record.get("dir") == "out":
                connections.sent(conn, frame, position)
            elif isinstance(conn, ConsoleConnection):
                self.consoles.frame(conn, frame, position)
            elif isinstance(conn, PatientConnection):
                self.patients.frame(conn, frame, position)
        elif kind == "close":
            if isinstance(conn, ConsoleConnection):
                self.consoles.flush_early(conn)
            connections.closed(conn, record, position)
        elif kind == "action":
            connections.action(conn, record, position)

    def finish(self) -> Summary:
        """The history is read: what was still due, then the cross checks; the run's summary."""
        summary = self.findings.summary
        summary.complete = self._ended and self._incomplete is None
        summary.duration_ms = self._last_t
        for console in self.connections.consoles:
            self.consoles.finish(console, summary.complete)
        self.connections.check_unanswered(summary.complete)
        cross_checks = CrossChecks(self.connections, self.findings, self.heal_ms, self.end_ms, self.pace)
        cross_checks.run(self._incomplete)
        return summary
