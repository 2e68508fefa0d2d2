"""The load test's parts that need no Locust process: SLO thresholds, HDR recording and merging,
the interval log and the timeline, run metadata, the CPU judgement, JUnit XML, the ``queuechat load``
option checks, seeds, import rules.

Everything here runs in the test process (no gevent is imported: these modules do not need it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from hdrh.log import HistogramLogReader  # type: ignore[import-untyped]

from formats.hlog import (
    CHECK_IN,
    CLINICIAN_TO_PATIENT,
    PATIENT_TO_CLINICIAN,
    decode,
    new_histogram,
    read_interval_log,
    value_at_percentiles,
)
from formats.timeline import CONNECTIONS, TIMELINE_HEADER, USERS
from loadtests._cpu import CpuSampler, assess
from loadtests._hdr import Collector, Recorder, mean_and_stddev, reset, summarize
from loadtests._meta import environment, git_state
from loadtests._report import EXIT_INVALID, EXIT_PASS, EXIT_SLO_BREACH, build, format_summary, write
from loadtests._settings import PATIENT_NAME, TEXT_MARK, Settings, user_random
from loadtests._slo import EntryResult, SloError, evaluate, junit_xml, load_thresholds, parse_expression
from queuechat.cli import main as cli_main

PROJECT = Path(__file__).resolve().parent.parent
SHIPPED_SLO = PROJECT / "loadtests" / "slo.toml"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- SLO thresholds


def test_k6_style_expressions_parse_with_units() -> None:
    """p(N) with us/ms/s (a bare number is ms, as in k6), counts, error rates in % or fractions."""
    assert parse_expression("patient_to_clinician", "p(99) < 50ms").value == 50_000
    assert parse_expression("patient_to_clinician", "p(99.9)<=2s").value == 2_000_000
    assert parse_expression("patient_to_clinician", "p(50) < 700us").value == 700
    assert parse_expression("patient_to_clinician", "med < 3").value == 3_000
    assert parse_expression("open_chat", "error_rate < 1%").value == pytest.approx(0.01)
    assert parse_expression("open_chat", "errors == 0").aggregate == "errors"
    assert parse_expression("disconnects", "count == 0").aggregate == "count"
    assert parse_expression("clinician_to_patient", "uncorrected_p(99) < 20ms").aggregate == "uncorrected_p"


@pytest.mark.parametrize(("entry", "expression", "says"), [
    ("patient_to_clinician", "p99 < 50ms", "unknown aggregate"),
    ("patient_to_clinician", "p(101) < 50ms", "(0, 100]"),
    ("patient_to_clinician", "p(99) ~ 50ms", "cannot read"),
    ("patient_to_clinician", "p(99) < 5%", "us, ms or s"),
    ("errors", "p(99) < 5ms", "is a count"),
    ("open_chat", "errors < 3ms", "no time unit"),
    ("check_in", "uncorrected_p(99) < 5ms", "only message delivery"),
])
def test_bad_expressions_are_refused_with_a_reason(entry: str, expression: str, says: str) -> None:
    with pytest.raises(SloError, match=None) as caught:
        parse_expression(entry, expression)
    assert says in str(caught.value)
    assert entry in str(caught.value)


def test_the_shipped_slo_file_parses(tmp_path: Path) -> None:
    thresholds = load_thresholds(SHIPPED_SLO)
    entries = {t.entry for t in thresholds}
    assert entries >= {PATIENT_TO_CLINICIAN, CLINICIAN_TO_PATIENT, "errors", "disconnects"}


def test_slo_file_problems_name_the_file_and_the_entry(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text('"patient_to_doctor" = ["p(99) < 50ms"]\n')
    with pytest.raises(SloError, match="patient_to_doctor"):
        load_thresholds(bad_key)
    not_toml = tmp_path / "not.toml"
    not_toml.write_text("this is = = not toml\n")
    with pytest.raises(SloError, match="not valid TOML"):
        load_thresholds(not_toml)
    with pytest.raises(SloError, match="cannot read SLO file"):
        load_thresholds(tmp_path / "missing.toml")


def _histogram(values: list[int]) -> HdrHistogram:
    histogram = new_histogram()
    for value in values:
        histogram.record_value(value)
    return histogram


def test_a_breach_names_the_threshold_and_the_measured_value() -> None:
    latency = _histogram([1_000] * 98 + [80_000] * 2)
    results = evaluate(
        [parse_expression(PATIENT_TO_CLINICIAN, "p(99) < 50ms"),
         parse_expression(PATIENT_TO_CLINICIAN, "p(50) < 2ms"),
         parse_expression(PATIENT_TO_CLINICIAN, "errors == 0"), parse_expression(CHECK_IN, "p(99) < 1s")],
        {PATIENT_TO_CLINICIAN: EntryResult(count=100, errors=1, latency=latency)},
    )
    p99, p50, errors, check_in = results
    assert not p99.passed
    assert p99.message == "patient_to_clinician: p(99) < 50ms FAILED (measured 80.063ms)"
    assert p50.passed and p50.measured == "1.000ms"
    assert not errors.passed and errors.measured == "1"
    assert not check_in.passed and check_in.measured == "no samples"  # nothing measured is no pass


def test_junit_xml_has_a_case_per_threshold_and_one_for_validity() -> None:
    latency = _histogram([1_000] * 10)
    results = evaluate([parse_expression(PATIENT_TO_CLINICIAN, "p(99) < 0.5ms"),
                        parse_expression(PATIENT_TO_CLINICIAN, "count > 0")],
                       {PATIENT_TO_CLINICIAN: EntryResult(count=10, errors=0, latency=latency)})
    root = ET.fromstring(junit_xml(results, validity_problems=["generator short of CPU"], duration_s=3.0))
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "1"
    failures = suite.findall("testcase/failure")
    assert len(failures) == 1
    assert "measured 1.000ms" in (failures[0].get("message") or "")
    assert "short of CPU" in (suite.find("testcase/error").get("message") or "")  # type: ignore[union-attr]


# --------------------------------------------------------------------------- HDR recording and merging


def test_fast_statistics_equal_hdrhistograms_own() -> None:
    """Mean, deviation, percentiles and reset give what hdrhistogram's slow versions give."""
    rng = random.Random(7)
    histogram = _histogram([int(rng.lognormvariate(7, 1.5)) for _ in range(5_000)])
    mean, stddev = mean_and_stddev(histogram)
    assert mean == pytest.approx(histogram.get_mean_value())
    assert stddev == pytest.approx(histogram.get_stddev())
    wanted = (0.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0)
    assert value_at_percentiles(histogram, wanted) == [histogram.get_value_at_percentile(p) for p in wanted]
    decoded = decode(histogram.encode())
    assert value_at_percentiles(decoded, wanted) == value_at_percentiles(histogram, wanted)
    reset(histogram)
    assert histogram.get_total_count() == 0 and sum(histogram.counts) == 0 and histogram.get_max_value() == 0


