"""Simulated clinicians and patients, and the one task that runs all of them.

Agents are plain objects with synchronous steps. A :class:`World` owns a
heap of timed steps and runs them in one Trio task (no task per agent);
frames arrive through each connection's handler. Each agent draws from its
own seeded RNG, so that what it does depends only on the seed and on the
frames it received, never on the order in which Trio woke other tasks.

No two steps run at the same instant: a step due at an instant that already
ran waits a microsecond. With autojump, virtual time advances only when
every task is blocked, so every cause (one step) is fully worked through by
the server before the next one, and the server sees causes in a fixed order.

An agent's view of the room is its own, built from the frames it received;
it decides what to do, never what is right (that is the checker's job).
"""

from __future__ import annotations

import base64
import bisect
import heapq
import itertools
import math
from collections.abc import Callable
from random import Random
from typing import Any, Final

import trio
import trio.testing

from formats.history import HistoryWriter, frame_record
from reference_server.protocol import WS_PATH, clinician_token

from ._scenario import Dist, Scenario
from ._transport import (
    ClientConnection,
    ClientProtocol,
    FastClientProtocol,
    MemoryNetwork,
    MemoryTransport,
    OpenClient,
    TcpTransport,
)

# 2026-01-01T00:00:00Z: in-process runs use a fixed epoch, so that server and client times repeat.
VIRTUAL_EPOCH_S: Final = 1_767_225_600.0
_INSTANT_GAP_S: Final = 1e-6
TEARDOWN_BOUND_S: Final = 120.0
# In-process, the server shuts down this long after the end (the consoles still open: R46), at the
# same instant whichever rooms share the process; agents still leaving by then are closed by it.
SHUTDOWN_AFTER_S: Final = 15.0


def _corpus() -> str:
    rng = Random("queuechat-simulator-corpus")
    words = ["when", "will", "the", "doctor", "see", "me", "thanks", "ok", "yes", "no", "pain", "since",
             "yesterday", "please", "wait", "sorry", "is", "it", "fine", "café", "naïve", "über", "日本",
             "señor", "🙂", "👍", "prescription", "refill", "appointment", "question", "about", "my", "dose"]
    return " ".join(rng.choice(words) for _ in range(4000))


CORPUS: Final = _corpus()


def make_text(rng: Random, chars: int) -> str:
    chars = max(1, min(chars, 4000))
    start = rng.randrange(0, len(CORPUS) - chars)
    text = CORPUS[start:start + chars]
    return text if text.strip() else "ok"


