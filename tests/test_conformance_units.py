"""The suite's parts without a server: patterns, sequence matching, redaction, known failures, registry."""

from __future__ import annotations

import re

import pytest

from conformance import CASES, GROUPS, all_cases, parse_known_failures, select_cases
from conformance._client import WireLog, sanitize
from conformance._expect import chat_box, message, notify, unread
from conformance._patterns import (
    ABSENT,
    ANY,
    TS,
    Item,
    Repeat,
    Unordered,
    close,
    match_sequence,
    render_frame,
)
from conformance._registry import base_rule
from conformance._report import align

NOW_MS = 1_767_225_600_000


@pytest.fixture(autouse=True)
def _fixed_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("conformance._patterns.time.time", lambda: NOW_MS / 1000)


def test_a_sequence_matches_exactly_in_order() -> None:
    frames = [
        {"type": "message", "patient": "p1", "id": 1, "from": "patient", "text": "hi", "ts": NOW_MS},
        {"type": "unread", "patient": "p1", "count": 1},
    ]
    items = [message("p1", 1, "patient", "hi"), unread("p1", 1)]
    assert match_sequence(items, frames) is None
    # The right frames in another order: the reason names the swapped pair and the contract's order.
    why = match_sequence(items[::-1], frames)
    assert why is not None
    assert why.startswith("frames in the wrong order: frame 1 (message) came before frame 2 (unread)")
    assert "patient_left, erased, message, chat_box, unread, notify" in why
    # Different frames, not a reordering: the first mismatch, as before.
    other = [unread("p1", 1), unread("p1", 2)]
    assert match_sequence(other, frames) == "frame 1: expected unread, saw message"
    assert match_sequence([*items, notify("p1", 1)], frames) == "missing frame 3: expected notify"
    assert match_sequence(items[:1], frames) == "frame 2 (unread) was not expected"


def test_values_compare_with_their_json_type_and_absence() -> None:
    assert match_sequence([unread("p1", 1)], [{"type": "unread", "patient": "p1", "count": 1.0}]) is not None
    assert match_sequence([unread("p1", 1)], [{"type": "unread", "patient": "p1", "count": True}]) is not None
    with_ref = {"type": "unread", "patient": "p1", "count": 1, "ref": "r1"}
    assert "ref must be absent" in (match_sequence([unread("p1", 1)], [with_ref]) or "")
    extra_field = {"type": "unread", "patient": "p1", "count": 1, "colour": "blue"}
    assert match_sequence([unread("p1", 1)], [extra_field]) is None  # servers may add fields
    assert match_sequence([{"type": "ok", "ts": TS}], [{"type": "ok", "ts": 5}]) is not None


def test_a_text_mismatch_is_reported_without_the_text() -> None:
    frame = {
        "type": "message",
        "patient": "p1",
        "id": 1,
        "from": "patient",
        "text": "secret words",
        "ts": NOW_MS,
    }
    why = match_sequence([message("p1", 1, "patient", "other words")], [frame])
    assert why is not None and "secret" not in why and "other" not in why


def test_unordered_and_repeated_frames() -> None:
    started, on_call = {"type": "call", "state": "started"}, {"type": "provider_status", "status": "on_call"}
    group = [
        Unordered(
            {"type": "call", "state": "started", "ref": ABSENT},
            {"type": "provider_status", "status": "on_call", "ref": ABSENT},
        )
    ]
    assert match_sequence(group, [on_call, started]) is None
    assert match_sequence(group, [started, on_call]) is None
    assert match_sequence(group, [started]) is not None
    erased = {"type": "erased", "patient": "p1", "reason": "refresh"}
    maybe: list[Item] = [Repeat({"type": "erased", "reason": "refresh"}), close(4000)]
    assert match_sequence(maybe, [{"type": "(close)", "code": 4000}]) is None
    assert match_sequence(maybe, [erased, erased, {"type": "(close)", "code": 4000}]) is None
    assert match_sequence(maybe, [{"type": "(close)", "code": 1000}]) is not None


def test_rendering_shows_lengths_for_text_and_name_and_labels_for_ids() -> None:
    line = render_frame(
        {"type": "patient_joined", "patient": "p-123", "name": "Ada Lovelace", "position": 1}, {"p-123": "A"}
    )
    assert line == "patient_joined{patient: <A>, name: <12 chars>, position: 1}"
    pattern = chat_box("open", "p-123", True, "auto_open")
    assert render_frame(pattern, {"p-123": "A"}).startswith("chat_box{state: open, patient: <A>")
    assert "<any>" in render_frame({"type": "ok", "id": ANY}, {})


