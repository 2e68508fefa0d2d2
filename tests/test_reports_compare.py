"""``queuechat report --compare``: the verdict for a same, a worse and a better run (recorded in
tests/data by record_load_runs.py), the exit code, the JUnit XML, the floor and the bounds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from reports import RegressionBounds, ReportError, write_comparison
from reports._compare import IMPROVEMENT, NOT_JUDGED, REGRESSION, SAME, judge
from reports._load_run import EntryFigures, entry_label
from tests.reports_html import external_references, png_pixels, read_page

DATA = Path(__file__).resolve().parent / "data"
SMALL, SAME_AGAIN, SLOW = DATA / "load-small", DATA / "load-same", DATA / "load-slow"


def compare_cli(
    tmp_path: Path, baseline: Path, candidate: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "queuechat",
            "report",
            "--compare",
            str(baseline),
            str(candidate),
            "--out",
            str(tmp_path / "cmp"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def junit(tmp_path: Path) -> ET.Element:
    return ET.parse(tmp_path / "cmp" / "junit.xml").getroot()


@pytest.mark.parametrize(
    ("baseline", "candidate", "verdict", "code", "failures"),
    [
        (SMALL, SAME_AGAIN, "SAME", 0, 0),
        (SMALL, SLOW, "WORSE", 1, 2),  # both message directions regressed by ~15 ms
        (SLOW, SMALL, "BETTER", 0, 0),
    ],
)
def test_the_verdict_and_exit_code_for_a_same_a_worse_and_a_better_run(
    tmp_path: Path, baseline: Path, candidate: Path, verdict: str, code: int, failures: int
) -> None:
    done = compare_cli(tmp_path, baseline, candidate)
    assert done.returncode == code, done.stdout + done.stderr
    assert done.stdout.splitlines()[-4].startswith(f"{verdict}:") or f"\n{verdict}:" in done.stdout
    root = junit(tmp_path)
    assert root.get("failures") == str(failures)
    failed = [case.get("classname") for case in root.iter("testcase") if case.find("failure") is not None]
    if failures:
        assert failed == ["queuechat.compare.patient_to_clinician", "queuechat.compare.clinician_to_patient"]
    reader, text = read_page(tmp_path / "cmp" / "report.html")
    assert f">{verdict}:" in text
    assert external_references(text, reader) == []


def test_the_side_by_side_table_shows_both_figures_and_the_change(tmp_path: Path) -> None:
    result = write_comparison(SMALL, SLOW, tmp_path / "cmp")
    reader, _ = read_page(result.report.html)
    rows = reader.tables["comparison"]
    assert rows[0] == ["what was timed", "figure", "baseline", "candidate", "change", "result"]
    blocks = [row for row in rows[1:] if row[0]]
    assert [row[0] for row in blocks] == [entry_label(e.entry) for e in result.comparison.entries]
    p2c = next(e for e in result.comparison.entries if e.entry == "patient_to_clinician")
    assert p2c.baseline is not None and p2c.candidate is not None
    start = rows.index(next(r for r in rows if r[0] == "Patient to clinician messages"))
    block = {row[1]: row for row in rows[start:start + 6]}
    assert block["samples"][2:4] == [f"{p2c.baseline.count:,}", f"{p2c.candidate.count:,}"]
    assert block["samples"][5].startswith("regression:")
    for figure in ("p50", "p90", "p99", "p99.9", "max"):
        before, after = p2c.baseline.latency[figure], p2c.candidate.latency[figure]
        change = 100 * (after - before) / before
        expected = [f"{before / 1000:,.3f}", f"{after / 1000:,.3f}", f"{change:+.1f} %"]
        assert block[f"{figure} ms"][2:5] == expected
    for path in result.report.pngs:
        assert png_pixels(path).shape[:2] == (420, 900)


def test_a_comparison_with_an_invalid_run_is_inconclusive_exit_3(tmp_path: Path) -> None:
    run = tmp_path / "invalid"
    shutil.copytree(SAME_AGAIN, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["validity"] = {"valid": False, "problems": ["generator local was short of CPU"], "warnings": []}
    (run / "summary.json").write_text(json.dumps(summary))
    done = compare_cli(tmp_path, SMALL, run)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "INCONCLUSIVE: The candidate run is invalid (generator local was short of CPU)." in done.stdout
    assert junit(tmp_path).get("failures") == "1"


def test_a_larger_bound_turns_the_worse_run_into_the_same(tmp_path: Path) -> None:
    done = compare_cli(tmp_path, SMALL, SLOW, "--max-regression", "5000")
    assert done.returncode == 0, done.stdout
    done = compare_cli(tmp_path, SMALL, SLOW, "--floor-ms", "100")
    assert done.returncode == 0, done.stdout


def figures(count: int, p99_us: int) -> EntryFigures:
    return EntryFigures(
        "patient_to_clinician",
        count,
        0,
        {"p50": p99_us // 2, "p90": p99_us, "p99": p99_us, "p99.9": p99_us, "max": p99_us},
        None,
    )


@pytest.mark.parametrize(
    ("before_us", "after_us", "status"),
    [
        (400, 700, SAME),  # +75 % but only 0.3 ms: under the floor, noise
        (10_000, 10_900, SAME),  # +9 %: within the bound
        (10_000, 11_200, REGRESSION),  # +12 % and 1.2 ms
        (10_000, 8_800, IMPROVEMENT),
        (1_000, 2_500, REGRESSION),  # +150 % and 1.5 ms
    ],
)
def test_a_regression_needs_both_the_percentage_and_the_floor(
    before_us: int, after_us: int, status: str
) -> None:
    bounds = RegressionBounds()
    assert (
        judge("patient_to_clinician", figures(500, before_us), figures(500, after_us), bounds).status
        == status
    )


def test_too_few_samples_are_shown_but_not_judged() -> None:
    result = judge("check_in", figures(16, 1_000), figures(16, 90_000), RegressionBounds())
    assert result.status == NOT_JUDGED and "too few samples" in result.reason


@pytest.mark.parametrize(
    "bad", [{"figure": "p42"}, {"max_increase_pct": -1.0}, {"floor_ms": float("nan")}, {"min_samples": 0}]
)
def test_impossible_bounds_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ReportError):
        RegressionBounds(**bad)  # type: ignore[arg-type]


def test_compare_refuses_a_simulation_folder_with_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "sim"
    folder.mkdir()
    (folder / "x-seed1.jsonl").write_text("{}\n")
    done = compare_cli(tmp_path, SMALL, folder)
    assert done.returncode == 2
    assert "--compare takes two load run folders" in done.stderr and "Traceback" not in done.stderr
