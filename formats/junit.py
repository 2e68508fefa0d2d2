"""JUnit XML, the verdict file CI systems read: one writer for the load tests' SLO verdict, the comparison
of two load runs and the conformance suite.

What CI tools read: ``<testsuites>`` and one ``<testsuite>``, each with ``name``, ``tests``, ``failures``,
``errors``, ``skipped`` (counted here from the cases) and ``time``; one ``<testcase>`` per check
(``classname``, ``name``, ``time``) holding at most one ``<failure>``, ``<error>`` or ``<skipped>``
(``message``, ``type``, a text) and its ``<system-out>``. Characters XML 1.0 cannot carry are written
as ``?``, so that a stray control character in a reason never makes the file unreadable.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(value: str) -> str:
    """``value`` with every character XML 1.0 cannot carry replaced by ``?``."""
    return _XML_UNSAFE.sub("?", value)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """Why a case did not pass: a failed check, an error (the check could not be made) or a skip."""

    kind: Literal["failure", "error", "skipped"]
    message: str
    type: str | None = None
    text: str | None = None


@dataclass(frozen=True, kw_only=True)
class Case:
    classname: str
    name: str
    time: str | None = None  # seconds, as written ("0", "1.250"); None leaves the attribute out
    outcome: Outcome | None = None  # None: passed
    system_out: str | None = None


@dataclass(frozen=True, kw_only=True)
class Suite:
    name: str
    cases: Sequence[Case]
    time: str | None = None
    timestamp: str | None = None
    properties: Sequence[tuple[str, str]] = ()


def junit_xml(suite: Suite, *, indent: bool = True, root_skipped: bool = True) -> bytes:
    """The document, UTF-8 with its XML declaration. ``indent`` lays it out one element a line;
    ``root_skipped=False`` leaves ``skipped`` off ``<testsuites>``, as the load tests' file always has."""
    counts = {kind: sum(1 for case in suite.cases if case.outcome is not None and case.outcome.kind == kind)
              for kind in ("failure", "error", "skipped")}
    totals = {"name": suite.name, "tests": str(len(suite.cases)), "failures": str(counts["failure"]),
              "errors": str(counts["error"]), "skipped": str(counts["skipped"])}
    timed = {"time": suite.time} if suite.time is not None else {}
    root_totals = totals if root_skipped else {k: v for k, v in totals.items() if k != "skipped"}
    root = ET.Element("testsuites", _safe({**root_totals, **timed}))
    stamp = {"timestamp": suite.timestamp} if suite.timestamp is not None else {}
    suite_el = ET.SubElement(root, "testsuite", _safe({**totals, **timed, **stamp}))
    if suite.properties:
        properties = ET.SubElement(suite_el, "properties")
        for name, value in suite.properties:
            ET.SubElement(properties, "property", _safe({"name": name, "value": value}))
    for case in suite.cases:
        attributes = {"classname": case.classname, "name": case.name}
        if case.time is not None:
            attributes["time"] = case.time
        case_el = ET.SubElement(suite_el, "testcase", _safe(attributes))
        outcome = case.outcome
        if outcome is not None:
            outcome_attributes = {"message": outcome.message}
            if outcome.type is not None:
                outcome_attributes["type"] = outcome.type
            outcome_el = ET.SubElement(case_el, outcome.kind, _safe(outcome_attributes))
            if outcome.text is not None:
                outcome_el.text = xml_safe(outcome.text)
        if case.system_out is not None:
            ET.SubElement(case_el, "system-out").text = xml_safe(case.system_out)
    if indent:
        ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _safe(attributes: dict[str, str]) -> dict[str, str]:
    return {key: xml_safe(value) for key, value in attributes.items()}
