"""How far hostile clients move everyone else's delivery latency (goal: p99 within 20 % of before).

    .venv/bin/python -m benchmarks._hardening_hostile                  # every act, 10 s each
    .venv/bin/python -m benchmarks._hardening_hostile --acts flooder,burst --seconds 5 --json out.json
    .venv/bin/python -m benchmarks._hardening_hostile --decoy   # + each act against a decoy server

The reference server runs in a process of its own with the contract's default
limits. A steady control clinic (``--rooms`` rooms of a clinician and four
patients, ``--rate`` messages a second both ways) runs in this process
(``_hardening_swarm.py``) and its delivery latency is measured before, during
and after each hostile act; the act itself runs in a second process of its own
(this file with ``--act``), so that the measure is of the server, not of a
client sharing a loop with the attacker. On this 2-core machine the attacker's
own CPU is a third process competing with the server: its CPU share is
recorded next to the figures, and so is the server's in every window.

``--decoy`` separates the machine's share of a ratio from the server's: each
act is played a second time against a decoy server (a second process, the
same settings) while the control clinic keeps talking to the first. The
attacker and a busy server still take the cores, but the measured server has
nothing of the act to do: the decoy's "during / before" ratio is the floor the
machine imposes, and the real ratio above it is the server's own (``decoy``
per act, with the attacker's and the decoy server's CPU shares).

Acts: ``slow_reader`` (clinicians that stop reading while patients write to
them, R42), ``flooder`` (a patient pipelining requests far past R43),
``burst`` (2,000 connections opened at once, held, closed, again),
``reconnect_loop`` (a clinician reconnecting as fast as it can, R12),
``fill_room`` (a room filled past R44, refused patients retrying),
``mid_frame`` (connections cut in the middle of a frame, with a reset).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._hardening_swarm import Conn, Swarm, percentile, raise_nofile
from reference_server.protocol import DEVELOPMENT_SECRET, clinician_token
from reference_server.wscodec import OP_TEXT, cut_frame
from tests.support.rawws import SyncClient, WsError, json_frame
from tests.support.server_process import ROOT, ServerProcess, cpu_seconds, load_average

ACTS = ["slow_reader", "flooder", "burst", "reconnect_loop", "fill_room", "mid_frame"]


def token(room: str) -> str:
    return clinician_token(DEVELOPMENT_SECRET, room)


# --------------------------------------------------------------------------- the acts (own process)


def act_slow_reader(url: str, until: float) -> None:
    n = 0
    while time.monotonic() < until:
        n += 1
        room = f"slow-{n}"
        slow = SyncClient(url, rcvbuf=4096)
        slow.hello({"type": "hello", "role": "clinician", "room": room, "token": token(room)})
        writer = SyncClient(url)
        writer.hello({"type": "hello", "role": "patient", "room": room, "name": "Writer"})
        text = "x" * 4000
        for _ in range(2000):  # bounded: far past 1,024 frames and 4 MiB
            if time.monotonic() > until:
                break
            writer.send_bytes(b"".join(json_frame({"type": "send", "text": text}) for _ in range(20)))
            answers = 0
            while answers < 20:
                frame = writer.recv()
                if frame.opcode != OP_TEXT:
                    break
                if frame.json()["type"] in ("ok", "error"):
                    answers += 1
                elif frame.json()["type"] == "provider_status":  # away: the slow reader was dropped
                    answers = -1
                    break
            if answers < 0:
                break
        writer.close()
        slow.abort()


def act_flooder(url: str, until: float) -> None:
    client = SyncClient(url)
    client.hello({"type": "hello", "role": "patient", "room": "flood", "name": "Flooder"})
    burst = b"".join(json_frame({"type": "ping"}) for _ in range(500))
    while time.monotonic() < until:
        client.send_bytes(burst)
        for _ in range(500):
            client.recv()
    client.close()


def act_burst(url: str, until: float) -> None:
    while time.monotonic() < until:
        swarm = Swarm(url)
        swarm.max_in_flight = 2000
        for i in range(2000):
            swarm.add(Conn("patient", f"burst-{i % 8}", name=f"B{i}"))
        swarm.wait_open(60)
        swarm.close_all()
        for _ in range(20):
            swarm.step(0.01)


def act_reconnect_loop(url: str, until: float) -> None:
    room = "reconnecting"
    patients = [SyncClient(url) for _ in range(3)]
    for p in patients:
        p.hello({"type": "hello", "role": "patient", "room": room, "name": "Waiting"})
    while time.monotonic() < until:
        clinician = SyncClient(url)
        clinician.hello({"type": "hello", "role": "clinician", "room": room, "token": token(room)})
        clinician.close()
        for p in patients:
            p.send_bytes(json_frame({"type": "ping"}))
            while p.recv().json().get("type") not in ("ok", "error"):  # error: rate_limited (R43)
                pass
    for p in patients:
        p.close()


def act_fill_room(url: str, until: float) -> None:
    room = "full"
    inside: list[SyncClient] = []
    while time.monotonic() < until:
        client = SyncClient(url)
        try:
            client.hello({"type": "hello", "role": "patient", "room": room, "name": "Filler"})
            inside.append(client)
        except WsError:  # capacity: 1013
            client.close()
            for c in inside[:50]:
                c.close()
            del inside[:50]
    for c in inside:
        c.close()


def act_mid_frame(url: str, until: float) -> None:
    while time.monotonic() < until:
        client = SyncClient(url)
        client.hello({"type": "hello", "role": "patient", "room": "cut", "name": "Cut"})
        frame = json_frame({"type": "send", "text": "never finished " * 30})
        client.send_bytes(cut_frame(frame))
        client.abort()


def run_act(name: str, url: str, seconds: float) -> None:
    raise_nofile(6000)
    until = time.monotonic() + seconds
    acts = {"slow_reader": act_slow_reader, "flooder": act_flooder, "burst": act_burst,
            "reconnect_loop": act_reconnect_loop, "fill_room": act_fill_room, "mid_frame": act_mid_frame}
    acts[name](url, until)


# --------------------------------------------------------------------------- the measure


def cpu_share(pid: int, cpu0: float, t0: float) -> float:
    """A process's CPU since ``cpu0`` at ``t0``, in cores (nan if it is gone)."""
    try:
        return round((cpu_seconds(pid) - cpu0) / (time.monotonic() - t0), 2)
    except OSError:
        return float("nan")


