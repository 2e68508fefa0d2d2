"""``queuechat report``: a load run's or a simulation's report, or two load runs compared.

Exit codes: 0 written (with --compare: no regression), 1 --compare found a regression, 2 usage
error or unreadable input, 3 --compare was inconclusive (a run is invalid or incomplete, or nothing could
be judged) or the runs are not comparable (different settings, without --force).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from collections.abc import Callable

    from reports import ReportResult

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"queuechat report: {message}", err=True)
    sys.exit(code)


def run_kind(path: Path) -> str:
    """ "load" for a ``queuechat load`` results folder, "simulation" for a history or its folder, "demo"
    for a ``queuechat demo`` folder (both)."""
    if path.is_file():
        if path.suffix == ".jsonl":
            return "simulation"
        if path.name in ("summary.json", "latency.hlog"):
            return "load-file"
        _fail(f"{path}: neither a load run folder nor a simulation history (*.jsonl)")
    if not path.exists():
        _fail(f"{path}: no such file or folder")
    if (path / "summary.json").exists() or (path / "latency.hlog").exists():
        return "load"
    if any(path.glob("*.jsonl")):
        return "simulation"
    if (path / "load" / "summary.json").exists() and any((path / "simulation").glob("*.jsonl")):
        return "demo"
    _fail(f"{path}: neither a load run (summary.json and latency.hlog) nor a simulation output (*.jsonl)")
    raise AssertionError  # unreachable: _fail exits


def _simulation_writer() -> Callable[[Path, Path | None], ReportResult]:
    from reports import write_simulation_report

    return write_simulation_report


def _written(html: Path, charts: int) -> None:
    absolute = html.resolve()
    click.echo(f"queuechat report: wrote {absolute} ({charts} charts, PNGs beside it)")
    click.echo(f"queuechat report: open {absolute.as_uri()}")


def report(
    run: Path | None,
    compare: tuple[Path, Path] | None,
    out: Path | None,
    figure: str,
    max_regression: float,
    floor_ms: float,
    min_samples: int,
    junit: Path | None,
    force: bool = False,
) -> None:
    from reports import RegressionBounds, ReportError, format_comparison, write_comparison, write_load_report

    if (run is None) == (compare is None):
        _fail("give either RUN, or --compare BASELINE CANDIDATE")
    try:
        if compare is not None:
            baseline, candidate = compare
            for path in compare:
                if run_kind(path) != "load":
                    _fail(f"{path}: --compare takes two load run folders (summary.json and latency.hlog)")
            bounds = RegressionBounds(
                figure=figure, max_increase_pct=max_regression, floor_ms=floor_ms, min_samples=min_samples
            )
            target = out if out is not None else candidate / "compare"
            result = write_comparison(baseline, candidate, target, bounds, junit, force=force)
            click.echo(format_comparison(result.comparison))
            _written(result.report.html, len(result.report.pngs))
            click.echo(f"queuechat report: verdict as JUnit XML in {result.junit.resolve()}")
            sys.exit(result.comparison.exit_code)
        assert run is not None
        kind = run_kind(run)
        if kind == "load-file":
            run = run.parent
            kind = "load"
        if kind == "demo":  # a `queuechat demo` folder: both reports, each in its run's report/
            for part, write in (("simulation", _simulation_writer()), ("load", write_load_report)):
                written = write(run / part, out / part if out is not None else None)
                _written(written.html, len(written.pngs))
            sys.exit(EXIT_OK)
        if kind == "load":
            written = write_load_report(run, out)
        else:
            from reports import write_simulation_report

            written = write_simulation_report(run, out)
        _written(written.html, len(written.pngs))
    except ReportError as exc:
        _fail(str(exc))
    sys.exit(EXIT_OK)