def make_name(rng: Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "Sim " + "".join(rng.choice(letters) for _ in range(rng.randint(3, 20))).capitalize()


def seeded_patient_ids(seed: int, salt: str = "") -> Callable[[], str]:
    """The in-process server's patient ids: 128 bits from a seeded generator (ids repeat with the seed).

    ``salt`` tells apart the servers of a run split into processes (each has its own generator)."""
    rng = Random(f"{seed}/patient-ids{salt}")

    def new_id() -> str:
        return base64.urlsafe_b64encode(rng.getrandbits(128).to_bytes(16, "big")).rstrip(b"=").decode("ascii")

    return new_id


# --------------------------------------------------------------------------- the world


class Network:
    """How a world opens connections: in memory (virtual time) or over TCP (real time).

    ``open_client`` replaces the simulator's own client in memory by another stack (a benchmark's)."""

    def __init__(self, memory: MemoryNetwork | None = None, tcp: tuple[str, int] | None = None,
                 nursery: trio.Nursery | None = None, target: str = WS_PATH,
                 open_client: OpenClient | None = None) -> None:
        self.open_client = open_client
        self.memory = memory
        self.tcp = tcp
        self.nursery = nursery
        self.target = target
        self.failure: BaseException | None = None
        self.on_unreachable: Callable[[OSError], None] | None = None  # a TCP connect failed

    def open(self, handler: Conn) -> ClientConnection:
        if self.open_client is not None:
            assert self.memory is not None and self.nursery is not None
            return self.open_client(handler, self.nursery, self.memory.listener, self.target)
        if self.memory is not None:
            protocol: ClientProtocol = FastClientProtocol(handler)
            transport_in_memory = self.memory.connect(protocol, self.target, owner=handler)
            handler.transport = transport_in_memory
            return protocol
        assert self.tcp is not None and self.nursery is not None
        protocol = ClientProtocol(handler)
        transport = TcpTransport(protocol, self._failed, self.on_unreachable)
        handler.transport = transport
        self.nursery.start_soon(transport.run, self.tcp[0], self.tcp[1], self.target)
        return protocol

    def _failed(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error


class World:
    """The clock, the step heap, the history and the agents of one run."""

    def __init__(self, scenario: Scenario, network: Network, history: HistoryWriter, *, secret: str,
                 rooms: list[str], epoch_s: float, virtual: bool,
                 clock: Callable[[], float] = trio.current_time, shard: set[str] | None = None,
                 speed: float = 1.0) -> None:
        self._clock = clock
        # Scenario seconds per real second: over sockets, a long scenario can run compressed
        # (every agent's delay divided by it); the history's times stay real.
        self.speed = speed
        # Why the run stopped before its end: ("failed" | "incomplete", reason); None while it runs.
        self.aborted: tuple[str, str] | None = None
        self.clinician_welcomed = False
        self.unreachable = 0  # connects that found no server since the last that did
        self.shard = shard  # the rooms this process runs (None: all)
        self.scenario = scenario
        self.network = network
        self.history = history
        self.secret = secret
        self.rooms = rooms
        self.epoch_ms = epoch_s * 1000.0
        self.virtual = virtual
        self.seed = scenario.seed
        # (when, agent index, sequence, step, the agent's room: None for the world's own steps)
        self._heap: list[tuple[float, int, int, Callable[[], None], str | None]] = []
        self._seq = 0
        self._start = 0.0
        self._room_instant: dict[str | None, float] = {}  # room -> the last instant a step of it ran
        self._scope: trio.CancelScope | None = None
        self._done = trio.Event()
        self.phase = "active"
        self.agents: list[Agent] = []
        self.clinicians: list[Clinician] = []
        self.patients: list[Patient] = []
        self.open_agents = 0
        self.progress: Callable[[float], None] | None = None
        self.heal_s = scenario.active_s
        self.end_s = scenario.duration_s

    # time and steps
    def now(self) -> float:
        """Scenario seconds since the run started (real seconds times :attr:`speed`)."""
        return (self._clock() - self._start) * self.speed

    def real_now(self) -> float:
        """Seconds of the clock since the run started: the history's time."""
        now = self.last_real = self._clock() - self._start
        return now

    last_real = 0.0  # real_now() when last asked (readable after the Trio run has ended)

    def client_ts(self) -> int:
        return int(self.epoch_ms + self.real_now() * 1000.0)

    def at(self, when: float, agent: Agent, step: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, agent.index, self._seq, step, agent.room))
        scope = self._scope
        deadline = self._start + when / self.speed
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def after(self, delay: float, agent: Agent, step: Callable[[], None]) -> None:
        self.at(self.now() + max(delay, _INSTANT_GAP_S), agent, step)

    # A worker of a run split into processes marks each record with its exact time (``"_t"``, taken
    # out again when the parts are merged): records of one rounded millisecond keep their order.
    exact_times = False

    def record(self, agent: Agent, record: dict[str, Any]) -> None:
        now = self.real_now()
        if self.exact_times:
            record["_t"] = now
        self.history.record(now, agent.index * 1000 + record["conn"], record)

    # a run that cannot go on
    def abort(self, outcome: str, reason: str) -> None:
        """Stop the run: ``outcome`` is "failed" (it could not do what it set out to do) or
        "incomplete" (it stopped part-way); never reported as the server's violation."""
        if self.aborted is None:
            self.aborted = (outcome, reason)
            self._done.set()

    def hello_refused(self, how: str) -> None:
        """A clinician's connection ended before its welcome. Before any clinician was welcomed,
        the run cannot start: a wrong secret, path or limit, not a broken rule."""
        if not self.clinician_welcomed:
            self.abort("failed", f"the server refused the first clinician connection ({how}) before any "
                                 "clinician was welcomed; nothing can be simulated")

    def connect_failed(self, error: OSError) -> None:
        """A TCP connect found no server. Before any clinician was welcomed the run cannot start; after,
        two failures in a row with no connect between (one could be a passing hiccup) mean the server
        went away."""
        self.unreachable += 1
        why = error.strerror or str(error) or type(error).__name__
        if not self.clinician_welcomed:
            self.abort("failed", f"cannot connect to the server: {why}")
        elif self.unreachable >= 2:
            self.abort("incomplete", f"the server stopped accepting connections {self.real_now():.1f} s into "
                                     f"the run ({why}); the history ends there")

    def agent_done(self) -> None:
        self.open_agents -= 1
        if self.open_agents <= 0 and self.phase == "teardown":
            self._done.set()

    # the run
    def populate(self) -> None:
        shard = self.shard
        for index, (name, room, arrival) in enumerate(population(self.scenario, self.rooms)):
            if shard is not None and room not in shard:
                continue
            if arrival is None:
                clinician = Clinician(self, index, name, room)
                self.agents.append(clinician)
                self.clinicians.append(clinician)
            else:
                patient = Patient(self, index, name, room, arrival)
                self.agents.append(patient)
                self.patients.append(patient)
        self.open_agents = len(self.agents)
        for agent in self.agents:
            agent.start()

    @property
    def limit_s(self) -> float:
        """When the run stops at the latest (scenario seconds): the end plus the bounded teardown (in
        process: the instant of the server's shutdown)."""
        return self.end_s + (SHUTDOWN_AFTER_S if self.virtual else TEARDOWN_BOUND_S)

    async def sleep_until_limit(self) -> None:
        """Wait until :attr:`limit_s` (in-process: a fixed instant for the server's shutdown, whatever
        the other rooms or processes do)."""
        await trio.sleep_until(self._start + self.limit_s / self.speed)

    async def run(self) -> None:
        """Run every step until the teardown is over (bounded), then return."""
        self._start = self._clock()
        if self.network.tcp is not None:
            self.network.on_unreachable = self.connect_failed
        self.populate()
        marker = _Marker(self)
        self.at(self.heal_s, marker, self._begin_healing)
        self.at(self.end_s, marker, self._begin_teardown)
        limit = self.limit_s
        heap = self._heap
        next_progress = 0.0
        instants = self._room_instant
        every_room: list[str | None] = [*self.rooms]
        with trio.move_on_after((limit + 1.0) / self.speed):
            while not self._done.is_set():
                if self.network.failure is not None:
                    raise self.network.failure
                now = self.now()
                if not heap or heap[0][0] > now:
                    target = heap[0][0] if heap else limit
                    if target >= limit:
                        target = limit
                    with trio.CancelScope(deadline=self._start + target / self.speed) as scope:
                        self._scope = scope
                        await self._done.wait()
                    self._scope = None
                    if self.now() >= limit:
                        break
                    continue
                item = heapq.heappop(heap)
                room = item[4]
                if self.virtual:
                    if room is None:  # the world's own step touches every room
                        for each in every_room:
                            instants[each] = now
                    elif instants.get(room) == now:
                        # one cause per instant and room: the server finishes the room's previous cause
                        # first. Rooms share nothing, so causes of other rooms may share the instant:
                        # a room's history is the same whichever rooms run beside it (--jobs).
                        self._seq += 1
                        heapq.heappush(heap, (now + _INSTANT_GAP_S, item[1], self._seq, item[3], room))
                        continue
                    else:
                        instants[room] = now
                step = item[3]
                step()
                if self.progress is not None and now >= next_progress:
                    self.progress(now)
                    next_progress = now + 60.0
                if not self.virtual:
                    await trio.lowlevel.checkpoint()
        if self.network.failure is not None:
            raise self.network.failure

    def _begin_healing(self) -> None:
        self.phase = "healing"
        for agent in self.agents:
            agent.heal()

    def _begin_teardown(self) -> None:
        self.phase = "teardown"
        for agent in self.agents:
            agent.teardown()
        if self.open_agents <= 0:
            self._done.set()


def population(scenario: Scenario, rooms: list[str]) -> list[tuple[str, str, float | None]]:
    """Every agent of a run, in index order: (name, room, arrival time, None for a clinician)."""
    out: list[tuple[str, str, float | None]] = [(f"c{n:02d}", room, None) for n, room in enumerate(rooms, 1)]
    out.extend((f"p{n:05d}", room, when) for n, (when, room) in enumerate(arrivals(scenario, rooms), 1))
    return out


def arrivals(scenario: Scenario, rooms: list[str]) -> list[tuple[float, str]]:
    """Every patient's arrival (time, room), sorted; drawn from per-room seeded generators."""
    out: list[tuple[float, str]] = []
    active = scenario.active_s
    for number, room in enumerate(rooms, start=1):
        rng = Random(f"{scenario.seed}/arrivals/{number}")
        opening = min(30.0, active / 4)  # those waiting at opening arrive in its first moments
        for _ in range(scenario.initial_queue):
            out.append((rng.uniform(opening / 60, opening), room))
        if scenario.arrival_process == "poisson" and scenario.arrival_rate_per_hour > 0:
            rate = scenario.arrival_rate_per_hour / 3600.0
            when = rng.expovariate(rate)
            while when < active:
                out.append((when, room))
                when += rng.expovariate(rate)
        for entry in scenario.timeline:
            if entry.room is None or entry.room == number:
                for _ in range(entry.count):
                    if entry.at_s < active:
                        out.append((entry.at_s + rng.uniform(0.0, 0.001), room))
    out.sort()
    return out


# --------------------------------------------------------------------------- connections


class Conn:
    """One connection of an agent: records what it sends and receives, and numbers its requests."""

    __slots__ = ("_id_rng", "_refs", "agent", "closed", "number", "open", "protocol", "transport", "welcomed")

    def __init__(self, agent: Agent, number: int) -> None:
        self.agent = agent
        self.number = number
        self._refs = 0
        self.open = False
        self.closed = False
        self.welcomed = False
        self.transport: MemoryTransport | TcpTransport | None = None
        self._id_rng: Random | None = None
        agent.record({"t": 0.0, "agent": agent.name, "conn": number, "kind": "connect", "role": agent.role,
                      "room": agent.room})
        self.protocol = agent.world.network.open(self)

    def new_patient_id(self) -> str:
        """The id an in-process server gives this connection's patient: 128 bits drawn from the seed,
        the agent and the connection, so that it does not depend on which rooms share the process."""
        rng = self._id_rng
        if rng is None:
            rng = self._id_rng = Random(f"{self.agent.world.seed}/patient-id/{self.agent.name}/{self.number}")
        return base64.urlsafe_b64encode(rng.getrandbits(128).to_bytes(16, "big")).rstrip(b"=").decode("ascii")

    # ConnectionHandler
    def on_open(self) -> None:
        self.open = True
        self.agent.world.unreachable = 0
        self.agent.on_open(self)

    def on_frame(self, frame: dict[str, Any], size: int) -> None:
        agent = self.agent
        agent.record(frame_record(agent.name, self.number, "in", size, frame))
        agent.on_frame(self, frame)

    def on_close(self, code: int, by: str) -> None:
        self.open = False
        self.closed = True
        agent = self.agent
        agent.record({"t": 0.0, "agent": agent.name, "conn": self.number, "kind": "close", "code": code,
                      "by": by})
        agent.on_close(self, code, by)

    def send(self, frame: dict[str, Any]) -> bool:
        if not self.open:
            return False
        self._refs += 1
        frame["ref"] = str(self._refs)
        size = self.protocol.send(frame)
        if not size:
            return False
        agent = self.agent
        token = frame.get("token")
        if isinstance(token, str):  # a clinician's token opens the room: the history keeps its length only
            frame = {**frame, "token": len(token)}
        agent.record(frame_record(agent.name, self.number, "out", size, frame))
        return True

    @property
    def last_ref(self) -> int:
        return self._refs

    def action(self, action: str, **details: Any) -> None:
        agent = self.agent
        agent.record({"t": 0.0, "agent": agent.name, "conn": self.number, "kind": "action", "action": action,
                      **details})

    def drop(self) -> None:
        self.action("drop")
        self.protocol.drop()

    def close(self) -> None:
        self.action("close")
        self.protocol.close(1000)

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume()


class Agent:
    role = "agent"

    def __init__(self, world: World, index: int, name: str, room: str) -> None:
        self.world = world
        self.index = index
        self.name = name
        self.room = room
        self.rng = Random(f"{world.seed}/{name}")
        self.conn: Conn | None = None
        self.connections = 0
        self.finished = False
        self.stalled = False
        self.slow = False

    def record(self, record: dict[str, Any]) -> None:
        self.world.record(self, record)

    def sample(self, dist: Dist) -> float:
        return dist.sample(self.rng)

    def after(self, delay: float, step: Callable[[], None]) -> None:
        self.world.after(delay, self, step)

    def new_conn(self) -> Conn:
        self.connections += 1
        conn = Conn(self, self.connections)
        self.conn = conn
        if self.slow:
            transport = conn.transport
            delay = self.world.scenario.slow_reader_delay_s
            if isinstance(transport, TcpTransport):
                transport.set_slow(delay)
            elif isinstance(transport, MemoryTransport):
                transport.slow = True
                transport.on_held = lambda: self.after(delay, lambda: self.slow_drain(conn))
        return conn

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.world.agent_done()

    # faults shared by both roles
    def schedule_faults(self) -> None:
        scenario = self.world.scenario
        if scenario.stall_per_hour > 0:
            self.after(self.rng.expovariate(scenario.stall_per_hour / 3600.0), self._stall)

    def _stall(self) -> None:
        conn = self.conn
        world = self.world
        if self.finished or world.phase != "active" or conn is None or not conn.open:
            return
        length = self.sample(world.scenario.stall_length)
        length = min(length, max(0.0, world.heal_s - world.now()))
        conn.action("stall", ms=round(length * 1000.0, 3))
        self.stalled = True
        conn.pause()
        self.after(length, lambda: self._unstall(conn))

    def _unstall(self, conn: Conn) -> None:
        self.stalled = False
        conn.action("unstall")
        conn.resume()
        if self.world.phase == "active":
            self.after(self.rng.expovariate(self.world.scenario.stall_per_hour / 3600.0), self._stall)

    def slow_drain(self, conn: Conn) -> None:
        """A slow reader takes one write every ``slow_reader_delay``."""
        transport = conn.transport
        if not isinstance(transport, MemoryTransport) or transport.gone or transport.paused:
            return
        transport.take(1)
        if transport.held:
            self.after(self.world.scenario.slow_reader_delay_s, lambda: self.slow_drain(conn))

    # hooks
    def start(self) -> None: ...

    def on_open(self, conn: Conn) -> None: ...

    def on_frame(self, conn: Conn, frame: dict[str, Any]) -> None: ...

    def on_close(self, conn: Conn, code: int, by: str) -> None: ...

    def heal(self) -> None:
        """The healing phase starts: a stalled or slow connection reads again, at full speed."""
        conn = self.conn
        if conn is not None and self.stalled:
            self.stalled = False
            conn.action("unstall")
            conn.resume()
        if conn is not None and self.slow:
            self.slow = False
            if isinstance(conn.transport, MemoryTransport):
                conn.transport.slow = False
                conn.transport.take(math.inf)
            elif isinstance(conn.transport, TcpTransport):
                conn.transport.set_slow(0.0)

    def teardown(self) -> None: ...


class _Marker(Agent):
    """The world's own steps (phase changes) sort before every agent's at one instant."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.index = -1
        self.name = "world"
        self.room = None  # type: ignore[assignment]  # every room


# --------------------------------------------------------------------------- patients


class Patient(Agent):
    role = "patient"

    def __init__(self, world: World, index: int, name: str, room: str, arrival: float) -> None:
        super().__init__(world, index, name, room)
        self.arrival = arrival
        self.id: str | None = None
        self.state = "new"  # new, waiting, in_call, leaving, gone
        self.allowed = True  # patient_initiated_chat as last heard
        self.clinician_wrote = False
        self.rejoins = 0
        self.slow = self.rng.random() < world.scenario.slow_reader_fraction

    def start(self) -> None:
        self.world.at(self.arrival, self, self._arrive)

    def _arrive(self) -> None:
        if self.finished or self.world.phase == "teardown":
            self.finish()
            return
        self.state = "new"
        self.id = None
        self.clinician_wrote = False
        self.new_conn()

    def on_open(self, conn: Conn) -> None:
        conn.send({"type": "hello", "role": "patient", "room": self.room, "name": make_name(self.rng)})

    def on_frame(self, conn: Conn, frame: dict[str, Any]) -> None:
        if conn is not self.conn:
            return
        kind = frame.get("type")
        if kind == "welcome":
            conn.welcomed = True
            self.id = frame.get("patient")
            self.state = "waiting"
            self.allowed = bool(frame.get("patient_initiated_chat", True))
            world = self.world
            if world.phase == "teardown":
                self._leave(conn)
                return
            scenario = world.scenario
            self.after(self.sample(scenario.message_interval) * 0.5, lambda: self._tick(conn))
            if world.phase == "active":
                patience = self.sample(scenario.patience)
                self.after(patience, lambda: self._depart(conn))
                if scenario.patient_drop_per_hour > 0:
                    self.after(self.rng.expovariate(scenario.patient_drop_per_hour / 3600.0),
                               lambda: self._network_drop(conn))
                self.schedule_faults()
        elif kind == "message":
            self.clinician_wrote = True
            replies = self.world.scenario.reply_probability
            if self.state in ("waiting", "in_call") and self.rng.random() < replies:
                self.after(self.sample(self.world.scenario.reply_delay), lambda: self._say(conn))
        elif kind == "call":
            if frame.get("state") == "started":
                self.state = "in_call"
            else:
                self.state = "gone"
        elif kind == "room_settings":
            self.allowed = bool(frame.get("patient_initiated_chat", True))

    def on_close(self, conn: Conn, code: int, by: str) -> None:
        if conn is not self.conn:
            return
        was = self.state
        self.state = "gone"
        world = self.world
        # a patient the network dropped comes back (checks in again) now and then
        if (was in ("waiting", "in_call", "new") and by in ("client", "server") and code == 1006
                and world.phase == "active" and self.rejoins < 2 and self.rng.random() < 0.5):
            self.rejoins += 1
            self.after(self.rng.uniform(5.0, 60.0), self._arrive)
            return
        self.finish()

    def _tick(self, conn: Conn) -> None:
        if conn is not self.conn or self.state not in ("waiting", "in_call"):
            return
        if self.world.phase == "teardown":
            return
        scenario = self.world.scenario
        allowed = self.state == "in_call" or self.allowed or self.clinician_wrote
        if not self.stalled and (allowed or self.rng.random() < scenario.try_when_disabled):
            self._say(conn)
        interval = self.sample(scenario.message_interval)
        if self.state == "in_call":
            if scenario.in_call_message_factor <= 0:
                return
            interval /= scenario.in_call_message_factor
        self.after(interval, lambda: self._tick(conn))

    def _say(self, conn: Conn) -> None:
        if conn is not self.conn or self.state not in ("waiting", "in_call") or self.stalled:
            return
        text = make_text(self.rng, int(self.sample(self.world.scenario.text_chars)))
        conn.send({"type": "send", "text": text, "client_ts": self.world.client_ts()})

    def _depart(self, conn: Conn) -> None:
        if conn is not self.conn or self.state != "waiting" or self.world.phase != "active":
            return
        if self.stalled:
            self.after(10.0, lambda: self._depart(conn))
            return
        weights = self.world.scenario.departure
        how = self.rng.choices(list(weights), weights=list(weights.values()))[0]
        if how == "leave":
            self._leave(conn)
        elif how == "close":
            self.state = "leaving"
            conn.close()
        else:
            self.state = "leaving"
            conn.drop()

    def _network_drop(self, conn: Conn) -> None:
        if conn is not self.conn or self.state not in ("waiting", "in_call") or self.world.phase != "active":
            return
        conn.drop()

    def _leave(self, conn: Conn) -> None:
        self.state = "leaving"
        if not conn.send({"type": "leave"}):
            conn.close()

    def teardown(self) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            self.finish()  # not arrived yet, or gone and not coming back now
            return
        if self.state in ("waiting", "in_call"):
            self.after(self.rng.uniform(0.0, 2.0), lambda: self._leave(conn) if conn.open else None)
        elif self.state == "new" and conn.closed:
            self.finish()


# --------------------------------------------------------------------------- clinicians


class _Seen:
    """What a clinician knows of one present patient."""

    __slots__ = ("answered_at", "contacted", "last_patient_msg", "state", "unread")

    def __init__(self, state: str, unread: int) -> None:
        self.state = state
        self.unread = unread
        self.last_patient_msg = -1.0  # when the patient last wrote (-1: not since our last reply)
        self.answered_at = -1.0
        self.contacted = False


class Clinician(Agent):
    role = "clinician"

    def __init__(self, world: World, index: int, name: str, room: str) -> None:
        super().__init__(world, index, name, room)
        self.present: dict[str, _Seen] = {}
        self.box_state = "closed"
        self.box_patient: str | None = None
        self.call: str | None = None
        self.call_ending = False
        self.notifications = True
        self.patient_chat = True
        self.reconnecting = False
        self.closing = False
        self.slow = self.rng.random() < world.scenario.slow_reader_fraction
        # the ref of an unanswered start_call or end_call -> its patient, or "end_call"
        self._call_refs: dict[str, str] = {}
        self.limits: dict[str, Any] = {}  # as the welcome lists them (R41-R45)
        self.departed: list[str] = []  # patients who left, newest last (a few)
        self.erased: list[str] = []  # departed patients whose conversation was erased, newest last
        self._probed_text = False  # R41: one over-long text per run
        self._probed_rate = False  # R43: one burst past the rate limit per run
        self._probed_input = False  # R40: one request of an unknown type
        self._probed_empty = False  # R40: one send with an empty text (invalid)
        self._habits = list(world.scenario.habits)
        self._habit_weights = list(itertools.accumulate(world.scenario.habits.values()))

    def start(self) -> None:
        self.world.at(self.rng.uniform(0.0, min(5.0, self.world.end_s / 100)), self, self._connect)
        scenario = self.world.scenario
        if scenario.refresh_per_hour > 0:
            self.after(self.rng.expovariate(scenario.refresh_per_hour / 3600.0), self._random_refresh)
        for when in scenario.refresh_at:
            if when < self.world.heal_s:
                self.world.at(when + self.rng.uniform(0.0, 0.001), self, self._refresh)
        if scenario.clinician_drop_per_hour > 0:
            self.after(self.rng.expovariate(scenario.clinician_drop_per_hour / 3600.0), self._network_drop)
        self.schedule_faults()
        self.after(self.sample(scenario.think_time), self._tick)

    def _connect(self) -> None:
        self.reconnecting = False
        self._call_refs.clear()
        self._barrier_ref = None
        self.new_conn()

    def on_open(self, conn: Conn) -> None:
        conn.send({"type": "hello", "role": "clinician", "room": self.room,
                   "token": clinician_token(self.world.secret, self.room)})

    @property
    def live(self) -> Conn | None:
        conn = self.conn
        return conn if conn is not None and conn.welcomed and conn.open and not self.stalled else None

    def on_frame(self, conn: Conn, frame: dict[str, Any]) -> None:
        if conn is not self.conn:
            return  # an older connection's last frames
        kind = frame.get("type")
        now = self.world.now()
        if kind == "error" and not conn.welcomed:
            code = str(frame.get("code"))[:40]
            hint = _REFUSAL_HINTS.get(code)
            self.world.hello_refused(f"error {code}" + (f": {hint}" if hint else ""))
        if kind == "message":
            seen = self.present.get(frame.get("patient", ""))
            if seen is not None:
                seen.last_patient_msg = now if seen.last_patient_msg < 0 else seen.last_patient_msg
        elif kind == "unread":
            seen = self.present.get(frame.get("patient", ""))
            if seen is not None:
                seen.unread = int(frame.get("count", 0))
        elif kind == "chat_box":
            self.box_state = str(frame.get("state"))
            self.box_patient = frame.get("patient")
        elif kind == "patient_joined":
            self.present[str(frame.get("patient"))] = _Seen("waiting", 0)
        elif kind == "patient_left":
            patient = frame.get("patient")
            self.present.pop(str(patient), None)
            if isinstance(patient, str):
                _remember(self.departed, patient)
            if patient == self.call:
                self.call = None
                self.call_ending = False
            if self.closing and not self.present:
                self._final_barrier(conn)
        elif kind == "erased":
            patient = frame.get("patient")
            if isinstance(patient, str) and patient in self.departed:
                _remember(self.erased, patient)
        elif kind == "welcome":
            conn.welcomed = True
            self.world.clinician_welcomed = True
            limits = frame.get("limits")
            self.limits = limits if isinstance(limits, dict) else {}
            before = self.present
            queue = frame.get("queue")
            stayed = isinstance(queue, list) and any(
                isinstance(entry, dict) and entry.get("patient") in before for entry in queue)
            if not stayed:
                # With no clinician connected and no patient present the room may have gone idle, and
                # a server may then forget its departed ids (not_found, not patient_gone): the
                # departures to remember are those since now. A patient present before and after
                # was present throughout, and then the room never went idle.
                self.departed.clear()
                self.erased.clear()
            self.present = {
                str(entry["patient"]): _Seen(str(entry["state"]), int(entry["unread"]))
                for entry in frame.get("queue", [])
            }
            for patient, seen in self.present.items():
                if seen.unread:
                    seen.last_patient_msg = now
                if seen.state == "in_call":
                    self.call = patient
            box = frame.get("chat_box") or {}
            self.box_state = str(box.get("state", "closed"))
            self.box_patient = box.get("patient")
            call = frame.get("call")
            self.call = call.get("patient") if isinstance(call, dict) else None
            self.call_ending = False
            self.notifications = bool((frame.get("settings") or {}).get("chat_notifications", True))
            self.patient_chat = bool((frame.get("room_settings") or {}).get("patient_initiated_chat", True))
            if self.call is not None and self.world.phase != "teardown":
                self.after(self.sample(self.world.scenario.call_length) / 2, self._end_call)
            if self.world.phase == "teardown":
                self.teardown()
        elif kind == "ok" and self.closing and frame.get("ref") == self._barrier_ref:
            if self.world.virtual:
                # in-process, the console stays open: the server's shutdown closes it (R46)
                self.finish()
            else:
                conn.close()
        elif kind == "error":
            asked = self._call_refs.pop(str(frame.get("ref")), None)
            if asked is not None and (asked == "end_call" or self.call == asked):
                self.call = None
                self.call_ending = False
        if kind in ("ok", "error") and self._call_refs:
            self._call_refs.pop(str(frame.get("ref")), None)

    _barrier_ref: str | None = None

    def on_close(self, conn: Conn, code: int, by: str) -> None:
        if conn is not self.conn:
            return
        if not conn.welcomed and by != "client":
            if by == "rejected":
                self.world.hello_refused("the WebSocket upgrade was refused: is the URL's path right?")
            else:
                hint = _CLOSE_HINTS.get(code)
                self.world.hello_refused(f"closed with {code}" + (f": {hint}" if hint else ""))
        if self.closing:
            self.finish()
            return
        # lost, dropped, replaced by nobody: come back, as a clinician would
        if not self.reconnecting and self.world.phase != "teardown":
            self.reconnecting = True
            self.after(self.rng.uniform(2.0, 30.0), self._connect)
        elif self.world.phase == "teardown" and not self.reconnecting:
            self.reconnecting = True
            self.after(1.0, self._connect)

    # ---------------------------------------------------------------- behaviour

    def _tick(self) -> None:
        world = self.world
        if self.finished or world.phase == "teardown":
            return
        scenario = world.scenario
        think = self.sample(scenario.think_time)
        if world.phase == "healing":
            think = min(think, 10.0)
        self.after(think, self._tick)
        conn = self.live
        if conn is None:
            return
        if world.phase == "healing":
            self._heal_step(conn)
            return
        if not self._probed_text and self.present and self._too_long_text(conn):
            return
        if not self._probed_rate and self._burst(conn):
            return
        if not self._probed_input:
            self._probed_input = True
            conn.send({"type": "wave"})  # R40: a type the protocol does not know answers unknown_type
            return
        if not self._probed_empty and self.present:
            self._probed_empty = True  # R40: an empty text is a field of the wrong shape (invalid)
            conn.send({"type": "send", "patient": min(self.present), "text": "",
                       "client_ts": self.world.client_ts()})
            return
        rng = self.rng
        waiting = [p for p, seen in self.present.items() if seen.state == "waiting"]
        if self.call is None and waiting and rng.random() < scenario.call_probability:
            patient = waiting[0]
            if conn.send({"type": "start_call", "patient": patient}):
                self._call_refs[str(conn.last_ref)] = patient
                self.call = patient
                self.present[patient].state = "in_call"
                self.after(self.sample(scenario.call_length), self._end_call)
            return
        erased = self.erased
        if erased and rng.random() < 0.3:
            conn.send({"type": "open_chat", "patient": erased.pop(0)})  # erased and gone: not_found (R13)
            return
        box = self.box_patient
        if box is not None and box not in self.present:
            draw = rng.random()
            if draw < 0.25:
                self._write(conn, box, departed=True)  # typing into the box of a patient who has left (R9)
                return
            if draw < 0.5 and self.box_state != "closed":
                conn.send({"type": "close_chat"})  # closing a departed patient's box erases it (R11a)
                return
            others = sorted(self.present)
            if draw < 0.75 and others:
                # viewing another patient erases the departed patient's conversation (R11b)
                conn.send({"type": "open_chat", "patient": rng.choice(others)})
                return
        habit = self._habits[bisect.bisect(self._habit_weights, rng.random() * self._habit_weights[-1])]
        if habit == "reply":
            self._reply(conn)
        elif habit == "chat_new":
            fresh = [p for p, seen in self.present.items() if not seen.contacted]
            if fresh:
                self._write(conn, fresh[0])
        elif habit == "minimize":
            if self.box_state == "open":
                conn.send({"type": "minimize_chat"})
        elif habit == "close":
            if self.box_state != "closed":
                conn.send({"type": "close_chat"})
        elif habit == "open_other":
            others = [p for p in self.present if p != self.box_patient]
            if others:
                conn.send({"type": "open_chat", "patient": rng.choice(others)})
        elif habit == "toggle_notifications":
            self.notifications = not self.notifications
            conn.send({"type": "set_notifications", "chat": self.notifications})
        elif habit == "toggle_patient_chat":
            self.patient_chat = not self.patient_chat
            conn.send({"type": "set_room", "patient_initiated_chat": self.patient_chat})

    def _reply(self, conn: Conn) -> None:
        """Answer the patient who has waited longest for an answer (several chats at once, R2)."""
        scenario = self.world.scenario
        candidates = [(seen.last_patient_msg, p) for p, seen in self.present.items()
                      if seen.last_patient_msg >= 0 or seen.unread > 0]
        if not candidates:
            return
        candidates.sort(key=lambda item: (item[0], item[1]))
        open_chats = min(len(candidates), scenario.max_parallel_chats)
        patient = candidates[self.rng.randrange(open_chats)][1]
        if self.rng.random() >= scenario.clinician_reply_probability:
            return
        if not (self.box_state == "open" and self.box_patient == patient) and self.rng.random() < 0.7:
            conn.send({"type": "open_chat", "patient": patient})
        self.after(self.sample(scenario.typing_time), lambda: self._write(conn, patient))

    def _write(self, conn: Conn, patient: str, departed: bool = False) -> None:
        if conn is not self.live or (patient not in self.present and not departed):
            return
        seen = self.present.get(patient)
        text = make_text(self.rng, int(self.sample(self.world.scenario.clinician_text_chars)))
        frame = {"type": "send", "patient": patient, "text": text, "client_ts": self.world.client_ts()}
        sent = conn.send(frame)
        if sent and seen is not None:
            seen.contacted = True
            seen.last_patient_msg = -1.0
            seen.answered_at = self.world.now()

    def _too_long_text(self, conn: Conn) -> bool:
        """R41: once a run, a text one character over the limit the welcome lists (``too_large``)."""
        self._probed_text = True
        most = self.limits.get("max_text_chars")
        frame_bytes = self.limits.get("max_frame_bytes")
        if not isinstance(most, int) or isinstance(most, bool) or not 0 < most < 100_000:
            return False
        if isinstance(frame_bytes, int) and frame_bytes < most + 512:
            return False  # the frame itself would be too big: that is R41's other half, not this one
        patient = min(self.present)
        text = ("please wait " * (most // 12 + 2))[:most + 1]  # ASCII: characters = bytes
        conn.send({"type": "send", "patient": patient, "text": text, "client_ts": self.world.client_ts()})
        return True

    def _burst(self, conn: Conn) -> bool:
        """R43: once a run, twice the rate limit's burst in pings at one instant (some ``rate_limited``).

        Not when the server would drop the connection for the answers piling up (R42), nor for a
        slow reader."""
        self._probed_rate = True
        burst = self.limits.get("rate_burst")
        queued = self.limits.get("max_queued_frames")
        if not isinstance(burst, int) or isinstance(burst, bool) or not 0 < burst <= 1000 or self.slow:
            return False
        # Twice the burst and more, back to back: however the server's clock runs, a limit of
        # rate_per_s with bursts of rate_burst must refuse some of them unless answering them all takes
        # longer than (burst + 10) / rate_per_s (the checker's R43 bound, from the answers' times).
        count = 2 * burst + 10
        if isinstance(queued, int) and queued < 2 * count:
            return False
        for _ in range(count):
            if not conn.send({"type": "ping"}):
                break
        return True

    def _end_call(self) -> None:
        conn = self.live
        if self.call is None or self.call_ending:
            return
        if conn is None:
            self.after(5.0, self._end_call)
            return
        if conn.send({"type": "end_call"}):
            self._call_refs[str(conn.last_ref)] = "end_call"
            self.call_ending = True

    def _heal_step(self, conn: Conn) -> None:
        """Healing: everyone waiting gets an answer; calls end."""
        heal = self.world.heal_s
        for patient, seen in self.present.items():
            if seen.answered_at < heal:
                self._write(conn, patient)
                return
        if self.call is not None and not self.call_ending:
            self._end_call()

    # ---------------------------------------------------------------- faults

    def _random_refresh(self) -> None:
        world = self.world
        if world.phase != "active" or self.finished:
            return
        self._refresh()
        self.after(self.rng.expovariate(world.scenario.refresh_per_hour / 3600.0), self._random_refresh)

    def _refresh(self) -> None:
        """R12: the page is reloaded (the old connection drops) or opened again (the old one gets 4000)."""
        world = self.world
        conn = self.conn
        if world.phase != "active" or conn is None or not conn.open or self.stalled or self.reconnecting:
            return
        styles = world.scenario.refresh_style
        style = self.rng.choices(list(styles), weights=list(styles.values()))[0]
        conn.action("refresh", style=style)
        if style == "reload":
            self.reconnecting = True
            conn.drop()
            self.after(self.rng.uniform(0.5, 5.0), self._connect)
        else:
            self._connect()

    def _network_drop(self) -> None:
        world = self.world
        if world.phase != "active" or self.finished:
            return
        conn = self.conn
        if conn is not None and conn.open and not self.reconnecting and not self.stalled:
            self.reconnecting = True
            conn.drop()
            self.after(self.rng.uniform(5.0, 60.0), self._connect)
        self.after(self.rng.expovariate(world.scenario.clinician_drop_per_hour / 3600.0), self._network_drop)

    def teardown(self) -> None:
        """The end of the day: wait until every patient has gone, then a ping barrier, then close."""
        self.closing = True
        conn = self.conn
        if conn is None or not conn.welcomed or not conn.open:
            if not self.reconnecting:
                self.reconnecting = True
                self.after(1.0, self._connect)
            return
        if not self.present:
            self._final_barrier(conn)
        else:
            self.after(60.0, lambda: self._final_barrier(conn))

    def _final_barrier(self, conn: Conn) -> None:
        if conn is not self.conn or not conn.open or self._barrier_ref is not None:
            return
        if self._last_words(conn):
            self.after(0.5, lambda: self._final_barrier(conn))
            return
        if conn.send({"type": "ping"}):
            self._barrier_ref = str(conn.last_ref)

    _said_last_words = False

    def _last_words(self, conn: Conn) -> bool:
        """At the end of the day, once: a late reply to a patient who has left (R9, ``patient_gone``)
        and a look at an erased departed patient's conversation (R13, ``not_found``)."""
        if self._said_last_words:
            return False
        self._said_last_words = True
        gone = [p for p in self.departed if p not in self.present]
        if not gone:
            return False
        text = make_text(self.rng, int(self.sample(self.world.scenario.clinician_text_chars)))
        conn.send({"type": "send", "patient": gone[-1], "text": text, "client_ts": self.world.client_ts()})
        erased = [p for p in self.erased if p not in self.present]
        if erased:
            conn.send({"type": "open_chat", "patient": erased[0]})
        return True


# Why a clinician's hello may be refused, in words a user can act on.
_REFUSAL_HINTS: Final = {
    "unauthorized": "the token does not match: is --secret (or QUEUECHAT_SECRET) the server's secret?",
    "capacity": "the server holds no more rooms (max_rooms)",
    "hello_required": "the server did not take the hello in time",
}
_CLOSE_HINTS: Final = {
    1009: "the hello was over the server's max_frame_bytes",
    1013: "the server is at capacity",
    1006: "the connection ended without a close frame",
}


def _remember(ids: list[str], patient: str, keep: int = 16) -> None:
    if patient in ids:
        ids.remove(patient)
    ids.append(patient)
    del ids[:-keep]


class JumpingClock(trio.abc.Clock):
    """Virtual time for in-process runs: it jumps to the next deadline as soon as nothing can run.

    The same virtual time as ``trio.testing.MockClock(autojump_threshold=0)``
    (time moves only when every task is blocked, and then straight to the
    next deadline), but the jump happens when Trio asks how long to sleep
    rather than one pass of the run loop later: a pass saved at every
    instant of a simulation. It starts at 0. The determinism tests check
    that both clocks give byte-identical histories. Not for use with
    ``wait_all_tasks_blocked`` or real I/O.
    """

    def __init__(self) -> None:
        self._now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        if self._now < deadline < math.inf:
            self._now = deadline
            return 0.0
        return 0.0 if deadline <= self._now else 3600.0
