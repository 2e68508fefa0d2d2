"""Chatting (R1, R2, R4): messages both ways with ids, times, client_ts; several conversations; open_chat."""

from __future__ import annotations

import trio

from reference_server.protocol import OPEN_CHAT_MAX_MESSAGES

from .._client import Conn
from .._context import CaseContext
from .._expect import call, chat_box, message, open_ok, provider_status, send_ok, stored, unread
from .._patterns import ABSENT, ANY, Unordered
from .._registry import group
from ._steps import clinician_writes, open_chat, patient_writes

case = group("chatting")


@case(
    "R1.patient-to-clinician",
    "A patient's message reaches the clinician with patient, id 1, from, "
    "text, ts and client_ts copied; the sender's ok carries the same id and ts",
    checks=("R3", "R4"),
)
async def patient_to_clinician(t: CaseContext) -> None:
    """C opens A's chat (so the message is shown: no badge); A sends with client_ts 1767225603000.5: C gets
    message{A, 1, patient, text, ts, client_ts}, A gets ok{id 1, ts}."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    text = t.text()
    answer = await t.request(
        a,
        {"type": "send", "text": text, "client_ts": 1767225603000.5},
        answer=send_ok(1),
        events={c: [message(a, 1, "patient", text, client_ts=1767225603000.5)]},
        title="A writes with a client_ts",
    )
    shown = t.last_seen.get(c, [])
    message_ts = shown[0].get("ts") if shown else None
    if message_ts is not None and answer.get("ts") != message_ts:
        t.departure(f"the sender's ok has ts {answer.get('ts')}, the message has ts {message_ts}")


@case(
    "R1.clinician-to-patient",
    "The clinician's message reaches the patient (from clinician, the "
    "patient's own id, client_ts copied); no other patient receives anything",
)
async def clinician_to_patient(t: CaseContext) -> None:
    """C writes to A with client_ts 42: A gets message{A, 1, clinician, text, ts, client_ts 42}, C gets
    ok{id 1, ts}, B gets nothing."""
    c, a, _b = await t.setup("A", "B")
    await clinician_writes(t, c, a, id=1, client_ts=42)


@case(
    "R1.ids-shared-and-increasing",
    "Message ids in a conversation start at 1 and go up by 1 whichever "
    "side writes; client_ts is absent when the send had none",
    checks=("R4",),
)
async def ids_increase(t: CaseContext) -> None:
    """With A's chat open, A writes (id 1), C writes (id 2), A writes (id 3), none with client_ts: each
    message has the next id and no client_ts."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    await patient_writes(t, a, c, id=1, shown=True)
    await clinician_writes(t, c, a, id=2)
    await patient_writes(t, a, c, id=3, shown=True)


@case("R1.delivery-in-send-order", "Delivery within a conversation is in send order", checks=("R4",))
async def delivery_in_order(t: CaseContext) -> None:
    """With A's chat open, A sends five messages without waiting: A gets five ok with ids 1-5 in order, C
    gets the five messages in the order sent."""
    c, a = await t.setup("A")
    await open_chat(t, c, a)
    texts = [t.text() for _ in range(5)]
    refs = [t.ref(a) for _ in range(5)]
    await t.pipeline(
        a,
        [{"type": "send", "text": texts[i], "ref": refs[i]} for i in range(5)],
        own=[{**send_ok(i + 1), "ref": refs[i]} for i in range(5)],
        events={c: [message(a, i + 1, "patient", texts[i]) for i in range(5)]},
        title="A sends five messages without waiting",
    )


@case("R1.in-call-chat", "The clinician and a patient in a call chat both ways", checks=("R20", "R30", "R4"))
async def in_call_chat(t: CaseContext) -> None:
    """C starts a call with A and opens A's chat; A writes (shown), C writes back."""
    c, a = await t.setup("A")
    await t.request(
        c,
        {"type": "start_call", "patient": a.pid},
        answer={"type": "ok"},
        events={a: [Unordered(call("started"), provider_status("on_call"))]},
        title="C starts a call with A",
    )
    await open_chat(t, c, a)
    await patient_writes(t, a, c, id=1, shown=True, title="A, in the call, writes")
    await clinician_writes(t, c, a, id=2, title="C writes to A in the call")


@case(
    "R2.several-conversations",
    "The clinician chats with several patients at once; each conversation has its own ids",
    checks=("R3", "R10"),
)
async def several_conversations(t: CaseContext) -> None:
    """A and B each write (ids 1 in their conversations, badges 1), C answers each (ids 2)."""
    c, a, b = await t.setup("A", "B")
    await patient_writes(t, a, c, id=1, badge=1)
    await patient_writes(t, b, c, id=1, badge=1)
    await clinician_writes(t, c, a, id=2)
    await clinician_writes(t, c, b, id=2)


