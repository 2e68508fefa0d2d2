"""Each file format read back as it was written (history, interval log, timeline, summaries, JUnit XML),
and a damaged file refused with an error naming the file and the line (or the field)."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hdrh.log import HistogramLogReader  # type: ignore[import-untyped]

from formats.history import (
    FORMAT,
    HISTORY_NAME_PATTERN,
    VERSION,
    HistoryError,
    HistoryWriter,
    history_file_name,
    quick_header,
    quick_records,
    read_history,
    read_lines,
    redacted,
)
from formats.hlog import (
    MESSAGE_ENTRIES,
    PATIENT_TO_CLINICIAN,
    UNCORRECTED_SUFFIX,
    HlogError,
    new_histogram,
    read_interval_log,
    value_at_percentiles,
    write_interval_log,
)
from formats.junit import Case, Outcome, Suite, junit_xml
from formats.summary import (
    SUMMARY_FILE,
    SUMMARY_VERSION,
    SummaryError,
    read_simulation_summary,
    read_summary,
    simulation_summary_path,
    write_simulation_summary,
    write_summary,
)
from formats.timeline import TIMELINE_HEADER, TimelineError, read_timeline, write_timeline

# --------------------------------------------------------------------------- history

HEADER = {"scenario": "tiny", "seed": 3, "mode": "virtual", "rooms": ["clinic-01"], "limits": None,
          "duration_ms": 2000.0, "heal_ms": 1000.0, "end_ms": 2000.0, "epoch_ms": 0}


def write_history(path: Path) -> list[dict[str, Any]]:
    """A short history: a patient connects, says hello with a name, is welcomed, and leaves."""
    writer = HistoryWriter(path, dict(HEADER))
    seen: list[dict[str, Any]] = []
    writer.listeners.append(lambda number, record: seen.append(record))
    connect = {"agent": "p0001", "conn": 1, "kind": "connect", "role": "patient", "room": "clinic-01"}
    writer.record(0.0, 1001, connect)
    hello = {"type": "hello", "role": "patient", "room": "clinic-01", "name": "Ada Lovelace"}
    writer.record(0.5, 1001, {"agent": "p0001", "conn": 1, "kind": "frame", "dir": "out", "size": 70,
                              "frame": redacted(hello)})
    writer.record(0.5, 1001, {"agent": "p0001", "conn": 1, "kind": "close", "code": 1000, "by": "client"})
    writer.close(1.0)
    return seen


def test_a_history_reads_back_as_written_by_both_readers_and_keeps_no_name(tmp_path: Path) -> None:
    path = tmp_path / "tiny-seed3.jsonl"
    seen = write_history(path)
    assert "Ada" not in path.read_text(encoding="utf-8")
    header, records = read_history(path)
    assert header == {"format": FORMAT, "version": VERSION, **HEADER}
    checked = list(records)
    assert [number for number, _ in checked] == [2, 3, 4, 5]
    assert [record for _, record in checked] == seen
    assert checked[1][1]["frame"]["name"] == len("Ada Lovelace") and checked[1][1]["t"] == 500.0
    with open(path, "rb") as handle:
        assert quick_header(path, handle) == header
        quick = list(quick_records(path, handle))
    assert [(number, record.kind, record.t) for number, record in quick] == [
        (2, "connect", 0.0), (3, "frame", 500.0), (4, "close", 500.0), (5, "end", 1000.0)]
    assert quick[-1][1].records == 3
    assert read_lines(path, {1, 5})[5] == json.dumps(seen[-1], separators=(",", ":"))


@pytest.mark.parametrize(("line", "text", "checked", "quick"), [
    (3, '{"t": 600, "agent": "p0001", "conn": 1, "kind": "frame", "dir": "sideways", "frame": {"type": "x"}}',
     ':3: field "dir" must be "in" or "out"', None),
    (3, '{"t": 600, "agent": "p0001", "conn": 1, "kind": "frame", "dir": "out"}',
     ':3: field "frame" must be an object', ':3: a "frame" record needs "frame"'),
    (4, "not json", ":4: not a JSON object", ":4: not a JSON object"),
    (2, '{"t": "soon", "kind": "connect"}', ':2: field "t" must be a number',
     ":2: a record that does not fit the history format"),
])
def test_a_damaged_history_line_is_named_by_both_readers(tmp_path: Path, line: int, text: str, checked: str,
                                                         quick: str | None) -> None:
    path = tmp_path / "tiny-seed3.jsonl"
    write_history(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    _, records = read_history(path)
    with pytest.raises(HistoryError, match=checked):
        list(records)
    with open(path, "rb") as handle:
        quick_header(path, handle)
        if quick is None:  # the quick reader checks only what a fold needs
            list(quick_records(path, handle))
        else:
            with pytest.raises(HistoryError, match=quick):
                list(quick_records(path, handle))


def test_a_history_cut_short_or_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny-seed3.jsonl"
    write_history(path)
    path.write_bytes(path.read_bytes()[:-5])
    _, records = read_history(path)
    with pytest.raises(HistoryError, match=":5: the last line is cut short"):
        list(records)
    path.write_text('{"format": "other", "version": 1}\n', encoding="utf-8")
    with pytest.raises(HistoryError, match=":1: not a queuechat history"):
        read_history(path)
    with open(path, "rb") as handle, pytest.raises(HistoryError, match=":1: not a queuechat history"):
        quick_header(path, handle)


# --------------------------------------------------------------------------- interval log


def histogram_of(values: list[int]) -> Any:
    histogram = new_histogram()
    for value in values:
        histogram.record_value(value)
    return histogram


@pytest.mark.parametrize(("scenario", "seed"), [("quiet_morning", 6), ("a-seed3-b", 0), ("x", -1)])
def test_a_history_file_name_reads_back_as_its_scenario_and_seed(scenario: str, seed: int) -> None:
    """The simulator names its history, the reports find it by name: one spelling of both."""
    match = HISTORY_NAME_PATTERN.match(history_file_name(scenario, seed))
    assert match is not None and (match["scenario"], int(match["seed"])) == (scenario, seed)
    assert HISTORY_NAME_PATTERN.match(f"{scenario}.summary.json") is None


def test_the_interval_log_reads_back_as_written_and_as_hdrhistogram_reads_it(tmp_path: Path) -> None:
    rng = random.Random(4)
    base = 1_795_600_000.0
    tags = (PATIENT_TO_CLINICIAN, PATIENT_TO_CLINICIAN + UNCORRECTED_SUFFIX)
    intervals = [(base + second, tag, 1.0 if second < 2 else 0.4,
                  histogram_of([rng.randrange(100, 90_000) for _ in range(rng.randrange(1, 50))]))
                 for second in range(3) for tag in tags]
    path = tmp_path / "latency.hlog"
    assert write_interval_log(path, intervals, base_s=base, comment="a test") == 6
    log = read_interval_log(path)
    assert log.base_epoch_s == base and set(log.tags) == set(tags)
    for tag, items in log.tags.items():
        written = [(start - base, length, h) for start, t, length, h in intervals if t == tag]
        assert [(i.start_s, i.length_s, i.count) for i in items] == [
            (start, length, h.get_total_count()) for start, length, h in written]
        assert [i.histogram.get_max_value() for i in items] == [h.get_max_value() for _, _, h in written]
        assert log.whole(tag).get_total_count() == sum(i.count for i in items)
    assert log.end_s() == pytest.approx(2.4)
    reader = HistogramLogReader(str(path), new_histogram())
    counts: dict[str, int] = {}
    try:
        while (histogram := reader.get_next_interval_histogram()) is not None:
            counts[histogram.get_tag()] = counts.get(histogram.get_tag(), 0) + histogram.get_total_count()
    finally:
        reader.close()
    assert counts == {tag: log.whole(tag).get_total_count() for tag in log.tags}
    assert PATIENT_TO_CLINICIAN in MESSAGE_ENTRIES


@pytest.mark.parametrize(("line", "expected"), [
    ("Tag=x,0.0,1.0\n", "line 6: expected 'start,length,max,histogram' fields"),
    ("Tag=x,soon,1.0,1.0,HISTFAAAA\n", "line 6: the start or length is not a number"),
    ("Tag=x,0.0,1.0,1.0,HISTFAAAAnotbase64!!\n", "line 6: not an encoded HdrHistogram"),
])
def test_a_damaged_interval_log_line_is_named(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "latency.hlog"
    write_interval_log(path, [(10.0, "x", 1.0, histogram_of([5]))], base_s=10.0)
    lines = path.read_text().splitlines(keepends=True)
    lines[5] = line  # the interval line, after five lines of header
    path.write_text("".join(lines))
    with pytest.raises(HlogError, match=f"{path}: {expected}"):
        read_interval_log(path)


def test_fast_percentiles_equal_hdrhistograms_own_query() -> None:
    rng = random.Random(5)
    for _ in range(20):
        histogram = histogram_of([int(rng.lognormvariate(7, 2)) + 1 for _ in range(rng.randrange(1, 3000))])
        wanted = [0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0, rng.uniform(0, 100)]
        expected = [histogram.get_value_at_percentile(p) for p in wanted]
        assert value_at_percentiles(histogram, wanted) == expected
    assert value_at_percentiles(new_histogram(), [50.0, 0.0]) == [0, 0]


# --------------------------------------------------------------------------- timeline


def test_the_timeline_reads_back_as_written_relative_to_the_start(tmp_path: Path) -> None:
    path = tmp_path / "timeline.csv"
    rows = [{"start": 100.0 + i, "length": 1.0 if i < 2 else 0.5, "users": i, "connections": 3 * i,
             "errors": i % 2, "disconnects": 0} for i in range(3)]
    assert write_timeline(path, rows) == 3
    assert path.read_text().splitlines()[0] == TIMELINE_HEADER
    read = read_timeline(path, start_epoch_s=100.0)
    assert [(r.start_s, r.length_s, r.users, r.connections, r.errors, r.disconnects) for r in read] == [
        (0.0, 1.0, 0, 0, 0, 0), (1.0, 1.0, 1, 3, 1, 0), (2.0, 0.5, 2, 6, 0, 0)]
    path.write_text(path.read_text().replace("101.000,1.000,1", "101.000,1.000,-1"))
    with pytest.raises(TimelineError, match=f"{path}: line 3: a field is out of range"):
        read_timeline(path, start_epoch_s=100.0)


# --------------------------------------------------------------------------- summaries


def test_a_load_summary_reads_back_as_written_and_a_wrong_field_is_named(tmp_path: Path) -> None:
    summary = {"version": SUMMARY_VERSION, "run": {"started": 1.0, "duration_s": 2.0},
               "entries": {PATIENT_TO_CLINICIAN: {"count": 3, "errors": 0}}, "verdict": "pass"}
    path = write_summary(tmp_path, summary)
    assert path == tmp_path / SUMMARY_FILE and not list(tmp_path.glob("*.tmp"))
    assert read_summary(path) == summary
    path.write_text(json.dumps({**summary, "run": {"started": "yesterday", "duration_s": 2.0}}))
    wrong = r"summary.json: Expected `int \| float`, got `str` - at `\$.run.started`"
    with pytest.raises(SummaryError, match=wrong):
        read_summary(path)
    path.write_text("{not json")
    with pytest.raises(SummaryError, match=r"summary.json: not JSON \(line 1, column 2\)"):
        read_summary(path)


def test_a_simulation_summary_lies_beside_its_history_and_reads_back(tmp_path: Path) -> None:
    history = tmp_path / "tiny-seed3.jsonl"
    document = {"summary": {"patients": 2}, "violations": [{"rule": "R1", "message": "m", "lines": [4]}]}
    path = write_simulation_summary(history, document)
    assert path == simulation_summary_path(history) == tmp_path / "tiny-seed3.summary.json"
    assert read_simulation_summary(path) == document
    path.write_text(json.dumps({**document, "violations": [{"rule": "R1"}]}))
    with pytest.raises(SummaryError, match='violation 1 needs "rule", "message" and "lines"'):
        read_simulation_summary(path)


# --------------------------------------------------------------------------- JUnit


def test_junit_counts_outcomes_and_writes_what_ci_tools_read() -> None:
    suite = Suite(name="s", time="1.500", timestamp="2026-01-01T00:00:00Z", properties=[("url", "ws://x")],
                  cases=[
                      Case(classname="s.a", name="passes", time="0", system_out="fine"),
                      Case(classname="s.a", name="fails", outcome=Outcome(kind="failure", message="m\x01",
                                                                          type="T", text="details")),
                      Case(classname="s.b", name="errs", outcome=Outcome(kind="error", message="e")),
                      Case(classname="s.b", name="skips", outcome=Outcome(kind="skipped", message="why")),
                  ])
    document = junit_xml(suite)
    assert document.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<testsuites")
    root = ET.fromstring(document)
    testsuite = root.find("testsuite")
    assert testsuite is not None
    for element in (root, testsuite):
        assert {k: element.get(k) for k in ("name", "tests", "failures", "errors", "skipped", "time")} == {
            "name": "s", "tests": "4", "failures": "1", "errors": "1", "skipped": "1", "time": "1.500"}
    assert testsuite.get("timestamp") == "2026-01-01T00:00:00Z" and root.get("timestamp") is None
    assert [(p.get("name"), p.get("value")) for p in testsuite.iter("property")] == [("url", "ws://x")]
    failure = testsuite.find("testcase[@name='fails']/failure")
    assert failure is not None and failure.get("message") == "m?" and failure.get("type") == "T"
    assert failure.text == "details"
    assert testsuite.findtext("testcase[@name='passes']/system-out") == "fine"
    assert b"\n  <testsuite" in document  # indented
    flat = junit_xml(suite, indent=False, root_skipped=False)
    assert b"\n" not in flat.split(b"\n", 1)[1] and ET.fromstring(flat).get("skipped") is None
