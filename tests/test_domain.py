"""Direct tests of the pure domain model (QueueChatModel): no Trio, no sockets.

A small driver connects clinicians and patients, feeds JSON text with an
explicit clock, and returns the effects (frames as plain dicts, closes as
``{"type": "<close>", "code": ...}``) per connection. Tests are named after
the contract rule they check (``docs/protocol.md``); where the
contract is silent the expectations follow the "choices" section of
``docs/protocol.md``.
"""

from __future__ import annotations

import gc
import itertools
import json
import types
from collections.abc import Iterable
from typing import Any

import pytest

from reference_server import _domain
from reference_server._codec import encode
from reference_server.domain import Close, Effect, PositionsChanged, QueueChatModel, Send
from reference_server.protocol import Limits, clinician_token

SECRET = "domain-test-secret"
ROOM = "room-a"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

# The contract's order of frames that one cause produces for one connection.
CAUSE_ORDER = ("patient_left", "erased", "message", "chat_box", "unread", "notify")
ANSWERS = ("ok", "error", "welcome")
CLOSE = "<close>"


# --------------------------------------------------------------------------- driver


class IdGen:
    """Deterministic patient ids; holds nothing but a counter (the privacy walk reaches it)."""

    def __init__(self, prefix: str = "PID") -> None:
        self.prefix = prefix
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n:06d}"


class Fx(list[tuple[int, dict[str, Any]]]):
    """The effects of one input, as (conn, frame dict) pairs in order."""

    def to(self, conn: int) -> list[dict[str, Any]]:
        return [frame for c, frame in self if c == conn]

    def types(self, conn: int) -> list[str]:
        return [frame["type"] for frame in self.to(conn)]

    def conns(self) -> set[int]:
        return {c for c, _ in self}

    def answer(self, conn: int) -> dict[str, Any]:
        """The one ok/error for ``conn``, asserting there is exactly one."""
        answers = [f for f in self.to(conn) if f["type"] in ("ok", "error")]
        assert len(answers) == 1, self.to(conn)
        return answers[0]

    def events(self, conn: int) -> list[dict[str, Any]]:
        return [f for f in self.to(conn) if f["type"] not in (*ANSWERS, CLOSE)]


def with_positions(model: QueueChatModel, effects: list[Effect]) -> list[Effect]:
    """The effects of one cause, then the ``position`` pushes its PositionsChanged announced, as the
    shell's flusher expands them after the cause (R30, Choice 24)."""
    return list(model.with_positions(effects))


def as_dicts(effects: Iterable[Effect]) -> Fx:
    out = Fx()
    for effect in effects:
        assert not isinstance(effect, PositionsChanged), "expand it with with_positions"
        if isinstance(effect, Send):
            out.append((effect.conn, json.loads(encode(effect.frame))))
        else:
            assert isinstance(effect, Close)
            out.append((effect.conn, {"type": CLOSE, "code": effect.code}))
    return out


class Driver:
    """Connections on one QueueChatModel, with a clock that moves ``step`` seconds per input."""

    def __init__(self, *, limits: Limits | None = None, ids: Any = None, step: float = 0.02) -> None:
        self.ids = ids if ids is not None else IdGen()
        self.model = QueueChatModel(secret=SECRET, new_patient_id=self.ids, limits=limits)
        self.now = T0
        self.step = step
        self._conns = itertools.count(1)

    def tick(self, now: float | None) -> float:
        self.now = now if now is not None else self.now + self.step
        return self.now

    def open(self, now: float | None = None) -> int:
        conn = next(self._conns)
        self.model.connect(conn, self.tick(now))
        return conn

    def raw(self, conn: int, text: str | bytes, *, now: float | None = None) -> Fx:
        return as_dicts(with_positions(self.model, self.model.receive(conn, text, self.tick(now))))

    def send(self, conn: int, type_: str, *, now: float | None = None, **fields: Any) -> Fx:
        return self.raw(conn, json.dumps({"type": type_, **fields}), now=now)

    def drop(self, conn: int, *, now: float | None = None) -> Fx:
        return as_dicts(with_positions(self.model, self.model.disconnected(conn, self.tick(now))))

    def clinician(self, room: str = ROOM, **extra: Any) -> tuple[int, dict[str, Any], Fx]:
        conn = self.open()
        token = clinician_token(SECRET, room)
        fx = self.send(conn, "hello", role="clinician", room=room, token=token, **extra)
        welcome = fx.to(conn)
        assert [f["type"] for f in welcome] == ["welcome"], welcome
        return conn, welcome[0], fx

    def patient(self, name: str = "Test Patient", room: str = ROOM, **extra: Any) -> tuple[int, str, Fx]:
        conn = self.open()
        fx = self.send(conn, "hello", role="patient", room=room, name=name, **extra)
        welcome = fx.to(conn)
        assert [f["type"] for f in welcome] == ["welcome"], welcome
        return conn, welcome[0]["patient"], fx

    def ok(self, conn: int, type_: str, **fields: Any) -> tuple[Fx, dict[str, Any]]:
        fx = self.send(conn, type_, **fields)
        answer = fx.answer(conn)
        assert answer["type"] == "ok", answer
        return fx, answer

    def error(self, conn: int, type_: str, code: str, **fields: Any) -> tuple[Fx, dict[str, Any]]:
        fx = self.send(conn, type_, **fields)
        answer = fx.answer(conn)
        assert answer["type"] == "error" and answer["code"] == code, answer
        return fx, answer


def assert_cause_order(frames: list[dict[str, Any]]) -> None:
    """Frames of one cause for one connection: CAUSE_ORDER, and any answer after all of them."""
    ranks = [CAUSE_ORDER.index(f["type"]) for f in frames if f["type"] in CAUSE_ORDER]
    assert ranks == sorted(ranks), [f["type"] for f in frames]
    answer_at = [i for i, f in enumerate(frames) if f["type"] in ANSWERS]
    if answer_at:
        assert all(f["type"] not in CAUSE_ORDER for f in frames[answer_at[0]:]), [f["type"] for f in frames]


def box(state: str, patient: str | None, present: bool, reason: str) -> dict[str, Any]:
    return {"type": "chat_box", "state": state, "patient": patient, "patient_present": present,
            "reason": reason}


def code_of(frame: dict[str, Any]) -> str:
    return str(frame["code"]) if frame["type"] == "error" else "ok"


@pytest.fixture
def d() -> Driver:
    return Driver()


# --------------------------------------------------------------------------- R1, R2: chatting


def test_R1_patient_message_reaches_clinician(d: Driver) -> None:
    """A patient's send reaches the clinician as message{patient,id,from,text,ts,client_ts}; ok has id, ts."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    fx = d.send(p, "send", text="Sample question", client_ts=1234.5, ref="a1", now=T0 + 10.25)
    assert fx.to(c)[0] == {"type": "message", "patient": pid, "id": 1, "from": "patient",
                           "text": "Sample question", "ts": int((T0 + 10.25) * 1000), "client_ts": 1234.5}
    assert fx.to(p) == [{"type": "ok", "ref": "a1", "id": 1, "ts": int((T0 + 10.25) * 1000)}]


def test_R1_clinician_message_reaches_patient_without_client_ts(d: Driver) -> None:
    """The clinician's send reaches the patient; client_ts is absent when the send had none."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    fx, ok = d.ok(c, "send", patient=pid, text="Reply", ref="c1")
    assert fx.to(p) == [{"type": "message", "patient": pid, "id": 1, "from": "clinician", "text": "Reply",
                         "ts": ok["ts"]}]
    assert ok["id"] == 1 and ok["ref"] == "c1"
    assert fx.to(c) == [ok]


