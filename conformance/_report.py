"""The suite's outputs: a JSON result, JUnit XML for CI, and one self-contained HTML page for people.

Everything written here comes from :class:`SuiteResult`, whose frames are
already redacted: ``text`` and ``name`` are lengths, and any string the suite
sent as a text or a name is blanked. The HTML page has its CSS inline and
loads nothing (no scripts, fonts, images or links to other sites).
"""

from __future__ import annotations

import difflib
import html
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from formats.junit import Case, Outcome, Suite, junit_xml

from ._patterns import render_frame
from ._registry import GROUPS, Verdict
from ._runner import RESULT_VERSION, SUITE_NAME, CaseResult, SuiteResult

# --------------------------------------------------------------------------- JSON


def case_json(result: CaseResult) -> dict[str, Any]:
    case = result.case
    known = result.known_failure
    return {
        "id": case.id,
        "rule": case.rule,
        "checks": list(case.checks),
        "group": case.group,
        "group_title": GROUPS[case.group],
        "description": case.description,
        "steps_summary": case.steps,
        "verdict": result.verdict.value,
        "known_failure": {"pattern": known.pattern, "reason": known.reason} if known is not None else None,
        "reason": result.reason,
        "notes": result.notes,
        "departures": result.departures,
        "observations": result.observations,
        "duration_s": result.duration_s,
        "steps": result.steps,
        "failure": result.failure,
        "labels": result.labels,
        "wire": result.wire,
        "wire_dropped": result.wire_dropped,
    }


def result_json(suite: SuiteResult) -> dict[str, Any]:
    counts = suite.counts()
    return {
        "suite": SUITE_NAME,
        "version": RESULT_VERSION,
        "url": suite.url,
        "started_at": suite.started_at,
        "duration_s": suite.duration_s,
        "server": {"answers_ping": suite.has_ping, "limits": suite.limits},
        "options": suite.options,
        "summary": {**counts, "total": len(suite.results)},
        "exit_code": suite.exit_code,
        "stale_known_failures": [
            {"pattern": k.pattern, "reason": k.reason, "line": k.line} for k in suite.stale_known_failures
        ],
        "cases": [case_json(r) for r in suite.results],
    }


