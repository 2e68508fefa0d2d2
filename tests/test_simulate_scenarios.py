"""Every shipped scenario, short and at full length, against both servers: no violation; and together
they exercise every rule of the contract.

- In process (the reference server, virtual time): each scenario capped at two virtual minutes
  (``--duration 2m``) and at its full length (up to eight virtual hours; the full ones are marked slow).
- Over sockets against the second server (tests/support/second_server.py, written from
  docs/protocol.md alone, taking every freedom the other way): real time is too long for the
  multi-hour scenarios, so these runs are compressed (``run_over_sockets(speed=N)``: every agent's
  delay divided by N; the history's times stay real). The short runs are two scenario minutes at
  speed 20 (demo, 30 s long, whole at speed 3), two at a time in worker processes (about 25 s for
  all five); the one whole scenario in the default run is quiet_morning (3 hours) at speed 480, about
  25 s. The server's own timers are not compressed, so stall faults no longer outlast its heartbeat
  there. The scenario's own ``[server]`` limits are passed to the second server's flags.
- Under the ``long`` marker (skipped unless ``QUEUECHAT_LONG_TESTS=1``): the other scenarios whole
  against the second server (busy_clinic_day at 480x, flaky_network at 240x, refresh_storm at 120x:
  about a minute each).
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from reference_server._logging import configure_logging
from simulator import RunResult, Scenario, load_scenario, run_in_process, run_over_sockets
from simulator._checker import CONTRACT_RULES
from tests.support.long import LONG, long_test
from tests.support.processes import second_server

SHIPPED = ("quiet_morning", "busy_clinic_day", "flaky_network", "refresh_storm", "demo")
SHORT_S = 120.0
# Scenario seconds per real second over sockets, for the whole scenarios (under a minute each on a
# shared two-core machine; faster, the second server answers late enough that causes overlap).
FULL_SPEED = {"quiet_morning": 480.0, "busy_clinic_day": 480.0, "flaky_network": 240.0,
              "refresh_storm": 120.0}
FULL_IN_CI = "quiet_morning"  # the cheapest whole scenario; the others only under `long`
SHORT_SPEED = {"quiet_morning": 20.0, "busy_clinic_day": 20.0, "flaky_network": 20.0, "refresh_storm": 20.0,
               "demo": 3.0}  # demo is 30 s long: its short run is its full run
# in-process runs split among processes (a speed setting only: the same history for every --jobs)
JOBS = {"busy_clinic_day": 2}
# The scenario's limits the second server takes as flags (the others keep the contract's defaults).
_LIMIT_FLAGS = ("max_text_chars", "max_frame_bytes", "max_queued_frames", "max_queued_bytes", "rate_per_s",
                "rate_burst", "max_patients_per_room", "ping_interval_s", "ping_timeout_s")


pytestmark = pytest.mark.usefixtures("quiet_server_logs")


def _scenario(name: str, duration_s: float | None) -> Scenario:
    scenario = load_scenario(name)
    return scenario if duration_s is None else scenario.with_duration(duration_s)


@functools.cache
def in_process(name: str, duration_s: float | None) -> RunResult:
    """One in-process run (cached: the coverage test reads the same runs)."""
    jobs = JOBS.get(name, 1) if duration_s is None else 1
    return run_in_process(_scenario(name, duration_s), None, jobs=jobs)


def server_flags(scenario: Scenario) -> dict[str, Any]:
    """The scenario's [server] limits that differ from the contract's defaults, as second-server flags."""
    from reference_server.protocol import Limits

    defaults = Limits().as_wire()
    wire = scenario.limits.as_wire()
    return {name: wire[name] for name in _LIMIT_FLAGS
            if wire[name] != defaults[name] and wire[name] is not None}


def over_second_server(name: str, duration_s: float | None, speed: float, folder: str) -> RunResult:
    """One second server (with the scenario's limits) and one simulation against it."""
    configure_logging("error")
    scenario = _scenario(name, duration_s)
    history = Path(folder) / f"{name}-{duration_s}.jsonl"
    with second_server(**server_flags(scenario)) as url:
        result = run_over_sockets(scenario, url, history, speed=speed)
    history.unlink(missing_ok=True)
    return result


@pytest.fixture(scope="module", autouse=True)
def socket_runs(request: pytest.FixtureRequest) -> Iterator[dict[tuple[str, str], Future[Any]]]:
    """This module's selected runs against the second server, two at a time in worker processes
    (each its own server and simulation), longest first. Started with the module's first test: they
    mostly wait for real time, so they run beside the in-process (CPU-bound) ones."""
    wanted: dict[tuple[str, str], tuple[str, float | None, float]] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is not request.module or callspec is None or "length" not in callspec.params:
            continue
        if item.get_closest_marker("long") and not LONG:
            continue
        name, length = callspec.params["name"], callspec.params["length"]
        wanted[(name, length)] = ((name, SHORT_S, SHORT_SPEED[name]) if length == "short"
                                  else (name, None, FULL_SPEED[name]))
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="queuechat-second-") as folder, \
            concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = {key: pool.submit(over_second_server, *spec, folder)
                   for key, spec in sorted(wanted.items(), key=lambda kv: kv[0][1] != "full")}
        yield futures
        for future in futures.values():
            future.cancel()


