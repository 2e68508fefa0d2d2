"""Locust users: one user is one waiting room, a clinician and its patients, on one clock.

:class:`RoomClient` is the client wrapper: it owns the room's connections,
sends messages on a schedule (open model) and times everything, firing
Locust's ``request`` event (so that Locust's stats and web UI see every
sample) and recording into the process's HDR :class:`~loadtests._hdr.Recorder`.

Message delivery latency is measured from the *intended* send time (the
schedule), not from when the send happened, so that a server that stalls
shows up in the percentiles (coordinated omission corrected, as wrk2 does);
the latency from the actual send is kept beside it. Sender and receiver are
in this one process: ``client_ts`` carries the intended time (integer
microseconds since the epoch) and is the key that matches a delivery to
its send.

When the test stops, the schedule stops first and a drain window follows
(``--qc-drain``, bounded): late deliveries still land; every message
missing after it is an ``undelivered`` error *and* a sample of the
corrected histogram with the latency it has at least reached (from its
intended send time to the end of the window), so that a stall near the end
shows in the percentiles as it would mid-run. Messages older than the
timeout (``no_delivery``) are recorded the same way.

A user that cannot go on (the server refuses or drops every connection, or
refuses the clinician's token) stops, and says when and why: the process
state records it, and the run is invalid.

Each user draws from a random stream of its own, derived from the run's
seed (``--qc-seed``), its worker's index and its number in that process,
so that the same seed gives the same schedule. The users and the connections
they hold are counted as they change (the timeline's gauges).

Everything here runs under gevent; it imports the protocol module, never
Trio or the server.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import secrets
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

import gevent  # type: ignore[import-untyped]  # gevent ships no type information
from gevent.event import AsyncResult, Event  # type: ignore[import-untyped]
from locust import User, task
from locust.env import Environment
from locust.exception import StopUser

from formats.hlog import (
    CALL_START,
    CHECK_IN,
    CLINICIAN_HELLO,
    CLINICIAN_TO_PATIENT,
    DISCONNECTS,
    OPEN_CHAT,
    PATIENT_TO_CLINICIAN,
)
from formats.timeline import CONNECTIONS, USERS
from reference_server.protocol import clinician_token

from ._client import (
    UNAUTHORIZED,
    Connection,
    Disconnected,
    LoadTestError,
    NoAnswer,
    ServerError,
    encode_json,
)
from ._hdr import Recorder
from ._settings import PATIENT_NAME, Settings, host_problem, user_random
from ._state import LIVE_CLIENTS, process_state

REQUEST_TYPE = "WS"
UNATTRIBUTED = "unattributed"  # errors that belong to no request of ours (no ref, unreadable frame)
MAX_CONNECT_FAILURES = 3  # in a row, then the user stops
_DIRECTION_ENTRY = (PATIENT_TO_CLINICIAN, CLINICIAN_TO_PATIENT)

# One anchor per process: perf_counter (the clock every latency is measured on) to epoch microseconds.
_EPOCH_US = time.time() * 1e6
_PERF0 = perf_counter()
_room_numbers = itertools.count(1)
_room_prefixes: dict[int, str] = {}


def _new_room_name() -> str:
    """Unique per process, also after a fork (Locust's --processes forks after importing this file)."""
    pid = os.getpid()
    prefix = _room_prefixes.get(pid)
    if prefix is None:
        prefix = _room_prefixes[pid] = f"lt-{pid:x}-{secrets.token_hex(4)}"
    return f"{prefix}-{next(_room_numbers)}"

class _Slot:
    """One patient place in the room; a new patient takes it after each call."""

    __slots__ = ("call_started", "conn", "drained", "index", "patient", "pending", "sending")

    def __init__(self, index: int) -> None:
        self.index = index
        self.conn: Connection | None = None
        self.patient: str | None = None
        self.sending = False  # the schedule may use this patient
        self.pending = 0  # messages to or from this patient not yet delivered
        self.drained: Event | None = None
        self.call_started: AsyncResult | None = None


class RoomClient:
    """A clinician and its patients: connections, the message schedule, timing and reporting."""

    def __init__(self, environment: Environment, url: str, settings: Settings, recorder: Recorder,
                 rng: random.Random | None = None) -> None:
        self.environment = environment
        self.url = url
        self.settings = settings
        self.recorder = recorder
        self.rng = rng if rng is not None else random.Random()
        self.room = _new_room_name()
        self.text = settings.text
        self.clinician: Connection | None = None
        self.slots = [_Slot(i) for i in range(settings.patients)]
        # send key (client_ts) -> (intended time, actual send time, direction, slot index, patient id)
        self.pending: dict[int, tuple[float, float, int, int, str | None]] = {}
        self.limits: dict[str, Any] | None = None
        self.stopping = False
        self.sending_stopped = False  # the schedule has ended (the drain window, or the test stopping)
        self.schedule_start: float | None = None  # perf_counter of message 0's due time
        self.schedule_end: float | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self._next_slot_index = 0
        self._last_key = 0
        self.connect_failures = 0
        self.on_give_up: Callable[[str], None] | None = None  # the process state's record of stopped users
        LIVE_CLIENTS.add(self)

    # ------------------------------------------------------------------ reporting

    def _fire(self, name: str, response_ms: float, length: int, exception: Exception | None) -> None:
        request: Any = self.environment.events.request  # locust's EventHook is untyped
        request.fire(request_type=REQUEST_TYPE, name=name, response_time=response_ms, response_length=length,
                     exception=exception, context={})

    def _success(self, entry: str, latency_s: float, length: int = 0,
                 uncorrected_s: float | None = None) -> None:
        if self.recorder.closed:
            return  # after the measured window (the master has flushed): Locust's stats stop too
        latency_us = latency_s * 1e6
        self.recorder.record(entry, latency_us, None if uncorrected_s is None else uncorrected_s * 1e6)
        self._fire(entry, latency_us / 1000.0, length, None)

    def _failure(self, entry: str, error: LoadTestError, elapsed_s: float = 0.0) -> None:
        if self.recorder.closed:
            return
        self.recorder.error(entry, str(getattr(error, "code", type(error).__name__)))
        self._fire(entry, elapsed_s * 1000.0, 0, error)

    # ------------------------------------------------------------------ connections

    def _connection(self, on_message: Callable[[dict[str, Any], float, int], None],
                    on_event: Callable[[dict[str, Any], float], None]) -> Connection:
        return Connection(self.url, on_message=on_message, on_event=on_event,
                          on_send_error=self._send_error, on_closed=self._closed,
                          on_open_change=self._open_changed,
                          connect_timeout_s=min(self.settings.timeout_s, 10.0))

    def _open_changed(self, delta: int) -> None:
        """A connection opened (+1) or ended (-1), whoever ended it: the timeline's connection count."""
        self.recorder.adjust(CONNECTIONS, delta)

    def _hello(self, conn: Connection, frame: dict[str, Any], entry: str) -> dict[str, Any]:
        """Connect and say hello; an error or a close before welcome is the entry's failure."""
        started = perf_counter()
        conn.expect_close = True  # before welcome, an error comes with a close: no disconnect to count
        try:
            conn.connect()
            welcome, at, size = conn.hello(frame, timeout_s=self.settings.timeout_s)
        except LoadTestError as error:
            conn.close()
            self._failure(entry, error, perf_counter() - started)
            raise
        conn.expect_close = False
        self._success(entry, at - started, size)
        return welcome

    def connect_clinician(self) -> None:
        conn = self._connection(self._clinician_message, _ignore_event)
        token = clinician_token(self.settings.secret, self.room)
        welcome = self._hello(conn, {"type": "hello", "role": "clinician", "room": self.room, "token": token},
                              CLINICIAN_HELLO)
        limits = welcome.get("limits")
        self.limits = limits if isinstance(limits, dict) else None
        self.clinician = conn

    def check_in(self, slot: _Slot) -> None:
        def on_message(obj: dict[str, Any], at: float, size: int) -> None:
            if obj.get("from") == "clinician":
                self._delivered(obj, at, size)

        def on_event(obj: dict[str, Any], at: float) -> None:
            if obj["type"] == "call" and obj.get("state") == "started" and slot.call_started is not None:
                slot.call_started.set(at)

        conn = self._connection(on_message, on_event)
        welcome = self._hello(conn, {"type": "hello", "role": "patient", "room": self.room,
                                     "name": PATIENT_NAME}, CHECK_IN)
        patient = welcome.get("patient")
        if not isinstance(patient, str):
            conn.close()
            self._failure(CHECK_IN, ServerError("no_patient_id"))
            raise ServerError("no_patient_id")
        slot.conn, slot.patient, slot.pending, slot.sending = conn, patient, 0, True

    def _closed(self, conn: Connection, close_code: int | None) -> None:
        """A connection ended that we did not end: count it, and free what waited on it."""
        if self.stopping:
            return
        error = Disconnected(close_code)
        if self.recorder.closed:
            return
        self.recorder.disconnect(close_code)
        self._fire(DISCONNECTS, 0.0, 0, error)
        if conn is self.clinician:
            self.clinician = None
            return
        for slot in self.slots:
            if slot.conn is conn:
                slot.sending = False
                slot.conn = None
                # What the clinician sent to this patient can no longer arrive.
                for key, (_, _, direction, _, patient) in list(self.pending.items()):
                    if patient == slot.patient and direction == 1:
                        del self.pending[key]
                        self._failure(CLINICIAN_TO_PATIENT, error)
                slot.pending = 0
                slot.patient = None  # what is still to come from this patient counts for nobody's drain
                if slot.drained is not None:
                    slot.drained.set()

    def ensure_connected(self) -> None:
        """Reconnect what dropped: the clinician, and patients whose connection ended.

        A refused clinician token stops the user at once (no retry can help); so do
        ``MAX_CONNECT_FAILURES`` failed connects in a row. Either way the user says why
        (:meth:`give_up`) before it stops.
        """
        try:
            if self.clinician is None or not self.clinician.open:
                self.connect_clinician()
            for slot in self.slots:
                if slot.conn is None or not slot.conn.open:
                    slot.sending = False
                    self.check_in(slot)
        except ServerError as error:
            if error.code == "unauthorized":
                self.give_up(UNAUTHORIZED)
            self._connect_failed(error)
            raise
        except LoadTestError as error:
            self._connect_failed(error)
            raise
        self.connect_failures = 0

    def _connect_failed(self, error: LoadTestError) -> None:
        self.connect_failures += 1
        if self.connect_failures >= MAX_CONNECT_FAILURES:
            self.give_up(f"{error} ({MAX_CONNECT_FAILURES} connects in a row failed)")

    def give_up(self, reason: str) -> None:
        """Stop this user, after saying why (the run is invalid: it did not hold the planned load). What it
        still waited for will not arrive: ``undelivered``."""
        self.end_schedule()
        self.expire_pending("undelivered")
        if self.on_give_up is not None:
            self.on_give_up(reason)
        raise StopUser()

    def start(self) -> None:
        """Connect everyone, then start the schedule and the sweeper."""
        self.ensure_connected()
        self._greenlets.append(gevent.spawn(self._schedule_forever))
        self._greenlets.append(gevent.spawn(self._sweep_forever))

    def end_schedule(self) -> None:
        """No new sends from now on; count the messages the schedule had planned until now (once)."""
        if self.sending_stopped:
            return
        self.sending_stopped = True
        self.schedule_end = perf_counter()
        start = self.schedule_start
        if start is not None and self.schedule_end > start:
            period = 1.0 / self.settings.rate_per_user
            self.recorder.count("planned", math.ceil((self.schedule_end - start) / period))

    def expire_pending(self, code: str) -> int:
        """Every message not delivered by now is an error ``code`` and a corrected sample with the latency
        it has at least reached; returns how many."""
        now = perf_counter()
        expired = 0
        for key in list(self.pending):
            item = self._forget(key)
            if item is not None:
                self._lost(item, now, code)
                expired += 1
        return expired

    def _lost(self, item: tuple[float, float, int, int, str | None], now: float, code: str) -> None:
        intended, sent, direction, _, _ = item
        entry = _DIRECTION_ENTRY[direction]
        if self.recorder.closed:
            return
        self.recorder.record(entry, (now - intended) * 1e6, (now - sent) * 1e6)
        self.recorder.count(code)
        self._failure(entry, _Lost(code, now - intended), now - intended)

    def stop(self) -> None:
        self.end_schedule()
        self.stopping = True
        current = gevent.getcurrent()
        gevent.killall([g for g in self._greenlets if g is not current], block=True, timeout=2.0)
        self.recorder.count("in_flight_at_end", len(self.pending))
        self.pending.clear()
        for slot in self.slots:
            if slot.conn is not None:
                slot.conn.close()
        if self.clinician is not None:
            self.clinician.close()
        LIVE_CLIENTS.discard(self)

    # ------------------------------------------------------------------ messages

    def _key(self, intended: float) -> int:
        key = int(_EPOCH_US + (intended - _PERF0) * 1e6)
        if key <= self._last_key:
            key = self._last_key + 1
        self._last_key = key
        return key

    def _pick_slot(self) -> _Slot | None:
        slots = self.slots
        for _ in range(len(slots)):
            slot = slots[self._next_slot_index % len(slots)]
            self._next_slot_index += 1
            if slot.sending and slot.conn is not None and slot.conn.open:
                return slot
        return None

    def _schedule_forever(self) -> None:
        """Send message k at ``start + k / rate``, whatever happened to the ones before (open model)."""
        period = 1.0 / self.settings.rate_per_user
        start = perf_counter() + self.rng.random() * period  # users do not send in step (seeded)
        self.schedule_start = start
        for k in itertools.count():
            if self.stopping or self.sending_stopped:
                return
            due = start + k * period
            delay = due - perf_counter()
            while delay > 0:
                gevent.sleep(delay)
                delay = due - perf_counter()
            if self.sending_stopped:
                return
            self._send_scheduled(due, from_patient=(k & 1) == 0)
            if delay < -period and k % 32 == 31:
                gevent.sleep(0)  # catching up: let the readers run

    def _send_scheduled(self, intended: float, *, from_patient: bool) -> None:
        slot = self._pick_slot()
        conn = slot.conn if from_patient and slot is not None else self.clinician
        if slot is None or conn is None or not conn.open:
            self.recorder.count("sends_skipped")  # nobody to send to or from at this moment
            return
        key = self._key(intended)
        frame: dict[str, Any] = {"type": "send", "text": self.text, "client_ts": key, "ref": str(key)}
        if not from_patient:
            frame["patient"] = slot.patient
        data = encode_json(frame)
        self.pending[key] = (intended, perf_counter(), 0 if from_patient else 1, slot.index, slot.patient)
        slot.pending += 1
        try:
            conn.send_bytes(data)
        except Disconnected:
            self._forget(key)
            self.recorder.count("sends_skipped")
            return
        self.recorder.count("sent")

    def _forget(self, key: int) -> tuple[float, float, int, int, str | None] | None:
        item = self.pending.pop(key, None)
        if item is not None and self.slots[item[3]].patient == item[4]:
            slot = self.slots[item[3]]
            slot.pending -= 1
            if slot.pending <= 0 and slot.drained is not None:
                slot.drained.set()
        return item

    def _clinician_message(self, obj: dict[str, Any], at: float, size: int) -> None:
        if obj.get("from") == "patient":
            self._delivered(obj, at, size)

    def _delivered(self, obj: dict[str, Any], at: float, size: int) -> None:
        key = obj.get("client_ts")
        item = self._forget(key) if isinstance(key, int) else None
        if item is None:
            self.recorder.count("deliveries_unmatched")
            return
        intended, sent, direction, _, _ = item
        self.recorder.count("delivered")
        self._success(_DIRECTION_ENTRY[direction], at - intended, size, uncorrected_s=at - sent)

    def _send_error(self, ref: str, code: str) -> None:
        item = self._forget(int(ref)) if ref.isdigit() else None
        entry = _DIRECTION_ENTRY[item[2]] if item is not None else UNATTRIBUTED
        self._failure(entry, ServerError(code))

    def _sweep_forever(self) -> None:
        """Deliveries later than the timeout are errors (``no_delivery``), and samples with the latency
        they reached; checked every second."""
        timeout = self.settings.timeout_s
        while not self.stopping:
            gevent.sleep(1.0)
            now = perf_counter()
            limit = now - timeout
            for key, (intended, _, _, _, _) in list(self.pending.items()):
                if intended > limit:
                    break  # keys are in schedule order
                item = self._forget(key)
                if item is not None:
                    self._lost(item, now, "no_delivery")

    # ------------------------------------------------------------------ the clinician's actions

    def open_chat(self) -> None:
        slot = self._pick_slot()
        clinician = self.clinician
        if slot is None or clinician is None:
            return
        started = perf_counter()
        try:
            _, at, size = clinician.request({"type": "open_chat", "patient": slot.patient},
                                            timeout_s=self.settings.timeout_s, what="open_chat answer")
        except LoadTestError as error:
            self._failure(OPEN_CHAT, error, perf_counter() - started)
            return
        self._success(OPEN_CHAT, at - started, size)

    def call(self) -> None:
        """Start a call (timed to the patient's ``call{started}``), chat, end it, check a new patient in."""
        slot = self._pick_slot()
        clinician = self.clinician
        if slot is None or clinician is None or slot.conn is None:
            return
        timeout = self.settings.timeout_s
        slot.call_started = AsyncResult()
        started = perf_counter()
        try:
            clinician.request({"type": "start_call", "patient": slot.patient}, timeout_s=timeout,
                              what="start_call answer")
            try:
                at = slot.call_started.get(timeout=timeout)
            except gevent.Timeout:
                raise NoAnswer("call started event", timeout) from None
        except LoadTestError as error:
            self._failure(CALL_START, error, perf_counter() - started)
            return
        finally:
            slot.call_started = None
        self._success(CALL_START, at - started)
        gevent.sleep(self.settings.call_s)
        # End it: stop the schedule using this patient, let what is in flight arrive, then end_call.
        slot.sending = False
        if slot.pending > 0:
            slot.drained = Event()
            slot.drained.wait(timeout=timeout)
            slot.drained = None
        if slot.conn is not None:
            slot.conn.expect_close = True  # call{ended}, then the server closes with 1000
        try:
            clinician.request({"type": "end_call"}, timeout_s=timeout, what="end_call answer")
        except LoadTestError as error:
            self._failure(UNATTRIBUTED, error)
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        self.check_in(slot)


class _Lost(LoadTestError):
    """A message that did not arrive: ``no_delivery`` (past the timeout) or ``undelivered`` (missing
    when the drain window ended)."""

    def __init__(self, code: str, waited_s: float) -> None:
        super().__init__(f"{code.replace('_', ' ')}: not delivered after {waited_s:.3f} s")
        self.code = code


def _ignore_event(obj: dict[str, Any], at: float) -> None:
    """The clinician's other events (unread, notify, chat_box, ...) are not measured."""


class QueueChatUser(User):
    """Abstract: owns the :class:`RoomClient`; concrete users hold only their tasks and wait time."""

    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        state = process_state(environment)
        rng = user_random(state.seed, state.worker_index(), state.next_user_number())
        self.client = RoomClient(environment, self.host or "", state.settings, state.recorder, rng)
        self.client.on_give_up = state.user_gave_up
        self.gave_up = False  # could not start: stops at its first task (quietly, unlike in on_start)

    def start(self, group: Any) -> Any:
        """Count the user as running from now until its greenlet ends, however it ends (the timeline's
        users; Locust's own count is its living user greenlets too)."""
        greenlet = super().start(group)
        recorder = self.client.recorder
        recorder.adjust(USERS, 1)
        greenlet.rawlink(lambda _: recorder.adjust(USERS, -1))
        return greenlet

    def on_start(self) -> None:
        """Connect the room. A user that cannot start stops at its first task: Locust logs a traceback for
        a StopUser raised here, and the reason has been said once already."""
        if host_problem(self.client.url, allow_remote=self.client.settings.allow_remote) is not None:
            self.gave_up = True  # said once by the plugin at the start of the test
            return
        try:
            for attempt in range(MAX_CONNECT_FAILURES):
                try:
                    self.client.start()
                    return
                except LoadTestError:
                    gevent.sleep(min(1.0 * (attempt + 1), self.client.settings.action_interval_s * 2))
            self.client.give_up("could not connect")  # not reached: the last failure gives up already
        except StopUser:  # a refused token, or too many failures in a row: said by give_up
            self.gave_up = True

    def on_stop(self) -> None:
        self.client.stop()


class RoomUser(QueueChatUser):
    """One waiting room: a clinician chatting with its patients; every third action is a call."""

    def wait_time(self) -> float:
        return self.client.settings.action_interval_s

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._steps = 0

    @task
    def act(self) -> None:
        if self.gave_up:
            raise StopUser()
        if self.client.sending_stopped:
            return  # the drain window: nothing new is started
        try:
            self.client.ensure_connected()
        except LoadTestError:
            return  # counted already; the next action tries again
        step, self._steps = self._steps, self._steps + 1
        try:
            if step % 3 == 1:
                self.client.call()
            else:
                self.client.open_chat()
        except LoadTestError:
            pass  # counted where it happened; the next action goes on
