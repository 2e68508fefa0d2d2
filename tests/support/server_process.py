"""Start ``server_runner.py`` (the reference server) in a process of its own and talk to its control channel.

Used by the out-of-process tests (privacy audit, socket fuzzing) and by the
benchmarks (fuzz, soak, capacity). The server's stdout and stderr go to files
the driver owns, so that its whole log output can be searched afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
RUNNER = "tests.support.server_runner"  # run with -m, the project's root on PYTHONPATH


class ServerProcess:
    """``with ServerProcess(limits={...}) as server: server.url, server.stats(), ...``"""

    def __init__(
        self,
        *,
        limits: dict[str, Any] | None = None,
        log_level: str = "info",
        workdir: Path | None = None,
        tracemalloc: bool = False,
        nofile: int = 0,
        python: str = sys.executable,
        ready_timeout_s: float = 30.0,
        cpu: int | None = None,
        gc_policy: bool = True,
    ) -> None:
        self.workdir = workdir
        args = [python, "-m", RUNNER, "--limits", json.dumps(limits or {}), "--log-level", log_level]
        if not gc_policy:
            args.append("--no-gc-policy")
        if tracemalloc:
            args.append("--tracemalloc")
        if nofile:
            args += ["--nofile", str(nofile)]
        self.args = args
        self.ready_timeout_s = ready_timeout_s
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.control_port = 0
        self._control: socket.socket | None = None
        self._control_buf = b""
        self.stdout_path: Path | None = None
        self.stderr_path: Path | None = None
        self._files: list[IO[bytes]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ServerProcess:
        env = dict(os.environ)
        cwd = None
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            tmp = self.workdir / "tmp"
            tmp.mkdir(exist_ok=True)
            env.update(TMPDIR=str(tmp), HOME=str(self.workdir))
            cwd = str(self.workdir)
            self.stdout_path = self.workdir.parent / f"{self.workdir.name}.stdout"
            self.stderr_path = self.workdir.parent / f"{self.workdir.name}.stderr"
            out: Any = open(self.stdout_path, "wb")  # noqa: SIM115 -- closed in stop()
            err: Any = open(self.stderr_path, "wb")  # noqa: SIM115 -- closed in stop()
            self._files += [out, err]
        else:
            out, err = subprocess.PIPE, subprocess.DEVNULL
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd,
                                     env=env)
        if self.cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        line = self._read_ready_line()
        parts = line.split()
        if len(parts) != 4 or parts[0] != "ready":
            self.stop()
            raise RuntimeError(f"unexpected first line from the server: {line!r}")
        self.url, self.control_port = parts[1], int(parts[3])
        self._control = socket.create_connection(("127.0.0.1", self.control_port), timeout=120)
        return self

    def _read_ready_line(self) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        if self.stdout_path is None:
            assert self.proc.stdout is not None
            os.set_blocking(self.proc.stdout.fileno(), False)
            buf = b""
            while b"\n" not in buf:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the server did not start")
                chunk = self.proc.stdout.read(4096)
                if chunk:
                    buf += chunk
                else:
                    time.sleep(0.02)  # polling a child's pipe; bounded by the deadline
            return buf.split(b"\n", 1)[0].decode()
        while True:
            text = self.stdout_path.read_bytes()
            if b"\n" in text:
                return text.split(b"\n", 1)[0].decode()
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the server did not start")
            time.sleep(0.02)  # polling a file the child writes; bounded by the deadline

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Shut the server down (R46) and wait for the process; returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                if self._control is not None:
                    self.command({"cmd": "shutdown"}, timeout_s=timeout_s)
            except (OSError, ValueError, RuntimeError):
                pass
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout_s)
        if self._control is not None:
            self._control.close()
            self._control = None
        for f in self._files:
            f.close()
        self._files = []
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    # ------------------------------------------------------------------ control channel

    def command(self, request: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
        sock = self._control
        if sock is None:
            raise RuntimeError("no control channel")
        sock.settimeout(timeout_s)
        sock.sendall(json.dumps(request).encode() + b"\n")
        while b"\n" not in self._control_buf:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the control channel closed")
            self._control_buf += chunk
        line, self._control_buf = self._control_buf.split(b"\n", 1)
        answer = json.loads(line)
        assert isinstance(answer, dict)
        return answer

    def stats(self, heavy: bool = True) -> dict[str, Any]:
        """Statistics; ``heavy`` adds live-object counts (a full garbage collection in the server)."""
        return self.command({"cmd": "stats", "heavy": heavy})

    def search(self, prefix: str, hashes: list[str], trace: bool = False) -> dict[str, Any]:
        """``found``: per hash, the kinds of object it was found in (empty: not found);
        ``chains``: with ``trace``, how each find was reached (type names only)."""
        return self.command({"cmd": "search", "prefix": prefix, "hashes": hashes, "trace": trace})

    def written(self) -> list[str]:
        paths = self.command({"cmd": "written"})["paths"]
        assert isinstance(paths, list)
        return paths


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
