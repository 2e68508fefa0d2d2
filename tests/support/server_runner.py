"""The reference server in a process of its own, with a side channel for looking inside it.

    python -m tests.support.server_runner [--limits JSON] [--log-level LEVEL] [--tracemalloc]

(from the project's root, or with it on PYTHONPATH; ``server_process.ServerProcess`` starts it).

Serves on 127.0.0.1 (port 0) and opens a second loopback TCP port, the
control channel, then prints one line on stdout:

    ready ws://127.0.0.1:PORT/v1/ws control PORT

The control channel takes one JSON object per line and answers one per line:

- ``{"cmd": "stats"}``: the server's statistics, the model's, Trio's living
  tasks, counts of the server's live objects by class, the size of the
  Python heap, RSS (``"heavy": false``: without the object counts, which
  cost a full garbage collection);
- ``{"cmd": "search", "prefix": P, "hashes": [H, ...]}``: the privacy audit
  (R13). After ``gc.collect()``, every object reachable from the garbage
  collector's roots is walked (``gc.get_objects()``, ``sys.modules``, every
  thread's frames and their locals, then ``gc.get_referents`` recursively, so
  that untracked objects such as strings and bytes are reached too). Each
  ``str``, ``bytes``, ``bytearray`` and ``memoryview`` is searched for
  ``P`` followed by 24 hex digits; each such candidate is hashed (SHA-256)
  and compared with the given hashes. The answer says, per hash, whether it
  was found and in which kinds of object. The markers themselves never
  reach this process through the side channel, and nothing here writes or
  prints a candidate;
- ``{"cmd": "types", "top": N}``: the N most common types among the objects
  the garbage collector tracks (names and counts only);
- ``{"cmd": "tracemalloc_top", "by": "lineno", "top": N}`` (with
  ``--tracemalloc``): where the Python heap is, by source line (sizes only);
- ``{"cmd": "gc_pauses"}``: the garbage collector's stop-the-world pauses
  since the last ask, by generation (count, total, longest);
- ``{"cmd": "gc_state"}``: tracked objects per generation, frozen, counters, thresholds.
- ``{"cmd": "young"}`` and ``{"cmd": "collect"}``: diagnostics for the GC work of issue 13:
  what each generation holds now (types, largest containers), and a full collection's
  unreachable objects by type (``gc.DEBUG_SAVEALL``).
- ``{"cmd": "gc_freeze"}``: a diagnostic for the capacity run: collect, then
  move every object to the permanent generation (``gc.freeze()``), so that
  the following full collections no longer walk them;
- ``{"cmd": "written"}``: every path this process opened for writing (an
  audit hook on ``open``), so that the audit can search the files;
- ``{"cmd": "shutdown"}``: R46 shutdown, then the process exits.

The process also exits when its stdin closes, so it never outlives its driver.
Logs (structured JSON lines) go to stderr, which the driver captures.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import re
import resource
import sys
import time
import tracemalloc
import types
from collections import Counter
from typing import Any

_written: list[str] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[0], args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writing and isinstance(path, str | bytes) and len(_written) < 10_000:
            _written.append(os.fsdecode(path))


# Server classes whose live instances are counted (by name, to keep the imports lazy).
COUNTED_CLASSES = (
    "_Connection", "_Session", "_Patient", "_Room", "WebSocketConnection", "WebSocketRequest",
    "SocketStream", "Task", "Nursery", "CancelScope",
)


def live_objects() -> dict[str, int]:
    """Live instances of the server's classes, counted through the garbage collector."""
    gc.collect()
    wanted = set(COUNTED_CLASSES)
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in wanted:
            counts[name] += 1
    return {name: counts.get(name, 0) for name in COUNTED_CLASSES}


def _describe(obj: Any) -> str:
    """A type name, and for frames and code the function's name: never any content."""
    if isinstance(obj, types.FrameType):
        return f"frame:{obj.f_code.co_name}"
    if isinstance(obj, types.CoroutineType):
        return f"coroutine:{obj.cr_code.co_name}"
    if isinstance(obj, types.FunctionType):
        return f"function:{obj.__qualname__}"
    return type(obj).__qualname__