def test_R1_ids_increase_by_one_across_both_directions(d: Driver) -> None:
    """Ids are 1, 2, 3... per conversation, counting both sides' messages; ts is non-decreasing."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    ids, stamps = [], []
    for i in range(6):
        if i % 2:
            _, ok = d.ok(c, "send", patient=pid, text=f"c{i}")
        else:
            _, ok = d.ok(p, "send", text=f"p{i}")
        ids.append(ok["id"])
        stamps.append(ok["ts"])
    assert ids == [1, 2, 3, 4, 5, 6]
    assert stamps == sorted(stamps)


def test_R1_client_ts_integer_and_float_copied_unchanged(d: Driver) -> None:
    """client_ts is copied unchanged (int stays int, float stays float) into the message."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    assert d.send(p, "send", text="x", client_ts=2**53).to(c)[0]["client_ts"] == 2**53
    assert d.send(c, "send", patient=pid, text="y", client_ts=-0.5).to(p)[0]["client_ts"] == -0.5


def test_R2_several_conversations_have_their_own_ids(d: Driver) -> None:
    """A clinician chats with several patients at once; each conversation counts its own ids."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    assert d.ok(c, "send", patient=a, text="to a")[1]["id"] == 1
    assert d.ok(c, "send", patient=b, text="to b")[1]["id"] == 1
    assert d.ok(pb, "send", text="from b")[1]["id"] == 2
    assert d.ok(pa, "send", text="from a")[1]["id"] == 2
    fx, _ = d.ok(c, "send", patient=a, text="again a")
    assert fx.to(pb) == [] and fx.to(pa)[0]["id"] == 3


# --------------------------------------------------------------------------- R3: badges


def test_R3_unread_badge_counts_and_open_chat_resets(d: Driver) -> None:
    """Each unshown patient message adds one to the badge; open_chat sets it to 0 and pushes unread{0}."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    for n in (1, 2, 3):
        fx = d.send(p, "send", text=f"m{n}")
        assert fx.types(c) == ["message", "unread", "notify"]
        assert fx.to(c)[1] == {"type": "unread", "patient": pid, "count": n}
    fx, ok = d.ok(c, "open_chat", patient=pid, ref="o")
    assert fx.to(c)[:2] == [box("open", pid, True, "open_chat"),
                            {"type": "unread", "patient": pid, "count": 0}]
    assert [m["text"] for m in ok["messages"]] == ["m1", "m2", "m3"]
    # While open on the patient, their messages are shown: no badge, no notify.
    fx = d.send(p, "send", text="m4")
    assert fx.types(c) == ["message"]
    # open_chat on a patient with a zero badge pushes no unread.
    _, b, _ = d.patient("B")
    fx, _ = d.ok(c, "open_chat", patient=b)
    assert fx.types(c) == ["chat_box", "ok"]


def test_R3_departure_removes_badge_without_push(d: Driver) -> None:
    """A departing patient's badge is gone with no unread push."""
    c, _, _ = d.clinician()
    p, _, _ = d.patient()
    d.send(p, "send", text="hi")
    fx = d.send(p, "leave")
    assert fx.types(c) == ["patient_left", "erased"]
    assert d.clinician()[1]["queue"] == []


def test_R3_R12_messages_while_no_clinician_are_counted_and_readable(d: Driver) -> None:
    """With no clinician, messages are kept and counted (no push), shown in the welcome, read by open_chat."""
    p, pid, _ = d.patient()
    fx = d.send(p, "send", text="anyone there?")
    assert fx.to(p)[0]["type"] == "ok" and fx.conns() == {p}
    d.send(p, "send", text="hello?")
    c, welcome, fx = d.clinician()
    assert welcome["queue"][0]["unread"] == 2
    assert [f["type"] for f in fx.events(c)] == []  # not replayed as events
    fx, ok = d.ok(c, "open_chat", patient=pid)
    assert [m["text"] for m in ok["messages"]] == ["anyone there?", "hello?"]
    assert fx.to(c)[1] == {"type": "unread", "patient": pid, "count": 0}


# --------------------------------------------------------------------------- R4: open_chat


def test_R4_open_chat_returns_last_500_and_truncated(d: Driver) -> None:
    """open_chat returns the conversation oldest first, at most the last 500, with truncated."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    for n in range(1, 501):
        d.ok(c, "send", patient=pid, text=f"t{n}")
    _, ok = d.ok(c, "open_chat", patient=pid)
    assert [m["id"] for m in ok["messages"]] == list(range(1, 501)) and ok["truncated"] is False
    d.ok(p, "send", text="t501", client_ts=7)
    _, ok = d.ok(c, "open_chat", patient=pid)  # already open: ok still carries the messages
    assert len(ok["messages"]) == 500 and ok["truncated"] is True
    assert ok["messages"][0]["id"] == 2
    assert ok["messages"][-1] == {"patient": pid, "id": 501, "from": "patient", "text": "t501",
                                  "ts": ok["messages"][-1]["ts"], "client_ts": 7}


def test_R4_open_chat_unknown_and_departed_out_of_view_not_found(d: Driver) -> None:
    """open_chat on an id the room never had, or on a departed patient not in the box, is not_found."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    d.error(c, "open_chat", "not_found", patient="no-such-id")
    d.send(p, "leave")
    d.error(c, "open_chat", "not_found", patient=pid)


def test_R4_open_chat_departed_in_view_reads_conversation(d: Driver) -> None:
    """A departed patient's conversation in the box is readable with open_chat (minimized box reopens)."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    d.ok(c, "open_chat", patient=pid)
    d.ok(p, "send", text="bye now")
    d.ok(c, "minimize_chat")
    fx = d.send(p, "leave")
    assert fx.to(c) == [{"type": "patient_left", "patient": pid, "reason": "left"},
                        box("minimized", pid, False, "patient_left")]
    fx, ok = d.ok(c, "open_chat", patient=pid)
    assert fx.to(c)[0] == box("open", pid, False, "open_chat")
    assert [m["text"] for m in ok["messages"]] == ["bye now"]


# --------------------------------------------------------------------------- R5-R8: the chat box


def test_R5_minimize_close_and_no_op_requests(d: Driver) -> None:
    """minimize_chat/close_chat change the box with a push; requests that change nothing get a bare ok."""
    c, _, _ = d.clinician()
    _, pid, _ = d.patient()
    for request in ("minimize_chat", "close_chat"):
        fx, _ = d.ok(c, request)  # closed box: no change
        assert fx.types(c) == ["ok"]
    d.ok(c, "open_chat", patient=pid)
    fx, _ = d.ok(c, "open_chat", patient=pid)
    assert fx.types(c) == ["ok"]
    fx, _ = d.ok(c, "minimize_chat")
    assert fx.to(c)[0] == box("minimized", pid, True, "minimize_chat")
    fx, _ = d.ok(c, "minimize_chat")
    assert fx.types(c) == ["ok"]
    fx, _ = d.ok(c, "close_chat")
    assert fx.to(c)[0] == box("closed", None, False, "close_chat")
    fx, _ = d.ok(c, "close_chat")
    assert fx.types(c) == ["ok"]


def test_R5_close_minimized_box(d: Driver) -> None:
    """close_chat on a minimized box closes it."""
    c, _, _ = d.clinician()
    _, pid, _ = d.patient()
    d.ok(c, "open_chat", patient=pid)
    d.ok(c, "minimize_chat")
    fx, _ = d.ok(c, "close_chat")
    assert fx.to(c) == [box("closed", None, False, "close_chat"), {"type": "ok"}]


@pytest.mark.parametrize("notifications", [True, False])
def test_R6_minimized_box_auto_opens_whatever_the_notification_setting(
        d: Driver, notifications: bool) -> None:
    """A minimized box opens by itself on any patient message, on the patient it showed."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    d.ok(c, "set_notifications", chat=notifications)
    d.ok(c, "open_chat", patient=a)
    d.ok(c, "minimize_chat")
    fx = d.send(pa, "send", text="x")
    assert fx.to(c) == [fx.to(c)[0], box("open", a, True, "auto_open")]  # shown: no badge, no notify
    assert fx.to(c)[0]["type"] == "message"


