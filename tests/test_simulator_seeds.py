"""The reference server keeps every rule the checker knows over 20 seeds of busy_clinic_day.

In CI each seed runs capped at the first 8 virtual minutes (``--duration 8m``: 4 minutes of clinic and
4 of healing, with 96 patients already waiting at opening), about a second each; the full 8-hour days
run in ``benchmarks/simulate_throughput.py --seeds 20``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import structlog

from reference_server._logging import configure_logging
from simulator import load_scenario, run_in_process

CI_DURATION_S = 480.0
SEEDS = range(1, 21)


@pytest.fixture(autouse=True)
def quiet_server_logs() -> Iterator[None]:
    saved = structlog.get_config()
    configure_logging("error")
    yield
    structlog.configure(**saved)


@pytest.mark.parametrize("seed", SEEDS)
def test_busy_clinic_day_has_no_violation(seed: int) -> None:
    scenario = replace(load_scenario("busy_clinic_day"), seed=seed).with_duration(CI_DURATION_S)
    result = run_in_process(scenario, None)
    assert result.summary.complete
    assert result.chat_messages > 1000
    assert result.violations == [], [(v.rule, v.message, v.lines) for v in result.violations[:5]]
