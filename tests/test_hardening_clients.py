"""Hostile and broken clients (R42-R45): each one alone against a live server.

Rules of this file: loopback only, port 0, every wait bounded (``fail_after`` or a
bounded poll), timers shortened through the limits instead of waited out. In each
test a control pair (a clinician and a patient in a room of their own) chats
before, during and after, and every frame it gets is checked: each message once,
to the right side, with the next id. Afterwards the server's live objects
(connections, sessions, present patients, active rooms, Trio tasks, instances of
the server's classes) return to their level; each test first shows that they rose
while the hostile clients were there (the positive control). How far the control
pair's latency moves is measured in ``benchmarks/_hardening_hostile.py``, not
asserted here.
"""

from __future__ import annotations

import resource
from collections import Counter
from typing import Any

import pytest
import trio

from reference_server.protocol import Limits
from reference_server.wscodec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, client_frame, cut_frame
from tests.support.hardening import (
    ControlPair,
    live_counts,
    quiet_counts,
    serving,
    settle_to,
    token,
    wait_count,
)
from tests.support.rawws import MessageReader, TrioClient, json_frame

WAIT_S = 10.0
NO_RATE = {"rate_per_s": None, "rate_burst": None}


async def patient(url: str, room: str, name: str = "Hostile Patient", **options: Any) -> TrioClient:
    client = await TrioClient.connect(url, **options)
    await client.hello({"type": "hello", "role": "patient", "room": room, "name": name})
    return client


async def clinician(url: str, room: str, **options: Any) -> TrioClient:
    client = await TrioClient.connect(url, **options)
    await client.hello({"type": "hello", "role": "clinician", "room": room, "token": token(room)})
    return client


async def read_until(client: TrioClient, predicate: Any, limit: int = 10_000) -> list[dict[str, Any]]:
    """Frames up to and including the first that satisfies ``predicate`` (bounded)."""
    frames: list[dict[str, Any]] = []
    for _ in range(limit):
        frame = await client.recv_json(WAIT_S)
        frames.append(frame)
        if predicate(frame):
            return frames
    raise AssertionError("no such frame")


def assert_no_duplicates(frames: list[dict[str, Any]]) -> None:
    messages = Counter((f["patient"], f["id"]) for f in frames if f.get("type") == "message")
    assert all(n == 1 for n in messages.values()), "a message was delivered twice"


# ------------------------------------------------------------------------------------------- R42


async def test_R42_a_reader_that_stops_reading_is_dropped_and_others_are_unhurt() -> None:
    limits = Limits(max_queued_frames=64, max_queued_bytes=256 * 1024, **NO_RATE)
    async with serving(limits) as (url, server), ControlPair.open(url) as control:
        baseline = await quiet_counts(server)
        # The slow reader: a clinician with a tiny receive window that never reads again.
        slow = await clinician(url, "slow-room", rcvbuf=4096)
        writers = [await patient(url, "slow-room", f"Writer {i}") for i in range(2)]
        assert (await slow.recv_json())["type"] == "patient_joined"  # the last frame it ever reads
        rose = live_counts(server)
        assert rose["connections"] == baseline["connections"] + 3  # the positive control
        assert rose["objects_Connection"] >= baseline["objects_Connection"] + 3
        text = "x" * 4000
        got: list[list[dict[str, Any]]] = [[], []]  # every frame the writers got, in order
        with trio.fail_after(60):
            for round_no in range(400):  # bounded: 400 x 2 x 20 messages of 4 KB is far past 4 MB + 256 KiB
                for i, writer in enumerate(writers):
                    for _ in range(20):
                        await writer.send_json({"type": "send", "text": text})
                    for _ in range(20):
                        frames = await read_until(writer, lambda f: f["type"] in ("ok", "error"))
                        assert frames[-1]["type"] == "ok"
                        got[i] += frames
                if server.statistics().slow_reader_drops:
                    break
                if round_no % 20 == 0:
                    await control.exchange()
        assert server.statistics().slow_reader_drops == 1
        await control.exchange()  # during: the others are unhurt
        # The writers see their clinician gone (R12): provider status away, and nothing else.
        for i, writer in enumerate(writers):
            await writer.send_json({"type": "send", "text": "still here", "ref": "w"})
            got[i] += await read_until(writer, lambda f: f.get("ref") == "w")
            assert [f for f in got[i] if f["type"] != "ok"] == [{"type": "provider_status", "status": "away"}]
        # A new clinician gets a console with no replay and no duplicate.
        # A new clinician: no replay; the badges count what was written while no clinician was there.
        fresh = await clinician(url, "slow-room")
        written_alone = [len(g) - 1 - g.index({"type": "provider_status", "status": "away"}) for g in got]
        assert [entry["unread"] for entry in fresh.welcome_frame["queue"]] == written_alone
        await fresh.send_json({"type": "ping", "ref": "p"})
        assert await fresh.recv_json() == {"type": "ok", "ref": "p"}
        await slow.abort()
        for client in (*writers, fresh):
            await client.aclose()
        await control.exchange()  # after
        await settle_to(server, baseline)