def test_the_wire_log_redacts_text_names_tokens_and_anything_sent_as_text() -> None:
    log = WireLog(0.0, {"MARKER text 1", "MARKER name"})
    sanitized = sanitize(
        {
            "type": "hello",
            "name": "MARKER name",
            "token": "ab" * 32,
            "nested": [{"text": "MARKER text 1"}],
            "message": "echo: MARKER text 1",
        },
        log.secrets,
    )
    assert sanitized["name"] == 11 and sanitized["token"] == "<64 chars>"
    assert sanitized["nested"] == [{"text": 13}]
    assert "MARKER" not in str(sanitized)


def test_known_failures_file_format() -> None:
    entries = parse_known_failures("# comment\n\nR6.*  auto-open is planned  # trailing\nR43.rate-limited\n")
    assert [(e.pattern, e.reason, e.line) for e in entries] == [
        ("R6.*", "auto-open is planned", 3),
        ("R43.rate-limited", "", 4),
    ]


def test_case_selection_by_globs() -> None:
    cases = all_cases().values()
    chosen = select_cases(cases, ["R11*"], ["R11d.*"])
    assert chosen and all(c.id.startswith("R11") and not c.id.startswith("R11d") for c in chosen)


def test_every_case_is_tied_to_a_contract_rule_and_described() -> None:
    """Ids are RULE.kebab-name with a rule of the contract; each has a description and its steps."""
    rules = {f"R{n}" for n in [*range(1, 14), 20, 30, 31, *range(40, 47)]}
    sections = {"transport", "order", "identity", "console", "lifecycle"}
    cases = all_cases()
    assert len(cases) == len(CASES) >= 60
    for case in cases.values():
        assert case.rule in sections or base_rule(case.rule) in rules, case.id
        assert all(base_rule(r) in rules or r in sections for r in case.checks), case.id
        assert re.fullmatch(r"[A-Za-z0-9]+\.[a-z0-9-]+", case.id)
        assert case.description and case.steps, case.id
    for group in GROUPS:
        assert any(c.group == group for c in cases.values()), group
    covered = {base_rule(c.rule) for c in cases.values()}
    assert rules <= covered, sorted(rules - covered)


def test_a_case_names_its_rule_its_parts_and_its_whole() -> None:
    case = CASES["R11b.viewed-other-erases"]
    assert case.names_rule("R11b") and case.names_rule("R11") and case.names_rule("R9")
    assert not case.names_rule("R11a") and not case.names_rule("R43")


def test_diff_rows_align_on_frame_types() -> None:
    rows = align(["message{a}", "chat_box{b}", "unread{c}"], ["message{a}", "unread{c}"])
    assert rows == [
        ("message{a}", "message{a}", 0), ("chat_box{b}", None, None), ("unread{c}", "unread{c}", 1),
    ]


def test_the_documentation_lists_every_case() -> None:
    """docs/conformance.md lists every case id (its catalogue is kept in step with the registry)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "conformance.md").read_text(encoding="utf-8")
    missing = [case_id for case_id in all_cases() if f"`{case_id}`" not in doc]
    assert not missing


def test_extra_frames_where_the_contract_is_silent_are_told_apart_from_missing_ones() -> None:
    from conformance._patterns import find_unexpected_extra

    maybe_then_close: list[Item] = [Repeat({"type": "erased", "reason": "refresh"}), close(4000)]
    box = {"type": "chat_box", "state": "closed"}
    assert find_unexpected_extra(maybe_then_close, [box, {"type": "(close)", "code": 4000}])
    assert not find_unexpected_extra(maybe_then_close, [box])
    group: list[Item] = [Unordered({"type": "call"}, {"type": "provider_status"})]
    assert find_unexpected_extra(group, [{"type": "provider_status"}, {"type": "position"}, {"type": "call"}])
    assert not find_unexpected_extra(group, [{"type": "call"}])


def test_the_public_surface_lists_only_names_that_exist() -> None:
    import conformance

    names = list(conformance.__all__)
    assert names and len(names) == len(set(names))
    assert [name for name in names if not hasattr(conformance, name)] == []
