"""Access: clinician tokens, patient ids, and the walls between patients and between rooms.

- Clinician tokens are compared in constant time (``hmac.compare_digest``, on bytes of the
  same length for any well-formed token), and nowhere with ``==``.
- Patient ids are 128 random bits from ``secrets``: unique, uniform, unrelated to the
  room, the name, the secret or the order of arrival.
- A patient can never read, address or learn of another patient; a clinician can never
  touch another room. Each over the wire, and as a property of the model with Hypothesis.
"""

from __future__ import annotations

import ast
import base64
import hmac
import itertools
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_server import _tokens
from reference_server.domain import Close, QueueChatModel, Send
from reference_server.protocol import Limits, clinician_token, encode_bytes, token_is_valid
from reference_server.server import new_patient_id
from tests.support.hardening import serving, token
from tests.support.rawws import TrioClient

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 10.0


# ------------------------------------------------------------------------------------------- tokens


def test_clinician_tokens_are_compared_with_compare_digest_on_equal_lengths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(_tokens.hmac, "compare_digest", spy)
    secret, room = "s3cret", "room-a"
    right = clinician_token(secret, room)
    wrong_first = ("0" if right[0] != "0" else "1") + right[1:]
    wrong_last = right[:-1] + ("0" if right[-1] != "0" else "1")
    other_room = clinician_token(secret, "room-b")
    for candidate, expected in [(right, True), (wrong_first, False), (wrong_last, False),
                                (other_room, False), (right.upper(), False)]:
        calls.clear()
        assert token_is_valid(secret, room, candidate) is expected
        assert calls == [(64, 64)]  # one constant-time comparison of the whole token
    for malformed in ["", right[:10], right + "00", "é" * 64, "\ud800" * 64]:
        calls.clear()
        assert token_is_valid(secret, room, malformed) is False
        assert len(calls) == 1  # never an early return before the comparison


def test_no_token_is_compared_with_an_operator_anywhere_in_the_server() -> None:
    offenders = []
    for path in sorted((ROOT / "reference_server").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                if any(name.lower().endswith("token") for name in names):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


async def test_a_wrong_token_or_another_rooms_token_is_unauthorized_over_the_wire() -> None:
    async with serving(Limits()) as (url, _server):
        for room, given_token in [("ward-x", token("ward-y")), ("ward-x", token("ward-x")[:-1] + "0"),
                                  ("ward-x", ""), ("ward-x", token("ward-x").upper())]:
            if given_token == token("ward-x"):
                continue
            client = await TrioClient.connect(url)
            await client.send_json({"type": "hello", "role": "clinician", "room": room, "token": given_token})
            code, frames = await client.expect_close(WAIT_S)
            assert code == 1008 and [f["code"] for f in frames] == ["unauthorized"]
            assert given_token not in json.dumps(frames) or not given_token
            await client.aclose()


# ------------------------------------------------------------------------------------------- ids


def test_patient_ids_are_128_random_bits_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int | None] = []
    real = secrets.token_urlsafe

    def spy(nbytes: int | None = None) -> str:
        asked.append(nbytes)
        return real(nbytes)

    monkeypatch.setattr(secrets, "token_urlsafe", spy)
    assert len(new_patient_id()) == 22
    assert asked == [16]


def test_patient_ids_are_unique_and_every_bit_is_uniform() -> None:
    n = 5000
    ids = [new_patient_id() for _ in range(n)]
    assert len(set(ids)) == n
    raw = [base64.urlsafe_b64decode(i + "==") for i in ids]
    assert {len(r) for r in raw} == {16}
    values = [int.from_bytes(r, "big") for r in raw]
    for bit in range(128):
        ones = sum((v >> bit) & 1 for v in values)
        # n = 5000: a fair bit's share of ones has a standard deviation of 0.007; 0.06 is 8.5 of them.
        assert 0.44 < ones / n < 0.56, f"bit {bit} is biased: {ones / n:.3f}"


async def test_patient_ids_do_not_follow_from_room_name_secret_or_order() -> None:
    seen: list[str] = []
    for _ in range(2):  # two servers with the same secret
        async with serving(Limits()) as (url, _server):
            for _ in range(20):
                client = await TrioClient.connect(url)
                welcome = await client.hello({"type": "hello", "role": "patient", "room": "same-room",
                                              "name": "Same Name"})
                seen.append(welcome["patient"])
                await client.aclose()
    assert len(set(seen)) == len(seen)
    # Ids of consecutive arrivals share no more than chance: no counter, no time stamp in them.
    common = [len(_common_prefix(a, b)) for a, b in itertools.pairwise(seen)]
    assert max(common) <= 4


def _common_prefix(a: str, b: str) -> str:
    out = []
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        out.append(x)
    return "".join(out)


# ------------------------------------------------------------------------------------------- patients


