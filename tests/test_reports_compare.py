"""``queuechat report --compare``: the verdict for a same, a worse and a better run (recorded in
tests/data by record_load_runs.py), the exit code, the JUnit XML, the floor and the bounds; error and
disconnect rates and the delivered rate judged beside the latencies (errors 0 → 131 is worse, not
better); runs with different settings not comparable (exit 3) unless forced; an invalid or
incomplete run inconclusive (exit 3)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reports import RegressionBounds, ReportError, write_comparison
from reports._compare import (
    IMPROVEMENT,
    NOT_JUDGED,
    REGRESSION,
    SAME,
    judge,
    judge_rate,
    judge_throughput,
)
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


def failed_cases(tmp_path: Path) -> list[str | None]:
    return [case.get("name") for case in junit(tmp_path).iter("testcase") if case.find("failure") is not None]


def edited(tmp_path: Path, source: Path, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of a recorded run with its summary.json changed."""
    run = tmp_path / name
    shutil.copytree(source, run)
    summary = json.loads((run / "summary.json").read_text())
    change(summary)
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_the_same_build_twice_is_the_same_exit_0(tmp_path: Path) -> None:
    done = compare_cli(tmp_path, SMALL, SAME_AGAIN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\nSAME:" in done.stdout
    assert junit(tmp_path).get("failures") == "0"
    reader, text = read_page(tmp_path / "cmp" / "report.html")
    assert ">SAME:" in text
    assert external_references(text, reader) == []


@pytest.mark.parametrize(
    ("baseline", "candidate", "verdict", "code", "failures"),
    [
        (SMALL, SLOW, "worse", 1, 2),  # both message directions regressed by ~15 ms
        (SLOW, SMALL, "better", 0, 0),
    ],
)
def test_forced_the_verdict_and_exit_code_for_a_worse_and_a_better_run(
    tmp_path: Path, baseline: Path, candidate: Path, verdict: str, code: int, failures: int
) -> None:
    """The slow run was made against another server (the sink): judged only when forced, and said so."""
    result = write_comparison(baseline, candidate, tmp_path / "cmp", force=True)
    comparison = result.comparison
    assert (comparison.verdict, comparison.exit_code) == (verdict, code)
    assert "judged with --force although the settings differ: server:" in comparison.headline()
    root = junit(tmp_path)
    assert root.get("failures") == str(failures)
    failed = [case.get("classname") for case in root.iter("testcase") if case.find("failure") is not None]
    if failures:
        assert failed == ["queuechat.compare.patient_to_clinician", "queuechat.compare.clinician_to_patient"]
    reader, text = read_page(result.report.html)
    assert f">{verdict.upper()}:" in text
    assert external_references(text, reader) == []


def test_runs_against_different_servers_are_not_comparable_exit_3(tmp_path: Path) -> None:
    done = compare_cli(tmp_path, SMALL, SLOW)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "NOT COMPARABLE: the runs had different settings: server: reference server started by " in (
        done.stdout
    )
    assert "Give --force to judge them anyway." in done.stdout
    assert failed_cases(tmp_path) == ["both runs had the same settings"]
    _, text = read_page(tmp_path / "cmp" / "report.html")
    assert ">NOT COMPARABLE:" in text


def test_force_on_the_command_line_judges_runs_against_different_servers(tmp_path: Path) -> None:
    done = compare_cli(tmp_path, SMALL, SLOW, "--force")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "WORSE: regressed beyond the bound:" in done.stdout
    assert "judged with --force although the settings differ: server:" in done.stdout


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("users", 8, "users (rooms): 4 → 8"),
        ("rate_per_user", 25.0, "messages/s per room: 12.5 → 25.0"),
        ("patients_per_room", 5, "patients per room: 2 → 5"),
        ("text_chars", 512, "message size (characters): 64 → 512"),
    ],
)
def test_runs_with_other_load_settings_are_not_comparable_unless_forced(
    tmp_path: Path, key: str, value: object, shown: str
) -> None:
    other = edited(tmp_path, SAME_AGAIN, "other", lambda s: s["run"].__setitem__(key, value))
    result = write_comparison(SMALL, other, tmp_path / "cmp")
    assert (result.comparison.verdict, result.comparison.exit_code) == ("not comparable", 3)
    assert shown in result.comparison.headline()
    forced = write_comparison(SMALL, other, tmp_path / "forced", force=True)
    assert forced.comparison.verdict == "same" and forced.comparison.exit_code == 0


