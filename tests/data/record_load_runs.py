"""Record the small load runs kept as test data for the report tests (tests/test_reports_*.py).

    .venv/bin/python -m tests.data.record_load_runs     # from the project's root

- ``load-small``: the reference server, default SLOs (loadtests/slo.toml), 8 s.
- ``load-same``: the same again (a second sample of the same build: the comparison must call it the same;
  on a machine busy with other work the pair is recorded again, up to ``ATTEMPTS`` times, until it does).
- ``load-slow``: ``loadtests.sink --delay-ms 15`` (every delivery 15 ms late), with ``slow-slo.toml``
  whose p99 threshold it misses, so its SLO table has failures; compared with load-small it is worse,
  and load-small compared with it is better.

Only the files a report reads are kept (summary.json, latency.hlog, timeline.csv, *.hgrm, junit.xml);
absolute paths in them are whatever this machine had, which the reports show but never open.
All traffic goes to 127.0.0.1 and every run is bounded (8 s of load, 120 s in all).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEEP = ("summary.json", "latency.hlog", "timeline.csv", "junit.xml")
COMMON = ("--users", "4", "--rate", "50", "--duration", "8s", "--seed", "7")
ATTEMPTS = 5
SHIPPED_SLO = HERE.parent.parent / "loadtests" / "slo.toml"


def load(out: Path, *args: str) -> None:
    command = [sys.executable, "-m", "queuechat", "load", "--out", str(out), *COMMON, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    print(done.stdout[-600:], done.stderr[-600:])
    if done.returncode not in (0, 1):
        raise SystemExit(f"queuechat load exited {done.returncode}")


def keep(run: Path, name: str) -> None:
    target = HERE / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for path in run.iterdir():
        if path.name in KEEP or path.suffix == ".hgrm":
            shutil.copy2(path, target / path.name)


def same_verdict(out: Path) -> bool:
    from reports import write_comparison

    return write_comparison(HERE / "load-small", HERE / "load-same", out).comparison.verdict == "same"


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        for attempt in range(ATTEMPTS):
            for name in ("small", "same"):
                load(base / f"{name}{attempt}")
                keep(base / f"{name}{attempt}", f"load-{name}")
                shutil.copy2(SHIPPED_SLO, HERE / f"load-{name}" / "slo.toml")
            if same_verdict(base / f"compare{attempt}"):
                break
            print("the two samples of the same build differ beyond the bound (a busy machine?); again")
        sink = subprocess.Popen(
            [sys.executable, "-m", "loadtests.sink", "--port", "0", "--delay-ms", "15"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert sink.stdout is not None
            line = sink.stdout.readline()
            match = re.search(r"ws://\S+", line)
            if not match:
                raise SystemExit(f"the sink did not start: {line!r}")
            load(base / "slow", "--url", match.group(0), "--slo", str(HERE / "slow-slo.toml"))
        finally:
            sink.terminate()
            sink.wait(timeout=10)
        keep(base / "slow", "load-slow")
        shutil.copy2(HERE / "slow-slo.toml", HERE / "load-slow" / "slo.toml")


if __name__ == "__main__":
    main()
