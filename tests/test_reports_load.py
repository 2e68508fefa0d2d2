"""The load report, built from small recorded runs kept in tests/data (recorded by
tests/data/record_load_runs.py): real charts, a page that needs nothing outside itself, figures equal
to the run's HDR histograms, the SLO table equal to the thresholds, and clear errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram

from formats.hlog import read_interval_log
from reports import ReportError, write_load_report
from reports._mpl import HEIGHT_PX, WIDTH_PX
from tests.reports_html import embedded_pngs, external_references, png_pixels, read_page

DATA = Path(__file__).resolve().parent / "data"
RUNS = ("load-small", "load-slow")
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


@pytest.fixture(scope="module", params=RUNS)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, report folder) for each recorded run, built once per module."""
    run = DATA / request.param
    out = tmp_path_factory.mktemp(request.param)
    write_load_report(run, out)
    return run, out


def hlog_histograms(run: Path) -> dict[str, HdrHistogram]:
    """Tag -> whole-run histogram, from latency.hlog (the figures are then hdrhistogram's own queries)."""
    log = read_interval_log(run / "latency.hlog")
    return {tag: log.whole(tag) for tag in log.tags}


def ms(value_us: int) -> str:
    return f"{value_us / 1000:,.3f}"


def test_every_chart_is_a_png_of_the_report_size_with_varied_pixels(built: tuple[Path, Path]) -> None:
    _, out = built
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3 + 2 * 6  # throughput, users, errors; over time and distribution per entry
    for path in pngs:
        pixels = png_pixels(path)
        assert pixels.shape[:2] == (HEIGHT_PX, WIDTH_PX), path.name
        assert float(pixels[..., :3].std()) > 0.01, f"{path.name} is blank"
        # More than a frame: at least a few percent of the pixels are neither white nor one colour.
        distinct = {tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}
        assert len(distinct) > 8, f"{path.name} has {len(distinct)} colours"


def test_the_page_embeds_exactly_the_pngs_and_references_nothing_outside(built: tuple[Path, Path]) -> None:
    _, out = built
    reader, text = read_page(out / "report.html")
    assert external_references(text, reader) == []
    assert all(src.startswith("data:image/png;base64,") for src in reader.images)
    embedded = embedded_pngs(reader)
    files = [path.read_bytes() for path in sorted(out.glob("*.png"))]
    assert embedded == files  # same charts, same order (files are numbered in page order)
    assert reader.title == "Load test report: message delivery latency"


def test_every_latency_figure_printed_equals_the_hdr_histograms(built: tuple[Path, Path]) -> None:
    run, out = built
    reader, _ = read_page(out / "report.html")
    histograms = hlog_histograms(run)
    summary = json.loads((run / "summary.json").read_text())
    rows = reader.tables["latency"]
    header, body = rows[0], rows[1:]
    assert header[:3] == ["what was timed", "samples", "errors"]
    assert len(body) == len(summary["entries"])
    for row, (entry, recorded) in zip(body, summary["entries"].items(), strict=True):
        histogram = histograms[entry]
        cells = dict(zip(header, row, strict=True))
        assert cells["samples"] == f"{histogram.get_total_count():,}" == f"{recorded['count']:,}"
        for name, percentile in PERCENTILES.items():
            expected = histogram.get_value_at_percentile(percentile)
            assert cells[f"{name} ms"] == ms(expected), (entry, name)
            assert expected == recorded["latency_us"][name]  # and the run's own summary agrees
        assert cells["max ms"] == ms(histogram.get_max_value())
        uncorrected = histograms.get(entry + ".uncorrected")
        if uncorrected is None:
            assert cells["uncorrected p99 ms"] == "n/a"
        else:
            assert cells["uncorrected p99 ms"] == ms(uncorrected.get_value_at_percentile(99.0))


