"""Running a scenario: in-process in virtual time, or over real sockets in real time; then checking it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any
from urllib.parse import urlsplit

import trio
import trio.testing

from reference_server.protocol import DEVELOPMENT_SECRET, WS_PATH, Limits

from ._agents import VIRTUAL_EPOCH_S, JumpingClock, Network, World, population, seeded_patient_ids
from ._checker import Checker, Summary, Violation
from ._history import HistoryWriter, read_history
from ._scenario import Scenario
from ._transport import MemoryNetwork

# The secret of the in-process server: it never leaves the process.
IN_PROCESS_SECRET = "queuechat-simulator-in-process"


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

    @property
    def chat_messages(self) -> int:
        return self.summary.patient_messages + self.summary.clinician_messages


def history_name(scenario: Scenario) -> str:
    return f"{scenario.name}-seed{scenario.seed}.jsonl"


def _rooms(scenario: Scenario, suffix: str = "") -> list[str]:
    return [f"{scenario.room_prefix}{suffix}-{n:02d}" for n in range(1, scenario.rooms + 1)]


def _header(scenario: Scenario, *, mode: str, server: str, limits: Limits | None, rooms: list[str],
            epoch_s: float) -> dict[str, Any]:
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "mode": mode,
        "server": server,
        "limits": limits.as_wire() if limits is not None else None,
        "rooms": rooms,
        "epoch_ms": int(epoch_s * 1000),
        "duration_ms": scenario.duration_s * 1000.0,
        "heal_ms": scenario.active_s * 1000.0,
        "end_ms": scenario.duration_s * 1000.0,
        "redaction": "every text and name is replaced by its length",
    }


def run_in_process(
    scenario: Scenario,
    history_path: Path | None,
    *,
    model_class: type[Any] | None = None,
    check: bool = True,
    progress: Callable[[float], None] | None = None,
    clock_kind: str = "jumping",
    stack: str = "lean",
    jobs: int = 1,
) -> RunResult:
    """Run ``scenario`` against the reference server in this process, in virtual time.

    ``clock_kind`` is ``"jumping"`` (:class:`JumpingClock`, the default) or ``"mock"``
    (``trio.testing.MockClock(autojump_threshold=0)``): the same virtual time, the same history.
    ``stack`` is ``"lean"`` (the simulator's own client framing, pushed bytes, no task per connection)
    or ``"plain"`` (trio-websocket's client over ``trio.testing.memory_stream_pair``, for comparison).
    ``jobs`` > 1 splits the rooms among that many processes, each with its own reference server (rooms
    never share state; only the patient ids' generator differs per process), and merges their
    histories; the history is the same for the same scenario, seed and ``jobs``.
    """
    rooms = _rooms(scenario)
    header = _header(scenario, mode="virtual", server="in-process reference server", limits=scenario.limits,
                     rooms=rooms, epoch_s=VIRTUAL_EPOCH_S)
    header["jobs"] = jobs
    if jobs > 1:
        return _run_sharded(scenario, history_path, header, rooms, jobs=jobs, check=check,
                            clock_kind=clock_kind, stack=stack, model_class=model_class)
    writer = HistoryWriter(history_path, header)
    checker = Checker(writer.header) if check else None
    if checker is not None:
        writer.listeners.append(checker.feed)
    started = time.perf_counter()
    virtual_end = _simulate(scenario, writer, rooms, model_class=model_class, progress=progress,
                            clock_kind=clock_kind, stack=stack, shard=None, salt="")
    wall = time.perf_counter() - started
    writer.close(virtual_end)
    summary = checker.finish() if checker is not None else Summary()
    return RunResult(scenario.name, scenario.seed, "virtual", history_path, summary,
                     checker.violations if checker is not None else [], wall, virtual_end, writer.header)


def _simulate(scenario: Scenario, writer: HistoryWriter, rooms: list[str], *, model_class: type[Any] | None,
              progress: Callable[[float], None] | None, clock_kind: str, stack: str, shard: set[str] | None,
              salt: str) -> float:
    """One Trio run: the reference server and the agents of ``shard`` (all rooms when None)."""
    from reference_server.server import QueueChatServer  # the server, only to run it in-process

    options: dict[str, Any] = {}
    if model_class is not None:
        options["model_class"] = model_class
    virtual_end = [0.0]

    async def main() -> None:
        server = QueueChatServer(
            secret=IN_PROCESS_SECRET,
            limits=scenario.limits,
            patient_ids=seeded_patient_ids(scenario.seed, salt),
            wall_clock=lambda: VIRTUAL_EPOCH_S + trio.current_time(),
            stats_interval_s=None,
            **options,
        )
        memory = MemoryNetwork()

        def failed() -> None:
            nursery.cancel_scope.cancel()

        memory.on_failure = failed
        async with trio.open_nursery() as nursery:
            network = Network(memory=memory, nursery=nursery, plain=stack == "plain")
            world = World(scenario, network, writer, secret=IN_PROCESS_SECRET, rooms=rooms,
                          epoch_s=VIRTUAL_EPOCH_S, virtual=True, clock=clock.current_time, shard=shard)
            world.progress = progress
            await nursery.start(server.serve_listeners, [memory.listener])
            await world.run()
            virtual_end[0] = world.now()
            await server.shutdown()
            nursery.cancel_scope.cancel()
        if memory.failure is not None:
            raise memory.failure

    clock: trio.abc.Clock = JumpingClock() if clock_kind == "jumping" else trio.testing.MockClock(
        autojump_threshold=0)
    trio.run(main, clock=clock)
    return virtual_end[0]


def _shard(scenario: Scenario, rooms: list[str], part: str, shard: int, jobs: int, clock_kind: str,
           stack: str, check: bool,
           model_class: type[Any] | None) -> tuple[float, Summary | None, list[Violation]]:
    """A worker process: the rooms ``rooms[shard::jobs]``, their history written to ``part`` and, with
    ``check``, checked here (rooms share nothing, so each process checks its own)."""
    from reference_server._logging import configure_logging

    configure_logging("error")
    writer = HistoryWriter(Path(part), {"part": shard})
    checker = Checker(writer.header) if check else None
    if checker is not None:
        writer.listeners.append(checker.feed)
    end = _simulate(scenario, writer, rooms, model_class=model_class, progress=None, clock_kind=clock_kind,
                    stack=stack, shard=set(rooms[shard::jobs]), salt=f"/{shard}-of-{jobs}")
    writer.close(end)
    if checker is None:
        return end, None, []
    return end, checker.finish(), checker.violations


def _run_sharded(scenario: Scenario, history_path: Path | None, header: dict[str, Any], rooms: list[str], *,
                 jobs: int, check: bool, clock_kind: str, stack: str,
                 model_class: type[Any] | None) -> RunResult:
    import concurrent.futures
    import heapq
    import multiprocessing
    import tempfile

    import msgspec

    started = time.perf_counter()
    order = {name: index for index, (name, _, _) in enumerate(population(scenario, rooms))}
    with tempfile.TemporaryDirectory(prefix="queuechat-shards-") as folder:
        parts = [str(Path(folder) / f"part{shard}.jsonl") for shard in range(jobs)]
        # fork: nothing runs in this process yet (no Trio loop, no thread of ours); spawn elsewhere
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            results = list(pool.map(_shard, [scenario] * jobs, [rooms] * jobs, parts, range(jobs),
                                    [jobs] * jobs, [clock_kind] * jobs, [stack] * jobs, [check] * jobs,
                                    [model_class] * jobs))
        ends = [end for end, _, _ in results]
        decode = msgspec.json.Decoder().decode
        moved: list[list[int]] = [[] for _ in parts]  # a part's line (from 2) -> its line in the history

        def lines(index: int) -> Any:
            with open(parts[index], "rb") as handle:
                handle.readline()  # the part's own header
                for line in handle:
                    record = decode(line)
                    if record.get("kind") == "end":
                        return
                    yield (record["t"], order[record["agent"]] * 1000 + record["conn"]), index, line

        writer_header = HistoryWriter(None, header).header
        if history_path is not None:
            history_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(history_path, "wb") if history_path is not None else None  # noqa: SIM115
        try:
            if out is not None:
                out.write(msgspec.json.encode(writer_header) + b"\n")
            number = 1
            for _, index, line in heapq.merge(*(lines(i) for i in range(jobs)), key=lambda item: item[0]):
                number += 1
                moved[index].append(number)
                if out is not None:
                    out.write(line)
            end = {"t": round(max(ends) * 1000.0, 3), "kind": "end", "records": number - 1}
            if out is not None:
                out.write(msgspec.json.encode(end) + b"\n")
        finally:
            if out is not None:
                out.close()
    summary = Summary()
    violations: list[Violation] = []
    for index, (_, part_summary, part_violations) in enumerate(results):
        if part_summary is not None:
            summary.merge(part_summary)
        for violation in part_violations:
            mapped = moved[index]
            violation.lines = [mapped[n - 2] if 2 <= n < len(mapped) + 2 else number + 1
                               for n in violation.lines]
            violations.append(violation)
    violations.sort(key=lambda v: (v.lines[-1] if v.lines else 0, v.rule))
    wall = time.perf_counter() - started
    return RunResult(scenario.name, scenario.seed, "virtual", history_path, summary, violations, wall,
                     max(ends), writer_header)


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of a ``ws://`` URL; ValueError when it is not one."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError(f"{url!r} is not a ws:// URL (wss:// is left to a proxy)")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    return parts.hostname, port, parts.path or WS_PATH


def run_over_sockets(
    scenario: Scenario,
    url: str,
    history_path: Path | None,
    *,
    secret: str | None = None,
    check: bool = True,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Run ``scenario``'s agents against the server at ``url`` in real time."""
    host, port, path = parse_url(url)
    suffix = "-" + Random().getrandbits(24).to_bytes(3, "big").hex()  # fresh rooms on a long-lived server
    rooms = _rooms(scenario, suffix)
    epoch = time.time()
    header = _header(scenario, mode="socket", server=url, limits=None, rooms=rooms, epoch_s=epoch)
    writer = HistoryWriter(history_path, header)
    checker = Checker(writer.header) if check else None
    if checker is not None:
        writer.listeners.append(checker.feed)
    real_end = [0.0]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            network = Network(tcp=(host, port), nursery=nursery, target=path)
            world = World(scenario, network, writer, secret=secret or DEVELOPMENT_SECRET, rooms=rooms,
                          epoch_s=epoch, virtual=False)
            world.progress = progress
            await world.run()
            real_end[0] = world.now()
            nursery.cancel_scope.cancel()

    started = time.perf_counter()
    trio.run(main)
    wall = time.perf_counter() - started
    writer.close(real_end[0])
    summary = checker.finish() if checker is not None else Summary()
    return RunResult(scenario.name, scenario.seed, "socket", history_path, summary,
                     checker.violations if checker is not None else [], wall, real_end[0], writer.header)


def check_history(path: Path) -> RunResult:
    """Re-check a saved history."""
    started = time.perf_counter()
    header, records = read_history(path)
    checker = Checker(header)
    for number, record in records:
        checker.feed(number, record)
    summary = checker.finish()
    return RunResult(str(header.get("scenario")), int(header.get("seed") or 0), str(header.get("mode")), path,
                     summary, checker.violations, time.perf_counter() - started, summary.duration_ms / 1000.0,
                     header)