@case(
    "R4.open-chat-returns-conversation",
    "open_chat opens the box on the patient and its ok carries the "
    "conversation in order, with truncated false",
    checks=("R3", "R10", "R5"),
)
async def open_chat_returns_conversation(t: CaseContext) -> None:
    """A writes twice (one with client_ts 7), C writes once; C opens A's chat: chat_box{open, A}, unread 0,
    and ok{messages: the three in order with their ids, senders and client_ts; truncated: false}."""
    c, a = await t.setup("A")
    first = await patient_writes(t, a, c, id=1, badge=1)
    second = await patient_writes(t, a, c, id=2, badge=2, client_ts=7)
    third = await clinician_writes(t, c, a, id=3)
    await open_chat(
        t,
        c,
        a,
        badge=2,
        messages=[
            stored(a, 1, "patient", first),
            stored(a, 2, "patient", second, client_ts=7),
            stored(a, 3, "clinician", third, client_ts=ABSENT),
        ],
    )


@case("R4.open-chat-in-call-patient", "open_chat works for a patient in a call", checks=("R20", "R30"))
async def open_chat_in_call(t: CaseContext) -> None:
    """C writes to A, starts a call with A, then opens A's chat: chat_box{open, A}, and the message."""
    c, a = await t.setup("A")
    text = await clinician_writes(t, c, a, id=1)
    await t.request(
        c,
        {"type": "start_call", "patient": a.pid},
        answer={"type": "ok"},
        events={a: [Unordered(call("started"), provider_status("on_call"))]},
        title="C starts a call with A",
    )
    await t.request(
        c,
        {"type": "open_chat", "patient": a.pid},
        answer=open_ok([stored(a, 1, "clinician", text)]),
        events={c: [chat_box("open", a, True, "open_chat")]},
        title="C opens A's chat during the call",
    )


@case(
    "R4.open-chat-truncated",
    "open_chat returns the last 500 messages and truncated true when the conversation has more",
    checks=("R1", "R3"),
)
async def open_chat_truncated(t: CaseContext) -> None:
    """C writes 300 messages to A, then A writes 201 (paced to the server's rate limit); C opens A's chat:
    chat_box, unread 0, and an ok with 500 messages, ids 2-501 in order, and truncated true."""
    rate, burst = t.limit("rate_per_s"), t.limit("rate_burst")
    c, a = await t.setup("A")
    t.allow(20.0)
    for conn, count in ((c, 300), (a, 201)):
        await _write_many(t, conn, c, a, count, rate, burst)
    for conn in (c, a):
        await t.drain(conn)  # the 300 messages A received, the messages and badges C received
    answer = await t.request(
        c,
        {"type": "open_chat", "patient": a.pid},
        answer=open_ok(ANY, True),
        events={c: [chat_box("open", a, True, "open_chat"), unread(a, 0)]},
        title="C opens A's chat after 501 messages",
    )
    messages = answer.get("messages")
    count = len(messages) if isinstance(messages, list) else 0
    t.check(count == OPEN_CHAT_MAX_MESSAGES, f"open_chat returned {count} messages, not the last 500")
    ids = [m.get("id") for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    t.check(ids == list(range(2, 502)), "open_chat's messages are not ids 2-501, oldest first")


async def _write_many(
    t: CaseContext,
    conn: Conn,
    clinician: Conn,
    patient: Conn,
    count: int,
    rate: float | None,
    burst: int | None,
) -> None:
    """``conn`` sends ``count`` messages in ``patient``'s conversation, in batches its rate bucket allows.

    Batches of at most 50: the other side's queue never holds more than 150 frames at once (R42).
    Between batches the case paces itself to the server's rate (an estimate of the bucket), not
    waiting for any event.
    """
    limited = rate is not None and burst is not None
    ceiling = float(burst) - 5 if burst is not None else 0.0
    tokens, last = ceiling, trio.current_time()
    sent = 0
    while sent < count:
        size = min(50, count - sent)
        if limited:
            assert rate is not None
            now = trio.current_time()
            tokens = min(ceiling, tokens + (now - last) * float(rate))
            last = now
            if tokens < size:
                await trio.sleep(min(5.0, (size - tokens) / float(rate) + 0.02))  # pacing, bounded
                tokens, last = float(size), trio.current_time()
            tokens -= size
        for _ in range(size):
            frame = {"type": "send", "text": t.text(), "ref": t.ref(conn)}
            if conn is not patient:
                frame["patient"] = patient.pid
            await conn.send(frame)
        answers = 0
        with trio.fail_after(t.env.answer_timeout_s * 2):
            while answers < size:
                frame = await conn.recv(t.env.answer_timeout_s)
                if frame["type"] == "error":
                    t.fail(
                        f"{conn.label}'s message {sent + answers + 1} was answered error {frame.get('code')}"
                    )
                if frame["type"] == "(close)":
                    t.fail(f"the server closed {conn.label} while it was writing")
                answers += frame["type"] == "ok"
        sent += size
        await t.drain(patient if conn is not patient else clinician)  # keep the other side reading