def test_R6_R8_minimized_on_A_opens_on_A_when_B_writes(d: Driver) -> None:
    """Message, chat_box{auto_open} on A, unread and notify for B, in the contract's order."""
    c, _, _ = d.clinician()
    _, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    d.ok(c, "open_chat", patient=a)
    d.ok(c, "minimize_chat")
    fx = d.send(pb, "send", text="from b")
    assert fx.types(c) == ["message", "chat_box", "unread", "notify"]
    assert fx.to(c)[1:] == [box("open", a, True, "auto_open"), {"type": "unread", "patient": b, "count": 1},
                            {"type": "notify", "patient": b, "id": 1}]
    assert_cause_order(fx.to(c))


def test_R7_closed_box_stays_closed(d: Driver) -> None:
    """A patient message leaves a closed box closed; only the badge (and notify) change."""
    c, _, _ = d.clinician()
    p, _, _ = d.patient()
    fx = d.send(p, "send", text="x")
    assert fx.types(c) == ["message", "unread", "notify"]


def test_R8_open_box_on_A_stays_on_A(d: Driver) -> None:
    """Open box on A, B writes: the box stays on A (no chat_box), B's badge goes up."""
    c, _, _ = d.clinician()
    _, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    d.ok(c, "open_chat", patient=a)
    fx = d.send(pb, "send", text="x")
    assert fx.types(c) == ["message", "unread", "notify"]
    assert fx.to(c)[1]["patient"] == b


# --------------------------------------------------------------------------- R9: departed


def test_R9_send_to_departed_is_patient_gone_before_and_after_erasure(d: Driver) -> None:
    """send to a departed patient: patient_gone while shown, and after erasure too; start_call likewise."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    d.ok(c, "open_chat", patient=pid)
    fx = d.send(p, "leave")
    assert fx.to(c)[1] == box("open", pid, False, "patient_left")
    d.error(c, "send", "patient_gone", patient=pid, text="x")
    d.error(c, "start_call", "patient_gone", patient=pid)
    d.ok(c, "close_chat")
    d.error(c, "send", "patient_gone", patient=pid, text="x")
    d.error(c, "start_call", "patient_gone", patient=pid)
    d.error(c, "open_chat", "not_found", patient=pid)


def test_R9_departed_ids_forgotten_when_room_goes_idle(d: Driver) -> None:
    """When a room goes idle its departed ids are forgotten: send answers not_found."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    d.send(p, "leave")
    d.error(c, "send", "patient_gone", patient=pid, text="x")
    d.drop(c)
    c2, _, _ = d.clinician()
    d.error(c2, "send", "not_found", patient=pid, text="x")


