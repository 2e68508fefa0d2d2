"""Scenario files: TOML in, a checked :class:`Scenario` out.

Every key is checked here, by hand, so that a mistake is reported as
``FILE: KEY: expected WHAT, got VALUE`` (no traceback): unknown keys, wrong
types, out-of-range numbers, malformed durations and distributions.

Durations are strings such as ``"250ms"``, ``"90s"``, ``"15m"``, ``"8h"``,
``"1h30m"`` or a number of seconds. Distributions are inline tables::

    { dist = "exponential", mean = "45s" }
    { dist = "uniform", min = "2s", max = "20s" }
    { dist = "lognormal", median = "6m", sigma = 0.5, max = "1h" }
    { dist = "constant", value = "5s" }

(for sizes, numbers instead of durations); a bare value means ``constant``.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Final

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


def _seconds(value: Any) -> float | None:
    """Seconds from a duration (formats.duration's grammar); None when it is not one (the caller names
    the key)."""
    try:
        return parse_duration(value)
    except DurationError:
        return None


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


# --------------------------------------------------------------------------- reading


class _Table:
    """A TOML table being read; remembers which keys were used, to report unknown ones."""

    def __init__(self, file: str, path: str, data: dict[str, Any]) -> None:
        self.file, self.path, self.data = file, path, data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, expected: str, got: Any) -> ScenarioError:
        return ScenarioError(f"{self.file}: {self.key(name)}: expected {expected}, got {_show(got)}")

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def table(self, name: str) -> _Table:
        value = self.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, "a table", value)
        return _Table(self.file, self.key(name), value)

    def string(self, name: str, default: str, pattern: str | None = None, what: str = "a string") -> str:
        value = self.get(name, default)
        if not isinstance(value, str) or (pattern is not None and not re.fullmatch(pattern, value)):
            raise self.fail(name, what, value)
        return value

    def integer(self, name: str, default: int, low: int = 0, high: int | None = None) -> int:
        value = self.get(name, default)
        too_big = high is not None and isinstance(value, int) and value > high
        if isinstance(value, bool) or not isinstance(value, int) or value < low or too_big:
            bound = f"an integer from {low}" + (f" to {high}" if high is not None else " up")
            raise self.fail(name, bound, value)
        return value

    def number(self, name: str, default: float, low: float = 0.0, high: float | None = None) -> float:
        value = self.get(name, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < low or (high is not None and value > high):
            bound = f"a number from {low:g}" + (f" to {high:g}" if high is not None else " up")
            raise self.fail(name, bound, value)
        return float(value)

    def probability(self, name: str, default: float) -> float:
        return self.number(name, default, 0.0, 1.0)

    def duration(self, name: str, default: Any, positive: bool = False) -> float:
        value = self.get(name, default)
        seconds = _seconds(value)
        if seconds is None or (positive and seconds <= 0):
            what = "a positive duration" if positive else "a duration"
            raise self.fail(name, f"{what} such as \"90s\", \"15m\", \"1h30m\" or a number of seconds", value)
        return seconds

    def dist(self, name: str, default: Any, unit: str = "duration", cap: float = math.inf) -> Dist:
        value = self.get(name, default)
        key = self.key(name)
        convert = _seconds if unit == "duration" else _parse_size
        example = "\"45s\"" if unit == "duration" else "60"
        if not isinstance(value, dict):
            constant = convert(value)
            if constant is None:
                raise ScenarioError(
                    f"{self.file}: {key}: expected a distribution such as "
                    f"{{ dist = \"exponential\", mean = {example} }} or a {unit}, got {_show(value)}"
                )
            return Dist("constant", constant, high=cap)
        table = _Table(self.file, key, value)
        kinds = "one of \"exponential\", \"uniform\", \"lognormal\", \"constant\""
        kind = table.string("dist", "", what=kinds)
        params = {"exponential": ("mean",), "uniform": ("min", "max"), "lognormal": ("median", "sigma"),
                  "constant": ("value",)}
        if kind not in params:
            raise table.fail("dist", "one of \"exponential\", \"uniform\", \"lognormal\", \"constant\"", kind)

        def amount(param: str) -> float:
            raw = table.get(param, None)
            got = convert(raw)
            if raw is None or got is None:
                raise table.fail(param, f"a {unit} such as {example}", raw)
            return got

        low = 0.0
        high = cap
        if table.has("max"):
            if kind == "uniform":
                pass
            else:
                high = min(cap, amount("max"))
        if table.has("min") and kind != "uniform":
            low = amount("min")
        if kind == "exponential":
            mean = amount("mean")
            if mean <= 0:
                raise table.fail("mean", f"a positive {unit}", table.data.get("mean"))
            dist = Dist("exponential", mean, low=low, high=high)
        elif kind == "uniform":
            lo, hi = amount("min"), amount("max")
            if hi < lo:
                raise table.fail("max", f"a {unit} not below min", table.data.get("max"))
            dist = Dist("uniform", lo, hi, low=lo, high=min(hi, cap))
        elif kind == "lognormal":
            median = amount("median")
            sigma = table.number("sigma", 0.5, 0.0, 5.0)
            if median <= 0:
                raise table.fail("median", f"a positive {unit}", table.data.get("median"))
            dist = Dist("lognormal", median, sigma, low=low, high=high)
        else:
            dist = Dist("constant", amount("value"), high=cap)
        table.done()
        return dist

    def weights(self, name: str, default: dict[str, float], allowed: tuple[str, ...]) -> dict[str, float]:
        value = self.get(name, default)
        if not isinstance(value, dict):
            raise self.fail(name, f"a table of weights for {', '.join(allowed)}", value)
        table = _Table(self.file, self.key(name), value)
        out = {k: table.number(k, default.get(k, 0.0)) for k in allowed}
        table.done()
        if not sum(out.values()) > 0:
            raise self.fail(name, "weights that are not all zero", value)
        return out

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            raise ScenarioError(
                f"{self.file}: {self.key(unknown[0])}: unknown key (expected one of: "
                f"{', '.join(sorted(self.used))})"
            )


# The shortest mean think time or message interval: each is a loop of steps, and a zero one would
# spin forever at one instant (and a very short one floods the server far past any real clinic).
MIN_LOOP_MEAN_S: Final = 0.05


def _not_too_quick(table: _Table, name: str, dist: Dist) -> None:
    if not dist.mean >= MIN_LOOP_MEAN_S:
        raise ScenarioError(
            f"{table.file}: {table.key(name)}: expected a distribution with a mean of at least "
            f"{MIN_LOOP_MEAN_S * 1000:g}ms (a step repeated with no time between would never end), "
            f"got a mean of {dist.mean * 1000:g}ms"
        )


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


_LIMIT_KINDS = {
    "max_text_chars": (int, False), "max_frame_bytes": (int, False), "max_queued_frames": (int, False),
    "max_queued_bytes": (int, False), "rate_per_s": (float, True), "rate_burst": (int, True),
    "max_patients_per_room": (int, True), "max_rooms": (int, True), "hello_timeout_s": (float, True),
    "ping_interval_s": (float, True), "ping_timeout_s": (float, True),
}


def _limits(table: _Table) -> Limits:
    changes: dict[str, Any] = {}
    for name, (kind, can_be_off) in _LIMIT_KINDS.items():
        if not table.has(name):
            table.used.add(name)
            continue
        value = table.get(name, None)
        if value == "off" and can_be_off:
            changes[name] = None
            continue
        good = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if kind is int:
            good = good and isinstance(value, int)
        if not good:
            what = "a positive " + ("integer" if kind is int else "number")
            what += ' or "off"' if can_be_off else ""
            raise table.fail(name, what, value)
        changes[name] = value
    table.done()
    try:
        return Limits(**changes)
    except ValueError as error:
        raise ScenarioError(f"{table.file}: {table.path}: {error}") from None


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
    top = _Table(file, "", data)
    name = top.string("name", default_name, r"[A-Za-z0-9_-]{1,64}", "a name of letters, digits, _ and -")
    description = top.string("description", "")
    seed = top.integer("seed", 1, 0, 2**63 - 1)
    duration_s = top.duration("duration", "1h", positive=True)
    healing_s = top.duration("healing", min(600.0, duration_s / 4))
    if healing_s > duration_s / 2:
        raise top.fail("healing", f"at most half the duration ({duration_s / 2:g} s)",
                       top.data.get("healing"))

    rooms = top.table("rooms")
    room_count = rooms.integer("count", 1, 1, 10_000)
    prefix = rooms.string("prefix", name.lower().replace("_", "-")[:40], r"[a-z0-9-]{1,40}",
                          "a slug prefix of a-z, 0-9 and - (at most 40 characters)")
    rooms.done()

    server = top.table("server")
    limits = _limits(server)

    arrivals = top.table("arrivals")
    process = arrivals.string("process", "poisson", r"poisson|timeline", "\"poisson\" or \"timeline\"")
    rate = arrivals.number("rate_per_hour", 2.0 if process == "poisson" else 0.0, 0.0, 10_000.0)
    initial = arrivals.integer("initial_queue", 0, 0, 500)
    timeline_raw = arrivals.get("timeline", [])
    timeline: list[TimelineArrival] = []
    if not isinstance(timeline_raw, list):
        raise arrivals.fail("timeline", "a list of { at = DURATION, count = N, room = N }", timeline_raw)
    for index, item in enumerate(timeline_raw):
        if not isinstance(item, dict):
            raise arrivals.fail(f"timeline[{index}]", "a table { at = DURATION, count = N, room = N }", item)
        entry = _Table(file, arrivals.key(f"timeline[{index}]"), item)
        at = entry.duration("at", None)
        count = entry.integer("count", 1, 1, 10_000)
        room: int | None = None
        if entry.has("room"):
            raw = entry.get("room", None)
            if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= room_count:
                raise entry.fail("room", f"a room number from 1 to {room_count}", raw)
            room = raw
        entry.done()
        timeline.append(TimelineArrival(at, count, room))
    if process == "timeline" and not timeline:
        raise arrivals.fail("timeline", "at least one arrival when process = \"timeline\"", timeline_raw)
    arrivals.done()

    patients = top.table("patients")
    message_interval = patients.dist("message_interval", {"dist": "exponential", "mean": "60s"})
    _not_too_quick(patients, "message_interval", message_interval)
    text_chars = patients.dist("text_chars", {"dist": "lognormal", "median": 60, "sigma": 0.8}, unit="size",
                               cap=float(limits.max_text_chars))
    patience = patients.dist("patience", {"dist": "exponential", "mean": "40m"})
    reply_probability = patients.probability("reply_probability", 0.7)
    reply_delay = patients.dist("reply_delay", {"dist": "exponential", "mean": "20s"})
    try_when_disabled = patients.probability("try_when_disabled", 0.1)
    in_call_factor = patients.number("in_call_message_factor", 0.3, 0.0, 10.0)
    departure = patients.weights("departure", {"leave": 0.7, "close": 0.2, "drop": 0.1},
                                 ("leave", "close", "drop"))
    patients.done()

    clinicians = top.table("clinicians")
    think_time = clinicians.dist("think_time", {"dist": "exponential", "mean": "20s"})
    _not_too_quick(clinicians, "think_time", think_time)
    typing_time = clinicians.dist("typing_time", {"dist": "uniform", "min": "2s", "max": "15s"})
    clinician_reply = clinicians.probability("reply_probability", 0.9)
    max_parallel = clinicians.integer("max_parallel_chats", 4, 1, 500)
    call_probability = clinicians.probability("call_probability", 0.1)
    call_length = clinicians.dist("call_length", {"dist": "lognormal", "median": "6m", "sigma": 0.5})
    habits = clinicians.weights(
        "habits",
        {"reply": 10.0, "chat_new": 3.0, "minimize": 1.0, "close": 1.0, "open_other": 1.0,
         "toggle_notifications": 0.1, "toggle_patient_chat": 0.1, "idle": 1.0},
        ("reply", "chat_new", "minimize", "close", "open_other", "toggle_notifications",
         "toggle_patient_chat", "idle"),
    )
    clinician_text = clinicians.dist("text_chars", {"dist": "lognormal", "median": 80, "sigma": 0.7},
                                     unit="size", cap=float(limits.max_text_chars))
    clinicians.done()

    faults = top.table("faults")
    refresh_per_hour = faults.number("refresh_per_hour", 0.0, 0.0, 3600.0)
    refresh_at_raw = faults.get("refresh_at", [])
    if not isinstance(refresh_at_raw, list):
        raise faults.fail("refresh_at", "a list of durations", refresh_at_raw)
    refresh_at: list[float] = []
    for index, item in enumerate(refresh_at_raw):
        seconds = _seconds(item)
        if seconds is None:
            raise faults.fail(f"refresh_at[{index}]", "a duration such as \"2h\"", item)
        refresh_at.append(seconds)
    refresh_style = faults.weights("refresh_style", {"reload": 0.5, "new_tab": 0.5}, ("reload", "new_tab"))
    patient_drop = faults.number("patient_drop_per_hour", 0.0, 0.0, 3600.0)
    clinician_drop = faults.number("clinician_drop_per_hour", 0.0, 0.0, 3600.0)
    stall_per_hour = faults.number("stall_per_hour", 0.0, 0.0, 3600.0)
    stall_length = faults.dist("stall_length", {"dist": "uniform", "min": "5s", "max": "90s"})
    slow_fraction = faults.probability("slow_reader_fraction", 0.0)
    slow_delay = faults.duration("slow_reader_delay", "200ms")
    faults.done()
    top.done()

    return Scenario(
        name=name, path=file, description=description, seed=seed, duration_s=duration_s, healing_s=healing_s,
        rooms=room_count, room_prefix=prefix, limits=limits,
        arrival_process=process, arrival_rate_per_hour=rate, initial_queue=initial, timeline=tuple(timeline),
        message_interval=message_interval, text_chars=text_chars, patience=patience,
        reply_probability=reply_probability, reply_delay=reply_delay, try_when_disabled=try_when_disabled,
        in_call_message_factor=in_call_factor, departure=departure,
        think_time=think_time, typing_time=typing_time, clinician_reply_probability=clinician_reply,
        max_parallel_chats=max_parallel, call_probability=call_probability, call_length=call_length,
        habits=habits, clinician_text_chars=clinician_text,
        refresh_per_hour=refresh_per_hour, refresh_at=tuple(refresh_at), refresh_style=refresh_style,
        patient_drop_per_hour=patient_drop, clinician_drop_per_hour=clinician_drop,
        stall_per_hour=stall_per_hour, stall_length=stall_length,
        slow_reader_fraction=slow_fraction, slow_reader_delay_s=slow_delay,
    )
