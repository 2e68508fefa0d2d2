"""Running a scenario: in-process in virtual time, or over real sockets in real time; then checking it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import trio
import trio.testing

from formats.history import HistoryWriter, history_file_name, read_history
from reference_server.protocol import (
    DEVELOPMENT_SECRET,
    WS_PATH,
    EndpointError,
    Limits,
    UrlFault,
    check_ws_url,
)

from ._agents import VIRTUAL_EPOCH_S, Conn, JumpingClock, Network, World, population, seeded_patient_ids
from ._checker import Checker, Summary, Violation
from ._scenario import Scenario, pace
from ._transport import MemoryNetwork, OpenClient

# The secret of the in-process server: it never leaves the process.
IN_PROCESS_SECRET = "queuechat-simulator-in-process"
# What parse_url says of a URL it refuses (``queuechat simulate --url`` prints it after "--url: ").
_URL_FAULTS = {
    UrlFault.NOT_A_URL: "{detail}",
    UrlFault.SCHEME: "{url!r} is not a ws:// URL (wss:// is left to a proxy)",
    UrlFault.NO_HOST: "{url!r} has no host",
    UrlFault.PORT: "{url!r} has a bad port",
}


@dataclass
class RunResult:
    scenario: str
    seed: int
    mode: str
    history: Path | None
    summary: Summary
    violations: list[Violation]
    wall_s: float
    virtual_s: float
    header: dict[str, Any] = field(default_factory=dict)
    # "complete"; "failed": the run could not do what it set out to do (a wrong secret, path or limit:
    # nothing to judge); "incomplete": it stopped part-way (the server went away, an interrupt).
    outcome: str = "complete"
    reason: str | None = None
    jobs: int = 1

    @property
    def chat_messages(self) -> int:
        return self.summary.patient_messages + self.summary.clinician_messages


def history_name(scenario: Scenario) -> str:
    return history_file_name(scenario.name, scenario.seed)


def _rooms(scenario: Scenario, suffix: str = "") -> list[str]:
    return [f"{scenario.room_prefix}{suffix}-{n:02d}" for n in range(1, scenario.rooms + 1)]


def _header(scenario: Scenario, *, mode: str, server: str, limits: Limits | None, rooms: list[str],
            epoch_s: float, speed: float = 1.0) -> dict[str, Any]:
    """The history's first line. Times are the history's own (real ones over sockets: a run at
    ``speed`` N has its phases and its pace divided by N); the same for every ``--jobs``."""
    header: dict[str, Any] = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "mode": mode,
        "server": server,
        "limits": limits.as_wire() if limits is not None else None,
        "rooms": rooms,
        "epoch_ms": int(epoch_s * 1000),
        "duration_ms": scenario.duration_s * 1000.0 / speed,
        "heal_ms": scenario.active_s * 1000.0 / speed,
        "end_ms": scenario.duration_s * 1000.0 / speed,
        "pace": pace(scenario, speed),
        "redaction": "every text, name and clinician token is replaced by its length",
    }
    if speed != 1.0:
        header["speed"] = speed
    return header


def _close(writer: HistoryWriter, now_s: float, world: World | None) -> None:
    """Close the history; a run that stopped part-way says so in its end record (``"incomplete"``), so
    that no checker takes it for a whole run."""
    writer.close(now_s)
    if world is None or world.aborted is None or writer.path is None:
        return
    import msgspec

    path = writer.path
    data = path.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    end = msgspec.json.decode(data[cut:])
    end["incomplete"] = world.aborted[1]
    path.write_bytes(data[:cut] + msgspec.json.encode(end) + b"\n")


def _aborted(world: World | None) -> tuple[str, str | None]:
    if world is None or world.aborted is None:
        return "complete", None
    return world.aborted


def run_in_process(
    scenario: Scenario,
    history_path: Path | None,
    *,
    model_class: type[Any] | None = None,
    check: bool = True,
    progress: Callable[[float], None] | None = None,
    clock_kind: str = "jumping",
    stack: OpenClient | None = None,
    jobs: int = 1,
) -> RunResult:
    """Run ``scenario`` against the reference server in this process, in virtual time.

    ``clock_kind`` is ``"jumping"`` (:class:`JumpingClock`, the default) or ``"mock"``
    (``trio.testing.MockClock(autojump_threshold=0)``): the same virtual time, the same history.
    ``stack`` is None for the simulator's own client (the project's codec, pushed bytes, no task per
    connection), or opens another client stack's connections, for comparison
    (``benchmarks/_plain_client.py``: trio-websocket's client over ``trio.testing.memory_stream_pair``).
    ``jobs`` > 1 splits the rooms among that many processes, each with its own reference server, and
    merges their histories. It is a speed setting only: a room's randomness, its patients' ids and its
    causes' instants depend on the seed and the room alone, so the history is byte for byte the same for
    every ``jobs``, and so is the verdict (the merged history is checked whole, as ``check`` would).
    """
    rooms = _rooms(scenario)
    header = _header(scenario, mode="virtual", server="in-process reference server", limits=scenario.limits,
                     rooms=rooms, epoch_s=VIRTUAL_EPOCH_S)
    if jobs > 1:
        return _run_sharded(scenario, history_path, header, rooms, jobs=jobs, check=check, progress=progress,
                            clock_kind=clock_kind, stack=stack, model_class=model_class)
    writer = HistoryWriter(history_path, header)
    checker = Checker(writer.header) if check else None
    if checker is not None:
        writer.listeners.append(checker.feed)
    started = time.perf_counter()
    virtual_end, world = _simulate(scenario, writer, rooms, model_class=model_class, progress=progress,
                                   clock_kind=clock_kind, stack=stack, shard=None)
    wall = time.perf_counter() - started
    _close(writer, virtual_end, world)
    summary = checker.finish() if checker is not None else Summary()
    outcome, reason = _aborted(world)
    return RunResult(scenario.name, scenario.seed, "virtual", history_path, summary,
                     checker.violations if checker is not None else [], wall, virtual_end, writer.header,
                     outcome, reason)


def _simulate(scenario: Scenario, writer: HistoryWriter, rooms: list[str], *, model_class: type[Any] | None,
              progress: Callable[[float], None] | None, clock_kind: str, stack: OpenClient | None,
              shard: set[str] | None, exact_times: bool = False) -> tuple[float, World]:
    """One Trio run: the reference server and the agents of ``shard`` (all rooms when None).

    The server is shut down at a fixed instant (the end plus the teardown bound), with the consoles
    still open, so that its 1001 closes (R46) are in the history at the same time for every ``--jobs``.
    """
    from reference_server.server import QueueChatServer  # the server, only to run it in-process

    options: dict[str, Any] = {}
    if model_class is not None:
        options["model_class"] = model_class
    virtual_end = [0.0]
    worlds: list[World] = []
    fallback_ids = seeded_patient_ids(scenario.seed)

    async def main() -> None:
        memory = MemoryNetwork()

        def patient_id() -> str:
            # the id of the patient whose hello the server is handling: drawn from that agent's own
            # generator (the server handles a hello in the task that wrote its connection's handshake)
            owner = memory.owner_of_current_task()
            return owner.new_patient_id() if isinstance(owner, Conn) else fallback_ids()

        server = QueueChatServer(
            secret=IN_PROCESS_SECRET,
            limits=scenario.limits,
            patient_ids=patient_id,
            wall_clock=lambda: VIRTUAL_EPOCH_S + trio.current_time(),
            stats_interval_s=None,
            **options,
        )

        def failed() -> None:
            nursery.cancel_scope.cancel()

        memory.on_failure = failed
        async with trio.open_nursery() as nursery:
            network = Network(memory=memory, nursery=nursery, open_client=stack)
            world = World(scenario, network, writer, secret=IN_PROCESS_SECRET, rooms=rooms,
                          epoch_s=VIRTUAL_EPOCH_S, virtual=True, clock=clock.current_time, shard=shard)
            worlds.append(world)
            world.progress = progress
            world.exact_times = exact_times
            await nursery.start(server.serve_listeners, [memory.listener])
            await world.run()
            if world.aborted is None:
                await world.sleep_until_limit()
            await server.shutdown()
            virtual_end[0] = world.real_now()
            nursery.cancel_scope.cancel()
        if memory.failure is not None:
            raise memory.failure

    clock: trio.abc.Clock = JumpingClock() if clock_kind == "jumping" else trio.testing.MockClock(
        autojump_threshold=0)
    try:
        trio.run(main, clock=clock)
    except BaseException as error:
        _interrupted(error, writer, worlds)
        raise
    return virtual_end[0], worlds[0]


def _interrupted(error: BaseException, writer: HistoryWriter, worlds: list[World]) -> None:
    """Ctrl-C during a run (Trio may wrap it in an exception group): raise a plain KeyboardInterrupt,
    after closing the history with an end record that says it is incomplete. Other errors pass."""
    if isinstance(error, BaseExceptionGroup):
        if error.subgroup(KeyboardInterrupt) is None:
            return
    elif not isinstance(error, KeyboardInterrupt):
        return
    world = worlds[0] if worlds else None
    if world is not None:
        world.abort("incomplete", "interrupted (Ctrl-C)")
        _close(writer, world.last_real, world)
    raise KeyboardInterrupt from None


_SHARD_PROGRESS: Any = None  # a shared array of each worker's virtual time, set in the worker processes


def _shard_init(shared: Any) -> None:
    global _SHARD_PROGRESS
    _SHARD_PROGRESS = shared


def _shard(scenario: Scenario, rooms: list[str], header: dict[str, Any], part: str, shard: int, jobs: int,
           clock_kind: str, stack: OpenClient | None,
           model_class: type[Any] | None) -> tuple[float, tuple[str, str] | None]:
    """A worker process: the rooms ``rooms[shard::jobs]``, their history written to ``part`` (with the whole
    run's header: the same heal and end times). The parent merges the parts and checks the whole."""
    from reference_server.server import configure_logging  # the server's logs, only in-process

    configure_logging("error")
    writer = HistoryWriter(Path(part), header)
    shared = _SHARD_PROGRESS

    def progress(now_s: float) -> None:
        if shared is not None:
            shared[shard] = now_s

    end, world = _simulate(scenario, writer, rooms, model_class=model_class, progress=progress,
                           clock_kind=clock_kind, stack=stack, shard=set(rooms[shard::jobs]),
                           exact_times=True)
    writer.close(end)
    progress(scenario.duration_s)
    return end, world.aborted


def _run_sharded(scenario: Scenario, history_path: Path | None, header: dict[str, Any], rooms: list[str], *,
                 jobs: int, check: bool, progress: Callable[[float], None] | None, clock_kind: str,
                 stack: OpenClient | None, model_class: type[Any] | None) -> RunResult:
    import concurrent.futures
    import heapq
    import multiprocessing
    import tempfile

    import msgspec

    started = time.perf_counter()
    order = {name: index for index, (name, _, _) in enumerate(population(scenario, rooms))}
    writer_header = HistoryWriter(None, header).header
    checker = Checker(writer_header) if check else None
    with tempfile.TemporaryDirectory(prefix="queuechat-shards-") as folder:
        parts = [str(Path(folder) / f"part{shard}.jsonl") for shard in range(jobs)]
        # fork: nothing runs in this process yet (no Trio loop, no thread of ours); spawn elsewhere
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        shared = context.Array("d", jobs, lock=False)
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                                    initializer=_shard_init, initargs=(shared,)) as pool:
            futures = [pool.submit(_shard, scenario, rooms, header, parts[shard], shard, jobs, clock_kind,
                                   stack, model_class) for shard in range(jobs)]
            pending = set(futures)
            while pending:
                _, pending = concurrent.futures.wait(pending, timeout=0.25)
                if progress is not None:
                    progress(min(shared))
            results = [future.result() for future in futures]
        ends = [end for end, _ in results]
        aborted = next((a for _, a in results if a is not None), None)
        decode = msgspec.json.Decoder().decode
        encode = msgspec.json.Encoder().encode

        def lines(index: int) -> Any:
            with open(parts[index], "rb") as handle:
                handle.readline()  # the part's own header (the same as the run's)
                for line in handle:
                    record = decode(line)
                    if record.get("kind") == "end":
                        return
                    # in the order a single process writes: exact time, then agent and connection
                    exact = record.pop("_t")
                    yield (exact, order[record["agent"]] * 1000 + record["conn"]), record

        if history_path is not None:
            history_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(history_path, "wb") if history_path is not None else None  # noqa: SIM115
        try:
            if out is not None:
                out.write(msgspec.json.encode(writer_header) + b"\n")
            number = 1
            for _, record in heapq.merge(*(lines(i) for i in range(jobs)), key=lambda item: item[0]):
                number += 1
                if out is not None:
                    out.write(encode(record) + b"\n")
                if checker is not None:
                    checker.feed(number, record)
            end: dict[str, Any] = {"t": round(max(ends) * 1000.0, 3), "kind": "end", "records": number - 1}
            if aborted is not None:
                end["incomplete"] = aborted[1]
            if checker is not None:
                checker.feed(number + 1, end)
            if out is not None:
                out.write(msgspec.json.encode(end) + b"\n")
        finally:
            if out is not None:
                out.close()
    summary = checker.finish() if checker is not None else Summary()
    wall = time.perf_counter() - started
    outcome, reason = aborted if aborted is not None else ("complete", None)
    return RunResult(scenario.name, scenario.seed, "virtual", history_path, summary,
                     checker.violations if checker is not None else [], wall, max(ends), writer_header,
                     outcome, reason, jobs)


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of a ``ws://`` URL; ValueError when it is not one."""
    try:
        endpoint = check_ws_url(url, schemes=("ws",))
    except EndpointError as error:
        raise ValueError(_URL_FAULTS[error.fault].format(url=url, detail=error.detail)) from None
    return endpoint.host, endpoint.port_or_default, endpoint.path or WS_PATH


def run_over_sockets(
    scenario: Scenario,
    url: str,
    history_path: Path | None,
    *,
    secret: str | None = None,
    check: bool = True,
    progress: Callable[[float], None] | None = None,
    speed: float = 1.0,
) -> RunResult:
    """Run ``scenario``'s agents against the server at ``url`` in real time.

    ``speed`` > 1 compresses the scenario: every agent's delay is divided by it (a 3-hour scenario at
    ``speed`` 60 takes 3 minutes). The history's times are real, and its header's phases and pace are
    divided alike; the server's own timers (heartbeat, hello timeout, rate limit) are not compressed.
    """
    if not (speed >= 1.0 and math.isfinite(speed)):
        raise ValueError(f"speed: expected a number of at least 1, got {speed!r}")
    host, port, path = parse_url(url)
    suffix = "-" + Random().getrandbits(24).to_bytes(3, "big").hex()  # fresh rooms on a long-lived server
    rooms = _rooms(scenario, suffix)
    epoch = time.time()
    header = _header(scenario, mode="socket", server=url, limits=None, rooms=rooms, epoch_s=epoch,
                     speed=speed)
    writer = HistoryWriter(history_path, header)
    checker = Checker(writer.header) if check else None
    if checker is not None:
        writer.listeners.append(checker.feed)
    real_end = [0.0]
    worlds: list[World] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            network = Network(tcp=(host, port), nursery=nursery, target=path)
            world = World(scenario, network, writer, secret=secret or DEVELOPMENT_SECRET, rooms=rooms,
                          epoch_s=epoch, virtual=False, speed=speed)
            worlds.append(world)
            world.progress = progress
            await world.run()
            real_end[0] = world.real_now()
            nursery.cancel_scope.cancel()

    started = time.perf_counter()
    try:
        trio.run(main)
    except BaseException as error:
        _interrupted(error, writer, worlds)
        raise
    wall = time.perf_counter() - started
    world = worlds[0] if worlds else None
    _close(writer, real_end[0], world)
    summary = checker.finish() if checker is not None else Summary()
    outcome, reason = _aborted(world)
    return RunResult(scenario.name, scenario.seed, "socket", history_path, summary,
                     checker.violations if checker is not None else [], wall, real_end[0], writer.header,
                     outcome, reason)


def check_history(path: Path) -> RunResult:
    """Re-check a saved history. A history whose end record says the run stopped part-way
    (``"incomplete"``) is reported as such, not judged."""
    started = time.perf_counter()
    header, records = read_history(path)
    checker = Checker(header)
    incomplete: str | None = None
    for number, record in records:
        if record.get("kind") == "end" and isinstance(record.get("incomplete"), str):
            incomplete = record["incomplete"]
        checker.feed(number, record)
    summary = checker.finish()
    seed = header.get("seed")
    return RunResult(str(header.get("scenario")), seed if isinstance(seed, int) else 0,
                     str(header.get("mode")), path, summary, checker.violations,
                     time.perf_counter() - started, summary.duration_ms / 1000.0, header,
                     "incomplete" if incomplete else "complete", incomplete)
