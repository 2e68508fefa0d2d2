"""A patient's connection, frame by frame: what the patient is shown and what its requests get.

The patient's own view is simple (a place in the queue, the provider's status, the room's setting, the
conversation): each frame is judged against what the connection has shown so far (R1 order and ids,
R20, R30 positions and status, R31, R40, R41 on its sends, R9 on leave), and the facts the cross checks
need later (messages sent and received, answers with the status they showed) are kept on the record.
"""

from __future__ import annotations

from typing import Any, Final

from ._connections import (
    Connections,
    HistoryPosition,
    PatientConnection,
    Request,
    SentMessage,
    int_field,
)
from ._frame_specs import describe
from ._run_stats import Findings, ReportsFindings

# Frames only a clinician's console may receive (a patient never sees another patient's id).
CLINICIAN_ONLY: Final = frozenset({"patient_joined", "patient_left", "chat_box", "unread", "notify",
                                   "erased"})


class PatientChecks(ReportsFindings):
    """Judges the frames a patient's connection receives."""

    def __init__(self, connections: Connections, findings: Findings) -> None:
        self.connections = connections
        super().__init__(findings)

    def _text_check(self, conn: PatientConnection, request: Request, code: Any) -> bool:
        """R41 on a send's answer; True when the answer was a ``too_large`` refusal (handled here)."""
        length = request.frame.get("text")
        if not isinstance(length, int) or isinstance(length, bool):
            return False
        limit = self.connections.limit(conn.room, "max_text_chars", 4096)
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

    def frame(self, conn: PatientConnection, frame: dict[str, Any], stamp: HistoryPosition) -> None:
        kind = frame.get("type")
        if conn.welcome is None and kind == "error" and not conn.pending:
            self.connections.hello_refused(conn, frame)
            return
        if conn.expect_on_call and kind not in ("provider_status", "call"):
            conn.expect_on_call = False
            self.violation("R30", f"after call{{started}} expected provider_status{{on_call}}, got "
                           f"{describe(frame)}", conn)
        if kind == "welcome":
            self.summary.welcomed += 1
            conn.id = str(frame.get("patient"))
            conn.welcome = stamp
            conn.status = str(frame.get("provider_status"))
            conn.setting = bool(frame.get("patient_initiated_chat"))
            conn.state = "waiting"
            conn.position = int_field(frame.get("position"))
            self.summary.patients += 1
            if conn.position < 1:
                self.violation("R30", f"welcome position {conn.position} is not a place in the queue", conn)
            self.connections.patients_by_id[(conn.room, conn.id)] = conn
        elif kind in ("ok", "error"):
            request = self.connections.pop_answer(conn, frame, stamp)
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
                length = request.frame.get("text")
                if length == 0 and isinstance(length, int) and not isinstance(length, bool):
                    self.exercise("R40")
                    if kind == "ok":
                        self.violation("R40", "an empty text was accepted (it answers invalid)", conn)
                    else:
                        conn.errors += 1
                        if code not in ("invalid", "rate_limited"):
                            self.violation("R40", f"an empty text was refused with {code!r}, not invalid",
                                           conn)
                    return
                if kind == "ok":
                    self.exercise("R1")
                    message_id = int_field(frame.get("id"))
                    if disabled:
                        self.violation("R31", "a waiting patient's send was accepted while patient-initiated "
                                       "chat is off and the clinician had not written first", conn)
                    if message_id <= conn.last_id:
                        self.violation("R1", f"message id {message_id} is not above the conversation's "
                                       f"last id {conn.last_id}", conn)
                    conn.last_id = max(conn.last_id, message_id)
                    text = request.frame.get("text")
                    conn.sends[message_id] = SentMessage(text if isinstance(text, int) else -1,
                                                   request.frame.get("client_ts"), int_field(frame.get("ts")),
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
            message_id = int_field(frame.get("id"))
            if message_id <= conn.last_id:
                self.violation("R1", f"message id {message_id} delivered after id {conn.last_id} (lost order "
                               "or duplicate)", conn)
            conn.last_id = max(conn.last_id, message_id)
            text = frame.get("text")
            conn.got[message_id] = (text if isinstance(text, int) else -1, frame.get("client_ts"),
                                    int_field(frame.get("ts")), stamp)
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
            position = int_field(frame.get("position"))
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

