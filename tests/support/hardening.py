"""Shared pieces of the hardening tests (tests/test_hardening_*.py) that run the server in-process.

It imports the server shell (``reference_server.server``) to run it, and reads its counters; it
decides nothing from the domain model.

- :func:`serving`: a reference server on loopback for one test body (also inside a
  Hypothesis example, where pytest-trio's fixtures cannot be re-entered); on exit it
  shuts the server down (R46) and checks that no internal error was counted.
- :func:`live_counts` / :func:`settle_to`: the server's live objects (connections,
  model sessions, present patients, active rooms, Trio tasks, instances of the server's
  classes found by the garbage collector), and a bounded wait until they are back.
- :class:`ControlPair`: a clinician and a patient in a room of their own who keep
  chatting while hostile clients do their worst; every exchange checks that each
  message arrives once, to the right side, with the next id.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from reference_server.protocol import Limits, clinician_token
from reference_server.server import QueueChatServer

from .rawws import TrioClient

SECRET = "hardening-test-secret"
COUNTED = ("_Connection", "_Session", "_Patient")


@asynccontextmanager
async def serving(limits: Limits | None = None, **options: Any) -> AsyncIterator[tuple[str, QueueChatServer]]:
    options.setdefault("stats_interval_s", None)
    server = QueueChatServer(secret=SECRET, limits=limits, **options)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(lambda task_status: server.serve(host="127.0.0.1", port=0,
                                                                   task_status=task_status))
        try:
            yield url, server
        finally:
            with trio.CancelScope(shield=True):
                await server.shutdown()
    assert server.statistics().internal_errors == 0, "the server counted an internal error"


def token(room: str) -> str:
    return clinician_token(SECRET, room)


def live_counts(server: QueueChatServer, *, objects: bool = True) -> dict[str, int]:
    """What the server holds alive now; RSS is not used (it does not shrink).

    ``objects`` adds the instances of the server's classes that the garbage collector finds
    after a full collection, which in a long test session is slow: polls leave it out
    until the cheap counts are where they should be.
    """
    model = server._model.statistics()
    counts = {
        "connections": len(server._connections),
        "sessions": model["sessions"],
        "patients_present": model["patients_present"],
        "rooms_active": model["rooms_active"],
        # Left out, being bounded by a timer of their own: a connection's writer task, which runs
        # only while its socket is full or it is closing.
        "tasks": trio.lowlevel.current_statistics().tasks_living - _transient_tasks(),
    }
    if not objects:
        return counts
    gc.collect()
    wanted = set(COUNTED)
    found = dict.fromkeys(COUNTED, 0)
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in wanted and type(obj).__module__.startswith("reference_server"):
            found[name] += 1
    counts.update({f"objects{name}": n for name, n in found.items()})
    return counts


def task_names() -> Counter[str]:
    """The living Trio tasks by (short) name, for telling what did not go away."""
    names: Counter[str] = Counter()
    root = trio.lowlevel.current_root_task()
    assert root is not None, "called outside trio.run"
    stack = [root]
    while stack:
        task = stack.pop()
        names[task.name.rsplit(".", 1)[-1]] += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


_baseline_tasks: Counter[str] = Counter()
TRANSIENT_TASKS = ("_writer",)


def _transient_tasks() -> int:
    names = task_names()
    return sum(names[name] for name in TRANSIENT_TASKS)


async def _pause() -> None:
    """Let pending work run: until every task is blocked (bounded, for tasks that tick), then a beat."""
    with trio.move_on_after(0.2):
        await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    await trio.sleep(0.005)


async def quiet_counts(server: QueueChatServer, *, timeout_s: float = 10.0) -> dict[str, int]:
    """The live counts once nothing is moving (two samples alike, with every task blocked between)."""
    last = live_counts(server, objects=False)
    with trio.move_on_after(timeout_s):
        for _ in range(1000):
            await _pause()
            now = live_counts(server, objects=False)
            if now == last:
                break
            last = now
    last = live_counts(server)
    _baseline_tasks.clear()
    _baseline_tasks.update(task_names())
    for name in TRANSIENT_TASKS:
        _baseline_tasks.pop(name, None)
    return last


async def wait_count(server: QueueChatServer, key: str, value: int, *, timeout_s: float = 10.0) -> None:
    """Bounded poll until one live count has ``value`` (a peer's I/O changes it, with no event to wait on)."""
    with trio.move_on_after(timeout_s):
        for _ in range(10_000):
            if live_counts(server, objects=key.startswith("objects"))[key] == value:
                return
            await _pause()
    raise AssertionError(f"{key} never got to {value}: {live_counts(server)[key]}")


async def settle_to(server: QueueChatServer, baseline: dict[str, int], *, timeout_s: float = 15.0,
                    ignore: tuple[str, ...] = ()) -> dict[str, int]:
    """Wait (bounded) until the live counts are back at ``baseline``; fail with the difference."""
    now = live_counts(server)
    with trio.move_on_after(timeout_s):
        for _ in range(10_000):
            now = live_counts(server, objects=False)
            if all(now[k] == baseline[k] for k in now if k not in ignore):
                now = live_counts(server)
                if all(now[k] == v for k, v in baseline.items() if k not in ignore):
                    return now
            await _pause()
    diff = {k: (baseline[k], now[k]) for k in baseline if now[k] != baseline[k] and k not in ignore}
    names = task_names()
    for name in TRANSIENT_TASKS:
        names.pop(name, None)
    more, fewer = dict(names - _baseline_tasks), dict(_baseline_tasks - names)
    raise AssertionError(f"live objects did not return to their level (before, now): {diff};"
                         f" tasks now more {more}, fewer {fewer}")


# --------------------------------------------------------------------------- the control pair


_rooms = itertools.count(1)


@dataclass
class ControlPair:
    """A clinician and a patient chatting in their own room; see :meth:`exchange`."""

    clinician: TrioClient
    patient: TrioClient
    patient_id: str
    room: str
    next_id: int = 1
    exchanges: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[ControlPair]:
        room = f"control-{next(_rooms)}"
        async with AsyncExitStack() as stack:
            clinician = await TrioClient.connect(url)
            stack.push_async_callback(clinician.aclose)
            await clinician.hello({"type": "hello", "role": "clinician", "room": room, "token": token(room)})
            patient = await TrioClient.connect(url)
            stack.push_async_callback(patient.aclose)
            welcome = await patient.hello({"type": "hello", "role": "patient", "room": room,
                                           "name": "Control Patient"})
            joined = await clinician.recv_json()
            assert joined["type"] == "patient_joined"
            pair = cls(clinician, patient, welcome["patient"], room)
            await pair.exchange()
            yield pair

    async def exchange(self) -> None:
        """One message each way: each arrives exactly once, on the right side, with the next id."""
        sent = time.monotonic()
        text = f"control {self.exchanges}"
        await self.patient.send_json({"type": "send", "text": text, "ref": "c"})
        ok = await self.patient.recv_json()
        assert ok == {"type": "ok", "ref": "c", "id": self.next_id, "ts": ok.get("ts")}, ok
        frames = [await self.clinician.recv_json() for _ in range(3)]
        assert [f["type"] for f in frames] == ["message", "unread", "notify"], frames
        assert frames[0]["text"] == text and frames[0]["id"] == self.next_id
        assert frames[0]["patient"] == self.patient_id and frames[0]["from"] == "patient"
        self.latencies_ms.append((time.monotonic() - sent) * 1000)
        self.next_id += 1
        reply = f"control reply {self.exchanges}"
        await self.clinician.send_json({"type": "send", "patient": self.patient_id, "text": reply,
                                        "ref": "d"})
        ok = await self.clinician.recv_json()
        assert ok["type"] == "ok" and ok["id"] == self.next_id, ok
        message = await self.patient.recv_json()
        assert message["type"] == "message" and message["text"] == reply and message["id"] == self.next_id
        self.next_id += 1
        self.exchanges += 1
        # A barrier on each side: nothing else (a duplicate, a stranger's frame) is waiting.
        for client in (self.clinician, self.patient):
            await client.send_json({"type": "ping", "ref": "b"})
            got = await client.recv_json()
            assert got == {"type": "ok", "ref": "b"}, got

    async def keep_chatting(self, stop: trio.Event, *, max_exchanges: int = 10_000) -> None:
        """Exchange until ``stop`` is set (at least once), bounded in count."""
        for _ in range(max_exchanges):
            await self.exchange()
            if stop.is_set():
                return
            await trio.sleep(0.05)  # 20 exchanges a second: 40 requests a connection, inside R43's 100/s
