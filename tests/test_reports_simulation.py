"""The simulation report (reports._sim_report): a self-contained page and real charts, drawn from a run's
history and summary, whose numbers are the data's, that names the rules a server broke, that turns bad
input into a one-line error naming the file, and that never shows message text or names.

The data are small runs recorded with the real simulator (tests/data/README.md): ``sim-small`` (a quiet
clinic, no violations) and ``sim-violations`` (a deliberately wrong server).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from reports._errors import ReportError
from reports._mpl import HEIGHT_PX, WIDTH_PX
from reports._page import ReportResult
from reports._sim_report import write_simulation_report
from tests.reports_html import PageReader, read_page

DATA = Path(__file__).resolve().parent / "data"
SMALL = DATA / "sim-small"
VIOLATIONS = DATA / "sim-violations"


# --------------------------------------------------------------------------- helpers


def parse(result: ReportResult) -> PageReader:
    """The page's tables (by id, rows of cell texts), its label/value facts and its verdict."""
    return read_page(result.html)[0]


def body(table: list[list[str]]) -> list[list[str]]:
    return table[1:]  # the first row holds the headers


def summary_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(next(folder.glob("*.summary.json")).read_text(encoding="utf-8"))
    return data


def history_of(folder: Path) -> Path:
    return next(folder.glob("*.jsonl"))


def copy_run(source: Path, target: Path, *, summary: bool = True) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(history_of(source), target)
    if summary:
        shutil.copy(next(source.glob("*.summary.json")), target)
    return target


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    return write_simulation_report(SMALL, tmp_path_factory.mktemp("small") / "report")


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    return write_simulation_report(VIOLATIONS, tmp_path_factory.mktemp("broken") / "report")


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize("which", ["small", "broken"])
def test_every_chart_is_a_real_png_of_the_report_size_and_not_blank(which: str,
                                                                     request: pytest.FixtureRequest) -> None:
    import matplotlib.image
    import numpy as np

    result: ReportResult = request.getfixturevalue(which)
    assert len(result.pngs) >= 6
    html = result.html.read_text(encoding="utf-8")
    assert html.count("<img ") == len(result.pngs)
    for png in result.pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name
        pixels = matplotlib.image.imread(png)
        assert pixels.shape[:2] == (HEIGHT_PX, WIDTH_PX), png.name
        assert float(np.std(pixels[..., :3])) > 0.01, f"{png.name} is blank"
        rgb = (pixels[..., :3] * 255).astype(np.uint32)
        colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
        assert len(colours) > 20, f"{png.name} has hardly any drawing"


@pytest.mark.parametrize("which", ["small", "broken"])
def test_the_page_needs_nothing_outside_itself(which: str, request: pytest.FixtureRequest) -> None:
    result: ReportResult = request.getfixturevalue(which)
    html = result.html.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "http:" not in html and "https:" not in html
    assert "//" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html, flags=re.IGNORECASE):
        assert attribute.startswith("data:"), attribute


def test_default_folders_are_beside_the_run(tmp_path: Path) -> None:
    folder = copy_run(SMALL, tmp_path / "run")
    by_folder = write_simulation_report(folder)
    assert by_folder.html == folder / "report" / "report.html"
    history = history_of(folder)
    by_file = write_simulation_report(history)
    assert by_file.html == folder / f"{history.stem}-report" / "report.html"
    assert [p.name for p in by_file.pngs] == [p.name for p in by_folder.pngs]


# --------------------------------------------------------------------------- the numbers


def test_the_verdict_says_no_violation_with_the_length_and_the_seed(small: ReportResult) -> None:
    page = parse(small)
    assert page.verdict.startswith("No rule violations found in 40 virtual minutes (seed 6)")
    assert page.facts["Seed"] == "6"
    assert page.facts["Scenario"] == "quiet_morning"
    assert page.facts["Code (commit)"] == "not recorded"