# ------------------------------------------------------------------------------------------- R43


async def test_R43_a_flooder_is_rate_limited_answered_once_per_request_and_others_are_unhurt() -> None:
    async with serving(Limits()) as (url, server), ControlPair.open(url) as control:
        baseline = await quiet_counts(server)
        flooder = await patient(url, "flood-room")
        watcher = await clinician(url, "flood-room")
        assert await flooder.recv_json() == {"type": "provider_status", "status": "online"}
        assert live_counts(server)["connections"] == baseline["connections"] + 2  # the positive control
        n = 2000
        stop = trio.Event()
        answers: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control.keep_chatting, stop)
            with trio.fail_after(60):
                # Everything at once: far past the burst of 200.
                flood = b"".join(json_frame({"type": "ping", "ref": f"f{i}"}) for i in range(n))
                await flooder.send_bytes(flood)
                for _ in range(n):
                    answers.append(await flooder.recv_json())
            stop.set()
        assert [a.get("ref") for a in answers] == [f"f{i}" for i in range(n)]  # one answer each, in order
        codes = Counter(a.get("code", "ok") for a in answers)
        assert set(codes) == {"ok", "rate_limited"}
        assert 200 <= codes["ok"] < n and codes["rate_limited"] > 0
        assert server.statistics().rate_limited == codes["rate_limited"]
        # The flooder's connection stays open and its own requests work once it slows down.
        await flooder.send_json({"type": "send", "text": "calm now", "ref": "calm"})
        for _ in range(200):  # bounded: the bucket refills at 100/s
            answer = await flooder.recv_json()
            if answer.get("code") != "rate_limited":
                break
            await trio.sleep(0.02)
            await flooder.send_json({"type": "send", "text": "calm now", "ref": "calm"})
        assert answer["type"] == "ok"
        frames = await read_until(watcher, lambda f: f["type"] == "notify")
        assert [f["type"] for f in frames] == ["patient_joined", "message", "unread", "notify"][-len(frames):]
        assert_no_duplicates(frames)
        for client in (flooder, watcher):
            await client.aclose()
        await control.exchange()
        await settle_to(server, baseline)


# ------------------------------------------------------------------------------------------- drops


