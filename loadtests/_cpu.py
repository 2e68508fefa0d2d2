"""Is the load generator itself short of CPU? Sampled often, judged over the run.

Locust samples its CPU every 10 s, and never fails a run for it; a short
run never even warns. Here each generator process samples its main thread
(where gevent runs every user) every ``sample_s`` (0.5 s by default):

- *CPU*: the time it ran, over wall time;
- *demand*: the time it ran **plus the time it was ready to run but waited
  for a CPU** (Linux ``/proc/self/schedstat``), over wall time. A generator
  that burns a whole core and one that other processes keep off the CPU
  are both short of CPU: either way its timings are not the server's.

A run is invalid when a generator's demand was over ``limit_percent``
(90 %) for a sustained part of it: at least ``sustained_fraction`` (20 %)
of the sampled time, and at least ``min_sustained_s`` (1 s). A single spike
(spawning users, a GC pause) does not invalidate a run. Where schedstat is
missing, demand is the process's CPU time (psutil).

No gevent here: the caller runs :meth:`CpuSampler.sample` on its own timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # psutil ships no type information

DEFAULT_LIMIT_PERCENT = 90.0
DEFAULT_SUSTAINED_FRACTION = 0.2
DEFAULT_MIN_SUSTAINED_S = 1.0
DEFAULT_SAMPLE_S = 0.5
SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _read_schedstat() -> tuple[float, float, int] | None:
    """(seconds on a CPU, seconds waiting in the run queue, times scheduled) of the calling thread."""
    try:
        ran_ns, waited_ns, slices = SCHEDSTAT.read_text().split()
    except (OSError, ValueError):
        return None
    return int(ran_ns) / 1e9, int(waited_ns) / 1e9, int(slices)


class CpuSampler:
    """Samples the calling thread's CPU use and demand: (seconds covered, CPU %, demand %) each time.

    Create it and call :meth:`sample` from the same thread (the gevent hub's).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 read: Callable[[], tuple[float, float, int] | None] | None = None) -> None:
        self._clock = clock
        if read is None:
            read = _read_schedstat if _read_schedstat() is not None else _process_cpu
        self._read = read
        self.samples: list[tuple[float, float, float]] = []
        self.waited_s = 0.0  # in the run queue, over all samples
        self.wakeups = 0  # times the thread was put on a CPU (0 where schedstat is missing)
        self._last_time = clock()
        self._last = self._read() or (0.0, 0.0, 0)

    def sample(self) -> float | None:
        """Take one sample; returns the demand (percent of one core) since the previous one."""
        now, current = self._clock(), self._read()
        elapsed = now - self._last_time
        if elapsed <= 0 or current is None:
            return None
        ran = current[0] - self._last[0]
        waited = current[1] - self._last[1]
        cpu, demand = 100.0 * ran / elapsed, 100.0 * (ran + waited) / elapsed
        self.samples.append((elapsed, cpu, demand))
        self.waited_s += waited
        self.wakeups += current[2] - self._last[2]
        self._last_time, self._last = now, current
        return demand

    @property
    def latest(self) -> float | None:
        return self.samples[-1][2] if self.samples else None

    @property
    def mean_wait_ms(self) -> float | None:
        """How long, on average, the thread waited for a CPU each time it became ready to run.

        Every latency the generator measures includes such a wait at its end; a busy machine
        shows here even when the generator itself needs little CPU.
        """
        return 1000.0 * self.waited_s / self.wakeups if self.wakeups else None


_PROCESS: psutil.Process | None = None


def _process_cpu() -> tuple[float, float, int]:
    global _PROCESS
    if _PROCESS is None:
        _PROCESS = psutil.Process()
    times = _PROCESS.cpu_times()
    return float(times.user + times.system), 0.0, 0


@dataclass(frozen=True)
class CpuVerdict:
    ok: bool
    sampled_s: float
    over_limit_s: float
    max_demand_percent: float
    mean_demand_percent: float
    mean_cpu_percent: float
    samples: int
    limit_percent: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "samples": self.samples,
            "sampled_s": round(self.sampled_s, 3),
            "over_limit_s": round(self.over_limit_s, 3),
            "mean_cpu_percent": round(self.mean_cpu_percent, 1),
            "mean_demand_percent": round(self.mean_demand_percent, 1),
            "max_demand_percent": round(self.max_demand_percent, 1),
            "limit_percent": self.limit_percent,
        }


def assess(samples: Sequence[tuple[float, float, float]], *, limit_percent: float = DEFAULT_LIMIT_PERCENT,
           sustained_fraction: float = DEFAULT_SUSTAINED_FRACTION,
           min_sustained_s: float = DEFAULT_MIN_SUSTAINED_S) -> CpuVerdict:
    """Judge samples of (seconds covered, CPU %, demand %): short of CPU for a sustained part of the run?"""
    sampled = sum(span for span, _, _ in samples)
    over = sum(span for span, _, demand in samples if demand > limit_percent)
    mean_cpu = sum(span * cpu for span, cpu, _ in samples) / sampled if sampled else 0.0
    mean_demand = sum(span * demand for span, _, demand in samples) / sampled if sampled else 0.0
    peak = max((demand for _, _, demand in samples), default=0.0)
    short = over >= min_sustained_s and over >= sustained_fraction * sampled
    return CpuVerdict(ok=not short, sampled_s=sampled, over_limit_s=over, max_demand_percent=peak,
                      mean_demand_percent=mean_demand, mean_cpu_percent=mean_cpu, samples=len(samples),
                      limit_percent=limit_percent)