def search_heap(prefix: str, hashes: set[str], trace: bool = False) -> dict[str, Any]:
    """Which of ``hashes`` (SHA-256 of ``prefix`` + 24 hex digits) some reachable object contains.

    With ``trace``, each find also gives the chain of objects that reached it, as type
    (and function) names only, so that a leak can be located without showing anything.
    """
    gc.collect()
    pattern_s = re.compile(re.escape(prefix) + "[0-9a-f]{24}")
    pattern_b = re.compile(re.escape(prefix.encode()) + b"[0-9a-f]{24}")
    prefix_b = prefix.encode()
    found: dict[str, set[str]] = {h: set() for h in hashes}
    roots: list[Any] = gc.get_objects()
    roots.extend(sys.modules.values())
    for frame in sys._current_frames().values():
        walk: Any = frame
        while walk is not None:
            roots.append(walk)
            roots.append(walk.f_locals)
            walk = walk.f_back
    stack = roots[:]
    seen: set[int] = set()
    seen.update((id(seen), id(roots), id(stack), id(found)))
    walked = 0

    parents: dict[int, tuple[int, str]] = {}
    seen.add(id(parents))
    chains: dict[str, list[list[str]]] = {}

    def check(candidates: list[Any], kind: str, key: int) -> None:
        for candidate in candidates:
            raw = candidate.encode() if isinstance(candidate, str) else bytes(candidate)
            digest = hashlib.sha256(raw).hexdigest()
            if digest in found:
                found[digest].add(kind)
                if trace and len(chains.setdefault(digest, [])) < 5:
                    chain: list[str] = []
                    at = key
                    while at in parents and len(chain) < 40:
                        at, name = parents[at]
                        chain.append(name)
                    chains[digest].append(chain)

    while stack:
        obj = stack.pop()
        key = id(obj)
        if key in seen:
            continue
        seen.add(key)
        walked += 1
        if isinstance(obj, str):
            if prefix in obj:
                check(pattern_s.findall(obj), "str", key)
        elif isinstance(obj, bytes | bytearray):
            if prefix_b in obj:
                check(pattern_b.findall(obj), type(obj).__name__, key)
        elif isinstance(obj, memoryview):
            try:
                data = obj.tobytes()
            except (ValueError, TypeError):
                continue
            if prefix_b in data:
                check(pattern_b.findall(data), "memoryview", key)
        else:
            referents = gc.get_referents(obj)
            if trace:
                name = _describe(obj)
                for child in referents:
                    parents.setdefault(id(child), (key, name))
            stack.extend(referents)
    del roots, stack
    return {"found": {h: sorted(kinds) for h, kinds in found.items()}, "objects_walked": walked,
            "chains": chains}


class GcPauses:
    """Stop-the-world collections, by generation: how many, total, longest and every pause (gc.callbacks)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.count = [0, 0, 0]
        self.total_s = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        self.pauses_s: list[float] = []  # every pause since the last take, any generation
        self.collected = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        generation = int(info.get("generation", 0))
        took = time.perf_counter() - self.started
        self.count[generation] += 1
        self.total_s[generation] += took
        self.max_s[generation] = max(self.max_s[generation], took)
        self.collected[generation] += int(info.get("collected", 0))
        if len(self.pauses_s) < 1_000_000:
            self.pauses_s.append(took)

    def take(self) -> dict[str, Any]:
        """The figures since the last take: per generation, and the distribution of all pauses."""
        pauses = sorted(self.pauses_s)

        def pct(p: float) -> float | None:
            if not pauses:
                return None
            return round(pauses[min(len(pauses) - 1, int(p / 100 * len(pauses)))] * 1000, 2)

        out = {"count": self.count, "total_ms": [round(t * 1000, 1) for t in self.total_s],
               "max_ms": [round(t * 1000, 1) for t in self.max_s], "collected": self.collected,
               "pause_p50_ms": pct(50), "pause_p99_ms": pct(99),
               "pause_max_ms": round(pauses[-1] * 1000, 2) if pauses else None,
               "pauses_over_10ms": sum(1 for t in pauses if t > 0.010),
               "pauses_over_50ms": sum(1 for t in pauses if t > 0.050)}
        self.count, self.total_s, self.max_s = [0, 0, 0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        self.pauses_s, self.collected = [], [0, 0, 0]
        return out


def gc_state() -> dict[str, Any]:
    """The collector's own state: tracked objects per generation (and frozen), counters, thresholds."""
    return {"objects_per_generation": [len(gc.get_objects(g)) for g in range(3)],
            "frozen": gc.get_freeze_count(), "counts": list(gc.get_count()),
            "thresholds": list(gc.get_threshold()), "enabled": gc.isenabled()}


