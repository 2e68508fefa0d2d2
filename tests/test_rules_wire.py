"""Every rule of the contract (docs/protocol.md), checked over real loopback sockets.

Each test's name starts with ``test_R<rule>_`` (``test_R11b_`` for a lettered
clause, ``test_R11_`` for R11's departure clause) or, for the transport rules
that carry no rule id, ``test_transport_``; ``test_variants.py`` relies on
these names to check which rules each deliberately wrong model breaks.

How the tests wait: on frames, on close events and on the ``ping`` barrier,
never on sleeps. When a request on connection X causes frames for
connection Y, X's answer is queued after those frames were handed to Y's
writer, so a ``ping`` barrier on Y issued after X's answer returns exactly
what the cause produced for Y. Only causes with no answer (a dropped
connection, a timer) are awaited with bounded ``recv`` calls.

Failure messages never quote message text or patient names (R13): frames are
compared in their redacted form (``text``/``name`` replaced by their lengths)
and texts are compared by :func:`assert_texts`, which reports lengths only.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio_websocket
from wire import LiveServer, WireClient, frame_types
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from reference_server.protocol import EVENT_ORDER, Limits, redact
from reference_server.wscodec import client_frame

Frame = dict[str, Any]
SHORT_WAIT_S = 5.0  # for frames that arrive within milliseconds on loopback (generous: CI may be loaded)

_names = itertools.count(1)


# --------------------------------------------------------------------------- helpers


def shape(frames: Any) -> Any:
    """Frames as they may be shown in a failure report: text and names replaced by their lengths."""
    return redact(frames)


def assert_texts(frames: list[Frame], expected: list[str]) -> None:
    """The frames' ``text`` fields equal ``expected``; a failure reports lengths, never the text."""
    got = [frame.get("text") for frame in frames]
    if got != expected:
        raise AssertionError(
            "message texts differ: lengths "
            f"{[len(t) if isinstance(t, str) else None for t in got]} != {[len(t) for t in expected]}"
        )


def box(state: str, patient: str | None, present: bool, reason: str) -> Frame:
    return {"type": "chat_box", "state": state, "patient": patient, "patient_present": present,
            "reason": reason}


def unread(patient: str, count: int) -> Frame:
    return {"type": "unread", "patient": patient, "count": count}


def notify(patient: str, message_id: int) -> Frame:
    return {"type": "notify", "patient": patient, "id": message_id}


def erased(patient: str, reason: str) -> Frame:
    return {"type": "erased", "patient": patient, "reason": reason}


def left(patient: str, reason: str) -> Frame:
    return {"type": "patient_left", "patient": patient, "reason": reason}


def status(value: str) -> Frame:
    return {"type": "provider_status", "status": value}


def position(value: int) -> Frame:
    return {"type": "position", "position": value}


def without(frames: list[Frame], *frame_type: str) -> list[Frame]:
    return [frame for frame in frames if frame["type"] not in frame_type]


def message_of(frames: list[Frame]) -> Frame:
    found = [frame for frame in frames if frame["type"] == "message"]
    assert len(found) == 1, frame_types(frames)
    return found[0]


def msg(patient: str, message_id: int, sender: str, text: str, ts: int, **client_ts: Any) -> Frame:
    """A redacted ``message`` event (``text`` as its length)."""
    return {"type": "message", "patient": patient, "id": message_id, "from": sender, "text": len(text),
            "ts": ts, **client_ts}


@asynccontextmanager
async def closing(context: Any) -> AsyncIterator[WireClient]:
    """A wire client context whose socket is closed at the end even when the server closed first.

    trio-websocket's client leaves its TCP stream open after a close the server started (it
    waits for the server's TCP close and then never closes its own socket), which surfaces
    as a ResourceWarning; close the stream (a trio-websocket internal) once the client is done.
    """
    stream = None
    try:
        async with context as client:
            stream = client.ws._stream
            yield client
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)


def connect(live: LiveServer) -> AbstractAsyncContextManager[WireClient]:
    return closing(live.connect())


def patient_of(live: LiveServer, room: str, name: str = "Test Patient",
               **extra: Any) -> AbstractAsyncContextManager[WireClient]:
    return closing(live.patient(room, name, **extra))


def clinician_of(live: LiveServer, room: str) -> AbstractAsyncContextManager[WireClient]:
    return closing(live.clinician(room))


class Scene:
    """One room: a clinician and patients, every connection closed at the end."""

    def __init__(self, live: LiveServer, room: str, stack: AsyncExitStack) -> None:
        self.live = live
        self.room = room
        self.stack = stack
        self.doctor: WireClient | None = None

    def elsewhere(self, room: str) -> Scene:
        """Another room on the same server, closed with this one (so that every nursery nests)."""
        return Scene(self.live, room, self.stack)

    async def connect(self) -> WireClient:
        """A connection that has said nothing yet."""
        client: WireClient = await self.stack.enter_async_context(connect(self.live))
        return client

    async def clinician(self) -> WireClient:
        client = await self.stack.enter_async_context(clinician_of(self.live, self.room))
        self.doctor = client
        return client

    async def patient(self, name: str | None = None, *, sync: bool = True) -> WireClient:
        """A patient checks in; with ``sync`` the clinician's ``patient_joined`` is read and checked."""
        name = name if name is not None else f"Test Patient {next(_names)}"
        client = await self.stack.enter_async_context(patient_of(self.live, self.room, name))
        if sync and self.doctor is not None:
            events = await self.doctor.barrier()
            assert shape(events) == [{
                "type": "patient_joined", "patient": client.patient_id, "name": len(name),
                "position": client.welcome["position"], "joined_at": events[0]["joined_at"],
            }]
        return client


@asynccontextmanager
async def scene(live: LiveServer, room: str) -> AsyncIterator[Scene]:
    async with AsyncExitStack() as stack:
        yield Scene(live, room, stack)


async def send(client: WireClient, text: str, patient: str | None = None, **extra: Any) -> Frame:
    """A ``send`` that must succeed; returns its ``ok`` (frames read on the way are dropped)."""
    frame: Frame = {"type": "send", "text": text, **extra}
    if patient is not None:
        frame["patient"] = patient
    _, ok = await client.ok(frame)
    return ok


async def pipeline(client: WireClient, frames: list[Frame]) -> tuple[list[Frame], list[Frame]]:
    """Send every frame at once (each with its own ref); return (the events, the answers in order)."""
    refs = [f"p{index}" for index in range(len(frames))]
    for ref, frame in zip(refs, frames, strict=True):
        await client.send({**frame, "ref": ref})
    events: list[Frame] = []
    answers: dict[str, Frame] = {}
    with trio.fail_after(10):
        while len(answers) < len(refs):
            got = await client.recv()
            if got["type"] in ("ok", "error") and got.get("ref") in refs:
                answers[got["ref"]] = got
            else:
                events.append(got)
    return events, [answers[ref] for ref in refs]


async def answer_raw(client: WireClient, raw: str | bytes) -> Frame:
    """Send a raw frame on a quiet connection; its answer is the next frame."""
    await client.send_raw(raw)
    return await client.recv(SHORT_WAIT_S)


async def recv_until(client: WireClient, frame_type: str, limit_s: float = SHORT_WAIT_S) -> list[Frame]:
    """Frames received up to and including the first of ``frame_type``."""
    frames: list[Frame] = []
    with trio.fail_after(limit_s):
        while True:
            frames.append(await client.recv())
            if frames[-1]["type"] == frame_type:
                return frames


async def assert_undisturbed(clinician: WireClient, patient: WireClient) -> None:
    """Both sessions are open, received nothing unasked, and still chat both ways (R40)."""
    assert shape(await clinician.barrier()) == []
    assert shape(await patient.barrier()) == []
    ok = await send(patient, "still here")
    assert message_of(await clinician.barrier())["id"] == ok["id"]
    ok = await send(clinician, "still here too", patient.patient_id)
    assert frame_types(await patient.barrier()) == ["message"]


def host_port(live: LiveServer) -> tuple[str, int]:
    parts = urlsplit(live.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


class RawClient:
    """A hand-driven WebSocket client (wsproto over a Trio socket): for frames no library will send."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.frames: list[Frame] = []
        self.close_code: int | None = None

    @classmethod
    async def open(cls, live: LiveServer) -> RawClient:
        host, port = host_port(live)
        client = cls(await trio.open_tcp_stream(host, port))
        await client.stream.send_all(client.ws.send(Request(host=host, target="/v1/ws")))
        with trio.fail_after(SHORT_WAIT_S):
            while True:
                client.ws.receive_data(await client.stream.receive_some(65536))
                if any(isinstance(event, AcceptConnection) for event in client.ws.events()):
                    return client

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def send_raw_frame(self, opcode: int, payload: bytes) -> None:
        """A final, masked frame with any payload, valid or not."""
        await self.stream.send_all(client_frame(payload, opcode))

    async def read_until_close(self, limit_s: float = SHORT_WAIT_S) -> int | None:
        """Read (and keep) text frames until the server's close frame or the end of the stream."""
        with trio.fail_after(limit_s):
            while self.close_code is None:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, TextMessage):
                        self.frames.append(json.loads(event.data))
                    elif isinstance(event, CloseConnection):
                        self.close_code = event.code
        return self.close_code

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


# --------------------------------------------------------------------------- transport


