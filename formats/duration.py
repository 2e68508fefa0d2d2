"""Durations as people type them: one grammar for every command and every scenario file.

``parse_duration`` turns ``"90s"``, ``"250ms"``, ``"1.5m"``, ``"2m30"``, ``"2m30s"``, ``"1h30m"``,
``"1h"`` or a plain number of seconds (``42``, ``"42"``, ``4.5``) into seconds, as a float. Units are
``h``, ``m``, ``s`` and ``ms``, largest first, each at most once, any of them with a decimal part;
letters may be in either case and spaces may go anywhere (``"1h 30m"``). A bare number after ``h``
or ``m`` counts in the next unit down, as people write clock times: ``"2m30"`` is 150 s and
``"1h30"`` is 5,400 s.

Refused, with :class:`DurationError` (a ``ValueError``) saying what was expected: empty text,
negative or non-finite values, booleans, unknown units, units out of order or repeated, and
anything else. The grammar says nothing of bounds: each caller keeps its own (a run of at least
1 s, at most 8 h...) and its own error wrapper that names the option or key.
"""

from __future__ import annotations

import math
import re
from typing import Final

EXAMPLES: Final = "90s, 250ms, 1.5m, 2m30, 1h30m or a number of seconds"

# A unit's size in seconds, largest first: units must come in this order.
_UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# What a bare number after a unit counts in ("2m30": seconds, "1h30": minutes).
_NEXT_UNIT: Final = {"h": "m", "m": "s"}
_PART: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|h|m|s)?\s*")


class DurationError(ValueError):
    """Not a duration; the message quotes the value and gives examples of what is one."""


def parse_duration(value: str | float) -> float:
    """Seconds from a duration (see the module's grammar); :class:`DurationError` when it is not one."""
    if isinstance(value, bool):
        raise DurationError(f"expected a duration such as {EXAMPLES}, got {value!r}")
    if isinstance(value, int | float):
        return _checked(float(value), value)
    if not isinstance(value, str):
        raise DurationError(f"expected a duration such as {EXAMPLES}, got {value!r}")
    text = value.strip().lower()
    if not text:
        raise DurationError(f"expected a duration such as {EXAMPLES}, got an empty text")
    if text.startswith("-"):
        raise DurationError(f"expected a duration of at least 0, got {value!r}")
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _checked(number, value)
    return _checked(_sum_of_parts(text, value), value)


def _checked(seconds: float, value: object) -> float:
    if not math.isfinite(seconds):
        raise DurationError(f"expected a finite duration, got {value!r}")
    if seconds < 0:
        raise DurationError(f"expected a duration of at least 0, got {value!r}")
    return seconds


def _sum_of_parts(text: str, value: str) -> float:
    """``"1h30m"`` -> 5400.0: numbers with units, largest unit first, a bare number only last."""
    total = 0.0
    position = 0
    previous: str | None = None
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise DurationError(f"expected a duration such as {EXAMPLES}, got {value!r}")
        number, unit = match.groups()
        position = match.end()
        if unit is None:
            if position < len(text):
                raise DurationError(f"expected a duration such as {EXAMPLES}, got {value!r}")
            if previous not in _NEXT_UNIT:
                raise DurationError(f"expected a duration such as {EXAMPLES}, got {value!r} (a number "
                                    "without a unit may only follow h or m)")
            unit = _NEXT_UNIT[previous]
        order = list(_UNITS)
        if previous is not None and order.index(unit) <= order.index(previous):
            raise DurationError(f"expected a duration such as {EXAMPLES}, got {value!r} (units go largest "
                                "first, each at most once: h, m, s, ms)")
        total += float(number) * _UNITS[unit]
        previous = unit
    return total


def whole_seconds(seconds: float) -> int:
    """A duration for a caller that counts whole seconds (Locust's run time): fractions round up, so a
    run is never shorter than asked."""
    return math.ceil(seconds)