def test_recorder_ships_wall_clock_intervals_that_add_up_to_the_whole_run() -> None:
    clock = FakeClock(1_000_000.0)
    recorder = Recorder(interval_s=1.0, clock=clock)
    recorder.record(PATIENT_TO_CLINICIAN, 1_500, 1_200)
    recorder.record(CHECK_IN, 9_000)
    clock.now += 1.0
    recorder.record(PATIENT_TO_CLINICIAN, 2_500, 2_000)
    recorder.error(PATIENT_TO_CLINICIAN, "rate_limited")
    recorder.disconnect(1008)
    first = recorder.drain()
    assert [(i["entry"], i["start"], i["count"]) for i in first["intervals"]] == [
        (PATIENT_TO_CLINICIAN, 1_000_000.0, 1), (CHECK_IN, 1_000_000.0, 1)]
    assert first["errors"] == {PATIENT_TO_CLINICIAN: {"rate_limited": 1}}
    assert first["disconnects"] == {"1008": 1}
    clock.now += 0.25
    final = recorder.drain(final=True)
    assert final["errors"] == {} and final["disconnects"] == {}  # deltas: nothing new
    (last,) = final["intervals"]
    assert last["start"] == 1_000_001.0 and last["length"] == pytest.approx(0.25)
    whole = final["final"]["entries"][PATIENT_TO_CLINICIAN]
    assert whole["count"] == 2
    uncorrected = decode(whole["uhist"])
    assert uncorrected.get_max_value() == uncorrected.get_highest_equivalent_value(2_000)
    recorder.record(PATIENT_TO_CLINICIAN, 1)  # after the final drain: not recorded
    assert recorder.drain()["intervals"] == []