@pytest.mark.parametrize("cut", ["handshake", "header", "payload", "fragment"])
@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_R45_a_client_that_drops_mid_frame_departs_and_nothing_is_left(cut: str, how: str) -> None:
    # trio-websocket notices no EOF during the HTTP handshake: a connection cut there waits out
    # its handshake timeout (hello_timeout_s), shortened here.
    async with serving(Limits(hello_timeout_s=1.0)) as (url, server), ControlPair.open(url) as control:
        baseline = await quiet_counts(server)
        room = f"drop-{cut}-{how}"
        watcher = await clinician(url, room)
        victim: TrioClient
        if cut == "handshake":
            stream = await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0]))
            await stream.send_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConn")
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            victim = TrioClient(stream, b"", True)
        else:
            victim = await patient(url, room)
            joined = await watcher.recv_json()
            assert joined["type"] == "patient_joined"
            frame = json_frame({"type": "send", "text": "never finished " * 20})
            if cut == "header":
                await victim.send_bytes(frame[:1])
            elif cut == "payload":
                await victim.send_bytes(cut_frame(frame))
            else:
                await victim.send_bytes(client_frame(b'{"type":"send",', OP_TEXT, fin=False))
            assert live_counts(server)["connections"] == baseline["connections"] + 2  # the positive control
        if how == "reset":
            await victim.abort()
        else:
            await victim.stream.send_eof()
        if cut != "handshake":
            left = await read_until(watcher, lambda f: f["type"] == "erased")
            assert [f["type"] for f in left] == ["patient_left", "erased"]
            assert left[0] == {"type": "patient_left", "patient": joined["patient"], "reason": "disconnected"}
        await control.exchange()
        await watcher.aclose()
        await victim.aclose()
        await settle_to(server, baseline)


# ------------------------------------------------------------------------------------------- R45


async def test_R45_a_half_open_patient_is_closed_as_lost_and_the_clinician_told() -> None:
    # Short timers, with room for the test process's own pauses (a full collection in a long
    # session): the server shares this process, and the control pair must not be taken for lost.
    limits = Limits(ping_interval_s=0.25, ping_timeout_s=2.5)
    async with serving(limits) as (url, server), ControlPair.open(url) as control:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            # The control pair chats (and so answers its pings) all along.
            nursery.start_soon(control.keep_chatting, stop)
            baseline = await quiet_counts(server)
            watcher = await clinician(url, "half-open")
            # Says hello, then is never heard of again: no pong, no read, no FIN.
            silent = await patient(url, "half-open", answer_pings=False)
            assert live_counts(server)["connections"] == baseline["connections"] + 2  # the positive control
            frames = await read_until(watcher, lambda f: f["type"] == "erased")
            assert [f["type"] for f in frames] == ["patient_joined", "patient_left", "erased"]
            assert frames[1]["reason"] == "disconnected"
            assert server.statistics().lost_connections == 1
            await watcher.aclose()
            await silent.abort()
            await settle_to(server, baseline)
            stop.set()
        await control.exchange()


async def test_R45_a_connection_that_never_says_hello_or_finishes_the_handshake_is_closed() -> None:
    limits = Limits(hello_timeout_s=0.3)
    async with serving(limits) as (url, server), ControlPair.open(url) as control:
        baseline = await quiet_counts(server)
        mute = await TrioClient.connect(url)  # upgraded, then silent
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        raw = await trio.open_tcp_stream("127.0.0.1", port)  # not even the HTTP upgrade
        await wait_count(server, "connections", baseline["connections"] + 1)  # the positive control
        code, frames = await mute.expect_close(WAIT_S)
        assert (code, frames) == (1008, [{"type": "error", "code": "hello_required",
                                          "message": frames[0]["message"]}])
        with trio.fail_after(WAIT_S):
            while await raw.receive_some(4096):
                pass  # the server ends the TCP connection after its handshake timeout
        await control.exchange()
        await mute.aclose()
        await raw.aclose()
        await settle_to(server, baseline)


# ------------------------------------------------------------------------------------------- burst


