"""Hypothesis drives the real QueueChatModel against a small reference model written from the contract.

The reference model below is written from ``docs/protocol.md`` and the
"choices" section of ``docs/protocol.md`` only; it does not import or copy the
domain code. One room; a clinician who comes, goes and is replaced; patients
who check in, write, leave, drop and get called. After every step the frames
the real model produced, per connection and in order, must equal the ones the
reference predicts (types, fields, ids, timestamps, answers and error codes),
and invariants hold: the box, privacy between patients, consecutive ids, and
nothing of an erased conversation reachable from the model.

A second, property-based test feeds random JSON-ish text to welcomed
connections: the model never raises, answers each frame exactly once, and the
session stays usable.
"""

from __future__ import annotations

import gc
import itertools
import json
import types
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from reference_server._codec import encode
from reference_server.domain import Close, Effect, QueueChatModel, Send
from reference_server.protocol import clinician_token

SECRET = "statemachine-secret"
ROOM = "sm-room"
T0 = 1_767_225_600.0
STEP = 0.125  # exact in binary, so that ms timestamps have no rounding question
CLOSE = "<close>"
CAUSE_ORDER = ("patient_left", "erased", "message", "chat_box", "unread", "notify")
MAX_TEXT = 4096  # R41 default
OPEN_CHAT_LAST = 500  # R4

# The limits the contract lists, with its defaults (R41-R45).
CONTRACT_LIMITS = {
    "max_text_chars": 4096, "max_frame_bytes": 65536, "max_queued_frames": 1024,
    "max_queued_bytes": 4 * 1024 * 1024, "rate_per_s": 100, "rate_burst": 200,
    "max_patients_per_room": 500, "max_rooms": 10_000, "hello_timeout_s": 10,
    "ping_interval_s": 20, "ping_timeout_s": 60,
}


class _Ids:
    """Deterministic patient ids (fixed width, so no id is a prefix of another)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"sm-{self.n:06d}"


def _frames(model: QueueChatModel, effects: list[Effect]) -> dict[int, list[dict[str, Any]]]:
    """Effects as JSON dicts per connection, with the ``position`` pushes a PositionsChanged announced
    after them (as the shell's flusher expands them); error messages checked and dropped (they are
    for people)."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for effect in model.with_positions(effects):
        if isinstance(effect, Close):
            out[effect.conn].append({"type": CLOSE, "code": effect.code})
            continue
        assert isinstance(effect, Send)
        frame = json.loads(encode(effect.frame))
        if frame["type"] == "error":
            assert isinstance(frame.pop("message"), str)
            assert ("field" in frame) == (frame["code"] == "invalid"), frame
        out[effect.conn].append(frame)
    return out