def window(swarm: Swarm, seconds: float, rate: float, server_pid: int) -> dict[str, Any]:
    swarm.tally.latencies_ms.clear()
    cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
    swarm.drive(seconds, rate)
    lat = swarm.tally.latencies_ms
    return {"deliveries": len(lat), "p50_ms": round(percentile(lat, 50), 2),
            "p99_ms": round(percentile(lat, 99), 2), "max_ms": round(max(lat), 2) if lat else None,
            "server_cpu_share": cpu_share(server_pid, cpu0, t0)}


def settle(swarm: Swarm, rate: float, baselines: list[tuple[ServerProcess, int, int]]) -> None:
    """Back to the control clinic alone: each server at its (connections, tasks) level, the last act gone."""
    for _ in range(300):
        levels = [(server.stats(heavy=False), connections, tasks) for server, connections, tasks in baselines]
        if all(stats["connections_open"] == connections and stats["tasks_living"] <= tasks + 5
               for stats, connections, tasks in levels):
            break
        swarm.drive(0.2, rate)
    swarm.drive(2, rate)


def play(act: str, swarm: Swarm, measured: ServerProcess, target: ServerProcess, seconds: float,
         rate: float) -> dict[str, Any]:
    """The control clinic's windows (on ``measured``) before, during and after ``act`` played at ``target``.

    ``target`` is ``measured`` for the real figure, the decoy server for the
    machine's own share of it: the same attacker and a server as busy, but no
    shared loop with the control clinic.
    """
    before = window(swarm, seconds, rate, measured.pid)
    attacker = subprocess.Popen([sys.executable, "-m", "benchmarks._hardening_hostile", "--act", act,
                                 "--url", target.url, "--seconds", str(seconds + 2)], cwd=ROOT)
    swarm.drive(1.0, rate)  # the act gets going
    attacker_cpu0, target_cpu0, t0 = cpu_seconds(attacker.pid), cpu_seconds(target.pid), time.monotonic()
    load = load_average()
    during = window(swarm, seconds, rate, measured.pid)
    attacker_cpu = cpu_share(attacker.pid, attacker_cpu0, t0)
    target_cpu = cpu_share(target.pid, target_cpu0, t0)
    end = time.monotonic() + 60
    while attacker.poll() is None and time.monotonic() < end:
        swarm.drive(0.2, rate)
    if attacker.poll() is None:
        attacker.kill()
        attacker.wait()
    after = window(swarm, seconds / 2, rate, measured.pid)
    ratio = during["p99_ms"] / before["p99_ms"] if before["p99_ms"] else float("nan")
    return {"before": before, "during": during, "after": after, "p99_during_over_before": round(ratio, 2),
            "attacker_cpu_share": attacker_cpu, "target_server_cpu_share": target_cpu,
            "load_average_during": load, "attacker_exit": attacker.returncode}


