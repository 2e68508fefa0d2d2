"""Limits (R41-R46), read from the clinician's welcome: sizes, slow readers, rate, capacity, timers, shutdown.

Cases adapt to the limits the server lists. A case that would need more
connections than ``--max-connections`` or a longer wait than ``--max-wait-s``
is skipped with the reason; so is one whose limit is off. Shutdown (R46)
cannot be tried on a live server.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from .._client import Conn
from .._context import CaseContext
from .._expect import (
    erased,
    error,
    message,
    ok,
    patient_left,
    patient_welcome,
    position,
    provider_status,
    send_ok,
)
from .._patterns import ABSENT, close
from .._registry import group
from ._steps import open_chat

case = group("limits")


def _text_fitting(t: CaseContext, chars: int, max_bytes: int) -> tuple[str, str] | None:
    """A text of ``chars`` code points that fits a frame of ``max_bytes``: astral characters when they fit
    (each is 2 UTF-16 units and 4 UTF-8 bytes), else BMP, else ASCII; None if nothing fits."""
    for fill, size, kind in (
        ("\U0001f600", 4, "astral (4-byte) characters"),
        ("é", 2, "2-byte characters"),
        ("x", 1, "ASCII characters"),
    ):
        if chars * size + 200 <= max_bytes:
            return t.text(chars, fill=fill), kind
    return None


@case(
    "R41.max-text-accepted",
    "A text of exactly max_text_chars code points is accepted (code points, not bytes or UTF-16 units)",
    checks=("R1", "R4"),
)
async def max_text_accepted(t: CaseContext) -> None:
    """With A's chat open, A sends a text of max_text_chars characters, astral ones when the frame size
    allows: ok, and C gets the message with the text unchanged."""
    max_chars, max_bytes = t.limit("max_text_chars"), t.limit("max_frame_bytes")
    chosen = _text_fitting(t, int(max_chars), int(max_bytes))
    if chosen is None:
        t.skip(f"max_text_chars ({max_chars}) characters do not fit in max_frame_bytes ({max_bytes})")
    text, kind = chosen
    if not kind.startswith("astral"):
        t.notes.append(f"checked with {kind}: astral ones would not fit max_frame_bytes")
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await t.request(
        a,
        {"type": "send", "text": text},
        answer=send_ok(1),
        events={c: [message(a, 1, "patient", text)]},
        title=f"A sends {max_chars} {kind}",
    )


@case("R41.text-too-long", "A text longer than max_text_chars answers too_large")
async def text_too_long(t: CaseContext) -> None:
    """A sends max_text_chars + 1 characters, then C sends as many to A: too_large both times; nobody gets
    a message."""
    max_chars, max_bytes = t.limit("max_text_chars"), t.limit("max_frame_bytes")
    if int(max_chars) + 1 + 200 > int(max_bytes):
        t.skip(f"a text of max_text_chars + 1 ({int(max_chars) + 1}) characters does not fit max_frame_bytes")
    c, a = await t.setup("A")
    await t.request(
        a,
        {"type": "send", "text": t.text(int(max_chars) + 1)},
        answer=error("too_large"),
        title=f"A sends {int(max_chars) + 1} characters",
    )
    await t.request(
        c,
        {"type": "send", "patient": a.pid, "text": t.text(int(max_chars) + 1)},
        answer=error("too_large"),
        title=f"C sends A {int(max_chars) + 1} characters",
    )


@case("R41.frame-too-big-1009", "A frame over max_frame_bytes is closed with 1009")
async def frame_too_big(t: CaseContext) -> None:
    """A, welcomed, sends a ping padded to max_frame_bytes + 1 bytes: the server closes with 1009."""
    max_bytes = int(t.limit("max_frame_bytes"))
    if max_bytes > 16 * 1024 * 1024:
        t.skip(f"max_frame_bytes is {max_bytes}: the suite sends frames of at most 16 MiB")
    (a,) = await t.setup("A", clinician=False)
    head = '{"type":"ping","pad":"'
    raw = head + "x" * (max_bytes + 1 - len(head) - 2) + '"}'
    await a.send_raw(raw, logged={"type": "ping", "pad": f"<{max_bytes + 1} bytes in all>"})
    await t.expect(f"A sends a frame of {max_bytes + 1} bytes", {a: [close(1009)]})


@case(
    "R42.slow-reader-dropped",
    "A connection that does not read is dropped past its queue limits; everyone else goes on unhurt",
    checks=("R12", "R30"),
    exclusive=True,  # timing: it must be dropped well before the heartbeat would drop it
)
async def slow_reader(t: CaseContext) -> None:
    """A clinician (raw, tiny receive buffer) stops reading; patients write until the server drops it, which
    they see as provider_status away (a refresh). The patients' requests are all answered meanwhile, and a
    new clinician is then welcomed. A 1008 close to the dropped connection is reported, not required."""
    frames_limit, bytes_limit = int(t.limit("max_queued_frames")), int(t.limit("max_queued_bytes"))
    rate, burst = t.limit("rate_per_s"), t.limit("rate_burst")
    max_chars = int(t.limit("max_text_chars"))
    text_chars = min(max_chars, 1000)
    per_message = text_chars + 300  # the message frame, plus unread and notify
    # Enough to pass either queue limit, plus what the kernel may hold before the server's own queue
    # grows: the client's receive buffer is tiny (SO_RCVBUF), but a server socket without
    # TCP_NOTSENT_LOWAT lets send-buffer autotuning keep up to tcp_wmem's maximum of unsent data.
    budget_bytes = min(bytes_limit, frames_limit * per_message // 3) + _send_buffer_allowance()
    messages_needed = math.ceil(budget_bytes / per_message)
    if messages_needed > 8000:
        t.skip(
            f"max_queued_frames {frames_limit} / max_queued_bytes {bytes_limit}: reaching them would take "
            f"about {messages_needed} messages, over the suite's budget of 8000"
        )
    per_patient = messages_needed if burst is None else max(1, int(burst) - 5)
    patients_needed = min(math.ceil(messages_needed / per_patient), 50)
    room_cap = t.limit("max_patients_per_room")
    if room_cap is not None:
        patients_needed = min(patients_needed, int(room_cap))
    if patients_needed + 3 > t.env.max_connections:
        t.skip(
            f"needs {patients_needed} writing patients, over the suite's budget of {t.env.max_connections} "
            "connections (--max-connections)"
        )
    t.allow(30.0)
    room = t.room()
    # The writers check in first: from the stalled clinician's hello on, the clock of its heartbeat runs.
    writers = [await t.patient(room, f"P{i + 1}") for i in range(patients_needed)]
    stalled = await t.connect_raw("C", receive_buffer=4096)
    await stalled.send_text({"type": "hello", "role": "clinician", "room": room, "token": t.token(room)})
    welcome = await stalled.next(t.env.answer_timeout_s)
    t.check_frames(
        "C (raw, tiny receive buffer) says hello, then stops reading", "C", [{"type": "welcome"}], [welcome]
    )
    await t.expect("the writers hear that a clinician is online",
                   {w: [provider_status("online")] for w in writers})
    dropped = False
    sent = 0
    rounds = 0
    flood_started = trio.current_time()
    while not dropped and sent < messages_needed * 2 and rounds < 100:
        rounds += 1
        for writer in writers:
            dropped = await _write_batch(t, writer, per_patient, text_chars) or dropped
            sent += per_patient
            if dropped:
                break
        if not dropped and rate is not None:
            await trio.sleep(min(3.0, per_patient / float(rate)))  # pacing: the buckets refill
    elapsed = trio.current_time() - flood_started
    ping_timeout = t.limit("ping_timeout_s")
    if ping_timeout is not None and elapsed >= 0.8 * float(ping_timeout):
        t.skip(f"inconclusive: the flood took {elapsed:.2f} s, too close to ping_timeout_s "
               f"({ping_timeout:g} s) to tell a drop at the queue limits from the heartbeat's "
               "(a stalled client cannot answer pings)")
    t.notes.append(f"the server dropped the stalled clinician after about {sent} messages in {elapsed:.2f} s")
    if not dropped:
        t.fail(
            f"after {sent} messages to a clinician that does not read (limits {frames_limit} frames, "
            f"{bytes_limit} bytes) the patients never saw provider_status away: the connection was not "
            "dropped"
        )
    # The others go on: every patient's request is answered, and a new clinician is welcomed.
    for writer in writers:
        await t.drain(writer)
    await t.clinician(room, "C2", events={w: [provider_status("online")] for w in writers})
    code = None
    with trio.move_on_after(2.0):
        while True:
            frame = await stalled.next(2.0)
            if frame["type"] == "(close)":
                code = frame.get("code")
                break
    if code == 1006:
        code = None  # wsproto's "abnormal closure": no close frame came
    t.notes.append(
        "the dropped connection "
        + (f"was closed with {code}" if code is not None else "ended without a close frame (dropped)")
    )


def _send_buffer_allowance() -> int:
    """The most a server's kernel may buffer for one TCP connection: Linux's tcp_wmem maximum (the
    server is on this machine: the URL is loopback unless --allow-remote), else 4 MiB; at least 1 MiB."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem", encoding="ascii") as numbers:
            maximum = int(numbers.read().split()[2])
    except (OSError, ValueError, IndexError):
        maximum = 4 * 1024 * 1024
    return max(1024 * 1024, min(maximum, 64 * 1024 * 1024))


