"""``queuechat play``: the reference server on loopback, a console link, and simulated patients.

A product person plays the clinician in a browser while patients arrive and write as a scenario
describes (arrivals, message intervals, text lengths, patience, how they leave). There is no
simulated clinician. It runs until Ctrl-C (or SIGTERM), and stops by itself after ``--duration``.

The patients are a small driver of their own over trio-websocket and the wire protocol: the
simulator's ``Patient`` agent lives inside its virtual-time ``World`` and has no public entry
point for "one room, real time, no clinician". (To share later: a public simulator function that
runs patient agents alone against a URL.)
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from reference_server.protocol import DEVELOPMENT_SECRET, Limits, clinician_token
from reference_server.server import QueueChatServer, configure_logging
from simulator import Scenario

from ._links import console_link, patient_link

MAX_DURATION_S = 8 * 3600
DEFAULT_DURATION_S = 30 * 60
MAX_ARRIVALS = 1000  # a bound on the patients one run creates, whatever the scenario says

# Made-up sentences only: no patient data, nothing that looks like it.
_SENTENCES = (
    "Sample question: how long is the wait today?",
    "Sample text: I am in the waiting room now.",
    "Sample note: my camera may not work, can we chat instead?",
    "Sample question: do I need anything ready for the call?",
    "Sample reply: thank you, that helps.",
    "Sample text: I can wait a little longer.",
)


@dataclass(frozen=True, kw_only=True)
class PlayOptions:
    scenario: Scenario
    room: str
    host: str
    port: int
    duration_s: float
    pace: float
    max_patients: int
    seed: int
    log_level: str


def make_text(rng: Random, chars: int) -> str:
    """A made-up message of about ``chars`` characters (1 to 4,096)."""
    chars = max(1, min(4096, chars))
    text = rng.choice(_SENTENCES)
    while len(text) < chars:
        text += " " + rng.choice(_SENTENCES)
    return text[:chars].rstrip() or text[0]


class _Room:
    """The patients of the played room: how many are present, and the RNG they share."""

    def __init__(self, options: PlayOptions, ws_url: str, echo: Callable[[str], None]) -> None:
        self.options = options
        self.scenario = options.scenario
        self.ws_url = ws_url
        self.rng = Random(options.seed)
        self.present = 0
        self.count = 0
        self.left = trio.Event()
        self.echo = echo

    def seconds(self, dist_sample: float) -> float:
        return max(0.05, dist_sample * self.options.pace)

    async def arrivals(self, nursery: trio.Nursery) -> None:
        scenario = self.scenario
        for _ in range(min(scenario.initial_queue, self.options.max_patients)):
            nursery.start_soon(self.patient)
        rate = scenario.arrival_rate_per_hour
        while self.count < MAX_ARRIVALS:
            mean_gap_s = 3600.0 / rate if rate > 0 else math.inf
            if not math.isfinite(mean_gap_s):
                return
            await trio.sleep(self.seconds(self.rng.expovariate(1.0 / mean_gap_s)))
            while self.present >= self.options.max_patients:
                self.left = trio.Event()
                await self.left.wait()
            nursery.start_soon(self.patient)

    async def patient(self) -> None:
        self.count += 1
        self.present += 1
        number = self.count
        try:
            async with open_websocket_url(self.ws_url, connect_timeout=10, disconnect_timeout=2) as ws:
                await _Patient(self, ws, f"Sample Patient {number}").run()
        except* (ConnectionClosed, HandshakeError, OSError):
            pass  # the call ended, the patient left, or the server went away: this patient is done
        finally:
            self.present -= 1
            self.left.set()


class _Patient:
    """One patient: checks in, writes now and then (when the room lets them, R31), replies to the
    clinician sometimes, and leaves after their patience unless in a call."""

    def __init__(self, room: _Room, ws: WebSocketConnection, name: str) -> None:
        self.room = room
        self.ws = ws
        self.name = name
        self.rng = Random(room.rng.random())
        self.may_write = True
        self.clinician_wrote = False
        self.in_call = False
        self.refs = 0
        self.wake = trio.Event()

    async def request(self, frame: dict[str, Any]) -> None:
        self.refs += 1
        await self.ws.send_message(json.dumps({**frame, "ref": f"p{self.refs}"}))

    async def run(self) -> None:
        hello = {"type": "hello", "role": "patient", "room": self.room.options.room, "name": self.name}
        await self.request(hello)
        welcome = json.loads(await self.ws.get_message())
        if welcome.get("type") != "welcome":
            return
        self.may_write = welcome.get("patient_initiated_chat") is not False
        scenario = self.room.scenario
        leave_at = trio.current_time() + self.room.seconds(scenario.patience.sample(self.rng))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.read, nursery)
            while True:
                gap = self.room.seconds(scenario.message_interval.sample(self.rng))
                with trio.move_on_at(min(trio.current_time() + gap, leave_at)):
                    await trio.sleep_forever()
                if trio.current_time() >= leave_at and not self.in_call:
                    await self.depart()
                    nursery.cancel_scope.cancel()
                    return
                await self.write()

    async def write(self) -> None:
        if self.in_call or self.may_write or self.clinician_wrote:
            chars = round(self.room.scenario.text_chars.sample(self.rng))
            await self.request({"type": "send", "text": make_text(self.rng, chars)})

    async def read(self, nursery: trio.Nursery) -> None:
        try:
            while True:
                frame = json.loads(await self.ws.get_message())
                kind = frame.get("type")
                if kind == "room_settings":
                    self.may_write = frame.get("patient_initiated_chat") is not False
                elif kind == "call":
                    self.in_call = frame.get("state") == "started"
                elif kind == "message" and frame.get("from") == "clinician":
                    self.clinician_wrote = True
                    if self.rng.random() < self.room.scenario.reply_probability:
                        delay = self.room.seconds(self.room.scenario.reply_delay.sample(self.rng))
                        nursery.start_soon(self.reply_after, delay)
                elif kind == "error" and frame.get("code") == "chat_disabled":
                    self.may_write = False
        except ConnectionClosed:
            nursery.cancel_scope.cancel()  # the call ended, or the server is going away

    async def reply_after(self, delay_s: float) -> None:
        await trio.sleep(delay_s)
        with contextlib.suppress(ConnectionClosed):
            await self.write()

    async def depart(self) -> None:
        weights = self.room.scenario.departure
        kinds = [k for k in ("leave", "close", "drop") if weights.get(k, 0) > 0] or ["leave"]
        kind = self.rng.choices(kinds, [weights.get(k, 1.0) for k in kinds])[0]
        if kind == "leave":
            await self.request({"type": "leave"})
            with trio.move_on_after(2), contextlib.suppress(ConnectionClosed):
                while True:  # the server answers ok, then closes with 1000
                    await self.ws.get_message()
        # close and drop: the connection's end (the context manager closes it)


async def _play(options: PlayOptions, echo: Callable[[str], None]) -> str:
    server = QueueChatServer(secret=DEVELOPMENT_SECRET, limits=Limits(), stats_interval_s=None)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            ws_url: str = await nursery.start(lambda task_status: server.serve(
                host=options.host, port=options.port, task_status=task_status))
            room = _Room(options, ws_url, echo)
            token = clinician_token(DEVELOPMENT_SECRET, options.room)
            echo(f"queuechat play: server ready on {ws_url} (development secret, loopback only)")
            echo(f"queuechat play: open the clinician console: {console_link(ws_url, options.room, token)}")
            echo(f"queuechat play: a patient page of your own: {patient_link(ws_url, options.room)}")
            echo(f"queuechat play: patients of scenario {options.scenario.name!r} arrive in room "
                 f"{options.room!r} "
                 f"(pace x{options.pace:g}, at most {options.max_patients} at once); Ctrl-C stops "
                 f"(it stops by itself after {_span(options.duration_s)})")
            why = f"stopped after {_span(options.duration_s)} (--duration)"
            async with trio.open_nursery() as patients:
                patients.start_soon(room.arrivals, patients)
                with trio.move_on_after(options.duration_s):
                    async for signum in signals:
                        why = f"stopped ({signal.Signals(signum).name})"
                        break
                patients.cancel_scope.cancel()
            await server.shutdown()
    return why


def _span(seconds: float) -> str:
    whole = round(seconds)
    if whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{whole}s"


def play(options: PlayOptions, echo: Callable[[str], None]) -> int:
    """Run until Ctrl-C or the duration; 0 when stopped so, 1 when the server cannot listen."""
    configure_logging(options.log_level)
    failure: list[OSError] = []
    why = ""
    try:
        why = trio.run(_play, options, echo)
    except* OSError as group:
        failure.extend(e for e in group.exceptions if isinstance(e, OSError))
    if failure:
        error = failure[0]
        print(f"queuechat play: cannot listen on {options.host}:{options.port}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    echo(f"queuechat play: {why}; every connection closed")
    return 0
