"""Scenario files: TOML in, a checked :class:`Scenario` out.

The file's shape is declared once, as msgspec Structs (``_ScenarioFile`` and its tables): every key,
its type, its default and its bounds, unknown keys refused. What one value cannot say is checked
after: durations (formats.duration's grammar), distributions, and the checks across values (healing
at most half the duration, a timeline's room that exists, a mean think time of at least 50 ms). Every
mistake is reported as ``FILE: KEY: expected WHAT, got VALUE`` (no traceback), WHAT with its bounds.

Durations are strings such as ``"250ms"``, ``"90s"``, ``"1.5m"``, ``"2m30"``, ``"8h"``,
``"1h30m"`` or a number of seconds. Distributions are inline tables::

    { dist = "exponential", mean = "45s" }
    { dist = "uniform", min = "2s", max = "20s" }
    { dist = "lognormal", median = "6m", sigma = 0.5, max = "1h" }
    { dist = "constant", value = "5s" }

(for sizes, numbers instead of durations); a bare value means ``constant``. docs/simulator.md lists
every key with its default and bounds.
"""

from __future__ import annotations

import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from formats.duration import DurationError, parse_duration
from reference_server.protocol import Limits

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"  # shipped in the package (wheel too)


class ScenarioError(Exception):
    """A scenario that cannot be run; the message names the file, the key and what was expected."""


# --------------------------------------------------------------------------- distributions


@dataclass(frozen=True, slots=True)
class Dist:
    """A distribution of positive numbers (seconds, or characters); sampled with the caller's RNG."""

    kind: str
    a: float
    b: float = 0.0
    low: float = 0.0
    high: float = math.inf

    def sample(self, rng: Random) -> float:
        kind = self.kind
        if kind == "exponential":
            value = rng.expovariate(1.0 / self.a)
        elif kind == "uniform":
            value = rng.uniform(self.a, self.b)
        elif kind == "lognormal":
            value = rng.lognormvariate(math.log(self.a), self.b)
        else:
            value = self.a
        return min(max(value, self.low), self.high)

    @property
    def mean(self) -> float:
        if self.kind == "exponential":
            return self.a
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        if self.kind == "lognormal":
            return self.a * math.exp(self.b * self.b / 2)
        return self.a


# --------------------------------------------------------------------------- the checked scenario


@dataclass(frozen=True, slots=True)
class TimelineArrival:
    at_s: float
    count: int
    room: int | None  # 1-based; None = every room


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    path: str
    description: str
    seed: int
    duration_s: float
    healing_s: float
    # rooms
    rooms: int
    room_prefix: str
    limits: Limits
    # arrivals
    arrival_process: str
    arrival_rate_per_hour: float
    initial_queue: int
    timeline: tuple[TimelineArrival, ...]
    # patients
    message_interval: Dist
    text_chars: Dist
    patience: Dist
    reply_probability: float
    reply_delay: Dist
    try_when_disabled: float
    in_call_message_factor: float
    departure: dict[str, float]
    # clinicians
    think_time: Dist
    typing_time: Dist
    clinician_reply_probability: float
    max_parallel_chats: int
    call_probability: float
    call_length: Dist
    habits: dict[str, float]
    clinician_text_chars: Dist
    # faults
    refresh_per_hour: float
    refresh_at: tuple[float, ...]
    refresh_style: dict[str, float]
    patient_drop_per_hour: float
    clinician_drop_per_hour: float
    stall_per_hour: float
    stall_length: Dist
    slow_reader_fraction: float
    slow_reader_delay_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def with_duration(self, duration_s: float) -> Scenario:
        """The same scenario capped at ``duration_s``; the healing phase shrinks to fit (at most half)."""
        from dataclasses import replace

        if duration_s >= self.duration_s:
            return self
        return replace(self, duration_s=duration_s, healing_s=min(self.healing_s, duration_s / 2))

    @property
    def active_s(self) -> float:
        """Seconds before the healing phase: faults and voluntary departures happen only then."""
        return self.duration_s - self.healing_s


def pace(scenario: Scenario, speed: float = 1.0) -> dict[str, float | int]:
    """The scenario's mean times (ms) and arrival rate, for the history's header.

    The checker derives from them how long the healing phase must be before it can fairly
    judge liveness (every waiting patient answered); without them it cannot say. A run
    compressed ``speed`` times (over sockets) has its times divided and its rate multiplied.
    """
    def ms(dist: Dist) -> float:
        return round(dist.mean * 1000.0 / speed, 3)

    return {
        "clinician_think_ms": ms(scenario.think_time),
        "clinician_typing_ms": ms(scenario.typing_time),
        "patient_message_interval_ms": ms(scenario.message_interval),
        "patient_reply_delay_ms": ms(scenario.reply_delay),
        "arrivals_per_hour_per_room": round(scenario.arrival_rate_per_hour * speed, 6),
        "rooms": scenario.rooms,
    }