def test_the_slo_table_lists_each_threshold_of_the_slo_file_with_its_result(built: tuple[Path, Path]) -> None:
    run, out = built
    reader, text = read_page(out / "report.html")
    thresholds = tomllib.loads((run / "slo.toml").read_text())
    expected = [(entry, threshold) for entry, items in thresholds.items() for threshold in items]
    rows = reader.tables["slo"][1:]
    assert [(row[0], row[1]) for row in rows] == expected
    results = json.loads((run / "summary.json").read_text())["slo"]["results"]
    for row, result in zip(rows, results, strict=True):
        assert row[2] == result["measured"]
        assert row[3] == ("met" if result["passed"] else "MISSED")
    missed = sum(1 for row in rows if row[3] == "MISSED")
    if missed:
        assert "FAIL: a service-level objective was missed" in text
    else:
        assert "PASS: every service-level objective was met" in text


def test_the_slow_run_misses_its_p99_thresholds_and_the_page_says_so() -> None:
    """Positive control for the SLO table: the recorded slow run (15 ms per delivery) misses p99 < 10 ms."""
    summary = json.loads((DATA / "load-slow" / "summary.json").read_text())
    missed = [r["threshold"] for r in summary["slo"]["results"] if not r["passed"]]
    assert "p(99) < 10ms" in missed


def test_what_was_run_names_the_settings_seed_commit_and_machine(built: tuple[Path, Path]) -> None:
    run, out = built
    _, text = read_page(out / "report.html")
    summary = json.loads((run / "summary.json").read_text())
    meta = summary["meta"]
    assert f"<dt>seed</dt><dd>{meta['command']['seed']}</dd>" in text
    assert f"{meta['cores']} cores" in text
    assert f"Python {meta['python']}" in text
    if meta.get("commit"):
        assert meta["commit"][:12] in text
    assert f"<dt>simulated rooms (users)</dt><dd>{summary['run']['users']}</dd>" in text
    assert "Valid: the load generators had the CPU they needed" in text


