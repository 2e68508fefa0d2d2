"""What a case works with: fresh rooms, labelled connections, and steps checked frame by frame.

A *step* is one cause -- a request on one connection, or something that is
not a request (a connection closing) -- and the exact frames the contract
says each open connection of the case receives because of it. The frames are
collected with the contract's ``ping`` barrier: on each connection the suite
sends ``ping`` and reads up to its ``ok``; every frame caused earlier has come
by then. A frame still missing is waited for a short while (``grace_s``)
before the step fails. Against a server without ``ping`` the barrier falls
back to a bounded quiet window (``window_s``), and the verdict says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import trio

from reference_server.protocol import RefNumbers, clinician_token

from ._client import Conn, RawConn, WireLog, open_conn, sanitize
from ._exchange import exchange
from ._expect import clinician_welcome, patient_joined, patient_welcome
from ._outcomes import CaseSkipped, Failure
from ._patterns import (
    ABSENT,
    CLOSE_TYPE,
    Item,
    Sequence_,
    ends_with_close,
    find_unexpected_extra,
    item_count,
    match_sequence,
    render_frame,
    render_items,
)

# Marker strings in every text and name the suite sends: tests look for them in outputs.
TEXT_MARKER: Final = "QCCONF-TEXT"
NAME_MARKER: Final = "QCCONF-NAME"
ANSWER_TYPES: Final = ("ok", "error", "welcome")


@dataclass
class SuiteEnv:
    """What every case shares: the server, what the preflight learnt of it, and the suite's bounds."""

    url: str
    secret: str
    prefix: str  # room slugs of this run start with it
    has_ping: bool = True
    limits: dict[str, Any] | None = None
    grace_s: float = 1.0  # a frame still missing after the barrier is waited for this long
    window_s: float = 0.5  # without ping: absence is checked over this quiet window
    answer_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    max_connections: int = 100  # per case: cases needing more are skipped
    max_wait_s: float = 12.0  # cases that must wait longer for a server timer are skipped
    rooms: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_room(self) -> str:
        return f"{self.prefix}-{next(self.rooms)}"