def test_R9_departed_id_memory_is_bounded(d: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the most recent MAX_DEPARTED_IDS_PER_ROOM departed ids answer patient_gone; older: not_found."""
    monkeypatch.setattr(_domain, "MAX_DEPARTED_IDS_PER_ROOM", 3)
    c, _, _ = d.clinician()
    gone = []
    for i in range(5):
        p, pid, _ = d.patient(f"P{i}")
        d.send(p, "leave")
        gone.append(pid)
    assert [code_of(d.send(c, "send", patient=pid, text="x").answer(c)) for pid in gone] == [
        "not_found", "not_found", "patient_gone", "patient_gone", "patient_gone"]


def test_R9_departed_patient_shown_in_box_stays_patient_gone_past_the_id_memory(
        d: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The departed patient the box still shows answers patient_gone even after many later departures."""
    monkeypatch.setattr(_domain, "MAX_DEPARTED_IDS_PER_ROOM", 2)
    c, _, _ = d.clinician()
    p, shown, _ = d.patient("Shown")
    d.ok(c, "open_chat", patient=shown)
    d.send(p, "leave")
    for i in range(4):
        q, _, _ = d.patient(f"Q{i}")
        d.send(q, "leave")
    d.error(c, "send", "patient_gone", patient=shown, text="x")
    d.error(c, "start_call", "patient_gone", patient=shown)
    d.ok(c, "open_chat", patient=shown)


# --------------------------------------------------------------------------- R10: notify


def test_R10_notifications_on_off_no_push_and_survive_refresh(d: Driver) -> None:
    """set_notifications pushes nothing; off means no notify; the setting survives a refresh."""
    c, welcome, _ = d.clinician()
    assert welcome["settings"] == {"chat_notifications": True}
    p, pid, _ = d.patient()
    fx, _ = d.ok(c, "set_notifications", chat=False, ref="n")
    assert fx.to(c) == [{"type": "ok", "ref": "n"}] and fx.conns() == {c}
    assert d.send(p, "send", text="a").types(c) == ["message", "unread"]
    d.drop(c)
    c, welcome, _ = d.clinician()
    assert welcome["settings"] == {"chat_notifications": False}
    assert d.send(p, "send", text="b").types(c) == ["message", "unread"]
    d.ok(c, "set_notifications", chat=True)
    assert d.send(p, "send", text="c").to(c)[2] == {"type": "notify", "patient": pid, "id": 3}


# --------------------------------------------------------------------------- R11: erasure


def test_R11_departure_out_of_view_erased_not_in_view(d: Driver) -> None:
    """A departing patient not in the box: patient_left then erased{not_in_view} (even if empty)."""
    c, _, _ = d.clinician()
    _, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    d.ok(c, "open_chat", patient=a)
    fx = d.drop(pb)
    assert fx.to(c) == [{"type": "patient_left", "patient": b, "reason": "disconnected"},
                        {"type": "erased", "patient": b, "reason": "not_in_view"}]


def test_R11a_close_chat_erases_departed_in_view(d: Driver) -> None:
    """Closing the box on a departed conversation: erased{chat_closed} then chat_box{close_chat}, then ok."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    d.ok(p, "send", text="x")
    d.ok(c, "open_chat", patient=pid)
    d.send(p, "leave")
    fx, _ = d.ok(c, "close_chat", ref="k")
    assert fx.to(c) == [{"type": "erased", "patient": pid, "reason": "chat_closed"},
                        box("closed", None, False, "close_chat"), {"type": "ok", "ref": "k"}]
    d.error(c, "open_chat", "not_found", patient=pid)


def test_R11b_viewing_other_erases_then_opens_other(d: Driver) -> None:
    """open_chat on B, box on departed A: erased, chat_box{erased}, chat_box{open_chat}, unread, ok."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    d.ok(c, "open_chat", patient=a)
    d.ok(c, "minimize_chat")
    d.send(pa, "leave")
    d.ok(pb, "send", text="b1")  # auto-opens on A (departed); B's badge goes to 1
    fx, ok = d.ok(c, "open_chat", patient=b)
    assert fx.to(c) == [
        {"type": "erased", "patient": a, "reason": "viewed_other"},
        box("closed", None, False, "erased"),
        box("open", b, True, "open_chat"),
        {"type": "unread", "patient": b, "count": 0},
        ok,
    ]
    assert_cause_order(fx.to(c))
    d.error(c, "open_chat", "not_found", patient=a)


def test_R11b_present_patient_in_box_is_not_erased_by_viewing_other(d: Driver) -> None:
    """Viewing another patient erases nothing while the shown patient is present."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    _, b, _ = d.patient("B")
    d.ok(pa, "send", text="keep me")
    d.ok(c, "open_chat", patient=a)
    fx, _ = d.ok(c, "open_chat", patient=b)
    assert fx.types(c) == ["chat_box", "ok"]
    assert [m["text"] for m in d.ok(c, "open_chat", patient=a)[1]["messages"]] == ["keep me"]


def test_R11c_successful_start_call_erases_departed_in_view(d: Driver) -> None:
    """A start_call that succeeds erases the departed conversation in the box: erased, chat_box, ok."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    d.ok(c, "open_chat", patient=a)
    d.send(pa, "leave")
    d.error(c, "start_call", "not_found", patient="nobody")  # a failing start_call erases nothing
    d.ok(c, "open_chat", patient=a)
    fx, _ = d.ok(c, "start_call", patient=b, ref="s")
    assert fx.to(c) == [{"type": "erased", "patient": a, "reason": "call_started"},
                        box("closed", None, False, "erased"), {"type": "ok", "ref": "s"}]
    assert fx.to(pb) == [{"type": "call", "state": "started"},
                         {"type": "provider_status", "status": "on_call"}]


def test_R11d_R12_refresh_by_replacement(d: Driver) -> None:
    """A new clinician hello: the old connection gets erased{refresh} per conversation, then close 4000."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    d.ok(pa, "send", text="a1")
    d.ok(pb, "send", text="b1")
    d.ok(c, "open_chat", patient=b)
    d.send(pb, "leave")
    c2 = d.open()
    fx = d.send(c2, "hello", role="clinician", room=ROOM, token=clinician_token(SECRET, ROOM), ref="h")
    old = fx.to(c)
    assert old[-1] == {"type": CLOSE, "code": 4000}
    assert sorted((f["patient"], f["reason"]) for f in old[:-1]) == sorted([(a, "refresh"), (b, "refresh")])
    assert all(f["type"] == "erased" for f in old[:-1])
    # The old connection's frames come before its close in the effect list.
    assert [conn for conn, f in fx if f["type"] == CLOSE] == [c]
    welcome = fx.to(c2)[0]
    assert welcome["ref"] == "h"
    assert welcome["chat_box"] == {"state": "closed", "patient": None, "patient_present": False}
    assert welcome["queue"] == [{"patient": a, "name": "A", "state": "waiting", "unread": 0,
                                 "joined_at": welcome["queue"][0]["joined_at"]}]
    assert fx.to(pa) == []  # provider status does not change across a replacement
    assert d.ok(c2, "open_chat", patient=a)[1]["messages"] == []
    d.error(c2, "open_chat", "not_found", patient=b)
    assert d.send(c, "ping") == []  # the old connection is done
    assert d.drop(c) == []  # its end is not a second refresh


def test_R12_refresh_by_disconnect_keeps_queue_call_settings_marks_and_ids(d: Driver) -> None:
    """Clinician drops: conversations erased, badges 0, box closed; queue, call, settings, marks, ids stay."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    d.ok(c, "set_room", patient_initiated_chat=False)
    d.ok(c, "set_notifications", chat=False)
    d.ok(c, "send", patient=a, text="first")  # R31 mark for A
    d.ok(pa, "send", text="a2")
    d.ok(c, "start_call", patient=b)
    d.ok(pb, "send", text="b1")
    d.ok(c, "open_chat", patient=a)
    fx = d.drop(c)
    assert fx.to(pa) == [{"type": "provider_status", "status": "away"}]
    assert fx.to(pb) == [{"type": "provider_status", "status": "away"}]
    assert fx.to(c) == []
    c2, welcome, fx = d.clinician()
    assert fx.to(pb) == [{"type": "provider_status", "status": "on_call"}]
    assert welcome["call"] == {"patient": b}
    assert [(q["patient"], q["state"], q["unread"]) for q in welcome["queue"]] == [
        (a, "waiting", 0), (b, "in_call", 0)]
    assert welcome["settings"] == {"chat_notifications": False}
    assert welcome["room_settings"] == {"patient_initiated_chat": False}
    assert welcome["chat_box"]["state"] == "closed"
    assert d.ok(c2, "open_chat", patient=a)[1]["messages"] == []
    assert d.ok(c2, "open_chat", patient=b)[1]["messages"] == []
    assert d.ok(pa, "send", text="a3")[1]["id"] == 3  # mark kept (no chat_disabled), ids go on
    assert d.ok(c2, "send", patient=b, text="b2")[1]["id"] == 2


def test_R12_hello_while_no_clinician_erases_nothing(d: Driver) -> None:
    """A clinician hello while no clinician is connected erases nothing and pushes no erased."""
    p, pid, _ = d.patient()
    d.ok(p, "send", text="kept")
    c, _, fx = d.clinician()
    assert fx.types(c) == ["welcome"]
    assert fx.to(p) == [{"type": "provider_status", "status": "online"}]
    assert [m["text"] for m in d.ok(c, "open_chat", patient=pid)[1]["messages"]] == ["kept"]


# --------------------------------------------------------------------------- R13: nothing kept


def _reachable_strings(root: object) -> set[str]:
    """Every str reachable from ``root`` through gc.get_referents, not entering code, types or modules."""
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
            continue
        if isinstance(obj, skip):
            continue
        stack.extend(gc.get_referents(obj))
    return found


def _holds(model: QueueChatModel, marker: str) -> bool:
    return any(marker in s for s in _reachable_strings(model))


def test_R13_erased_text_is_unreachable_from_the_model(d: Driver) -> None:
    """After each kind of erasure no text (nor the departed patient's name) is reachable from the model."""
    c, _, _ = d.clinician()
    # a) close_chat on a departed conversation in view
    pa, a, _ = d.patient("Name-Alpha-Marker")
    d.ok(pa, "send", text="Secret-A-patient-Marker")
    d.ok(c, "send", patient=a, text="Secret-A-clinician-Marker")
    d.ok(c, "open_chat", patient=a)
    assert _holds(d.model, "Secret-A-patient-Marker") and _holds(d.model, "Secret-A-clinician-Marker")
    d.send(pa, "leave")
    d.drop(pa)
    assert _holds(d.model, "Secret-A-patient-Marker")  # readable while in the box
    d.ok(c, "close_chat")
    # b) departure out of view
    pb, _, _ = d.patient("Name-Beta-Marker")
    d.ok(pb, "send", text="Secret-B-Marker")
    assert _holds(d.model, "Secret-B-Marker") and _holds(d.model, "Name-Beta-Marker")
    d.drop(pb)
    # c) refresh erases present patients' conversations
    pc, cid, _ = d.patient("Name-Gamma")
    d.ok(pc, "send", text="Secret-C-Marker")
    d.ok(c, "send", patient=cid, text="Secret-C-reply-Marker")
    assert _holds(d.model, "Secret-C-Marker")
    d.drop(c)
    for marker in ("Secret-A-patient-Marker", "Secret-A-clinician-Marker", "Name-Alpha-Marker",
                   "Secret-B-Marker", "Name-Beta-Marker", "Secret-C-Marker", "Secret-C-reply-Marker"):
        assert not _holds(d.model, marker), marker
    assert _holds(d.model, "Name-Gamma")  # a present patient's name stays (the queue shows it)


def test_R13_viewed_other_call_started_and_end_call_erase_text(d: Driver) -> None:
    """Erasure by viewing another, by a new call, and by end_call out of view leaves no text reachable."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    pe, e, _ = d.patient("E")
    d.ok(pa, "send", text="Text-of-A-Marker")
    d.ok(c, "open_chat", patient=a)
    d.send(pa, "leave")
    d.ok(c, "open_chat", patient=b)  # b) viewed_other
    assert not _holds(d.model, "Text-of-A-Marker")
    d.ok(pb, "send", text="Text-of-B-Marker")
    d.send(pb, "leave")
    d.ok(c, "start_call", patient=e)  # c) call_started
    assert not _holds(d.model, "Text-of-B-Marker")
    d.ok(pe, "send", text="Text-of-E-Marker")
    d.ok(c, "end_call")  # E is not in the box: erased at departure
    d.drop(pe)
    assert not _holds(d.model, "Text-of-E-Marker")
    d.error(c, "open_chat", "not_found", patient=e)


def test_R13_messages_are_not_leaked_through_error_messages(d: Driver) -> None:
    """Error messages never quote the text or names they refuse."""
    c, _, _ = d.clinician()
    p, _, _ = d.patient()
    fx = d.send(c, "send", patient="Unknown-Marker-Id", text="Text-Marker")
    assert "Marker" not in json.dumps(fx.to(c))
    fx = d.send(p, "send", text="Q" * 5000)
    assert fx.answer(p)["code"] == "too_large" and "QQ" not in json.dumps(fx.to(p))


# --------------------------------------------------------------------------- R20: calls


def test_R20_start_and_end_call(d: Driver) -> None:
    """start_call: call, provider_status to all, position to the waiting; end_call departs the patient."""
    c, _, _ = d.clinician()
    p1, a, _ = d.patient("A")
    p2, _, _ = d.patient("B")
    p3, _, _ = d.patient("C")
    d.ok(c, "open_chat", patient=a)
    fx, _ = d.ok(c, "start_call", patient=a)
    assert fx.to(c) == [{"type": "ok"}]  # the box stays where it is
    on_call = {"type": "provider_status", "status": "on_call"}
    assert fx.to(p1) == [{"type": "call", "state": "started"}, on_call]
    assert fx.to(p2) == [on_call, {"type": "position", "position": 1}]
    assert fx.to(p3) == [on_call, {"type": "position", "position": 2}]
    d.error(c, "start_call", "call_in_progress", patient=a)
    fx, _ = d.ok(c, "end_call", ref="e")
    assert fx.to(c) == [{"type": "patient_left", "patient": a, "reason": "call_ended"},
                        box("open", a, False, "patient_left"), {"type": "ok", "ref": "e"}]
    assert fx.to(p1) == [{"type": "call", "state": "ended"}, {"type": CLOSE, "code": 1000}]
    assert fx.to(p2) == [{"type": "provider_status", "status": "online"}]
    assert fx.to(p3) == [{"type": "provider_status", "status": "online"}]
    d.error(c, "end_call", "not_in_call")
    assert d.send(p1, "ping") == []
    assert d.drop(p1) == []  # the shell's later disconnect is not a second departure


def test_R20_end_call_out_of_view_erases_not_in_view(d: Driver) -> None:
    """end_call with the box elsewhere: patient_left{call_ended}, erased{not_in_view}, ok."""
    c, _, _ = d.clinician()
    _, a, _ = d.patient("A")
    d.ok(c, "start_call", patient=a)
    fx, _ = d.ok(c, "end_call")
    assert fx.to(c) == [{"type": "patient_left", "patient": a, "reason": "call_ended"},
                        {"type": "erased", "patient": a, "reason": "not_in_view"}, {"type": "ok"}]


def test_R20_start_call_check_order(d: Driver) -> None:
    """start_call: not_found, then patient_gone, then call_in_progress (also for the same patient)."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    _, b, _ = d.patient("B")
    d.send(pa, "leave")
    d.ok(c, "start_call", patient=b)
    d.error(c, "start_call", "not_found", patient="never")
    d.error(c, "start_call", "patient_gone", patient=a)
    d.error(c, "start_call", "call_in_progress", patient=b)


def test_R20_conversation_badge_and_ids_go_on_through_a_call(d: Driver) -> None:
    """A call changes neither the conversation, the badge nor the ids."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    d.ok(p, "send", text="one")
    d.ok(c, "start_call", patient=pid)
    fx, ok = d.ok(p, "send", text="two")
    assert ok["id"] == 2 and fx.to(c)[1] == {"type": "unread", "patient": pid, "count": 2}
    assert [m["id"] for m in d.ok(c, "open_chat", patient=pid)[1]["messages"]] == [1, 2]
    assert d.ok(c, "send", patient=pid, text="three")[1]["id"] == 3


def test_R20_call_patient_disconnecting_ends_the_call(d: Driver) -> None:
    """The patient in a call disconnecting departs (disconnected); status online again; no call to end."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient("A")
    q, _, _ = d.patient("B")
    d.ok(c, "start_call", patient=pid)
    fx = d.drop(p)
    assert fx.to(c)[0] == {"type": "patient_left", "patient": pid, "reason": "disconnected"}
    assert fx.to(q) == [{"type": "provider_status", "status": "online"}]
    d.error(c, "end_call", "not_in_call")


# --------------------------------------------------------------------------- R30, R31


def test_R30_provider_status_and_positions(d: Driver) -> None:
    """away/online pushed as the clinician comes and goes; waiting patients behind a leaver move up."""
    p1, _, fx = d.patient("A")
    assert fx.to(p1)[0]["provider_status"] == "away" and fx.to(p1)[0]["position"] == 1
    p2, _, fx = d.patient("B")
    assert fx.to(p2)[0]["position"] == 2
    p3, _, _ = d.patient("C")
    c, welcome, fx = d.clinician()
    assert welcome["provider_status"] == "online"
    assert all(fx.to(p) == [{"type": "provider_status", "status": "online"}] for p in (p1, p2, p3))
    fx = d.send(p2, "leave")
    assert fx.to(p1) == [] and fx.to(p3) == [{"type": "position", "position": 2}]
    p4, pid4, fx = d.patient("D")
    assert fx.to(p4)[0]["position"] == 3
    assert fx.to(c) == [{"type": "patient_joined", "patient": pid4, "name": "D", "position": 3,
                         "joined_at": fx.to(c)[0]["joined_at"]}]
    fx = d.drop(c)
    assert all(fx.to(p) == [{"type": "provider_status", "status": "away"}] for p in (p1, p3, p4))


def test_R30_a_departure_at_the_head_of_500_patients_is_one_effect(d: Driver) -> None:
    """Choice 24: one PositionsChanged, not 499 pushes; expanded, it gives each patient behind its new
    place once, and nothing more until a place changes again."""
    c, _, _ = d.clinician()
    patients = [d.patient(f"P{i}")[0] for i in range(500)]
    effects = d.model.disconnected(patients[0], d.tick(None))
    assert [e for e in effects if not (isinstance(e, Send) and e.conn == c)] == [PositionsChanged(ROOM)]
    pushes = as_dicts(d.model.pending_positions(ROOM))
    assert [conn for conn, _ in pushes] == patients[1:]
    assert [frame for _, frame in pushes] == [{"type": "position", "position": n} for n in range(1, 500)]
    assert d.model.pending_positions(ROOM) == []


def test_R30_departures_before_the_expansion_announce_once_and_push_the_latest_place(d: Driver) -> None:
    d.clinician()
    p1, p2, p3, p4 = (d.patient(name)[0] for name in "ABCD")
    assert PositionsChanged(ROOM) in d.model.disconnected(p1, d.tick(None))
    assert PositionsChanged(ROOM) not in d.model.disconnected(p2, d.tick(None))  # already announced
    assert as_dicts(d.model.pending_positions(ROOM)) == [
        (p3, {"type": "position", "position": 1}), (p4, {"type": "position", "position": 2})]


@pytest.mark.parametrize("later", ["start_call", "message", "ping", "leave", "set_room", "clinician_gone"])
def test_R30_a_pending_place_goes_before_any_later_frame_to_the_patient(d: Driver, later: str) -> None:
    """Choice 24: a place changed but not yet expanded is pushed before the next frame to that patient
    (provider_status then position on start_call, §5, still holds for the call's own change)."""
    c, _, _ = d.clinician()
    p1, _, _ = d.patient("A")
    p2, b, _ = d.patient("B")
    p3, _, _ = d.patient("C")
    assert PositionsChanged(ROOM) in d.model.disconnected(p1, d.tick(None))  # not expanded
    frames: dict[str, tuple[int, dict[str, Any]]] = {
        "start_call": (c, {"type": "start_call", "patient": b}),
        "message": (c, {"type": "send", "patient": b, "text": "hi"}),
        "ping": (p2, {"type": "ping"}),
        "leave": (p2, {"type": "leave"}),
        "set_room": (c, {"type": "set_room", "patient_initiated_chat": False}),
    }
    if later == "clinician_gone":
        effects = d.model.disconnected(c, d.tick(None))
    else:
        conn, frame = frames[later]
        effects = d.model.receive(conn, json.dumps(frame), d.tick(None))
    fx = as_dicts(with_positions(d.model, effects))
    to_b = fx.to(p2)
    assert to_b[0] == {"type": "position", "position": 1} and len(to_b) > 1, to_b
    assert all(f["type"] != "position" for f in to_b[1:]), to_b
    to_c = fx.to(p3)
    if later == "start_call":  # C moves up again: the call's change comes after its provider_status
        assert to_c == [{"type": "position", "position": 2}, {"type": "provider_status", "status": "on_call"},
                        {"type": "position", "position": 1}]
    elif later == "leave":
        assert to_c == [{"type": "position", "position": 2}, {"type": "position", "position": 1}]
    else:
        assert to_c[0] == {"type": "position", "position": 2}
        assert [f for f in to_c if f["type"] == "position"] == [to_c[0]]

def test_R31_patient_initiated_chat_off(d: Driver) -> None:
    """While off, a waiting patient's send is chat_disabled until the clinician writes; in a call: allowed."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    fx, _ = d.ok(c, "set_room", patient_initiated_chat=False)
    assert fx.to(pa) == fx.to(pb) == [{"type": "room_settings", "patient_initiated_chat": False}]
    fx, _ = d.ok(c, "set_room", patient_initiated_chat=False)  # no change: no push
    assert fx.conns() == {c}
    fx, _ = d.error(pa, "send", "chat_disabled", text="hi")
    assert fx.conns() == {pa}
    d.ok(c, "send", patient=a, text="Hello A")
    assert d.ok(pa, "send", text="hi")[1]["id"] == 2
    d.error(pb, "send", "chat_disabled", text="hi")
    d.ok(c, "start_call", patient=b)
    d.ok(pb, "send", text="in call")
    pc, _, fx = d.patient("C")
    assert fx.to(pc)[0]["patient_initiated_chat"] is False
    fx, _ = d.ok(c, "set_room", patient_initiated_chat=True)
    assert len(fx.to(pa)) == len(fx.to(pb)) == 1


# --------------------------------------------------------------------------- R40: bad input, check order


def test_R40_bad_frames(d: Driver) -> None:
    """Not JSON, not an object, no string type: bad_frame (ref only from an object with a valid ref)."""
    c, _, _ = d.clinician()
    for raw in ("{", "", "[]", "42", '"hello"', "null", '{"ref":"x1"}', '{"type":5,"ref":"x1"}',
                '{"type":null}', b'{"type":"ping"}'):
        fx = d.raw(c, raw)
        err = fx.answer(c)
        assert err["code"] == "bad_frame", raw
        assert err.get("ref") == ("x1" if "x1" in str(raw) else None), raw
        assert fx.conns() == {c}
    assert d.ok(c, "ping", ref="alive")[1] == {"type": "ok", "ref": "alive"}


def test_R40_unknown_type_forbidden_invalid(d: Driver) -> None:
    """unknown_type, then forbidden (checked before fields), then invalid naming the field."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    assert d.send(c, "no_such_type", ref="u").answer(c) == {
        "type": "error", "ref": "u", "code": "unknown_type", "message": d.send(c, "x").answer(c)["message"]}
    d.error(p, "open_chat", "forbidden", patient=12345)  # forbidden wins over invalid fields
    d.error(p, "set_room", "forbidden", patient_initiated_chat="nope", ref=["bad"])
    d.error(c, "leave", "forbidden")
    d.error(c, "hello", "forbidden", role="clinician", room=ROOM, token=clinician_token(SECRET, ROOM))
    d.error(p, "hello", "forbidden")
    cases: list[tuple[int, dict[str, Any], str]] = [
        (c, {"type": "send", "text": "x"}, "patient"),
        (c, {"type": "send", "patient": pid, "text": ""}, "text"),
        (c, {"type": "send", "patient": pid, "text": 5}, "text"),
        (c, {"type": "send", "patient": pid, "text": "ok\ud800"}, "text"),
        (p, {"type": "send", "text": "x", "client_ts": "now"}, "client_ts"),
        (p, {"type": "send", "text": "x", "client_ts": 2**53 + 1}, "client_ts"),
        (p, {"type": "send", "text": "x", "client_ts": True}, "client_ts"),
        (p, {"type": "send"}, "text"),
        (c, {"type": "open_chat", "patient": None}, "patient"),
        (c, {"type": "open_chat", "patient": "\udc00"}, "patient"),
        (c, {"type": "set_notifications", "chat": "yes"}, "chat"),
        (c, {"type": "set_room"}, "patient_initiated_chat"),
        (c, {"type": "start_call", "patient": 1}, "patient"),
        (c, {"type": "ping", "ref": "r" * 65}, "ref"),
        (c, {"type": "ping", "ref": 7}, "ref"),
        (c, {"type": "ping", "ref": "\ud83d"}, "ref"),
        (p, {"type": "send", "text": "Q" * 9000, "ref": None}, "ref"),  # invalid before too_large
    ]
    for conn, frame, field in cases:
        fx = d.raw(conn, json.dumps(frame))
        err = fx.answer(conn)
        assert (err["code"], err.get("field")) == ("invalid", field), frame
        assert "ref" not in err or frame.get("ref") == err["ref"]
        assert fx.conns() == {conn}
    for raw in ('{"type":"send","text":"x","client_ts":1e999}', '{"type":"send","text":"x","client_ts":NaN}'):
        err = d.raw(p, raw).answer(p)
        assert (err["code"], err.get("field")) == ("invalid", "client_ts"), raw
    # A valid ref is echoed on invalid; unknown fields are ignored.
    assert d.send(c, "send", patient=pid, text="", ref="v").answer(c)["ref"] == "v"
    assert d.ok(c, "send", patient=pid, text="fine", extra={"a": 1}, ref="w")[1]["ref"] == "w"


