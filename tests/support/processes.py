"""Launchers for the second server as a child process: sync (`second_server`) and Trio (`open_second_server`).

Each starts ``sys.executable tests/support/second_server.py --port 0 ...``, waits (bounded) for its
one-line ``{"url": ..., "pid": ...}`` on stdout, yields the URL, and on exit sends SIGTERM, waits
(bounded), then kills. Options are the CLI flags with underscores (``stall_after=8``,
``break_rule="R8"``); ``None`` leaves a flag out.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SCRIPT = Path(__file__).resolve().parent / "second_server.py"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class SecondServerError(RuntimeError):
    """The server did not start (its stderr is in the message) or gave an unreadable ready line."""


def build_argv(options: dict[str, object]) -> list[str]:
    """CLI arguments for the options: ``max_rooms=40`` → ``--max-rooms 40``; ``break_rule`` → ``--break``."""
    argv: list[str] = []
    options = {"port": 0, **options}
    for name, value in options.items():
        if value is None:
            continue
        flag = "--break" if name == "break_rule" else "--" + name.replace("_", "-")
        if isinstance(value, bool):
            raise TypeError(f"option {name}: booleans are not accepted, give the flag's value")
        text = "inf" if isinstance(value, float) and math.isinf(value) else str(value)
        argv += [flag, text]
    return argv


@dataclass
class ServerProcess:
    """A running second server: its URL, the process, and where its stderr (ids and counts only) goes."""

    url: str
    pid: int
    process: subprocess.Popen[bytes]
    stderr: IO[bytes]

    def stderr_text(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")


def _read_ready_line(process: subprocess.Popen[bytes], deadline: float) -> bytes:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buffer += chunk
    return buffer.split(b"\n", 1)[0]


def start(**options: object) -> ServerProcess:
    """Start the server and wait for its ready line; raises SecondServerError with its stderr if it fails."""
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server, closed by stop()
    argv = [sys.executable, str(SCRIPT), *build_argv(options)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    line = _read_ready_line(process, time.monotonic() + START_TIMEOUT_S)
    try:
        ready = json.loads(line)
        url, pid = str(ready["url"]), int(ready["pid"])
    except (ValueError, KeyError, TypeError):
        stop_process(process)
        stderr.seek(0)
        detail = stderr.read().decode("utf-8", "replace").strip().splitlines()
        stderr.close()
        shown = " | ".join(detail[-5:]) or "no output"
        raise SecondServerError(f"second server did not start (exit {process.returncode}): {shown}") from None
    return ServerProcess(url, pid, process, stderr)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a bounded wait, then SIGKILL; never raises for a process that already exited."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
    if process.stdout is not None:
        process.stdout.close()


def stop(server: ServerProcess) -> None:
    stop_process(server.process)
    server.stderr.close()


@contextlib.contextmanager
def second_server_process(**options: object) -> Iterator[ServerProcess]:
    """Like `second_server`, but yields the ServerProcess (for tests that read stderr or the exit code)."""
    server = start(**options)
    try:
        yield server
    finally:
        stop(server)


@contextlib.contextmanager
def second_server(**options: object) -> Iterator[str]:
    """Run the second server for the block; yields its ws:// URL."""
    with second_server_process(**options) as server:
        yield server.url


@contextlib.asynccontextmanager
async def open_second_server(**options: object) -> AsyncIterator[str]:
    """Trio version of `second_server`: the blocking start and stop run in a worker thread."""
    import trio  # imported here: load-test processes (gevent) use the sync launcher only

    server = await trio.to_thread.run_sync(lambda: start(**options))
    try:
        yield server.url
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(stop, server)
