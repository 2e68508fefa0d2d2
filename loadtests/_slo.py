"""SLO thresholds, k6-like, read from TOML; evaluated against the merged results; JUnit XML.

A threshold file maps an entry to a list of expressions::

    "patient_to_clinician" = ["p(99) < 50ms", "errors == 0"]
    "disconnects" = ["count == 0"]

(or the same keys under a ``[thresholds]`` table). An expression is
``AGGREGATE OP VALUE``:

- latency aggregates (entries that time something): ``p(N)`` (0 < N <= 100),
  ``med``, ``avg``, ``min``, ``max``; the value takes a unit ``us``, ``ms``
  or ``s`` (a bare number is milliseconds, as in k6). For message delivery
  these are the figures corrected for coordinated omission;
  ``uncorrected_p(N)`` reads the uncorrected ones;
- counts: ``count`` (samples; for ``errors`` and ``disconnects``, how many),
  ``errors`` (the entry's errors), ``error_rate`` (errors / attempts, a
  fraction or a percentage such as ``1%``);
- ``OP`` is one of ``<  <=  >  >=  ==  !=``.

No Locust and no gevent here: the ``queuechat load`` command checks a file
before it starts anything.
"""

from __future__ import annotations

import math
import operator
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from formats.hlog import COUNTED_ENTRIES, LATENCY_ENTRIES, MESSAGE_ENTRIES, value_at_percentiles
from formats.junit import Case, Outcome, Suite
from formats.junit import junit_xml as junit_xml_document

from ._hdr import mean_and_stddev

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}
_EXPRESSION = re.compile(
    r"^\s*(?P<agg>uncorrected_p\(\s*(?P<up>[0-9.]+)\s*\)|p\(\s*(?P<p>[0-9.]+)\s*\)|[a-z_][a-z0-9_]*)"
    r"\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<value>[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>us|µs|ms|s|%)?\s*$"
)
_LATENCY_AGGREGATES = ("med", "avg", "min", "max")
_COUNT_AGGREGATES = ("count", "errors", "error_rate")
_UNIT_US = {"us": 1.0, "µs": 1.0, "ms": 1000.0, "s": 1_000_000.0, None: 1000.0}
VALID_KEYS = (*LATENCY_ENTRIES, *COUNTED_ENTRIES)


class SloError(ValueError):
    """A threshold file or expression that cannot be used; the message says where."""


@dataclass(frozen=True)
class Threshold:
    entry: str
    expression: str
    aggregate: str  # "p", "uncorrected_p", "med", "avg", "min", "max", "count", "errors", "error_rate"
    percentile: float | None
    op: str
    value: float  # microseconds for latency aggregates, a plain number otherwise

    @property
    def is_latency(self) -> bool:
        return self.aggregate not in _COUNT_AGGREGATES


@dataclass(frozen=True)
class EntryResult:
    """What a threshold is checked against, for one entry."""

    count: int
    errors: int
    latency: Any | None = None  # HdrHistogram (primary figures)
    uncorrected: Any | None = None  # HdrHistogram, message entries only


@dataclass(frozen=True)
class ThresholdResult:
    threshold: Threshold
    passed: bool
    measured: str  # human form, e.g. "73.214ms", "0", "no samples"
    measured_value: float | None

    @property
    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"{self.threshold.entry}: {self.threshold.expression} {verdict} (measured {self.measured})"


def parse_expression(entry: str, expression: str) -> Threshold:
    if not isinstance(expression, str):
        raise SloError(f"{entry}: thresholds are strings such as \"p(99) < 50ms\", got {expression!r}")
    match = _EXPRESSION.match(expression)
    if match is None:
        raise SloError(f"{entry}: cannot read threshold {expression!r} "
                       "(expected e.g. \"p(99) < 50ms\", \"errors == 0\", \"error_rate < 1%\")")
    raw_agg, unit, op = match["agg"], match["unit"], match["op"]
    try:
        number = float(match["value"])
    except ValueError:
        raise SloError(f"{entry}: {expression!r}: {match['value']!r} is not a number") from None
    percentile: float | None = None
    if match["p"] is not None or match["up"] is not None:
        aggregate = "uncorrected_p" if match["up"] is not None else "p"
        try:
            percentile = float(match["p"] or match["up"])
        except ValueError:
            raise SloError(f"{entry}: {expression!r}: bad percentile") from None
        if not 0 < percentile <= 100:
            raise SloError(f"{entry}: {expression!r}: the percentile must be in (0, 100]")
    elif raw_agg in _LATENCY_AGGREGATES or raw_agg in _COUNT_AGGREGATES:
        aggregate = raw_agg
    else:
        raise SloError(f"{entry}: {expression!r}: unknown aggregate {raw_agg!r} (use p(N), "
                       f"uncorrected_p(N), {', '.join(_LATENCY_AGGREGATES + _COUNT_AGGREGATES)})")
    if entry in COUNTED_ENTRIES and aggregate != "count":
        raise SloError(f"{entry}: {expression!r}: '{entry}' is a count; use \"count == 0\" and the like")
    if aggregate == "uncorrected_p" and entry not in MESSAGE_ENTRIES:
        raise SloError(f"{entry}: {expression!r}: only message delivery has uncorrected figures")
    if aggregate in _COUNT_AGGREGATES:
        if unit == "%":
            if aggregate != "error_rate":
                raise SloError(f"{entry}: {expression!r}: '%' is for error_rate")
            number /= 100.0
        elif unit is not None:
            raise SloError(f"{entry}: {expression!r}: {aggregate} takes no time unit")
        value = number
    else:
        if unit == "%":
            raise SloError(f"{entry}: {expression!r}: a latency takes us, ms or s")
        value = number * _UNIT_US[unit]
    if not math.isfinite(value):
        raise SloError(f"{entry}: {expression!r}: the value must be finite")
    return Threshold(entry=entry, expression=expression.strip(), aggregate=aggregate,
                     percentile=percentile, op=op, value=value)