def _run_recorders(seed: int, sources: int) -> tuple[Collector, HdrHistogram, dict[str, Recorder]]:
    rng = random.Random(seed)
    clock = FakeClock(2_000_000.0)
    recorders = {f"worker-{i}": Recorder(interval_s=1.0, clock=clock) for i in range(sources)}
    collector = Collector(interval_s=1.0)
    everything = new_histogram()
    for _ in range(6):
        for source, recorder in recorders.items():
            for _ in range(rng.randrange(50, 150)):
                value = int(rng.expovariate(1 / 3_000)) + 50
                recorder.record(PATIENT_TO_CLINICIAN, value, value - 20)
                everything.record_value(value)
            collector.add_report(source, recorder.drain())
        clock.now += 0.7
    for source, recorder in recorders.items():
        collector.add_final(source, recorder.drain(final=True))
    return collector, everything, recorders


def test_merging_is_lossless_counts_and_percentiles_equal_one_histogram_of_everything() -> None:
    collector, everything, _ = _run_recorders(seed=3, sources=3)
    merged, uncorrected = collector.merged()[PATIENT_TO_CLINICIAN]
    assert uncorrected is not None
    assert merged.get_total_count() == everything.get_total_count()
    wanted = (50.0, 90.0, 99.0, 99.9, 100.0)
    assert value_at_percentiles(merged, wanted) == value_at_percentiles(everything, wanted)
    assert summarize(merged) == summarize(everything)
    assert collector.inconsistent_sources() == []


def test_the_interval_log_reads_back_with_hdrhistograms_reader(tmp_path: Path) -> None:
    """The .hlog holds one tagged line per entry and interval; its histograms add up to the whole run."""
    collector, everything, _ = _run_recorders(seed=5, sources=2)
    path = tmp_path / "latency.hlog"
    lines = collector.write_hlog(path, start_time_s=2_000_000.0)
    assert lines > 0
    reader = HistogramLogReader(str(path), new_histogram())
    total = {PATIENT_TO_CLINICIAN: 0, PATIENT_TO_CLINICIAN + ".uncorrected": 0}
    try:
        while (histogram := reader.get_next_interval_histogram()) is not None:
            total[histogram.get_tag()] += histogram.get_total_count()
    finally:
        reader.close()
    assert total == {PATIENT_TO_CLINICIAN: everything.get_total_count(),
                     PATIENT_TO_CLINICIAN + ".uncorrected": everything.get_total_count()}


def test_a_lost_interval_report_is_noticed() -> None:
    clock = FakeClock()
    recorder = Recorder(clock=clock)
    collector = Collector()
    recorder.record(PATIENT_TO_CLINICIAN, 100)
    clock.now += 1
    recorder.drain()  # never reaches the collector
    collector.add_final("w", recorder.drain(final=True))
    assert collector.inconsistent_sources() == ["w"]
    assert collector.merged()[PATIENT_TO_CLINICIAN][0].get_total_count() == 1  # totals come from the final


# --------------------------------------------------------------------------- the timeline


def _rows(payload: dict[str, object]) -> list[tuple[float, float, int, int, int, int]]:
    return [(row["start"], row["length"], row["users"], row["connections"], row["errors"], row["disconnects"])
            for row in payload["timeline"]]  # type: ignore[attr-defined]


