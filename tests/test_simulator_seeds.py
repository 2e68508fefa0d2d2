"""The reference server keeps every rule the checker knows over 20 seeds of busy_clinic_day.

Each seed runs capped at the first 8 virtual minutes (``--duration 8m``: 4 minutes of clinic and 4 of
healing, with 96 patients already waiting at opening), two to three seconds each: seeds 1-10 in the
default run (CI), seeds 11-20 under the ``long`` marker (``QUEUECHAT_LONG_TESTS=1``); the full 8-hour
days run in ``python -m benchmarks.simulate_throughput --seeds 20``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from simulator import load_scenario, run_in_process
from tests.support.long import LONG_ONLY

CI_DURATION_S = 480.0
SEEDS = [*range(1, 11), *(pytest.param(seed, marks=LONG_ONLY) for seed in range(11, 21))]


pytestmark = pytest.mark.usefixtures("quiet_server_logs")


@pytest.mark.parametrize("seed", SEEDS)
def test_busy_clinic_day_has_no_violation(seed: int) -> None:
    scenario = replace(load_scenario("busy_clinic_day"), seed=seed).with_duration(CI_DURATION_S)
    result = run_in_process(scenario, None)
    assert result.summary.complete
    assert result.chat_messages > 1000
    assert result.violations == [], [(v.rule, v.message, v.lines) for v in result.violations[:5]]
