"""How long `queuechat report` takes on a long load run: a synthetic run folder of N minutes
(6 entries, 2 with uncorrected tags, one interval per second, ~R samples per second per message
entry), then the report built from it, timed.

    .venv/bin/python -m benchmarks.report_speed [--minutes 30] [--rate 200]

Prints the seconds for reading + drawing + writing, and the page's size.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from hdrh.histogram import HdrHistogram

from reports import write_load_report

ENTRIES = {
    "patient_to_clinician": True,
    "clinician_to_patient": True,
    "clinician_hello": False,
    "check_in": False,
    "call_start": False,
    "open_chat": False,
}


def synthesize(folder: Path, minutes: int, rate: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    start = 1_795_600_000.0
    seconds = minutes * 60
    lines = [
        "#[Histogram log format version 1.3]",
        f"#[StartTime: {start:.3f} (seconds since epoch)]",
        f"#[BaseTime: {start:.3f} (seconds since epoch)]",
        '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"',
    ]
    counts = dict.fromkeys(ENTRIES, 0)
    for second in range(seconds):
        for entry, uncorrected in ENTRIES.items():
            n = rate if uncorrected else max(1, rate // 50)
            tags = [entry, entry + ".uncorrected"] if uncorrected else [entry]
            for tag in tags:
                histogram = HdrHistogram(1, 3_600_000_000, 3)
                for _ in range(n):
                    histogram.record_value(int(rng.lognormvariate(7, 0.6)) + 1)
                encoded = histogram.encode().decode()
                lines.append(f"Tag={tag},{second:.3f},1.000,{histogram.get_max_value() / 1000:.3f},{encoded}")
            counts[entry] += n
    (folder / "latency.hlog").write_text("\n".join(lines) + "\n")
    rows = ["start_epoch_s,length_s,users,connections,errors,disconnects"]
    rows += [f"{start + s:.3f},1.000,50,150,{1 if rng.random() < 0.01 else 0},0" for s in range(seconds)]
    (folder / "timeline.csv").write_text("\n".join(rows) + "\n")
    summary = {
        "version": 1,
        "run": {
            "started": start,
            "ended": start + seconds,
            "duration_s": seconds,
            "host": "ws://127.0.0.1:8765/v1/ws",
            "users": 50,
            "rate_per_user": 8.0,
            "patients_per_room": 2,
            "text_chars": 64,
            "interval_s": 1.0,
            "role": "local",
            "workers": 0,
        },
        "entries": {e: {"count": counts[e], "errors": 0, "errors_by_code": {}} for e in ENTRIES},
        "errors": {"total": 0, "by_code": {}},
        "disconnects": {"count": 0, "by_close_code": {}},
        "generators": [],
        "validity": {"valid": True, "problems": [], "warnings": []},
        "slo": {"file": None, "passed": True, "results": []},
        "verdict": "pass",
        "exit_code": 0,
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rate", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="qc-report-speed-"))
    try:
        synthesize(folder, args.minutes, args.rate)
        size = (folder / "latency.hlog").stat().st_size
        began = time.perf_counter()
        result = write_load_report(folder, folder / "report")
        took = time.perf_counter() - began
        print(
            f"{args.minutes} min run, {size / 1e6:.1f} MB interval log: report in {took:.2f} s, "
            f"page {result.html.stat().st_size / 1e6:.2f} MB, {len(result.pngs)} charts"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