async def read_all(client: TrioClient) -> list[dict[str, Any]]:
    """Everything up to a ping barrier."""
    await client.send_json({"type": "ping", "ref": "~b"})
    frames = []
    for _ in range(10_000):
        frame = await client.recv_json(WAIT_S)
        if frame.get("ref") == "~b":
            return frames
        frames.append(frame)
    raise AssertionError("no barrier")


async def test_a_patient_never_reads_addresses_or_learns_of_another_patient() -> None:
    room = "two-patients"
    async with serving(Limits()) as (url, _server):
        host = await TrioClient.connect(url)
        await host.hello({"type": "hello", "role": "clinician", "room": room, "token": token(room)})
        alice, bob = await TrioClient.connect(url), await TrioClient.connect(url)
        a_id = (await alice.hello({"type": "hello", "role": "patient", "room": room,
                                   "name": "Alice Uniquename"}))["patient"]
        b_id = (await bob.hello({"type": "hello", "role": "patient", "room": room,
                                 "name": "Bob Othername"}))["patient"]
        to_alice: list[dict[str, Any]] = []
        to_bob: list[dict[str, Any]] = []
        # A whole clinic session touching both: messages, badges, box, calls, settings, departure.
        await alice.send_json({"type": "send", "text": "text-from-alice"})
        await bob.send_json({"type": "send", "text": "text-from-bob"})
        for request in [{"type": "open_chat", "patient": a_id},
                        {"type": "send", "patient": a_id, "text": "text-to-alice"},
                        {"type": "send", "patient": b_id, "text": "text-to-bob"},
                        {"type": "set_room", "patient_initiated_chat": False},
                        {"type": "start_call", "patient": a_id}, {"type": "minimize_chat"}]:
            await host.send_json(request)
        to_host = await read_all(host)
        to_alice += await read_all(alice)
        to_bob += await read_all(bob)
        # Bob tries to reach Alice through every field and request he can send.
        for request in [{"type": "send", "text": "sneaky", "patient": a_id},
                        {"type": "open_chat", "patient": a_id}, {"type": "start_call", "patient": a_id},
                        {"type": "end_call", "patient": a_id},
                        {"type": "hello", "role": "patient", "room": room, "name": "x", "patient": a_id},
                        {"type": a_id}, {"type": "send", "text": a_id, "ref": "r" + a_id[:10]}]:
            await bob.send_json(request)
            to_bob += await read_all(bob)
        to_alice += await read_all(alice)
        to_host += await read_all(host)
        # Bob's sneaky send is Bob's message to his clinician, about Bob.
        sneaky = [f for f in to_host if f.get("type") == "message" and f["text"] == "sneaky"]
        assert len(sneaky) == 1 and sneaky[0]["patient"] == b_id
        assert not any(f.get("text") in ("sneaky", a_id) for f in to_alice)
        # Alice leaves; Bob learns only that his place changed.
        await host.send_json({"type": "end_call"})
        await alice.expect_close(WAIT_S)
        to_bob += await read_all(bob)
        events_to_bob = [f["type"] for f in to_bob if f["type"] not in ("ok", "error")]
        assert events_to_bob == [
            "message", "room_settings", "provider_status", "position", "provider_status"]  # all about Bob
        text_to_bob, text_to_alice = json.dumps(to_bob), json.dumps(to_alice)
        for other in (a_id, "Uniquename", "text-from-alice", "text-to-alice"):
            assert other not in text_to_bob
        for other in (b_id, "Othername", "text-from-bob", "text-to-bob", "sneaky"):
            assert other not in text_to_alice
        for client in (host, alice, bob):
            await client.aclose()


# ------------------------------------------------------------------------------------------- rooms


async def test_a_clinician_never_touches_another_room() -> None:
    async with serving(Limits()) as (url, _server):
        x_host = await TrioClient.connect(url)
        await x_host.hello({"type": "hello", "role": "clinician", "room": "ward-x", "token": token("ward-x")})
        y_host = await TrioClient.connect(url)
        await y_host.hello({"type": "hello", "role": "clinician", "room": "ward-y", "token": token("ward-y")})
        y_patient = await TrioClient.connect(url)
        y_id = (await y_patient.hello({"type": "hello", "role": "patient", "room": "ward-y",
                                       "name": "Yvonne"}))["patient"]
        await y_host.recv_json()  # patient_joined
        answers = []
        for request in [{"type": "send", "patient": y_id, "text": "wrong room"},
                        {"type": "open_chat", "patient": y_id},
                        {"type": "start_call", "patient": y_id}, {"type": "end_call"},
                        {"type": "send", "patient": y_id, "text": "x", "room": "ward-y"},
                        {"type": "set_room", "patient_initiated_chat": False, "room": "ward-y"},
                        {"type": "close_chat", "room": "ward-y"}]:
            await x_host.send_json({**request, "ref": "x"})
            answers.append(await x_host.recv_json())
        assert [a.get("code", "ok") for a in answers] == [
            "not_found", "not_found", "not_found", "not_in_call", "not_found", "ok", "ok"]
        # Room Y saw nothing of it: its clinician and patient only have their barriers.
        assert await read_all(y_host) == []
        assert await read_all(y_patient) == []
        # And room Y's settings are its own: X's set_room (with room: ward-y) changed only X.
        fresh = await TrioClient.connect(url)
        console = await fresh.hello({"type": "hello", "role": "clinician", "room": "ward-y",
                                     "token": token("ward-y")})
        assert console["room_settings"] == {"patient_initiated_chat": True}
        for client in (x_host, y_host, y_patient, fresh):
            await client.aclose()


