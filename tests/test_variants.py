"""The wire tests catch deliberately wrong models, and blame the right rules.

For each variant in ``variants.py`` this runs ``test_rules_wire.py`` in a
subprocess with ``QUEUECHAT_TEST_VARIANT`` set (the conftest then serves that
model behind the real shell) and checks that

a. the run fails;
b. some failing test is named after a rule the variant breaks
   (``test_R8_...`` for R8; R11b matches ``test_R11b_``; R11 matches every
   ``test_R11...``);
c. every failing test is named after a rule the variant breaks, or is in the
   variant's ``also_fails`` allowance (each entry justified there), and every
   entry of that allowance does fail (no stale allowance).

The runs go in parallel (two per CPU, at least four: a run mostly waits, on
the receive timeouts of the tests the variant fails); each is bounded by a
timeout. Only test names and counts are reported, never frame contents.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from variants import VARIANTS, Variant

ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = "tests/test_rules_wire.py"
RUN_TIMEOUT_S = 150
MIN_TESTS = 50  # a run that collected fewer did not really run the suite
_RULE = re.compile(r"^test_(R\d+[a-z]?)_")


@dataclass(frozen=True)
class Run:
    returncode: int
    tests: int
    failed: frozenset[str]  # test function names (parameters stripped) that failed or errored
    output_tail: str


def _run_variant(name: str) -> Run:
    with tempfile.TemporaryDirectory(prefix="queuechat-variant-") as tmp:
        report = Path(tmp) / "report.xml"
        env = {**os.environ, "QUEUECHAT_TEST_VARIANT": name}
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", RULES_FILE, "-q", "-p", "no:randomly", "--no-header", "-rf",
             f"--junitxml={report}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
        )
        tests, failed = 0, set()
        if report.is_file():
            for case in ElementTree.parse(report).getroot().iter("testcase"):
                tests += 1
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.add(case.get("name", "").split("[", 1)[0])
    return Run(completed.returncode, tests, frozenset(failed), completed.stdout[-2000:])


class _Runner:
    """Starts every selected variant's run at once (bounded pool) and hands out the results."""

    def __init__(self, names: list[str]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(4, 2 * (os.cpu_count() or 1)))
        self._runs: dict[str, Future[Run]] = {name: self._pool.submit(_run_variant, name) for name in names}

    def result(self, name: str) -> Run:
        return self._runs[name].result(timeout=RUN_TIMEOUT_S * len(self._runs))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def runner(request: pytest.FixtureRequest) -> Iterator[_Runner]:
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "module", None) is request.module and hasattr(item, "callspec")]
    runs = _Runner(selected or list(VARIANTS))
    yield runs
    runs.close()


def _names_rule(test: str, broken: str) -> bool:
    match = _RULE.match(test)
    if match is None:
        return False
    rule = match.group(1)
    if rule == broken:
        return True
    return broken[-1].isdigit() and re.fullmatch(re.escape(broken) + "[a-z]", rule) is not None


def test_every_variant_breaks_a_rule_tested_by_name() -> None:
    """Each variant declares broken rules that some test of test_rules_wire.py is named after."""
    source = (ROOT / RULES_FILE).read_text(encoding="utf-8")
    tests = re.findall(r"^async def (test_\w+)\(", source, flags=re.MULTILINE)
    for variant in VARIANTS.values():
        for broken in variant.breaks:
            assert any(_names_rule(test, broken) for test in tests), (variant.name, broken)
        for test in variant.also_fails:
            assert test in tests, (variant.name, test)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_is_caught_by_the_tests_of_the_rules_it_breaks(runner: _Runner, name: str) -> None:
    """The run against the variant fails, in tests named after the rules it breaks (plus its allowance)."""
    variant: Variant = VARIANTS[name]
    run = runner.result(name)
    assert run.returncode == 1 and run.tests >= MIN_TESTS, (
        f"variant {name}: pytest exited {run.returncode} after {run.tests} tests\n{run.output_tail}")
    assert run.failed, f"variant {name} passed every test"
    caught = sorted(t for t in run.failed if any(_names_rule(t, rule) for rule in variant.breaks))
    assert caught, f"variant {name} breaks {variant.breaks} but only these failed: {sorted(run.failed)}"
    unexplained = sorted(t for t in run.failed if t not in caught and t not in variant.also_fails)
    assert unexplained == [], f"variant {name}: failures naming no broken rule: {unexplained}"
    stale = sorted(set(variant.also_fails) - run.failed)
    assert stale == [], f"variant {name}: allowed failures that no longer fail: {stale}"