def _reachable_strings(root: object) -> set[str]:
    """Every str reachable from ``root`` by gc.get_referents, not entering code, types or modules."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
            types.MethodDescriptorType, types.WrapperDescriptorType)
    seen: set[int] = set()
    found: set[str] = set()
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            found.add(obj)
        elif not isinstance(obj, skip):
            stack.extend(gc.get_referents(obj))
    return found


# --------------------------------------------------------------------------- the reference model


@dataclass
class RefPatient:
    pid: str
    name: str
    conn: int
    joined_at: int
    state: str = "waiting"  # waiting, in_call, departed
    next_id: int = 1
    conversation: list[dict[str, Any]] = field(default_factory=list)  # as open_chat returns it
    unread: int = 0
    clinician_wrote: bool = False


def _box(state: str, patient: str | None, present: bool, reason: str) -> dict[str, Any]:
    return {"type": "chat_box", "state": state, "patient": patient, "patient_present": present,
            "reason": reason}


def _err(code: str, ref: str | None) -> dict[str, Any]:
    return {"type": "error", "code": code, **({"ref": ref} if ref is not None else {})}


def _ok(ref: str | None, **fields: Any) -> dict[str, Any]:
    return {"type": "ok", **({"ref": ref} if ref is not None else {}), **fields}


texts = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="-"), max_size=12)
client_ts = st.none() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
rarely = st.integers(0, 11).map(lambda n: n == 0)
target_kind = st.sampled_from(["present"] * 5 + ["departed"] * 2 + ["unknown"])
index = st.integers(0, 50)


class QueueChatMachine(RuleBasedStateMachine):
    """One room of the real model, next to the reference's prediction of it."""

    def __init__(self) -> None:
        super().__init__()
        self.model = QueueChatModel(secret=SECRET, new_patient_id=_Ids())
        self.now = T0
        self.conns = itertools.count(1)
        self.refs = itertools.count(1)
        self.pids = itertools.count(1)
        self.text_numbers = itertools.count(1)
        # The reference room.
        self.clinician: int | None = None
        self.box_state = "closed"
        self.box_pid: str | None = None
        self.notifications = True
        self.patient_initiated_chat = True
        self.call: str | None = None
        self.present: dict[str, RefPatient] = {}  # check-in order
        self.departed: dict[str, RefPatient] = {}  # remembered while the room is active (R9)
        self.ever_departed: list[str] = []
        self.names: dict[str, str] = {}
        # What the checks need.
        self.exp: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.erased_texts: set[str] = set()
        self.gone_names: set[str] = set()
        self.ok_ids: dict[str, list[int]] = defaultdict(list)  # ids of successful sends, per patient
        self.message_ids: dict[str, list[int]] = defaultdict(list)  # ids of message events, per patient

    # ------------------------------------------------------------------ helpers

    def tick(self) -> float:
        self.now += STEP
        return self.now

    def ms(self) -> int:
        return int(self.now * 1000)

    def ref(self) -> str | None:
        n = next(self.refs)
        return None if n % 3 == 0 else f"r{n}"

    def push(self, conn: int, frame: dict[str, Any]) -> None:
        self.exp[conn].append(frame)

    def status(self) -> str:
        if self.clinician is None:
            return "away"
        return "on_call" if self.call is not None else "online"

    def positions(self) -> dict[str, int]:
        waiting = [pid for pid, p in self.present.items() if p.state == "waiting"]
        return {pid: n for n, pid in enumerate(waiting, start=1)}

    def push_changes(self, status_before: str, positions_before: dict[str, int]) -> None:
        """R30: provider status to every present patient on a change; then changed positions."""
        status = self.status()
        if status != status_before:
            for p in self.present.values():
                self.push(p.conn, {"type": "provider_status", "status": status})
        for pid, position in self.positions().items():
            if positions_before.get(pid) != position:
                self.push(self.present[pid].conn, {"type": "position", "position": position})

    def erase(self, p: RefPatient) -> None:
        self.erased_texts.update(m["text"] for m in p.conversation)
        p.conversation = []
        if p.state == "departed":
            self.gone_names.add(p.name)

    def box_shows_departed(self) -> RefPatient | None:
        return self.departed.get(self.box_pid) if self.box_pid is not None else None

    def depart(self, pid: str, reason: str) -> None:
        status_before, positions_before = self.status(), self.positions()
        p = self.present.pop(pid)
        p.state, p.unread = "departed", 0
        self.departed[pid] = p
        self.ever_departed.append(pid)
        if self.call == pid:
            self.call = None
        if self.clinician is not None:
            self.push(self.clinician, {"type": "patient_left", "patient": pid, "reason": reason})
        if self.box_pid == pid:  # R9: the box says so, state unchanged
            assert self.clinician is not None
            self.push(self.clinician, _box(self.box_state, pid, False, "patient_left"))
        else:  # R11: not in the box at departure
            self.erase(p)
            if self.clinician is not None:
                self.push(self.clinician, {"type": "erased", "patient": pid, "reason": "not_in_view"})
        self.push_changes(status_before, positions_before)

    def maybe_idle(self) -> None:
        if self.clinician is None and not self.present:
            self.departed.clear()  # choice 11: an idle room forgets its departed ids

    def refresh(self, old_conn: int | None) -> None:
        """R12: every conversation the console held is erased; badges 0; box closed."""
        held = [p for p in (self.box_shows_departed(),) if p is not None] + list(self.present.values())
        for p in held:
            self.erase(p)
            p.unread = 0
            if old_conn is not None:
                self.push(old_conn, {"type": "erased", "patient": p.pid, "reason": "refresh"})
        self.box_state, self.box_pid = "closed", None

    def target(self, kind: str, i: int) -> str:
        if kind == "present" and self.present:
            return list(self.present)[i % len(self.present)]
        if kind == "departed" and self.ever_departed:
            return self.ever_departed[i % len(self.ever_departed)]
        return "sm-unknown"

    def new_text(self, body: str, too_long: bool) -> str:
        if too_long:
            return "L" * (MAX_TEXT + 1)
        return f"T{next(self.text_numbers)}:{body}"

    def run(self, conn: int, frame: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
        return _frames(self.model, self.model.receive(conn, json.dumps(frame), self.tick()))

    def check(self, got: dict[int, list[dict[str, Any]]], *, sort_erased: int | None = None) -> None:
        expected = {conn: frames for conn, frames in self.exp.items() if frames}
        actual = {conn: frames for conn, frames in got.items() if frames}
        if sort_erased is not None:
            for frames in (expected.get(sort_erased, []), actual.get(sort_erased, [])):
                erased = sorted((f for f in frames if f["type"] == "erased"), key=lambda f: str(f["patient"]))
                rest = [f for f in frames if f["type"] != "erased"]
                frames[:] = erased + rest
        assert actual == expected
        for frames in actual.values():  # the contract's order of one cause's frames, then the answer
            ranks = [CAUSE_ORDER.index(f["type"]) for f in frames if f["type"] in CAUSE_ORDER]
            assert ranks == sorted(ranks), frames
            answered = [i for i, f in enumerate(frames) if f["type"] in ("ok", "error", "welcome")]
            if answered:
                assert all(f["type"] not in CAUSE_ORDER for f in frames[answered[0]:]), frames
        self.exp = defaultdict(list)
        self.check_privacy_between_patients(actual)
        self.record_message_ids(actual)

    def check_privacy_between_patients(self, got: dict[int, list[dict[str, Any]]]) -> None:
        """No frame to a patient carries another patient's id or name."""
        owner = {p.conn: p.pid for p in [*self.present.values(), *self.departed.values()]}
        for conn, frames in got.items():
            if conn == self.clinician or conn not in owner:
                continue
            text = json.dumps(frames)
            for pid, name in self.names.items():
                if pid != owner[conn]:
                    assert pid not in text and name not in text, (conn, frames)

    def record_message_ids(self, got: dict[int, list[dict[str, Any]]]) -> None:
        for frames in got.values():
            for f in frames:
                if f["type"] == "message":
                    self.message_ids[f["patient"]].append(f["id"])

    # ------------------------------------------------------------------ clinician lifecycle

    def do_clinician_hello(self) -> None:
        """R12: a new hello replaces a live connection (erased{refresh}, 4000); else it erases nothing."""
        conn = next(self.conns)
        self.model.connect(conn, self.tick())
        old = self.clinician
        status_before, positions_before = self.status(), self.positions()
        if old is not None:
            self.refresh(old)
            self.push(old, {"type": CLOSE, "code": 4000})
        self.clinician = conn
        ref = self.ref()
        welcome = {
            "type": "welcome",
            **({"ref": ref} if ref is not None else {}),
            "room": ROOM,
            "queue": [{"patient": p.pid, "name": p.name, "state": p.state, "unread": p.unread,
                       "joined_at": p.joined_at} for p in self.present.values()],
            "chat_box": {"state": "closed", "patient": None, "patient_present": False},
            "call": {"patient": self.call} if self.call is not None else None,
            "settings": {"chat_notifications": self.notifications},
            "room_settings": {"patient_initiated_chat": self.patient_initiated_chat},
            "provider_status": self.status(),
            "limits": CONTRACT_LIMITS,
        }
        self.push(conn, welcome)
        self.push_changes(status_before, positions_before)
        hello = {"type": "hello", "role": "clinician", "room": ROOM, "token": clinician_token(SECRET, ROOM)}
        if ref is not None:
            hello["ref"] = ref
        self.check(self.run(conn, hello), sort_erased=old)
        if old is not None:
            assert self.model.disconnected(old, self.tick()) == []  # one refresh per connection

    def do_clinician_drops(self) -> None:
        """R12: the connection ending is a refresh; patients see away (R30)."""
        assert self.clinician is not None
        conn = self.clinician
        status_before, positions_before = self.status(), self.positions()
        self.refresh(None)
        self.clinician = None
        self.push_changes(status_before, positions_before)
        self.maybe_idle()
        self.check(_frames(self.model, self.model.disconnected(conn, self.tick())))

    # ------------------------------------------------------------------ patients

    def do_patient_hello(self) -> None:
        """A patient checks in: welcome to them, patient_joined to the clinician."""
        conn = next(self.conns)
        self.model.connect(conn, self.tick())
        n = next(self.pids)
        pid, name = f"sm-{n:06d}", f"Nm-{n:06d}"
        self.names[pid] = name
        p = RefPatient(pid=pid, name=name, conn=conn, joined_at=int((self.now + STEP) * 1000))  # run() ticks
        self.present[pid] = p
        position = self.positions()[pid]
        ref = self.ref()
        self.push(conn, {"type": "welcome", **({"ref": ref} if ref is not None else {}), "patient": pid,
                         "position": position, "provider_status": self.status(),
                         "patient_initiated_chat": self.patient_initiated_chat})
        if self.clinician is not None:
            self.push(self.clinician, {"type": "patient_joined", "patient": pid, "name": name,
                                       "position": position, "joined_at": p.joined_at})
        hello = {"type": "hello", "role": "patient", "room": ROOM, "name": name}
        if ref is not None:
            hello["ref"] = ref
        self.check(self.run(conn, hello))

    def do_patient_sends(self, i: int, body: str, cts: int | float | None, too_long: bool) -> None:
        """R1, R3, R6-R8, R10, R31, R41 from the patient's side."""
        p = self.present[self.target("present", i)]
        text, ref = self.new_text(body, too_long), self.ref()
        self.tick()
        if too_long:
            answer = _err("too_large", ref)
        elif p.state == "waiting" and not self.patient_initiated_chat and not p.clinician_wrote:
            answer = _err("chat_disabled", ref)
        else:
            message = {"patient": p.pid, "id": p.next_id, "from": "patient", "text": text, "ts": self.ms(),
                       **({"client_ts": cts} if cts is not None else {})}
            p.next_id += 1
            p.conversation.append(message)
            if self.clinician is None:
                p.unread += 1  # counted, not pushed (R3, R12)
            else:
                self.push(self.clinician, {"type": "message", **message})
                if self.box_state == "minimized":  # R6
                    self.box_state = "open"
                    self.push(self.clinician, _box("open", self.box_pid, self.box_pid in self.present,
                                                   "auto_open"))
                if not (self.box_state == "open" and self.box_pid == p.pid):  # not shown
                    p.unread += 1
                    self.push(self.clinician, {"type": "unread", "patient": p.pid, "count": p.unread})
                    if self.notifications:
                        self.push(self.clinician, {"type": "notify", "patient": p.pid, "id": message["id"]})
            answer = _ok(ref, id=message["id"], ts=message["ts"])
        self.push(p.conn, answer)
        frame: dict[str, Any] = {"type": "send", "text": text}
        if cts is not None:
            frame["client_ts"] = cts
        if ref is not None:
            frame["ref"] = ref
        self.now -= STEP  # run() ticks again
        self.check(self.run(p.conn, frame))
        if answer["type"] == "ok":
            self.ok_ids[p.pid].append(answer["id"])

    def do_patient_leaves(self, i: int) -> None:
        """leave: ok then close 1000; the clinician hears patient_left{left}."""
        p = self.present[self.target("present", i)]
        ref = self.ref()
        self.push(p.conn, _ok(ref))
        self.push(p.conn, {"type": CLOSE, "code": 1000})
        self.depart(p.pid, "left")
        self.maybe_idle()
        self.check(self.run(p.conn, {"type": "leave", **({"ref": ref} if ref is not None else {})}))
        assert self.model.disconnected(p.conn, self.tick()) == []

    def do_patient_drops(self, i: int) -> None:
        """A lost connection departs the patient (disconnected)."""
        p = self.present[self.target("present", i)]
        self.depart(p.pid, "disconnected")
        self.maybe_idle()
        self.check(_frames(self.model, self.model.disconnected(p.conn, self.tick())))

    # ------------------------------------------------------------------ clinician requests

    @precondition(lambda self: self.clinician is not None)
    @rule(kind=target_kind, i=index, body=texts, cts=client_ts, too_long=rarely)
    def clinician_sends(self, kind: str, i: int, body: str, cts: int | float | None, too_long: bool) -> None:
        """R1 from the clinician; R9 patient_gone; not_found; too_large first (choice 15)."""
        assert self.clinician is not None
        pid, text, ref = self.target(kind, i), self.new_text(body, too_long), self.ref()
        self.tick()
        if too_long:
            answer = _err("too_large", ref)
        elif pid in self.present:
            p = self.present[pid]
            message = {"patient": pid, "id": p.next_id, "from": "clinician", "text": text, "ts": self.ms(),
                       **({"client_ts": cts} if cts is not None else {})}
            p.next_id += 1
            p.clinician_wrote = True
            p.conversation.append(message)
            self.push(p.conn, {"type": "message", **message})
            answer = _ok(ref, id=message["id"], ts=message["ts"])
        elif pid in self.departed:
            answer = _err("patient_gone", ref)
        else:
            answer = _err("not_found", ref)
        self.push(self.clinician, answer)
        frame: dict[str, Any] = {"type": "send", "patient": pid, "text": text}
        if cts is not None:
            frame["client_ts"] = cts
        if ref is not None:
            frame["ref"] = ref
        self.now -= STEP
        self.check(self.run(self.clinician, frame))
        if answer["type"] == "ok":
            self.ok_ids[pid].append(answer["id"])

    def do_open_chat(self, kind: str, i: int) -> None:
        """R4, R11b: present patients, the departed one in the box, else not_found."""
        assert self.clinician is not None
        c, pid, ref = self.clinician, self.target(kind, i), self.ref()
        shown_departed = self.box_shows_departed()
        t = self.present.get(pid)
        if t is None and shown_departed is not None and shown_departed.pid == pid:
            t = shown_departed
        if t is None:
            self.push(c, _err("not_found", ref))
        else:
            if not (self.box_pid == pid and self.box_state == "open"):
                if shown_departed is not None and shown_departed.pid != pid:  # R11 b
                    self.erase(shown_departed)
                    self.push(c, {"type": "erased", "patient": shown_departed.pid, "reason": "viewed_other"})
                    self.push(c, _box("closed", None, False, "erased"))
                self.box_state, self.box_pid = "open", pid
                self.push(c, _box("open", pid, pid in self.present, "open_chat"))
            if t.unread:
                t.unread = 0
                self.push(c, {"type": "unread", "patient": pid, "count": 0})
            self.push(c, _ok(ref, messages=t.conversation[-OPEN_CHAT_LAST:],
                             truncated=len(t.conversation) > OPEN_CHAT_LAST))
        self.check(self.run(c, {"type": "open_chat", "patient": pid, **({"ref": ref} if ref else {})}))

    def do_minimize_chat(self) -> None:
        """R5: open -> minimized; otherwise no change, no push."""
        assert self.clinician is not None
        ref = self.ref()
        if self.box_state == "open":
            self.box_state = "minimized"
            self.push(self.clinician, _box("minimized", self.box_pid, self.box_pid in self.present,
                                           "minimize_chat"))
        self.push(self.clinician, _ok(ref))
        self.check(self.run(self.clinician, {"type": "minimize_chat", **({"ref": ref} if ref else {})}))

    def do_close_chat(self) -> None:
        """R5, R11a: closing erases a departed conversation first."""
        assert self.clinician is not None
        ref = self.ref()
        if self.box_state != "closed":
            shown_departed = self.box_shows_departed()
            if shown_departed is not None:
                self.erase(shown_departed)
                self.push(self.clinician, {"type": "erased", "patient": shown_departed.pid,
                                           "reason": "chat_closed"})
            self.box_state, self.box_pid = "closed", None
            self.push(self.clinician, _box("closed", None, False, "close_chat"))
        self.push(self.clinician, _ok(ref))
        self.check(self.run(self.clinician, {"type": "close_chat", **({"ref": ref} if ref else {})}))

    def do_set_notifications(self, on: bool) -> None:
        """R10: a setting; pushes nothing."""
        assert self.clinician is not None
        ref = self.ref()
        self.notifications = on
        self.push(self.clinician, _ok(ref))
        self.check(self.run(self.clinician, {"type": "set_notifications", "chat": on,
                                             **({"ref": ref} if ref else {})}))

    def do_set_room(self, on: bool) -> None:
        """R31: room_settings pushed to present patients when the value changes."""
        assert self.clinician is not None
        ref = self.ref()
        if on != self.patient_initiated_chat:
            self.patient_initiated_chat = on
            for p in self.present.values():
                self.push(p.conn, {"type": "room_settings", "patient_initiated_chat": on})
        self.push(self.clinician, _ok(ref))
        self.check(self.run(self.clinician, {"type": "set_room", "patient_initiated_chat": on,
                                             **({"ref": ref} if ref else {})}))

    @precondition(lambda self: self.clinician is not None)
    @rule(kind=target_kind, i=index)
    def start_call(self, kind: str, i: int) -> None:
        """R20, R11c, R30: not_found, patient_gone, call_in_progress; else the call starts."""
        assert self.clinician is not None
        c, pid, ref = self.clinician, self.target(kind, i), self.ref()
        if pid in self.present:
            if self.call is not None:
                self.push(c, _err("call_in_progress", ref))
            else:
                status_before, positions_before = self.status(), self.positions()
                p = self.present[pid]
                p.state, self.call = "in_call", pid
                shown_departed = self.box_shows_departed()
                if shown_departed is not None:
                    self.erase(shown_departed)
                    self.push(c, {"type": "erased", "patient": shown_departed.pid, "reason": "call_started"})
                    self.box_state, self.box_pid = "closed", None
                    self.push(c, _box("closed", None, False, "erased"))
                self.push(p.conn, {"type": "call", "state": "started"})
                self.push_changes(status_before, positions_before)
                self.push(c, _ok(ref))
        elif pid in self.departed:
            self.push(c, _err("patient_gone", ref))
        else:
            self.push(c, _err("not_found", ref))
        self.check(self.run(c, {"type": "start_call", "patient": pid, **({"ref": ref} if ref else {})}))

    @precondition(lambda self: self.clinician is not None and self.call is not None)
    @rule()
    def end_call(self) -> None:
        """R20: the patient gets call{ended} and close 1000, and departs (call_ended)."""
        assert self.clinician is not None
        c, ref = self.clinician, self.ref()
        patient_conn = None
        if self.call is None:
            self.push(c, _err("not_in_call", ref))
        else:
            p = self.present[self.call]
            patient_conn = p.conn
            self.push(p.conn, {"type": "call", "state": "ended"})
            self.push(p.conn, {"type": CLOSE, "code": 1000})
            self.depart(p.pid, "call_ended")
            self.push(c, _ok(ref))
        self.check(self.run(c, {"type": "end_call", **({"ref": ref} if ref else {})}))
        if patient_conn is not None:
            assert self.model.disconnected(patient_conn, self.tick()) == []

    # ------------------------------------------------------------------ anyone

    @precondition(lambda self: self.clinician is not None or bool(self.present))
    @rule(i=index)
    def ping(self, i: int) -> None:
        """ping answers ok and does nothing else."""
        conns = [*([self.clinician] if self.clinician is not None else []),
                 *(p.conn for p in self.present.values())]
        conn, ref = conns[i % len(conns)], self.ref()
        self.push(conn, _ok(ref))
        self.check(self.run(conn, {"type": "ping", **({"ref": ref} if ref else {})}))

    @rule(seconds=st.sampled_from([1.0, 30.0, 3600.0]))
    def time_passes(self, seconds: float) -> None:
        """Time is an argument: nothing happens while it passes."""
        self.now += seconds

    # ------------------------------------------------------------------ the rules Hypothesis picks from
    # Hypothesis picks uniformly among enabled rules: the common actions appear twice, rarer ones share.

    @initialize(clinician_first=st.booleans(), patients=st.integers(0, 3), patient_chat=st.booleans(),
                notifications=st.booleans())
    def start(self, clinician_first: bool, patients: int, patient_chat: bool, notifications: bool) -> None:
        """A clinician and a few patients, in either order; the settings start either way (R10, R31)."""
        if clinician_first:
            self.do_clinician_hello()
        for _ in range(patients):
            self.do_patient_hello()
        if not clinician_first:
            self.do_clinician_hello()
        if not patient_chat:
            self.do_set_room(False)
        if not notifications:
            self.do_set_notifications(False)

    @precondition(lambda self: self.clinician is None)
    @rule()
    def clinician_hello(self) -> None:
        self.do_clinician_hello()

    @precondition(lambda self: self.clinician is not None)
    @rule(replaced=st.booleans())
    def clinician_goes(self, replaced: bool) -> None:
        """The clinician's page ends: the connection drops, or a new hello replaces it (R12)."""
        if replaced:
            self.do_clinician_hello()
        else:
            self.do_clinician_drops()

    @precondition(lambda self: len(self.present) < 6)
    @rule()
    def patient_hello(self) -> None:
        self.do_patient_hello()

    @precondition(lambda self: len(self.present) < 6)
    @rule()
    def another_patient_hello(self) -> None:
        self.do_patient_hello()

    @precondition(lambda self: bool(self.present))
    @rule(i=index, body=texts, cts=client_ts, too_long=rarely)
    def patient_sends(self, i: int, body: str, cts: int | float | None, too_long: bool) -> None:
        self.do_patient_sends(i, body, cts, too_long)

    @precondition(lambda self: bool(self.present))
    @rule(i=index, body=texts, cts=client_ts, too_long=rarely)
    def patient_sends_again(self, i: int, body: str, cts: int | float | None, too_long: bool) -> None:
        self.do_patient_sends(i, body, cts, too_long)

    @precondition(lambda self: bool(self.present))
    @rule(i=index, leaves=st.booleans())
    def patient_departs(self, i: int, leaves: bool) -> None:
        if leaves:
            self.do_patient_leaves(i)
        else:
            self.do_patient_drops(i)

    @precondition(lambda self: self.box_pid in self.present)
    @rule(leaves=st.booleans())
    def shown_patient_departs(self, leaves: bool) -> None:
        """The patient whose conversation the box shows departs (then R9, R11 apply)."""
        assert self.box_pid is not None
        i = list(self.present).index(self.box_pid)
        if leaves:
            self.do_patient_leaves(i)
        else:
            self.do_patient_drops(i)

    @precondition(lambda self: self.clinician is not None)
    @rule(kind=target_kind, i=index)
    def open_chat(self, kind: str, i: int) -> None:
        self.do_open_chat(kind, i)

    @precondition(lambda self: self.clinician is not None and bool(self.present))
    @rule(i=index)
    def open_chat_present(self, i: int) -> None:
        self.do_open_chat("present", i)

    @precondition(lambda self: self.clinician is not None)
    @rule(close=st.sampled_from([False, False, True]))
    def box_button(self, close: bool) -> None:
        """The box's own buttons: minimize (more often) or close."""
        if close:
            self.do_close_chat()
        else:
            self.do_minimize_chat()

    @precondition(lambda self: self.clinician is not None)
    @rule(room_setting=st.booleans(), on=st.booleans())
    def change_setting(self, room_setting: bool, on: bool) -> None:
        """R10 chat notifications or R31 patient-initiated chat."""
        if room_setting:
            self.do_set_room(on)
        else:
            self.do_set_notifications(on)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def box_always_consistent(self) -> None:
        """A closed box shows no one; an open or minimized box always shows a patient (R5)."""
        assert (self.box_state == "closed") == (self.box_pid is None)
        if self.box_pid is not None:
            assert self.clinician is not None
            assert self.box_pid in self.present or self.box_pid in self.departed

    @invariant()
    def message_ids_increase_by_one(self) -> None:
        """Per patient, the sends' ids are 1, 2, 3, ... and message events carry increasing ids (R1)."""
        for pid, ids in self.ok_ids.items():
            assert ids == list(range(1, len(ids) + 1)), (pid, ids)
        for pid, ids in self.message_ids.items():
            assert all(x < y for x, y in itertools.pairwise(ids)), (pid, ids)
        for p in [*self.present.values(), *self.departed.values()]:
            assert [m["id"] for m in p.conversation] == sorted(m["id"] for m in p.conversation)

    @invariant()
    def nothing_erased_is_reachable(self) -> None:
        """R13: no erased text, and no erased departed patient's name, is reachable from the model."""
        if not self.erased_texts and not self.gone_names:
            return
        reachable = _reachable_strings(self.model)
        assert not (self.erased_texts & reachable)
        assert not (self.gone_names & reachable)
        live = {m["text"] for p in [*self.present.values(), *self.departed.values()] for m in p.conversation}
        assert live <= reachable  # positive control: what is readable is there


TestQueueChatModel = QueueChatMachine.TestCase
TestQueueChatModel.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- random input


REQUEST_TYPE_NAMES = ["hello", "ping", "send", "open_chat", "minimize_chat", "close_chat",
                      "set_notifications", "set_room", "start_call", "end_call", "leave"]
FIELD_NAMES = ["patient", "text", "client_ts", "ref", "chat", "patient_initiated_chat", "role", "room",
               "name", "token"]
# Any code point, with lone surrogates and control characters made common.
# (st.text would merge the alphabets into one and draw a surrogate about once in 500 characters.)
wild_text = st.lists(
    st.characters(codec=None) | st.characters(categories=["Cs"]) | st.characters(max_codepoint=0x1F),
    max_size=12,
).map("".join)
JSON_LEAVES = (
    st.none() | st.booleans() | st.integers() | st.integers(-(10**40), 10**40)
    | st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 0])
    | st.floats() | wild_text
)
json_values = st.recursive(
    JSON_LEAVES,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELD_NAMES) | wild_text, children, max_size=4)),
    max_leaves=12,
)


