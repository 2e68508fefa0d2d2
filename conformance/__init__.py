"""A conformance suite for queue-chat servers: every behaviour of the contract as a case, with a report.

Run it with ``queuechat conformance --url ws://HOST:PORT/v1/ws --secret S``, or
from Trio code with :func:`run_suite`. See ``docs/conformance.md``.
"""

from ._registry import CASES, GROUPS, Case, Verdict, all_cases, base_rule
from ._report import write_html, write_json, write_junit
from ._runner import (
    CaseResult,
    KnownFailure,
    SuiteError,
    SuiteResult,
    load_known_failures,
    parse_known_failures,
    run_suite,
    select_cases,
)

__all__ = [
    "CASES",
    "GROUPS",
    "Case",
    "CaseResult",
    "KnownFailure",
    "SuiteError",
    "SuiteResult",
    "Verdict",
    "all_cases",
    "base_rule",
    "load_known_failures",
    "parse_known_failures",
    "run_suite",
    "select_cases",
    "write_html",
    "write_json",
    "write_junit",
]