def test_recorder_timeline_rows_hold_the_gauges_at_the_end_of_each_interval_and_its_counts() -> None:
    clock = FakeClock(1_000_000.0)
    recorder = Recorder(interval_s=1.0, clock=clock)
    clock.now += 0.2
    recorder.adjust(USERS, 1)
    recorder.adjust(CONNECTIONS, 3)
    recorder.error(PATIENT_TO_CLINICIAN, "rate_limited")
    clock.now += 1.0  # 1_000_001.2
    recorder.disconnect(1011)
    recorder.adjust(CONNECTIONS, -1)
    recorder.error("unattributed", "bad_frame")
    recorder.error(CLINICIAN_TO_PATIENT, "disconnected")
    clock.now += 2.0  # 1_000_003.2: nothing happened in 1_000_002 (the merger carries the gauges over it)
    recorder.adjust(CONNECTIONS, 1)
    assert _rows(recorder.drain()) == [(1_000_000.0, 1.0, 1, 3, 1, 0), (1_000_001.0, 1.0, 1, 2, 2, 1)]
    clock.now += 0.5
    recorder.adjust(USERS, -1)
    final = recorder.drain(final=True)
    assert _rows(final) == [(1_000_003.0, 0.7, 0, 3, 0, 0)]  # the last one is partial, as in the .hlog
    recorder.adjust(USERS, 5)  # closed: nothing more
    assert recorder.gauges[USERS] == 0

    late = Recorder(interval_s=1.0, clock=clock)  # the final drain comes intervals after the last event
    late.error(CHECK_IN, "timeout")
    clock.now += 2.5
    assert [row[:2] + row[4:] for row in _rows(late.drain(final=True))] == [
        (1_000_003.0, 1.0, 1, 0), (1_000_006.0, pytest.approx(0.2), 0, 0)]


def _timeline_sources() -> Collector:
    """Three generators: a and b from the start, c from the third interval; b's reports arrive late."""
    clock = FakeClock(2_000_000.0)
    a, b = Recorder(clock=clock), Recorder(clock=clock)
    collector = Collector()
    a.adjust(USERS, 2)
    a.adjust(CONNECTIONS, 6)
    b.adjust(USERS, 1)
    b.adjust(CONNECTIONS, 3)
    a.error(PATIENT_TO_CLINICIAN, "rate_limited")
    clock.now += 1
    b.error(CLINICIAN_TO_PATIENT, "no_delivery")
    b.disconnect(None)
    b.adjust(CONNECTIONS, -1)
    a.record(PATIENT_TO_CLINICIAN, 1_000, 900)
    clock.now += 1
    collector.add_report("a", a.drain())
    c = Recorder(clock=clock)
    c.adjust(USERS, 1)
    clock.now += 2  # nothing in 2_000_003 from anyone
    b.error("unattributed", "unreadable_frame")
    clock.now += 0.5
    for source, recorder in (("a", a), ("b", b), ("c", c)):
        collector.add_final(source, recorder.drain(final=True))
    return collector


def test_the_timeline_adds_sources_per_interval_and_fills_quiet_intervals_with_the_last_gauges() -> None:
    collector = _timeline_sources()
    rows = [(r["start"], r["length"], r["users"], r["connections"], r["errors"], r["disconnects"])
            for r in collector.timeline()]
    assert rows == [
        (2_000_000.0, 1.0, 3, 9, 1, 0),
        (2_000_001.0, 1.0, 3, 8, 1, 1),
        (2_000_002.0, 1.0, 4, 8, 0, 0),  # c's first interval; before it, c counts 0
        (2_000_003.0, 1.0, 4, 8, 0, 0),  # nobody reported: every source's last gauges, no events
        (2_000_004.0, 0.5, 4, 8, 1, 0),
    ]
    assert collector.inconsistent_sources() == []


def test_the_timeline_csv_sums_to_the_summarys_errors_and_disconnects(tmp_path: Path) -> None:
    collector = _timeline_sources()
    path = tmp_path / "timeline.csv"
    assert collector.write_timeline(path) == 5
    text = path.read_text()
    header = "start_epoch_s,length_s,users,connections,errors,disconnects"
    assert text.splitlines()[0] == TIMELINE_HEADER == header
    assert text.splitlines()[1:3] == ["2000000.000,1.000,3,9,1,0", "2000001.000,1.000,3,8,1,1"]
    assert text.splitlines()[-1] == "2000004.000,0.500,4,8,1,0"
    summary, results, merged = build(collector, run={"started": 2_000_000.0, "duration_s": 4.5},
                                     thresholds=[], slo_file=None)
    rows = [line.split(",") for line in text.splitlines()[1:]]
    assert sum(int(row[4]) for row in rows) == summary["errors"]["total"] == 3
    assert sum(int(row[5]) for row in rows) == summary["disconnects"]["count"] == 1
    write(tmp_path / "out", collector, summary, results, merged)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "timeline.csv" in written["files"]
    assert (tmp_path / "out" / "timeline.csv").read_text() == text