def _encode(value: Any, ascii_only: bool) -> str:
    # A WebSocket text frame is valid UTF-8: lone surrogates reach the server only as \u escapes.
    return json.dumps(value, ensure_ascii=True) if ascii_only else _dumps_utf8(value)


def _dumps_utf8(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True)
    return text


@st.composite
def typed_frames(draw: st.DrawFn, known_ids: tuple[str, ...]) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": draw(st.sampled_from(REQUEST_TYPE_NAMES) | wild_text)}
    keys = st.sampled_from(FIELD_NAMES) | wild_text  # known fields, and unknown ones (ignored)
    for name in draw(st.lists(keys, unique=True, max_size=4)):
        frame[name] = draw(
            wild_text | json_values | st.sampled_from(known_ids) | st.text(min_size=1, max_size=5)
            | st.booleans()
        )
    return frame


RAW_SPECIALS = [
    '{"type":"send","text":"x","client_ts":' + "9" * 5000 + "}",
    '{"type":"send","text":"x","client_ts":NaN}', '{"type":"send","text":"x","client_ts":-Infinity}',
    "[" * 50_000, '{"type":' * 20_000, '{"type":"ping"', '{"type":"ping"}{}', "\x00", "\ufeff{}", " ",
    '{"type":"ping","ref":"\\ud800"}', '{"type":"send","text":"\\udfff"}', '{"type":"ping","type":"ping"}',
]