def test_R40_R41_too_large_before_state_errors(d: Driver) -> None:
    """too_large comes after invalid and before not_found / patient_gone / chat_disabled."""
    c, _, _ = d.clinician()
    p, _, _ = d.patient()
    big = "x" * 4097
    d.error(c, "send", "too_large", patient="nobody", text=big)
    d.ok(c, "set_room", patient_initiated_chat=False)
    d.error(p, "send", "too_large", text=big)
    d.error(p, "send", "chat_disabled", text="x")
    d.error(c, "send", "not_found", patient="nobody", text="x")


def test_R41_text_length_in_code_points(d: Driver) -> None:
    """4096 code points is fine even when each is 4 UTF-8 bytes / 2 UTF-16 units; 4097 is too_large."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    emoji = "\U0001f600"
    fx, _ = d.ok(p, "send", text=emoji * 4096)
    assert fx.to(c)[0]["text"] == emoji * 4096
    d.error(p, "send", "too_large", text=emoji * 4097)
    d.ok(c, "send", patient=pid, text="a" * 4096)
    d.error(c, "send", "too_large", patient=pid, text="a" * 4097)


def test_R41_max_text_chars_is_a_setting() -> None:
    """A lowered max_text_chars applies."""
    d = Driver(limits=Limits(max_text_chars=5))
    d.clinician()
    p, _, _ = d.patient()
    d.ok(p, "send", text="12345")
    d.error(p, "send", "too_large", text="123456")


def test_R40_errors_after_welcome_never_close_or_disturb_others(d: Driver) -> None:
    """After welcome no error closes the connection or sends anything to anyone else."""
    c, _, _ = d.clinician()
    p, _, _ = d.patient()
    for conn in (c, p):
        for raw in ("nope", "[1]", '{"type":"zzz"}', '{"type":"send"}', '{"type":"end_call"}',
                    '{"type":"open_chat","patient":"x"}'):
            fx = d.raw(conn, raw)
            assert fx.conns() == {conn} and len(fx) == 1 and fx.to(conn)[0]["type"] == "error"
        assert d.ok(conn, "ping")[0].to(conn) == [{"type": "ok"}]


# --------------------------------------------------------------------------- hello


def test_hello_errors_close_1008_and_capacity_1013() -> None:
    """Before welcome every error is followed by a close: hello_required, invalid, unauthorized -> 1008."""
    d = Driver()
    cases = [
        ("not json", "hello_required", None),
        ('{"type":"ping","ref":"r"}', "hello_required", None),
        (json.dumps({"type": "hello", "role": "doctor", "room": ROOM, "ref": "r"}), "invalid", "role"),
        (json.dumps({"type": "hello", "role": "patient", "room": "Bad Room"}), "invalid", "room"),
        (json.dumps({"type": "hello", "role": "patient", "room": "a\n"}), "invalid", "room"),
        (json.dumps({"type": "hello", "role": "patient", "room": ROOM, "name": ""}), "invalid", "name"),
        (json.dumps({"type": "hello", "role": "patient", "room": ROOM, "name": "n" * 65}), "invalid", "name"),
        (json.dumps({"type": "hello", "role": "clinician", "room": ROOM}), "invalid", "token"),
        (json.dumps({"type": "hello", "role": "clinician", "room": ROOM, "token": "0" * 64, "ref": "r"}),
         "unauthorized", None),
        (json.dumps({"type": "hello", "role": "clinician", "room": ROOM,
                     "token": clinician_token(SECRET, "room-b")}), "unauthorized", None),
    ]
    for raw, code, field in cases:
        conn = d.open()
        fx = d.raw(conn, raw)
        err = fx.to(conn)[0]
        assert (err["type"], err["code"], err.get("field")) == ("error", code, field), raw
        assert fx.to(conn)[1:] == [{"type": CLOSE, "code": 1008}], raw
        assert d.raw(conn, raw) == []  # a closed connection says nothing more
        assert d.drop(conn) == []
    conn = d.open()
    err = d.raw(conn, json.dumps({"type": "hello", "role": "x", "room": ROOM, "ref": "keep"})).to(conn)[0]
    assert err["ref"] == "keep"


def test_R40_hello_invalid_fields_in_documented_order() -> None:
    """A hello with several bad fields names the first in the documented order: ref, role, room, name."""
    d = Driver()
    cases = [
        ({"type": "hello", "room": "Bad Room", "role": "doctor"}, "role"),
        ({"type": "hello", "name": "", "room": "Bad Room", "role": "patient"}, "room"),
        ({"type": "hello", "token": 5, "room": "Bad Room", "role": "clinician"}, "room"),
        ({"type": "hello", "role": "doctor", "ref": 5}, "ref"),
    ]
    for frame, field in cases:
        conn = d.open()
        err = d.raw(conn, json.dumps(frame)).to(conn)[0]
        assert (err["code"], err.get("field")) == ("invalid", field), frame


def test_R45_hello_timed_out() -> None:
    """The hello timer: hello_required and close 1008; nothing for a welcomed or finished connection."""
    d = Driver()
    conn = d.open()
    fx = as_dicts(d.model.hello_timed_out(conn))
    assert [f["type"] for f in fx.to(conn)] == ["error", CLOSE]
    assert fx.to(conn)[0]["code"] == "hello_required" and fx.to(conn)[1]["code"] == 1008
    assert d.send(conn, "hello", role="patient", room=ROOM, name="late") == []
    assert as_dicts(d.model.hello_timed_out(conn)) == []
    assert d.drop(conn) == []
    c, _, _ = d.clinician()
    assert as_dicts(d.model.hello_timed_out(c)) == []
    assert as_dicts(d.model.hello_timed_out(999)) == []


def test_R1_patient_ids_come_from_the_injected_generator_and_are_not_reused() -> None:
    """Patient ids are the generator's; an id already present or departed in the room is drawn again."""
    sequence = iter(["id-one", "id-one", "id-two", "id-one", "id-two", "id-three"])
    d = Driver(ids=lambda: next(sequence))
    d.clinician()
    p1, first, _ = d.patient("A")
    assert first == "id-one"
    _, second, _ = d.patient("B")
    assert second == "id-two"
    d.send(p1, "leave")
    _, third, _ = d.patient("C")
    assert third == "id-three"