def test_the_counts_are_the_summarys(small: ReportResult) -> None:
    summary = summary_of(SMALL)["summary"]
    page = parse(small)
    erasures = {row[0]: int(row[2]) for row in body(page.tables["erasures"]) if row[0] != "all"}
    assert erasures == summary["erasures_by_reason"]
    assert len(erasures) >= 3  # the data has several reasons
    departures = {row[0]: int(row[2]) for row in body(page.tables["departures"]) if row[0] != "all"}
    assert departures == summary["departures_by_reason"]
    closes = {row[0]: int(row[2]) for row in body(page.tables["server-closes"])}
    assert closes == summary["server_closes_by_code"]
    faults = {row[0]: int(row[2]) for row in body(page.tables["faults"])}
    assert faults == summary["faults"]
    messages = {row[0]: (int(row[1]), int(row[2])) for row in body(page.tables["messages"])}
    p2c, c2p = summary["messages_patient_to_clinician"], summary["messages_clinician_to_patient"]
    assert messages["patient to clinician"] == (p2c["sent"], p2c["delivered"])
    assert messages["clinician to patient"] == (c2p["sent"], c2p["delivered"])
    assert page.facts["Patients checked in"].startswith(f"{summary['patients']} in 3 rooms")
    assert page.facts["Patients answered"].startswith(f"{summary['patients_served']} ")
    waits = {row[0]: row[2] for row in body(page.tables["waits"])}
    expected = summary["wait_to_first_answer_s"]
    assert waits["median (p50)"] == f"{expected['p50']:.1f}"
    assert waits["90 % within (p90)"] == f"{expected['p90']:.1f}"
    assert waits["longest (max)"] == f"{expected['max']:.1f}"
    never = next(row for row in body(page.tables["waits"]) if row[0] == "never answered")
    assert never[1] == f"{expected['unanswered']} patient" + ("s" if expected["unanswered"] != 1 else "")


def _queue_by_hand(history: Path) -> tuple[list[float], list[tuple[float, float | None, float | None]],
                                           dict[str, list[tuple[float, float]]]]:
    """From the patients' side, independently of the report: each checked-in patient is in the queue from
    their welcome until their connection closes, on a call from their call{started}. Also when every room's
    clinician had a page open (from its welcome to its close or refresh): the clinicians' screens, which
    the chart follows, see every patient only then."""
    visits: dict[tuple[str, int], list[float | None]] = {}
    consoles: dict[tuple[str, int], list[float | None]] = {}
    rooms: dict[tuple[str, int], str] = {}
    instants: set[float] = set()
    header, *lines = history.read_text(encoding="utf-8").splitlines()
    for line in lines:
        record = json.loads(line)
        if record["kind"] == "end":
            continue
        key = (record["agent"], record["conn"])
        frame = record.get("frame") or {}
        if record["kind"] == "connect" and record["role"] == "clinician":
            rooms[key] = record["room"]
        elif record["kind"] == "frame" and record["dir"] == "in" and frame["type"] == "welcome":
            (consoles if key in rooms else visits)[key] = [record["t"], None, None]
            instants.add(record["t"])
        elif key in consoles and consoles[key][1] is None and (
                record["kind"] == "close" or record["kind"] == "action"):
            consoles[key][1] = record["t"]
        elif key in visits and visits[key][1] is None:
            if record["kind"] == "close":
                visits[key][1] = record["t"]
                instants.add(record["t"])
            elif frame.get("type") == "call" and frame.get("state") == "started":
                visits[key][2] = record["t"]
                instants.add(record["t"])
    watched: dict[str, list[tuple[float, float]]] = {room: [] for room in json.loads(header)["rooms"]}
    for key, (start, end, _) in consoles.items():
        assert start is not None
        watched[rooms[key]].append((start, end if end is not None else float("inf")))
    return sorted(instants), [(v[0], v[1], v[2]) for v in visits.values() if v[0] is not None], watched