def raw_frames(known_ids: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(json_values, st.booleans()).map(lambda v: _encode(*v)),
        st.tuples(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.booleans()).map(
            lambda v: _encode(*v)),
        st.tuples(typed_frames(known_ids), st.booleans()).map(lambda v: _encode(*v)),
        st.lists(st.characters() | st.characters(max_codepoint=0x1F), max_size=40).map("".join),  # not JSON
        st.sampled_from(RAW_SPECIALS),
    )


def _welcomed() -> tuple[QueueChatModel, int, int, int, tuple[str, ...]]:
    model = QueueChatModel(secret=SECRET, new_patient_id=_Ids())
    hellos = [
        {"type": "hello", "role": "clinician", "room": ROOM, "token": clinician_token(SECRET, ROOM)},
        {"type": "hello", "role": "patient", "room": ROOM, "name": "Fuzz A"},
        {"type": "hello", "role": "patient", "room": ROOM, "name": "Fuzz B"},
    ]
    ids = []
    for conn, hello in enumerate(hellos, start=1):
        model.connect(conn, T0)
        welcome = _frames(model, model.receive(conn, json.dumps(hello), T0))[conn]
        assert [f["type"] for f in welcome] == ["welcome"]
        ids.append(welcome[0].get("patient"))
    return model, 1, 2, 3, (ids[1], ids[2])


