"""A client's requests and their answers: fresh refs, and which frame answers which request.

Every client in the project (the test wire client, the conformance suite, the load users, the raw
test clients) numbers its requests and waits for the ``ok`` or ``error`` that carries the same
``ref``. The rule is written here once, with no I/O; the waiting belongs to each concurrency style
(``conformance/_exchange.py`` for Trio, ``loadtests/_client.py`` for gevent, ``tests/support/rawws.py``
for blocking sockets).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Final

ANSWER_KINDS: Final = frozenset({"ok", "error"})


class RefNumbers:
    """Fresh refs: a prefix (the caller's, it may change per request) and the next number."""

    __slots__ = ("_numbers",)

    def __init__(self) -> None:
        self._numbers = itertools.count(1)

    def fresh(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._numbers)}"


def answers(frame: Mapping[str, Any], ref: str) -> bool:
    """Whether ``frame`` is the answer (``ok`` or ``error``) to the request that carried ``ref``."""
    return frame.get("type") in ANSWER_KINDS and frame.get("ref") == ref