def clean(result: RunResult) -> None:
    assert result.outcome == "complete", result.reason
    assert result.summary.complete
    assert result.violations == [], [(v.rule, v.message, v.lines[:4]) for v in result.violations[:5]]
    assert result.chat_messages > 0


# --------------------------------------------------------------------------- in process


@pytest.mark.parametrize("name", SHIPPED)
def test_short_run_in_process_is_clean(name: str) -> None:
    clean(in_process(name, SHORT_S))


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_full_run_in_process_is_clean(name: str) -> None:
    result = in_process(name, None)
    clean(result)
    # a whole day is long enough to judge liveness, and so are demo's 15 s of healing (its busiest room)
    assert result.summary.as_dict()["liveness"]["judged"], result.summary.as_dict()["liveness"]


def test_short_runs_together_exercise_every_rule() -> None:
    """Two virtual minutes of each shipped scenario: every rule of the contract is put to the test at
    least once (R42 and R45 by flaky_network's slow readers and stalls, R44 by refresh_storm's full
    room 1, R9/R13 by the clinicians' last words, R41/R43 by their one-off probes, R46 by the
    in-process server's shutdown)."""
    totals = dict.fromkeys(CONTRACT_RULES, 0)
    for name in SHIPPED:
        for rule, count in in_process(name, SHORT_S).summary.as_dict()["exercised"].items():
            totals[rule] += count
    assert [rule for rule, count in totals.items() if not count] == [], totals


@pytest.mark.slow
def test_full_runs_together_exercise_every_rule() -> None:
    totals = dict.fromkeys(CONTRACT_RULES, 0)
    for name in SHIPPED:
        for rule, count in in_process(name, None).summary.as_dict()["exercised"].items():
            totals[rule] += count
    assert [rule for rule, count in totals.items() if not count] == [], totals


# --------------------------------------------------------------------------- the second server


@pytest.mark.slow
@pytest.mark.parametrize("length", ["short"])
@pytest.mark.parametrize("name", SHIPPED)
def test_short_run_against_the_second_server_is_clean(socket_runs: Any, name: str, length: str) -> None:
    clean(socket_runs[(name, length)].result(timeout=300))


def _full(socket_runs: Any, name: str, length: str) -> None:
    result = socket_runs[(name, length)].result(timeout=600)
    clean(result)
    assert result.summary.as_dict()["liveness"]["judged"]
    assert result.wall_s < 120.0


@pytest.mark.slow
@pytest.mark.parametrize("length", ["full"])
@pytest.mark.parametrize("name", [FULL_IN_CI])
def test_full_run_against_the_second_server_is_clean(socket_runs: Any, name: str, length: str) -> None:
    _full(socket_runs, name, length)


@long_test
@pytest.mark.parametrize("length", ["full"])
@pytest.mark.parametrize("name", sorted(set(FULL_SPEED) - {FULL_IN_CI}))
def test_full_run_against_the_second_server_is_clean_long(socket_runs: Any, name: str, length: str) -> None:
    _full(socket_runs, name, length)