def measure(acts: list[str], seconds: float, rooms: int, rate: float, decoy: bool = False,
            server_cpu: int | None = None) -> dict[str, Any]:
    raise_nofile(8000)
    out: dict[str, Any] = {"rate_msgs_per_s": rate, "control_rooms": rooms, "seconds": seconds, "acts": {},
                           "load_before": load_average(), "server_cpu": server_cpu}
    if server_cpu is not None:
        # The servers on their core, this process (the control clinic) and the attackers on the others.
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {server_cpu})
    with contextlib.ExitStack() as servers:
        server = servers.enter_context(ServerProcess(nofile=8000, log_level="warning", cpu=server_cpu))
        decoy_server: ServerProcess | None = None
        if decoy:  # a second process, the same settings
            decoy_server = servers.enter_context(
                ServerProcess(nofile=8000, log_level="warning", cpu=server_cpu))
        swarm = Swarm(server.url)
        for r in range(rooms):
            room = f"control-{r}"
            swarm.add(Conn("clinician", room, token=token(room)))
            for i in range(4):
                swarm.add(Conn("patient", room, name=f"Control {r}.{i}"))
        if not swarm.wait_open(60):
            raise SystemExit("the control clinic did not open")
        swarm.drive(2, rate)  # warm-up
        stats = server.stats(heavy=False)
        baselines = [(server, stats["connections_open"], stats["tasks_living"])]
        if decoy_server is not None:
            stats = decoy_server.stats(heavy=False)
            baselines.append((decoy_server, stats["connections_open"], stats["tasks_living"]))
        for act in acts:
            settle(swarm, rate, baselines)
            real = play(act, swarm, server, server, seconds, rate)
            del real["target_server_cpu_share"]  # the during window's server_cpu_share
            stats = server.stats(heavy=False)
            real["server"] = {k: stats[k] for k in ("slow_reader_drops", "rate_limited", "lost_connections",
                                                    "internal_errors", "connections_open")}
            out["acts"][act] = real
            if decoy_server is not None:
                settle(swarm, rate, baselines)
                played = play(act, swarm, server, decoy_server, seconds, rate)
                real["decoy"] = {k: played[k] for k in ("before", "during", "after", "p99_during_over_before",
                                                        "attacker_cpu_share")}
                real["decoy"]["decoy_server_cpu_share"] = played["target_server_cpu_share"]
            print(json.dumps({act: real}), flush=True)
        out["control_errors"] = dict(swarm.tally.errors)
        out["control_closes"] = dict(swarm.tally.closes)
        swarm.close_all()
    out["load_after"] = load_average()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--acts", default=",".join(ACTS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--decoy", action="store_true",
                        help="play every act a second time against a server of its own (the machine's share)")
    parser.add_argument("--server-cpu", type=int, default=None, metavar="N",
                        help="pin the server(s) to core N, everything else to the other cores (Linux)")
    parser.add_argument("--act", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.act is not None:
        run_act(args.act, args.url, args.seconds)
        return 0
    result = measure(args.acts.split(","), args.seconds, args.rooms, args.rate, decoy=args.decoy,
                     server_cpu=args.server_cpu)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
