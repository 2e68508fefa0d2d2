"""Cases and their registry: a stable id tied to a rule, a one-line description, an async function.

Case modules (``conformance/cases/*.py``) register with the decorator that
:func:`group` returns::

    case = group("erasure")

    @case("R11b.viewed-other-erases", "Opening another patient's chat erases ...", checks=("R9",))
    async def viewed_other_erases(t: CaseContext) -> None:
        ...

The id's part before the first dot is the rule (``R11b``; ``transport`` for
the contract's sections without a rule id). ``checks`` names the other rules
whose behaviour the case's expected frames rely on, so that a failure can be
traced to every rule it may come from.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from ._context import CaseContext

CaseFunc = Callable[[CaseContext], Awaitable[None]]


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NON_STRICT = "non-strict"  # works, but not to the letter
    INFORMATIONAL = "informational"  # observed and reported, no judgement
    SKIPPED = "skipped"  # not run, with a reason


# Groups in report order: name -> title.
GROUPS: Final[dict[str, str]] = {
    "transport": "Transport, hello and ping",
    "order": "Frame order",
    "identity": "Roles and identity",
    "console": "The clinician's welcome",
    "chatting": "Chatting (R1, R2, R4)",
    "badges": "Badges and notifications (R3, R10)",
    "chat_box": "The chat box (R5-R8)",
    "leaving": "Leaving (R9, patient lifecycle)",
    "erasure": "Erasure (R11-R13)",
    "calls": "Calls and provider status (R20, R30)",
    "room_settings": "Room settings (R31)",
    "bad_input": "Bad input (R40)",
    "limits": "Limits (R41-R46)",
}

_ID = re.compile(r"^(R\d+[a-d]?|transport|order|identity|console|lifecycle)\.[a-z0-9-]+$")
_BASE_RULE = re.compile(r"^R\d+")


def base_rule(rule: str) -> str:
    """``R11b`` -> ``R11``; section names stay as they are."""
    match = _BASE_RULE.match(rule)
    return match.group(0) if match else rule


@dataclass(frozen=True)
class Case:
    id: str
    rule: str
    group: str
    description: str
    func: CaseFunc
    checks: tuple[str, ...] = ()
    exclusive: bool = False  # runs alone, after the others (it fills the server)
    steps: str = ""  # the case's steps, in prose (its docstring)

    @property
    def rules(self) -> tuple[str, ...]:
        """Every rule a failure of this case may come from: its own first."""
        return (self.rule, *self.checks)

    def names_rule(self, rule: str) -> bool:
        """True when ``rule`` is this case's rule or one it checks: exactly, as a part of it (``R11b``
        for ``R11``), or as the whole it is part of (``R11`` for ``R11b``)."""
        return any(r == rule or base_rule(r) == rule or r == base_rule(rule) for r in self.rules)


CASES: Final[dict[str, Case]] = {}


def group(name: str) -> Callable[..., Callable[[CaseFunc], CaseFunc]]:
    """The ``case`` decorator for one group of cases."""
    if name not in GROUPS:
        raise ValueError(f"unknown group {name!r}")

    def case(
        case_id: str, description: str, *, checks: tuple[str, ...] = (), exclusive: bool = False
    ) -> Callable[[CaseFunc], CaseFunc]:
        if not _ID.match(case_id):
            raise ValueError(f"case id {case_id!r} is not RULE.kebab-name")
        if case_id in CASES:
            raise ValueError(f"case id {case_id!r} is registered twice")

        def register(func: CaseFunc) -> CaseFunc:
            doc = " ".join((func.__doc__ or "").split())
            CASES[case_id] = Case(
                id=case_id,
                rule=case_id.split(".", 1)[0],
                group=name,
                description=description,
                func=func,
                checks=checks,
                exclusive=exclusive,
                steps=doc,
            )
            return func

        return register

    return case


def all_cases() -> dict[str, Case]:
    """Every registered case (importing the case modules registers them)."""
    from . import cases  # noqa: F401 - registers

    order = list(GROUPS)
    ranked = sorted(enumerate(CASES.values()), key=lambda item: (order.index(item[1].group), item[0]))
    return {case.id: case for _, case in ranked}


def describe(case: Case) -> dict[str, Any]:
    return {
        "id": case.id,
        "rule": case.rule,
        "checks": list(case.checks),
        "group": case.group,
        "description": case.description,
        "steps": case.steps,
        "exclusive": case.exclusive,
    }