async def test_transport_ping_is_a_barrier_after_every_earlier_requests_frames(
        live: LiveServer, room: str) -> None:
    """Requests sent back to back are answered in order, each after the frames it caused; the ping's
    ok comes after all of them. Answers carry their request's ref, events none."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        aid = a.patient_id
        requests: list[Frame] = [
            {"type": "open_chat", "patient": aid},
            {"type": "minimize_chat"},
            {"type": "send", "patient": aid, "text": "barrier text"},
            {"type": "close_chat"},
            {"type": "set_notifications", "chat": False},
            {"type": "ping"},
        ]
        for index, frame in enumerate(requests):
            await c.send({**frame, "ref": f"b{index}"})
        got: list[Frame] = []
        while not (got and got[-1].get("ref") == "b5"):
            got.append(await c.recv())
        assert [(f["type"], f.get("ref")) for f in got] == [
            ("chat_box", None), ("ok", "b0"),
            ("chat_box", None), ("ok", "b1"),
            ("ok", "b2"),
            ("chat_box", None), ("ok", "b3"),
            ("ok", "b4"),
            ("ok", "b5"),
        ]
        reasons = [f["reason"] for f in got if f["type"] == "chat_box"]
        assert reasons == ["open_chat", "minimize_chat", "close_chat"]
        assert frame_types(await a.barrier()) == ["message"]


async def test_transport_frames_of_one_cause_follow_the_contract_order(live: LiveServer, room: str) -> None:
    """patient_left, erased, message, chat_box, unread, notify: the frames one cause produces for the
    clinician come in this order, and before the ok of the clinician's own request."""
    rank = {name: index for index, name in enumerate(EVENT_ORDER)}
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b, d = await s.patient(), await s.patient(), await s.patient()
        aid, bid, did = a.patient_id, b.patient_id, d.patient_id
        causes: list[list[Frame]] = []

        await c.ok({"type": "open_chat", "patient": aid})
        await send(b, "unread one")
        await c.barrier()
        await a.ok({"type": "leave"})  # a departs while shown
        causes.append(await c.barrier())
        assert shape(causes[-1]) == [left(aid, "left"), box("open", aid, False, "patient_left")]

        events, _ = await c.ok({"type": "open_chat", "patient": bid})  # erases a, opens b, clears b's badge
        causes.append(events)
        assert shape(events) == [erased(aid, "viewed_other"), box("closed", None, False, "erased"),
                                 box("open", bid, True, "open_chat"), unread(bid, 0)]

        await c.ok({"type": "minimize_chat"})
        await send(d, "wakes the box")  # message, auto_open, unread, notify
        causes.append(await c.barrier())
        assert frame_types(causes[-1]) == ["message", "chat_box", "unread", "notify"]

        await d.ok({"type": "leave"})  # not shown: patient_left, erased
        causes.append(await c.barrier())
        assert shape(causes[-1]) == [left(did, "left"), erased(did, "not_in_view")]

        for frames in causes:
            ranks = [rank[f["type"]] for f in frames]
            assert ranks == sorted(ranks), frame_types(frames)


