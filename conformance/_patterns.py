"""Expected frames: patterns with placeholders, sequence matching, and rendering for reports.

A *pattern* is a dict like a frame, whose values are literals (compared with
their JSON type: ``1`` is not ``1.0`` nor ``true``), nested patterns, or
matchers (:data:`ANY`, :data:`ABSENT`, :data:`TS`, ...). Keys a pattern does
not name are ignored: the contract lets servers add fields. A *sequence* is a
list of items -- patterns, :class:`Unordered` groups, :class:`Repeat` runs --
matched against the frames one connection received, in order.

Rendering never shows a ``text`` or ``name`` value, only its length (R13),
and shows patient ids by their labels (``A``, ``B``) when known.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

CLOSE_TYPE: Final = "(close)"  # a close of the connection, as the frame list records it
REDACTED_KEYS: Final = ("text", "name")

Labels = Mapping[str, str]  # patient id -> label


class Matcher:
    """A placeholder in a pattern."""

    def matches(self, value: Any) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def render(self, labels: Labels) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def explain(self, value: Any) -> str:
        return f"expected {self.render({})}"


class _Any(Matcher):
    def matches(self, value: Any) -> bool:
        return value is not _MISSING

    def render(self, labels: Labels) -> str:
        return "<any>"

    def explain(self, value: Any) -> str:
        return "is missing"


class _Absent(Matcher):
    def matches(self, value: Any) -> bool:
        return value is _MISSING

    def render(self, labels: Labels) -> str:
        return "<absent>"

    def explain(self, value: Any) -> str:
        return "must be absent"


class _Optional(Matcher):
    """Either absent or anything."""

    def matches(self, value: Any) -> bool:
        return True

    def render(self, labels: Labels) -> str:
        return "<any or absent>"


@dataclass(frozen=True)
class Kind(Matcher):
    """A JSON value of a kind: ``str``, ``int`` (not bool), ``number``, ``bool``."""

    kind: str
    min_value: float | None = None

    def matches(self, value: Any) -> bool:
        if value is _MISSING:
            return False
        if self.kind == "str":
            return isinstance(value, str)
        if isinstance(value, bool):
            return self.kind == "bool"
        if self.kind == "int":
            ok = isinstance(value, int)
        elif self.kind == "number":
            ok = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
        else:
            return False
        return ok and (self.min_value is None or value >= self.min_value)

    def render(self, labels: Labels) -> str:
        floor = f" ≥ {self.min_value:g}" if self.min_value is not None else ""
        return f"<{self.kind}{floor}>"

    def explain(self, value: Any) -> str:
        if value is _MISSING:
            return "is missing"
        return f"must be {self.render({})}"


class _Timestamp(Matcher):
    """The server's time in milliseconds since the epoch: an integer within a day of ours."""

    WINDOW_MS: Final = 24 * 3600 * 1000

    def matches(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return abs(value - time.time() * 1000) <= self.WINDOW_MS

    def render(self, labels: Labels) -> str:
        return "<ms time>"

    def explain(self, value: Any) -> str:
        if value is _MISSING:
            return "is missing"
        return "must be an integer, the server's time in ms since the epoch (within a day of ours)"


@dataclass(frozen=True)
class PatientId(Matcher):
    """The id a patient's connection was given in its welcome (resolved when matched)."""

    resolve: Callable[[], str | None]
    label: str

    def matches(self, value: Any) -> bool:
        expected = self.resolve()
        return expected is not None and value == expected

    def render(self, labels: Labels) -> str:
        return f"<{self.label}>"

    def explain(self, value: Any) -> str:
        return f"must be patient {self.label}'s id"


@dataclass(frozen=True)
class Satisfies(Matcher):
    """Any value for which ``check`` is true; ``description`` says what it means."""

    check: Callable[[Any], bool]
    description: str

    def matches(self, value: Any) -> bool:
        return value is not _MISSING and bool(self.check(value))

    def render(self, labels: Labels) -> str:
        return f"<{self.description}>"

    def explain(self, value: Any) -> str:
        return f"must be {self.description}"


ANY: Final = _Any()
ABSENT: Final = _Absent()
OPTIONAL: Final = _Optional()
TS: Final = _Timestamp()
STR: Final = Kind("str")
INT: Final = Kind("int")
NUMBER: Final = Kind("number")
BOOL: Final = Kind("bool")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


# --------------------------------------------------------------------------- sequence items


@dataclass(frozen=True)
class Unordered:
    """Frames the contract does not order among themselves: these, in any order, next."""

    patterns: tuple[dict[str, Any], ...]

    def __init__(self, *patterns: dict[str, Any]) -> None:
        object.__setattr__(self, "patterns", patterns)


@dataclass(frozen=True)
class Repeat:
    """``pattern`` between ``low`` and ``high`` times in a row (a frame the contract says *may* come)."""

    pattern: dict[str, Any]
    low: int = 0
    high: int = 8


Item = dict[str, Any] | Unordered | Repeat
Sequence_ = Sequence[Item]


def close(code: int | Matcher | None = None) -> dict[str, Any]:
    """The server closed the connection (``code`` None: any code, or none)."""
    return {"type": CLOSE_TYPE, "code": ANY if code is None else code}


def item_count(items: Sequence_) -> int:
    """How many frames ``items`` needs at least."""
    total = 0
    for item in items:
        if isinstance(item, Unordered):
            total += len(item.patterns)
        elif isinstance(item, Repeat):
            total += item.low
        else:
            total += 1
    return total


def ends_with_close(items: Sequence_) -> bool:
    return bool(items) and isinstance(items[-1], dict) and items[-1].get("type") == CLOSE_TYPE


# --------------------------------------------------------------------------- matching


def _value_mismatch(pattern: Any, value: Any, path: str) -> str | None:
    """None when ``value`` matches ``pattern``, else why not (never quoting text or names)."""
    if isinstance(pattern, Matcher):
        return None if pattern.matches(value) else f"{path} {pattern.explain(value)}"
    if value is _MISSING:
        return f"{path} is missing"
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return f"{path} must be an object"
        for key, sub in pattern.items():
            why = _value_mismatch(sub, value.get(key, _MISSING), f"{path}.{key}" if path else key)
            if why:
                return why
        return None
    if isinstance(pattern, list):
        if not isinstance(value, list):
            return f"{path} must be a list"
        if len(value) != len(pattern):
            return f"{path} must have {len(pattern)} items, has {len(value)}"
        for index, (sub, got) in enumerate(zip(pattern, value, strict=True)):
            why = _value_mismatch(sub, got, f"{path}[{index}]")
            if why:
                return why
        return None
    if type(pattern) is not type(value) and not (isinstance(pattern, float) and isinstance(value, float)):
        shown = "a different value" if path.split(".")[-1] in REDACTED_KEYS else _short(value)
        return f"{path} must be {_short_expected(pattern, path)}, is {shown}"
    if pattern != value:
        if path.split(".")[-1] in REDACTED_KEYS or ".text" in path or ".name" in path:
            return f"{path} differs from what was sent"
        return f"{path} must be {_short(pattern)}, is {_short(value)}"
    return None


def _short(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 40 else f"a string of {len(value)} characters"
    if isinstance(value, int | float):
        return repr(value)
    return type(value).__name__


def _short_expected(pattern: Any, path: str) -> str:
    if path.split(".")[-1] in REDACTED_KEYS:
        return f"a {type(pattern).__name__}"
    return _short(pattern)


def frame_mismatch(pattern: dict[str, Any], frame: dict[str, Any]) -> str | None:
    """None when ``frame`` matches ``pattern``, else a short reason."""
    if frame.get("type") != pattern.get("type"):
        return f"expected {pattern.get('type')}, saw {frame.get('type')}"
    return _value_mismatch(pattern, frame, "")


def match_sequence(items: Sequence_, frames: Sequence[dict[str, Any]]) -> str | None:
    """None when ``frames`` is exactly ``items``, else where and why it departs."""
    best: list[tuple[int, str]] = []

    def walk(i: int, j: int) -> bool:
        if i == len(items):
            if j == len(frames):
                return True
            best.append((j, f"frame {j + 1} ({frames[j].get('type')}) was not expected"))
            return False
        item = items[i]
        if isinstance(item, Unordered):
            group = frames[j : j + len(item.patterns)]
            if len(group) < len(item.patterns):
                best.append(
                    (
                        len(frames),
                        f"missing frame {len(frames) + 1}: expected "
                        f"{', '.join(p.get('type', '?') for p in item.patterns)} (any order)",
                    )
                )
                return False
            for order in itertools.permutations(item.patterns):
                if all(frame_mismatch(p, f) is None for p, f in zip(order, group, strict=True)):
                    return walk(i + 1, j + len(group))
            reasons = [frame_mismatch(p, f) for p, f in zip(item.patterns, group, strict=True)]
            why = next((r for r in reasons if r), "frames do not match")
            best.append((j, f"frames {j + 1}-{j + len(group)} (any order): {why}"))
            return False
        if isinstance(item, Repeat):
            taken = 0
            while taken < item.low:
                if j + taken >= len(frames) or frame_mismatch(item.pattern, frames[j + taken]) is not None:
                    best.append((j + taken, f"frame {j + taken + 1}: expected {item.pattern.get('type')}"))
                    return False
                taken += 1
            if walk(i + 1, j + taken):
                return True
            while taken < item.high and j + taken < len(frames):
                if frame_mismatch(item.pattern, frames[j + taken]) is not None:
                    return False
                taken += 1
                if walk(i + 1, j + taken):
                    return True
            return False
        if j >= len(frames):
            best.append((j, f"missing frame {j + 1}: expected {item.get('type')}"))
            return False
        mismatch = frame_mismatch(item, frames[j])
        if mismatch is not None:
            best.append((j, f"frame {j + 1}: {mismatch}"))
            return False
        return walk(i + 1, j + 1)

    if walk(0, 0):
        return None
    swapped = _wrong_order(items, frames)
    if swapped is not None:
        return swapped
    # Report the departure found furthest into the frames: the most informative one.
    _, reason = max(best, key=lambda entry: entry[0]) if best else (0, "frames do not match")
    return reason


CONTRACT_ORDER: Final = ("patient_left", "erased", "message", "chat_box", "unread", "notify")


def _wrong_order(items: Sequence_, frames: Sequence[dict[str, Any]]) -> str | None:
    """When ``frames`` are exactly the expected frames but in another order, say which two were swapped
    (the contract's "Order" rule), rather than reporting a mismatch at the first of them."""
    patterns = [item for item in items if isinstance(item, dict)]
    if len(patterns) != len(items) or len(patterns) != len(frames):
        return None
    placed: list[int] = []
    for frame in frames:
        fits = (i for i, p in enumerate(patterns) if i not in placed and frame_mismatch(p, frame) is None)
        index = next(fits, None)
        if index is None:
            return None
        placed.append(index)
    for j in range(len(placed)):
        for k in range(j + 1, len(placed)):
            if placed[j] > placed[k]:
                first, second = frames[j].get("type"), frames[k].get("type")
                return (
                    f"frames in the wrong order: frame {j + 1} ({first}) came before frame {k + 1} "
                    f"({second}); the contract orders one cause's frames "
                    f"{', '.join(CONTRACT_ORDER)}, then the request's answer"
                )
    return None


def find_unexpected_extra(items: Sequence_, frames: Sequence[dict[str, Any]]) -> bool:
    """True when every frame ``items`` requires is in ``frames`` (in order; an Unordered group's in any
    order) and the rest are extra: the contract's frames came, with more where it is silent."""
    used: set[int] = set()
    j = 0
    for item in items:
        if isinstance(item, Repeat):
            continue
        if isinstance(item, Unordered):
            start = j
            for pattern in item.patterns:
                k = next((k for k in range(start, len(frames))
                          if k not in used and frame_mismatch(pattern, frames[k]) is None), None)
                if k is None:
                    return False
                used.add(k)
                j = max(j, k + 1)
            continue
        while j < len(frames) and (j in used or frame_mismatch(item, frames[j]) is not None):
            j += 1
        if j == len(frames):
            return False
        used.add(j)
        j += 1
    return True


# --------------------------------------------------------------------------- rendering


def render_value(value: Any, labels: Labels, key: str = "") -> str:
    if isinstance(value, Matcher):
        return value.render(labels)
    if key in REDACTED_KEYS:
        if isinstance(value, str):
            return f"<{len(value)} chars>"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"<{value} chars>"
    if isinstance(value, dict):
        inner = ", ".join(
            f"{k}: {render_value(v, labels, k)}"
            for k, v in value.items()
            if v is not ABSENT and not (k == "ref" and isinstance(v, _Optional))
        )
        return "{" + inner + "}"
    if isinstance(value, list):
        if len(value) > 6:
            shown = ", ".join(render_value(v, labels) for v in value[:3])
            return f"[{shown}, … {len(value) - 3} more]"
        return "[" + ", ".join(render_value(v, labels) for v in value) + "]"
    if isinstance(value, str):
        if value in labels:
            return f"<{labels[value]}>"
        return value if len(value) <= 48 else value[:40] + f"…({len(value)} chars)"
    return _short(value)


def render_frame(frame: Mapping[str, Any], labels: Labels) -> str:
    """One line for a frame or pattern: ``type{field: value, ...}``; text and name as lengths."""
    kind = frame.get("type")
    if kind == CLOSE_TYPE:
        code = frame.get("code")
        return "close" + (f" {render_value(code, labels)}" if code is not None and code is not ANY else "")
    fields = ", ".join(
        f"{key}: {render_value(value, labels, key)}"
        for key, value in frame.items()
        if key != "type" and value is not ABSENT and not (key == "ref" and isinstance(value, _Optional))
    )
    return f"{kind}{{{fields}}}"


def render_item(item: Item, labels: Labels) -> list[str]:
    if isinstance(item, Unordered):
        return [f"(any order) {render_frame(p, labels)}" for p in item.patterns]
    if isinstance(item, Repeat):
        return [f"({item.low}-{item.high} times) {render_frame(item.pattern, labels)}"]
    return [render_frame(item, labels)]


def render_items(items: Sequence_, labels: Labels) -> list[str]:
    lines: list[str] = []
    for item in items:
        lines.extend(render_item(item, labels))
    return lines