def _all_watched(watched: dict[str, list[tuple[float, float]]], t: float) -> bool:
    return all(any(start < t < end for start, end in spans) for spans in watched.values())


@pytest.mark.parametrize("folder", [SMALL, VIOLATIONS], ids=["small", "violations"])
def test_queue_length_matches_a_count_by_hand(folder: Path, tmp_path: Path) -> None:
    from reports._sim_run import load_run

    run = load_run(folder)
    instants, visits, watched = _queue_by_hand(history_of(folder))
    probes = [t + 0.5 for t in instants] + [(a + b) / 2 for a, b in itertools.pairwise(instants)]
    probes = [t for t in probes if _all_watched(watched, t)]
    assert len(probes) > 20
    for t in probes:
        waiting = sum(1 for start, end, call in visits
                      if start <= t and (end is None or t < end) and (call is None or t < call))
        in_call = sum(1 for start, end, call in visits
                      if call is not None and call <= t and (end is None or t < end))
        assert run.queue.at(t) == (waiting, in_call), t
    peak = max(run.queue.at(t)[0] for t in [*probes, *run.queue.times_ms])
    page = parse(write_simulation_report(folder, tmp_path / "report"))
    assert page.facts["Most patients waiting at once"].startswith(f"{peak} (all rooms)")


def test_violations_are_listed_with_their_rules_seed_and_lines(broken: ReportResult) -> None:
    document = summary_of(VIOLATIONS)
    expected = document["violations"]
    assert expected, "the recorded run must have violations"
    page = parse(broken)
    rules = sorted(set(document["summary"]["violations_by_rule"]))
    assert page.verdict.startswith(f"{len(expected)} violations of rules {', '.join(rules)}")
    rows = body(page.tables["violations"])
    assert len(rows) == len(expected)
    for row, violation in zip(rows, expected, strict=True):
        rule, message, room, agent, _, seed, lines = row
        assert (rule, message, room, agent) == (violation["rule"], violation["message"], violation["room"],
                                                violation["agent"])
        assert seed == str(document["seed"])
        shown: list[int] = []
        for part in lines.split(", "):
            first, _, last = part.partition("-")
            shown.extend(range(int(first), int(last or first) + 1))
        assert shown == sorted(set(violation["lines"]))
    by_rule = {row[0]: int(row[2]) for row in body(page.tables["violations-by-rule"])}
    assert by_rule == document["summary"]["violations_by_rule"]


def test_a_run_without_violations_says_so_in_its_section(small: ReportResult) -> None:
    html = small.html.read_text(encoding="utf-8")
    assert "violations" not in parse(small).tables
    assert "found no rule broken" in html


# --------------------------------------------------------------------------- partial input


def test_without_a_summary_the_history_alone_gives_the_same_counts(tmp_path: Path) -> None:
    folder = copy_run(SMALL, tmp_path / "run", summary=False)
    page = parse(write_simulation_report(folder))
    assert page.verdict.startswith("Rules not checked: the summary file is missing")
    summary = summary_of(SMALL)["summary"]
    erasures = {row[0]: int(row[2]) for row in body(page.tables["erasures"]) if row[0] != "all"}
    assert erasures == summary["erasures_by_reason"]
    departures = {row[0]: int(row[2]) for row in body(page.tables["departures"]) if row[0] != "all"}
    assert departures == summary["departures_by_reason"]
    messages = {row[0]: (int(row[1]), int(row[2])) for row in body(page.tables["messages"])}
    assert messages["patient to clinician"] == tuple(summary["messages_patient_to_clinician"].values())
    assert messages["clinician to patient"] == tuple(summary["messages_clinician_to_patient"].values())
    assert page.facts["Wall-clock time"] == "not recorded (no summary)"
    html = (folder / "report" / "report.html").read_text(encoding="utf-8")
    assert "No summary file (quiet_morning-seed6.summary.json)" in html


