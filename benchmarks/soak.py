"""Soak: a steady clinic for a long time; memory, connections and p99 over time; nothing may grow.

    .venv/bin/python -m benchmarks.soak                         # 30 minutes, samples every 30 s
    .venv/bin/python -m benchmarks.soak --minutes 0.3 --sample-s 3 --rooms 5 --json out.json   # (CI)

The reference server runs in a process of its own (``tests/support/server_runner.py``, the
contract's default limits: rate limit, heartbeat every 20 s). The clinic is one
epoll loop in this process (``benchmarks/_hardening_swarm.py``): ``--rooms`` rooms, each with
a clinician and ``--patients`` patients, and a steady ``--rate`` messages a second
both ways. Every second, at random: a patient leaves and another checks in; a
clinician opens a chat, minimizes or closes it (erasures, R11), starts a call or
ends it (the patient departs and another takes their place), or refreshes the
page (R12: the connection closes and a new one says hello).

Every ``--sample-s`` seconds a row: the server's RSS, its live Python objects
(after a full collection), its connections, sessions, present patients, active
rooms and Trio tasks, and the delivery latency (p50/p99/max) of the window, with
the machine's load average. At the end, the verdict: over the second half of the
run, the least-squares slope of RSS and of live objects, and whether the
connection and session counts held their level.
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
from tests.support.server_process import ServerProcess, cpu_seconds, load_average

EXPECTED_RACES = {"patient_gone", "not_found", "not_in_call", "call_in_progress", "chat_disabled"}


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    if var == 0:
        return 0.0
    return sum((p[0] - mx) * (p[1] - my) for p in points) / var * 60


class Clinic:
    def __init__(self, swarm: Swarm, rooms: int, patients: int) -> None:
        self.swarm = swarm
        self.rooms = [f"soak-{i}" for i in range(rooms)]
        self.patients = patients
        self.calls: dict[str, str | None] = dict.fromkeys(self.rooms)
        self.clinician_of: dict[str, Conn] = {}
        self.serial = 0
        self.closing = False
        self.churn: dict[str, int] = dict.fromkeys(
            ["left", "joined", "refresh", "call_started", "call_ended", "open_chat", "close_chat",
             "minimize_chat"], 0)

    def open(self) -> None:
        for room in self.rooms:
            self.new_clinician(room)
            for _ in range(self.patients):
                self.new_patient(room)

    def new_patient(self, room: str) -> None:
        self.serial += 1
        conn = self.swarm.add(Conn("patient", room, name=f"Soak {self.serial}"))
        conn.on_close = self._patient_closed

    def new_clinician(self, room: str) -> None:
        conn = self.swarm.add(Conn("clinician", room, token=clinician_token(DEVELOPMENT_SECRET, room)))
        self.clinician_of[room] = conn

    def _patient_closed(self, conn: Conn, code: int | None) -> None:
        if self.calls.get(conn.room) == conn.patient_id:
            self.calls[conn.room] = None
        if self.closing:
            return
        self.churn["joined"] += 1
        self.new_patient(conn.room)  # the waiting room stays as full

    def tick(self) -> None:
        """Once a second: some of the clinic's comings and goings."""
        swarm, rng = self.swarm, self.swarm.rng
        for _ in range(max(1, len(self.rooms) // 5)):
            room = rng.choice(self.rooms)
            clinician = self.clinician_of[room]
            patients = [c for c in swarm.open_patients if c.room == room]
            action = rng.random()
            if action < 0.3 and patients:
                swarm.send(rng.choice(patients), {"type": "leave"})
                self.churn["left"] += 1
            elif clinician.state != "open" or not clinician.patients:
                continue
            elif action < 0.5:
                swarm.send(clinician, {"type": "open_chat", "patient": rng.choice(clinician.patients)})
                self.churn["open_chat"] += 1
            elif action < 0.6:
                swarm.send(clinician, {"type": "close_chat"})
                self.churn["close_chat"] += 1
            elif action < 0.65:
                swarm.send(clinician, {"type": "minimize_chat"})
                self.churn["minimize_chat"] += 1
            elif action < 0.8:
                if self.calls[room] is None:
                    pid = rng.choice(clinician.patients)
                    swarm.send(clinician, {"type": "start_call", "patient": pid})
                    self.calls[room] = pid
                    self.churn["call_started"] += 1
                else:
                    swarm.send(clinician, {"type": "end_call"})
                    self.churn["call_ended"] += 1
            elif action < 0.85:
                swarm.close(clinician)  # the page is refreshed (R12)
                self.new_clinician(room)
                self.churn["refresh"] += 1


def run(minutes: float, sample_s: float, rooms: int, patients: int, rate: float) -> dict[str, Any]:
    raise_nofile(rooms * (patients + 1) * 2 + 500)
    result: dict[str, Any] = {"minutes": minutes, "rooms": rooms, "patients_per_room": patients,
                              "rate_msgs_per_s": rate, "samples": []}
    with ServerProcess(log_level="warning") as server:
        first = server.stats()
        result["before_open"] = {"tasks": first["tasks_living"], "python_objects": first["gc_objects"],
                                 "server_rss_mib": round(first["rss"] / 2**20, 2)}
        swarm = Swarm(server.url)
        clinic = Clinic(swarm, rooms, patients)
        clinic.open()
        if not swarm.wait_open(120):
            raise SystemExit("the clinic did not open")
        start = time.monotonic()
        duration = minutes * 60
        next_tick, next_sample = 1.0, sample_s
        cpu0, cpu_t0 = cpu_seconds(server.pid), time.monotonic()
        sent0 = swarm.tally.sent

        def tick(_elapsed: float) -> None:
            nonlocal next_tick, next_sample, cpu0, cpu_t0, sent0
            t = time.monotonic() - start
            if t >= next_tick:
                next_tick += 1.0
                clinic.tick()
            if t >= next_sample:
                next_sample += sample_s
                stats = server.stats()
                lat = swarm.tally.latencies_ms
                cpu = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - cpu_t0)
                row = {
                    "t_s": round(t),
                    "server_rss_mib": round(stats["rss"] / 2**20, 2),
                    "python_objects": stats["gc_objects"],
                    "connections": stats["connections_open"],
                    "sessions": stats["model"]["sessions"],
                    "patients_present": stats["model"]["patients_present"],
                    "rooms_active": stats["model"]["rooms_active"],
                    "rooms_idle": stats["model"]["rooms_idle"],
                    "tasks": stats["tasks_living"],
                    "deliveries": len(lat),
                    "msgs_per_s": round((swarm.tally.sent - sent0) / sample_s),
                    "p50_ms": round(percentile(lat, 50), 2),
                    "p99_ms": round(percentile(lat, 99), 2),
                    "max_ms": round(max(lat), 2) if lat else None,
                    "server_cpu_share": round(cpu, 3),
                    "load_average": [round(x, 2) for x in load_average()],
                }
                lat.clear()
                sent0 = swarm.tally.sent
                cpu0, cpu_t0 = cpu_seconds(server.pid), time.monotonic()
                result["samples"].append(row)
                print(json.dumps(row), flush=True)

        swarm.drive(duration, rate, tick=tick)
        final = server.stats()
        result["internal_errors"] = final["internal_errors"]
        result["slow_reader_drops"] = final["slow_reader_drops"]
        result["lost_connections"] = final["lost_connections"]
        result["churn"] = clinic.churn
        result["errors_by_code"] = dict(swarm.tally.errors)
        result["unexpected_errors"] = {k: v for k, v in swarm.tally.errors.items() if k not in EXPECTED_RACES}
        result["closes_seen_by_clients"] = dict(swarm.tally.closes)
        clinic.closing = True
        swarm.close_all()
        for _ in range(400):
            if server.stats(heavy=False)["connections_open"] == 0:
                break
            time.sleep(0.05)
        time.sleep(1.5)  # the last connections' tasks end (bounded, once)
        end = server.stats()
        result["after_close"] = {"connections": end["connections_open"], "sessions": end["model"]["sessions"],
                                 "patients_present": end["model"]["patients_present"],
                                 "rooms_active": end["model"]["rooms_active"], "tasks": end["tasks_living"],
                                 "python_objects": end["gc_objects"],
                                 "server_rss_mib": round(end["rss"] / 2**20, 2)}
    samples = result["samples"]
    half = samples[len(samples) // 2:]
    result["verdict"] = {
        "rss_slope_kib_per_min_second_half": round(
            slope_per_minute([(s["t_s"], s["server_rss_mib"] * 1024) for s in half]), 1),
        "objects_slope_per_min_second_half": round(
            slope_per_minute([(s["t_s"], s["python_objects"]) for s in half]), 1),
        "connections_range": [min(s["connections"] for s in samples), max(s["connections"] for s in samples)]
        if samples else None,
        "sessions_range": [min(s["sessions"] for s in samples), max(s["sessions"] for s in samples)]
        if samples else None,
        "p99_ms_range": [min(s["p99_ms"] for s in samples), max(s["p99_ms"] for s in samples)]
        if samples else None,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--rooms", type=int, default=40)
    parser.add_argument("--patients", type=int, default=12, help="patients kept in each room")
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second in all")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.minutes, args.sample_s, args.rooms, args.patients, args.rate)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["internal_errors"] == 0 and not result["unexpected_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