async def test_transport_unknown_fields_are_ignored(live: LiveServer, room: str) -> None:
    """Fields a request carries that the protocol does not define are ignored, in hello and after it;
    a patient cannot redirect a message by naming another patient."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        async with patient_of(live, room, "Test Patient Extra", version=2, colour={"r": 1}) as b:
            assert b.welcome["type"] == "welcome"
            await c.barrier()
            ok = await send(b, "mine", patient=a.patient_id, extra=[1, 2], urgent=True)
            message = message_of(await c.barrier())
            assert message["patient"] == b.patient_id and message["id"] == ok["id"] == 1
            assert shape(await a.barrier()) == []
            _, answer = await c.ok({"type": "open_chat", "patient": b.patient_id, "mode": "wide"})
            assert answer["truncated"] is False and len(answer["messages"]) == 1
            await c.ok({"type": "ping", "payload": "x" * 100})


async def test_transport_wrong_token_is_unauthorized_and_closed_1008(live: LiveServer, room: str) -> None:
    """A clinician hello with a wrong token (or another room's token) answers unauthorized, close 1008."""
    for token in ("0" * 64, live.token(room + "-other"), ""):
        async with connect(live) as client:
            await client.send({"type": "hello", "role": "clinician", "room": room, "token": token,
                               "ref": "h"})
            code, frames = await client.expect_close(SHORT_WAIT_S)
            assert [(f["type"], f.get("code"), f.get("ref")) for f in frames] == [
                ("error", "unauthorized", "h")]
            assert code == 1008


@pytest.mark.parametrize(("hello", "field"), [
    ({"role": "patient", "room": "ROOM", "name": "Test Patient"}, "room"),
    ({"role": "patient", "name": "Test Patient"}, "room"),
    ({"role": "doctor", "room": "r", "name": "Test Patient"}, "role"),
    ({"room": "r", "name": "Test Patient"}, "role"),
    ({"role": "patient", "room": "r"}, "name"),
    ({"role": "patient", "room": "r", "name": ""}, "name"),
    ({"role": "patient", "room": "r", "name": "n" * 65}, "name"),
    ({"role": "patient", "room": "r", "name": "\U0001f600" * 65}, "name"),
    ({"role": "patient", "room": "r", "name": 5}, "name"),
    ({"role": "clinician", "room": "r"}, "token"),
    ({"role": "clinician", "room": "r", "token": 5}, "token"),
    ({"role": "patient", "room": "r", "name": "Test Patient", "ref": "x" * 65}, "ref"),
])
async def test_transport_a_bad_hello_answers_invalid_and_closes_1008(
        live: LiveServer, hello: Frame, field: str) -> None:
    """Before welcome every error is followed by a close with 1008: a hello with a missing or wrong
    field answers invalid naming it."""
    async with connect(live) as client:
        await client.send({"type": "hello", **hello})
        code, frames = await client.expect_close(SHORT_WAIT_S)
        assert [(f["type"], f.get("code"), f.get("field")) for f in frames] == [("error", "invalid", field)]
        assert code == 1008


async def test_transport_patient_names_count_code_points_and_ids_are_long_random_strings(
        live: LiveServer, room: str) -> None:
    """A name of 64 astral characters is accepted; every patient gets a distinct string id of at least
    128 bits (22 or more URL-safe characters), and the welcome carries the hello's ref."""
    async with scene(live, room) as s:
        c = await s.clinician()
        ps = [await s.patient("\U0001f600" * 64)] + [await s.patient() for _ in range(5)]
        ids = [p.patient_id for p in ps]
        assert len(set(ids)) == len(ids)
        for patient_id in ids:
            assert isinstance(patient_id, str) and len(patient_id) >= 22
            assert set(patient_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        await c.barrier()
        async with patient_of(live, room, "Test Patient", ref="w1") as p:
            assert p.welcome["ref"] == "w1"


async def test_transport_clinician_welcome_lists_the_limits_in_force(start_server: Any, room: str) -> None:
    """The clinician's welcome lists every limit under its name, null where a limit is off, and the
    console fields of a new room."""
    limits = Limits(max_text_chars=100, rate_per_s=None, rate_burst=None, max_rooms=None,
                    hello_timeout_s=2.5, ping_interval_s=None)
    live = await start_server(limits=limits)
    async with scene(live, room) as s:
        c = await s.clinician()
        assert c.welcome["limits"] == {
            "max_text_chars": 100, "max_frame_bytes": 65536, "max_queued_frames": 1024,
            "max_queued_bytes": 4194304, "rate_per_s": None, "rate_burst": None,
            "max_patients_per_room": 500, "max_rooms": None, "hello_timeout_s": 2.5,
            "ping_interval_s": None, "ping_timeout_s": 60.0,
        }
        assert {k: v for k, v in c.welcome.items() if k != "limits"} == {
            "type": "welcome", "room": room, "queue": [],
            "chat_box": {"state": "closed", "patient": None, "patient_present": False}, "call": None,
            "settings": {"chat_notifications": True}, "room_settings": {"patient_initiated_chat": True},
            "provider_status": "online",
        }


async def test_transport_patient_never_receives_another_patients_id_or_name(
        live: LiveServer, room: str) -> None:
    """In a busy session (chats, calls, settings, departures) no frame to a patient carries another
    patient's id or name."""
    names = ["Quentin Marlowe-Adeyemi", "Ingrid Vasquez-Holm", "Theodora Nkemelu", "Bartholomew Ishikawa"]
    async with scene(live, room) as s:
        patients = [await s.patient(name) for name in names[:2]]
        c = await s.clinician()
        patients += [await s.patient(name) for name in names[2:]]
        ids = [p.patient_id for p in patients]
        for p in patients:
            await p.barrier()
            await send(p, "question")
            await send(c, "answer", p.patient_id)
        await c.ok({"type": "open_chat", "patient": ids[1]})
        await c.ok({"type": "start_call", "patient": ids[0]})
        await send(patients[0], "in call")
        await c.ok({"type": "set_room", "patient_initiated_chat": False})
        await c.ok({"type": "set_room", "patient_initiated_chat": True})
        await patients[2].ok({"type": "leave"})
        await c.ok({"type": "end_call"})
        await c.ok({"type": "minimize_chat"})
        await send(patients[3], "more")
        await c.ok({"type": "start_call", "patient": ids[1]})
        await patients[3].ok({"type": "send", "text": "again"})
        for p in (patients[1], patients[3]):
            await p.barrier()
        for index, p in enumerate(patients):
            dump = json.dumps([p.welcome, *p.seen])
            leaks = [other for other in range(len(patients))
                     if other != index and (ids[other] in dump or names[other] in dump)]
            assert leaks == [], f"patient {index} received data of patients {leaks}"
            assert names[index] not in dump  # not even their own name


# --------------------------------------------------------------------------- R1, R2


async def test_R1_chat_both_ways_with_ids_1_2_3_per_conversation(live: LiveServer, room: str) -> None:
    """Patient and clinician alternate: ids 1, 2, 3 in the conversation; the receiver gets message{patient,
    id, from, text, ts} (no client_ts when the send had none); the sender's ok carries the same id and ts."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        pid = p.patient_id

        ok1 = await send(p, "first")
        assert set(ok1) == {"type", "ref", "id", "ts"} and ok1["id"] == 1
        m1 = message_of(await c.barrier())
        assert shape(m1) == msg(pid, 1, "patient", "first", ok1["ts"])
        assert_texts([m1], ["first"])

        ok2 = await send(c, "second", pid)
        assert ok2["id"] == 2
        events = await p.barrier()
        assert shape(events) == [msg(pid, 2, "clinician", "second", ok2["ts"])]
        assert_texts(events, ["second"])

        ok3 = await send(p, "third")
        m3 = message_of(await c.barrier())
        assert (ok3["id"], m3["id"], m3["from"], m3["ts"]) == (3, 3, "patient", ok3["ts"])
        assert ok1["ts"] <= ok2["ts"] <= ok3["ts"]


async def test_R1_client_ts_is_copied_unchanged_or_absent(live: LiveServer, room: str) -> None:
    """client_ts, int or float, is copied unchanged into the receiver's message, both ways; absent if
    the send had none."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        await c.ok({"type": "open_chat", "patient": p.patient_id})  # shown: the message is the only frame
        for value in (1767225603000, 12.5, 0, -7, 2**53, 1.0e-3):
            await send(p, "timed", client_ts=value)
            got = message_of(await c.barrier())["client_ts"]
            assert type(got) is type(value) and got == value
            await send(c, "timed back", p.patient_id, client_ts=value)
            got = message_of(await p.barrier())["client_ts"]
            assert type(got) is type(value) and got == value
        await send(p, "untimed")
        assert "client_ts" not in message_of(await c.barrier())
        await send(c, "untimed back", p.patient_id)
        assert "client_ts" not in message_of(await p.barrier())


async def test_R1_ts_is_server_time_in_ms_since_epoch(live: LiveServer, room: str) -> None:
    """ts is the server's time in milliseconds since the epoch (the test shares the server's clock)."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        before = time.time() * 1000
        ok = await send(p, "when")
        after = time.time() * 1000
        assert isinstance(ok["ts"], int)
        assert before - 2000 <= ok["ts"] <= after + 2000
        assert message_of(await c.barrier())["ts"] == ok["ts"]


async def test_R1_delivery_within_a_conversation_is_in_send_order(live: LiveServer, room: str) -> None:
    """Thirty sends in a row each way arrive in send order with consecutive ids."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        pid = p.patient_id
        await c.ok({"type": "open_chat", "patient": pid})
        texts = [f"patient line {index}" for index in range(30)]
        _, answers = await pipeline(p, [{"type": "send", "text": text} for text in texts])
        assert [a["id"] for a in answers] == list(range(1, 31))
        messages = await c.barrier()
        assert [(m["type"], m["id"]) for m in messages] == [("message", i) for i in range(1, 31)]
        assert_texts(messages, texts)

        texts = [f"clinician line {index}" for index in range(30)]
        _, answers = await pipeline(c, [{"type": "send", "patient": pid, "text": t} for t in texts])
        assert [a["id"] for a in answers] == list(range(31, 61))
        messages = await p.barrier()
        assert [(m["type"], m["id"], m["from"]) for m in messages] == [
            ("message", i, "clinician") for i in range(31, 61)]
        assert_texts(messages, texts)


async def test_R1_chat_with_a_patient_in_a_call_both_ways(live: LiveServer, room: str) -> None:
    """A patient in a call chats with the clinician both ways, ids going on."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        await send(p, "before call")
        await c.barrier()
        await c.ok({"type": "start_call", "patient": p.patient_id})
        await p.barrier()
        ok = await send(c, "in call", p.patient_id)
        assert ok["id"] == 2 and message_of(await p.barrier())["id"] == 2
        ok = await send(p, "in call reply")
        assert ok["id"] == 3 and message_of(await c.barrier())["id"] == 3


async def test_R2_several_patients_chat_at_the_same_time_each_with_own_ids(
        live: LiveServer, room: str) -> None:
    """Interleaved conversations with three patients: each has its own ids from 1, and each patient
    receives only their own conversation."""
    async with scene(live, room) as s:
        c = await s.clinician()
        ps = [await s.patient() for _ in range(3)]
        expected = {p.patient_id: 0 for p in ps}
        for round_ in range(2):
            for p in ps:
                ok = await send(c, f"to you {round_}", p.patient_id)
                expected[p.patient_id] += 1
                assert ok["id"] == expected[p.patient_id]
            for p in ps:
                events = await p.barrier()
                assert [(m["type"], m["patient"], m["id"]) for m in events] == [
                    ("message", p.patient_id, expected[p.patient_id])]
            for p in reversed(ps):
                ok = await send(p, f"from you {round_}")
                expected[p.patient_id] += 1
                message = message_of(await c.barrier())
                assert (message["patient"], message["id"], ok["id"]) == (
                    p.patient_id, expected[p.patient_id], expected[p.patient_id])
        assert list(expected.values()) == [4, 4, 4]


# --------------------------------------------------------------------------- R3, R4


async def test_R3_badge_counts_unshown_messages_and_open_chat_resets_it(live: LiveServer, room: str) -> None:
    """With the box closed each patient message adds one to the badge (unread{count} pushed);
    open_chat sets it to 0 and pushes unread{count:0}; a message shown in the open box adds nothing."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        aid = a.patient_id
        for count in (1, 2, 3):
            await send(a, f"note {count}")
            assert shape(without(await c.barrier(), "message", "notify")) == [unread(aid, count)]
        events, ok = await c.ok({"type": "open_chat", "patient": aid})
        assert shape(events) == [box("open", aid, True, "open_chat"), unread(aid, 0)]
        assert [m["id"] for m in ok["messages"]] == [1, 2, 3]
        await send(a, "while open")
        assert frame_types(await c.barrier()) == ["message"]  # shown: no badge


async def test_R3_open_chat_pushes_unread_zero_only_when_the_badge_was_not_zero(
        live: LiveServer, room: str) -> None:
    """open_chat on a patient whose badge is 0 pushes no unread."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        events, _ = await c.ok({"type": "open_chat", "patient": a.patient_id})
        assert shape(events) == [box("open", a.patient_id, True, "open_chat")]
        await c.ok({"type": "close_chat"})
        await send(b, "hi")
        assert shape(without(await c.barrier(), "message", "notify")) == [unread(b.patient_id, 1)]
        events, _ = await c.ok({"type": "open_chat", "patient": b.patient_id})
        assert shape(events) == [box("open", b.patient_id, True, "open_chat"), unread(b.patient_id, 0)]
        events, _ = await c.ok({"type": "open_chat", "patient": a.patient_id})
        assert shape(events) == [box("open", a.patient_id, True, "open_chat")]


async def test_R3_message_shown_only_when_box_is_open_on_its_patient(live: LiveServer, room: str) -> None:
    """Box open on A: A's messages are shown and add nothing; B's are not shown and add to B's badge."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        await c.ok({"type": "open_chat", "patient": a.patient_id})
        await send(a, "a1")
        assert frame_types(await c.barrier()) == ["message"]
        await send(b, "b1")
        assert shape(without(await c.barrier(), "message", "notify")) == [unread(b.patient_id, 1)]


async def test_R3_departure_removes_the_badge_without_a_push(live: LiveServer, room: str) -> None:
    """A patient with a badge of 2 departs: patient_left (and erased), no unread push."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        await send(a, "x")
        await send(a, "y")
        await c.barrier()
        await a.ok({"type": "leave"})
        assert "unread" not in frame_types(await c.barrier())


async def test_R3_messages_while_no_clinician_is_connected_are_counted_and_not_replayed(
        live: LiveServer, room: str) -> None:
    """Nothing is shown while no clinician is connected: the messages are counted in the welcome's
    queue badge, not pushed as events, and readable with open_chat."""
    async with scene(live, room) as s:
        a = await s.patient()
        assert a.welcome["provider_status"] == "away"
        texts = ["while away 1", "while away 2"]
        for text in texts:
            await send(a, text)
        c = await s.clinician()
        assert [(q["patient"], q["unread"]) for q in c.welcome["queue"]] == [(a.patient_id, 2)]
        assert shape(await c.barrier()) == []  # not replayed
        events, ok = await c.ok({"type": "open_chat", "patient": a.patient_id})
        assert shape(events) == [box("open", a.patient_id, True, "open_chat"), unread(a.patient_id, 0)]
        assert [m["id"] for m in ok["messages"]] == [1, 2]
        assert_texts(ok["messages"], texts)


async def test_R4_open_chat_returns_the_conversation_in_order(live: LiveServer, room: str) -> None:
    """open_chat's ok carries messages (both directions, oldest first, as the message events) and
    truncated false; it works for waiting and in-call patients."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        pid = p.patient_id
        _, ok = await c.ok({"type": "open_chat", "patient": pid})
        assert ok["messages"] == [] and ok["truncated"] is False
        await c.ok({"type": "close_chat"})
        sent: list[tuple[Frame, str, str, Frame]] = [
            (await send(p, "one", client_ts=5), "patient", "one", {"client_ts": 5}),
            (await send(c, "two", pid), "clinician", "two", {}),
            (await send(p, "three"), "patient", "three", {}),
            (await send(c, "four", pid, client_ts=2.5), "clinician", "four", {"client_ts": 2.5}),
        ]
        expected = [{k: v for k, v in msg(pid, ok_["id"], who, text, ok_["ts"], **cts).items() if k != "type"}
                     for ok_, who, text, cts in sent]
        _, ok = await c.ok({"type": "open_chat", "patient": pid})
        assert shape(ok["messages"]) == expected and ok["truncated"] is False
        assert_texts(ok["messages"], ["one", "two", "three", "four"])
        await c.ok({"type": "close_chat"})
        await c.ok({"type": "start_call", "patient": pid})
        _, ok = await c.ok({"type": "open_chat", "patient": pid})
        assert [m["id"] for m in ok["messages"]] == [1, 2, 3, 4] and ok["truncated"] is False


async def test_R4_open_chat_returns_the_last_500_messages_and_truncated(
        start_server: Any, room: str) -> None:
    """500 messages: all, truncated false; one more: the last 500 (ids 2..501), truncated true."""
    live = await start_server(limits=Limits(rate_per_s=100_000.0, rate_burst=100_000))
    async with scene(live, room) as s:
        p = await s.patient()
        texts = [f"m{index}" for index in range(1, 502)]
        _, answers = await pipeline(p, [{"type": "send", "text": t} for t in texts[:500]])
        assert [a["id"] for a in answers] == list(range(1, 501))
        c = await s.clinician()
        _, ok = await c.ok({"type": "open_chat", "patient": p.patient_id})
        assert [m["id"] for m in ok["messages"]] == list(range(1, 501)) and ok["truncated"] is False
        await c.ok({"type": "close_chat"})
        await send(p, texts[500])
        await c.barrier()
        _, ok = await c.ok({"type": "open_chat", "patient": p.patient_id})
        assert [m["id"] for m in ok["messages"]] == list(range(2, 502)) and ok["truncated"] is True
        assert_texts(ok["messages"], texts[1:])


# --------------------------------------------------------------------------- R5 - R8 (the chat box)


async def test_R5_minimize_and_close_change_the_box(live: LiveServer, room: str) -> None:
    """open → minimized (minimize_chat) → open (open_chat) → closed (close_chat, patient null),
    each change pushed as chat_box before the ok."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        aid = a.patient_id
        assert c.welcome["chat_box"] == {"state": "closed", "patient": None, "patient_present": False}
        events, _ = await c.ok({"type": "open_chat", "patient": aid})
        assert shape(events) == [box("open", aid, True, "open_chat")]
        events, _ = await c.ok({"type": "minimize_chat"})
        assert shape(events) == [box("minimized", aid, True, "minimize_chat")]
        events, _ = await c.ok({"type": "open_chat", "patient": aid})
        assert shape(events) == [box("open", aid, True, "open_chat")]
        events, _ = await c.ok({"type": "minimize_chat"})
        events, _ = await c.ok({"type": "close_chat"})
        assert shape(events) == [box("closed", None, False, "close_chat")]
        await c.ok({"type": "open_chat", "patient": aid})
        events, _ = await c.ok({"type": "close_chat"})
        assert shape(events) == [box("closed", None, False, "close_chat")]


async def test_R5_requests_that_change_nothing_answer_ok_with_no_push(live: LiveServer, room: str) -> None:
    """minimize on a closed or minimized box, close on a closed box and open_chat on the patient already
    open answer ok and push nothing (open_chat's ok still carries the messages)."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        aid = a.patient_id
        assert shape((await c.ok({"type": "minimize_chat"}))[0]) == []
        assert shape((await c.ok({"type": "close_chat"}))[0]) == []
        await c.ok({"type": "open_chat", "patient": aid})
        await send(a, "kept")
        await c.barrier()
        events, ok = await c.ok({"type": "open_chat", "patient": aid})
        assert shape(events) == [] and [m["id"] for m in ok["messages"]] == [1] and ok["truncated"] is False
        await c.ok({"type": "minimize_chat"})
        assert shape((await c.ok({"type": "minimize_chat"}))[0]) == []
        await c.ok({"type": "close_chat"})
        assert shape((await c.ok({"type": "close_chat"}))[0]) == []
        assert shape((await c.ok({"type": "minimize_chat"}))[0]) == []
        assert shape(await a.barrier()) == []


async def test_R6_minimized_box_auto_opens_on_its_own_patients_message(live: LiveServer, room: str) -> None:
    """Box minimized on A, A writes: chat_box{open, A, auto_open} after the message."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        aid = a.patient_id
        await c.ok({"type": "open_chat", "patient": aid})
        await c.ok({"type": "minimize_chat"})
        ok = await send(a, "wake up")
        events = await c.barrier()
        assert shape(events) == [msg(aid, 1, "patient", "wake up", ok["ts"]),
                                 box("open", aid, True, "auto_open")]


async def test_R6_auto_open_stays_on_shown_patient_even_with_notifications_off(
        live: LiveServer, room: str) -> None:
    """Notifications off, box minimized on A, B writes: the box still opens by itself, on A."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        await c.ok({"type": "set_notifications", "chat": False})
        await c.ok({"type": "open_chat", "patient": a.patient_id})
        await c.ok({"type": "minimize_chat"})
        await send(b, "hello")
        events = without(await c.barrier(), "notify")
        assert frame_types(events) == ["message", "chat_box", "unread"]
        assert shape(events[1]) == box("open", a.patient_id, True, "auto_open")


async def test_R7_closed_box_stays_closed_only_the_badge_changes(live: LiveServer, room: str) -> None:
    """Box closed (from the start, and after close_chat): a patient message pushes no chat_box."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        aid = a.patient_id
        ok = await send(a, "one")
        assert shape(await c.barrier()) == [msg(aid, 1, "patient", "one", ok["ts"]), unread(aid, 1),
                                            notify(aid, 1)]
        await c.ok({"type": "open_chat", "patient": b.patient_id})
        await c.ok({"type": "close_chat"})
        await send(a, "two")
        events = await c.barrier()
        assert "chat_box" not in frame_types(events)
        assert shape(without(events, "message", "notify")) == [unread(aid, 2)]


async def test_R8_open_box_on_a_stays_on_a_when_b_writes(live: LiveServer, room: str) -> None:
    """Box open on A, B writes: no chat_box, B's badge goes up; A's next message is still shown."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        await c.ok({"type": "open_chat", "patient": a.patient_id})
        ok = await send(b, "me too")
        assert shape(await c.barrier()) == [msg(b.patient_id, 1, "patient", "me too", ok["ts"]),
                                            unread(b.patient_id, 1), notify(b.patient_id, 1)]
        await send(a, "still here")
        assert frame_types(await c.barrier()) == ["message"]


async def test_R8_minimized_box_on_a_opens_on_a_when_b_writes(live: LiveServer, room: str) -> None:
    """Box minimized on A, B writes: the box opens by itself still on A, and B's badge goes up."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        aid, bid = a.patient_id, b.patient_id
        await c.ok({"type": "open_chat", "patient": aid})
        await c.ok({"type": "minimize_chat"})
        ok = await send(b, "me too")
        assert shape(await c.barrier()) == [
            msg(bid, 1, "patient", "me too", ok["ts"]), box("open", aid, True, "auto_open"), unread(bid, 1),
            notify(bid, 1)]
        await send(a, "still here")
        assert frame_types(await c.barrier()) == ["message"]


# --------------------------------------------------------------------------- R9, R10


async def _depart(how: str, c: WireClient, a: WireClient) -> list[Frame]:
    """Make ``a`` depart by ``how``; return what the clinician received because of it."""
    if how == "leave":
        await a.ok({"type": "leave"})
        code, frames = await a.expect_close(SHORT_WAIT_S)
        assert (code, shape(frames)) == (1000, [])
        return await c.barrier()
    if how == "disconnect":
        await a.aclose()
        return await recv_until(c, "chat_box")
    assert how == "end_call"
    events, _ = await c.ok({"type": "end_call"})
    code, frames = await a.expect_close(SHORT_WAIT_S)
    assert code == 1000 and frames == [{"type": "call", "state": "ended"}]
    return events


@pytest.mark.parametrize("how", ["leave", "disconnect", "end_call"])
async def test_R9_send_to_a_departed_patient_is_patient_gone(live: LiveServer, room: str, how: str) -> None:
    """After a patient departs (leave, lost connection, end_call) send answers patient_gone, shown or
    erased; the box showing them says chat_box{patient_present:false, reason:patient_left}."""
    reasons = {"leave": "left", "disconnect": "disconnected", "end_call": "call_ended"}
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        aid = a.patient_id
        await send(a, "before")
        await c.barrier()
        if how == "end_call":
            await c.ok({"type": "start_call", "patient": aid})
            await a.barrier()
        await c.ok({"type": "open_chat", "patient": aid})
        events = await _depart(how, c, a)
        assert shape(events) == [left(aid, reasons[how]), box("open", aid, False, "patient_left")]
        _, error = await c.error({"type": "send", "patient": aid, "text": "are you there"}, "patient_gone")
        assert "field" not in error and isinstance(error["message"], str)
        await c.ok({"type": "close_chat"})
        await c.error({"type": "send", "patient": aid, "text": "are you there"}, "patient_gone")


async def test_R9_minimized_box_on_departing_patient_keeps_its_state(live: LiveServer, room: str) -> None:
    """A box minimized on a departing patient stays minimized and says patient_present false."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        await c.ok({"type": "open_chat", "patient": a.patient_id})
        await c.ok({"type": "minimize_chat"})
        await a.ok({"type": "leave"})
        assert shape(await c.barrier()) == [left(a.patient_id, "left"),
                                            box("minimized", a.patient_id, False, "patient_left")]
        await c.error({"type": "send", "patient": a.patient_id, "text": "x"}, "patient_gone")


async def test_R10_notify_is_pushed_only_while_notifications_are_on(live: LiveServer, room: str) -> None:
    """On (new room): an unshown message pushes notify{patient, id}; off: none; on again: notify again;
    a shown message never notifies; set_notifications pushes nothing."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        aid = a.patient_id
        assert c.welcome["settings"] == {"chat_notifications": True}
        await send(a, "one")
        assert shape((await c.barrier())[-1]) == notify(aid, 1)
        assert shape((await c.ok({"type": "set_notifications", "chat": False}))[0]) == []
        await send(a, "two")
        assert frame_types(await c.barrier()) == ["message", "unread"]
        assert shape((await c.ok({"type": "set_notifications", "chat": True}))[0]) == []
        await send(a, "three")
        assert shape((await c.barrier())[-1]) == notify(aid, 3)
        await c.ok({"type": "open_chat", "patient": aid})
        await send(a, "four")
        assert frame_types(await c.barrier()) == ["message"]


@pytest.mark.parametrize("refresh", ["replace", "drop"])
async def test_R10_notification_setting_survives_a_refresh(live: LiveServer, room: str, refresh: str) -> None:
    """Notifications turned off survive the clinician's refresh (a new hello or a dropped connection)."""
    async with scene(live, room) as s:
        c1 = await s.clinician()
        a = await s.patient()
        await c1.ok({"type": "set_notifications", "chat": False})
        if refresh == "drop":
            await c1.aclose()
            assert shape(await recv_until(a, "provider_status")) == [status("away")]
        c2 = await s.clinician()
        assert c2.welcome["settings"] == {"chat_notifications": False}
        await send(a, "quiet")
        assert frame_types(await c2.barrier()) == ["message", "unread"]


# --------------------------------------------------------------------------- R11 - R13 (erasure)


@pytest.mark.parametrize("state", ["open", "minimized"])
async def test_R11a_close_chat_erases_the_departed_conversation(
        live: LiveServer, room: str, state: str) -> None:
    """Box (open or minimized) on departed A; close_chat: erased{A, chat_closed}, then
    chat_box{closed, null, close_chat}; A's conversation can no longer be read."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        aid = a.patient_id
        await send(a, "remember me")
        await c.ok({"type": "open_chat", "patient": aid})
        if state == "minimized":
            await c.ok({"type": "minimize_chat"})
        await a.ok({"type": "leave"})
        assert shape(await c.barrier()) == [left(aid, "left"), box(state, aid, False, "patient_left")]
        _, ok = await c.ok({"type": "open_chat", "patient": aid})  # still readable while in the box
        assert [m["id"] for m in ok["messages"]] == [1]
        if state == "minimized":
            await c.ok({"type": "minimize_chat"})
        events, _ = await c.ok({"type": "close_chat"})
        assert shape(events) == [erased(aid, "chat_closed"), box("closed", None, False, "close_chat")]
        await c.error({"type": "open_chat", "patient": aid}, "not_found")


async def test_R11b_open_chat_on_other_erases_departed_conversation(live: LiveServer, room: str) -> None:
    """Box on departed A; open_chat B: erased{A, viewed_other}, chat_box{closed, erased}, then
    chat_box{open, B, open_chat}; A's conversation is gone."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        aid, bid = a.patient_id, b.patient_id
        await send(a, "remember me")
        await send(c, "for b", bid)
        await c.ok({"type": "open_chat", "patient": aid})
        await a.ok({"type": "leave"})
        await c.barrier()
        events, ok = await c.ok({"type": "open_chat", "patient": bid})
        assert shape(events) == [erased(aid, "viewed_other"), box("closed", None, False, "erased"),
                                 box("open", bid, True, "open_chat")]
        assert [m["id"] for m in ok["messages"]] == [1]
        await c.error({"type": "open_chat", "patient": aid}, "not_found")


async def test_R11b_reopening_the_departed_conversation_keeps_it(live: LiveServer, room: str) -> None:
    """Box minimized on departed A; open_chat A opens it again (no erasure) and returns its messages."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        aid = a.patient_id
        await send(a, "remember me")
        await c.ok({"type": "open_chat", "patient": aid})
        await c.ok({"type": "minimize_chat"})
        await a.ok({"type": "leave"})
        await c.barrier()
        events, ok = await c.ok({"type": "open_chat", "patient": aid})
        assert shape(events) == [box("open", aid, False, "open_chat")]
        assert [m["id"] for m in ok["messages"]] == [1]


async def test_R11c_a_started_call_erases_the_departed_conversation(live: LiveServer, room: str) -> None:
    """Box on departed A: a start_call that fails erases nothing; one that succeeds pushes
    erased{A, call_started} then chat_box{closed, erased}."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b, d = await s.patient(), await s.patient(), await s.patient()
        aid = a.patient_id
        await c.ok({"type": "start_call", "patient": d.patient_id})
        await send(a, "remember me")
        await c.ok({"type": "open_chat", "patient": aid})
        await a.ok({"type": "leave"})
        await c.barrier()
        events, _ = await c.error({"type": "start_call", "patient": b.patient_id}, "call_in_progress")
        assert shape(events) == []
        _, ok = await c.ok({"type": "open_chat", "patient": aid})
        assert [m["id"] for m in ok["messages"]] == [1]
        await c.ok({"type": "end_call"})
        events, _ = await c.ok({"type": "start_call", "patient": b.patient_id})
        assert shape(events) == [erased(aid, "call_started"), box("closed", None, False, "erased")]
        await c.error({"type": "open_chat", "patient": aid}, "not_found")


@pytest.mark.parametrize("refresh", ["replace", "drop"])
async def test_R11d_refresh_erases_the_departed_conversation(
        live: LiveServer, room: str, refresh: str) -> None:
    """Box on departed A; the clinician's page refreshes (new hello: erased{A, refresh} to the old
    connection, then 4000; or the connection drops): A's conversation is gone."""
    async with scene(live, room) as s:
        c1 = await s.clinician()
        a, b = await s.patient(), await s.patient()
        aid = a.patient_id
        await send(a, "remember me")
        await c1.ok({"type": "open_chat", "patient": aid})
        await a.ok({"type": "leave"})
        await c1.barrier()
        if refresh == "drop":
            await c1.aclose()
            await recv_until(b, "provider_status")
            c2 = await s.clinician()
        else:
            c2 = await s.clinician()
            code, frames = await c1.expect_close(SHORT_WAIT_S)
            assert code == 4000
            assert erased(aid, "refresh") in shape(frames)
        assert c2.welcome["chat_box"] == {"state": "closed", "patient": None, "patient_present": False}
        await c2.error({"type": "open_chat", "patient": aid}, "not_found")


@pytest.mark.parametrize("box_on", ["closed", "other"])
async def test_R11_departure_out_of_view_erases_at_once(live: LiveServer, room: str, box_on: str) -> None:
    """A departs while the box is closed or shows B: patient_left then erased{A, not_in_view}, no
    chat_box; this holds for an empty conversation too; A cannot be opened."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b, d = await s.patient(), await s.patient(), await s.patient()
        await send(a, "gone soon")
        await c.barrier()
        if box_on == "other":
            await c.ok({"type": "open_chat", "patient": b.patient_id})
        for p in (a, d):  # d never wrote: an empty conversation
            await p.ok({"type": "leave"})
            assert shape(await c.barrier()) == [left(p.patient_id, "left"),
                                                erased(p.patient_id, "not_in_view")]
            await c.error({"type": "open_chat", "patient": p.patient_id}, "not_found")


async def test_R12_refresh_by_new_hello_closes_old_with_4000_and_keeps_the_room(
        live: LiveServer, room: str) -> None:
    """A new clinician hello replaces the old connection (erased{refresh} for each conversation, then
    4000): badges 0, box closed, every conversation erased; queue, call, settings and the "clinician
    wrote first" marks stay; message ids go on; patients see no provider-status change."""
    async with scene(live, room) as s:
        c1 = await s.clinician()
        a, b, d = await s.patient(), await s.patient(), await s.patient()
        aid, bid, did = a.patient_id, b.patient_id, d.patient_id
        await c1.ok({"type": "set_notifications", "chat": False})
        await c1.ok({"type": "set_room", "patient_initiated_chat": False})
        await send(c1, "hello a", aid)
        await send(a, "reply a")
        await c1.ok({"type": "start_call", "patient": did})
        await c1.ok({"type": "open_chat", "patient": bid})
        for p in (a, b, d):
            await p.barrier()

        c2 = await s.clinician()
        code, frames = await c1.expect_close(SHORT_WAIT_S)
        assert code == 4000
        assert sorted(f["patient"] for f in frames) == sorted([aid, bid, did])
        assert all(f["type"] == "erased" and f["reason"] == "refresh" for f in frames)

        welcome = c2.welcome
        assert [(q["patient"], q["state"], q["unread"]) for q in welcome["queue"]] == [
            (aid, "waiting", 0), (bid, "waiting", 0), (did, "in_call", 0)]
        assert welcome["chat_box"] == {"state": "closed", "patient": None, "patient_present": False}
        assert welcome["call"] == {"patient": did}
        assert welcome["settings"] == {"chat_notifications": False}
        assert welcome["room_settings"] == {"patient_initiated_chat": False}
        for p in (a, b, d):
            assert shape(await p.barrier()) == []

        ok = await send(a, "after refresh")  # a's mark survived; ids go on
        assert ok["id"] == 3
        events = without(await c2.barrier(), "notify")
        assert [(f["type"], f.get("id", f.get("count"))) for f in events] == [("message", 3), ("unread", 1)]
        await b.error({"type": "send", "text": "may I"}, "chat_disabled")
        _, ok = await c2.ok({"type": "open_chat", "patient": aid})
        assert [m["id"] for m in ok["messages"]] == [3]
        _, ok = await c2.ok({"type": "open_chat", "patient": did})
        assert ok["messages"] == [] and ok["truncated"] is False


async def test_R12_a_refresh_happens_once_per_connection(live: LiveServer, room: str) -> None:
    """After a replacement, the end of the old connection is no second refresh: the new console's box
    and conversations stay."""
    async with scene(live, room) as s:
        c1 = await s.clinician()
        a = await s.patient()
        c2 = await s.clinician()
        await c2.ok({"type": "open_chat", "patient": a.patient_id})
        await send(a, "to the new console")
        assert frame_types(await c2.barrier()) == ["message"]
        code, _ = await c1.expect_close(SHORT_WAIT_S)
        assert code == 4000
        await c1.aclose()
        with trio.fail_after(SHORT_WAIT_S):  # until the server has ended the old connection
            while live.server.statistics().connections_open > 2:  # noqa: ASYNC110 -- no event to wait on
                await trio.sleep(0.01)
        assert shape(await c2.barrier()) == []
        await send(a, "still shown")
        assert frame_types(await c2.barrier()) == ["message"]
        _, ok = await c2.ok({"type": "open_chat", "patient": a.patient_id})
        assert [m["id"] for m in ok["messages"]] == [1, 2]


async def test_R12_refresh_by_dropped_connection_then_away_messages_are_kept(
        live: LiveServer, room: str) -> None:
    """The clinician's connection drops: conversations erased and badges 0 at that moment; messages sent
    while nobody is connected are counted, not replayed, and readable, with ids going on."""
    async with scene(live, room) as s:
        c1 = await s.clinician()
        a = await s.patient()
        await send(a, "before drop")
        await send(c1, "answer", a.patient_id)
        await c1.barrier()
        await a.barrier()
        await c1.aclose()
        assert shape(await recv_until(a, "provider_status")) == [status("away")]
        ok = await send(a, "while away")
        assert ok["id"] == 3
        c2 = await s.clinician()
        assert [(q["patient"], q["unread"]) for q in c2.welcome["queue"]] == [(a.patient_id, 1)]
        assert shape(await c2.barrier()) == []
        _, ok = await c2.ok({"type": "open_chat", "patient": a.patient_id})
        assert [m["id"] for m in ok["messages"]] == [3]
        assert_texts(ok["messages"], ["while away"])


async def test_R12_hello_with_no_clinician_connected_erases_nothing(live: LiveServer, room: str) -> None:
    """A clinician hello into a room with no clinician connected erases nothing: no erased frames, and
    the conversation of a patient who wrote before is readable."""
    async with scene(live, room) as s:
        a = await s.patient()
        await send(a, "early")
        c = await s.clinician()
        assert shape(await c.barrier()) == []
        events, ok = await c.ok({"type": "open_chat", "patient": a.patient_id})
        assert "erased" not in frame_types(events)
        assert [m["id"] for m in ok["messages"]] == [1]


async def test_R13_open_chat_on_erased_or_unknown_patient_is_not_found(live: LiveServer, room: str) -> None:
    """open_chat on an erased departed patient and on an id the room never had answers not_found."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        await send(a, "bye")
        await a.ok({"type": "leave"})
        await c.barrier()
        await c.error({"type": "open_chat", "patient": a.patient_id}, "not_found")
        await c.error({"type": "open_chat", "patient": "AAAAAAAAAAAAAAAAAAAAAA"}, "not_found")
        await c.error({"type": "open_chat", "patient": ""}, "not_found")
        async with clinician_of(live, room + "-x") as other:
            await other.error({"type": "open_chat", "patient": a.patient_id}, "not_found")


# --------------------------------------------------------------------------- R20, R30, R31


async def test_R20_start_call_and_end_call(live: LiveServer, room: str) -> None:
    """start_call: call{started} to the patient; one call at a time; end_call: call{ended}, close 1000,
    patient_left{call_ended}; then end_call answers not_in_call."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        aid, bid = a.patient_id, b.patient_id
        await c.error({"type": "end_call"}, "not_in_call")
        events, _ = await c.ok({"type": "start_call", "patient": aid})
        assert shape(events) == []
        assert shape(await a.barrier()) == [{"type": "call", "state": "started"}, status("on_call")]
        await c.error({"type": "start_call", "patient": bid}, "call_in_progress")
        await c.error({"type": "start_call", "patient": aid}, "call_in_progress")
        events, _ = await c.ok({"type": "end_call"})
        assert shape(events) == [left(aid, "call_ended"), erased(aid, "not_in_view")]
        code, frames = await a.expect_close(SHORT_WAIT_S)
        assert (code, shape(frames)) == (1000, [{"type": "call", "state": "ended"}])
        await c.error({"type": "end_call"}, "not_in_call")
        await c.error({"type": "start_call", "patient": aid}, "patient_gone")
        await c.error({"type": "start_call", "patient": "AAAAAAAAAAAAAAAAAAAAAA"}, "not_found")
        await c.ok({"type": "start_call", "patient": bid})
        assert (await b.barrier())[-2:] == [{"type": "call", "state": "started"}, status("on_call")]


async def test_R20_conversation_badge_ids_and_box_go_on_through_a_call(live: LiveServer, room: str) -> None:
    """Box open on B, A has a badge of 1: start_call A pushes nothing (the box stays on B, B's messages
    still shown); A's badge, ids and conversation go on."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        aid, bid = a.patient_id, b.patient_id
        await send(a, "before")
        await c.barrier()
        await c.ok({"type": "open_chat", "patient": bid})
        events, _ = await c.ok({"type": "start_call", "patient": aid})
        assert shape(events) == []
        await send(b, "on b")
        assert frame_types(await c.barrier()) == ["message"]  # still open on B
        await c.ok({"type": "close_chat"})
        ok = await send(a, "during")
        assert ok["id"] == 2
        assert shape(without(await c.barrier(), "message", "notify")) == [unread(aid, 2)]
        assert (await send(c, "to a", aid))["id"] == 3
        _, ok = await c.ok({"type": "open_chat", "patient": aid})
        assert [m["id"] for m in ok["messages"]] == [1, 2, 3]


async def test_R30_provider_status_is_pushed_to_every_present_patient(live: LiveServer, room: str) -> None:
    """away (no clinician) → online (hello) → on_call (start_call, to the waiting and in-call patient)
    → away (clinician gone) → on_call (clinician back during the call) → online (end_call)."""
    async with scene(live, room) as s:
        a, b = await s.patient(), await s.patient()
        assert a.welcome["provider_status"] == b.welcome["provider_status"] == "away"
        c1 = await s.clinician()
        assert c1.welcome["provider_status"] == "online"
        for p in (a, b):
            assert shape(await p.barrier()) == [status("online")]
        late = await s.patient()
        assert late.welcome["provider_status"] == "online"
        await c1.ok({"type": "start_call", "patient": a.patient_id})
        assert status("on_call") in await a.barrier()
        for p in (b, late):
            assert status("on_call") in await p.barrier()
        await c1.aclose()
        for p in (a, b, late):
            assert shape(await recv_until(p, "provider_status")) == [status("away")]
        c2 = await s.clinician()
        assert c2.welcome["provider_status"] == "on_call"
        for p in (a, b, late):
            assert shape(await p.barrier()) == [status("on_call")]
        await c2.ok({"type": "end_call"})
        for p in (b, late):
            assert shape(await p.barrier()) == [status("online")]


async def test_R30_position_is_pushed_when_a_patient_ahead_leaves_or_is_called(
        live: LiveServer, room: str) -> None:
    """Four waiting patients (positions 1-4): the second leaves → those behind move up; the first is
    called → the rest move up; a patient ahead of no one changing sees nothing."""
    async with scene(live, room) as s:
        c = await s.clinician()
        ps = [await s.patient() for _ in range(4)]
        assert [p.welcome["position"] for p in ps] == [1, 2, 3, 4]
        await ps[1].ok({"type": "leave"})
        assert shape(await ps[0].barrier()) == []
        assert shape(await ps[2].barrier()) == [position(2)]
        assert shape(await ps[3].barrier()) == [position(3)]
        await c.ok({"type": "start_call", "patient": ps[0].patient_id})
        assert shape(await ps[2].barrier()) == [status("on_call"), position(1)]
        assert shape(await ps[3].barrier()) == [status("on_call"), position(2)]
        await ps[3].ok({"type": "leave"})
        assert shape(await ps[2].barrier()) == []
        await c.barrier()
        newcomer = await s.patient()
        assert newcomer.welcome["position"] == 2


async def test_R31_patient_chat_disabled_until_the_clinician_writes_first(
        live: LiveServer, room: str) -> None:
    """patient_initiated_chat false: a waiting patient's send answers chat_disabled until the clinician
    has written to that patient; then the patient may write."""
    async with scene(live, room) as s:
        c = await s.clinician()
        assert c.welcome["room_settings"] == {"patient_initiated_chat": True}
        a, b = await s.patient(), await s.patient()
        assert a.welcome["patient_initiated_chat"] is True
        await c.ok({"type": "set_room", "patient_initiated_chat": False})
        await a.barrier()
        await b.barrier()
        await a.error({"type": "send", "text": "may I"}, "chat_disabled")
        assert shape(await c.barrier()) == []
        await send(c, "please go ahead", a.patient_id)
        await a.barrier()
        assert (await send(a, "thanks"))["id"] == 2
        await b.error({"type": "send", "text": "me too"}, "chat_disabled")
        await c.barrier()
        late = await s.patient()
        assert late.welcome["patient_initiated_chat"] is False
        await late.error({"type": "send", "text": "hello"}, "chat_disabled")


async def test_R31_a_patient_in_a_call_may_always_write(live: LiveServer, room: str) -> None:
    """patient_initiated_chat false, clinician never wrote: the patient in the call may still write."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a = await s.patient()
        await c.ok({"type": "set_room", "patient_initiated_chat": False})
        await a.error({"type": "send", "text": "may I"}, "chat_disabled")
        await c.ok({"type": "start_call", "patient": a.patient_id})
        assert (await send(a, "in call"))["id"] == 1


async def test_R31_room_settings_are_pushed_to_present_patients_on_change_only(
        live: LiveServer, room: str) -> None:
    """set_room pushes room_settings{patient_initiated_chat} to every present patient (waiting or in
    call) when the value changes, and nothing when it does not."""
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        await c.ok({"type": "start_call", "patient": b.patient_id})
        await a.barrier()
        await b.barrier()
        for value, pushed in ((False, True), (False, False), (True, True), (True, False)):
            events, _ = await c.ok({"type": "set_room", "patient_initiated_chat": value})
            assert shape(events) == []
            expected = [{"type": "room_settings", "patient_initiated_chat": value}] if pushed else []
            for p in (a, b):
                assert shape(await p.barrier()) == expected


# --------------------------------------------------------------------------- R40 - R46 (bad input and limits)

BAD_FRAMES: list[str | bytes] = [
    "not json", "{", "", "[1, 2]", "42", '"ping"', "null", "true",
    '{"ref": "x1"}', '{"type": 5, "ref": "x2"}', '{"type": null}', '{"type": ["ping"]}',
    b'{"type": "ping"}',
]


async def test_R40_bad_frames_answer_bad_frame_and_disturb_no_one(live: LiveServer, room: str) -> None:
    """Not JSON, not an object, no string type, or a binary frame: bad_frame (with the ref when the
    object had one); the connection stays usable and the other session is undisturbed."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        for client in (c, p):
            for raw in BAD_FRAMES:
                answer = await answer_raw(client, raw)
                assert (answer["type"], answer.get("code")) == ("error", "bad_frame"), raw
                assert "field" not in answer and isinstance(answer["message"], str)
                expected_ref = {'{"ref": "x1"}': "x1", '{"type": 5, "ref": "x2"}': "x2"}.get(str(raw))
                assert answer.get("ref") == expected_ref, raw
                await client.ok({"type": "ping"})
        await assert_undisturbed(c, p)


async def test_R40_unknown_type_answers_unknown_type(live: LiveServer, room: str) -> None:
    """A type that is no request of the protocol (including server frame types) answers unknown_type."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        for client in (c, p):
            for frame_type in ("dance", "welcome", "message", "PING", ""):
                _, error = await client.error({"type": frame_type, "patient": p.patient_id}, "unknown_type")
                assert "field" not in error
            await client.ok({"type": "ping"})
        await assert_undisturbed(c, p)


async def test_R40_requests_the_role_may_not_make_answer_forbidden(live: LiveServer, room: str) -> None:
    """A patient's clinician requests (open_chat, ...), a clinician's leave, and a second hello from
    either role answer forbidden (before any field check); the session goes on unchanged."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        pid = p.patient_id
        patient_forbidden: list[Frame] = [
            {"type": "open_chat", "patient": pid}, {"type": "open_chat"}, {"type": "minimize_chat"},
            {"type": "close_chat"}, {"type": "set_notifications", "chat": False},
            {"type": "set_room", "patient_initiated_chat": False}, {"type": "start_call", "patient": pid},
            {"type": "end_call"},
            {"type": "hello", "role": "patient", "room": room, "name": "Test Patient Again"},
            {"type": "hello", "role": "clinician", "room": room, "token": live.token(room)},
        ]
        for frame in patient_forbidden:
            await p.error(frame, "forbidden")
        clinician_forbidden: list[Frame] = [
            {"type": "leave"},
            {"type": "hello", "role": "clinician", "room": room, "token": live.token(room)},
            {"type": "hello", "role": "patient", "room": room, "name": "Test Patient Again"},
        ]
        for frame in clinician_forbidden:
            await c.error(frame, "forbidden")
        await assert_undisturbed(c, p)
        assert (await send(p, "same me"))["id"] == 3  # still the same patient, same conversation


async def test_R40_wrong_or_missing_fields_answer_invalid_naming_the_field(
        live: LiveServer, room: str) -> None:
    """Missing or wrongly typed fields, a ref too long or not a string, an empty text and a lone
    surrogate answer invalid with field; the connection and the other session go on."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        pid = p.patient_id
        clinician_cases: list[tuple[Frame, str]] = [
            ({"type": "send", "patient": pid}, "text"),
            ({"type": "send", "text": "x"}, "patient"),
            ({"type": "send", "patient": pid, "text": 5}, "text"),
            ({"type": "send", "patient": 5, "text": "x"}, "patient"),
            ({"type": "send", "patient": pid, "text": ""}, "text"),
            ({"type": "send", "patient": "AAAAAAAAAAAAAAAAAAAAAA", "text": ""}, "text"),  # before not_found
            ({"type": "send", "patient": pid, "text": "x", "client_ts": "soon"}, "client_ts"),
            ({"type": "open_chat"}, "patient"),
            ({"type": "open_chat", "patient": None}, "patient"),
            ({"type": "start_call"}, "patient"),
            ({"type": "set_notifications"}, "chat"),
            ({"type": "set_notifications", "chat": "yes"}, "chat"),
            ({"type": "set_room", "patient_initiated_chat": 1}, "patient_initiated_chat"),
        ]
        patient_cases: list[tuple[Frame, str]] = [
            ({"type": "send"}, "text"),
            ({"type": "send", "text": ""}, "text"),
            ({"type": "send", "text": ["x"]}, "text"),
            ({"type": "send", "text": "x", "client_ts": "1"}, "client_ts"),
            ({"type": "send", "text": "x", "client_ts": None}, "client_ts"),
        ]
        for client, cases in ((c, clinician_cases), (p, patient_cases)):
            for frame, field in cases:
                _, error = await client.error(frame, "invalid")  # carries its valid ref
                assert error.get("field") == field, (frame["type"], field)
        for client in (c, p):
            for ref in ("r" * 65, 5, ["r"], None):
                answer = await answer_raw(client, json.dumps({"type": "ping", "ref": ref}))
                assert (answer.get("code"), answer.get("field"), "ref" in answer) == ("invalid", "ref", False)
            answer = await answer_raw(client, '{"type": "ping", "ref": "\\udc00"}')
            assert (answer.get("code"), answer.get("field")) == ("invalid", "ref")
            answer = await answer_raw(client, json.dumps({"type": "ping", "ref": "r" * 64}))
            assert answer == {"type": "ok", "ref": "r" * 64}
            answer = await answer_raw(client, json.dumps({"type": "ping", "ref": "😀" * 64}))
            assert answer == {"type": "ok", "ref": "😀" * 64}  # 64 characters, 128 UTF-16 units
        answer = await answer_raw(p, '{"type": "send", "text": "x", "client_ts": NaN, "ref": "n1"}')
        assert (answer.get("code"), answer.get("field"), answer.get("ref")) == ("invalid", "client_ts", "n1")
        surrogate_text = [
            (c, '{"type": "send", "patient": "' + pid + '", "text": "ab\\ud800cd", "ref": "s1"}'),
            (p, '{"type": "send", "text": "ab\\ud800cd", "ref": "s1"}'),
        ]
        for client, raw in surrogate_text:
            answer = await answer_raw(client, raw)
            assert (answer.get("code"), answer.get("field"), answer.get("ref")) == ("invalid", "text", "s1")
        await assert_undisturbed(c, p)
        assert (await send(p, "ids unaffected"))["id"] == 3


@pytest.mark.parametrize("bad_room", ["Bad-Room", "a" * 65, "", "room one", "room\n", "caf\u00e9", 7])
async def test_R40_hello_with_room_not_matching_the_slug_is_invalid_and_closed_1008(
        live: LiveServer, room: str, bad_room: Any) -> None:
    """A hello whose room is not [a-z0-9-]{1,64} answers invalid{field: room} and closes with 1008;
    a session in a real room is undisturbed."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        for hello in ({"type": "hello", "role": "patient", "room": bad_room, "name": "Test Patient",
                       "ref": "h"},
                      {"type": "hello", "role": "clinician", "room": bad_room, "token": live.token(room),
                       "ref": "h"}):
            async with connect(live) as client:
                await client.send(hello)
                code, frames = await client.expect_close(SHORT_WAIT_S)
                assert [(f["type"], f.get("code"), f.get("field"), f.get("ref")) for f in frames] == [
                    ("error", "invalid", "room", "h")]
                assert code == 1008
        await assert_undisturbed(c, p)


async def test_R40_an_unknown_patient_answers_not_found(live: LiveServer, room: str) -> None:
    """send, open_chat and start_call naming an id the room never had answer not_found; a real
    patient's id from another room too."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        stranger = await s.elsewhere(room + "-b").patient()
        for patient_id in ("AAAAAAAAAAAAAAAAAAAAAA", stranger.patient_id):
            await c.error({"type": "send", "patient": patient_id, "text": "x"}, "not_found")
            await c.error({"type": "open_chat", "patient": patient_id}, "not_found")
            await c.error({"type": "start_call", "patient": patient_id}, "not_found")
        assert shape(await stranger.barrier()) == []
        await assert_undisturbed(c, p)


async def test_R41_max_text_chars_is_a_setting(start_server: Any, room: str) -> None:
    """With max_text_chars 100, a text of 100 characters passes and one of 101 answers too_large."""
    live = await start_server(limits=Limits(max_text_chars=100))
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        await send(p, "\U0001f600" * 100)
        await p.error({"type": "send", "text": "x" * 101}, "too_large")
        await c.error({"type": "send", "patient": p.patient_id, "text": "x" * 101}, "too_large")


async def test_R41_text_is_limited_to_4096_code_points(live: LiveServer, room: str) -> None:
    """4096 astral characters (16 KiB of UTF-8, 8192 UTF-16 units) pass both ways; 4097 characters
    answer too_large and deliver nothing."""
    async with scene(live, room) as s:
        c = await s.clinician()
        p = await s.patient()
        pid = p.patient_id
        longest = "\U0001f600" * 4096
        await send(p, longest)
        message = message_of(await c.barrier())
        assert len(message["text"]) == 4096
        assert_texts([message], [longest])
        await send(c, longest, pid)
        assert_texts(await p.barrier(), [longest])
        for text in ("\U0001f600" * 4097, "x" * 4097):
            events, error = await p.error({"type": "send", "text": text}, "too_large")
            assert "field" not in error
            events, _ = await c.error({"type": "send", "patient": pid, "text": text}, "too_large")
            assert shape(events) == []
        assert shape(await c.barrier()) == [] and await p.barrier() == []
        assert (await send(p, "x" * 4096))["id"] == 3


def _ping_of_size(size: int, pad: str) -> str:
    """A ping whose UTF-8 encoding is exactly ``size`` bytes, padded with ``pad`` (1 or 4 bytes)."""
    frame = '{"type": "ping", "ref": "big", "pad": "%s"}'
    room_left = size - len((frame % "").encode("utf-8"))
    width = len(pad.encode("utf-8"))
    raw = frame % (pad * (room_left // width) + "x" * (room_left % width))
    assert len(raw.encode("utf-8")) == size
    return raw


async def test_R41_frame_over_64_kib_is_closed_with_1009(live: LiveServer, room: str) -> None:
    """A frame of exactly 64 KiB is read (extra field ignored); one byte more closes with 1009, also
    when the bytes are 4-byte characters (64 KiB counts bytes, not characters). A patient so closed
    has departed (disconnected); the clinician's session goes on."""
    async with scene(live, room) as s:
        c = await s.clinician()
        exact = await s.patient()
        assert await answer_raw(exact, _ping_of_size(65536, "x")) == {"type": "ok", "ref": "big"}
        assert await answer_raw(exact, _ping_of_size(65536, "\U0001f600")) == {"type": "ok", "ref": "big"}
        for pad in ("x", "\U0001f600"):
            p = await s.patient()
            await p.send_raw(_ping_of_size(65537, pad))
            code, frames = await p.expect_close(SHORT_WAIT_S)
            assert (code, shape(frames)) == (1009, []), pad.encode("unicode_escape")
            assert shape(await recv_until(c, "erased")) == [left(p.patient_id, "disconnected"),
                                                            erased(p.patient_id, "not_in_view")]
        await c.send_raw(_ping_of_size(65537, "\U0001f600"))
        code, frames = await c.expect_close(SHORT_WAIT_S)
        assert (code, shape(frames)) == (1009, [])
        await assert_undisturbed_patient(exact)


async def assert_undisturbed_patient(patient: WireClient) -> None:
    assert frame_types(await patient.barrier()) in ([], ["provider_status"])
    await send(patient, "still fine")


async def test_R41_text_frame_that_is_not_utf8_is_closed_with_1007(live: LiveServer, room: str) -> None:
    """A text frame with invalid UTF-8 closes the connection with 1007; the patient has departed."""
    async with scene(live, room) as s:
        c = await s.clinician()
        other = await s.patient()
        raw = await RawClient.open(live)
        try:
            await raw.send_text(json.dumps({"type": "hello", "role": "patient", "room": room,
                                            "name": "Raw One"}))
            joined = (await recv_until(c, "patient_joined"))[-1]
            await raw.send_raw_frame(0x1, b'{"type": "ping", "pad": "\xff\xfe"}')
            assert await raw.read_until_close() == 1007
            assert [f["type"] for f in raw.frames] == ["welcome"]
        finally:
            await raw.aclose()
        assert shape(await recv_until(c, "erased")) == [left(joined["patient"], "disconnected"),
                                                        erased(joined["patient"], "not_in_view")]
        await assert_undisturbed(c, other)


@pytest.mark.parametrize("bound", [{"max_queued_frames": 50}, {"max_queued_bytes": 100_000}])
async def test_R42_a_connection_that_does_not_read_is_dropped_and_others_go_on(
        start_server: Any, room: str, bound: dict[str, int]) -> None:
    """A clinician that reads nothing (small socket buffer) while a patient floods it is dropped once
    its queue passes max_queued_frames or max_queued_bytes; the patient sees provider_status away and
    goes on, and another room is unhurt."""
    live = await start_server(limits=Limits(rate_per_s=None, rate_burst=None, **bound))
    host, port = host_port(live)
    async with scene(live, room) as s:
        other = s.elsewhere(room + "-other")
        a = await s.patient()
        other_c = await other.clinician()
        other_p = await other.patient()
        async with trio.open_nursery() as nursery:
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect((host, port))
            stream = trio.SocketStream(sock)
            try:
                ws = await trio_websocket.wrap_client_stream(nursery, stream, host, "/v1/ws")
                await ws.send_message(json.dumps(
                    {"type": "hello", "role": "clinician", "room": room, "token": live.token(room)}))
                assert shape(await recv_until(a, "provider_status")) == [status("online")]
                flood = [{"type": "send", "text": "f" * 4000}] * 20
                events: list[Frame] = []
                with trio.fail_after(10):
                    while status("away") not in events:
                        events, answers = await pipeline(a, flood)
                        assert {answer["type"] for answer in answers} == {"ok"}
                assert live.server.statistics().slow_reader_drops == 1
                assert events.count(status("away")) == 1
            finally:
                nursery.cancel_scope.cancel()
                await trio.aclose_forcefully(stream)
        await a.ok({"type": "ping"})
        await send(a, "still here")
        await assert_undisturbed(other_c, other_p)


async def test_R42_an_open_chat_answer_over_the_byte_bound_reaches_a_reading_clinician(
        start_server: Any, room: str) -> None:
    """A clinician that reads is not dropped because one answer is big: open_chat on 100 messages of
    4096 astral characters (1.6 MB of UTF-8) with max_queued_bytes 1 MiB is answered in full."""
    live = await start_server(limits=Limits(max_queued_bytes=2**20, rate_per_s=None, rate_burst=None))
    async with scene(live, room) as s:
        p = await s.patient()
        longest = "\U0001f600" * 4096
        _, answers = await pipeline(p, [{"type": "send", "text": longest}] * 100)
        assert {answer["type"] for answer in answers} == {"ok"}
        c = await s.clinician()
        _, ok = await c.ok({"type": "open_chat", "patient": p.patient_id})
        assert [m["id"] for m in ok["messages"]] == list(range(1, 101)) and ok["truncated"] is False
        assert_texts(ok["messages"], [longest] * 100)
        assert live.server.statistics().slow_reader_drops == 0
        await c.ok({"type": "ping"})


async def test_R43_requests_past_the_burst_are_rate_limited(start_server: Any, room: str) -> None:
    """rate 1/s, burst 5: five requests pass, the next answer rate_limited (with their ref), checked
    after bad_frame and before unknown_type; another connection has its own bucket."""
    live = await start_server(limits=Limits(rate_per_s=1.0, rate_burst=5))
    async with scene(live, room) as s:
        p = await s.patient()
        c = await s.clinician()
        _, answers = await pipeline(c, [{"type": "ping"}] * 7)
        assert [(a["type"], a.get("code"), a["ref"]) for a in answers] == [
            ("ok", None, "p0"), ("ok", None, "p1"), ("ok", None, "p2"), ("ok", None, "p3"),
            ("ok", None, "p4"), ("error", "rate_limited", "p5"), ("error", "rate_limited", "p6")]
        await c.error({"type": "dance"}, "rate_limited")
        assert (await answer_raw(c, "not json")).get("code") == "bad_frame"
        _, answers = await pipeline(p, [{"type": "ping"}] * 5)
        assert {a["type"] for a in answers} == {"ok"}


async def test_R43_a_request_passes_again_once_the_bucket_refills(start_server: Any, room: str) -> None:
    """rate 50/s, burst 5: a burst of 100 is cut off by rate_limited; 0.1 s later requests pass again."""
    live = await start_server(limits=Limits(rate_per_s=50.0, rate_burst=5))
    async with scene(live, room) as s:
        c = await s.clinician()
        _, answers = await pipeline(c, [{"type": "ping"}] * 100)
        codes = [a.get("code") for a in answers]
        assert codes[:5] == [None] * 5 and "rate_limited" in codes
        await trio.sleep(0.1)  # 5 tokens at 50/s
        await c.ok({"type": "ping"})


async def _refused(live: LiveServer, hello: Frame) -> tuple[int | None, list[Frame]]:
    async with connect(live) as client:
        await client.send(hello)
        return await client.expect_close(SHORT_WAIT_S)


async def test_R44_a_full_room_answers_capacity_and_closes_1013(start_server: Any, room: str) -> None:
    """max_patients_per_room 2: a third patient's hello answers capacity and closes with 1013; once one
    leaves, a new patient gets in."""
    live = await start_server(limits=Limits(max_patients_per_room=2))
    async with scene(live, room) as s:
        c = await s.clinician()
        a, b = await s.patient(), await s.patient()
        hello = {"type": "hello", "role": "patient", "room": room, "name": "Test Patient Three", "ref": "h"}
        code, frames = await _refused(live, hello)
        assert [(f["type"], f.get("code"), f.get("ref")) for f in frames] == [("error", "capacity", "h")]
        assert code == 1013
        assert shape(await c.barrier()) == []
        await a.ok({"type": "leave"})
        await c.barrier()
        third = await s.patient()
        assert third.welcome["position"] == 2
        await send(b, "unhurt")


async def test_R44_a_full_server_answers_capacity_and_idle_rooms_stop_counting(
        start_server: Any, room: str) -> None:
    """max_rooms 1: a hello (patient or clinician) that would add a room answers capacity, close 1013;
    once the only room has no clinician and no patient, another room can start."""
    live = await start_server(limits=Limits(max_rooms=1))
    second = room + "-second"
    async with scene(live, room) as s:
        a = await s.patient()
        for hello in ({"type": "hello", "role": "patient", "room": second, "name": "Test Patient"},
                      {"type": "hello", "role": "clinician", "room": second, "token": live.token(second)}):
            code, frames = await _refused(live, hello)
            assert (code, [(f["type"], f.get("code")) for f in frames]) == (1013, [("error", "capacity")])
        async with patient_of(live, room, "Test Patient Same Room") as same:
            assert same.welcome["position"] == 2
            await same.ok({"type": "leave"})
        await a.ok({"type": "leave"})
        async with clinician_of(live, second) as c2:
            assert c2.welcome["room"] == second


async def test_R45_no_hello_in_time_is_hello_required_and_close_1008(start_server: Any, room: str) -> None:
    """hello_timeout_s 0.3: a silent connection gets hello_required then close 1008; a connection that
    said hello is unaffected."""
    live = await start_server(limits=Limits(hello_timeout_s=0.3))
    async with patient_of(live, room) as p:
        started = trio.current_time()  # the server's timer starts later, when it accepts
        async with connect(live) as silent:
            code, frames = await silent.expect_close(SHORT_WAIT_S)
            assert [(f["type"], f.get("code")) for f in frames] == [("error", "hello_required")]
            assert code == 1008
            assert trio.current_time() - started >= 0.3
        await p.ok({"type": "ping"})


@pytest.mark.parametrize("first", [
    '{"type": "ping", "ref": "f"}', '{"type": "send", "text": "x"}', '{"role": "patient"}',
    "not json", "[1]", b"binary",
])
async def test_R45_first_frame_not_hello_is_hello_required_and_close_1008(
        live: LiveServer, room: str, first: str | bytes) -> None:
    """The first frame must be hello: anything else, JSON or not, answers hello_required, close 1008."""
    async with connect(live) as client:
        await client.send_raw(first)
        code, frames = await client.expect_close(SHORT_WAIT_S)
        assert [(f["type"], f.get("code")) for f in frames] == [("error", "hello_required")]
        assert code == 1008


async def test_R45_a_lost_patient_connection_departs_as_disconnected(start_server: Any, room: str) -> None:
    """ping every 0.1 s, timeout 0.3 s: a patient whose client stops answering is closed as lost and
    the clinician sees patient_left{disconnected}; answering connections stay."""
    live = await start_server(limits=Limits(ping_interval_s=0.1, ping_timeout_s=0.3))
    async with scene(live, room) as s:
        c = await s.clinician()
        raw = await RawClient.open(live)
        try:
            started = trio.current_time()  # the server last heard from this client after this
            await raw.send_text(json.dumps({"type": "hello", "role": "patient", "room": room,
                                            "name": "Raw Two"}))
            joined = (await recv_until(c, "patient_joined"))[-1]
            assert shape(await recv_until(c, "erased")) == [left(joined["patient"], "disconnected"),
                                                            erased(joined["patient"], "not_in_view")]
            assert trio.current_time() - started >= 0.29
        finally:
            await raw.aclose()
        assert live.server.statistics().lost_connections == 1
        await c.ok({"type": "ping"})


async def test_R45_a_lost_clinician_connection_ends_like_a_dropped_one(start_server: Any, room: str) -> None:
    """ping every 0.1 s, timeout 0.3 s: a clinician whose client stops answering is closed as lost; the
    patients see provider_status away and the queue waits for the next clinician."""
    live = await start_server(limits=Limits(ping_interval_s=0.1, ping_timeout_s=0.3))
    async with scene(live, room) as s:
        a = await s.patient()
        raw = await RawClient.open(live)
        try:
            await raw.send_text(json.dumps({"type": "hello", "role": "clinician", "room": room,
                                            "token": live.token(room)}))
            assert shape(await recv_until(a, "provider_status")) == [status("online")]
            assert shape(await recv_until(a, "provider_status")) == [status("away")]
        finally:
            await raw.aclose()
        assert live.server.statistics().lost_connections == 1
        c = await s.clinician()
        assert [q["patient"] for q in c.welcome["queue"]] == [a.patient_id]
        assert c.welcome["chat_box"] == {"state": "closed", "patient": None, "patient_present": False}


async def test_R46_shutdown_closes_every_connection_with_1001(live: LiveServer, room: str) -> None:
    """Shutdown sends every connection (clinician, patient, not yet welcomed, not reading) a close with
    1001 and drops within about 1 s those that do not answer."""
    async with scene(live, room) as s:
        bare = await s.connect()
        c = await s.clinician()
        p = await s.patient()
        raw = await RawClient.open(live)
        try:
            async with trio.open_nursery() as nursery:
                started = trio.current_time()
                nursery.start_soon(live.server.shutdown)
                for client in (c, p, bare):
                    code, frames = await client.expect_close(SHORT_WAIT_S)
                    assert (code, shape(frames)) == (1001, [])
            assert trio.current_time() - started < 2.5  # 1 s for the closes, then a prompt drop
            assert await raw.read_until_close() == 1001
        finally:
            await raw.aclose()