class CaseContext:
    """The state of one running case; the case function drives it."""

    def __init__(self, case_id: str, env: SuiteEnv, nursery: trio.Nursery) -> None:
        self.case_id = case_id
        self.env = env
        self._nursery = nursery
        self.origin = trio.current_time()
        self.secrets: set[str] = set()
        self.conns: dict[str, Conn] = {}
        self.raw: dict[str, RawConn] = {}
        self.logs: dict[str, WireLog] = {}
        self.steps: list[dict[str, Any]] = []
        self.departures: list[str] = []  # non-strict: how the server departs from the letter
        self.observations: list[str] = []  # what an informational case saw
        self.notes: list[str] = []  # how the case was checked (e.g. the no-ping window)
        self.informational = False
        self.extensions: set[str] = set()
        self.scope: trio.CancelScope | None = None
        self.last_seen: dict[Conn, list[dict[str, Any]]] = {}  # the frames of the last step, unredacted
        self._refs = RefNumbers()
        self._texts = itertools.count(1)

    # ------------------------------------------------------------------ names, texts, rooms

    def room(self) -> str:
        """A fresh room slug, unique to this run."""
        return self.env.new_room()

    def text(self, length: int | None = None, *, fill: str = "x") -> str:
        """A message text carrying the marker (``length`` code points when given)."""
        base = f"{TEXT_MARKER} {self.case_id} #{next(self._texts)}"
        if length is not None:
            base = (base + " " + fill * length)[:length] if length >= len(base) else fill * length
        self.secrets.add(base)
        return base

    def name(self, label: str) -> str:
        value = f"{NAME_MARKER} {label}"
        self.secrets.add(value)
        return value

    def token(self, room: str) -> str:
        return clinician_token(self.env.secret, room)

    def ref(self, conn: Conn) -> str:
        return self._refs.fresh(conn.label.lower())

    @property
    def labels(self) -> dict[str, str]:
        return {c.patient_id: c.label for c in self.conns.values() if c.patient_id is not None}

    def limit(self, name: str) -> Any:
        """A limit from the clinician's welcome (``None`` when off); skips when the server listed none."""
        if self.env.limits is None or name not in self.env.limits:
            self.skip(f"the server's welcome lists no limit {name!r}")
        return self.env.limits[name]

    def allow(self, seconds: float) -> None:
        """Give this case ``seconds`` more before its timeout."""
        if self.scope is not None:
            self.scope.deadline += seconds

    # ------------------------------------------------------------------ verdict helpers

    def skip(self, reason: str) -> NoReturn:
        raise CaseSkipped(reason)

    def departure(self, how: str) -> None:
        """Works, but not to the letter: the case ends ``non-strict`` unless it fails."""
        if how not in self.departures:
            self.departures.append(how)

    def observe(self, note: str) -> None:
        self.informational = True
        self.observations.append(note)

    def fail(self, message: str, *, step: str = "") -> NoReturn:
        raise Failure(message, step=step or message)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)

    def _on_extension(self, kind: str) -> None:
        self.extensions.add(kind)

    # ------------------------------------------------------------------ connections

    def _log(self, label: str) -> WireLog:
        if label in self.logs:
            raise ValueError(f"label {label} is used twice in {self.case_id}")
        log = WireLog(self.origin, self.secrets)
        self.logs[label] = log
        return log

    async def connect(self, label: str) -> Conn:
        """A new WebSocket connection, not yet welcomed."""
        conn = await open_conn(
            self._nursery,
            self.env.url,
            label,
            self._log(label),
            self.env.connect_timeout_s,
            self._on_extension,
        )
        self.conns[label] = conn
        return conn

    async def connect_raw(self, label: str, *, receive_buffer: int | None = None) -> RawConn:
        """A bare wsproto connection (``receive_buffer``: a small SO_RCVBUF, for a client that stalls)."""
        conn = await RawConn.connect(
            self.env.url, self._log(label), self.env.connect_timeout_s, receive_buffer=receive_buffer
        )
        self.raw[label] = conn
        return conn

    async def clinician(
        self,
        room: str,
        label: str = "C",
        *,
        answer: dict[str, Any] | None = None,
        events: Mapping[Conn, Sequence_] | None = None,
        lenient: Iterable[Conn] = (),
    ) -> Conn:
        """A clinician connection said hello to ``room`` and got its welcome."""
        conn = await self.connect(label)
        await self.request(
            conn,
            {"type": "hello", "role": "clinician", "room": room, "token": self.token(room)},
            answer=answer if answer is not None else clinician_welcome(),
            events=events,
            ref=False,
            title=f"{label}: clinician hello",
            lenient=lenient,
        )
        return conn

    async def patient(
        self,
        room: str,
        label: str,
        *,
        clinician: Conn | None = None,
        answer: dict[str, Any] | None = None,
        events: Mapping[Conn, Sequence_] | None = None,
    ) -> Conn:
        """A patient connection checked in to ``room``; ``clinician`` (if any) hears ``patient_joined``."""
        conn = await self.connect(label)
        expected = dict(events or {})
        if clinician is not None and clinician not in expected:
            expected[clinician] = [patient_joined(conn)]
        await self.request(
            conn,
            {"type": "hello", "role": "patient", "room": room, "name": self.name(label)},
            answer=answer if answer is not None else patient_welcome(),
            events=expected,
            ref=False,
            title=f"{label}: patient hello",
        )
        return conn

    async def setup(self, *patients: str, clinician: bool = True) -> list[Conn]:
        """A fresh room with a clinician ``C`` (first, when wanted) and patients with these labels."""
        room = self.room()
        conns: list[Conn] = []
        c = await self.clinician(room) if clinician else None
        if c is not None:
            conns.append(c)
        for label in patients:
            conns.append(await self.patient(room, label, clinician=c))
        return conns

    async def close(
        self,
        conn: Conn,
        title: str,
        events: Mapping[Conn, Sequence_] | None = None,
        *,
        lenient: Iterable[Conn] = (),
    ) -> None:
        """Close ``conn`` from the client side (a drop), then check what the others receive."""
        await conn.aclose()
        await self.expect(title, events or {}, wait=self.env.grace_s + 2.0, lenient=lenient)

    async def aclose_all(self) -> None:
        for conn in self.conns.values():
            conn.closed = True
            await conn.release()
        for raw in self.raw.values():
            await raw.aclose()

    async def still_works(self, conn: Conn, title: str) -> None:
        """A request that changes nothing is still answered: ``ping``; without ping, a clinician's
        ``open_chat`` on a made-up id (``not_found``); a patient has no such request then."""
        if self.env.has_ping:
            await self.request(conn, {"type": "ping"}, answer={"type": "ok"}, title=title)
        elif "queue" in conn.welcome:
            await self.request(conn, {"type": "open_chat", "patient": "made-up-id"},
                               answer={"type": "error", "code": "not_found"}, title=title)
        else:
            self.notes.append(f"not checked without ping: {title}")

    # ------------------------------------------------------------------ steps

    async def request(
        self,
        conn: Conn,
        frame: dict[str, Any],
        *,
        answer: dict[str, Any],
        events: Mapping[Conn, Sequence_] | None = None,
        close: int | None = None,
        title: str | None = None,
        ref: bool | str = True,
        raw: str | bytes | None = None,
        lenient: Iterable[Conn] = (),
        only_named: bool = False,
    ) -> dict[str, Any]:
        """Send ``frame`` (or ``raw`` text) on ``conn``; check its answer and what every connection receives.

        ``events`` maps connections to the frames the request causes there (on
        ``conn`` itself, those that come before the answer). Open connections
        that are not named must receive nothing. ``close`` expects the server
        to close ``conn`` with that code after the answer. ``lenient``
        connections may receive more than the contract asks (a ``non-strict``
        departure, not a failure): for frames where the contract is silent.
        ``only_named`` leaves connections not named unchecked (for cases with many).
        """
        title = title or f"{conn.label} sends {frame.get('type')}"
        sent = dict(frame)
        answer = dict(answer)
        if ref:
            value = ref if isinstance(ref, str) else self.ref(conn)
            sent["ref"] = value
            answer.setdefault("ref", value)
        else:
            answer.setdefault("ref", ABSENT)
        expected: dict[Conn, list[Item]] = {c: list(items) for c, items in (events or {}).items()}
        own = [*expected.pop(conn, []), answer]
        if close is not None:
            own.append({"type": CLOSE_TYPE, "code": close})
        expected[conn] = own
        if raw is not None:
            await conn.send_raw(raw, logged=sent if isinstance(raw, str) and raw.startswith("{") else None)
        else:
            await conn.send(sent)
        seen_own = await self._read_answer(conn, close is not None)
        answered: dict[str, Any] = next((f for f in reversed(seen_own) if f["type"] in ANSWER_TYPES), {})
        if answered.get("type") == "welcome":
            conn.welcomed = True
            if isinstance(answered.get("patient"), str):
                conn.patient_id = answered["patient"]
            conn.welcome = answered
        if answered:
            seen_own += await self._after_answer(conn)
        seen = {conn: seen_own}
        await self._collect_all(expected, seen, wait=self.env.grace_s, only_named=only_named)
        self.last_seen = seen
        self._judge(title, expected, seen, lenient)
        return answered

    async def pipeline(
        self,
        conn: Conn,
        frames: Sequence[dict[str, Any]],
        *,
        own: Sequence_,
        events: Mapping[Conn, Sequence_] | None = None,
        title: str,
        lenient: Iterable[Conn] = (),
    ) -> list[dict[str, Any]]:
        """Send several requests before reading; ``own`` is everything ``conn`` receives for them, in order.

        The frames should carry refs from :meth:`ref`. Returns what ``conn`` received.
        """
        for frame in frames:
            await conn.send(frame)
        answers_due = len(frames)
        seen_own: list[dict[str, Any]] = []
        with trio.move_on_after(self.env.answer_timeout_s):
            while answers_due:
                frame = await conn.recv(self.env.answer_timeout_s)
                seen_own.append(frame)
                if frame["type"] == CLOSE_TYPE:
                    break
                if frame["type"] in ANSWER_TYPES:
                    answers_due -= 1
        if answers_due == 0:
            seen_own += await self._after_answer(conn)
        expected: dict[Conn, list[Item]] = {c: list(items) for c, items in (events or {}).items()}
        expected[conn] = list(own)
        seen = {conn: seen_own}
        await self._collect_all(expected, seen, wait=self.env.grace_s)
        self.last_seen = seen
        self._judge(title, expected, seen, lenient)
        return seen_own

    async def expect(
        self,
        title: str,
        events: Mapping[Conn, Sequence_],
        *,
        wait: float | None = None,
        lenient: Iterable[Conn] = (),
    ) -> dict[Conn, list[dict[str, Any]]]:
        """After a cause that is not a request (a close, a timer): check what every connection receives."""
        expected: dict[Conn, list[Item]] = {c: list(items) for c, items in events.items()}
        seen: dict[Conn, list[dict[str, Any]]] = {}
        await self._collect_all(expected, seen, wait=self.env.grace_s if wait is None else wait)
        self.last_seen = seen
        self._judge(title, expected, seen, lenient)
        return seen

    async def drain(self, conn: Conn) -> int:
        """Read and drop everything ``conn`` has been sent so far (not a checked step); returns how many."""
        frames = conn.take_buffer()
        if not conn.closed:
            frames += (
                await self._barrier(conn)
                if self.env.has_ping
                else await conn.read_quiet(self.env.window_s, self.env.window_s * 4)
            )
        return len(frames)

    async def _read_answer(self, conn: Conn, then_close: bool) -> list[dict[str, Any]]:
        frames = conn.take_buffer()
        if not any(f["type"] in ANSWER_TYPES or f["type"] == CLOSE_TYPE for f in frames):
            with trio.move_on_after(self.env.answer_timeout_s):
                while not conn.closed:
                    try:
                        frame = await conn.recv(self.env.answer_timeout_s)
                    except trio.TooSlowError:
                        break
                    frames.append(frame)
                    if frame["type"] in ANSWER_TYPES:
                        break
        if then_close and not conn.closed:
            frames += await self._read_to_close(conn, self.env.answer_timeout_s)
        return frames

    async def _after_answer(self, conn: Conn) -> list[dict[str, Any]]:
        """What the requester received after its answer, up to a ``ping`` barrier: the contract sends a
        request's events before its ``ok``, so anything here is a departure of this step (an event
        after the ``ok``, or one the request should not have caused), not of the next one."""
        if conn.closed or not conn.welcomed or not self.env.has_ping:
            return []
        return await self._barrier(conn)

    async def _read_to_close(self, conn: Conn, within_s: float) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        with trio.move_on_after(within_s):
            while not conn.closed:
                try:
                    frames.append(await conn.recv(within_s))
                except trio.TooSlowError:
                    break
        return frames

    async def _collect_all(
        self,
        expected: Mapping[Conn, Sequence_],
        seen: dict[Conn, list[dict[str, Any]]],
        *,
        wait: float,
        only_named: bool = False,
    ) -> None:
        targets = [
            c for c in self.conns.values() if c not in seen and (not c.closed or c in expected or c.buffer)
        ]
        if only_named:
            targets = [c for c in targets if c in expected]
        results: dict[Conn, list[dict[str, Any]]] = {}

        async def one(conn: Conn) -> None:
            results[conn] = await self._collect(conn, expected.get(conn, []), wait)

        async with trio.open_nursery() as nursery:
            for conn in targets:
                nursery.start_soon(one, conn)
        for conn in targets:
            seen[conn] = results[conn]

    async def _collect(self, conn: Conn, items: Sequence_, wait: float) -> list[dict[str, Any]]:
        """Every frame ``conn`` received for this step: up to the barrier, plus any still owed."""
        wanted = item_count(items)
        frames = conn.take_buffer()
        if conn.closed:
            return frames
        if ends_with_close(items) or not conn.welcomed:
            more = await conn.read_count(max(wanted - len(frames), 0), wait) if wanted > len(frames) else []
            frames += more
            if ends_with_close(items) and not conn.closed:
                frames += await self._read_to_close(conn, wait)
            return frames
        if self.env.has_ping:
            frames += await self._barrier(conn)
            if len(frames) < wanted and not conn.closed:
                more = await conn.read_count(wanted - len(frames), wait)
                frames += more
                if more and not conn.closed:
                    frames += await self._barrier(conn)
        else:
            if len(frames) < wanted:
                frames += await conn.read_count(wanted - len(frames), wait)
            if not conn.closed:
                frames += await conn.read_quiet(self.env.window_s, self.env.window_s * 4)
            note = (
                f"absence of frames checked over a {self.env.window_s:g} s quiet window: "
                "the server does not answer ping"
            )
            if note not in self.notes:
                self.notes.append(note)
        return frames

    async def _barrier(self, conn: Conn) -> list[dict[str, Any]]:
        """Send ``ping`` and return the frames received before its ``ok`` (the ``ok`` is not returned)."""
        frames: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return await conn.recv(self.env.answer_timeout_s)

        try:
            with trio.fail_after(self.env.answer_timeout_s):
                await exchange(conn.send, receive, {"type": "ping"}, self._refs.fresh("barrier-"),
                               before=frames, stop_type=CLOSE_TYPE)
                return frames
        except trio.TooSlowError:
            raise Failure(
                f"{conn.label}: no answer to the ping barrier within {self.env.answer_timeout_s:g} s",
                step="ping barrier",
                seen={conn.label: self.render_frames(frames)},
            ) from None

    # ------------------------------------------------------------------ judging

    def render_frames(self, frames: Sequence[dict[str, Any]]) -> list[str]:
        labels = self.labels
        return [render_frame(sanitize(f, self.secrets), labels) for f in frames]

    def check_frames(
        self, title: str, label: str, items: Sequence_, frames: Sequence[dict[str, Any]]
    ) -> None:
        """Record a step checked by hand (a raw connection): ``frames`` must be exactly ``items``."""
        why = match_sequence(items, frames)
        record: dict[str, Any] = {
            "title": title,
            "status": "fail" if why else "ok",
            "expected": {label: render_items(items, self.labels)},
        }
        if why:
            record["seen"] = {label: self.render_frames(frames)}
        self.steps.append(record)
        if why:
            raise Failure(
                f"{title} — {label}: {why}", step=title, expected=record["expected"], seen=record["seen"]
            )

    def _judge(
        self,
        title: str,
        expected: Mapping[Conn, Sequence_],
        seen: Mapping[Conn, list[dict[str, Any]]],
        lenient: Iterable[Conn],
    ) -> None:
        lenient = set(lenient)
        labels = self.labels
        problems: dict[str, str] = {}
        conns = list(dict.fromkeys([*expected, *seen]))
        for conn in conns:
            items = expected.get(conn, [])
            frames = seen.get(conn, [])
            why = match_sequence(items, frames)
            if why is None:
                continue
            if conn in lenient and find_unexpected_extra(items, frames):
                extra = sorted(
                    {f["type"] for f in frames} - {i.get("type") for i in items if isinstance(i, dict)}
                )
                self.departure(
                    f"{title}: {conn.label} also received {', '.join(extra) or 'more frames'} "
                    "where the contract is silent"
                )
                continue
            problems[conn.label] = why
        record: dict[str, Any] = {
            "title": title,
            "status": "fail" if problems else "ok",
            "expected": {c.label: render_items(expected.get(c, []), labels) for c in conns},
        }
        if problems:
            record["seen"] = {c.label: self.render_frames(seen.get(c, [])) for c in conns}
        self.steps.append(record)
        if problems:
            message = "; ".join(f"{label}: {why}" for label, why in problems.items())
            raise Failure(
                f"{title} — {message}", step=title, expected=record["expected"], seen=record["seen"]
            )