def test_a_history_without_its_end_record_is_reported_as_incomplete(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    lines = history_of(SMALL).read_text(encoding="utf-8").splitlines(keepends=True)
    assert '"kind":"end"' in lines[-1]
    (folder / history_of(SMALL).name).write_text("".join(lines[:-1]), encoding="utf-8")
    page = parse(write_simulation_report(folder))
    assert "Rules not checked" in page.verdict and "incomplete" in page.verdict
    assert "(no end record)" in page.facts["Recorded length"]


# --------------------------------------------------------------------------- bad input


def _write(folder: Path, text: str, name: str = "quiet_morning-seed6.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _header() -> str:
    return history_of(SMALL).read_text(encoding="utf-8").splitlines()[0] + "\n"


BAD = {
    "empty": ("", "empty file"),
    "garbage": ("this is not json\n", ":1: not a queuechat history"),
    "wrong format": ('{"format": "something-else", "version": 1}\n', ":1: not a queuechat history"),
    "wrong version": (None, ":1: history format version 2"),
    "truncated last line": (None, ":3: the last line is cut short"),
    "record without t": (None, ":2: a record that does not fit the history format"),
    "frame without frame": (None, ':2: a "frame" record needs "frame"'),
    "record not json": (None, ":3: not a JSON object"),
}


def _bad_text(case: str) -> str:
    text, _ = BAD[case]
    if text is not None:
        return text
    header = _header()
    connect = '{"t":1.0,"agent":"c01","conn":1,"kind":"connect","role":"clinician","room":"quiet-01"}\n'
    if case == "wrong version":
        return header.replace('"version":1', '"version":2')
    if case == "truncated last line":
        return header + connect + '{"t":2.0,"agent":"c01","conn":1,"kind":"fra'
    if case == "record without t":
        return header + '{"agent":"c01","conn":1,"kind":"connect","role":"clinician","room":"quiet-01"}\n'
    if case == "frame without frame":
        return header + '{"t":1.0,"agent":"c01","conn":1,"kind":"frame","dir":"in","size":3}\n'
    return header + connect + "{oops\n" + connect


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_histories_are_one_line_errors_naming_the_file_and_line(tmp_path: Path, case: str) -> None:
    path = _write(tmp_path / "run", _bad_text(case))
    for source in (path, path.parent):
        with pytest.raises(ReportError) as caught:
            write_simulation_report(source, tmp_path / "out")
        message = str(caught.value)
        assert str(path) in message, message
        assert BAD[case][1] in message, message
        assert "\n" not in message and "Traceback" not in message
    assert not (tmp_path / "out" / "report.html").exists()


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"nowhere\.jsonl: no such file or folder"):
        write_simulation_report(tmp_path / "nowhere.jsonl")


def test_a_folder_without_a_history_is_named(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"no simulation history \(SCENARIO-seedN\.jsonl\)"):
        write_simulation_report(tmp_path)


def test_a_folder_with_several_histories_asks_which(tmp_path: Path) -> None:
    folder = copy_run(SMALL, tmp_path / "run")
    shutil.copy(history_of(VIOLATIONS), folder)
    with pytest.raises(ReportError) as caught:
        write_simulation_report(folder)
    message = str(caught.value)
    assert "2 simulation histories" in message and "give the .jsonl file" in message
    assert history_of(SMALL).name in message and history_of(VIOLATIONS).name in message
    # naming the file works
    assert write_simulation_report(folder / history_of(VIOLATIONS).name).html.exists()


def test_a_broken_summary_is_named(tmp_path: Path) -> None:
    folder = copy_run(SMALL, tmp_path / "run")
    summary = next(folder.glob("*.summary.json"))
    summary.write_text('{"summary": ', encoding="utf-8")
    with pytest.raises(ReportError, match=re.escape(f"{summary}: not JSON")):
        write_simulation_report(folder)


# --------------------------------------------------------------------------- privacy


SECRET_TEXT = "Patient says: my chest hurts since Tuesday"
SECRET_NAME = "Jane Q. Example-Patient"


def test_text_and_names_in_a_history_never_reach_the_report(tmp_path: Path) -> None:
    """A history that (wrongly) holds words where lengths belong: the report counts those frames, shows
    none of the words, and withholds a summary message that quotes them."""
    folder = tmp_path / "run"
    folder.mkdir()
    out_lines = []
    changed = 0
    for line in history_of(VIOLATIONS).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        frame = record.get("frame")
        if isinstance(frame, dict):
            if isinstance(frame.get("text"), int):
                frame["text"] = SECRET_TEXT
                changed += 1
            if isinstance(frame.get("name"), int):
                frame["name"] = SECRET_NAME
                changed += 1
            for entry in frame.get("queue") or []:
                entry["name"] = SECRET_NAME
        out_lines.append(json.dumps(record))
    assert changed > 50
    (folder / history_of(VIOLATIONS).name).write_text("\n".join(out_lines) + "\n", encoding="utf-8")
    document = summary_of(VIOLATIONS)
    document["violations"][0]["message"] = f"got {{type: 'message', text: {SECRET_TEXT!r}}}"
    document["violations"][1]["room"] = SECRET_NAME
    (folder / next(VIOLATIONS.glob("*.summary.json")).name).write_text(json.dumps(document), encoding="utf-8")

    result = write_simulation_report(folder)
    html = result.html.read_text(encoding="utf-8")
    for secret in (SECRET_TEXT, SECRET_NAME, "chest", "Jane"):
        assert secret not in html
        for png in result.pngs:
            assert secret.encode() not in png.read_bytes()
    assert "carry message text or a name as words instead of a length; none of it is shown here" in html
    rows = body(parse(result).tables["violations"])
    assert rows[0][1] == "(withheld: it quotes text from the history)"
    assert rows[1][2] == "(withheld: it quotes text from the history)"
    assert len(rows) == len(document["violations"])  # withheld, not dropped


# --------------------------------------------------------------------------- rules exercised, liveness, notes


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportResult]:
    """A short run written now, as `queuechat simulate` writes it (history and summary)."""
    from queuechat._simulate import _summary_document
    from simulator import history_name, load_scenario, run_in_process

    folder = tmp_path_factory.mktemp("fresh")
    scenario = load_scenario("quiet_morning").with_duration(60.0)
    result = run_in_process(scenario, folder / history_name(scenario))
    (folder / history_name(scenario)).with_suffix(".summary.json").write_text(
        json.dumps(_summary_document(result)), encoding="utf-8")
    return folder, write_simulation_report(folder, folder / "report")


def test_the_report_shows_each_rules_exercises_violations_and_notes(fresh: tuple[Path, ReportResult]) -> None:
    folder, report = fresh
    summary = summary_of(folder)["summary"]
    rows = body(parse(report).tables["rules-exercised"])
    assert [row[0] for row in rows] == list(summary["exercised"])  # every rule of the contract, in order
    assert {row[0]: int(row[2]) for row in rows} == summary["exercised"]
    assert all(row[3] == "0" for row in rows)
    never = [rule for rule, n in summary["exercised"].items() if n == 0]
    assert never, "a one-minute run leaves rules unexercised"
    html = report.html.read_text(encoding="utf-8")
    assert f"Exercised zero times, so not tested by this run: {', '.join(never)}." in html


def test_the_report_says_liveness_was_not_judged_and_why(fresh: tuple[Path, ReportResult]) -> None:
    folder, report = fresh
    liveness = summary_of(folder)["summary"]["liveness"]
    assert liveness["judged"] is False  # a 30 s healing phase is too short for quiet_morning's pace
    html = report.html.read_text(encoding="utf-8")
    assert "Liveness: not judged: " in html and "healing" in html
