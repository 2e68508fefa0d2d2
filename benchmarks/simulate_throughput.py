"""Chat messages per wall-second for a scenario in virtual time, through the full wire stack.

    python -m benchmarks.simulate_throughput                       # busy_clinic_day, seed 1, the table
    python -m benchmarks.simulate_throughput --seeds 20            # the 20 full days, each checked
    python -m benchmarks.simulate_throughput --configs lean:1,lean:2,plain:1 --heartbeat default,off

Every configuration runs the whole scenario in-process (the reference server behind its own
trio-websocket shell, the agents' frames through WebSocket framing both ways), writes the history,
then checks it. A configuration is STACK:JOBS:

- ``lean``: the simulator's client (its own RFC 6455 client codec, bytes pushed over a lean in-memory
  stream, no task per client connection, one scheduler task, the jumping virtual clock);
- ``plain``: the straightforward stack for comparison (trio-websocket's client over
  ``trio.testing.memory_stream_pair``, a reader and a writer task per connection, MockClock autojump);
- JOBS: processes the rooms are split among (each with its own reference server).

``--heartbeat off`` switches the server's WebSocket ping off (``ping_interval_s`` and
``ping_timeout_s``), to show what the chat path alone costs: with the contract's default (a ping
every 20 s on every connection) a busy day carries about as many pings as chat messages.

Figures: ``messages`` (chat messages acknowledged, both ways), ``run s`` (wall time of the run,
history written), ``check s`` (wall time of re-checking the history), ``msg/s`` = messages / (run +
check), ``msg/s run`` = messages / run, ``cpu s`` (CPU time, this process and its children).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks._plain_client import open_plain_client
from reference_server.server import configure_logging
from simulator import check_history, load_scenario, run_in_process


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(scenario_name: str, seed: int, stack: str, jobs: int, heartbeat: str, duration: float | None,
            folder: Path) -> dict[str, Any]:
    scenario = replace(load_scenario(scenario_name), seed=seed)
    if duration is not None:
        scenario = scenario.with_duration(duration)
    if heartbeat == "off":
        quiet = scenario.limits.replace(ping_interval_s=None, ping_timeout_s=None)
        scenario = replace(scenario, limits=quiet)
    history = folder / f"{scenario_name}-{seed}-{stack}-{jobs}-{heartbeat}.jsonl"
    cpu0 = _cpu()
    started = time.perf_counter()
    run_in_process(scenario, history, check=False, stack=open_plain_client if stack == "plain" else None,
                   jobs=jobs,
                   clock_kind="mock" if stack == "plain" else "jumping")
    run_s = time.perf_counter() - started
    checked = check_history(history)
    check_s = time.perf_counter() - started - run_s
    cpu = _cpu() - cpu0
    messages = checked.chat_messages
    size = history.stat().st_size
    history.unlink()
    return {
        "scenario": scenario_name, "seed": seed, "stack": stack, "jobs": jobs, "heartbeat": heartbeat,
        "virtual_h": round(checked.virtual_s / 3600, 2), "messages": messages,
        "patients": checked.summary.patients, "run_s": round(run_s, 2), "check_s": round(check_s, 2),
        "cpu_s": round(cpu, 2), "msg_per_s": round(messages / (run_s + check_s)),
        "msg_per_s_run": round(messages / run_s), "history_mb": round(size / 1e6, 1),
        "violations": dict(checked.summary.violations),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="busy_clinic_day")
    parser.add_argument("--seeds", type=int, default=1, help="run seeds 1..N (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="run this one seed only")
    parser.add_argument("--configs", default="lean:1,lean:2",
                        help="comma-separated STACK:JOBS (lean or plain), default lean:1,lean:2")
    parser.add_argument("--heartbeat", default="default", help="comma-separated: default, off")
    parser.add_argument("--duration", type=float, default=None, help="cap each run (virtual seconds)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    configure_logging("error")
    rows = []
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    print("| scenario | seed | stack | jobs | heartbeat | virtual h | patients | messages | run s | "
          "check s | msg/s | msg/s run | cpu s | violations |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="simulate-throughput-") as folder:
        seeds = [args.seed] if args.seed is not None else range(1, args.seeds + 1)
        for seed in seeds:
            for heartbeat in args.heartbeat.split(","):
                for stack, jobs in configs:
                    row = measure(args.scenario, seed, stack, jobs, heartbeat, args.duration, Path(folder))
                    rows.append(row)
                    print(f"| {row['scenario']} | {seed} | {stack} | {jobs} | {heartbeat} | "
                          f"{row['virtual_h']} | {row['patients']} | {row['messages']} | {row['run_s']} | "
                          f"{row['check_s']} | "
                          f"{row['msg_per_s']} | {row['msg_per_s_run']} | {row['cpu_s']} | "
                          f"{row['violations'] or 'none'} |", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 1 if any(row["violations"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