gc_pauses = GcPauses()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--limits", default="{}", help="Limits fields as a JSON object (null = off)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--tracemalloc", action="store_true", help="trace Python allocations (slower)")
    parser.add_argument("--no-gc-policy", action="store_true",
                        help="run without the server's GC policy (gc.freeze after handshakes), as before it")
    parser.add_argument("--nofile", type=int, default=0, help="raise RLIMIT_NOFILE to this (soft)")
    args = parser.parse_args()
    sys.addaudithook(_audit)
    gc.callbacks.append(gc_pauses)
    if args.nofile:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = min(args.nofile, hard) if hard != resource.RLIM_INFINITY else args.nofile
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if args.tracemalloc:
        tracemalloc.start()

    # Imported only now, on purpose: the audit hook and tracemalloc above must see everything the
    # server's modules open and allocate, their import included.
    import trio

    from reference_server.protocol import DEVELOPMENT_SECRET, Limits
    from reference_server.server import QueueChatServer, configure_logging

    configure_logging(args.log_level)
    limits = Limits(**json.loads(args.limits))
    # (gc_freeze only when on: the same runner then also drives an older server, for a before/after)
    policy: dict[str, Any] = {} if args.no_gc_policy else {"gc_freeze": True}
    server = QueueChatServer(secret=os.environ.get("QUEUECHAT_SECRET", DEVELOPMENT_SECRET), limits=limits,
                             stats_interval_s=None, **policy)

    def stats(heavy: bool = True) -> dict[str, Any]:
        s = server.statistics()
        out: dict[str, Any] = {name: getattr(s, name) for name in s.__dataclass_fields__}
        pauses = gc_pauses.take() if heavy else None
        out["model"] = server._model.statistics()
        out["connections_registered"] = len(server._connections)
        out["tasks_living"] = trio.lowlevel.current_statistics().tasks_living
        if heavy:  # a full collection and a walk of the heap: not for tight polling
            out["objects"] = live_objects()
            out["gc_objects"] = len(gc.get_objects())
        out["allocated_blocks"] = sys.getallocatedblocks()
        out["rss"] = rss_bytes()
        if pauses is not None:  # taken (and reset) before this call's own full collection
            out["gc_pauses"] = pauses
            gc_pauses.take()
        if tracemalloc.is_tracing():
            out["traced_bytes"] = tracemalloc.get_traced_memory()[0]
        out["time"] = time.time()
        return out

    async def control(stream: trio.SocketStream, stop: trio.CancelScope) -> None:
        buf = b""
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    request = json.loads(line)
                    command = request.get("cmd")
                    answer: dict[str, Any]
                    if command == "stats":
                        answer = stats(bool(request.get("heavy", True)))
                    elif command == "search":
                        answer = search_heap(str(request["prefix"]), set(request["hashes"]),
                                             bool(request.get("trace")))
                    elif command == "types":
                        gc.collect()
                        census = Counter(type(o).__qualname__ for o in gc.get_objects())
                        answer = {"types": dict(census.most_common(int(request.get("top", 40))))}
                    elif command == "tracemalloc_top" and tracemalloc.is_tracing():
                        gc.collect()
                        snapshot = tracemalloc.take_snapshot()
                        key = str(request.get("by", "lineno"))
                        top = snapshot.statistics(key)[: int(request.get("top", 25))]
                        answer = {"top": [[str(stat.traceback[0]), stat.size, stat.count] for stat in top],
                                  "total": sum(stat.size for stat in snapshot.statistics("filename"))}
                    elif command == "gc_freeze":  # a diagnostic: what the full collections cost
                        gc.collect()
                        gc.freeze()
                        answer = {"frozen": gc.get_freeze_count()}
                    elif command == "gc_pauses":
                        answer = gc_pauses.take()
                    elif command == "gc_state":
                        answer = gc_state()
                    elif command == "collect":  # a diagnostic: how much cyclic garbage there is now
                        gc.set_debug(gc.DEBUG_SAVEALL)
                        unreachable = gc.collect()
                        garbage = Counter(type(o).__qualname__ for o in gc.garbage)
                        gc.garbage.clear()
                        gc.set_debug(0)
                        answer = {"unreachable": unreachable, "types": dict(garbage.most_common(25))}
                    elif command == "young":  # a diagnostic: what the young generations hold now
                        out: dict[str, Any] = {}
                        for g in (0, 1, 2):
                            objs = gc.get_objects(g)
                            census = Counter(type(o).__qualname__ for o in objs)
                            big = sorted(((len(gc.get_referents(o)), type(o).__qualname__) for o in objs),
                                         reverse=True)[:8]
                            out[str(g)] = {"n": len(objs), "types": dict(census.most_common(12)), "big": big}
                            del objs
                        answer = out
                    elif command == "written":
                        answer = {"paths": sorted(set(_written))}
                    elif command == "shutdown":
                        with trio.move_on_after(5):
                            await server.shutdown()
                        await stream.send_all(json.dumps({"ok": True}).encode() + b"\n")
                        stop.cancel()
                        return
                    else:
                        answer = {"error": "unknown command"}
                    await stream.send_all(json.dumps(answer).encode() + b"\n")

    async def stdin_eof(stop: trio.CancelScope) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stdin:
            while await stdin.receive_some(4096):
                pass
        with trio.move_on_after(3):
            await server.shutdown()
        stop.cancel()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(lambda task_status: server.serve(host="127.0.0.1", port=0,
                                                                       task_status=task_status))
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(stdin_eof, nursery.cancel_scope)
            nursery.start_soon(trio.serve_listeners,
                               lambda stream: control(stream, nursery.cancel_scope), listeners)
            print(f"ready {url} control {port}", flush=True)

    trio.run(run)


if __name__ == "__main__":
    main()
