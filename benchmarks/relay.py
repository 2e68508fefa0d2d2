"""Relay benchmark: a bare trio-websocket echo server against the reference server's relay.

In one run on one machine:

(a) ``echo``: a bare trio-websocket echo server (``_relay_server.py echo``);
    a round trip is one text frame sent on a connection and its echo read.
(b) ``relay``: the reference server (rate limit raised, statistics logging
    off), R rooms of 1 clinician + P patients; the box is closed and
    notifications are on, so each patient ``send{text}`` costs the server a
    ``message``, an ``unread`` and a ``notify`` to the clinician and the
    sender's ``ok``; a round trip is a ``send`` and its ``ok``; the
    clinicians read (and count) every frame.

Both are driven by the same client (``_relay_client.py``: raw sockets, one epoll
loop, in separate processes from the server) over the same number of
connections, with the same request bytes (a 64-character text) and one
request in flight per sending connection (``--window``). Each run has a
warm-up, then a fixed window in which round trips are counted and the
server's CPU time is sampled from /proc. Prints round trips per second for
each, and the ratio relay/echo (medians over ``--repeat`` interleaved runs).

    .venv/bin/python -m benchmarks.relay                 # 3 x (echo, relay), 2 s warm-up + 8 s each
    .venv/bin/python -m benchmarks.relay --json out.json --repeat 5
    .venv/bin/python -m benchmarks.relay --only relay --py-spy /tmp/relay.txt   # profile the relay

Every process it starts is stopped in ``finally``; load goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks._relay_client import BenchError, Plan, Result, run, setup

# The server under test runs as a script (not with -m), so that a variant's folder on PYTHONPATH
# comes before this checkout's and its reference_server is the one imported.
RELAY_SERVER = Path(__file__).resolve().parent / "_relay_server.py"

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_until_quiet(max_busy_pct: float, timeout_s: float) -> float:
    """Wait (at most timeout_s) until the machine's CPU use over one second is under max_busy_pct
    (100 = one core busy); return the last reading."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = machine_cpu_seconds()
        time.sleep(1.0)
        busy = 100 * (machine_cpu_seconds() - before)
        if busy <= max_busy_pct or time.monotonic() >= deadline:
            return busy
        print(f"  (machine busy {busy:.0f}% of a core: waiting for others' load to pass)", file=sys.stderr)
        time.sleep(4.0)


