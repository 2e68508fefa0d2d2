"""The simulator: scenarios and their validation, the history, determinism, the CLI and --url mode.

In-process runs are in virtual time and short (capped with ``--duration`` or
a small scenario); the --url test runs the agents against the reference
server over loopback for a few real seconds. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from reference_server._logging import configure_logging
from simulator import (
    HISTORY_FORMAT,
    HISTORY_VERSION,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    read_history,
    redacted,
    run_in_process,
)
from simulator._agents import arrivals
from simulator._scenario import SCENARIO_DIR

ROOT = Path(__file__).resolve().parent.parent
QUEUECHAT = [sys.executable, "-m", "queuechat"]
SHIPPED = ("quiet_morning", "busy_clinic_day", "flaky_network", "refresh_storm")

# A small, fast scenario (virtual minutes, a few rooms) for the tests that need a whole run.
SMALL = """
name = "small_clinic"
seed = 3
duration = "20m"
healing = "5m"
[rooms]
count = 3
prefix = "small"
[arrivals]
rate_per_hour = 20
initial_queue = 3
[patients]
message_interval = { dist = "exponential", mean = "20s", min = "1s" }
patience = { dist = "exponential", mean = "8m" }
[clinicians]
think_time = { dist = "exponential", mean = "6s", min = "1s" }
call_probability = 0.05
call_length = { dist = "uniform", min = "1m", max = "3m" }
[faults]
refresh_per_hour = 2
patient_drop_per_hour = 1
"""


@pytest.fixture(autouse=True)
def quiet_server_logs() -> Iterator[None]:
    """The in-process server logs at warning level only, then structlog is put back as it was."""
    saved = structlog.get_config()
    configure_logging("warning")
    yield
    structlog.configure(**saved)


def small(seed: int | None = None) -> Scenario:
    scenario = parse_scenario(__import__("tomllib").loads(SMALL), "small.toml")
    return scenario if seed is None else replace(scenario, seed=seed)


def run_cli(*args: str, timeout: float = 120.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QUEUECHAT, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})}, check=False)


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_load(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name
    assert scenario.duration_s > scenario.healing_s > 0


def test_busy_clinic_day_is_big_enough() -> None:
    """20+ clinicians, 400+ patients, 8 virtual hours (the 50,000 messages are measured in benchmarks/)."""
    scenario = load_scenario("busy_clinic_day")
    rooms = [f"r{n}" for n in range(scenario.rooms)]
    assert scenario.rooms >= 20
    assert scenario.duration_s == 8 * 3600
    assert len(arrivals(scenario, rooms)) >= 400


@pytest.mark.parametrize(("text", "key", "expected"), [
    ('duration = "soon"', "duration", "a positive duration"),
    ("[rooms]\ncount = 0", "rooms.count", "an integer from 1"),
    ('[rooms]\ncount = "ten"', "rooms.count", "an integer from 1"),
    ("[rooms]\ncolour = 3", "rooms.colour", "unknown key"),
    ("wibble = 1", "wibble", "unknown key"),
    ('[patients]\nmessage_interval = { dist = "gaussian", mean = "3s" }', "patients.message_interval.dist",
     "one of"),
    ('[patients]\nmessage_interval = { dist = "exponential" }', "patients.message_interval.mean",
     "a duration"),
    ("[patients]\nreply_probability = 1.5", "patients.reply_probability", "a number from 0 to 1"),
    ('[arrivals]\nprocess = "timeline"', "arrivals.timeline", "at least one arrival"),
    ('[arrivals]\ntimeline = [{ at = "1m", count = 2, room = 9 }]', "arrivals.timeline[0].room",
     "a room number from"),
    ("[server]\nmax_queued_frames = -1", "server.max_queued_frames", "a positive integer"),
    ('[server]\nmax_text_chars = "off"', "server.max_text_chars", "a positive integer"),
    ('healing = "2h"\nduration = "1h"', "healing", "at most half the duration"),
    ("[faults]\nrefresh_style = { reload = 0, new_tab = 0 }", "faults.refresh_style", "not all zero"),
    ('[arrivals]\nprocess = "burst"', "arrivals.process", 'one of "poisson", "timeline", got \'burst\''),
    ("seed = 1.5", "seed", "an integer from 0 to 9223372036854775807, got 1.5"),
    ('[clinicians]\nthink_time = { dist = "exponential", mean = "5s", sigma = 1 }',
     "clinicians.think_time.sigma", "unknown key (expected one of: dist, max, mean, min)"),
    ('[faults]\nrefresh_at = "2h"', "faults.refresh_at", "a list of durations"),
    ("duration = 0", "duration",
     "a positive duration such as \"90s\", \"1.5m\", \"1h30m\" or a number of seconds, got 0"),
    ("[patients]\ntext_chars = { dist = \"constant\", value = \"5s\" }", "patients.text_chars.value",
     "a size such as 60"),
])
def test_bad_scenarios_name_the_file_the_key_and_what_was_expected(tmp_path: Path, text: str, key: str,
                                                                    expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ")
    assert expected in message


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("duration = \n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=re.escape(f"{path}: not valid TOML")):
        load_scenario(str(path))


def test_cli_reports_a_bad_scenario_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[rooms]\ncount = -3\n", encoding="utf-8")
    done = run_cli("simulate", str(path), "--out", str(tmp_path))
    assert done.returncode == 2
    assert f"{path}: rooms.count: expected an integer from 1" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    missing = run_cli("simulate", "no_such_scenario", "--out", str(tmp_path))
    assert missing.returncode == 2
    assert "no such scenario file" in missing.stderr and "busy_clinic_day" in missing.stderr


# --------------------------------------------------------------------------- history


def test_history_is_versioned_and_carries_ids_sizes_and_times_never_text_or_names(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    result = run_in_process(small(), path)
    assert not result.violations, result.violations[:3]
    header, records = read_history(path)
    assert header["format"] == HISTORY_FORMAT and header["version"] == HISTORY_VERSION
    assert header["scenario"] == "small_clinic" and header["seed"] == 3
    assert header["limits"]["max_text_chars"] == 4096
    kinds: set[str] = set()
    last_t = 0.0
    for _, record in records:
        kinds.add(record["kind"])
        assert record["t"] >= last_t
        last_t = record["t"]
        frame = record.get("frame")
        if frame is not None:
            assert not isinstance(frame.get("text"), str) and not isinstance(frame.get("name"), str)
            for entry in frame.get("queue", []):
                assert isinstance(entry["name"], int)
    assert kinds == {"connect", "frame", "action", "close", "end"}
    raw = path.read_text(encoding="utf-8")
    assert "Sim " not in raw  # every simulated patient's name starts so
    assert '"text":"' not in raw and '"name":"' not in raw


def test_summary_counts_every_erasure_the_clinicians_received_by_reason(tmp_path: Path) -> None:
    """Erasures in the summary equal the ``erased`` frames on clinician connections, refreshes included
    (a replaced tab's ``erased{refresh}`` frames were once left out)."""
    scenario = replace(small(), refresh_per_hour=30.0, refresh_style={"new_tab": 1.0})
    path = tmp_path / "h.jsonl"
    result = run_in_process(scenario, path)
    assert not result.violations, result.violations[:3]
    _, records = read_history(path)
    seen: dict[str, int] = {}
    for _, record in records:
        frame = record.get("frame")
        if record["kind"] == "frame" and record["dir"] == "in" and frame and frame.get("type") == "erased":
            seen[frame["reason"]] = seen.get(frame["reason"], 0) + 1
    assert seen.get("refresh", 0) > 0  # the run did replace a tab holding conversations
    assert result.summary.as_dict()["erasures_by_reason"] == dict(sorted(seen.items()))


def test_redacted_matches_the_protocol_redaction() -> None:
    from reference_server.protocol import redact

    frames = [
        {"type": "message", "patient": "p", "id": 3, "from": "patient", "text": "héllo", "ts": 1},
        {"type": "patient_joined", "patient": "p", "name": "Ann", "position": 1, "joined_at": 2},
        {"type": "ok", "ref": "1"},
        {"type": "welcome", "queue": [{"patient": "p", "name": "Bo", "unread": 0}], "chat_box": {}},
    ]
    for frame in frames:
        assert redacted(frame) == redact(frame)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    run_in_process(small(), first)
    run_in_process(small(), second)
    run_in_process(small(seed=4), other)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_history_does_not_depend_on_trios_wake_up_order_or_on_the_clock_kind(tmp_path: Path) -> None:
    """Trio shuffles tasks woken at one instant (its private scheduler RNG, seeded here only to vary it);
    the history must not change, and MockClock(autojump) must give the same history as JumpingClock."""
    import trio._core._run as trio_run  # private: only to vary the wake-up order, if it is there

    scheduler_rng = getattr(trio_run, "_r", None)
    paths = []
    for index, (trio_seed, clock) in enumerate([(1, "jumping"), (2, "jumping"), (3, "mock")]):
        if scheduler_rng is not None:
            scheduler_rng.seed(trio_seed)
        path = tmp_path / f"{index}.jsonl"
        run_in_process(small(), path, clock_kind=clock)
        paths.append(path.read_bytes())
    assert paths[0] == paths[1] == paths[2]


def test_same_bytes_across_processes_with_different_hash_seeds(tmp_path: Path) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL, encoding="utf-8")
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"out{hash_seed}"
        done = run_cli("simulate", str(scenario), "--out", str(out), "--duration", "10m", "--no-progress",
                       env={"PYTHONHASHSEED": hash_seed})
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append((out / "small_clinic-seed3.jsonl").read_bytes())
    assert outputs[0] == outputs[1]


