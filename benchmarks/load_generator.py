"""How many messages per second one Locust process drives, with full latency recording.

Runs the load test's Locust file (one process, no workers) against the
minimal sink server (``python -m loadtests.sink``), so that the generator,
not the server, is what is measured; each offered rate runs for a while and
the script prints, per rate: messages delivered per second in the steady
intervals (from the run's ``.hlog``), the generator's CPU (its own
sampler), the sink's CPU, and the delivery latencies (corrected and
uncorrected). A generator keeps up while the delivered rate matches the
offered one and its CPU stays under 90 %.

    .venv/bin/python -m benchmarks.load_generator --rates 2000,4000,8000 --duration 10

Figures go in ``benchmarks/README.md``; nothing here is asserted by tests.
Loopback only; every run is bounded by ``--duration`` plus a grace period.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # psutil ships no type information

from formats.hlog import HLOG_FILE, MESSAGE_ENTRIES, read_interval_log
from formats.summary import SUMMARY_FILE
from queuechat.children import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def start_sink() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(die_with_parent([sys.executable, "-m", "loadtests.sink", "--port", "0"]),
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"ready on (\S+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"the sink did not start: {line!r}")
    return process, match.group(1)


def steady_rate(hlog: Path) -> float:
    """Deliveries per second over the whole intervals, leaving out the first and the last."""
    per_interval: dict[float, int] = {}
    log = read_interval_log(hlog)
    for tag in MESSAGE_ENTRIES:
        for interval in log.tags.get(tag, ()):
            if abs(interval.length_s - 1.0) < 1e-6:
                per_interval[interval.start_s] = per_interval.get(interval.start_s, 0) + interval.count
    starts = sorted(per_interval)[1:-1]
    return sum(per_interval[s] for s in starts) / len(starts) if starts else 0.0


def run_rate(url: str, sink: psutil.Process, *, rate: float, users: int, duration: int,
             backend: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="qc-bench-") as tmp:
        out = Path(tmp)
        env = dict(os.environ, GEVENT_BACKEND=backend, PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
                   "-u", str(users), "-r", str(users), "-t", f"{duration}s", "--stop-timeout", "0",
                   "--only-summary", "--qc-rate", repr(rate / users), "--qc-out", str(out),
                   "--qc-progress", "0", "--qc-action-interval", "2"]
        sink_cpu: list[float] = []
        stop = threading.Event()

        def sample_sink() -> None:
            sink.cpu_percent(None)
            while not stop.wait(0.5):
                sink_cpu.append(sink.cpu_percent(None))

        sampler = threading.Thread(target=sample_sink, daemon=True)
        sampler.start()
        try:
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                           timeout=duration + 90, cwd=ROOT, check=False)
        finally:
            stop.set()
            sampler.join()
        summary = json.loads((out / SUMMARY_FILE).read_text())
        p2c = summary["entries"]["patient_to_clinician"]
        c2p = summary["entries"]["clinician_to_patient"]
        cpu = summary["generators"][0]["cpu"]
        steady = sink_cpu[2:-2] or sink_cpu
        return {
            "offered": rate,
            "delivered_per_s": round(steady_rate(out / HLOG_FILE)),
            "generator_cpu_mean": cpu["mean_cpu_percent"],
            "generator_demand_max": cpu["max_demand_percent"],
            "sink_cpu_mean": round(sum(steady) / len(steady), 1) if steady else None,
            "p50_ms": round(max(p2c["latency_us"]["p50"], c2p["latency_us"]["p50"]) / 1000, 2),
            "p99_ms": round(max(p2c["latency_us"]["p99"], c2p["latency_us"]["p99"]) / 1000, 2),
            "p99_uncorrected_ms": round(max(p2c["uncorrected_latency_us"]["p99"],
                                            c2p["uncorrected_latency_us"]["p99"]) / 1000, 2),
            "errors": summary["errors"]["total"],
            "valid": summary["validity"]["valid"],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,4000,6000,8000,10000",
                        help="offered messages per second, comma-separated")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration", type=int, default=10, help="seconds per rate")
    parser.add_argument("--backend", default="epoll", help="gevent's libev backend (GEVENT_BACKEND)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    sink_process, url = start_sink()
    try:
        sink = psutil.Process(sink_process.pid)
        print(f"# load average before: {os.getloadavg()[0]:.2f}; {psutil.cpu_count()} CPUs; "
              f"backend {args.backend}; {args.users} users; {args.duration} s per rate", flush=True)
        print("| offered msgs/s | delivered msgs/s | generator CPU mean (demand max) | CPU µs per msg "
              "| sink CPU | p50 ms | p99 ms | p99 uncorrected ms | errors | valid |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for rate in rates:
            row = run_rate(url, sink, rate=rate, users=args.users, duration=args.duration,
                           backend=args.backend)
            delivered = float(str(row["delivered_per_s"]))
            per_message = float(str(row["generator_cpu_mean"])) * 10_000 / delivered if delivered else 0.0
            print(f"| {row['offered']:.0f} | {row['delivered_per_s']} | {row['generator_cpu_mean']} % "
                  f"({row['generator_demand_max']} %) | {per_message:.0f} | {row['sink_cpu_mean']} % | "
                  f"{row['p50_ms']} | "
                  f"{row['p99_ms']} "
                  f"| {row['p99_uncorrected_ms']} | {row['errors']} | {row['valid']} |", flush=True)
            time.sleep(1.0)
    finally:
        sink_process.terminate()
        sink_process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
