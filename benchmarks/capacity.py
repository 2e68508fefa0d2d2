"""Capacity: connections in steps, with a steady message load at each; memory per connection and p99.

    .venv/bin/python -m benchmarks.capacity                       # steps 1k, 2k, 5k, 10k; 2,000 msgs/s
    .venv/bin/python -m benchmarks.capacity --steps 500,1000 --seconds 5 --json out.json

The reference server runs in a process of its own (``tests/support/server_runner.py``,
default limits, open-files limit raised); the clients are one epoll loop in this
process (``benchmarks/_hardening_swarm.py``). Rooms hold one clinician and ``--room-size``
minus one patients. At each step the connections are opened up to the step's
count, then for ``--seconds`` every open connection may be picked to send: a
patient to its clinician or a clinician to one of its patients, ``--rate``
messages a second in all. Recorded per step: the server's RSS and RSS per
connection (over the RSS with no connection), its live Python objects, its CPU
share, the delivery latency of every message (``client_ts`` to arrival: p50,
p99, max), errors and closes, the load average of the machine, Trio tasks and
GC-tracked objects (frozen ones included) per connection, and the garbage
collector's pauses in the window (count per generation, p50/p99/max of all
pauses; ``--gc-stats`` adds objects per generation, frozen and thresholds).

Goal (the issue): 10,000 connections, <= 30 KiB each, p99 <= 50 ms at 2,000 msgs/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._hardening_swarm import Conn, Swarm, percentile, raise_nofile
from reference_server.protocol import DEVELOPMENT_SECRET, clinician_token
from tests.support.server_process import ServerProcess, cpu_seconds, load_average, rss_bytes


def run(steps: list[int], rate: float, seconds: float, room_size: int, warmup_s: float,
        gc_freeze: bool = False, gc_stats: bool = False, gc_policy: bool = True) -> dict[str, Any]:
    nofile = raise_nofile(max(steps) + 2000)
    if nofile < max(steps) + 200:
        raise SystemExit(f"open-files limit {nofile} is too low for {max(steps)} connections")
    result: dict[str, Any] = {"rate_msgs_per_s": rate, "seconds_per_step": seconds, "room_size": room_size,
                              "gc_freeze": gc_freeze, "gc_stats": gc_stats, "gc_policy": gc_policy,
                              "steps": [],
                              "load_before": load_average()}
    with ServerProcess(nofile=max(steps) + 2000, log_level="warning", gc_policy=gc_policy) as server:
        time.sleep(0.5)  # let the server settle before its baseline (bounded, once)
        base = server.stats()
        rss0 = rss_bytes(server.pid)
        result["server_rss_mib_no_connections"] = round(rss0 / 2**20, 1)
        result["server_python_objects_no_connections"] = base["gc_objects"]
        result["server_tasks_no_connections"] = base["tasks_living"]
        gc_base = server.command({"cmd": "gc_state"})
        tracked0 = sum(gc_base["objects_per_generation"]) + gc_base["frozen"]
        if gc_stats:
            result["server_gc_no_connections"] = gc_base
        swarm = Swarm(server.url)
        opened = 0
        rooms = 0
        for target in steps:
            t0 = time.monotonic()
            while opened < target:
                if opened % room_size == 0:
                    room = f"cap-{rooms}"
                    rooms += 1
                    swarm.add(Conn("clinician", room, token=clinician_token(DEVELOPMENT_SECRET, room)))
                else:
                    swarm.add(Conn("patient", f"cap-{rooms - 1}", name=f"P{opened}"))
                opened += 1
            if not swarm.wait_open(600):
                raise SystemExit("connections did not open in time")
            connect_s = time.monotonic() - t0
            open_now = len(swarm.open_patients) + len(swarm.open_clinicians)
            stats = server.stats()
            rss = rss_bytes(server.pid)
            gc_open = server.command({"cmd": "gc_state"})  # after stats' full collection: what is alive
            if gc_freeze:
                server.command({"cmd": "gc_freeze"})
            swarm.drive(warmup_s, rate)
            swarm.tally.latencies_ms.clear()
            errors_before = sum(swarm.tally.errors.values())
            server.stats()  # (a full collection there: not inside the measured window)
            cpu0, wall0, own0 = cpu_seconds(server.pid), time.monotonic(), time.process_time()
            load_during = load_average()
            sent = swarm.drive(seconds, rate)
            wall = time.monotonic() - wall0
            cpu = (cpu_seconds(server.pid) - cpu0) / wall
            own_cpu = (time.process_time() - own0) / wall
            pauses = server.stats(heavy=False)  # no collection of its own: the window's pauses
            gc_window = server.command({"cmd": "gc_pauses"})
            lat = swarm.tally.latencies_ms
            step = {
                "connections": open_now,
                "rooms": rooms,
                "connect_s": round(connect_s, 1),
                "server_rss_mib": round(rss / 2**20, 1),
                "kib_per_connection": round((rss - rss0) / open_now / 1024, 2),
                "python_objects_per_connection": round(
                    (stats["gc_objects"] - base["gc_objects"]) / open_now, 1),
                "server_connections": stats["connections_open"],
                "msgs_sent": sent,
                "msgs_per_s": round(sent / seconds),
                "deliveries": len(lat),
                "p50_ms": round(percentile(lat, 50), 2),
                "p99_ms": round(percentile(lat, 99), 2),
                "max_ms": round(max(lat), 2) if lat else None,
                "server_cpu_share": round(cpu, 2),
                "client_cpu_share": round(own_cpu, 2),
                "server_gc_pauses": gc_window,
                "server_tasks": pauses["tasks_living"],
                "tasks_per_connection": round((stats["tasks_living"] - base["tasks_living"]) / open_now, 2),
                # gc_objects leaves out what gc.freeze() moved to the permanent generation; this does not
                "tracked_objects_per_connection": round(
                    (sum(gc_open["objects_per_generation"]) + gc_open["frozen"] - tracked0) / open_now, 1),
                "errors": sum(swarm.tally.errors.values()) - errors_before,
                "load_average": load_during,
            }
            if gc_stats:
                step["gc"] = {"pauses": gc_window, "state_after_open": gc_open,
                              "state_after_window": server.command({"cmd": "gc_state"})}
            result["steps"].append(step)
            print(json.dumps(step), flush=True)
        result["closes"] = dict(swarm.tally.closes)
        result["connect_failures"] = swarm.tally.connect_failures
        result["errors_by_code"] = dict(swarm.tally.errors)
        swarm.close_all()
        for _ in range(600):
            if server.stats(heavy=False)["connections_open"] == 0:
                break
            time.sleep(0.05)
        end = server.stats()
        result["after_close"] = {"connections": end["connections_open"], "sessions": end["model"]["sessions"],
                                 "server_rss_mib": round(end["rss"] / 2**20, 1),
                                 "python_objects": end["gc_objects"],
                                 "internal_errors": end["internal_errors"],
                                 "slow_reader_drops": end["slow_reader_drops"]}
    result["load_after"] = load_average()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--steps", default="1000,2000,5000,10000")
    parser.add_argument("--rate", type=float, default=2000.0, help="messages per second in all")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--room-size", type=int, default=50, help="connections per room (1 clinician)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="diagnostic: gc.freeze() in the server once each step's connections are open")
    parser.add_argument("--gc-stats", action="store_true",
                        help="add the server's GC state (objects per generation, frozen, thresholds)")
    parser.add_argument("--no-gc-policy", action="store_true",
                        help="run the server without its GC policy (for a before/after of the policy)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    result = run(steps, args.rate, args.seconds, args.room_size, args.warmup_s, args.gc_freeze,
                 args.gc_stats, not args.no_gc_policy)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