async def test_a_burst_of_2000_connections_is_served_and_leaves_nothing_behind() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * 2000 + 200  # client and server ends of every connection are in this process
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        pytest.skip(f"the open-files limit cannot be raised to {need} (hard limit {hard})")
    n, rooms = 2000, 8
    async with serving(Limits()) as (url, server), ControlPair.open(url) as control:
        baseline = await quiet_counts(server)
        clients: list[TrioClient | None] = [None] * n
        welcomes: list[dict[str, Any]] = [{}] * n

        async def one(i: int) -> None:
            client = await TrioClient.connect(url, wait_s=60)
            clients[i] = client
            welcomes[i] = await client.hello({"type": "hello", "role": "patient",
                                              "room": f"burst-{i % rooms}", "name": f"Burst {i}"})

        stop = trio.Event()
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(control.keep_chatting, stop)
                async with trio.open_nursery() as burst:
                    for i in range(n):
                        burst.start_soon(one, i)
                stop.set()
        rose = live_counts(server)
        assert rose["connections"] == baseline["connections"] + n  # the positive control
        assert rose["patients_present"] == baseline["patients_present"] + n
        assert rose["rooms_active"] == baseline["rooms_active"] + rooms
        assert len({w["patient"] for w in welcomes}) == n  # every id distinct
        for r in range(rooms):
            positions = sorted(welcomes[i]["position"] for i in range(r, n, rooms))
            assert positions == list(range(1, n // rooms + 1))  # each place given once
        await control.exchange()
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for client in clients:
                    assert client is not None
                    nursery.start_soon(client.aclose)
        await control.exchange()
        await settle_to(server, baseline, timeout_s=60)


# ------------------------------------------------------------------------------------------- R12


async def test_R12_a_clinician_reconnecting_in_a_loop_gets_nothing_twice_and_patients_carry_on() -> None:
    async with serving(Limits()) as (url, server), ControlPair.open(url) as control:
        baseline = await quiet_counts(server)
        room = "reconnect-loop"
        patients = [await patient(url, room, f"Looping {i}") for i in range(3)]
        seen_messages: list[tuple[str, int]] = []
        current = await clinician(url, room)
        for p in patients:
            assert await p.recv_json() == {"type": "provider_status", "status": "online"}
        rose = live_counts(server)
        assert rose["connections"] == baseline["connections"] + 4  # the positive control
        assert rose["objects_Session"] == baseline["objects_Session"] + 4
        for loop in range(30):
            # Each patient writes; the clinician of the moment reads up to its barrier.
            for i, p in enumerate(patients):
                await p.send_json({"type": "send", "text": f"loop {loop} from {i}", "ref": "s"})
                frames = await read_until(p, lambda f: f.get("ref") == "s")
                assert [f["type"] for f in frames] == ["ok"]  # nothing for a patient from anyone else
            frames = await barrier(current)
            seen_messages += [(f["patient"], f["id"]) for f in frames if f["type"] == "message"]
            assert all(f["type"] in ("message", "unread", "notify", "patient_joined") for f in frames)
            if loop % 2:
                fresh = await clinician(url, room)  # replaces the old one: 4000, no status change
                code, old_frames = await current.expect_close(WAIT_S)
                assert code == 4000 and {f["type"] for f in old_frames} <= {"erased"}
                await current.aclose()
            else:
                await current.aclose()  # the page is closed, then opened again: away, then online
                for p in patients:
                    assert await p.recv_json() == {"type": "provider_status", "status": "away"}
                fresh = await clinician(url, room)
                for p in patients:
                    assert await p.recv_json() == {"type": "provider_status", "status": "online"}
            assert all(entry["unread"] == 0 for entry in fresh.welcome_frame["queue"])
            current = fresh
        assert len(seen_messages) == len(set(seen_messages)) == 30 * 3  # each delivered once, none replayed
        await control.exchange()
        for client in (*patients, current):
            await client.aclose()
        await settle_to(server, baseline)


async def barrier(client: TrioClient) -> list[dict[str, Any]]:
    await client.send_json({"type": "ping", "ref": "~b"})
    frames = await read_until(client, lambda f: f.get("ref") == "~b")
    assert frames[-1] == {"type": "ok", "ref": "~b"}
    return frames[:-1]


# ------------------------------------------------------------------------------------------- R44


async def test_R44_a_room_filled_past_capacity_refuses_with_1013_and_the_room_goes_on() -> None:
    limits = Limits(max_patients_per_room=20, max_rooms=4)
    async with serving(limits) as (url, server), ControlPair.open(url) as control:
        baseline = await quiet_counts(server)
        room = "full-room"
        host = await clinician(url, room)
        inside = [await patient(url, room, f"Inside {i}") for i in range(20)]
        refused = []
        for i in range(10):
            client = await TrioClient.connect(url)
            await client.send_json({"type": "hello", "role": "patient", "room": room, "name": f"Late {i}"})
            refused.append(await client.expect_close(WAIT_S))
            await client.aclose()
        assert all(code == 1013 and frames[0]["code"] == "capacity" for code, frames in refused)
        rose = live_counts(server)
        assert rose["patients_present"] == baseline["patients_present"] + 20  # the positive control
        # The room goes on: the first patient still chats with the clinician.
        await inside[0].send_json({"type": "send", "text": "still in the queue", "ref": "s"})
        assert (await inside[0].recv_json())["type"] == "ok"
        frames = await barrier(host)
        assert [f["type"] for f in frames if f["type"] != "patient_joined"] == ["message", "unread", "notify"]
        assert sum(f["type"] == "patient_joined" for f in frames) == 20  # none for the refused
        # One leaves: one more may come in.
        await inside[5].send_json({"type": "leave"})
        assert (await inside[5].expect_close(WAIT_S))[0] == 1000
        await inside[5].aclose()
        inside[5] = await patient(url, room, "Late but in")
        # The rooms limit: the control room and full-room are active; two more fit, the fifth is refused.
        extra = [await clinician(url, f"extra-{i}") for i in range(2)]
        late_room = await TrioClient.connect(url)
        await late_room.send_json({"type": "hello", "role": "patient", "room": "one-too-many", "name": "X"})
        code, frames = await late_room.expect_close(WAIT_S)
        assert code == 1013 and frames[0]["code"] == "capacity"
        await late_room.aclose()
        await control.exchange()
        for client in (*inside, host, *extra):
            await client.aclose()
        await settle_to(server, baseline)


# ------------------------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("after", ["leave", "hello_error"])
async def test_a_ping_after_the_servers_close_frame_does_not_end_the_server(after: str) -> None:
    """Regression: trio-websocket answered such a ping with a pong that wsproto refuses in
    LOCAL_CLOSING; the LocalProtocolError ended the whole server, every session with it."""
    async with serving(Limits()) as (url, server), ControlPair.open(url) as control:
        client = await TrioClient.connect(url)
        if after == "leave":
            await client.hello({"type": "hello", "role": "patient", "room": "pinger", "name": "P"})
            await client.send_json({"type": "leave"})
        else:
            await client.send_json({"type": "not-a-hello"})
        reader, frames = MessageReader(), []
        with trio.fail_after(WAIT_S):
            while not any(f.opcode == OP_CLOSE for f in frames):  # read the close, do not answer it
                frames += reader.feed(await client.stream.receive_some(65536))
        await client.send_bytes(client_frame(b"still there?", OP_PING) + client_frame(b"x" * 70_000))
        await client.aclose()
        await control.exchange()
        assert server.statistics().internal_errors == 0


async def test_R45_with_ping_timeout_off_a_silent_peer_has_one_ping_in_flight_not_one_per_interval() -> None:
    """Regression: every interval started a ping that waited for a pong forever. The silent peer
    gets one ping in 25 intervals, and one more (only one) once it answers."""
    limits = Limits(ping_interval_s=0.02, ping_timeout_s=None)
    async with serving(limits) as (url, server):
        baseline = await quiet_counts(server)
        silent = await patient(url, "no-timeout", answer_pings=False)
        reader = MessageReader()

        async def pings_received() -> list[bytes]:
            await trio.sleep(0.5)  # 25 intervals: the input here is time passing
            frames = []
            with trio.move_on_after(0.1):
                while True:
                    frames += reader.feed(await silent.stream.receive_some(65536))
            return [f.payload for f in frames if f.opcode == OP_PING]

        first = await pings_received()
        assert len(first) == 1
        await silent.send_bytes(client_frame(first[0], OP_PONG))  # answered: the next interval asks again
        assert len(await pings_received()) == 1
        assert live_counts(server)["connections"] == baseline["connections"] + 1  # never lost: no timeout
        await silent.abort()
        await settle_to(server, baseline)
