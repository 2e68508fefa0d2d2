"""One duration grammar (formats/duration.py) for every command and scenario file: what it accepts,
what it refuses, and that the commands which once had grammars of their own now take it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from formats.duration import DurationError, parse_duration, whole_seconds

QUEUECHAT = Path(sys.executable).parent / "queuechat"


@pytest.mark.parametrize(("text", "seconds"), [
    (42, 42.0), (4.5, 4.5), (0, 0.0), ("42", 42.0), ("0.5", 0.5),
    ("250ms", 0.25), ("90s", 90.0), ("1.5m", 90.0), ("15m", 900.0), ("1h", 3600.0), ("8h", 28800.0),
    ("1.5h", 5400.0), ("2m30", 150.0), ("2m30s", 150.0), ("1h30m", 5400.0), ("1h30", 5400.0),
    ("1m30s250ms", 90.25), (".5s", 0.5),
    ("90S", 90.0), ("1H30M", 5400.0), ("  1h 30m  ", 5400.0), ("2 m 30", 150.0),
])
def test_accepted_durations_are_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "says"), [
    ("", "an empty text"), ("   ", "an empty text"),
    ("-5", "at least 0"), ("-1m", "at least 0"), (-1, "at least 0"),
    ("inf", "finite"), ("nan", "finite"), (float("inf"), "finite"),
    ("soon", "such as"), ("30x", "such as"), ("5 5", "such as"), ("1.5.5m", "such as"), ("m", "such as"),
    ("1m1h", "largest first"), ("1m1m", "largest first"), ("30s5", "only follow h or m"),
    (True, "such as"),
])
def test_refused_durations_say_what_is_expected(value: str | float, says: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(value)
    assert says in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_whole_seconds_round_fractions_up() -> None:
    """A caller counting whole seconds (Locust's run time) never runs shorter than asked."""
    assert [whole_seconds(s) for s in (1.0, 1.2, 2.5, 90.0)] == [1, 2, 3, 90]


@given(hours=st.integers(0, 99), minutes=st.integers(0, 59), seconds=st.integers(0, 59),
       millis=st.integers(0, 999), drop=st.sets(st.sampled_from("hmsx")), upper=st.booleans(),
       spaced=st.booleans())
def test_written_durations_read_back(hours: int, minutes: int, seconds: int, millis: int, drop: set[str],
                                     upper: bool, spaced: bool) -> None:
    """Any duration written with units, largest first (some left out, any case, spaced or not) reads back
    as its seconds."""
    parts = [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")]
    kept = [(n, unit) for n, unit in parts if (unit[0] if unit != "ms" else "x") not in drop] or parts[:1]
    text = (" " if spaced else "").join(f"{n}{unit}" for n, unit in kept)
    text = text.upper() if upper else text
    expected = sum(n * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit] for n, unit in kept)
    assert parse_duration(text) == pytest.approx(expected)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(QUEUECHAT), *args], capture_output=True, text=True, timeout=60, check=False)


def test_simulate_takes_2m30() -> None:
    """Parsing passed: the command goes on to the next check (--jobs with --url), which refuses."""
    done = run_cli("simulate", "demo", "--duration", "2m30", "--jobs", "2", "--url", "ws://127.0.0.1:9/v1/ws")
    assert done.returncode == 2, done.stderr
    assert "--jobs applies to in-process runs only" in done.stderr
    refused = run_cli("simulate", "demo", "--duration", "2m30x", "--jobs", "2", "--url",
                      "ws://127.0.0.1:9/v1/ws")
    assert refused.returncode == 2 and "--duration: expected a positive duration" in refused.stderr


def test_demo_takes_1_5m(tmp_path: Path) -> None:
    """--sim-duration 1.5m parses (90 s): the refusal is the load duration's, checked after it."""
    done = run_cli("demo", "--out", str(tmp_path / "demo"), "--sim-duration", "1.5m",
                   "--load-duration", "11m")
    assert done.returncode == 2, done.stderr
    assert "--load-duration '11m': at most 10m" in done.stderr
    assert "--sim-duration" not in done.stderr
    assert not (tmp_path / "demo").exists()


def test_load_and_play_take_the_same_grammar() -> None:
    """load --duration 1.5m gets past parsing to the next check; so does play --duration 2m30."""
    load = run_cli("load", "--duration", "1.5m", "--slo", "x.toml", "--no-slo")
    assert load.returncode == 2 and "exclude each other" in load.stderr, load.stderr
    play = run_cli("play", "no_such_scenario", "--duration", "2m30")
    assert play.returncode == 2 and "no such scenario file" in play.stderr, play.stderr
    too_long = run_cli("play", "no_such_scenario", "--duration", "8h1s")
    assert too_long.returncode == 2 and "from 1s to 8h" in too_long.stderr