# --------------------------------------------------------------------------- the file's shape
#
# msgspec checks the shape of the file: unknown keys, types, and every bound that concerns one value.
# Durations (a number of seconds or a text such as "1h30m", formats.duration) and distributions are
# read after it, as are the checks that need several values (healing at most half the duration, a
# timeline room that exists, a mean think time of at least 50 ms...): each error names the file and key.

DurationText = float | str  # read by formats.duration after the shape is checked
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
PerHour = Annotated[float, Meta(ge=0.0, le=3600.0)]
Weight = Annotated[float, Meta(ge=0.0)]
# A server limit: a positive integer, a positive number (int kept as int: the history's header shows it),
# or "off" for the limits that can be switched off (reference_server's Limits).
PositiveInt = Annotated[int, Meta(gt=0)]
PositiveNumber = Annotated[int, Meta(gt=0)] | Annotated[float, Meta(gt=0)]
Off = Literal["off"]


class _Shape(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class _Exponential(_Shape, frozen=True, tag_field="dist", tag="exponential"):
    mean: DurationText
    min: DurationText | None = None
    max: DurationText | None = None


class _Uniform(_Shape, frozen=True, tag_field="dist", tag="uniform"):
    min: DurationText
    max: DurationText


class _Lognormal(_Shape, frozen=True, tag_field="dist", tag="lognormal"):
    median: DurationText
    sigma: Annotated[float, Meta(ge=0.0, le=5.0)] = 0.5
    min: DurationText | None = None
    max: DurationText | None = None


class _Constant(_Shape, frozen=True, tag_field="dist", tag="constant"):
    value: DurationText
    min: DurationText | None = None  # allowed, and ignored: a constant is its value
    max: DurationText | None = None


# A distribution: an inline table with its kind in "dist", or a bare value (a constant).
_DistShape = _Exponential | _Uniform | _Lognormal | _Constant | float | str
_DIST_KINDS: Final = '"exponential", "uniform", "lognormal", "constant"'
_DIST_FIELDS: Final = ("message_interval", "text_chars", "patience", "reply_delay", "think_time",
                       "typing_time", "call_length", "stall_length")


class _Rooms(_Shape, frozen=True):
    count: Annotated[int, Meta(ge=1, le=10_000)] = 1
    prefix: Annotated[str, Meta(pattern=r"^[a-z0-9-]{1,40}$")] | None = None


class _Server(_Shape, frozen=True):
    max_text_chars: PositiveInt | msgspec.UnsetType = msgspec.UNSET
    max_frame_bytes: PositiveInt | msgspec.UnsetType = msgspec.UNSET
    max_queued_frames: PositiveInt | msgspec.UnsetType = msgspec.UNSET
    max_queued_bytes: PositiveInt | msgspec.UnsetType = msgspec.UNSET
    rate_per_s: PositiveNumber | Off | msgspec.UnsetType = msgspec.UNSET
    rate_burst: PositiveInt | Off | msgspec.UnsetType = msgspec.UNSET
    max_patients_per_room: PositiveInt | Off | msgspec.UnsetType = msgspec.UNSET
    max_rooms: PositiveInt | Off | msgspec.UnsetType = msgspec.UNSET
    hello_timeout_s: PositiveNumber | Off | msgspec.UnsetType = msgspec.UNSET
    ping_interval_s: PositiveNumber | Off | msgspec.UnsetType = msgspec.UNSET
    ping_timeout_s: PositiveNumber | Off | msgspec.UnsetType = msgspec.UNSET


class _Arrival(_Shape, frozen=True):
    at: DurationText
    count: Annotated[int, Meta(ge=1, le=10_000)] = 1
    room: Annotated[int, Meta(ge=1)] | None = None  # 1-based; at most rooms.count (checked after)


class _Arrivals(_Shape, frozen=True):
    process: Literal["poisson", "timeline"] = "poisson"
    rate_per_hour: Annotated[float, Meta(ge=0.0, le=10_000.0)] | None = None  # default: by process
    initial_queue: Annotated[int, Meta(ge=0, le=500)] = 0
    timeline: list[_Arrival] = []


class _Departure(_Shape, frozen=True):
    leave: Weight = 0.7
    close: Weight = 0.2
    drop: Weight = 0.1


class _Patients(_Shape, frozen=True):
    message_interval: _DistShape = _Exponential(mean="60s")
    text_chars: _DistShape = _Lognormal(median=60, sigma=0.8)
    patience: _DistShape = _Exponential(mean="40m")
    reply_probability: Probability = 0.7
    reply_delay: _DistShape = _Exponential(mean="20s")
    try_when_disabled: Probability = 0.1
    in_call_message_factor: Annotated[float, Meta(ge=0.0, le=10.0)] = 0.3
    departure: _Departure = msgspec.field(default_factory=_Departure)


class _Habits(_Shape, frozen=True):
    reply: Weight = 10.0
    chat_new: Weight = 3.0
    minimize: Weight = 1.0
    close: Weight = 1.0
    open_other: Weight = 1.0
    toggle_notifications: Weight = 0.1
    toggle_patient_chat: Weight = 0.1
    idle: Weight = 1.0


class _Clinicians(_Shape, frozen=True):
    think_time: _DistShape = _Exponential(mean="20s")
    typing_time: _DistShape = _Uniform(min="2s", max="15s")
    reply_probability: Probability = 0.9
    max_parallel_chats: Annotated[int, Meta(ge=1, le=500)] = 4
    call_probability: Probability = 0.1
    call_length: _DistShape = _Lognormal(median="6m", sigma=0.5)
    habits: _Habits = msgspec.field(default_factory=_Habits)
    text_chars: _DistShape = _Lognormal(median=80, sigma=0.7)


class _RefreshStyle(_Shape, frozen=True):
    reload: Weight = 0.5
    new_tab: Weight = 0.5


class _Faults(_Shape, frozen=True):
    refresh_per_hour: PerHour = 0.0
    refresh_at: list[DurationText] = []
    refresh_style: _RefreshStyle = msgspec.field(default_factory=_RefreshStyle)
    patient_drop_per_hour: PerHour = 0.0
    clinician_drop_per_hour: PerHour = 0.0
    stall_per_hour: PerHour = 0.0
    stall_length: _DistShape = _Uniform(min="5s", max="90s")
    slow_reader_fraction: Probability = 0.0
    slow_reader_delay: DurationText = "200ms"


class _ScenarioFile(_Shape, frozen=True):
    name: str | None = None  # default: the file's name; checked after (the default is checked too)
    description: str = ""
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 1
    duration: DurationText = "1h"
    healing: DurationText | None = None  # default: a quarter of the duration, at most 10 minutes
    rooms: _Rooms = msgspec.field(default_factory=_Rooms)
    server: _Server = msgspec.field(default_factory=_Server)
    arrivals: _Arrivals = msgspec.field(default_factory=_Arrivals)
    patients: _Patients = msgspec.field(default_factory=_Patients)
    clinicians: _Clinicians = msgspec.field(default_factory=_Clinicians)
    faults: _Faults = msgspec.field(default_factory=_Faults)


_PARTS: Final = re.compile(r"[^.\[\]]+|\[\d+\]")
_SIZE_DISTS: Final = ("patients.text_chars", "clinicians.text_chars")  # in characters, not seconds
_DURATION_WORDS: Final = "a duration such as \"90s\", \"1.5m\", \"1h30m\" or a number of seconds"
_PATTERN_WORDS: Final = {r"^[a-z0-9-]{1,40}$": "a slug prefix of a-z, 0-9 and - (at most 40 characters)"}


def _shape_error(error: msgspec.ValidationError, file: str, data: dict[str, Any]) -> ScenarioError:
    """``FILE: KEY: expected WHAT, got VALUE``: msgspec says where (``- at `$.KEY` ``); the file's shape
    says what was expected there, bounds included."""
    text, _, where = str(error).partition(" - at `$")
    key = where.rstrip("`").lstrip(".")
    field = re.fullmatch(r"Object (contains unknown|missing required) field `(\w+)`", text)
    if field is not None:
        key = f"{key}.{field[2]}" if key else field[2]
        if field[1] == "contains unknown":
            keys = _table_keys(_shape_at(key.rpartition(".")[0], data), data, key.rpartition(".")[0])
            return ScenarioError(f"{file}: {key}: unknown key (expected one of: {', '.join(keys)})")
    return ScenarioError(f"{file}: {key}: expected {_words(_shape_at(key, data), key)}, "
                         f"got {_show(_lookup(data, key))}")


def _lookup(data: Any, key: str) -> Any:
    """The value at ``rooms.count`` or ``arrivals.timeline[0].room`` in the file's data; None if absent."""
    for part in _PARTS.findall(key):
        if part.startswith("["):
            index = int(part[1:-1])
            data = data[index] if isinstance(data, list) and index < len(data) else None
        else:
            data = data.get(part) if isinstance(data, dict) else None
    return data


def _members(annotation: Any) -> list[Any]:
    """A union's types (one type: itself), without None and "not given"."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    return [m for m in members if m not in (type(None), msgspec.UnsetType)]


def _tables(annotation: Any) -> list[type[_Shape]]:
    return [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, _Shape)]


def _shape_at(key: str, data: dict[str, Any]) -> Any:
    """The type the file's shape gives ``key`` (in a distribution's table: its kind's)."""
    shape: Any = _ScenarioFile
    done = ""
    for part in _PARTS.findall(key):
        if part.startswith("["):
            shape = typing.get_args(_members(shape)[0])[0]  # list[X]: X
        else:
            table = _table_of(shape, data, done)
            shape = typing.get_type_hints(table, include_extras=True).get(part, Any) if table else Any
        done = f"{done}{part}" if part.startswith("[") or not done else f"{done}.{part}"
    return shape


def _table_of(shape: Any, data: dict[str, Any], key: str) -> type[_Shape] | None:
    """The table type of ``shape`` at ``key``: for a distribution, the kind its "dist" names."""
    tables = _tables(shape)
    if len(tables) <= 1:
        return tables[0] if tables else None
    value = _lookup(data, key)
    kind = value.get("dist") if isinstance(value, dict) else None
    return next((t for t in tables if t.__struct_config__.tag == kind), tables[0])


def _table_keys(shape: Any, data: dict[str, Any], key: str) -> list[str]:
    table = _table_of(shape, data, key)
    if table is None:
        return []
    fields = sorted(table.__struct_fields__)
    return ["dist", *fields] if table.__struct_config__.tag_field else fields


def _words(annotation: Any, key: str) -> str:
    """What a value of ``annotation`` is, with its bounds: "an integer from 1 to 10000"."""
    members = _members(annotation)
    if key.endswith(".dist"):
        return f"one of {_DIST_KINDS}"
    if len(_tables(annotation)) > 1:
        example, unit = ("60", "size") if key in _SIZE_DISTS else ("\"45s\"", "duration")
        return f"a distribution such as {{ dist = \"exponential\", mean = {example} }} or a {unit}"
    if set(members) == {float, str}:
        parent = key.rpartition(".")[0]
        if parent in _SIZE_DISTS:
            return "a size such as 60"
        return "a duration such as \"45s\"" if parent.endswith(_DIST_FIELDS) else _DURATION_WORDS
    plain = [typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m for m in members]
    if int in plain and float in plain:  # a number, an integer allowed as it is
        members = [m for m, base in zip(members, plain, strict=True) if base is not int]
    return " or ".join(_word(member) for member in members)


def _word(member: Any) -> str:
    base, meta = member, Meta()
    if typing.get_origin(member) is Annotated:
        base, meta = typing.get_args(member)[0], typing.get_args(member)[1]
    if typing.get_origin(base) is Literal:
        values = [f'"{v}"' for v in typing.get_args(base)]
        return values[0] if len(values) == 1 else f"one of {', '.join(values)}"
    if base is str:
        return _PATTERN_WORDS.get(meta.pattern or "", "a string")
    if typing.get_origin(base) is list:
        return "a list of durations" if set(_members(typing.get_args(base)[0])) == {float, str} else "a list"
    if isinstance(base, type) and issubclass(base, _Shape):
        return "a table"
    noun = "an integer" if base is int else "a number" if base is float else "a value"
    if meta.gt == 0:
        return f"a positive {noun.removeprefix('an ').removeprefix('a ')}"
    low = meta.ge if meta.ge is not None else meta.gt
    if low is None:
        return noun
    if meta.le is None:
        return f"{noun} from {_number(low)} up"
    return f"{noun} from {_number(low)} to {_number(meta.le)}"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


# --------------------------------------------------------------------------- reading


# The shortest mean think time or message interval: each is a loop of steps, and a zero one would
# spin forever at one instant (and a very short one floods the server far past any real clinic).
MIN_LOOP_MEAN_S: Final = 0.05


class _Reader:
    """Durations, distributions and the checks across values, after the shape; errors name the key."""

    def __init__(self, file: str, data: dict[str, Any]) -> None:
        self.file = file
        self.data = data

    def fail(self, key: str, expected: str, got: Any) -> ScenarioError:
        """The error for ``key``, quoting the file's own value (``0``, not the ``0.0`` read from it)."""
        written = _lookup(self.data, key)
        shown = _show(written if written is not None else got)
        return ScenarioError(f"{self.file}: {key}: expected {expected}, got {shown}")

    def duration(self, key: str, value: Any, positive: bool = False) -> float:
        seconds = _seconds(value)
        if seconds is None or (positive and seconds <= 0):
            what = "a positive duration" if positive else "a duration"
            raise self.fail(key, f"{what} such as \"90s\", \"1.5m\", \"1h30m\" or a number of seconds", value)
        return seconds

    def dist(self, key: str, value: _DistShape, unit: str = "duration", cap: float = math.inf) -> Dist:
        convert = _seconds if unit == "duration" else _parse_size
        example = "\"45s\"" if unit == "duration" else "60"
        if not isinstance(value, _Shape):
            constant = convert(value)
            if constant is None:
                raise ScenarioError(
                    f"{self.file}: {key}: expected a distribution such as "
                    f"{{ dist = \"exponential\", mean = {example} }} or a {unit}, got {_show(value)}"
                )
            return Dist("constant", constant, high=cap)

        def amount(param: str) -> float:
            raw = getattr(value, param)
            got = convert(raw)
            if got is None:
                raise self.fail(f"{key}.{param}", f"a {unit} such as {example}", raw)
            return got

        if isinstance(value, _Uniform):
            lo, hi = amount("min"), amount("max")
            if hi < lo:
                raise self.fail(f"{key}.max", f"a {unit} not below min", value.max)
            return Dist("uniform", lo, hi, low=lo, high=min(hi, cap))
        high = min(cap, amount("max")) if value.max is not None else cap
        low = amount("min") if value.min is not None else 0.0
        if isinstance(value, _Exponential):
            mean = amount("mean")
            if mean <= 0:
                raise self.fail(f"{key}.mean", f"a positive {unit}", value.mean)
            return Dist("exponential", mean, low=low, high=high)
        if isinstance(value, _Lognormal):
            median = amount("median")
            if median <= 0:
                raise self.fail(f"{key}.median", f"a positive {unit}", value.median)
            return Dist("lognormal", median, float(value.sigma), low=low, high=high)
        return Dist("constant", amount("value"), high=cap)

    def loop(self, key: str, value: _DistShape) -> Dist:
        """A think time or message interval: a distribution with a mean of at least MIN_LOOP_MEAN_S."""
        dist = self.dist(key, value)
        if not dist.mean >= MIN_LOOP_MEAN_S:
            raise ScenarioError(
                f"{self.file}: {key}: expected a distribution with a mean of at least "
                f"{MIN_LOOP_MEAN_S * 1000:g}ms (a step repeated with no time between would never end), "
                f"got a mean of {dist.mean * 1000:g}ms"
            )
        return dist

    def weights(self, key: str, table: msgspec.Struct) -> dict[str, float]:
        out = {name: float(getattr(table, name)) for name in table.__struct_fields__}
        for name, weight in out.items():
            if not math.isfinite(weight):
                raise self.fail(f"{key}.{name}", "a number from 0 up", weight)
        if not sum(out.values()) > 0:
            raise self.fail(key, "weights that are not all zero", msgspec.structs.asdict(table))
        return out

    def limits(self, server: _Server) -> Limits:
        changes: dict[str, Any] = {}
        for name in server.__struct_fields__:
            value = getattr(server, name)
            if value is not msgspec.UNSET:
                changes[name] = None if value == "off" else value
        try:
            return Limits(**changes)
        except ValueError as error:
            raise ScenarioError(f"{self.file}: server: {error}") from None


def _seconds(value: Any) -> float | None:
    """Seconds from a duration (formats.duration's grammar); None when it is not one (the caller names
    the key)."""
    try:
        return parse_duration(value)
    except DurationError:
        return None


def _parse_size(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def resolve(name_or_path: str) -> Path:
    """A scenario file: a path, or a name in ``./scenarios/`` or the shipped ``simulator/scenarios/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = name_or_path.removesuffix(".toml")
    for folder in (Path.cwd() / "scenarios", SCENARIO_DIR):
        candidate = folder / f"{stem}.toml"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")) if SCENARIO_DIR.is_dir() else []
    raise ScenarioError(
        f"{name_or_path}: no such scenario file (shipped scenarios: {', '.join(known) or 'none'})"
    )


def load(name_or_path: str) -> Scenario:
    path = resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{path}: not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(f"{path}: cannot read: {error}") from None
    return parse(data, str(path), default_name=path.stem)


def parse(data: dict[str, Any], file: str, default_name: str = "scenario") -> Scenario:
    try:
        shape = msgspec.convert(data, _ScenarioFile, strict=True)
    except msgspec.ValidationError as error:
        raise _shape_error(error, file, data) from None
    read = _Reader(file, data)
    name = shape.name if shape.name is not None else default_name
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise read.fail("name", "a name of letters, digits, _ and -", name)
    duration_s = read.duration("duration", shape.duration, positive=True)
    healing_s = (read.duration("healing", shape.healing) if shape.healing is not None
                 else min(600.0, duration_s / 4))
    if healing_s > duration_s / 2:
        raise read.fail("healing", f"at most half the duration ({duration_s / 2:g} s)", shape.healing)

    room_count = shape.rooms.count
    prefix = shape.rooms.prefix if shape.rooms.prefix is not None else name.lower().replace("_", "-")[:40]
    limits = read.limits(shape.server)

    arrivals = shape.arrivals
    rate = arrivals.rate_per_hour
    if rate is None:
        rate = 2.0 if arrivals.process == "poisson" else 0.0
    timeline: list[TimelineArrival] = []
    for index, item in enumerate(arrivals.timeline):
        key = f"arrivals.timeline[{index}]"
        at = read.duration(f"{key}.at", item.at)
        if item.room is not None and item.room > room_count:
            raise read.fail(f"{key}.room", f"a room number from 1 to {room_count}", item.room)
        timeline.append(TimelineArrival(at, item.count, item.room))
    if arrivals.process == "timeline" and not timeline:
        raise read.fail("arrivals.timeline", "at least one arrival when process = \"timeline\"",
                        data.get("arrivals", {}).get("timeline", []))

    patients = shape.patients
    clinicians = shape.clinicians
    faults = shape.faults
    cap = float(limits.max_text_chars)
    return Scenario(
        name=name, path=file, description=shape.description, seed=shape.seed, duration_s=duration_s,
        healing_s=healing_s, rooms=room_count, room_prefix=prefix, limits=limits,
        arrival_process=arrivals.process, arrival_rate_per_hour=float(rate),
        initial_queue=arrivals.initial_queue, timeline=tuple(timeline),
        message_interval=read.loop("patients.message_interval", patients.message_interval),
        text_chars=read.dist("patients.text_chars", patients.text_chars, unit="size", cap=cap),
        patience=read.dist("patients.patience", patients.patience),
        reply_probability=float(patients.reply_probability),
        reply_delay=read.dist("patients.reply_delay", patients.reply_delay),
        try_when_disabled=float(patients.try_when_disabled),
        in_call_message_factor=float(patients.in_call_message_factor),
        departure=read.weights("patients.departure", patients.departure),
        think_time=read.loop("clinicians.think_time", clinicians.think_time),
        typing_time=read.dist("clinicians.typing_time", clinicians.typing_time),
        clinician_reply_probability=float(clinicians.reply_probability),
        max_parallel_chats=clinicians.max_parallel_chats,
        call_probability=float(clinicians.call_probability),
        call_length=read.dist("clinicians.call_length", clinicians.call_length),
        habits=read.weights("clinicians.habits", clinicians.habits),
        clinician_text_chars=read.dist("clinicians.text_chars", clinicians.text_chars, unit="size", cap=cap),
        refresh_per_hour=float(faults.refresh_per_hour),
        refresh_at=tuple(read.duration(f"faults.refresh_at[{index}]", item)
                         for index, item in enumerate(faults.refresh_at)),
        refresh_style=read.weights("faults.refresh_style", faults.refresh_style),
        patient_drop_per_hour=float(faults.patient_drop_per_hour),
        clinician_drop_per_hour=float(faults.clinician_drop_per_hour),
        stall_per_hour=float(faults.stall_per_hour),
        stall_length=read.dist("faults.stall_length", faults.stall_length),
        slow_reader_fraction=float(faults.slow_reader_fraction),
        slow_reader_delay_s=read.duration("faults.slow_reader_delay", faults.slow_reader_delay),
    )