def test_R12_second_hello_on_clinician_answers_forbidden_and_connection_stays(d: Driver) -> None:
    """A second hello on a welcomed connection answers forbidden; no refresh happens."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    d.ok(p, "send", text="keep")
    d.error(c, "hello", "forbidden", role="clinician", room=ROOM, token=clinician_token(SECRET, ROOM))
    assert [m["text"] for m in d.ok(c, "open_chat", patient=pid)[1]["messages"]] == ["keep"]


# --------------------------------------------------------------------------- R43: rate


def test_R43_token_bucket_with_passed_in_time() -> None:
    """Burst of 200, then rate_limited; refill at 100/s up to the burst; bad frames spend tokens."""
    d = Driver()
    c, _, _ = d.clinician()
    d.now = t = T0 + 100.0
    d.send(c, "ping", now=t)  # full bucket (it was full already): 199 left
    results = [code_of(d.send(c, "ping", now=t).answer(c)) for _ in range(199)]
    assert results == ["ok"] * 199
    limited = d.send(c, "ping", now=t, ref="q").answer(c)
    assert (limited["type"], limited["ref"], limited["code"]) == ("error", "q", "rate_limited")
    # rate_limited is checked before unknown_type, forbidden and invalid; bad_frame before it.
    assert code_of(d.send(c, "no_such", now=t).answer(c)) == "rate_limited"
    assert code_of(d.send(c, "leave", now=t).answer(c)) == "rate_limited"
    assert code_of(d.send(c, "send", now=t).answer(c)) == "rate_limited"
    assert code_of(d.raw(c, "{{", now=t).answer(c)) == "bad_frame"
    # 10 ms later one token is back.
    assert code_of(d.send(c, "ping", now=t + 0.0105).answer(c)) == "ok"
    assert code_of(d.send(c, "ping", now=t + 0.0105).answer(c)) == "rate_limited"
    # A bad frame spends a token too.
    assert code_of(d.raw(c, "[]", now=t + 0.021).answer(c)) == "bad_frame"
    assert code_of(d.send(c, "ping", now=t + 0.021).answer(c)) == "rate_limited"
    # Refill is capped at the burst.
    later = t + 1000.0
    results = [code_of(d.send(c, "ping", now=later).answer(c)) for _ in range(201)]
    assert results == ["ok"] * 200 + ["rate_limited"]


def test_R43_hellos_are_not_counted_and_limits_are_per_connection() -> None:
    """The hello does not spend a token; one connection's bucket does not affect another's."""
    d = Driver(limits=Limits(rate_per_s=1.0, rate_burst=2))
    p = d.open(now=T0)
    d.send(p, "hello", role="patient", room=ROOM, name="x", now=T0)
    assert [code_of(d.send(p, "ping", now=T0).answer(p)) for _ in range(3)] == ["ok", "ok", "rate_limited"]
    c = d.open(now=T0)
    d.send(c, "hello", role="clinician", room=ROOM, token=clinician_token(SECRET, ROOM), now=T0)
    assert [code_of(d.send(c, "ping", now=T0).answer(c)) for _ in range(3)] == ["ok", "ok", "rate_limited"]
    assert code_of(d.send(p, "ping", now=T0 + 1.0).answer(p)) == "ok"


def test_R43_rate_limit_off() -> None:
    """With the rate limit off, nothing is rate_limited."""
    d = Driver(limits=Limits(rate_per_s=None, rate_burst=None))
    c, welcome, _ = d.clinician()
    assert welcome["limits"]["rate_per_s"] is None and welcome["limits"]["rate_burst"] is None
    assert all(code_of(d.send(c, "ping", now=T0).answer(c)) == "ok" for _ in range(500))


# --------------------------------------------------------------------------- R44: capacity


def test_R44_patients_per_room() -> None:
    """Past max_patients_per_room a patient hello answers capacity, close 1013; a freed place is usable."""
    d = Driver(limits=Limits(max_patients_per_room=2))
    _, welcome, _ = d.clinician()
    assert welcome["limits"]["max_patients_per_room"] == 2
    p1, _, _ = d.patient("A")
    d.patient("B")
    conn = d.open()
    fx = d.send(conn, "hello", role="patient", room=ROOM, name="C", ref="cap")
    assert fx.to(conn) == [{"type": "error", "ref": "cap", "code": "capacity",
                            "message": fx.to(conn)[0]["message"]}, {"type": CLOSE, "code": 1013}]
    assert fx.conns() == {conn}
    d.patient("D", room="room-b")  # another room is not full
    d.send(p1, "leave")
    d.patient("E")


def test_R44_rooms_idle_rooms_do_not_count_and_keep_settings() -> None:
    """Past max_rooms a hello adding an active room answers capacity (1013); idle rooms do not count."""
    d = Driver(limits=Limits(max_rooms=2))
    c1, _, _ = d.clinician("room-1")
    d.patient("P", room="room-2")
    for hello in ({"role": "clinician", "room": "room-3", "token": clinician_token(SECRET, "room-3")},
                  {"role": "patient", "room": "room-3", "name": "Q"}):
        conn = d.open()
        fx = d.send(conn, "hello", **hello)
        assert [f.get("code") for f in fx.to(conn)] == ["capacity", 1013]
    p12, _, _ = d.patient("P2", room="room-1")  # an active room takes more patients
    d.clinician("room-2")  # and its clinician
    d.ok(c1, "set_notifications", chat=False)
    d.ok(c1, "set_room", patient_initiated_chat=False)
    d.drop(c1)
    # room-1 still has a patient: still active
    conn = d.open()
    assert d.send(conn, "hello", role="patient", room="room-3", name="Q").to(conn)[0]["code"] == "capacity"
    d.drop(p12)
    # room-1 is idle now: room-3 fits
    c3, _, _ = d.clinician("room-3")
    d.drop(c3)
    c1, welcome, _ = d.clinician("room-1")
    assert welcome["settings"] == {"chat_notifications": False}
    assert welcome["room_settings"] == {"patient_initiated_chat": False}
    r, _, fx = d.patient("R", room="room-1")
    assert fx.to(r)[0]["patient_initiated_chat"] is False


def test_R44_idle_room_settings_forgotten_least_recently_used_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are kept for at most MAX_IDLE_ROOMS idle rooms; the oldest idle room's are forgotten."""
    monkeypatch.setattr(_domain, "MAX_IDLE_ROOMS", 2)
    d = Driver()
    for slug in ("idle-1", "idle-2", "idle-3"):
        c, _, _ = d.clinician(slug)
        d.ok(c, "set_notifications", chat=False)
        d.drop(c)
    assert d.clinician("idle-1")[1]["settings"] == {"chat_notifications": True}
    assert d.clinician("idle-2")[1]["settings"] == {"chat_notifications": False}
    assert d.clinician("idle-3")[1]["settings"] == {"chat_notifications": False}


