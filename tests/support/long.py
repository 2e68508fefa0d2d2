"""The ``long`` marker: minutes of simulation, skipped unless ``QUEUECHAT_LONG_TESTS=1`` (docs/simulator.md,
"Tests"), so that CI stays under its time budget while the whole runs stay one switch away."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

LONG = os.environ.get("QUEUECHAT_LONG_TESTS") == "1"
# The marks of a long parameter (``pytest.param(..., marks=LONG_ONLY)``).
LONG_ONLY = [pytest.mark.long, pytest.mark.skipif(not LONG, reason="long: run with QUEUECHAT_LONG_TESTS=1")]

F = TypeVar("F", bound=Callable[..., Any])


def long_test(function: F) -> F:
    """Marked ``long``: skipped unless QUEUECHAT_LONG_TESTS=1."""
    for mark in reversed(LONG_ONLY):
        function = mark(function)
    return function
