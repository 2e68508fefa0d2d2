"""Steps that many cases share, each with the exact frames the contract says it produces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._client import Conn
from .._context import CaseContext
from .._expect import (
    call,
    chat_box,
    erased,
    message,
    notify,
    ok,
    open_ok,
    patient_left,
    position,
    provider_status,
    send_ok,
    unread,
)
from .._patterns import ABSENT, Item, Repeat, Unordered, close


async def open_chat(
    t: CaseContext,
    c: Conn,
    p: Conn,
    *,
    messages: Sequence[Any] = (),
    badge: int = 0,
    present: bool = True,
    pushes: bool = True,
    before: Sequence[Item] = (),
    truncated: bool = False,
    title: str | None = None,
) -> dict[str, Any]:
    """The clinician opens ``p``'s conversation (R4): the box opens on ``p``; a badge goes to 0 (R3)."""
    events: list[Item] = [*before]
    if pushes:
        events.append(chat_box("open", p, present, "open_chat"))
        if badge:
            events.append(unread(p, 0))
    return await t.request(
        c,
        {"type": "open_chat", "patient": p.pid},
        answer=open_ok(list(messages), truncated),
        events={c: events},
        title=title or f"C opens {p.label}'s chat",
    )


async def minimize(
    t: CaseContext,
    c: Conn,
    p: Conn | None,
    *,
    present: bool = True,
    pushes: bool = True,
    title: str | None = None,
) -> None:
    events = [chat_box("minimized", p, present, "minimize_chat")] if pushes else []
    await t.request(
        c,
        {"type": "minimize_chat"},
        answer=ok(),
        events={c: events},
        title=title or "C minimizes the chat box",
    )


async def close_box(
    t: CaseContext, c: Conn, *, pushes: bool = True, before: Sequence[Item] = (), title: str | None = None
) -> None:
    events = [*before, chat_box("closed", None, False, "close_chat")] if pushes else [*before]
    await t.request(
        c, {"type": "close_chat"}, answer=ok(), events={c: events}, title=title or "C closes the chat box"
    )


async def patient_writes(
    t: CaseContext,
    p: Conn,
    c: Conn | None,
    *,
    id: int,
    shown: bool = False,
    badge: int | None = None,
    notify_on: bool = True,
    auto_open: Conn | None = None,
    client_ts: Any = None,
    others: Mapping[Conn, Sequence[Item]] | None = None,
    title: str | None = None,
) -> str:
    """``p`` sends a message; the clinician gets it, then any auto-open (R6), badge (R3) and notify (R10)."""
    text = t.text()
    frame: dict[str, Any] = {"type": "send", "text": text}
    if client_ts is not None:
        frame["client_ts"] = client_ts
    events: dict[Conn, list[Item]] = {conn: list(items) for conn, items in (others or {}).items()}
    if c is not None:
        expected: list[Item] = [
            message(p, id, "patient", text, client_ts=client_ts if client_ts is not None else ABSENT)
        ]
        if auto_open is not None:
            expected.append(chat_box("open", auto_open, True, "auto_open"))
        if not shown:
            expected.append(unread(p, badge if badge is not None else 1))
            if notify_on:
                expected.append(notify(p, id))
        events[c] = expected
    await t.request(p, frame, answer=send_ok(id), events=events, title=title or f"{p.label} writes")
    return text


async def clinician_writes(
    t: CaseContext, c: Conn, p: Conn, *, id: int, client_ts: Any = None, title: str | None = None
) -> str:
    """The clinician sends ``p`` a message (R1): ``p`` gets it, the clinician's ``ok`` has its id."""
    text = t.text()
    frame: dict[str, Any] = {"type": "send", "patient": p.pid, "text": text}
    if client_ts is not None:
        frame["client_ts"] = client_ts
    await t.request(
        c,
        frame,
        answer=send_ok(id),
        events={
            p: [message(p, id, "clinician", text, client_ts=client_ts if client_ts is not None else ABSENT)]
        },
        title=title or f"C writes to {p.label}",
    )
    return text


async def start_call_while_b_waits(t: CaseContext, c: Conn, a: Conn, b: Conn) -> None:
    """C starts a call with A while B waits behind it (R20, R30): A gets call started and provider_status
    on_call; B gets provider_status on_call and moves to position 1."""
    await t.request(
        c,
        {"type": "start_call", "patient": a.pid},
        answer=ok(),
        events={
            a: [Unordered(call("started"), provider_status("on_call"))],
            b: [Unordered(provider_status("on_call"), position(1))],
        },
        title="C starts a call with A",
    )


async def leave(
    t: CaseContext,
    p: Conn,
    c: Conn | None,
    *,
    box: tuple[str, bool] | None = None,
    others: Mapping[Conn, Sequence[Item]] | None = None,
    title: str | None = None,
) -> None:
    """``p`` leaves: ``ok`` then close 1000; the clinician hears ``patient_left`` then, unless the box
    shows ``p`` (``box`` = (state, ...)), ``erased{not_in_view}`` (R9, R11)."""
    events: dict[Conn, list[Item]] = {conn: list(items) for conn, items in (others or {}).items()}
    if c is not None:
        after = chat_box(box[0], p, False, "patient_left") if box is not None else erased(p, "not_in_view")
        events[c] = [patient_left(p, "left"), after]
    await t.request(
        p, {"type": "leave"}, answer=ok(), close=1000, events=events, title=title or f"{p.label} leaves"
    )


def replaced_console() -> list[Item]:
    """What a clinician connection replaced by a newer hello may receive (R12): ``erased{refresh}`` for
    each conversation it held (the contract says it *may*), the box closing and badges going to 0 as
    pushes (each change of the box and of a badge may be pushed; a server may also push nothing, as the
    connection is going), in the contract's order, then the 4000 close."""
    return [
        Repeat({"type": "erased", "reason": "refresh", "ref": ABSENT}, 0, 64),
        Repeat({"type": "chat_box", "state": "closed", "patient": None, "ref": ABSENT}, 0, 1),
        Repeat({"type": "unread", "count": 0, "ref": ABSENT}, 0, 64),
        close(4000),
    ]


async def start_call_erasing_shown_departed(t: CaseContext, c: Conn, a: Conn, b: Conn) -> None:
    """C starts a call with A while the box shows departed B (R11c): C gets erased{B, call_started} and
    chat_box{closed, null, erased} before the ok; A gets call started and provider_status on_call."""
    await t.request(
        c,
        {"type": "start_call", "patient": a.pid},
        answer=ok(),
        events={
            c: [erased(b, "call_started"), chat_box("closed", None, False, "erased")],
            a: [Unordered(call("started"), provider_status("on_call"))],
        },
        title="C starts a call with A while the box shows departed B",
    )


async def end_call_not_in_view(t: CaseContext, c: Conn, a: Conn, b: Conn, *, title: str) -> None:
    """C ends the call with A while the box does not show A: C gets patient_left{A, call_ended} and
    erased{A, not_in_view} before the ok; A gets call ended and a 1000 close; B gets provider_status
    online."""
    await t.request(
        c,
        {"type": "end_call"},
        answer=ok(),
        events={
            c: [patient_left(a, "call_ended"), erased(a, "not_in_view")],
            a: [call("ended"), close(1000)],
            b: [provider_status("online")],
        },
        title=title,
    )