def parse_thresholds(data: Mapping[str, Any], *, source: str = "thresholds") -> list[Threshold]:
    table = data.get("thresholds", data) if isinstance(data.get("thresholds"), Mapping) else data
    out: list[Threshold] = []
    for entry, expressions in table.items():
        if entry not in VALID_KEYS:
            raise SloError(f"{source}: unknown entry {entry!r}; entries are: {', '.join(VALID_KEYS)}")
        if isinstance(expressions, str):
            expressions = [expressions]
        if not isinstance(expressions, list) or not expressions:
            raise SloError(f"{source}: {entry} must be a list of threshold strings")
        out.extend(parse_expression(entry, expression) for expression in expressions)
    return out


def load_thresholds(path: str | Path) -> list[Threshold]:
    """Read a threshold file; :class:`SloError` (with the file named) when it cannot be used."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SloError(f"cannot read SLO file {str(path)!r}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SloError(f"SLO file {str(path)!r} is not valid TOML: {error}") from None
    return parse_thresholds(data, source=str(path))


def _format_us(value: float) -> str:
    return f"{value / 1000.0:.3f}ms"


def evaluate(thresholds: Sequence[Threshold], results: Mapping[str, EntryResult]) -> list[ThresholdResult]:
    out = []
    for threshold in thresholds:
        result = results.get(threshold.entry, EntryResult(count=0, errors=0))
        measured: float | None
        if threshold.aggregate in ("count",):
            measured = float(result.count)
            shown = f"{result.count}"
        elif threshold.aggregate == "errors":
            measured = float(result.errors)
            shown = f"{result.errors}"
        elif threshold.aggregate == "error_rate":
            attempts = result.count + result.errors
            measured = result.errors / attempts if attempts else 0.0
            shown = f"{measured:.4%} ({result.errors} of {attempts})"
        else:
            histogram = result.uncorrected if threshold.aggregate == "uncorrected_p" else result.latency
            if histogram is None or not histogram.get_total_count():
                out.append(ThresholdResult(threshold, False, "no samples", None))
                continue
            if threshold.aggregate in ("p", "uncorrected_p"):
                assert threshold.percentile is not None
                measured = float(value_at_percentiles(histogram, (threshold.percentile,))[0])
            elif threshold.aggregate == "med":
                measured = float(value_at_percentiles(histogram, (50.0,))[0])
            elif threshold.aggregate == "avg":
                measured = mean_and_stddev(histogram)[0]
            elif threshold.aggregate == "min":
                measured = float(histogram.get_min_value())
            else:
                measured = float(histogram.get_max_value())
            shown = _format_us(measured)
        passed = _OPS[threshold.op](measured, threshold.value)
        out.append(ThresholdResult(threshold, passed, shown, measured))
    return out


def junit_xml(results: Sequence[ThresholdResult], *, validity_problems: Sequence[str],
              duration_s: float, suite: str = "queuechat.load", incomplete: bool = False) -> bytes:
    """One test case per threshold, plus one for the run's validity; what every CI system reads."""
    validity = Outcome(kind="error", message="; ".join(validity_problems),
                       type="IncompleteRun" if incomplete else "InvalidRun",
                       text="\n".join(validity_problems)) if validity_problems else None
    cases = [Case(classname=f"{suite}.run", name="the run is valid", time="0", outcome=validity)]
    cases += [
        Case(classname=f"{suite}.slo.{result.threshold.entry}", name=result.threshold.expression, time="0",
             outcome=None if result.passed else Outcome(kind="failure", message=result.message,
                                                        type="SloBreach", text=result.message))
        for result in results
    ]
    document = Suite(name=suite, cases=cases, time=f"{duration_s:.3f}")
    return junit_xml_document(document, root_skipped=False) + b"\n"