# --------------------------------------------------------------------------- the CLI


def test_cli_simulate_then_check(tmp_path: Path) -> None:
    done = run_cli("simulate", "quiet_morning", "--seed", "7", "--duration", "40m", "--out", str(tmp_path),
                   "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "violations by rule: none" in done.stdout
    assert re.search(r"patients: \d+ checked in, \d+ served", done.stdout)
    history = tmp_path / "quiet_morning-seed7.jsonl"
    summary = json.loads((tmp_path / "quiet_morning-seed7.summary.json").read_text(encoding="utf-8"))
    assert summary["seed"] == 7 and summary["violations"] == []
    assert summary["summary"]["messages_patient_to_clinician"]["sent"] > 0
    header, _ = read_history(history)
    assert header["duration_ms"] == 40 * 60 * 1000
    checked = run_cli("check", str(history))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "violations by rule: none" in checked.stdout


def test_cli_split_run_writes_into_a_new_folder(tmp_path: Path) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL, encoding="utf-8")
    out = tmp_path / "new" / "folder"
    done = run_cli("simulate", str(scenario), "--jobs", "2", "--duration", "10m", "--out", str(out),
                   "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "small_clinic-seed3.jsonl").is_file()
    assert (out / "small_clinic-seed3.summary.json").is_file()


def test_cli_check_rejects_what_is_not_a_history(tmp_path: Path) -> None:
    path = tmp_path / "not.jsonl"
    path.write_text('{"hello": 1}\n', encoding="utf-8")
    done = run_cli("check", str(path))
    assert done.returncode == 2
    assert "not a queuechat history" in done.stderr and "Traceback" not in done.stderr


def test_cli_refuses_a_remote_url_without_allow_remote(tmp_path: Path) -> None:
    done = run_cli("simulate", "quiet_morning", "--url", "ws://192.0.2.10:8765/v1/ws", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr


def test_cli_rejects_a_bad_duration(tmp_path: Path) -> None:
    done = run_cli("simulate", "quiet_morning", "--duration", "a while", "--out", str(tmp_path))
    assert done.returncode == 2 and "--duration" in done.stderr


# --------------------------------------------------------------------------- --url: real sockets


FAST_REAL_TIME = """
name = "fast_real_time"
seed = 1
duration = "8s"
healing = "4s"
[rooms]
count = 2
prefix = "fastrt"
[arrivals]
rate_per_hour = 0
initial_queue = 3
[patients]
message_interval = { dist = "exponential", mean = "300ms", min = "50ms" }
patience = { dist = "exponential", mean = "1h" }
reply_delay = { dist = "constant", value = "200ms" }
[clinicians]
think_time = { dist = "exponential", mean = "200ms", min = "20ms" }
typing_time = { dist = "uniform", min = "50ms", max = "200ms" }
call_probability = 0.05
call_length = { dist = "constant", value = "1s" }
"""


def url_mode_run(folder: Path) -> tuple[str | None, subprocess.CompletedProcess[str] | None]:
    """``queuechat serve`` and ``simulate --url`` against it, in real time (about 11 s): the server's
    URL (None if it never said it was ready) and the simulation's run."""
    scenario = folder / "fast.toml"
    scenario.write_text(FAST_REAL_TIME, encoding="utf-8")
    server = subprocess.Popen([*QUEUECHAT, "serve", "--port", "0", "--log-level", "warning"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        for _ in range(5):  # the development-secret notice, then the ready line
            line = server.stdout.readline()
            match = re.search(r"ready on (ws://\S+)", line)
            if match:
                url = match.group(1)
                return url, run_cli("simulate", str(scenario), "--url", url, "--out", str(folder),
                                    "--no-progress", timeout=60.0)
        return None, None
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()


@pytest.fixture(scope="module", autouse=True)
def url_mode(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future[Any] | None]:
    """The URL-mode run, when its test is selected, started with the module's first test on a thread
    (it only waits for its processes): its 11 s of real time go by beside the other tests' CPU work."""
    test = "test_url_mode_against_the_reference_server_on_loopback"
    if not any(getattr(item, "module", None) is request.module and getattr(item, "originalname", "") == test
               for item in request.session.items):
        yield None
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(url_mode_run, tmp_path_factory.mktemp("url-mode"))


def test_url_mode_against_the_reference_server_on_loopback(url_mode: Future[Any] | None) -> None:
    """The same agents over real sockets, in real time; no violation, and `check` agrees."""
    assert url_mode is not None
    url, done = url_mode.result(timeout=120)
    assert url is not None, "the server never said it was ready"
    assert done is not None and done.returncode == 0, done.stdout + done.stderr
    history = Path(done.args[done.args.index("--out") + 1]) / "fast_real_time-seed1.jsonl"  # its --out
    header, records = read_history(history)
    assert header["mode"] == "socket" and header["server"] == url
    sent = sum(1 for _, r in records if r.get("kind") == "frame" and r["dir"] == "out"
               and r["frame"]["type"] == "send")
    assert sent > 10
    assert run_cli("check", str(history)).returncode == 0


def test_scenario_dir_is_the_shipped_one() -> None:
    assert SCENARIO_DIR == ROOT / "simulator" / "scenarios"
    assert {p.stem for p in SCENARIO_DIR.glob("*.toml")} >= set(SHIPPED)


def test_a_run_split_into_processes_is_deterministic_and_clean(tmp_path: Path) -> None:
    """--jobs 2: the rooms run in two processes; the merged history repeats byte for byte."""
    first = run_in_process(small(), tmp_path / "a.jsonl", jobs=2)
    run_in_process(small(), tmp_path / "b.jsonl", jobs=2)
    assert first.violations == [] and first.summary.complete
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    header, records = read_history(tmp_path / "a.jsonl")
    assert "jobs" not in header  # a speed setting, not part of the history (the same for every jobs)
    rooms = {r["room"] for _, r in records if r["kind"] == "connect"}
    assert rooms == set(header["rooms"])  # both processes' rooms are in the one history


# --------------------------------------------------------------------------- import rules (STYLE.md)


def _modules_after(code: str) -> set[str]:
    program = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_simulator_imports_the_server_only_to_run_it() -> None:
    """Importing the simulator loads neither the server shell nor gevent/locust; the CLI no simulator."""
    loaded = _modules_after("import simulator")
    assert "reference_server._shell" not in loaded and "reference_server.server" not in loaded
    assert loaded.isdisjoint({"gevent", "locust"})
    assert "simulator" not in _modules_after("import queuechat.cli")


def test_the_checker_does_not_use_the_domain_model() -> None:
    """The checker is an independent reading of the contract: it imports nothing from reference_server."""
    import ast

    checker = ("_checker.py", "_connections.py", "_console_replica.py", "_patient_checks.py",
               "_cross_checks.py", "_run_stats.py", "_frame_specs.py")
    for name in (*(f"simulator/{c}" for c in checker), "formats/history.py", "simulator/_scenario.py"):
        tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any("domain" in module for module in imported), (name, imported)
        if name.removeprefix("simulator/") in checker:
            assert not any(module.startswith("reference_server") for module in imported)


def test_public_surface() -> None:
    import simulator

    assert all(hasattr(simulator, name) for name in simulator.__all__)
    assert len(set(simulator.__all__)) == len(simulator.__all__)


def test_a_server_ping_after_our_close_frame_is_not_an_error() -> None:
    """trio-websocket#184: a server ping that arrives after the client sent its close frame makes the
    library answer a pong that wsproto refuses (LocalProtocolError) in a task of the caller's nursery.
    The simulator's socket transport is its own sans-IO client over wsproto: the pong is refused quietly,
    nothing more is written, and the close handshake ends as the server's close (the second server pings
    at jittered, short intervals, so this happens)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Ping
    from wsproto.events import Request as Handshake

    from simulator._transport import ClientProtocol

    class Wire:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, data: bytes) -> None:
            self.data += data

        def drop(self) -> None:
            raise AssertionError("not dropped")

        def take(self) -> bytes:
            data, self.data = bytes(self.data), bytearray()
            return data

    class Handler:
        def __init__(self) -> None:
            self.opened = False
            self.closes: list[tuple[int, str]] = []

        def on_open(self) -> None:
            self.opened = True

        def on_frame(self, frame: dict[str, Any], size: int) -> None:
            raise AssertionError(f"no frame expected, got a {frame.get('type')!r} frame")

        def on_close(self, code: int, by: str) -> None:
            self.closes.append((code, by))

    handler, wire = Handler(), Wire()
    client = ClientProtocol(handler)
    server = WSConnection(ConnectionType.SERVER)
    client.start(wire, "127.0.0.1", "/v1/ws")
    server.receive_data(wire.take())
    assert any(isinstance(event, Handshake) for event in server.events())
    client.receive_data(server.send(AcceptConnection()))
    assert handler.opened
    ping = server.send(Ping(payload=b"beat"))  # on its way when the client starts to close
    client.close(1000)
    close_frame = wire.take()
    client.receive_data(ping)  # the pong is refused by wsproto: contained, nothing written
    assert wire.take() == b""
    assert handler.closes == []
    server.receive_data(close_frame)
    closing = [event for event in server.events() if isinstance(event, CloseConnection)]
    assert closing and closing[0].code == 1000
    client.receive_data(server.send(closing[0].response()))
    assert handler.closes == [(1000, "server")]
