"""The project is lint-clean: ``ruff check .`` and strict ``mypy`` (both configured in pyproject.toml)
report nothing. They run from the virtual environment that runs the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name, path=str(BIN))
        if found is None:
            pytest.skip(f"{name} is not installed in {BIN} (pip install -e '.[dev]')")
        path = Path(found)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*args], cwd=PROJECT, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_check_is_clean() -> None:
    done = run(str(tool("ruff")), "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean() -> None:
    done = run(str(tool("mypy")))
    assert done.returncode == 0, done.stdout + done.stderr