def test_an_invalid_run_is_flagged_with_its_reason(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(DATA / "load-small", run)
    summary = json.loads((run / "summary.json").read_text())
    summary["validity"] = {
        "valid": False,
        "problems": ["generator local was short of CPU for 3.0 s"],
        "warnings": [],
    }
    summary["verdict"] = "invalid"
    (run / "summary.json").write_text(json.dumps(summary))
    _, text = read_page(write_load_report(run, tmp_path / "out").html)
    assert "INVALID RUN: the figures cannot be trusted" in text
    assert "generator local was short of CPU for 3.0 s" in text


def test_the_page_shows_planned_sent_and_delivered_messages_per_second(tmp_path: Path) -> None:
    """The slow run was recorded with the summary's messages block (planned / sent / delivered)."""
    messages = json.loads((DATA / "load-slow" / "summary.json").read_text())["messages"]
    _, text = read_page(write_load_report(DATA / "load-slow", tmp_path / "out").html)
    assert (
        f"Message rate: planned {messages['planned_per_s']:,.1f}/s, sent {messages['sent_per_s']:,.1f}/s "
        f"({messages['sent']:,} of {messages['planned']:,} due), delivered "
        f"{messages['delivered_per_s']:,.1f}/s ({messages['delivered']:,})"
    ) in text
    assert "still undelivered after the 3 s drain window" in text


def test_an_incomplete_run_says_so_with_its_planned_and_actual_length(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(DATA / "load-slow", run)
    summary = json.loads((run / "summary.json").read_text())
    said = "the run was interrupted: its send schedule ran 3.2 s of the planned 8 s"
    summary["validity"] = {"valid": False, "complete": False, "problems": [said], "warnings": []}
    summary["verdict"] = "incomplete"
    summary["run"]["duration_s"] = 3.2
    (run / "summary.json").write_text(json.dumps(summary))
    _, text = read_page(write_load_report(run, tmp_path / "out").html)
    assert "INCOMPLETE RUN: it was stopped before its planned end" in text and said in text
    assert "3.2 s of the planned 8.0 s" in text
    assert "PASS" not in text and "Incomplete run" in text


def test_a_run_without_a_timeline_still_reports_and_says_what_is_missing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(DATA / "load-small", run)
    (run / "timeline.csv").unlink()
    result = write_load_report(run, tmp_path / "out")
    reader, text = read_page(result.html)
    assert "This run recorded no timeline (timeline.csv)" in text
    assert "Simulated rooms and open connections" not in text
    with_timeline = write_load_report(DATA / "load-small", tmp_path / "full")
    assert len(result.pngs) == len(with_timeline.pngs) - 2 == len(reader.images)


def test_the_same_run_gives_the_same_page_byte_for_byte(tmp_path: Path) -> None:
    first = write_load_report(DATA / "load-small", tmp_path / "a")
    second = write_load_report(DATA / "load-small", tmp_path / "b")
    assert first.html.read_bytes() == second.html.read_bytes()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda run: (run / "summary.json").unlink(), "has no summary.json"),
        (lambda run: (run / "summary.json").write_text("{not json"), "summary.json: not JSON"),
        (lambda run: (run / "summary.json").write_text('{"version": 99}'), "summary version 99"),
        (
            lambda run: (run / "summary.json").write_text('{"version": 1, "run": {}, "entries": {}}'),
            "missing required field `started` - at `\\$.run`",
        ),
        (lambda run: (run / "latency.hlog").unlink(), "latency.hlog: not found"),
        (lambda run: (run / "latency.hlog").write_text("#[only a comment]\n"), "holds no interval"),
        (
            lambda run: (run / "latency.hlog").write_text("Tag=x,0.0,1.0,1.0,HISTFAAAnotbase64!!\n"),
            "line 1: not an encoded HdrHistogram",
        ),
        (lambda run: (run / "latency.hlog").write_text("Tag=x,0.0,1.0\n"), "line 1: expected"),
        (lambda run: (run / "latency.hlog").write_bytes(b"\xff\xfe"), "cannot be read"),
        (lambda run: (run / "timeline.csv").write_text("a,b\n"), "timeline.csv: line 1: expected the header"),
        (
            lambda run: (run / "timeline.csv").write_text(
                "start_epoch_s,length_s,users,connections,errors,disconnects\n1,1,x,0,0,0\n"
            ),
            "timeline.csv: line 2: a field is not a number",
        ),
    ],
)
def test_bad_input_is_a_report_error_naming_the_file(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    shutil.copytree(DATA / "load-small", run)
    change(run)
    with pytest.raises(ReportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_load_report(run, tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_the_command_writes_the_report_and_exits_0(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "queuechat", "report", str(DATA / "load-small"), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {(tmp_path / 'r' / 'report.html').resolve()}" in done.stdout
    assert (tmp_path / "r" / "report.html").resolve().as_uri() in done.stdout


@pytest.mark.parametrize("target", ["missing-folder", "empty-folder", "not-a-run.txt"])
def test_the_command_refuses_what_is_not_a_run_with_exit_2_and_no_traceback(
    tmp_path: Path, target: str
) -> None:
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "not-a-run.txt").write_text("hello")
    done = subprocess.run(
        [sys.executable, "-m", "queuechat", "report", str(tmp_path / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("queuechat report: ") and str(tmp_path / target) in done.stderr
    assert "Traceback" not in done.stderr


def test_a_demo_folder_gets_both_reports(tmp_path: Path) -> None:
    """`queuechat report` on a `queuechat demo` folder writes the simulation's and the load run's."""
    demo = tmp_path / "demo"
    shutil.copytree(DATA / "load-small", demo / "load")
    shutil.copytree(DATA / "sim-small", demo / "simulation")
    done = subprocess.run([sys.executable, "-m", "queuechat", "report", str(demo)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for part in ("simulation", "load"):
        page = (demo / part / "report" / "report.html").resolve()
        assert page.is_file() and f"wrote {page}" in done.stdout


def test_a_report_written_over_an_older_one_leaves_no_stale_chart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_load_report(DATA / "load-small", out)
    assert len(list(out.glob("*.png"))) == 15
    run = tmp_path / "run"
    shutil.copytree(DATA / "load-small", run)
    (run / "timeline.csv").unlink()  # two charts fewer
    result = write_load_report(run, out)
    assert sorted(out.glob("*.png")) == sorted(result.pngs) and len(result.pngs) == 13
