"""A replica of one clinician's console, advanced frame by frame, and what it says must come next.

A console receives every change of its queue, chat box, badges and call, and the answers to its own
requests, in the order the server decided them. So a replica that takes each frame as the console does
can say exactly which frames each cause must produce: for a patient's ``message``, the auto-open (R6),
the badge (R3/R7/R8) and the ``notify`` (R10); for a ``patient_left``, the box update (R9) or the
erasure (R11); for each request, its effects and then its answer (R4, R5, R9, R11, R13, R20, R41).

Due frames wait in the console's ``expect`` queue. A frame that no cause explains yet is held
(``early``) until the next cause arrives, then reported once as ``order``. After a violation the
replica follows the server, and what it can no longer know (``box_unknown``, ``badge_unknown``) makes
the frames about it optional until the server says what it is (no cascade).
"""

from __future__ import annotations

import itertools
from typing import Any, Final

from ._connections import (
    CONNECTION,
    LINE,
    TIME,
    Connections,
    ConsoleConnection,
    HistoryPosition,
    Request,
    SentMessage,
    happened_before,
    int_field,
)
from ._frame_specs import OPTIONAL, describe, matches, optional
from ._run_stats import Findings, ReportsFindings

# The order of one cause's frames on one connection (Transport: Order); the request's answer comes last.
FRAME_ORDER: Final = ("patient_left", "erased", "message", "chat_box", "unread", "notify")

Due = tuple[dict[str, Any], str, str]  # (frame spec, the rule it keeps, why it is due)


def highest_known_before(entries: list[tuple[HistoryPosition, int]] | None, request: HistoryPosition,
                         answer: HistoryPosition) -> int:
    """The highest value of ``entries`` that certainly held when the server handled a request sent at
    ``request`` and answered at ``answer``: set before the request was sent, or on the answer's own
    connection before the answer (one connection's frames come in the order the server decided them)."""
    best = 0
    for stamp, value in entries or ():
        if value > best and (happened_before(stamp, request)
                             or (stamp[CONNECTION] == answer[CONNECTION] and stamp[LINE] < answer[LINE])):
            best = value
    return best


def _count_nothing(rule: str) -> None:
    """Counts nothing (a look at what a request would cause, not a judgment)."""