def start_server(kind: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int, str]:
    proc = subprocess.Popen(
        [sys.executable, str(RELAY_SERVER), kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            stop_server(proc)
            raise BenchError(f"{kind} server did not start")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                stop_server(proc)
                raise BenchError(f"{kind} server exited before listening")
            line += chunk
    if not line.startswith(b"port "):
        stop_server(proc)
        raise BenchError(f"{kind} server said {line!r}")
    fields = line.decode().split()
    return proc, int(fields[1]), " ".join(fields[2:])


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def _client_main(plan: Plan, pipe: Any) -> None:
    try:
        conns = setup(plan)
        pipe.send("ready")
        t_start, t_window, t_end = pipe.recv()
        pipe.send(run(plan, conns, t_start, t_window, t_end))
    except BaseException as error:  # report anything to the driver, then exit
        pipe.send(f"error: {type(error).__name__}: {error}")
    finally:
        pipe.close()


def measure(kind: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """One run: start the server, set up the clients, warm up, measure, stop everything."""
    rooms, per_room = args.rooms, args.patients_per_room
    connections = rooms * (1 + per_room)
    relay = kind.startswith("relay")
    server_path = args.server_path if kind == "relay" else dict(args.variant).get(kind.partition(":")[2])
    senders = rooms * per_room if relay else (args.echo_senders or connections)
    procs = args.client_procs
    plans = []
    for i in range(procs):
        if relay:
            mine = list(range(i, rooms, procs))
            plans.append(Plan("relay", 0, mine, per_room, 0, 0, args.window, tag))
        else:
            share = senders // procs + (1 if i < senders % procs else 0)
            idle = (connections - senders) // procs + (1 if i < (connections - senders) % procs else 0)
            plans.append(Plan("echo", 0, [], 0, share, idle, args.window, tag))
    env: dict[str, str] = {}
    if kind == "relay" and args.cprofile:
        env["BENCH_CPROFILE"] = args.cprofile
    if relay and server_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [server_path, os.environ.get("PYTHONPATH")]))
    busy_before = wait_until_quiet(args.max_busy, args.quiet_timeout) if args.max_busy else None
    server, port, server_code = start_server("relay" if relay else "echo", env)
    ctx = mp.get_context("fork")
    children: list[tuple[Any, Any]] = []
    spy: subprocess.Popen[bytes] | None = None
    try:
        for plan in plans:
            plan.port = port
            parent_end, child_end = ctx.Pipe()
            child = ctx.Process(target=_client_main, args=(plan, child_end), daemon=True)
            child.start()
            child_end.close()
            children.append((child, parent_end))
        for _child, pipe in children:
            if not pipe.poll(60):
                raise BenchError("client setup timed out")
            message = pipe.recv()
            if message != "ready":
                raise BenchError(f"client setup failed: {message}")
        t_start = time.monotonic() + 0.2
        t_window = t_start + args.warmup
        t_end = t_window + args.duration
        for _, pipe in children:
            pipe.send((t_start, t_window, t_end))
        load_before = os.getloadavg()
        time.sleep(max(0.0, t_window - time.monotonic()))
        if args.py_spy:
            spy = _start_py_spy(server.pid, args, args.py_spy.replace("{kind}", kind.replace(":", "-")))
        server_cpu0 = cpu_seconds(server.pid)
        client_cpu0 = sum(cpu_seconds(child.pid) for child, _ in children)
        machine_cpu0 = machine_cpu_seconds()
        w0 = time.monotonic()
        time.sleep(max(0.0, t_end - time.monotonic()))
        server_cpu1 = cpu_seconds(server.pid)
        client_cpu1 = sum(cpu_seconds(child.pid) for child, _ in children)
        machine_cpu1 = machine_cpu_seconds()
        w1 = time.monotonic()
        results: list[Result] = []
        for _child, pipe in children:
            if not pipe.poll(args.duration + 30):
                raise BenchError("client did not report")
            message = pipe.recv()
            if not isinstance(message, Result):
                raise BenchError(f"client failed: {message}")
            results.append(message)
        if spy is not None:
            spy.wait(timeout=30)
            spy = None
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        for child, pipe in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()
            pipe.close()
        stop_server(server)
    round_trips = sum(r.round_trips for r in results)
    rtts = sorted(x for r in results for x in r.rtt_samples)
    errors = [e for r in results for e in r.errors]
    wall = w1 - w0
    server_cpu = server_cpu1 - server_cpu0
    out: dict[str, Any] = {
        "kind": kind,
        "server_code": server_code or "trio-websocket echo",
        "connections": sum(r.connections for r in results),
        "senders": senders,
        "round_trips": round_trips,
        "rt_per_s": round_trips / args.duration,
        "rtt_p50_ms": 1000 * rtts[len(rtts) // 2] if rtts else None,
        "rtt_p99_ms": 1000 * rtts[int(len(rtts) * 0.99)] if rtts else None,
        "server_cpu_pct": 100 * server_cpu / wall,
        "client_cpu_pct": 100 * (client_cpu1 - client_cpu0) / wall,
        "server_cpu_us_per_rt": 1e6 * server_cpu / round_trips if round_trips else None,
        # Everything else on the machine during the window (100 = one core): other people's work.
        "others_cpu_pct": 100 * ((machine_cpu1 - machine_cpu0) - server_cpu
                                 - (client_cpu1 - client_cpu0)) / wall,
        "machine_busy_pct_before": busy_before,
        "load_avg_1m_before": load_before[0],
        "errors": errors,
    }
    if relay:
        frames: dict[str, int] = {}
        for r in results:
            for name, count in r.reader_frames.items():
                frames[name] = frames.get(name, 0) + count
        out["clinician_frames"] = frames
        out["sends_total"] = sum(r.round_trips_total for r in results)
    return out


def _start_py_spy(pid: int, args: argparse.Namespace, output: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(int(args.duration)), "--rate", "250",
         "--format", "raw", "--output", output, "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _fmt(run: dict[str, Any]) -> str:
    p50 = run["rtt_p50_ms"]
    p99 = run["rtt_p99_ms"]
    return (
        f"{run['kind']:>12}: {run['rt_per_s']:>9,.0f} rt/s  "
        f"rtt p50 {p50 or 0:5.2f} ms p99 {p99 or 0:6.2f} ms  "
        f"server cpu {run['server_cpu_pct']:3.0f}% ({run['server_cpu_us_per_rt'] or 0:5.1f} us/rt)  "
        f"client cpu {run['client_cpu_pct']:3.0f}%  others {run['others_cpu_pct']:3.0f}%"
        + (f"  ERRORS {run['errors']}" if run["errors"] else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="measured window, s (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before the window, s (default 2)")
    parser.add_argument("--rooms", type=int, default=10, help="relay rooms (default 10)")
    parser.add_argument("--patients-per-room", type=int, default=9, help="patients per room (default 9)")
    parser.add_argument("--echo-senders", type=int, default=None,
                        help="echo: connections that send (default: all of them; the others stay idle)")
    parser.add_argument("--window", type=int, default=1, help="requests in flight per sender (default 1)")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each; medians (default 3)")
    parser.add_argument("--max-busy", type=float, default=30.0,
                        help="before each run, wait until the machine's CPU use is under this "
                             "(percent of one core; 0: don't wait; default 30)")
    parser.add_argument("--quiet-timeout", type=float, default=300.0,
                        help="wait at most this long for a quiet machine, s (default 300)")
    parser.add_argument("--max-others", type=float, default=25.0,
                        help="discard and redo a run in which other processes used more than this "
                             "(percent of one core; default 25)")
    parser.add_argument("--retries", type=int, default=3,
                        help="redo a disturbed run at most this often; the last is kept (default 3)")
    parser.add_argument("--only", choices=("echo", "relay"), help="run only one of the two")
    parser.add_argument("--json", metavar="FILE",
                        help="write every run and the medians as JSON ('-': stdout)")
    parser.add_argument("--py-spy", metavar="FILE",
                        help="sample the server with py-spy during the window (collapsed stacks; "
                             "'{kind}' in FILE is replaced by the kind, else the last run wins)")
    parser.add_argument("--server-path", metavar="DIR",
                        help="relay: import reference_server from DIR (e.g. an export of an older commit)")
    parser.add_argument("--variant", metavar="NAME=DIR", action="append", default=[],
                        type=lambda v: tuple(v.split("=", 1)),
                        help="also run the relay with reference_server imported from DIR, as kind "
                             "relay:NAME, interleaved with the others (repeatable; for before/after)")
    parser.add_argument("--cprofile", metavar="FILE",
                        help="run the relay server under cProfile, stats to FILE")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.duration > 600 or args.warmup < 0 or args.warmup > 60:
        parser.error("--duration must be in (0, 600] and --warmup in [0, 60]")
    if not 0 <= args.quiet_timeout <= 3600 or args.max_busy < 0 or not 0 <= args.retries <= 10:
        parser.error("--quiet-timeout must be in [0, 3600] s, --max-busy at least 0, --retries 0..10")
    if not 1 <= args.repeat <= 20 or not 1 <= args.window <= 64 or not 1 <= args.client_procs <= 8:
        parser.error("--repeat 1..20, --window 1..64, --client-procs 1..8")
    if args.rooms < 1 or args.patients_per_room < 1 or args.rooms * (1 + args.patients_per_room) > 2000:
        parser.error("--rooms and --patients-per-room at least 1, at most 2000 connections")
    if any(len(v) != 2 or not v[0] or not Path(v[1], "reference_server").is_dir() for v in args.variant):
        parser.error("--variant NAME=DIR, where DIR holds a reference_server package")
    kinds = [args.only] if args.only else ["echo", "relay"]
    kinds += [f"relay:{name}" for name, _ in args.variant]
    runs: list[dict[str, Any]] = []
    tag = f"{os.getpid()}-{int(time.time())}"
    failed = False
    discarded: list[dict[str, Any]] = []
    for i in range(args.repeat):
        for kind in kinds:
            for attempt in range(1 + args.retries):
                result = measure(kind, args, f"{tag}-{i}-{attempt}")
                if result["others_cpu_pct"] <= args.max_others or attempt == args.retries:
                    break
                discarded.append(result)
                print(f"  (discarded a {kind} run: others used {result['others_cpu_pct']:.0f}% "
                      "of a core during it)", file=sys.stderr, flush=True)
            runs.append(result)
            failed = failed or bool(result["errors"])
            print(_fmt(result), file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
    medians = {
        kind: statistics.median(r["rt_per_s"] for r in runs if r["kind"] == kind) for kind in kinds
    }
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "connections": args.rooms * (1 + args.patients_per_room),
        "median_rt_per_s": medians,
        "median_server_cpu_us_per_rt": {
            kind: statistics.median(r["server_cpu_us_per_rt"] or 0 for r in runs if r["kind"] == kind)
            for kind in kinds
        },
        "runs": runs,
        "discarded_runs": discarded,
    }
    lines = [f"median {kind}: {medians[kind]:,.0f} round trips/s" for kind in kinds]
    if "echo" in medians and "relay" in medians:
        summary["ratio_relay_to_echo"] = medians["relay"] / medians["echo"]
        lines.append(f"ratio relay/echo: {summary['ratio_relay_to_echo']:.2f} (goal >= 0.8)")
    if "echo" in medians:
        summary["ratios_to_echo"] = {k: medians[k] / medians["echo"] for k in kinds if k != "echo"}
        lines += [f"ratio {k}/echo: {medians[k] / medians['echo']:.2f}" for k in kinds
                  if k.startswith("relay:")]
    print("\n".join(lines), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        text = json.dumps(summary, indent=2, default=lambda o: asdict(o))
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