def test_errors_from_0_to_131_are_worse_not_better(tmp_path: Path) -> None:
    def add_errors(summary: dict[str, Any]) -> None:
        summary["errors"] = {"total": 131, "by_code": {"rate_limited": 131}}

    assert json.loads((SMALL / "summary.json").read_text())["errors"]["total"] == 0
    candidate = edited(tmp_path, SAME_AGAIN, "errors", add_errors)
    done = compare_cli(tmp_path, SMALL, candidate)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "WORSE: regressed beyond the bound: error rate" in done.stdout
    assert failed_cases(tmp_path) == ["error rate not worse beyond the bound"]


def test_more_disconnects_are_worse(tmp_path: Path) -> None:
    def add_disconnects(summary: dict[str, Any]) -> None:
        summary["disconnects"] = {"count": 3, "by_close_code": {"1011": 3}}

    candidate = edited(tmp_path, SAME_AGAIN, "disconnects", add_disconnects)
    result = write_comparison(SMALL, candidate, tmp_path / "cmp")
    assert result.comparison.verdict == "worse"
    assert "disconnect rate" in result.comparison.headline()


def test_fewer_messages_delivered_per_second_is_worse(tmp_path: Path) -> None:
    """(The recorded pair predates the summary's messages block: each copy is given one.)"""

    def rate(delivered_per_s: float) -> Callable[[dict[str, Any]], None]:
        return lambda summary: summary.__setitem__("messages", {"delivered_per_s": delivered_per_s})

    baseline = edited(tmp_path, SMALL, "base", rate(50.0))
    same = write_comparison(baseline, edited(tmp_path, SAME_AGAIN, "same", rate(48.0)), tmp_path / "same")
    assert same.comparison.verdict == "same"
    candidate = edited(tmp_path, SAME_AGAIN, "slower", rate(25.0))
    result = write_comparison(baseline, candidate, tmp_path / "cmp")
    assert result.comparison.verdict == "worse"
    assert "delivered messages/s" in result.comparison.headline()
    reader, _ = read_page(result.report.html)
    rows = {row[0]: row for row in reader.tables["measures"][1:]}
    assert rows["delivered messages/s"][3].startswith("regression:")


def test_a_comparison_with_an_incomplete_run_is_inconclusive_exit_3(tmp_path: Path) -> None:
    def interrupt(summary: dict[str, Any]) -> None:
        summary["verdict"] = "incomplete"
        problem = "the run was interrupted: its send schedule ran 3.1 s of the planned 8 s"
        summary["validity"] = {"valid": False, "complete": False, "warnings": [], "problems": [problem]}

    candidate = edited(tmp_path, SAME_AGAIN, "incomplete", interrupt)
    done = compare_cli(tmp_path, SMALL, candidate)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "INCONCLUSIVE: The candidate run is incomplete (the run was interrupted" in done.stdout


@pytest.mark.parametrize(
    ("before", "after", "status"),
    [
        (0.0, 0.05, SAME),  # under the floor of 0.1 points
        (0.0, 1.31, REGRESSION),  # from none: any rise past the floor
        (2.0, 2.15, SAME),  # +0.15 points but +7.5 %: within the bound
        (2.0, 3.0, REGRESSION),
        (3.0, 2.0, IMPROVEMENT),
        (None, 1.0, NOT_JUDGED),
    ],
)
def test_an_error_rate_regresses_past_both_the_floor_and_the_bound(
    before: float | None, after: float | None, status: str
) -> None:
    assert judge_rate("error rate", before, after, RegressionBounds()).status == status


@pytest.mark.parametrize(
    ("before", "after", "status"),
    [(100.0, 95.0, SAME), (100.0, 80.0, REGRESSION), (100.0, 120.0, IMPROVEMENT), (None, 80.0, NOT_JUDGED)],
)
def test_the_delivered_rate_regresses_when_it_falls_past_the_bound(
    before: float | None, after: float | None, status: str
) -> None:
    assert judge_throughput(before, after, RegressionBounds()).status == status


def test_the_side_by_side_table_shows_both_figures_and_the_change(tmp_path: Path) -> None:
    result = write_comparison(SMALL, SLOW, tmp_path / "cmp", force=True)
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
    for bounds in (RegressionBounds(max_increase_pct=5000), RegressionBounds(floor_ms=100)):
        result = write_comparison(SMALL, SLOW, tmp_path / "cmp", bounds, force=True)
        assert result.comparison.exit_code == 0, result.comparison.headline()


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
