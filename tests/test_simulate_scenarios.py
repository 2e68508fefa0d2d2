"""Every shipped scenario, short and at full length, against both servers: no violation; and together
they exercise every rule of the contract.

- In process (the reference server, virtual time): each scenario capped at two virtual minutes
  (``--duration 2m``) and at its full length (up to eight virtual hours; the full ones are marked slow).
- Over sockets against the second server (tests/support/second_server.py, written from
  docs/protocol.md alone, taking every freedom the other way): real time is too long for the
  multi-hour scenarios, so these runs are compressed (``run_over_sockets(speed=N)``: every agent's
  delay divided by N; the history's times stay real). The short runs are two scenario minutes at
  speed 10 (demo, 30 s long, whole at speed 3); the full ones run whole at the speed in ``FULL_SPEED``
  (45-60 s each; about seven minutes for this file's slow tests on a shared two-core machine). The
  server's own timers are not compressed, so stall faults no longer outlast its heartbeat there.
  The scenario's own ``[server]`` limits are passed to the second server's flags.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from support.processes import second_server

from reference_server._logging import configure_logging
from simulator import RunResult, Scenario, load_scenario, run_in_process, run_over_sockets
from simulator._checker import CONTRACT_RULES

SHIPPED = ("quiet_morning", "busy_clinic_day", "flaky_network", "refresh_storm", "demo")
SHORT_S = 120.0
# Scenario seconds per real second over sockets, for the whole scenarios (about a minute each on a
# shared two-core machine; faster, the second server answers late enough that causes overlap).
FULL_SPEED = {"quiet_morning": 240.0, "busy_clinic_day": 480.0, "flaky_network": 240.0,
              "refresh_storm": 120.0}
SHORT_SPEED = {"quiet_morning": 10.0, "busy_clinic_day": 10.0, "flaky_network": 10.0, "refresh_storm": 10.0,
               "demo": 3.0}  # demo is 30 s long: its short run is its full run
# The scenario's limits the second server takes as flags (the others keep the contract's defaults).
_LIMIT_FLAGS = ("max_text_chars", "max_frame_bytes", "max_queued_frames", "max_queued_bytes", "rate_per_s",
                "rate_burst", "max_patients_per_room", "ping_interval_s", "ping_timeout_s")


@pytest.fixture(autouse=True)
def quiet_server_logs() -> Iterator[None]:
    saved = structlog.get_config()
    configure_logging("error")
    yield
    structlog.configure(**saved)


def _scenario(name: str, duration_s: float | None) -> Scenario:
    scenario = load_scenario(name)
    return scenario if duration_s is None else scenario.with_duration(duration_s)


@functools.cache
def in_process(name: str, duration_s: float | None) -> RunResult:
    """One in-process run (cached: the coverage test reads the same runs)."""
    return run_in_process(_scenario(name, duration_s), None)


def server_flags(scenario: Scenario) -> dict[str, Any]:
    """The scenario's [server] limits that differ from the contract's defaults, as second-server flags."""
    from reference_server.protocol import Limits

    defaults = Limits().as_wire()
    wire = scenario.limits.as_wire()
    return {name: wire[name] for name in _LIMIT_FLAGS
            if wire[name] != defaults[name] and wire[name] is not None}


def over_second_server(name: str, duration_s: float | None, speed: float, tmp_path: Path) -> RunResult:
    scenario = _scenario(name, duration_s)
    with second_server(**server_flags(scenario)) as url:
        return run_over_sockets(scenario, url, tmp_path / "h.jsonl", speed=speed)


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
    if name != "demo":  # demo's 12 s of healing is too short for its busiest room (and says so)
        assert result.summary.as_dict()["liveness"]["judged"]  # a whole day: long enough to judge


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
@pytest.mark.parametrize("name", SHIPPED)
def test_short_run_against_the_second_server_is_clean(name: str, tmp_path: Path) -> None:
    clean(over_second_server(name, SHORT_S, SHORT_SPEED[name], tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FULL_SPEED))
def test_full_run_against_the_second_server_is_clean(name: str, tmp_path: Path) -> None:
    result = over_second_server(name, None, FULL_SPEED[name], tmp_path)
    clean(result)
    assert result.wall_s < 120.0