def test_the_timeline_covers_every_interval_of_the_interval_log(tmp_path: Path) -> None:
    collector, _, _ = _run_recorders(seed=11, sources=2)
    collector.write_hlog(tmp_path / "latency.hlog", start_time_s=2_000_000.0)
    log = read_interval_log(tmp_path / "latency.hlog")
    base = log.base_epoch_s
    assert base is not None
    hlog_starts = {round(base + i.start_s, 3) for intervals in log.tags.values() for i in intervals}
    starts = [row["start"] for row in collector.timeline()]
    assert starts == [starts[0] + i for i in range(len(starts))]  # every interval, first to last
    assert hlog_starts <= {round(start, 3) for start in starts}
    assert starts[0] == min(hlog_starts)
    assert starts[-1] >= max(hlog_starts)  # to the generators' last (partial) interval, sampled or not


def test_a_lost_report_of_errors_is_noticed() -> None:
    clock = FakeClock()
    recorder = Recorder(clock=clock)
    collector = Collector()
    recorder.disconnect(1006)
    clock.now += 1
    recorder.drain()  # never reaches the collector: the timeline misses a disconnect
    collector.add_final("w", recorder.drain(final=True))
    assert collector.inconsistent_sources() == ["w"]
    assert sum(row["disconnects"] for row in collector.timeline()) == 0
    assert collector.disconnects() == {"1006": 1}  # the summary's totals come from the final


# --------------------------------------------------------------------------- verdicts and outputs


def _collector_with(values: list[int], cpu: dict[str, object] | None = None) -> Collector:
    clock = FakeClock()
    recorder = Recorder(clock=clock)
    for value in values:
        recorder.record(PATIENT_TO_CLINICIAN, value, value)
    collector = Collector()
    payload = recorder.drain(final=True)
    payload["cpu"] = cpu or {}
    collector.add_final("local", payload)
    return collector


def test_verdicts_pass_breach_and_invalid(tmp_path: Path) -> None:
    run = {"started": 1.0, "duration_s": 2.0, "host": "ws://127.0.0.1:1/v1/ws"}
    ok = _collector_with([1_000] * 20)
    summary, _, _ = build(ok, run=run, thresholds=[parse_expression(PATIENT_TO_CLINICIAN, "p(99) < 5ms")],
                          slo_file=None)
    assert summary["exit_code"] == EXIT_PASS
    summary, _, _ = build(ok, run=run, thresholds=[parse_expression(PATIENT_TO_CLINICIAN, "p(99) < 0.5ms")],
                          slo_file=None)
    assert summary["exit_code"] == EXIT_SLO_BREACH
    assert "p(99) < 0.5ms FAILED (measured 1.000ms)" in format_summary(summary)
    hot = _collector_with([1_000] * 20, cpu=assess([(0.5, 99.0, 99.0)] * 8).as_dict())
    summary, results, merged = build(hot, run=run, thresholds=[], slo_file=None)
    assert summary["exit_code"] == EXIT_INVALID
    assert "short of CPU" in summary["validity"]["problems"][0]
    nothing = _collector_with([])
    assert build(nothing, run=run, thresholds=[], slo_file=None)[0]["exit_code"] == EXIT_INVALID
    written = write(tmp_path, hot, summary, results, merged)
    names = {path.name for path in written}
    assert {"summary.json", "junit.xml", "latency.hlog", "timeline.csv", "patient_to_clinician.hgrm",
            "patient_to_clinician.uncorrected.hgrm"} <= names
    hgrm = (tmp_path / "patient_to_clinician.hgrm").read_text()
    assert "#[Mean    =        1.000, StdDeviation   =        0.000]" in hgrm
    assert json.loads((tmp_path / "summary.json").read_text())["verdict"] == "invalid"


def test_cpu_spikes_do_not_invalidate_a_run_but_a_sustained_shortage_does() -> None:
    spike = [(0.5, 20.0, 20.0)] * 18 + [(0.5, 100.0, 100.0)] * 2  # 1 s of 10 s
    assert assess(spike).ok
    sustained = [(0.5, 20.0, 20.0)] * 12 + [(0.5, 97.0, 97.0)] * 8  # 4 s of 10 s
    assert not assess(sustained).ok
    assert assess(sustained).over_limit_s == pytest.approx(4.0)
    short_run = [(0.5, 99.0, 99.0)]  # half a second: under the 1 s minimum
    assert assess(short_run).ok


