"""The checks that need several connections, or the whole run: made once the history is read.

Across connections only *happened-before* is used (:func:`happened_before`): a record came certainly
before another when its time is earlier, or when both are on one connection and it comes first in the
file. From that: delivery both ways (R1: acknowledged means delivered, once, unchanged, in order), no
replay after a refresh (R12), departures and their reasons (R9), the provider status and room setting
patients saw inside intervals where the clinician's state is certain (R30, R31), positions never rising
(R30), and liveness in the healing phase, judged per room only where the phase is long enough for the
scenario's pace (:func:`liveness_bound_ms`).
"""

from __future__ import annotations

from typing import Any, Final

from ._connections import (
    ARRIVED_AT,
    LINE,
    TIME,
    Connections,
    ConsoleConnection,
    PatientConnection,
    arrived_unchanged,
    happened_before,
)
from ._run_stats import Findings, ReportsFindings, seconds_text

# Liveness: the simulator's clinicians, once the healing phase begins, answer one waiting patient per
# tick, a tick being the scenario's think time capped at HEAL_TICK_CAP_MS (simulator/_agents.py). See
# liveness_bound_ms() and docs/simulator.md, "Liveness".
HEAL_TICK_CAP_MS: Final = 10_000.0


class CrossChecks(ReportsFindings):
    """Judges what the connections recorded, taken together, at the end of the run."""

    def __init__(self, connections: Connections, findings: Findings, heal_ms: float, end_ms: float,
                 pace: dict[str, Any] | None) -> None:
        self.connections = connections
        super().__init__(findings)
        self.heal_ms = heal_ms
        self.end_ms = end_ms
        self.pace = pace

    def run(self, incomplete: str | None) -> None:
        """Every cross check, in the order the violations are reported."""
        rooms: dict[str, list[ConsoleConnection]] = {}
        for console in self.connections.consoles:
            rooms.setdefault(console.room, []).append(console)
        self._check_patient_messages(rooms)
        self._check_clinician_messages(rooms)
        self._check_departures(rooms)
        self._check_status(rooms)
        self._check_liveness(incomplete)

    def _check_patient_messages(self, rooms: dict[str, list[ConsoleConnection]]) -> None:
        summary = self.summary
        for patient in self.connections.patients:
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
                                   receivers[-1], [sent.ok[LINE]])
                for console in consoles:
                    got = console.delivered.get(key)
                    if got is not None:
                        if not arrived_unchanged(got, sent):
                            self.violation("R1", f"message {message_id} from {pid} arrived changed (length, "
                                           "client_ts or ts differ from what was sent and acknowledged)",
                                           console, [sent.send[LINE], sent.ok[LINE], got[ARRIVED_AT][LINE]])
                        if happened_before(sent.ok, console.hello):
                            self.violation("R12", f"message {message_id} from {pid}, acknowledged before "
                                           "this console said hello, was replayed to it", console,
                                           [sent.ok[LINE], got[ARRIVED_AT][LINE]])
                        left = console.left.get(pid)
                        if left is not None and left[1][LINE] < got[ARRIVED_AT][LINE]:
                            self.violation("R9", f"message {message_id} from {pid} arrived after its "
                                           "patient_left", console, [got[ARRIVED_AT][LINE]])
                        continue
                    if not happened_before(console.welcome, sent.send):
                        continue
                    left = console.left.get(pid)
                    must = left is not None or (console.replaced_by is not None
                                                and happened_before(sent.ok, console.replaced_by))
                    if must:
                        self.violation("R1", f"message {message_id} from {pid} (acknowledged to the patient) "
                                       "never reached the clinician's console", console,
                                       [sent.send[LINE], sent.ok[LINE]] + ([left[1][LINE]] if left else []))
            unknown: list[int] = []
            for console in consoles:
                unknown.extend(i for (p, i) in console.delivered if p == pid and i not in patient.sends)
            in_flight = patient.unanswered_sends + len([r for r in patient.pending if r.type == "send"])
            if len(unknown) > in_flight:
                self.violation("R1", f"the console received message ids {unknown[:5]} from {pid} that the "
                               "patient never had acknowledged", patient)

    def _check_clinician_messages(self, rooms: dict[str, list[ConsoleConnection]]) -> None:
        summary = self.summary
        for consoles in rooms.values():
            for console in consoles:
                for (pid, message_id), sent in console.sent_ok.items():
                    patient = self.connections.patients_by_id.get((console.room, pid))
                    if patient is None:
                        continue
                    twin = patient.sends.get(message_id)
                    if twin is not None:
                        self.violation("R1", f"id {message_id} of {pid}'s conversation was given to two "
                                       "messages", console, [sent.ok[LINE], twin.ok[LINE]])
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
                                           f"{bound - 1} waiting ahead", patient,
                                           [sent.send[LINE], got[ARRIVED_AT][LINE]])
                        if not arrived_unchanged(got, sent):
                            self.violation("R1", f"message {message_id} to {pid} arrived changed", patient,
                                           [sent.ok[LINE], got[ARRIVED_AT][LINE]])
                        continue
                    # Acknowledged means the patient was present: the message was queued before any
                    # departure the server made; only a connection the patient's side ended, or that broke,
                    # may lose it.
                    close = patient.close
                    server_departure = patient.leave_ok is not None or patient.call_ended is not None
                    if close is None or (close[0] == 1000 and server_departure and not patient.client_ended):
                        self.violation("R1", f"message {message_id} to {pid} (acknowledged to the clinician) "
                                       "never reached the patient", console, [sent.send[LINE], sent.ok[LINE]])
                for pid, ok in console.calls_started:
                    patient = self.connections.patients_by_id.get((console.room, pid))
                    if patient is None or patient.call_started is not None:
                        continue
                    if patient.close is None or (patient.close[0] == 1000 and not patient.client_ended
                                                 and patient.leave_ok is None):
                        self.violation("R20", f"start_call on {pid} was acknowledged, but the patient never "
                                       "received call{started}", console, [ok[LINE]])
        for patient in self.connections.patients:
            if patient.id is None:
                continue
            consoles = rooms.get(patient.room, [])
            sent_ids = {i for c in consoles for (p, i) in c.sent_ok if p == patient.id}
            stray = [i for i in patient.got if i not in sent_ids]
            if len(stray) > sum(c.unanswered_sends.get(patient.id, 0) +
                                len([r for r in c.pending if r.type == "send"]) for c in consoles):
                self.violation("R1", f"{patient.id} received clinician message ids {stray[:5]} that no "
                               "console had acknowledged", patient)

    def _check_departures(self, rooms: dict[str, list[ConsoleConnection]]) -> None:
        for patient in self.connections.patients:
            if patient.id is None:
                continue
            for console in rooms.get(patient.room, []):
                left = console.left.get(patient.id)
                if left is None:
                    if (patient.leave_ok is not None and patient.leave_sent is not None
                            and happened_before(console.welcome, patient.leave_sent)
                            and console.close is not None and console.close[1] == "client"
                            and console.end_stamp is not None
                            and happened_before(patient.leave_ok, console.end_stamp)
                            and console.replaced_by is None):
                        self.violation("R9", f"{patient.id} left while this console was connected, but it "
                                       "never received patient_left", console, [patient.leave_ok[LINE]])
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
                                   f"own side shows {expected!r}", console, [left[1][LINE]])

    def _check_status(self, rooms: dict[str, list[ConsoleConnection]]) -> None:
        """R30 and R31 on patients' answers that fall inside intervals where the room's state is certain."""
        by_room: dict[str, list[PatientConnection]] = {}
        for patient in self.connections.patients:
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
                    other = self.connections.patients_by_id.get((room, pid))
                    departed = other.departed_by if other is not None else None
                    began = departed[TIME] if departed is not None else -1.0
                    windows.append((min(began, seen) if began >= 0 else 0.0, seen, False))
                end = console.disturbed if console.disturbed is not None else float("inf")
                stable.append((console.welcome[TIME], end, windows, console.welcome_status == "on_call"))
            for patient in patients:
                for request, answer, status, setting in patient.answers:
                    lo, hi = request[TIME], answer[TIME]
                    expected_setting = _value_over(settings, lo, hi, None)
                    if expected_setting is not None and expected_setting != setting:
                        self.violation("R31", f"the patient saw patient_initiated_chat={setting} while it "
                                       f"was {expected_setting}", patient, [request[LINE], answer[LINE]])
                    for start, end, windows, initial in stable:
                        if start < lo and hi < end:
                            in_call = _value_over(windows, lo, hi, initial)
                            if in_call is not None:
                                expected = "on_call" if in_call else "online"
                                if expected != status:
                                    self.violation("R30", f"the patient saw provider status {status!r} while "
                                                   f"it was {expected!r}", patient,
                                                   [request[LINE], answer[LINE]])
                            break

    def _check_liveness(self, incomplete: str | None) -> None:
        """Every patient present when the healing phase begins is answered in it, or gone by its end.

        Judged per room, and only where the healing phase is long enough for the scenario's pace
        (:func:`liveness_bound_ms`, counted from when the room's clinician is connected); otherwise the
        summary says plainly that liveness was not judged, and why."""
        summary = self.summary
        for patient in self.connections.patients:
            if patient.welcome is None:
                continue
            answered = self._answers(patient)
            if answered:
                summary.patients_served += 1
                summary.waits_s.append(max(0.0, (min(answered) - patient.welcome[TIME]) / 1000.0))
        heal, end = self.heal_ms, self.end_ms
        if not summary.complete:
            summary.liveness_reason = (f"the run did not finish ({incomplete})" if incomplete
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
        rooms: dict[str, list[PatientConnection]] = {}
        for patient in self.connections.patients:
            if patient.welcome is None or patient.welcome[TIME] >= heal:
                continue
            if patient.closed_stamp is not None and patient.closed_stamp[TIME] < heal:
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

    def _answers(self, patient: PatientConnection) -> list[float]:
        """When the clinician answered the patient: each message received, and the call's start."""
        answered = [got[ARRIVED_AT][TIME] for got in patient.got.values()]
        if patient.call_started is not None:
            answered.append(patient.call_started[TIME])
        return answered

    def _clinician_ready(self, room: str, heal: float) -> float | None:
        """From when, in the healing phase, a clinician's console of ``room`` is connected (None: never)."""
        ready: float | None = None
        for console in self.connections.consoles:
            if console.room != room or console.welcome is None:
                continue
            closed = console.closed_stamp[TIME] if console.closed_stamp is not None else float("inf")
            if closed <= heal:
                continue
            when = max(console.welcome[TIME], heal)
            ready = when if ready is None else min(ready, when)
        return ready

    def _judge_patient(self, patient: PatientConnection, heal: float, end: float) -> None:
        answered = self._answers(patient)
        if any(heal <= t <= end for t in answered):
            return
        closed = patient.closed_stamp[TIME] if patient.closed_stamp is not None else None
        if closed is not None and closed <= end:
            return
        call = patient.call_started
        if call is not None and call[TIME] < heal:
            state = f"in a call since {seconds_text(call[TIME])}"
        else:
            assert patient.welcome is not None
            state = f"waiting since {seconds_text(patient.welcome[TIME])}"
        self.violation("LIVENESS", f"{patient.id} was {state} when the healing phase began at "
                       f"{seconds_text(heal)}, got no message or call from the clinician in it, and was "
                       "still "
                       f"there at its end ({seconds_text(end)})", patient)


def liveness_bound_ms(think_ms: float, patients: int) -> float:
    """How long a healing phase must last to judge liveness in a room with ``patients`` to answer.

    The simulator's clinician, once healing begins, answers one patient per tick: the tick already
    scheduled (a think time, not capped: allowed 5 mean think times) then one tick per patient, each a
    think time capped at HEAL_TICK_CAP_MS (allowed the smaller of that cap and 2 mean think times), plus
    one tick to spare."""
    tick = min(HEAL_TICK_CAP_MS, 2.0 * think_ms)
    return 5.0 * think_ms + (patients + 1) * tick


def _value_over(windows: list[tuple[float, float, Any]], lo: float, hi: float, initial: Any) -> Any:
    """The value over [lo, hi] given change windows (from, to, value after); None when uncertain."""
    value, best = initial, float("-inf")
    for start, end, after in windows:
        if start <= hi and end >= lo:
            return None
        if end < lo and end > best:
            value, best = after, end
    return value