KNOWN_IDS = ("sm-000001", "sm-000002")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=st.lists(st.tuples(st.sampled_from([1, 2, 3]), raw_frames(KNOWN_IDS)), min_size=1, max_size=6))
def test_R40_random_frames_never_raise_and_get_one_answer(inputs: list[tuple[int, str]]) -> None:
    """R40: any text to a welcomed connection gets exactly one ok/error, never an exception; ping works."""
    model, clinician, a, b, ids = _welcomed()
    assert ids == KNOWN_IDS
    now = T0
    closed: set[int] = set()
    for conn, raw in inputs:
        now += 0.02
        effects = model.receive(conn, raw, now)
        got = _frames(model, effects)
        if conn in closed:
            assert effects == []
            continue
        mine = got.get(conn, [])
        answers = [f for f in mine if f["type"] in ("ok", "error")]
        assert len(answers) == 1, (raw, mine)
        assert all(f["type"] != "welcome" for frames in got.values() for f in frames)
        for other, frames in got.items():
            if frames and frames[-1]["type"] == CLOSE:
                # Only a successful leave (that patient) or end_call (the patient in the call) closes.
                assert frames[-1]["code"] == 1000 and other in (a, b), (raw, frames)
                closed.add(other)
        if conn in closed:  # it closed itself: only by a successful leave
            assert conn != clinician and answers[0]["type"] == "ok" and mine[-1]["type"] == CLOSE
    for conn in (clinician, a, b):
        now += 0.02
        got = _frames(model, model.receive(conn, '{"type":"ping","ref":"after"}', now))
        if conn in closed:
            assert got == {}
        else:
            assert got == {conn: [{"type": "ok", "ref": "after"}]}


@given(raw=raw_frames(KNOWN_IDS))
@settings(max_examples=150, deadline=None)
def test_R40_random_first_frames_answer_welcome_or_error_and_close(raw: str) -> None:
    """Before welcome, any text gets either a welcome or an error followed by a close (never an exception)."""
    model = QueueChatModel(secret=SECRET, new_patient_id=_Ids())
    model.connect(1, T0)
    got = _frames(model, model.receive(1, raw, T0))
    frames = got[1]
    if frames[0]["type"] == "welcome":
        assert len(frames) == 1
    else:
        assert frames[0]["type"] == "error" and frames[1]["type"] == CLOSE and len(frames) == 2
        assert frames[1]["code"] == (1013 if frames[0]["code"] == "capacity" else 1008)