# ------------------------------------------------------------------------------------------- properties


PATIENT_TYPES = ["send", "open_chat", "start_call", "end_call", "leave", "ping", "hello", "set_room",
                 "close_chat"]
CLINICIAN_TYPES = ["send", "open_chat", "start_call", "end_call", "minimize_chat", "close_chat", "set_room",
                   "set_notifications", "ping"]
FIELDS = ["patient", "text", "room", "name", "token", "id", "to", "target", "role"]


def _requests(types: list[str], planted: str) -> st.SearchStrategy[dict[str, Any]]:
    """Requests with another party's id planted in random fields."""
    value = st.one_of(st.just(planted), st.just(planted + "x"), st.just([planted]),
                      st.just({"patient": planted}), st.text(max_size=10), st.booleans())
    return st.builds(
        lambda kind, fields, ref: {"type": kind, **fields, **({"ref": ref} if ref else {})},
        st.sampled_from(types),
        st.dictionaries(st.sampled_from(FIELDS), value, max_size=4),
        st.sampled_from(["", "r1", planted[:20]]),
    )


class _Room:
    """Two rooms of one model: X (clinician 1, patients A=2 and B=3), Y (clinician 4, patient Y=5)."""

    def __init__(self) -> None:
        counter = iter(range(1, 1000))
        self.model = QueueChatModel(secret="s", new_patient_id=lambda: f"patient{next(counter):015d}",
                                    limits=Limits(rate_per_s=None, rate_burst=None))
        self.now = 1_767_225_600.0
        self.ids: dict[int, str] = {}
        for conn, hello in [(1, {"role": "clinician", "room": "x", "token": clinician_token("s", "x")}),
                            (2, {"role": "patient", "room": "x", "name": "Alice Uniquename"}),
                            (3, {"role": "patient", "room": "x", "name": "Bob Othername"}),
                            (4, {"role": "clinician", "room": "y", "token": clinician_token("s", "y")}),
                            (5, {"role": "patient", "room": "y", "name": "Yvonne Faraway"})]:
            self.model.connect(conn, self.now)
            effects = self.receive(conn, {"type": "hello", **hello})
            welcome = next(e.frame for e in effects if isinstance(e, Send) and e.conn == conn)
            if hello["role"] == "patient":
                self.ids[conn] = welcome.patient  # type: ignore[union-attr]

    def receive(self, conn: int, frame: dict[str, Any]) -> list[Send | Close]:
        self.now += 0.001
        return self.model.with_positions(self.model.receive(conn, json.dumps(frame), self.now))


def _texts_to(effects: list[Send | Close], conn: int) -> str:
    return "".join(encode_bytes(e.frame).decode() for e in effects if isinstance(e, Send) and e.conn == conn)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_nothing_a_patient_sends_reaches_or_names_another_patient(data: st.DataObject) -> None:
    room = _Room()
    alice = room.ids[2]
    for request in data.draw(st.lists(_requests(PATIENT_TYPES, alice), min_size=1, max_size=12)):
        effects = room.receive(3, request)  # Bob
        assert _texts_to(effects, 2) == ""  # Alice gets nothing from anything Bob sends
        assert not any(e.conn in (4, 5) for e in effects)  # nor does the other room
        to_bob = _texts_to(effects, 3)
        assert alice not in to_bob and "Uniquename" not in to_bob
        if any(isinstance(e, Close) for e in effects):
            break  # Bob left


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_a_clinician_touches_nothing_in_another_room(data: st.DataObject) -> None:
    room = _Room()
    yvonne = room.ids[5]
    for request in data.draw(st.lists(_requests(CLINICIAN_TYPES, yvonne), min_size=1, max_size=12)):
        effects = room.receive(1, request)  # the clinician of room x
        assert not any(e.conn in (4, 5) for e in effects)
        assert "Yvonne" not in _texts_to(effects, 1)
    assert room.model.statistics()["patients_present"] == 3  # Yvonne is still there, untouched