def test_a_generator_kept_off_the_cpu_is_short_of_cpu_too() -> None:
    """Demand counts the time the generator waited to run: 30 % CPU + 65 % waiting is a shortage."""
    starved = [(0.5, 30.0, 95.0)] * 10
    verdict = assess(starved)
    assert not verdict.ok
    assert verdict.mean_cpu_percent == pytest.approx(30.0)


def test_the_sampler_reads_running_and_waiting_time() -> None:
    clock = FakeClock(10.0)
    readings = iter([(1.0, 0.5, 10), (1.3, 0.9, 14), (1.4, 0.9, 15)])
    sampler = CpuSampler(clock=clock, read=lambda: next(readings))
    clock.now += 1.0
    assert sampler.sample() == pytest.approx(70.0)  # 0.3 s running + 0.4 s waiting in 1 s
    clock.now += 0.5
    assert sampler.sample() == pytest.approx(20.0)
    assert sampler.samples[0] == pytest.approx((1.0, 30.0, 70.0))
    assert sampler.mean_wait_ms == pytest.approx(80.0)  # 0.4 s waited over 5 wake-ups
    live = CpuSampler()  # this thread, for real
    assert live.sample() is None or live.latest is not None


def test_load_text_and_names_are_synthetic() -> None:
    settings = Settings(text_chars=100)
    assert len(settings.text) == 100 and settings.text.startswith(TEXT_MARK)
    assert PATIENT_NAME == "QC Load Patient"


# --------------------------------------------------------------------------- the command's checks


def _load(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_main, ["load", *args])
    return result.exit_code, result.output


def test_a_non_loopback_url_needs_allow_remote() -> None:
    code, output = _load("--url", "ws://192.0.2.10:8765/v1/ws", "--duration", "1s")
    assert code == 2
    assert "refusing to send load to non-loopback host '192.0.2.10'" in output
    assert "--allow-remote" in output
    assert "Traceback" not in output


def test_an_unreachable_server_is_a_clear_usage_error(tmp_path: Path) -> None:
    code, output = _load("--url", "ws://127.0.0.1:9/v1/ws", "--duration", "1s", "--out", str(tmp_path))
    assert code == 2
    assert "cannot connect to ws://127.0.0.1:9/v1/ws: connection refused" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(("args", "says"), [
    (["--duration", "soon"], "--duration 'soon'"),
    (["--duration", "0s"], "at least 1 second"),
    (["--url", "http://127.0.0.1:8765/v1/ws"], "expected ws://"),
    (["--slo", "x.toml", "--no-slo"], "exclude each other"),
    (["--rate", "0"], "--rate"),
])
def test_bad_options_are_usage_errors(args: list[str], says: str) -> None:
    code, output = _load(*args)
    assert code == 2
    assert says in output


def test_a_bad_slo_file_stops_the_command_before_anything_runs(tmp_path: Path) -> None:
    slo = tmp_path / "slo.toml"
    slo.write_text('"check_in" = ["p(99) is small"]\n')
    code, output = _load("--slo", str(slo), "--url", "ws://127.0.0.1:9/v1/ws", "--out", str(tmp_path / "o"))
    assert code == 2
    assert "cannot read threshold 'p(99) is small'" in output
    assert "cannot connect" not in output  # checked before any connection


# --------------------------------------------------------------------------- run metadata and seeds