def write_json(suite: SuiteResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result_json(suite), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- JUnit XML

def failure_text(result: CaseResult) -> str:
    """The expected and seen frames of a failing step, as plain text."""
    lines = [result.reason]
    failure = result.failure or {}
    expected, seen = failure.get("expected") or {}, failure.get("seen") or {}
    for label in dict.fromkeys([*expected, *seen]):
        lines.append(f"\n[{label}] expected:")
        lines.extend(f"  {line}" for line in expected.get(label, []) or ["(nothing)"])
        lines.append(f"[{label}] seen:")
        lines.extend(f"  {line}" for line in seen.get(label, []) or ["(nothing)"])
    return "\n".join(lines)


def write_junit(suite: SuiteResult, path: Path) -> None:
    cases = []
    for result in suite.results:
        case = result.case
        out: list[str] = [case.description]
        outcome = None
        if result.verdict is Verdict.FAIL and result.known_failure is None:
            outcome = Outcome(kind="failure", message=result.reason[:500], type="fail",
                              text=failure_text(result))
        elif result.verdict is Verdict.FAIL:
            known = result.known_failure
            reason = (
                known.reason if known is not None and known.reason else "listed in the known-failures file"
            )
            outcome = Outcome(kind="skipped", message=f"known failure ({reason}): {result.reason}"[:500])
            out.append(failure_text(result))
        elif result.verdict is Verdict.SKIPPED:
            outcome = Outcome(kind="skipped", message=result.reason[:500])
        elif result.verdict in (Verdict.NON_STRICT, Verdict.INFORMATIONAL):
            out.append(f"{result.verdict.value}: {result.reason}")
        out.extend(f"note: {note}" for note in result.notes)
        cases.append(Case(classname=f"conformance.{case.group}", name=case.id,
                          time=f"{result.duration_s:.3f}", outcome=outcome, system_out="\n".join(out)))
    document = Suite(name=SUITE_NAME, cases=cases, time=f"{suite.duration_s:.3f}", timestamp=suite.started_at,
                     properties=[("url", suite.url), ("answers_ping", str(suite.has_ping).lower())])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(junit_xml(document))


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:32px 0 10px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
h3{font-size:16px;margin:0 0 6px}
.meta{color:#566070;font-size:13px}.meta code{font-size:12px}
.banner{margin:16px 0;padding:12px 16px;border-radius:8px;font-weight:600}
.banner.ok{background:#e3f4e8;color:#17602e}.banner.bad{background:#fbe4e4;color:#8b1d1d}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #d5d9e0;border-radius:8px;padding:8px 14px;min-width:96px}
.card b{display:block;font-size:22px}.card span{font-size:12px;color:#566070;text-transform:uppercase}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d5d9e0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e6e9ee;vertical-align:top;font-size:13.5px}
th{background:#eef1f5;font-weight:600}
tr.group td{background:#f2f4f7;font-weight:600;padding-top:9px}
.v{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600;white-space:nowrap}
.v-pass{background:#dff3e4;color:#17602e}.v-fail{background:#fbdede;color:#8b1d1d}
.v-known{background:#fdebd2;color:#7a4a00}.v-non-strict{background:#fff4c8;color:#6b5300}
.v-informational{background:#e1ecfb;color:#1d4f91}.v-skipped{background:#eceff3;color:#4b5563}
.id{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;white-space:nowrap}
.reason{color:#3a4452}
.case{background:#fff;border:1px solid #d5d9e0;border-radius:8px;padding:14px 16px;margin:14px 0}
.case p{margin:4px 0}
.steps{margin:8px 0;padding-left:20px}.steps li{margin:1px 0}
.steps .ok{color:#17602e}.steps .fail{color:#8b1d1d;font-weight:600}
.diff td,.diff th{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.diff td.bad{background:#fdecec}.diff td.conn{font-family:inherit;font-weight:600}
.wire td{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:11.5px}
details{margin:8px 0}summary{cursor:pointer;color:#1d4f91}
.legend dt{font-weight:600;margin-top:6px}.legend dd{margin:0 0 0 16px;color:#3a4452}
"""

_VERDICT_HELP = [
    ("pass", "the server does what the contract says, to the letter."),
    ("fail", "the server departs from the contract; the case shows the expected frames beside those seen."),
    ("known failure", "a fail listed in the known-failures file: reported, but it does not fail the run."),
    (
        "non-strict",
        "it works, but not to the letter (for example extra frames where the contract is silent); "
        "the reason says how.",
    ),
    ("informational", "observed and reported, no judgement (the wire cannot show it)."),
    (
        "skipped",
        "not run against this server; the reason says why (a limit off or too large, or destructive).",
    ),
]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _badge(result: CaseResult) -> str:
    if result.verdict is Verdict.FAIL and result.known_failure is not None:
        return '<span class="v v-known">known failure</span>'
    return f'<span class="v v-{result.verdict.value}">{_e(result.verdict.value)}</span>'


def _wire_line(entry: dict[str, Any], labels: dict[str, str]) -> str:
    frame = entry.get("frame")
    if isinstance(frame, dict) and isinstance(frame.get("type"), str):
        return render_frame(frame, labels)
    return json.dumps(frame, ensure_ascii=False)


def _kind(line: str) -> str:
    """The frame type a rendered line starts with (``(any order) chat_box{...}`` -> ``chat_box``)."""
    line = re.sub(r"^\([^)]*\) ", "", line)
    return re.split(r"[{ ]", line, maxsplit=1)[0]


Row = tuple[str | None, str | None, int | None]  # expected line, seen line, index of the seen frame


def align(expected: list[str], seen: list[str]) -> list[Row]:
    """(expected, seen, seen index) rows aligned on frame types: a missing or extra frame shows as such."""
    kinds_expected, kinds_seen = [_kind(x) for x in expected], [_kind(x) for x in seen]
    matcher = difflib.SequenceMatcher(a=kinds_expected, b=kinds_seen, autojunk=False)
    rows: list[Row] = []
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            rows.extend((expected[a0 + k], seen[b0 + k], b0 + k) for k in range(a1 - a0))
        else:
            for k in range(max(a1 - a0, b1 - b0)):
                rows.append((expected[a0 + k] if a0 + k < a1 else None,
                             seen[b0 + k] if b0 + k < b1 else None,
                             b0 + k if b0 + k < b1 else None))
    return rows


def _flagged_frame(message: str, label: str) -> int | None:
    """The index of the seen frame the failure message names for ``label`` ("C: frame 2: ...")."""
    match = re.search(rf"(?:^|[;—] ){re.escape(label)}: frames? (\d+)", message)
    return int(match.group(1)) - 1 if match else None


def _diff_table(failure: dict[str, Any]) -> str:
    expected, seen = failure.get("expected") or {}, failure.get("seen") or {}
    if not expected and not seen:
        return ""
    message = str(failure.get("message", ""))
    rows = ['<table class="diff"><tr><th>connection</th><th>expected</th><th>seen</th></tr>']
    for label in dict.fromkeys([*expected, *seen]):
        pairs = align(list(expected.get(label) or []), list(seen.get(label) or []))
        flagged = _flagged_frame(message, label)
        if not pairs:
            rows.append(f'<tr><td class="conn">{_e(label)}</td><td>(nothing)</td><td>(nothing)</td></tr>')
            continue
        for index, (left, right, seen_index) in enumerate(pairs):
            conn = f'<td class="conn" rowspan="{len(pairs)}">{_e(label)}</td>' if index == 0 else ""
            bad = (left is None or right is None or _kind(left) != _kind(right)
                   or (flagged is not None and seen_index == flagged))
            left_cell = _e(left) if left is not None else "<i>(not expected)</i>"
            right_cell = _e(right) if right is not None else "<i>(missing)</i>"
            css = ' class="bad"' if bad else ""
            rows.append(f"<tr>{conn}<td>{left_cell}</td><td{css}>{right_cell}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _case_detail(result: CaseResult) -> str:
    case = result.case
    parts = [
        f'<section class="case" id="{_e(case.id)}">',
        f'<h3><span class="id">{_e(case.id)}</span> {_badge(result)}</h3>',
        f"<p>{_e(case.description)}</p>",
    ]
    if case.steps:
        parts.append(f'<p class="meta">Steps: {_e(case.steps)}</p>')
    rules = ", ".join([case.rule, *case.checks])
    parts.append(f'<p class="meta">Rules: {_e(rules)} · {result.duration_s:.2f} s</p>')
    if result.known_failure is not None:
        reason = result.known_failure.reason or "no reason given"
        parts.append(f"<p><b>Known failure</b> ({_e(result.known_failure.pattern)}: {_e(reason)})</p>")
    if result.reason:
        parts.append(
            f'<p class="reason"><b>{"Why" if result.verdict is Verdict.FAIL else "How"}:</b> '
            f"{_e(result.reason)}</p>"
        )
    for note in result.notes:
        parts.append(f'<p class="meta">Note: {_e(note)}</p>')
    if result.steps:
        items = []
        for step in result.steps:
            css = "fail" if step.get("status") == "fail" else "ok"
            mark = "✗" if css == "fail" else "✓"
            items.append(f'<li class="{css}">{mark} {_e(step.get("title", ""))}</li>')
        parts.append('<ol class="steps">' + "".join(items) + "</ol>")
    if result.failure:
        parts.append(_diff_table(result.failure))
    if result.wire:
        rows = ['<table class="wire"><tr><th>ms</th><th>conn</th><th></th><th>frame</th></tr>']
        entries = sorted(
            ((e.get("t_ms", 0), label, e) for label, log in result.wire.items() for e in log),
            key=lambda item: item[0],
        )
        for t_ms, label, entry in entries:
            arrow = "→" if entry.get("dir") == "out" else "←"
            rows.append(
                f"<tr><td>{_e(t_ms)}</td><td>{_e(label)}</td><td>{arrow}</td>"
                f"<td>{_e(_wire_line(entry, result.labels))}</td></tr>"
            )
        rows.append("</table>")
        dropped = sum(result.wire_dropped.values())
        extra = f" (earliest {dropped} entries not kept)" if dropped else ""
        parts.append(
            f"<details><summary>Wire log: {len(entries)} frames{extra}; text and names shown as "
            "lengths</summary>" + "\n".join(rows) + "</details>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def render_html(suite: SuiteResult) -> str:
    counts = suite.counts()
    unexpected = counts["unexpected failures"]
    banner = (
        f'<div class="banner bad">{unexpected} unexpected failure{"s" if unexpected != 1 else ""}: '
        "the server departs from the contract (exit code 1)</div>"
        if unexpected
        else '<div class="banner ok">No unexpected failure (exit code 0)'
        + (f" — {counts['known failures']} known failure(s) reported" if counts["known failures"] else "")
        + "</div>"
    )
    cards = "".join(
        f'<div class="card"><b>{counts[key]}</b><span>{_e(key)}</span></div>'
        for key in ("pass", "fail", "known failures", "non-strict", "informational", "skipped")
    )
    limits = ", ".join(f"{k} {v if v is not None else 'off'}" for k, v in (suite.limits or {}).items())
    ping = (
        "answers <code>ping</code>: absence of frames is checked with the ping barrier"
        if suite.has_ping
        else "does <b>not</b> answer <code>ping</code>: absence of frames is checked over a "
        f"{suite.options.get('window_s', 0.5)} s quiet window instead (weaker)"
    )
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>queuechat conformance report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>Queue-chat conformance report</h1>",
        f'<p class="meta">Server <code>{_e(suite.url)}</code> · started {_e(suite.started_at)} · '
        f"{suite.duration_s:.1f} s · {len(suite.results)} cases</p>",
        f'<p class="meta">The server {ping}.</p>',
        f'<p class="meta">Limits from its welcome: {_e(limits) if limits else "none listed"}</p>',
        banner,
        f'<div class="cards">{cards}</div>',
    ]
    if suite.stale_known_failures:
        stale = ", ".join(f"{k.pattern} (line {k.line})" for k in suite.stale_known_failures)
        out.append(
            f'<p class="reason">Known-failures entries that matched no failing case (fixed? remove them): '
            f"{_e(stale)}</p>"
        )
    attention = [r for r in suite.results if r.verdict in (Verdict.FAIL, Verdict.NON_STRICT)]
    out.append("<h2>Cases by rule</h2>")
    out.append(
        "<table><tr><th>case</th><th>rule</th><th>what it checks</th><th>verdict</th><th>why / how</th></tr>"
    )
    for group, title in GROUPS.items():
        rows = sorted(
            (r for r in suite.results if r.case.group == group), key=lambda r: _rule_key(r.case.rule)
        )
        if not rows:
            continue
        out.append(f'<tr class="group"><td colspan="5">{_e(title)}</td></tr>')
        for result in rows:
            case = result.case
            link = (
                f'<a href="#{_e(case.id)}" class="id">{_e(case.id)}</a>'
                if result in attention
                else f'<span class="id">{_e(case.id)}</span>'
            )
            rules = _e(case.rule) + (
                f'<br><span class="meta">also {_e(", ".join(case.checks))}</span>' if case.checks else ""
            )
            reason = result.reason if len(result.reason) <= 220 else result.reason[:217] + "…"
            out.append(
                f"<tr><td>{link}</td><td>{rules}</td><td>{_e(case.description)}</td>"
                f'<td>{_badge(result)}</td><td class="reason">{_e(reason)}</td></tr>'
            )
    out.append("</table>")
    if attention:
        out.append("<h2>Failing and non-strict cases</h2>")
        out.append(
            '<p class="meta">For each: the steps (✓ passed, ✗ where it departed), the frames expected on '
            "each connection beside those seen, and the case's wire log. Patients are shown by label "
            "(&lt;A&gt;, &lt;B&gt;); <code>text</code> and <code>name</code> by their lengths.</p>"
        )
        out.extend(_case_detail(r) for r in _failures_first(attention))
    out.append('<h2>How to read this report</h2><dl class="legend">')
    out.extend(f"<dt>{_e(name)}</dt><dd>{_e(help_text)}</dd>" for name, help_text in _VERDICT_HELP)
    out.append(
        '</dl><p class="meta">Each case runs in fresh rooms. A case\'s id starts with the contract rule it '
        "checks; “also” lists rules its expected frames rely on. Frames one cause produces are checked in "
        "the contract's order; frames it does not order are marked “(any order)”.</p>"
    )
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _rule_key(rule: str) -> tuple[int, str]:
    match = re.match(r"R(\d+)(.*)", rule)
    return (int(match.group(1)), match.group(2)) if match else (-1, rule)


def _failures_first(results: Iterable[CaseResult]) -> list[CaseResult]:
    return sorted(results, key=lambda r: (r.verdict is not Verdict.FAIL, r.known_failure is not None))


def write_html(suite: SuiteResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(suite), encoding="utf-8")