async def _write_batch(t: CaseContext, writer: Conn, count: int, chars: int) -> bool:
    """``writer`` sends ``count`` messages and reads every answer; True once it saw provider_status away."""
    for _ in range(count):
        await writer.send({"type": "send", "text": t.text(chars), "ref": t.ref(writer)})
    answers, away = 0, False
    while answers < count:  # each frame within answer_timeout_s: a slow server runs into the case's time
        try:
            frame = await writer.recv(t.env.answer_timeout_s)
        except trio.TooSlowError:
            t.fail(f"{writer.label} got {answers} of {count} answers, then nothing for "
                   f"{t.env.answer_timeout_s:g} s, while another connection stalled")
        kind = frame["type"]
        if kind == "error":
            t.fail(
                f"{writer.label}'s message was answered error {frame.get('code')} while the clinician "
                "stalled"
            )
        if kind == "(close)":
            t.fail(f"the server closed {writer.label} while another connection stalled")
        if kind == "provider_status" and frame.get("status") == "away":
            away = True
        answers += kind == "ok"
    return away


@case(
    "R43.rate-limited",
    "Past the burst, requests answer rate_limited; the connection stays and others are not affected",
    exclusive=True,  # timing: the burst must reach the server faster than the bucket refills
)
async def rate_limited(t: CaseContext) -> None:
    """C (a raw client, box closed) sends rate_burst + max(100, rate_per_s) close_chat requests (each changes
    nothing) as fast as it can, in writes of at most max_queued_frames / 2 requests (so that answers do not
    pile up past the queue limit): at least rate_burst - 3 are answered ok first, then rate_limited errors
    with their refs, and no more ok than the bucket allows; A, in the same room, is still answered; C,
    after a pause, is answered ok again (not closed)."""
    rate, burst = t.limit("rate_per_s"), t.limit("rate_burst")
    if rate is None or burst is None:
        t.skip("the server's rate limit is off (rate_per_s / rate_burst null)")
    if int(burst) > 5000:
        t.skip(f"rate_burst is {burst}: the suite sends at most 5000 requests to exhaust it")
    room = t.room()
    a = await t.patient(room, "A")
    c = await t.connect_raw("C")
    await c.send_text({"type": "hello", "role": "clinician", "room": room, "token": t.token(room)})
    welcome = await c.next(t.env.answer_timeout_s)
    t.check_frames("C (raw client) says hello", "C", [{"type": "welcome"}], [welcome])
    await t.expect("A hears that a clinician is online", {a: [provider_status("online")]})
    total = int(burst) + max(100, int(rate))
    # Answers waiting to be read count toward the queue limit (R42): a server may drop a client with more
    # outstanding than max_queued_frames. So the requests go in writes of at most half that many, each
    # read back before the next, as fast as the answers come.
    chunk = max(1, min(total, int(t.limit("max_queued_frames")) // 2))
    refs = [f"p{n}" for n in range(total)]
    started = trio.current_time()
    answers: list[dict[str, Any]] = []
    last_answer = started
    with trio.move_on_after(t.env.answer_timeout_s * 3):
        for first_ref in range(0, total, chunk):
            batch = refs[first_ref : first_ref + chunk]
            await c.send_many([{"type": "close_chat", "ref": ref} for ref in batch])
            while len(answers) < min(total, first_ref + chunk):
                frame = await c.next(t.env.answer_timeout_s * 3)
                if frame["type"] == "(close)":
                    t.fail(f"the server closed C after {len(answers)} answers (code {frame.get('code')})")
                if frame["type"] in ("ok", "error"):
                    answers.append(frame)
                    last_answer = trio.current_time()
    elapsed = trio.current_time() - started
    if answers and len(answers) < total and trio.current_time() - last_answer < 1.0:
        t.skip(f"inconclusive: the server answered {len(answers)} of {total} requests in {elapsed:.2f} s and "
               "was still answering: too slow to tell whether it rate-limits")
    t.check(len(answers) == total, f"only {len(answers)} of {total} requests were answered")
    codes = ["ok" if f["type"] == "ok" else f.get("code", f["type"]) for f in answers]
    t.check([f.get("ref") for f in answers] == refs, "the answers do not carry the requests' refs in order")
    others = sorted(set(codes) - {"ok", "rate_limited"})
    t.check(not others, f"answers other than ok and rate_limited: {others}")
    oks = codes.count("ok")
    allowed = int(burst) + float(rate) * elapsed + 5
    t.check(oks <= allowed, f"{oks} of {total} requests sent at once were answered ok in {elapsed:.2f} s, "
            "more "
            f"than rate_burst + rate_per_s x time = {allowed:.0f}: no rate_limited")
    if "rate_limited" not in codes:
        t.skip(f"inconclusive: the {total} requests took {elapsed:.2f} s to answer, long enough for the "
               "bucket to refill; the server may be overloaded")
    first = codes.index("rate_limited")
    t.check(first >= int(burst) - 3, f"rate_limited came after only {first} requests (rate_burst {burst})")
    t.notes.append(f"{oks} ok and {total - oks} rate_limited for {total} requests in {elapsed:.2f} s")
    await t.still_works(a, "A, in the same room, is still answered")
    await trio.sleep(min(1.0, 3.0 / float(rate)))  # pacing: let C's bucket refill a little
    await c.send_text({"type": "close_chat", "ref": "after-pause"})
    frame = await c.next(t.env.answer_timeout_s)
    t.check_frames("C, after a pause, is answered ok: not closed", "C", [ok(ref="after-pause")], [frame])


@case(
    "R44.room-capacity",
    "A room holds at most max_patients_per_room present patients; past that, hello "
    "answers capacity and closes with 1013",
    checks=("R30",),
)
async def room_capacity(t: CaseContext) -> None:
    """max_patients_per_room patients check in; one more: error{capacity}, close 1013; the first leaves
    (the others move up); another can then check in."""
    cap = t.limit("max_patients_per_room")
    if cap is None:
        t.skip("max_patients_per_room is off")
    cap = int(cap)
    if cap + 3 > t.env.max_connections:
        t.skip(
            f"max_patients_per_room is {cap}: filling a room takes {cap + 1} connections, over the suite's "
            f"budget of {t.env.max_connections} (--max-connections)"
        )
    room = t.room()
    patients: list[Conn] = []
    for i in range(cap):
        conn = await t.connect(f"P{i + 1}")
        await t.request(
            conn,
            {"type": "hello", "role": "patient", "room": room, "name": t.name(f"P{i + 1}")},
            ref=False,
            answer=patient_welcome(position=i + 1),
            only_named=True,
            title=f"P{i + 1} checks in",
        )
        patients.append(conn)
    extra = await t.connect("X")
    await t.request(
        extra,
        {"type": "hello", "role": "patient", "room": room, "name": t.name("X")},
        ref=False,
        answer=error("capacity"),
        close=1013,
        only_named=True,
        title=f"X checks in as patient {cap + 1}",
    )
    first, rest = patients[0], patients[1:]
    await t.request(
        first,
        {"type": "leave"},
        answer=ok(),
        close=1000,
        events={p: [position(i + 1)] for i, p in enumerate(rest)},
        title="P1 leaves",
    )
    late = await t.connect("Y")
    await t.request(
        late,
        {"type": "hello", "role": "patient", "room": room, "name": t.name("Y")},
        ref=False,
        answer=patient_welcome(position=cap),
        only_named=True,
        title="Y checks in in P1's place",
    )


@case(
    "R44.max-rooms",
    "The server holds at most max_rooms rooms; past that, hello answers capacity and "
    "closes with 1013; a room with nobody in it stops counting",
    exclusive=True,
)
async def max_rooms(t: CaseContext) -> None:
    """Runs alone. Patients check in to new rooms until hello answers capacity (close 1013), which must come
    by max_rooms + 1 new rooms; one of them leaves; a hello to a new room is then welcomed."""
    limit = t.limit("max_rooms")
    if limit is None:
        t.skip("max_rooms is off")
    limit = int(limit)
    if limit + 3 > t.env.max_connections:
        t.skip(
            f"max_rooms is {limit}: filling the server takes up to {limit + 1} connections, over the suite's "
            f"budget of {t.env.max_connections} (--max-connections); it would also refuse new rooms to "
            "everyone else meanwhile"
        )
    t.allow(limit * 0.2)
    opened: list[Conn] = []
    refused_at = None
    for i in range(limit + 1):
        conn = await t.connect(f"R{i + 1}")
        await conn.send({"type": "hello", "role": "patient", "room": t.room(), "name": t.name(f"R{i + 1}")})
        answer = await t._read_answer(conn, then_close=False)
        kinds = [f["type"] for f in answer]
        if "welcome" in kinds:
            conn.welcomed = True
            opened.append(conn)
            continue
        rest = answer + (await t._read_to_close(conn, t.env.answer_timeout_s) if not conn.closed else [])
        t.check_frames(
            f"R{i + 1} checks in to new room number {i + 1}",
            conn.label,
            [error("capacity") | {"ref": ABSENT}, close(1013)],
            rest,
        )
        refused_at = i + 1
        break
    if refused_at is None:
        t.fail(f"{limit + 1} patients checked in to {limit + 1} new rooms; max_rooms is {limit}")
    if not opened:
        t.fail("the first new room was refused: the server is already full")
    t.notes.append(f"capacity came at new room {refused_at} (other rooms may have been active)")
    leaving = opened[0]
    await t.request(
        leaving,
        {"type": "leave"},
        answer=ok(),
        close=1000,
        only_named=True,
        title=f"{leaving.label} leaves: its room is empty",
    )
    late = await t.connect("Z")
    await t.request(
        late,
        {"type": "hello", "role": "patient", "room": t.room(), "name": t.name("Z")},
        ref=False,
        answer=patient_welcome(position=1),
        only_named=True,
        title="Z checks in to a new room",
    )


@case(
    "R45.hello-timeout",
    "A connection that says no hello within hello_timeout_s gets hello_required and a 1008 close",
)
async def hello_timeout(t: CaseContext) -> None:
    """X connects and sends nothing: after hello_timeout_s it gets error{hello_required} and a 1008 close."""
    timeout = t.limit("hello_timeout_s")
    if timeout is None:
        t.skip("hello_timeout_s is off")
    timeout = float(timeout)
    if timeout > t.env.max_wait_s:
        t.skip(
            f"hello_timeout_s is {timeout:g} s, longer than the suite waits ({t.env.max_wait_s:g} s, "
            "--max-wait-s)"
        )
    t.allow(timeout + 5)
    x = await t.connect("X")
    started = trio.current_time()
    await t.expect("X sends nothing", {x: [error("hello_required"), close(1008)]}, wait=timeout + 3)
    elapsed = trio.current_time() - started
    if elapsed < timeout - 0.25:
        t.departure(f"closed after {elapsed:.2f} s, before hello_timeout_s ({timeout:g} s)")


@case(
    "R45.heartbeat",
    "The server pings every ping_interval_s; a patient that does not answer for "
    "ping_timeout_s is closed as lost and departs (disconnected)",
    checks=("R11",),
)
async def heartbeat(t: CaseContext) -> None:
    """A (a raw client that never answers pings) checks in with C connected: A receives a WebSocket ping
    within ping_interval_s; after ping_timeout_s its connection ends and C gets patient_left{A,
    disconnected}, erased{A, not_in_view}."""
    interval, timeout = t.limit("ping_interval_s"), t.limit("ping_timeout_s")
    if interval is None:
        t.skip("ping_interval_s is off: the server sends no pings")
    if timeout is None:
        t.skip("ping_timeout_s is off: the server never closes a silent connection")
    interval, timeout = float(interval), float(timeout)
    if interval + timeout > t.env.max_wait_s:
        t.skip(
            f"ping_interval_s + ping_timeout_s is {interval + timeout:g} s, longer than the suite waits "
            f"({t.env.max_wait_s:g} s, --max-wait-s)"
        )
    t.allow(interval + timeout + 10)
    room = t.room()
    c = await t.clinician(room)
    raw = await t.connect_raw("A")
    raw.answer_pings = False
    await raw.send_text({"type": "hello", "role": "patient", "room": room, "name": t.name("A")})
    started = trio.current_time()
    welcome = await raw.next(t.env.answer_timeout_s)
    t.check_frames("A (raw, never answers pings) checks in", "A", [patient_welcome()], [welcome])
    patient = str(welcome.get("patient"))
    await t.expect("C hears A check in", {c: [{"type": "patient_joined", "patient": patient}]})
    frames: list[dict[str, Any]] = []
    first_ping = None
    with trio.move_on_after(interval + timeout + 5):
        while True:
            frame = await raw.next(interval + timeout + 5)
            frames.append(frame)
            if frame["type"] == "(ping)" and first_ping is None:
                first_ping = trio.current_time() - started
            if frame["type"] == "(close)":
                break
    ended = trio.current_time() - started
    if first_ping is None:
        t.fail(f"no WebSocket ping within {interval + timeout + 5:g} s (ping_interval_s {interval:g})")
    if first_ping > interval + 1.0:
        t.departure(f"the first ping came after {first_ping:.2f} s (ping_interval_s {interval:g})")
    if not frames or frames[-1]["type"] != "(close)":
        t.fail(f"A, silent, was not closed within {interval + timeout + 5:g} s (ping_timeout_s {timeout:g})")
    await t.expect(
        "A's connection is closed as lost",
        {c: [patient_left(patient, "disconnected"), erased(patient, "not_in_view")]},
        wait=t.env.grace_s + 2,
    )
    if ended < timeout - 0.25:
        t.departure(f"A was closed after {ended:.2f} s of silence, before ping_timeout_s ({timeout:g} s)")


@case("R46.shutdown", "On shutdown every connection is closed with 1001 within 1 s")
async def shutdown(t: CaseContext) -> None:
    """Not run: shutting the server down would stop it for everyone, and a client cannot ask for it."""
    t.skip(
        "not run against a live server: shutting it down would stop it for everyone; check it where you "
        "start and stop your server (every connection gets a 1001 close, within 1 s)"
    )
