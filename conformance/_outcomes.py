"""What a case raises when it does not pass: a skip with its reason, or a failure at one step.

Beneath both the case context (which raises them) and the runner (which turns them into verdicts), so
that neither the context nor the registry of cases needs the other.
"""

from __future__ import annotations

from dataclasses import dataclass


class CaseSkipped(Exception):
    """The case cannot run against this server (a limit is off, too large, destructive...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Failure(Exception):
    """A departure from the contract at one step: what was expected beside what was seen."""

    message: str
    step: str = ""
    expected: dict[str, list[str]] | None = None
    seen: dict[str, list[str]] | None = None

    def __str__(self) -> str:
        return self.message
