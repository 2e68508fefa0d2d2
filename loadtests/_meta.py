"""Run metadata for ``summary.json``: which code ran (versions, commit), on what kind of machine, and
with which settings.

Latencies are only comparable with others taken by the same code, on a like
machine, under the same load; a results folder read later must say so
itself. The machine's name is left out: results folders get shared.

No Locust and no gevent here (the caller gives Locust's version).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

# The checkout the load tests run from: the folder that holds the ``loadtests`` package.
PROJECT_DIR = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_S = 2.0
REFERENCE_SERVER = "reference server started by queuechat load"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(folder: Path, *args: str, git: str, timeout_s: float) -> str | None:
    """``git -C folder ARGS``'s output, or None when git is missing, fails or is slow."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # status must not take the index lock of a live checkout
    try:
        done = subprocess.run([git, "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=timeout_s, check=False, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(folder: Path = PROJECT_DIR, *, git: str = "git",
              timeout_s: float = GIT_TIMEOUT_S) -> tuple[str | None, bool | None]:
    """The checkout's commit and whether its tracked files have uncommitted changes.

    ``(None, None)`` unless ``folder`` is the top of a git checkout with a
    commit (an installed copy inside some other repository is not that
    repository's code), or when git is missing or does not answer in time.
    """
    found = _git(folder, "rev-parse", "--show-toplevel", "HEAD", git=git, timeout_s=timeout_s)
    lines = found.splitlines() if found is not None else []
    if len(lines) != 2 or Path(lines[0]).resolve() != folder.resolve():
        return None, None
    status = _git(folder, "status", "--porcelain", "--untracked-files=no", git=git, timeout_s=timeout_s)
    return lines[1], (bool(status.strip()) if status is not None else None)


def environment(*, locust_version: str | None, project_dir: Path = PROJECT_DIR) -> dict[str, Any]:
    """Everything in ``meta`` but the command: versions, commit, interpreter, platform, cores."""
    commit, dirty = git_state(project_dir)
    return {
        "queuechat_version": package_version("queuechat"),
        "commit": commit,
        "dirty": dirty,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "locust_version": locust_version,
    }
