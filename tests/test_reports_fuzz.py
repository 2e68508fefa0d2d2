"""Bad input never crashes a report: any field of a recorded run's summary.json or timeline.csv
replaced by a value of another shape, or a history line cut or changed, gives either a report or a
ReportError with a clear message — never another exception."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reports import ReportError, write_comparison, write_load_report, write_simulation_report

DATA = Path(__file__).resolve().parent / "data"

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                              st.integers(), max_size=3),
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside the JSON document."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += paths(item, (*prefix, index))
    return out


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    changed = copy.deepcopy(document)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


LOAD_SUMMARY = json.loads((DATA / "load-small" / "summary.json").read_text())
LOAD_PATHS = paths(LOAD_SUMMARY)


@pytest.fixture(scope="module", autouse=True)
def charts_not_rasterized() -> Any:
    """Every chart is still built from the data (where a bad value would fail), but not drawn to PNG:
    drawing is most of a report's time and depends on no input the fuzzing changes."""
    import reports._compare
    import reports._load_charts
    import reports._sim_charts

    with pytest.MonkeyPatch.context() as patch:
        for module in (reports._load_charts, reports._compare, reports._sim_charts):
            patch.setattr(module, "png_bytes", lambda figure: b"\x89PNG not drawn")
        yield


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, len(LOAD_PATHS) - 1), value=ODD_VALUES)
def test_any_summary_field_of_another_shape_gives_a_report_or_a_report_error(scratch: Path, index: int,
                                                                             value: Any) -> None:
    run = scratch / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(DATA / "load-small", run)
    document = replaced(LOAD_SUMMARY, LOAD_PATHS[index], value)
    (run / "summary.json").write_text(json.dumps(document, allow_nan=True))
    try:
        write_load_report(run, scratch / "out")
        write_comparison(DATA / "load-same", run, scratch / "cmp")
    except ReportError as error:
        assert str(error) and "Traceback" not in str(error)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.integers(1, 8), column=st.integers(0, 5), value=st.text(max_size=12))
def test_any_timeline_cell_changed_gives_a_report_or_a_report_error(scratch: Path, row: int, column: int,
                                                                    value: str) -> None:
    run = scratch / "timeline-run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(DATA / "load-small", run)
    lines = (run / "timeline.csv").read_text().splitlines()
    row = min(row, len(lines) - 1)
    cells = lines[row].split(",")
    cells[column] = value.replace("\n", " ")
    lines[row] = ",".join(cells)
    (run / "timeline.csv").write_text("\n".join(lines) + "\n")
    try:
        write_load_report(run, scratch / "timeline-out")
    except ReportError as error:
        assert "timeline.csv" in str(error)


SIM_FOLDER = DATA / "sim-small"
SIM_HISTORY = next(SIM_FOLDER.glob("*.jsonl"))
SIM_LINES = SIM_HISTORY.read_text().splitlines()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.integers(0, len(SIM_LINES) - 1), data=st.data())
def test_any_history_line_changed_gives_a_report_or_a_report_error(scratch: Path, line: int,
                                                                   data: st.DataObject) -> None:
    folder = scratch / "sim"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(SIM_FOLDER, folder)
    record = json.loads(SIM_LINES[line])
    record_paths = paths(record)
    lines = list(SIM_LINES)
    if record_paths and data.draw(st.booleans()):
        path = data.draw(st.sampled_from(record_paths))
        lines[line] = json.dumps(replaced(record, path, data.draw(ODD_VALUES)), allow_nan=True)
    else:
        lines[line] = SIM_LINES[line][: data.draw(st.integers(0, len(SIM_LINES[line])))]
    (folder / SIM_HISTORY.name).write_text("\n".join(lines) + "\n")
    try:
        write_simulation_report(folder, scratch / "sim-out")
    except ReportError as error:
        assert SIM_HISTORY.name in str(error) or "summary" in str(error)


SIM_SUMMARY_FILE = next(SIM_FOLDER.glob("*.summary.json"))
SIM_SUMMARY = json.loads(SIM_SUMMARY_FILE.read_text())
SIM_SUMMARY_PATHS = paths(SIM_SUMMARY)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, len(SIM_SUMMARY_PATHS) - 1), value=ODD_VALUES)
def test_any_simulation_summary_field_of_another_shape_gives_a_report_or_a_report_error(
        scratch: Path, index: int, value: Any) -> None:
    folder = scratch / "sim-summary"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(SIM_FOLDER, folder)
    document = replaced(SIM_SUMMARY, SIM_SUMMARY_PATHS[index], value)
    (folder / SIM_SUMMARY_FILE.name).write_text(json.dumps(document, allow_nan=True))
    try:
        write_simulation_report(folder, scratch / "sim-summary-out")
    except ReportError as error:
        assert SIM_SUMMARY_FILE.name in str(error) or SIM_HISTORY.name in str(error)
