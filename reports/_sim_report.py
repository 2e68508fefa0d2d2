"""The simulation report: one self-contained HTML page (and its charts as PNGs) that tells a clinic manager
what a simulated clinic run looked like (queues, waits, conversations, erasures) and whether the server
kept every rule, from a run's history and summary alone."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from . import _sim_charts as charts
from ._errors import ReportError
from ._page import Cell, Page, ReportResult, write_page
from ._sim_run import SimRun, load_run

# Rule ids and what they are about, for readers who do not know the protocol by heart.
RULE_TITLES = {
    "R1": "chat both ways", "R2": "several conversations", "R3": "unread badges", "R4": "open a conversation",
    "R5": "minimize and close", "R6": "auto-open", "R7": "closed box", "R8": "the box stays put",
    "R9": "departed patients", "R10": "notifications", "R11": "erasure", "R12": "refresh",
    "R13": "nothing is kept", "R20": "calls", "R30": "provider status and position",
    "R31": "patient-initiated chat", "R40": "bad input", "R41": "sizes", "R42": "slow readers",
    "R43": "request rate", "R44": "capacity", "R45": "timers", "R46": "shutdown",
    "WIRE": "answers in order, with their ref", "LIVENESS": "everyone answered or gone by the end",
    "PRIVACY": "a patient sees only their own frames",
    "order": "one cause's frames in the contract's order",
}
DEPARTURE_WORDS = {
    "call_ended": "seen: the clinician ended their call",
    "left": "left the queue (pressed leave)",
    "disconnected": "closed the page or lost the connection",
}
CLOSE_WORDS = {
    "1000": "normal close (after leaving or after a call)",
    "1001": "server shutting down",
    "1007": "text that is not valid UTF-8",
    "1008": "refused before the welcome (bad hello, or no hello in time)",
    "1009": "frame too large",
    "1013": "server full (capacity)",
    "4000": "clinician tab replaced by a newer one",
}
FAULT_WORDS = {
    "refreshes": "clinician page refreshes (reload or a new tab)",
    "drops": "connections dropped on purpose",
    "stalls": "connections that stopped reading for a while",
}
MAX_VIOLATION_ROWS = 200


def write_simulation_report(source: Path, out_dir: Path | None = None) -> ReportResult:
    """Write ``report.html`` and its PNGs for a simulation run (its folder, or its ``.jsonl`` history).

    The default folder is ``<folder>/report``, or ``<file's folder>/<stem>-report`` for a file.
    Bad input raises :class:`reports.ReportError` with a one-line message naming the file (and line).
    """
    source = Path(source)
    run = load_run(source)
    if out_dir is None:
        out_dir = source / "report" if source.is_dir() else source.parent / f"{source.stem}-report"
    try:
        page = build_page(run)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as error:
        source_file = run.summary_file or run.history
        raise ReportError(f"{source_file}: a field has an unexpected type ({type(error).__name__})") from None
    footer = (f"queuechat simulation report, drawn from {run.history.name}"
              f"{' and ' + run.summary_file.name if run.summary_file else ''}. Message text and patient "
              "names are never shown: the history keeps only their lengths.")
    return write_page(page, Path(out_dir), footer)


def _answered_rate(served: int, hours: float, rooms: int) -> tuple[str, str]:
    """Per hour for runs of an hour or more; for shorter ones the count itself (a rate per hour drawn
    from a 30-second run would read as a clinic's pace)."""
    if hours <= 0:
        return "Pace", "n/a"
    per_room = served / max(1, rooms)
    if hours < 1:
        return "Pace", f"{served} answered in {hours * 60:.1f} min ({per_room:.1f} per room)"
    return "Patients answered per hour", f"{served / hours:.1f} in all, {per_room / hours:.1f} per room"


def build_page(run: SimRun) -> Page:
    info = run.info
    span = _run_span(run)
    page = Page(f"Simulation report: {info.scenario}, seed {info.seed}",
                f"{span[0].upper()}{span[1:]}, {len(info.rooms)} rooms, "
                f"{run.patients} patients. History: {run.history.name}")
    _verdict(page, run, span)
    waits = sorted(w for v in run.visits if (w := v.wait_s) is not None)
    _at_a_glance(page, run, waits)
    _what_was_run(page, run)
    axis = charts.time_axis(_end_ms(run), run.virtual)
    _queue(page, run, axis)
    _waits(page, run, waits, axis)
    _conversations(page, run)
    _erasures_and_departures(page, run)
    _violations(page, run)
    _rules_exercised(page, run)
    _about(page, run)
    return page


# --------------------------------------------------------------------------- the top


def _verdict(page: Page, run: SimRun, span: str) -> None:
    seed = run.info.seed
    cut = "" if run.complete else (" The history is incomplete: it has no end record, so the run did not "
                                   "finish.")
    if run.violations is None:
        page.verdict("Rules not checked: the summary file is missing", "warn",
                     f"Run `queuechat check {run.history.name}` to check this history against the rules; "
                     f"the figures below come from the history alone.{cut}")
    elif run.violations:
        rules = ", ".join(run.violations_by_rule())
        count = len(run.violations)
        plural = "s" if "," in rules else ""
        headline = f"{count} violation{'s' if count != 1 else ''} of rule{plural} {rules}"
        page.verdict(headline, "fail", f"Seed {seed}, {span}. "
                     f"The section Rule violations lists each one with the history lines that show it.{cut}")
    elif not run.complete:
        page.verdict("History incomplete: the run did not finish", "warn",
                     f"No rule violations were found in the {span} recorded (seed {seed}), but "
                     "the history has no end record.")
    else:
        page.verdict(f"No rule violations found in {span} (seed {seed})", "pass",
                     "The simulator's checker replayed every connection and found that the server kept "
                     "every rule.")


def _at_a_glance(page: Page, run: SimRun, waits: list[float]) -> None:
    page.section("At a glance")
    patients = run.patients
    served = run.patients_served
    never = patients - len(waits)
    hours = _end_ms(run) / 3_600_000.0
    peak, when = run.queue.peak()
    facts = [
        ("Patients checked in", f"{patients} in {len(run.info.rooms)} rooms"),
        ("Patients answered", f"{served} ({_pct(served, patients)}); never answered: {never}"),
        ("Median wait for a first answer", _wait(_percentile(waits, 0.5))),
        ("9 in 10 answered within", _wait(_percentile(waits, 0.9))),
        ("Longest wait", _wait(waits[-1] if waits else None)),
        ("Most patients waiting at once", f"{peak} (all rooms), first at {_clock(when)} into the run"
         if peak else "0"),
        _answered_rate(served, hours, len(run.info.rooms)),
        ("Chat messages", f"{run.messages.patient_sent} from patients, {run.messages.clinician_sent} from "
         "clinicians"),
    ]
    page.facts(facts)


def _what_was_run(page: Page, run: SimRun) -> None:
    info = run.info
    page.section("What was run")
    not_recorded = "not recorded"
    description = info.description or not_recorded
    if info.description and info.description_source:
        description += f" (from {info.description_source} in this checkout)"
    mode = ("virtual time, in one process (hours of clinic in seconds)" if run.virtual
            else "real time, over network sockets")
    duration = _fmt_ms(info.duration_ms) if info.duration_ms else not_recorded
    if info.duration_ms and info.heal_ms and 0 < info.heal_ms < info.duration_ms:
        healing = _fmt_ms(info.duration_ms - info.heal_ms)
        duration += (f": {_fmt_ms(info.heal_ms)} of clinic, then a {healing} "
                     "healing phase (no faults, no one leaves on their own, everyone waiting is answered)")
    if info.started:
        start = info.started
    elif not run.virtual and info.epoch_ms:
        start = datetime.datetime.fromtimestamp(info.epoch_ms / 1000.0, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    else:
        start = f"{not_recorded} (a virtual run; its clock starts at 2026-01-01 00:00 UTC by convention)"
    rooms = ", ".join(info.rooms[:6]) + (f" and {len(info.rooms) - 6} more" if len(info.rooms) > 6 else "")
    page.facts([
        ("Scenario", info.scenario),
        ("Description", description),
        ("Seed", str(info.seed)),
        ("Mode", mode),
        ("Server", info.server or not_recorded),
        ("Processes (jobs)", str(info.jobs) if info.jobs is not None else not_recorded),
        ("Rooms", f"{len(info.rooms)}: {rooms}" if info.rooms else "0"),
        ("Server limits", _limits(info.limits)),
        ("Planned length", duration),
        ("Recorded length", _fmt_ms(run.last_t_ms) + ("" if run.complete else " (no end record)")),
        ("Started", start),
        ("Wall-clock time", f"{info.wall_s:.1f} s" if info.wall_s is not None else
         f"{not_recorded} (no summary)"),
        ("History", f"{run.history.name}: {run.records:,} records"),
        ("Summary", run.summary_file.name if run.summary_file else "missing"),
        ("Code (commit)", info.commit or not_recorded),
        ("Machine", ", ".join(x for x in (f"{info.cores} cores" if info.cores else "",
                                           f"Python {info.python}" if info.python else "",
                                           info.machine or "") if x) or not_recorded),
    ])


# --------------------------------------------------------------------------- the charts


def _queue(page: Page, run: SimRun, axis: charts.TimeAxis) -> None:
    page.section("The queue", "How many patients were in the clinics' queues at each moment, added over all "
                 "rooms, as the clinicians' screens showed them (a patient who checks in while their "
                 "clinician's page is reloading shows when it comes back).")
    violation_ms = [v.t_ms for v in run.violations or () if v.t_ms is not None]
    page.chart(charts.queue_chart(run.queue.times_ms, run.queue.waiting, run.queue.in_call, _end_ms(run),
                                  run.info.heal_ms, axis, violation_ms))
    peak, when = run.queue.peak()
    if peak:
        page.paragraph(f"At most {peak} patients were waiting at once (all rooms together), first "
                       f"{_clock(when)} into the run.", note=True)


def _waits(page: Page, run: SimRun, waits: list[float], axis: charts.TimeAxis) -> None:
    page.section("Waiting for a first answer", "A patient's wait runs from their check-in to the first "
                 "answer: the clinician's first chat message reaching them, or a call starting.")
    unit = charts.wait_unit(waits[-1] if waits else 0.0)
    visits = run.visits
    page.chart(charts.waits_scatter([v.checkin_ms for v in visits], [v.wait_s for v in visits], _end_ms(run),
                                    run.info.heal_ms, axis, unit, _percentile(waits, 0.5),
                                    _percentile(waits, 0.9)))
    marks = [(name, value) for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
             if (value := _percentile(waits, p)) is not None]
    page.chart(charts.waits_histogram(waits, unit, marks))
    never = run.patients - len(waits)
    rows: list[list[str | Cell]] = [
        [label, Cell(_wait(_percentile(waits, p)), "num"), Cell(_secs(_percentile(waits, p)), "num")]
        for label, p in (("median (p50)", 0.5), ("90 % within (p90)", 0.9), ("99 % within (p99)", 0.99),
                         ("longest (max)", 1.0))]
    rows.append(["never answered", Cell(f"{never} patient{'s' if never != 1 else ''}",
                                        "warn" if never else "num"), Cell("", "num")])
    page.table(["wait for a first answer", Cell("time", "num"), Cell("seconds", "num")], rows,
               table_id="waits",
               caption=f"Over the {len(waits)} answered patients of {run.patients}. A patient never answered "
                       "left (or the run ended) before any message or call reached them.")
    page.chart(charts.arrivals_chart([v.checkin_ms for v in visits],
                                     [v.first_answer_ms for v in visits if v.first_answer_ms is not None],
                                     _end_ms(run), axis))


def _conversations(page: Page, run: SimRun) -> None:
    page.section("Conversations", "A conversation is one patient's visit: every chat message between them "
                 "and their clinician, from check-in to departure.")
    page.chart(charts.messages_histogram([v.messages for v in run.visits]))
    m = run.messages
    rows: list[list[str | Cell]] = [
        ["patient to clinician", Cell(f"{m.patient_sent:,}", "num"), Cell(f"{m.patient_delivered:,}", "num"),
         _undelivered(m.patient_sent, m.patient_delivered)],
        ["clinician to patient", Cell(f"{m.clinician_sent:,}", "num"),
         Cell(f"{m.clinician_delivered:,}", "num"), _undelivered(m.clinician_sent, m.clinician_delivered)],
        ["both ways", Cell(f"{m.patient_sent + m.clinician_sent:,}", "num"),
         Cell(f"{m.patient_delivered + m.clinician_delivered:,}", "num"),
         _undelivered(m.patient_sent + m.clinician_sent, m.patient_delivered + m.clinician_delivered)],
    ]
    page.table(["direction", Cell("sent (accepted by the server)", "num"), Cell("delivered", "num"),
                Cell("not delivered", "num")], rows, table_id="messages",
               caption="A message is not delivered when the receiving side had already gone (closed the "
                       "page, lost the connection) as it was sent; the checker flags any other loss.")


def _erasures_and_departures(page: Page, run: SimRun) -> None:
    page.section("Erasures, departures and faults", "Every conversation is erased once its patient has gone "
                 "and the clinician no longer has it on screen: that is the design (no patient data is "
                 "kept), not a failure.")
    page.chart(charts.erasures_chart(run.erasures))
    source = "summary" if run.summary_file else "history"
    erasure_rows: list[list[str | Cell]] = [[r, charts.ERASURE_WORDS.get(r, ""), Cell(str(n), "num")]
                                            for r, n in _ordered(run.erasures, charts.ERASURE_WORDS)]
    erasure_rows.append(["all", "", Cell(str(sum(run.erasures.values())), "num")])
    page.table(["reason", "what happened", Cell("conversations erased", "num")], erasure_rows,
               table_id="erasures", caption=f"Counted from the {source}."
               + (" A refresh by reload erases the console's conversations without telling the closed page, "
                  "so the history cannot show those erasures." if run.faults.get("refreshes") else ""))
    page.subheading("How patients left")
    departure_rows: list[list[str | Cell]] = [[r, DEPARTURE_WORDS.get(r, ""), Cell(str(n), "num")]
                                              for r, n in _ordered(run.departures, DEPARTURE_WORDS)]
    departure_rows.append(["all", "", Cell(str(sum(run.departures.values())), "num")])
    page.table(["reason", "what happened", Cell("patients", "num")], departure_rows, table_id="departures")
    page.subheading("Connections the server closed")
    page.table(["close code", "meaning", Cell("connections", "num")],
               [[code, CLOSE_WORDS.get(code, ""), Cell(str(n), "num")] for code, n in sorted(
                   run.server_closes.items())] or [["none", "", Cell("0", "num")]], table_id="server-closes")
    page.subheading("Faults injected by the simulator")
    page.table(["fault", "what it is", Cell("times", "num")],
               [[f, FAULT_WORDS.get(f, ""), Cell(str(n), "num")]
                for f, n in _ordered(run.faults, FAULT_WORDS)],
               table_id="faults", caption="Faults are the simulator's doing, to test the server: a refresh "
                                          "erases the conversations on that clinician's screen.")


def _violations(page: Page, run: SimRun) -> None:
    page.section("Rule violations")
    if run.violations is None:
        page.paragraph(f"Not checked: there is no summary file beside the history. Run `queuechat check "
                       f"{run.history.name}` to check it against the rules (docs/protocol.md).")
        return
    if not run.violations:
        page.paragraph("None. The checker followed every connection of the run and found no rule broken.")
        return
    by_rule = run.violations_by_rule()
    page.chart(charts.violations_chart(by_rule, {r: RULE_TITLES.get(_base_rule(r), "") for r in by_rule}))
    page.table(["rule", "about", Cell("violations", "num")],
               [[rule, RULE_TITLES.get(_base_rule(rule), ""), Cell(str(n), "num")]
                for rule, n in by_rule.items()],
               table_id="violations-by-rule")
    shown = run.violations[:MAX_VIOLATION_ROWS]
    rows: list[list[str | Cell]] = [
        [Cell(v.rule, "fail"), v.message, v.room or "", v.agent or "",
         Cell(_clock(v.t_ms) if v.t_ms is not None else "", "num"), Cell(str(run.info.seed), "num"),
         _lines(v.lines)]
        for v in shown]
    hidden = len(run.violations) - len(shown)
    page.table(["rule", "what happened", "room", "agent", Cell("when", "num"), Cell("seed", "num"),
                "history lines"], rows, table_id="violations",
               caption=(f"{hidden} more in {run.summary_file.name if run.summary_file else 'the summary'}. "
                        if hidden else "")
               + "History lines are line numbers in the .jsonl file (line 1 is the header); "
                 f"`queuechat check {run.history.name}` prints them.")


def _rules_exercised(page: Page, run: SimRun) -> None:
    """Per rule: how many times the run put it to the test, its violations and notes; and liveness."""
    page.section("Rules exercised")
    liveness = run.liveness
    if liveness is None:
        page.paragraph("Liveness: not recorded (the summary predates it).")
    elif liveness.judged:
        bound = (f" (the healing phase needed at least {_fmt_ms(liveness.bound_ms)})" if liveness.bound_ms
                 else "")
        page.paragraph(f"Liveness: judged{bound}: every patient present when the healing phase began was "
                       "answered or gone by its end, or a LIVENESS violation says who was not.")
    else:
        page.paragraph(f"Liveness: not judged: {liveness.reason or 'no reason recorded'}.")
    if run.exercised is None:
        page.paragraph("How often each rule was exercised is not in this summary (written before the "
                       "checker counted it).")
        return
    by_rule = run.violations_by_rule()
    notes = run.checker_notes or {}
    never = [rule for rule, n in run.exercised.items() if n == 0]
    rows: list[list[str | Cell]] = [
        [rule, RULE_TITLES.get(rule, ""),
         Cell(str(n), "num" if n else "warn"),
         Cell(str(by_rule.get(rule, 0)), "fail" if by_rule.get(rule) else "num"),
         Cell(str(notes.get(rule, 0)), "num")]
        for rule, n in run.exercised.items()]
    page.table(["rule", "about", Cell("exercised", "num"), Cell("violations", "num"), Cell("notes", "num")],
               rows, table_id="rules-exercised",
               caption=("Exercised: how many times the run put the rule to the test and the checker judged "
                        "it. Notes: what the protocol leaves open (never a violation). "
                        + (f"Exercised zero times, so not tested by this run: {', '.join(never)}."
                           if never else "Every rule was exercised.")))
    extra = {rule: n for rule, n in notes.items() if rule not in run.exercised}
    if extra:
        page.paragraph("Notes outside the numbered rules: "
                       + ", ".join(f"{rule} {n}" for rule, n in sorted(extra.items())) + ".")


def _about(page: Page, run: SimRun) -> None:
    page.section("About this data")
    if run.notes:
        page.bullet_list(run.notes)
    else:
        page.paragraph("The history and its summary agree on every count shown here.")
    page.paragraph("Times are the run's own clock: virtual time for an in-process run (the simulator jumps "
                   "over idle moments), real time over sockets. Message text and patient names are never "
                   "written to a history (only their lengths), and this report never shows them.", note=True)


# --------------------------------------------------------------------------- helpers


def _end_ms(run: SimRun) -> float:
    return max(run.last_t_ms, 1.0)


def _run_span(run: SimRun) -> str:
    """The recorded length in words: "3 virtual hours", "40 virtual minutes", "12 real minutes"."""
    kind = "virtual" if run.virtual else "real"
    hours = _end_ms(run) / 3_600_000.0
    if hours >= 1.0:
        value = f"{hours:.1f}".rstrip("0").rstrip(".")
        return f"{value} {kind} hour{'s' if value != '1' else ''}"
    minutes = _end_ms(run) / 60_000.0
    value = f"{minutes:.0f}" if minutes >= 10 else f"{minutes:.1f}".rstrip("0").rstrip(".")
    return f"{value} {kind} minute{'s' if value != '1' else ''}"


def _percentile(sorted_waits: list[float], p: float) -> float | None:
    """The checker's nearest-rank percentile (so the page agrees with the summary), to 0.1 s."""
    if not sorted_waits:
        return None
    return round(sorted_waits[min(len(sorted_waits) - 1, int(p * len(sorted_waits)))], 1)


def _wait(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"


def _secs(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f}"


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    seconds = ms / 1000.0
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h" + (f" {rest} min" if rest else "")


def _clock(ms: float) -> str:
    """A moment of the run as h:mm:ss from its start."""
    total = int(ms // 1000)
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


_LIMIT_WORDS = {
    "max_text_chars": "text up to {} characters",
    "max_frame_bytes": "frames up to {}",
    "max_queued_frames": "{} frames queued per connection",
    "max_queued_bytes": "{} queued per connection",
    "rate_per_s": "{} requests/s",
    "rate_burst": "bursts of {}",
    "max_patients_per_room": "{} patients per room",
    "max_rooms": "{} rooms",
    "hello_timeout_s": "hello within {} s",
    "ping_interval_s": "ping every {} s",
    "ping_timeout_s": "lost after {} s of silence",
}


def _limits(limits: dict[str, Any] | None) -> str:
    """The server's limits in words, in the protocol's order; "off" where a limit is switched off."""
    if not limits:
        return "not recorded (the server's own; an over-sockets run cannot see them)"
    parts = []
    for key, value in limits.items():
        shown = "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        if key.endswith("_bytes") and isinstance(value, int):
            shown = _bytes(value)
        template = _LIMIT_WORDS.get(key)
        if template is None:
            parts.append(f"{key} {shown}")
        elif value is None:
            parts.append(f"{template.format('').replace('  ', ' ').strip()}: off")
        else:
            parts.append(template.format(shown))
    return "; ".join(parts)


def _bytes(value: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return f"{value} bytes"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f} %" if whole else "—"


def _undelivered(sent: int, delivered: int) -> Cell:
    missing = sent - delivered
    return Cell(f"{missing:,}", "warn" if missing > 0 else "num")


def _ordered(counts: dict[str, int], words: dict[str, Any]) -> list[tuple[str, int]]:
    known = [(k, counts[k]) for k in words if k in counts]
    return known + sorted((k, v) for k, v in counts.items() if k not in words)


def _base_rule(rule: str) -> str:
    return rule.rstrip("abcd") if rule.startswith("R") else rule


def _lines(lines: tuple[int, ...]) -> str:
    """Line numbers, runs shortened to ranges: 12-15, 40."""
    parts: list[str] = []
    numbers = sorted(set(lines))
    start = prev = None
    for n in numbers:
        if start is None:
            start = prev = n
        elif prev is not None and n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = n
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ", ".join(parts)


__all__ = ["build_page", "write_simulation_report"]
