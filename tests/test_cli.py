"""The ``queuechat`` console script, run for real in subprocesses: ``serve`` (ready line, development
secret, signals, limit options, usage and runtime errors, exit codes) and ``token``.

Every process is bounded by a timeout and killed in ``finally`` if it is still running.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from test_shell import expect_close
from trio_websocket import open_websocket_url
from wire import WireClient

from reference_server.protocol import DEVELOPMENT_SECRET, Limits

QUEUECHAT = Path(sys.executable).parent / "queuechat"
READY = re.compile(r"^queuechat serve: ready on ws://127\.0\.0\.1:(\d+)/v1/ws$")
DEV_NOTICE = "queuechat serve: using the development secret"
STARTUP_S = 20.0
EXIT_S = 10.0


def env_without_secret(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "QUEUECHAT_SECRET"}
    env.update(extra)
    return env


def hmac_hex(secret: str, room: str) -> str:
    return hmac.new(secret.encode("utf-8"), room.encode("utf-8"), hashlib.sha256).hexdigest()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A short-lived queuechat command; a hang is a failure, not a stuck test run."""
    return subprocess.run([str(QUEUECHAT), *args], capture_output=True, text=True, timeout=STARTUP_S,
                          env=env if env is not None else env_without_secret(), check=False)


async def run_cli_async(*args: str, env: dict[str, str] | None = None) -> str:
    with trio.fail_after(STARTUP_S):
        done = await trio.run_process([str(QUEUECHAT), *args], capture_stdout=True, capture_stderr=True,
                                      env=env if env is not None else env_without_secret(), check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


class Lines:
    """Lines from a Trio receive stream (a subprocess's stdout)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False

    async def readline(self) -> str | None:
        while b"\n" not in self.buffer and not self.eof:
            data = await self.stream.receive_some(65536)
            self.eof = not data
            self.buffer += data
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8").rstrip("\r")

    async def rest(self) -> list[str]:
        lines = []
        while (line := await self.readline()) is not None:
            lines.append(line)
        return lines


@dataclass
class Served:
    process: trio.Process
    url: str
    before_ready: list[str]
    stdout: Lines
    stderr_path: Path

    async def stop(self, signum: int | None) -> tuple[int, list[str], str]:
        """Send a signal (unless already sent: None); return the exit code, stdout after the ready
        line, and stderr."""
        if signum is not None:
            self.process.send_signal(signum)
        with trio.fail_after(EXIT_S):
            returncode = await self.process.wait()
            rest = await self.stdout.rest()
        return returncode, rest, self.stderr_path.read_text()


@asynccontextmanager
async def serving(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Served]:
    """``queuechat serve --port 0 ARGS`` until its ready line; killed at the end if still running."""
    stderr_path = tmp_path / f"stderr-{uuid.uuid4().hex}.txt"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [str(QUEUECHAT), "serve", "--port", "0", *args], stdout=subprocess.PIPE, stderr=stderr,
            env=env if env is not None else env_without_secret(),
        )
    try:
        assert process.stdout is not None
        stdout = Lines(process.stdout)
        before: list[str] = []
        with trio.fail_after(STARTUP_S):
            while True:
                line = await stdout.readline()
                assert line is not None, f"exited before ready: {stderr_path.read_text()[-2000:]}"
                if READY.match(line):
                    break
                before.append(line)
        url = line.removeprefix("queuechat serve: ready on ")
        yield Served(process=process, url=url, before_ready=before, stdout=stdout, stderr_path=stderr_path)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(EXIT_S):
            await process.wait()
        if process.stdout is not None:
            await trio.aclose_forcefully(process.stdout)


@asynccontextmanager
async def clinician(url: str, room: str, token: str) -> AsyncIterator[tuple[WireClient, dict[str, Any]]]:
    async with open_websocket_url(url) as ws:
        client = WireClient(ws)
        await client.send({"type": "hello", "role": "clinician", "room": room, "token": token})
        yield client, await client.recv()


def json_events(stderr: str) -> list[str]:
    return [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]


def assert_clean_usage_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "Error:" in done.stderr
    for text in expected:
        assert text in done.stderr
    assert "ready on" not in done.stdout


# ---------------------------------------------------------------------------------------------- serve


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_serve_says_it_is_ready_welcomes_a_clinician_and_stops_on_a_signal_with_1001(
    tmp_path: Path, signum: int,
) -> None:
    """The development-secret notice, then exactly one ready line; a clinician with `queuechat token`'s
    token is welcomed; SIGINT or SIGTERM closes the connection with 1001 and exits 0."""
    room = "cli-room"
    token = (await run_cli_async("token", room)).strip()
    async with serving(tmp_path) as served:
        assert len(served.before_ready) == 1 and served.before_ready[0].startswith(DEV_NOTICE)
        async with clinician(served.url, room, token) as (client, welcome):
            assert welcome["type"] == "welcome" and welcome["room"] == room
            assert welcome["limits"] == Limits().as_wire()
            served.process.send_signal(signum)
            code, _ = await expect_close(client)
            assert code == 1001
        returncode, rest, stderr = await served.stop(None)  # signalled above
    assert returncode == 0
    assert not any(READY.match(line) for line in rest)  # the ready line came once
    assert "Traceback" not in stderr
    events = json_events(stderr)
    assert events[0] == "server.listening" and events[-1] == "server.stopped"
    assert "server.shutting_down" in events


async def test_serve_honours_QUEUECHAT_SECRET(tmp_path: Path) -> None:
    """With QUEUECHAT_SECRET set there is no development-secret notice, tokens come from that secret,
    and a development-secret token is refused."""
    secret = f"test-secret-{uuid.uuid4().hex}"
    env = env_without_secret(QUEUECHAT_SECRET=secret)
    room = "env-room"
    token = (await run_cli_async("token", room, env=env)).strip()
    assert token == hmac_hex(secret, room)
    async with serving(tmp_path, env=env) as served:
        assert served.before_ready == []
        async with clinician(served.url, room, token) as (_, welcome):
            assert welcome["type"] == "welcome"
        async with clinician(served.url, room, hmac_hex(DEVELOPMENT_SECRET, room)) as (client, answer):
            assert answer["type"] == "error" and answer["code"] == "unauthorized"
            assert (await expect_close(client))[0] == 1008
        returncode, _, stderr = await served.stop(signal.SIGTERM)
    assert returncode == 0
    assert secret not in stderr


async def test_serve_limit_options_reach_the_clinicians_welcome(tmp_path: Path) -> None:
    """--max-text-chars 10 is in force and in the welcome's limits; --rate-per-s off --rate-burst off
    are nulls there; every other limit keeps its default."""
    room = "limits-room"
    token = hmac_hex(DEVELOPMENT_SECRET, room)
    options = ["--max-text-chars", "10", "--rate-per-s", "off", "--rate-burst", "off"]
    async with serving(tmp_path, *options) as served:
        async with clinician(served.url, room, token) as (client, welcome):
            expected = Limits().as_wire() | {"max_text_chars": 10, "rate_per_s": None, "rate_burst": None}
            assert welcome["limits"] == expected
            async with open_websocket_url(served.url) as ws:
                patient = WireClient(ws)
                await patient.send({"type": "hello", "role": "patient", "room": room, "name": "Test Patient"})
                assert (await patient.recv())["type"] == "welcome"
                await patient.error({"type": "send", "text": "x" * 11}, "too_large")
                await patient.ok({"type": "send", "text": "x" * 10})
            await client.barrier()
        returncode, _, _ = await served.stop(signal.SIGINT)
    assert returncode == 0


def test_serve_refuses_the_development_secret_on_a_non_loopback_host() -> None:
    """--host 0.0.0.0 without a secret: exit 2, a message naming the way out, no traceback."""
    done = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert_clean_usage_error(done, "0.0.0.0", "--secret", "QUEUECHAT_SECRET")
    assert DEV_NOTICE not in done.stdout


@pytest.mark.parametrize("args", [
    ["--max-rooms", "-1"],
    ["--rate-per-s", "abc"],
    ["--max-frame-bytes", "off"],
    ["--max-text-chars", "0"],
    ["--hello-timeout-s", "nan"],
    ["--ping-interval-s", "inf"],  # JSON has no infinity: the welcome would say null, as if off
    ["--rate-per-s", "1e999"],
    ["--rate-per-s", "off"],  # the rate limit is switched off as a pair
    ["--port", "70000"],
    ["--secret", ""],
], ids=lambda args: " ".join(args) or "empty")
def test_serve_bad_option_values_are_usage_errors(args: list[str]) -> None:
    """A bad value: exit 2 with click's one-paragraph error, no traceback, no server."""
    done = run_cli("serve", "--port", "0", *args)
    assert_clean_usage_error(done)


def test_serve_on_a_port_in_use_exits_1_with_one_line() -> None:
    """A port already taken: exit 1 and one line on stderr saying so, no traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--port", str(port))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"queuechat serve: cannot listen on 127.0.0.1:{port}: ")
    assert "ready on" not in done.stdout


# ---------------------------------------------------------------------------------------------- token


@pytest.mark.parametrize("room", ["demo-room", "x" * 64])
def test_token_prints_the_hmac_of_the_room_under_the_development_secret(room: str) -> None:
    done = run_cli("token", room)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", done.stdout)
    assert done.stdout.strip() == hmac_hex(DEVELOPMENT_SECRET, room)


def test_token_uses_the_given_secret_option_before_the_environment() -> None:
    env = env_without_secret(QUEUECHAT_SECRET="from-the-environment")
    done = run_cli("token", "demo-room", env=env)
    assert done.stdout.strip() == hmac_hex("from-the-environment", "demo-room")
    done = run_cli("token", "demo-room", "--secret", "from-the-option", env=env)
    assert done.stdout.strip() == hmac_hex("from-the-option", "demo-room")


@pytest.mark.parametrize("room", ["Demo-Room", "", "x" * 65, "räum"])
def test_token_for_an_invalid_room_is_a_usage_error(room: str) -> None:
    done = run_cli("token", room)
    assert_clean_usage_error(done, "room must match")
    assert done.stdout == ""