def test_R44_capacity_off() -> None:
    """With capacities off, more rooms and patients than the defaults' small test values fit."""
    d = Driver(limits=Limits(max_rooms=None, max_patients_per_room=None))
    for i in range(30):
        d.patient(f"N{i}", room=f"r-{i % 3}")
    assert d.model.statistics()["rooms_active"] == 3


# --------------------------------------------------------------------------- order of frames


def test_R11_R6_frames_of_every_cause_follow_the_contract_order(d: Driver) -> None:
    """In a busy scripted session, each input's frames per connection follow the contract's order."""
    c, _, _ = d.clinician()
    pa, a, _ = d.patient("A")
    pb, b, _ = d.patient("B")
    pc, cc, _ = d.patient("C")
    steps: list[Fx] = [
        d.send(pa, "send", text="1"),
        d.send(c, "open_chat", patient=a),
        d.send(c, "minimize_chat"),
        d.send(pb, "send", text="2"),  # message, chat_box{auto_open}, unread, notify
        d.send(c, "minimize_chat"),
        d.send(pa, "leave"),  # patient_left, chat_box{patient_left}
        d.send(pc, "send", text="3"),  # message, chat_box{auto_open}, unread, notify
        d.send(c, "open_chat", patient=b),  # erased, chat_box, chat_box, unread, ok
        d.send(c, "start_call", patient=cc),
        d.send(pc, "send", text="4"),
        d.send(c, "end_call"),  # patient_left, erased, ok
        d.send(c, "open_chat", patient=b),
        d.drop(pb),  # patient_left, chat_box
        d.send(c, "close_chat"),  # erased, chat_box, ok
    ]
    seen = set()
    for fx in steps:
        for conn in fx.conns():
            assert_cause_order(fx.to(conn))
            seen.add(tuple(f["type"] for f in fx.to(conn)))
    assert ("message", "chat_box", "unread", "notify") in seen
    assert ("erased", "chat_box", "chat_box", "unread", "ok") in seen
    assert ("patient_left", "erased", "ok") in seen
    assert ("erased", "chat_box", "ok") in seen