def _git(folder: Path, *args: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    done = subprocess.run(["git", "-C", str(folder), *identity, *args], capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_state_is_the_checkouts_commit_and_whether_tracked_files_changed(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_state(repo) == (head, False)
    (repo / "untracked.txt").write_text("not in git\n")
    assert git_state(repo) == (head, False)  # untracked files do not make it dirty
    (repo / "a.txt").write_text("two\n")
    assert git_state(repo) == (head, True)
    (repo / "sub").mkdir()
    assert git_state(repo / "sub") == (None, None)  # inside a checkout is not the checkout's own code
    (tmp_path / "plain").mkdir()
    assert git_state(tmp_path / "plain") == (None, None)
    assert git_state(repo, git=str(tmp_path / "no-such-git")) == (None, None)
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    assert git_state(empty) == (None, None)  # no commit yet


def test_run_metadata_names_the_code_and_the_machine_but_not_the_host() -> None:
    import platform
    import socket

    meta = environment(locust_version="9.9")
    assert list(meta) == ["queuechat_version", "commit", "dirty", "python", "implementation", "platform",
                          "cores", "locust_version"]
    assert meta["python"] == platform.python_version() and meta["cores"] == os.cpu_count()
    assert meta["locust_version"] == "9.9" and meta["queuechat_version"]
    if shutil.which("git") is not None and (PROJECT / ".git").exists():
        assert meta["commit"] == _git(PROJECT, "rev-parse", "HEAD")
        assert isinstance(meta["dirty"], bool)
    hostname = socket.gethostname()
    if len(hostname) >= 4:
        assert hostname not in json.dumps(meta)


def test_the_summary_carries_meta_beside_an_unchanged_run_and_says_the_seed() -> None:
    run = {"started": 1.0, "duration_s": 2.0, "host": "ws://127.0.0.1:1/v1/ws", "users": 2}
    meta = {"commit": None, "command": {"seed": 4242, "users": 2}}
    summary, _, _ = build(_collector_with([1_000] * 5), run=run, thresholds=[], slo_file=None, meta=meta)
    assert summary["run"] == run and summary["meta"] == meta
    assert list(summary)[:3] == ["version", "run", "meta"]
    assert format_summary(summary).splitlines()[0].endswith("generator process(es), seed 4242")


def test_a_users_random_stream_comes_from_the_seed_worker_and_user_alone() -> None:
    first = [user_random(7, 0, 3).random() for _ in range(2)]
    random.seed(1)
    again = user_random(7, 0, 3).random()
    random.seed(2)
    assert first == [again, user_random(7, 0, 3).random()]
    others = {user_random(8, 0, 3).random(), user_random(7, 1, 3).random(), user_random(7, 0, 4).random()}
    assert first[0] not in others and len(others) == 3
    # The same in another process with another hash seed (a text seed is hashed with SHA-512, not hash()).
    done = subprocess.run([sys.executable, "-c", "from loadtests._settings import user_random; "
                           "print(repr(user_random(7, 0, 3).random()))"], capture_output=True, text=True,
                          timeout=60, check=True, env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=PROJECT)
    assert float(done.stdout) == first[0]


def test_the_seed_and_the_reference_server_reach_locusts_command_line() -> None:
    from queuechat._load import LoadOptions, locust_command

    options = LoadOptions(url=None, secret=None, allow_remote=False, users=2, spawn_rate=2.0, rate=10.0,
                          duration_s=3, workers=0, slo=None, out=Path("x"), seed=99)
    command = locust_command(options, "ws://127.0.0.1:1/v1/ws")
    assert command[command.index("--qc-seed") + 1] == "99"
    assert "--qc-reference-server" in command
    given = locust_command(LoadOptions(**{**options.__dict__, "url": "ws://127.0.0.1:1/v1/ws", "seed": None}),
                           "ws://127.0.0.1:1/v1/ws")
    assert "--qc-seed" not in given and "--qc-reference-server" not in given
    assert Settings(seed=-1).problems() == ["--qc-seed must not be negative"]
    code, output = _load("--seed", "-1")
    assert code == 2 and "--seed" in output


# --------------------------------------------------------------------------- import rules


def _modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\n"
                           "print(json.dumps(sorted({n.partition('.')[0] for n in sys.modules})))"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_locust_file_imports_the_protocol_never_trio_or_the_server() -> None:
    loaded = _modules_after("import sys; sys.argv = ['locust']\nimport loadtests.locustfile\n"
                            "assert 'reference_server.server' not in sys.modules\n"
                            "assert 'reference_server._shell' not in sys.modules")
    assert {"locust", "gevent", "websocket", "reference_server"} <= loaded
    assert loaded.isdisjoint({"trio", "trio_websocket", "wsproto"})


def test_the_package_and_the_command_machinery_import_neither_gevent_nor_trio() -> None:
    loaded = _modules_after("import loadtests, loadtests._slo, loadtests._report, queuechat._load")
    assert loaded.isdisjoint({"gevent", "locust", "trio", "trio_websocket"})


# --------------------------------------------------------------------------- buffered reads


def test_websocket_client_frames_read_the_same_through_the_buffered_reads() -> None:
    """Frames split anyhow across socket reads come out whole and in order; fewer reads are made."""
    import websocket

    from loadtests._wsbuffer import _BufferedReads, buffer_reads

    assert buffer_reads(websocket.WebSocket())  # this websocket-client version has the place for it
    payloads = [b'{"type":"ok","ref":"1"}', b"x" * 300, b"y" * 70_000]
    wire = b"".join(websocket.ABNF(1, 0, 0, 0, websocket.ABNF.OPCODE_TEXT, 0, p).format() for p in payloads)
    chunks = [wire[i:i + 1000] for i in range(0, len(wire), 1000)]
    reads = []

    def read(size: int) -> bytes:
        reads.append(size)
        if not chunks:
            raise websocket.WebSocketConnectionClosedException("closed")
        return chunks.pop(0)

    frames = websocket._abnf.frame_buffer(_BufferedReads(read), True)
    assert [frames.recv_frame().data for _ in payloads] == payloads
    assert len(reads) == len(range(0, len(wire), 1000))  # one socket read per chunk, not per field


def test_a_wrong_secret_is_a_clear_usage_error(tmp_path: Path) -> None:
    """Against a server with another secret, the clinician's hello is refused: exit 2, no traceback."""
    from queuechat.children import die_with_parent

    server = subprocess.Popen(die_with_parent([sys.executable, "-m", "queuechat", "serve", "--port", "0",
                                               "--secret", "right", "--stats-interval-s", "off",
                                               "--log-level", "error"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "ready on" in line, line
        url = line.split("ready on ")[1].strip()
        done = subprocess.run([sys.executable, "-m", "queuechat", "load", "--url", url, "--secret", "wrong",
                               "--duration", "1s", "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=60, check=False)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the server refused the clinician token (unauthorized)" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_the_planned_load_is_checked_against_the_servers_limits() -> None:
    from queuechat._load import LoadOptions, plan_warnings

    options = LoadOptions(url="ws://127.0.0.1:1/v1/ws", secret=None, allow_remote=False, users=2,
                          spawn_rate=2.0, rate=600.0, duration_s=5, workers=0, slo=None, out=Path("x"),
                          patients=3, text_chars=5000)
    defaults = {"rate_per_s": 100.0, "rate_burst": 200, "max_patients_per_room": 2, "max_rooms": 1,
                "max_text_chars": 4096}
    warnings = plan_warnings(defaults, options)
    assert any("rate_per_s 100" in w and "rate_limited" in w for w in warnings)  # 150 sends/s per clinician
    assert any("max_patients_per_room 2" in w for w in warnings)
    assert any("max_rooms 1" in w for w in warnings)
    assert any("max_text_chars 4096" in w for w in warnings)
    raised = {"rate_per_s": 100_000.0, "rate_burst": 200_000, "max_patients_per_room": None,
              "max_rooms": None}
    assert plan_warnings(raised, options) == []  # the limits queuechat load raises for its own server


def test_small_generators_get_precise_timers_and_large_ones_keep_epoll(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from queuechat._load import LoadOptions, gevent_backend

    def options(users: int, workers: int) -> LoadOptions:
        return LoadOptions(url=None, secret=None, allow_remote=False, users=users, spawn_rate=1.0, rate=10.0,
                           duration_s=1, workers=workers, slo=None, out=Path("x"))

    monkeypatch.delenv("GEVENT_BACKEND", raising=False)
    assert gevent_backend(options(users=10, workers=0)) == "select"  # 30 connections
    assert gevent_backend(options(users=50, workers=0)) is None  # 150 connections: epoll
    assert gevent_backend(options(users=50, workers=4)) == "select"  # 13 users, 39 connections each
    monkeypatch.setenv("GEVENT_BACKEND", "epoll")
    assert gevent_backend(options(users=1, workers=0)) is None  # the caller's choice stands