class ConsoleReplica(ReportsFindings):
    """Judges the frames every clinician connection receives, against its replica of the console."""

    def __init__(self, connections: Connections, findings: Findings) -> None:
        self.connections = connections
        super().__init__(findings)
        self.refresh_erases = False  # the server has said (erased{refresh}) that a refresh erases

    def frame(self, conn: ConsoleConnection, frame: dict[str, Any], stamp: HistoryPosition) -> None:
        """A frame to a console: a refused hello, a replaced console's extra frames, or the replica's turn."""
        kind = frame.get("type")
        if conn.welcome is None and kind == "error" and not conn.pending:
            self.connections.hello_refused(conn, frame)
            return
        if self._refresh_extra(conn, frame):
            return
        self._console_in(conn, frame, stamp)

    def _refresh_extra(self, conn: ConsoleConnection, frame: dict[str, Any]) -> bool:
        """R12 lets a replaced console receive erased{refresh} before its 4000 close and says nothing of
        other frames then: a closed box or a zeroed badge that agrees with the refresh is a note."""
        if not (conn.refresh_seen or conn.replaced_by is not None):
            return False
        kind = frame.get("type")
        agrees = (kind == "chat_box" and frame.get("state") == "closed" and frame.get("patient") is None) or (
            kind == "unread" and frame.get("count") == 0)
        if not agrees or (conn.expect and matches(frame, conn.expect[0][0])):
            return False
        self.note("R12", f"{describe(frame)} to a console being replaced (its clinician said hello again; "
                  "before its 4000 close): the contract allows erased{refresh} there and is silent on other "
                  "frames", conn)
        return True

    def _consume(self, conn: ConsoleConnection, frame: dict[str, Any], stamp: HistoryPosition) -> bool:
        """``frame`` is one of the frames due: the next, or (frame order broken) a later one."""
        expect = conn.expect
        for index, (spec, _, _) in enumerate(expect):
            if not matches(frame, spec):
                continue
            if id(spec) in conn.passed:
                self._order(conn, f"{describe(frame)} came after a frame of the same cause that belongs "
                            "after it")
            items = list(expect)
            if frame.get("type") == "notify":
                for skipped in items[:index]:
                    badge = skipped[0]
                    if badge.get("type") == "unread" and badge.get("patient") == frame.get("patient"):
                        # Not shown (the notify says so), and yet no badge: R3 itself.
                        self.violation("R3", f"expected {describe(skipped[0])} ({skipped[2]}); the message "
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
                self.flush_early(conn)  # the request was refused: it caused none of them
            self._apply(conn, frame, stamp)
            if not expect:
                conn.passed.clear()
            return True
        return False

    def _order(self, conn: ConsoleConnection, what: str) -> None:
        if conn.order_reported:
            return
        conn.order_reported = True
        self.violation("order", f"{what}; the frames of one cause come in the order "
                       f"{', '.join(FRAME_ORDER)}, then the request's answer", conn)

    def _console_in(self, conn: ConsoleConnection, frame: dict[str, Any], stamp: HistoryPosition) -> None:
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
                    message = (f"expected {describe(spec)} ({why}) before the request's answer; it never "
                               f"came (next: {describe(frame)})")
                else:
                    # The frame is the next cause's own: it says nothing of what the missing one did.
                    named = self._attribute(conn, spec, rule, {"type": "next"} if request_began else frame)
                    message = f"expected {describe(spec)} ({why}), got {describe(frame)}"
                    rule, box_rule = named, rule
                self.violation(rule, message, conn)
                if not overtaken and rule == "R3" and box_rule in ("R7", "R8"):
                    conn.suspects.append((self.findings.violations[-1], box_rule))
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
                self.flush_early(conn)
                if kind in ("ok", "error") and conn.group is not None:
                    self._apply(conn, frame, stamp)
                    return
                self._console_in(conn, frame, stamp)
                return
            rule = self._attribute(conn, spec, rule, frame)
            self.violation(rule, f"expected {describe(spec)} ({why}), got {describe(frame)}", conn)
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
            self.flush_early(conn)
            patient = str(frame.get("patient"))
            if patient in conn.present:
                self.violation("R1", f"patient_joined for {patient}, already in the queue", conn)
            conn.present[patient] = ["waiting", 0]
        elif kind == "patient_left" and not (frame.get("reason") == "call_ended" and conn.pending):
            self._patient_left(conn, frame, stamp)
            self._claim_early(conn, "the patient_left that caused it")
        elif kind == "erased" and frame.get("reason") == "refresh":
            self.flush_early(conn)
            self.exercise("R12")
            conn.refresh_seen = True
            self.refresh_erases = True
            patient = str(frame.get("patient"))
            self.connections.clinicians[conn.agent].erased_said.setdefault(patient, []).append(
                (stamp, conn.last_id.get(patient, 0)))
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
            due = self._optional_where_unsure(conn, self._expected(conn, request))
            conn.expect.extend(due)
            if conn.early and all(spec.get("type") == "error" for spec, _, _ in due):
                pass  # a refusal causes nothing: the answer says whether these came with a wrong acceptance
            elif self._claim_early(conn, f"the {request.type} request that caused it"):
                # An unexplained frame told the replica something new: what the request causes now.
                conn.expect.clear()
                looked = self._expected(conn, request, judge=False)
                conn.expect.extend(self._optional_where_unsure(conn, looked))
            self._console_in(conn, frame, stamp)
        elif kind in ("ok", "error"):
            self.flush_early(conn)
            self._apply(conn, frame, stamp)  # an answer with no request waiting (reported there)
        else:
            conn.early.append((frame, stamp))

    @staticmethod
    def _optional_where_unsure(conn: ConsoleConnection, items: list[tuple[dict[str, Any], str, str]]
                ) -> list[tuple[dict[str, Any], str, str]]:
        """A request's due frames, with those about a box or badge the replica lost track of optional."""
        if not conn.box_unknown and not conn.badge_unknown:
            return items
        out = []
        for spec, rule, why in items:
            kind = spec.get("type")
            if conn.box_unknown and kind == "chat_box":
                if spec.get("reason") == "patient_left":
                    out.append((optional({"type": "erased", "patient": spec.get("patient"),
                                           "reason": "not_in_view"}), "R11", "erased, perhaps"))
                spec = optional(spec, "state", "patient", "patient_present")
            elif conn.box_unknown and kind == "erased":
                if spec.get("reason") == "not_in_view":
                    out.append((optional({"type": "chat_box", "patient": spec.get("patient"),
                                           "reason": "patient_left"}), "R9", "the box, perhaps"))
                spec = optional(spec)
            elif kind == "unread" and spec.get("patient") in conn.badge_unknown:
                spec = optional(spec, "count")
            out.append((spec, rule, why))
        return out

    def _lose_track(self, conn: ConsoleConnection, spec: dict[str, Any], rule: str,
                    frame: dict[str, Any]) -> None:
        """After a violation: what of the server's console state the replica no longer knows."""
        if spec.get("type") == "chat_box" or rule in ("R4", "R5", "R6", "R7", "R8", "R11") or (
                spec.get("type") == "unread" and spec.get("count") != 0):
            conn.box_unknown = True  # a badge that did not go up: perhaps the box showed the message
        if spec.get("type") == "unread":
            conn.badge_unknown.add(str(spec.get("patient")))
        if frame.get("type") == "chat_box":
            conn.box_unknown = False

    def _is_cause(self, conn: ConsoleConnection, frame: dict[str, Any]) -> bool:
        """A frame that begins a new cause's frames on a console (not an effect of one)."""
        kind = frame.get("type")
        return (kind == "message" or kind == "patient_joined" or kind == "welcome"
                or (kind == "patient_left" and frame.get("reason") != "call_ended")
                or (kind == "erased" and frame.get("reason") == "refresh"))

    def _starts_group(self, conn: ConsoleConnection, frame: dict[str, Any]) -> bool:
        """The oldest unanswered request explains ``frame``: its answer, or one of its effects."""
        if frame.get("type") in ("ok", "error"):
            return True
        due = self._optional_where_unsure(conn, self._expected(conn, conn.pending[0], judge=False))
        return any(matches(frame, spec) for spec, _, _ in due)

    def _claim_early(self, conn: ConsoleConnection, cause: str) -> bool:
        """Frames that came before their cause (now known): each is an effect of it sent out of order, or
        has no cause at all (True when there was such a frame)."""
        if not conn.early:
            return False
        early, conn.early = conn.early, []
        uncaused = False
        for frame, stamp in early:
            index = next((i for i, (spec, _, _) in enumerate(conn.expect) if matches(frame, spec)), None)
            if index is None:
                self._uncaused(conn, frame, stamp)
                uncaused = True
                continue
            del conn.expect[index]
            self._order(conn, f"{describe(frame)} was sent before {cause}")
            self._apply(conn, frame, stamp)
        return uncaused

    def flush_early(self, conn: ConsoleConnection) -> None:
        early, conn.early = conn.early, []
        for frame, stamp in early:
            self._uncaused(conn, frame, stamp)

    def _box_moved(self, conn: ConsoleConnection) -> None:
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

    def _uncaused(self, conn: ConsoleConnection, frame: dict[str, Any], stamp: HistoryPosition) -> None:
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
        self.violation(rule, f"{describe(frame)} with no request or event to cause it", conn)
        self._apply(conn, frame, stamp)

    def _attribute(self, conn: ConsoleConnection, spec: dict[str, Any], rule: str,
                   frame: dict[str, Any]) -> str:
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
        if (spec.get("type") == "chat_box" and spec.get("reason") == "patient_left"
                and frame.get("type") == "erased" and frame.get("reason") == "not_in_view"
                and frame.get("patient") == spec.get("patient")):
            # the server erased the departing patient as not in the box, which (as far as the clinician
            # was told) showed them: its box had moved without the clinician's doing, unannounced
            return "R8"
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

    def _apply(self, conn: ConsoleConnection, frame: dict[str, Any], stamp: HistoryPosition) -> None:
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
                entry[1] = int_field(frame.get("count"))
        elif kind == "erased":
            patient = str(frame.get("patient"))
            reason = str(frame.get("reason"))
            self.summary.erasures[reason] = self.summary.erasures.get(reason, 0) + 1
            conn.erased_upto[patient] = max(conn.erased_upto.get(patient, 0), conn.last_id.get(patient, 0))
            self.connections.clinicians[conn.agent].erased_said.setdefault(patient, []).append(
                (stamp, conn.last_id.get(patient, 0)))
            if patient not in conn.present:
                conn.erased_departed.add(patient)
        elif kind == "patient_left":
            patient = str(frame.get("patient"))
            reason = str(frame.get("reason"))
            self.summary.departures[reason] = self.summary.departures.get(reason, 0) + 1
            conn.present.pop(patient, None)
            conn.left[patient] = (reason, stamp)
            self.connections.clinicians[conn.agent].known_departed.add(patient)
            if conn.call == patient:
                conn.call = None
                if reason != "call_ended":
                    conn.call_departures.append((patient, stamp[TIME]))
            if conn.box_patient == patient:
                conn.box_present = False
        elif kind in ("ok", "error"):
            self._answer(conn, frame, stamp)

    def _answer(self, conn: ConsoleConnection, frame: dict[str, Any], stamp: HistoryPosition) -> None:
        request = self.connections.pop_answer(conn, frame, stamp)
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
            message_id = int_field(frame.get("id"))
            if message_id <= conn.last_id.get(patient, 0):
                self.violation("R1", f"message id {message_id} for {patient} is not above the last id "
                               f"{conn.last_id.get(patient, 0)} this console saw", conn)
            conn.last_id[patient] = max(conn.last_id.get(patient, 0), message_id)
            conn.seen_ids.setdefault(patient, []).append(message_id)
            text = sent.get("text")
            conn.sent_ok[(patient, message_id)] = SentMessage(text if isinstance(text, int) else -1,
                                                        sent.get("client_ts"), int_field(frame.get("ts")),
                                                        request.stamp, stamp)
            if request.position_bound is not None:
                conn.position_bounds[(patient, message_id)] = request.position_bound
            self.summary.clinician_messages += 1
        elif rtype == "open_chat":
            self.exercise("R4")
            self._check_open_chat(conn, str(sent.get("patient")), frame, request.stamp, stamp)
        elif rtype == "set_notifications":
            self.exercise("R10")
            conn.notifications = bool(sent.get("chat"))
        elif rtype == "set_room":
            self.exercise("R31")
            conn.patient_chat = bool(sent.get("patient_initiated_chat"))
            conn.set_room_windows.append((request.stamp[TIME], stamp[TIME], conn.patient_chat))
        elif rtype == "start_call":
            self.exercise("R20")
            patient = str(sent.get("patient"))
            conn.call = patient
            if patient in conn.present:
                conn.present[patient][0] = "in_call"
            conn.call_windows.append((request.stamp[TIME], stamp[TIME], True))
            conn.calls_started.append((patient, stamp))
        elif rtype == "end_call":
            self.exercise("R20")
            conn.call_windows.append((request.stamp[TIME], stamp[TIME], False))

    def _check_open_chat(self, conn: ConsoleConnection, patient: str, frame: dict[str, Any],
                         sent_at: HistoryPosition,
                         answered_at: HistoryPosition) -> None:
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
                ids.append(int_field(message.get("id")))
        else:
            self.violation("R4", "open_chat's ok has no messages list", conn)
            return
        if any(b <= a for a, b in itertools.pairwise(ids)):
            self.violation("R4", "open_chat's messages are not in id order", conn)
        agent = self.connections.clinicians[conn.agent]
        by_refresh = highest_known_before(agent.seen_max.get(patient), sent_at, answered_at)
        said = max(conn.erased_upto.get(patient, 0),
                   highest_known_before(agent.erased_said.get(patient), sent_at, answered_at))
        erased = max(said, by_refresh)
        if said:
            self.exercise("R13")  # the server said it erased them: nothing of them may come back
        if by_refresh:
            self.exercise("R12")
        readable = [i for i in ids if i <= erased]
        if readable:
            # Erased, as the server itself said (erased{...}), yet returned: the text was kept (R13). Erased
            # only by the refresh, unannounced: the refresh did not erase (R12).
            rule = "R13" if any(i <= said for i in readable) or (self.refresh_erases and any(
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

    def _note_delivery(self, conn: ConsoleConnection, frame: dict[str, Any], stamp: HistoryPosition) -> int:
        """Record a patient's message as delivered to this console (order and duplicates checked)."""
        patient = str(frame.get("patient"))
        message_id = int_field(frame.get("id"))
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
                               int_field(frame.get("ts")), stamp)
        return message_id

    def _patient_message(self, conn: ConsoleConnection, frame: dict[str, Any],
                         stamp: HistoryPosition) -> None:
        patient = str(frame.get("patient"))
        if frame.get("from") != "patient":
            self.violation("R1", f"the clinician received a message from {frame.get('from')!r}", conn)
            return
        if patient not in conn.present:
            agent = self.connections.clinicians[conn.agent]
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
            expect.append((optional({"type": "chat_box", "reason": "auto_open"}), "R6",
                           "auto-open, perhaps"))
            expect.append((optional({"type": "unread", "patient": patient}), "R3", "the badge, perhaps"))
            expect.append((optional({"type": "notify", "patient": patient, "id": message_id}), "R10",
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

    def _patient_left(self, conn: ConsoleConnection, frame: dict[str, Any], stamp: HistoryPosition) -> None:
        patient = str(frame.get("patient"))
        if patient not in conn.present:
            self.violation("R9", f"patient_left for {patient}, who is not in this console's queue", conn)
            return
        self._apply(conn, frame, stamp)
        self.exercise("R9")
        if frame.get("reason") == "disconnected":
            self.exercise("R45")
        if conn.box_unknown:
            conn.expect.append((optional({"type": "chat_box", "patient": patient, "reason": "patient_left"}),
                                "R9", "the box, if it shows the patient who left"))
            conn.expect.append((optional({"type": "erased", "patient": patient, "reason": "not_in_view"}),
                                "R11", "erased, if the box does not show them"))
        elif conn.box_patient == patient:
            conn.expect.append(({"type": "chat_box", "state": conn.box_state, "patient": patient,
                                 "patient_present": False, "reason": "patient_left"}, "R9",
                                "the box shows the patient who left"))
        else:
            self.exercise("R11")
            conn.expect.append(({"type": "erased", "patient": patient, "reason": "not_in_view"}, "R11",
                                "a departed patient not in the chat box is erased at departure"))

    def _expected(self, conn: ConsoleConnection, request: Request,
                  judge: bool = True) -> list[tuple[dict[str, Any], str, str]]:
        """What the server must send for ``request``, given the console now: effects, then the answer.
        ``judge`` False: only a look (nothing counted as exercised)."""
        mark = self.exercise if judge else _count_nothing
        sent = request.frame
        rtype = request.type
        ref = request.ref
        ok: dict[str, Any] = {"type": "ok", "ref": ref}
        out: list[tuple[dict[str, Any], str, str]] = []
        present = conn.present
        held = conn.box_patient if conn.box_patient is not None and conn.box_patient not in present else None
        known_departed = self.connections.clinicians[conn.agent].known_departed

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
            if length == 0 and isinstance(length, int) and not isinstance(length, bool):
                mark("R40")  # a field's shape comes before the patient's state (Errors: the order)
                return error("invalid", "R40", "an empty text is invalid")
            limit = self.connections.limit(conn.room, "max_text_chars", 4096)
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

    def _welcome(self, conn: ConsoleConnection, frame: dict[str, Any], stamp: HistoryPosition) -> None:
        conn.welcome = stamp
        agent = self.connections.clinicians[conn.agent]
        previous = [c for c in agent.consoles if c is not conn and c.welcome is not None]
        for older in previous:
            for patient, last in older.last_id.items():
                agent.seen_max.setdefault(patient, []).append((stamp, last))
        queue = frame.get("queue") or []
        conn.present = {str(e.get("patient")): [str(e.get("state")), int_field(e.get("unread"))]
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
            conn.set_room_windows.append((conn.hello[TIME], stamp[TIME], conn.patient_chat))
        if not previous:
            return
        self.exercise("R12")
        older = previous[-1]
        replacing, hello = older.replacing, conn.hello
        replaced_now = replacing is not None and hello is not None and replacing[TIME] == hello[TIME]
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
                other = self.connections.patients_by_id.get((conn.room, patient))
                if other is None or not entry[1]:
                    continue
                before = sum(1 for s in other.sends.values() if s.ok[TIME] < trouble)
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

    def finish(self, console: ConsoleConnection, complete: bool) -> None:
        """The run ended: frames still held have no cause; frames still due on an open console never came."""
        self.flush_early(console)
        if console.expect and console.close is None and complete:
            spec, rule, why = console.expect[0]
            self.violation(rule, f"expected {describe(spec)} ({why}); the run ended first", console)