# --------------------------------------------------------------------------- lifecycle and barrier


def test_R1_leave_answers_ok_then_close_1000(d: Driver) -> None:
    """leave: ok, then close 1000; the clinician hears patient_left{left}; later input is ignored."""
    c, _, _ = d.clinician()
    p, pid, _ = d.patient()
    fx = d.send(p, "leave", ref="bye")
    assert fx.to(p) == [{"type": "ok", "ref": "bye"}, {"type": CLOSE, "code": 1000}]
    assert fx.to(c)[0] == {"type": "patient_left", "patient": pid, "reason": "left"}
    assert d.send(p, "send", text="x") == []
    assert d.drop(p) == []


def test_R1_ping_is_answered_ok_and_does_nothing_else(d: Driver) -> None:
    """ping answers ok with the ref and touches nobody else."""
    c, _, _ = d.clinician()
    p, _, _ = d.patient()
    for conn in (c, p):
        fx, _ = d.ok(conn, "ping", ref="pp")
        assert list(fx) == [(conn, {"type": "ok", "ref": "pp"})]


def test_R1_no_frame_to_a_patient_names_another_patient(d: Driver) -> None:
    """Across a busy session, no frame to a patient carries another patient's id or name."""
    c, _, _ = d.clinician()
    patients = [d.patient(name) for name in ("Alice-Name", "Bob-Name", "Cara-Name")]
    (pa, a, _), (_, b, _), (pc, _, _) = patients
    names = ("Alice-Name", "Bob-Name", "Cara-Name")
    who = {conn: (pid, name) for (conn, pid, _), name in zip(patients, names, strict=True)}
    frames: list[tuple[int, dict[str, Any]]] = [pair for _, _, fx in patients for pair in fx]
    for fx in (
        d.ok(c, "send", patient=a, text="hi")[0],
        d.send(pa, "send", text="from alice"),
        d.ok(c, "start_call", patient=b)[0],
        d.ok(c, "set_room", patient_initiated_chat=False)[0],
        d.send(pc, "send", text="from cara"),
        d.ok(c, "end_call")[0],
        d.drop(c),
        d.send(pa, "leave"),
    ):
        frames.extend(fx)
    for conn, frame in frames:
        if conn in who:
            text = json.dumps(frame)
            for other, (pid, name) in who.items():
                if other != conn:
                    assert pid not in text and name not in text, (conn, frame)
