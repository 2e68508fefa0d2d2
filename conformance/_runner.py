"""Running the suite: a preflight, then every selected case in fresh rooms, several at a time.

The preflight opens one clinician connection: it tells an unreachable server
or a wrong secret apart from a failing case (:class:`SuiteError`), reads the
limits in force from the welcome, and finds out whether the server answers
``ping`` (the barrier every "nothing else happens" check relies on).

Cases run concurrently, at most ``concurrency`` at once, each under its own
timeout; cases marked ``exclusive`` (they fill the server) run alone at the
end. Nothing a case raises escapes: it becomes the case's verdict.
"""

from __future__ import annotations

import fnmatch
import secrets as _secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from ._client import ConnectFailed, WireLog, open_conn, sanitize
from ._context import CaseContext, SuiteEnv
from ._outcomes import CaseSkipped, Failure
from ._registry import Case, Verdict, all_cases

SUITE_NAME = "queuechat-conformance"
RESULT_VERSION = 1


class SuiteError(Exception):
    """The suite cannot run at all: the server is unreachable, refuses the secret, or the input is wrong."""


# --------------------------------------------------------------------------- known failures


@dataclass(frozen=True)
class KnownFailure:
    pattern: str  # a case id or a glob (fnmatch)
    reason: str
    line: int


def parse_known_failures(text: str, source: str = "known-failures file") -> list[KnownFailure]:
    """One entry a line: a case id or glob, then optionally a reason; ``#`` starts a comment."""
    entries: list[KnownFailure] = []
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not content:
            continue
        pattern, _, reason = content.partition(" ")
        if not pattern:
            continue
        entries.append(KnownFailure(pattern=pattern, reason=reason.strip(), line=number))
    return entries


def load_known_failures(path: Path) -> list[KnownFailure]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SuiteError(f"cannot read the known-failures file {path}: {error.strerror}") from None
    return parse_known_failures(text, str(path))


# --------------------------------------------------------------------------- results


@dataclass
class CaseResult:
    case: Case
    verdict: Verdict
    reason: str = ""
    known_failure: KnownFailure | None = None
    notes: list[str] = field(default_factory=list)
    departures: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    wire: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    wire_dropped: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # patient id -> label, for reading the wire log
    duration_s: float = 0.0

    @property
    def unexpected_failure(self) -> bool:
        return self.verdict is Verdict.FAIL and self.known_failure is None


@dataclass
class SuiteResult:
    url: str
    started_at: str
    duration_s: float
    has_ping: bool
    limits: dict[str, Any] | None
    results: list[CaseResult]
    stale_known_failures: list[KnownFailure] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts = {verdict.value: 0 for verdict in Verdict}
        for result in self.results:
            counts[result.verdict.value] += 1
        counts["known failures"] = sum(
            1 for r in self.results if r.known_failure is not None and r.verdict is Verdict.FAIL
        )
        counts["unexpected failures"] = sum(1 for r in self.results if r.unexpected_failure)
        return counts

    @property
    def exit_code(self) -> int:
        """0 when nothing failed unexpectedly (known failures allowed), else 1."""
        return 1 if any(r.unexpected_failure for r in self.results) else 0

    def by_id(self) -> dict[str, CaseResult]:
        return {r.case.id: r for r in self.results}


# --------------------------------------------------------------------------- selection


def select_cases(
    cases: Iterable[Case], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Case]:
    """Cases whose id matches one of ``include`` (all when empty) and none of ``exclude`` (globs)."""
    chosen = []
    for case in cases:
        if include and not any(fnmatch.fnmatchcase(case.id, g) for g in include):
            continue
        if any(fnmatch.fnmatchcase(case.id, g) for g in exclude):
            continue
        chosen.append(case)
    return chosen


# --------------------------------------------------------------------------- preflight


async def preflight(
    url: str, secret: str, prefix: str, within_s: float
) -> tuple[bool, dict[str, Any] | None]:
    """(answers ping, limits from the welcome); raises SuiteError when the suite cannot run at all."""
    failure: SuiteError | None = None
    found: tuple[bool, dict[str, Any] | None] = (False, None)
    try:
        async with trio.open_nursery() as nursery:
            try:
                found = await _probe(nursery, url, secret, prefix, within_s)
            except SuiteError as error:
                failure = error
            finally:
                nursery.cancel_scope.cancel()
    except Exception as error:  # the probe connection's reader failed: still one line, never a traceback
        leaf = error
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]  # type: ignore[assignment]
        raise SuiteError(
            f"the connection to {url} failed before the suite could start ({type(leaf).__name__}); "
            "is this a queue-chat server, at its /v1/ws endpoint?"
        ) from None
    if failure is not None:
        raise failure
    return found


async def _probe(
    nursery: trio.Nursery, url: str, secret: str, prefix: str, within_s: float
) -> tuple[bool, dict[str, Any] | None]:
    from reference_server.protocol import clinician_token

    room = f"{prefix}-probe"
    try:
        conn = await open_conn(nursery, url, "probe", WireLog(trio.current_time(), set()), within_s)
    except ConnectFailed as error:
        raise SuiteError(f"cannot open a WebSocket to {url}: {error}{_hint(str(error))}") from None
    try:
        await conn.send(
            {"type": "hello", "role": "clinician", "room": room, "token": clinician_token(secret, room)}
        )
        try:
            welcome = await conn.recv(within_s)
        except trio.TooSlowError:
            raise SuiteError(
                f"{url} accepted a WebSocket but sent no welcome within {within_s:g} s"
            ) from None
        if welcome.get("type") == "error" and welcome.get("code") == "unauthorized":
            raise SuiteError(
                "the server refused the clinician token (unauthorized): is --secret the server's secret?"
            )
        if welcome.get("type") != "welcome":
            what = welcome.get("type", "?")
            if what == "error":
                what = f"error {welcome.get('code')}"
            elif what == "(close)":
                what = f"a close ({welcome.get('code')})"
            raise SuiteError(
                f"the server answered a clinician hello with {what}; "
                "is this a queue-chat server, at its /v1/ws endpoint?"
            )
        limits = welcome.get("limits") if isinstance(welcome.get("limits"), dict) else None
        has_ping = False
        await conn.send({"type": "ping", "ref": "preflight"})
        with trio.move_on_after(min(within_s, 3.0)):
            while True:
                frame = await conn.recv(within_s)
                if frame.get("ref") == "preflight" or frame["type"] == "(close)":
                    has_ping = frame["type"] == "ok"
                    break
        return has_ping, limits
    finally:
        with trio.CancelScope(shield=True):
            await conn.aclose()


def _hint(reason: str) -> str:
    """What to check, for the reasons :func:`open_conn` gives."""
    if reason.startswith("HTTP "):
        return " (is this a queue-chat server, and is the path its WebSocket endpoint, /v1/ws?)"
    if "refused" in reason:
        return " (is the server running, on that port?)"
    if reason.startswith("no WebSocket handshake"):
        return " (it accepted the connection but did not answer; --connect-timeout-s sets the wait)"
    return ""


# --------------------------------------------------------------------------- running


async def run_case(case: Case, env: SuiteEnv, within_s: float) -> CaseResult:
    started = trio.current_time()
    outcome: BaseException | None = None
    ctx: CaseContext | None = None
    try:
        async with trio.open_nursery() as nursery:
            ctx = CaseContext(case.id, env, nursery)
            try:
                with trio.fail_after(within_s) as scope:
                    ctx.scope = scope
                    await case.func(ctx)
            except Exception as error:  # every outcome of the case becomes its verdict
                outcome = error
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                await ctx.aclose_all()
            nursery.cancel_scope.cancel()
    except Exception as error:  # a background task of a connection failed
        outcome = outcome or error
    assert ctx is not None
    result = _verdict(case, ctx, outcome)
    result.duration_s = round(trio.current_time() - started, 3)
    return result


def _last_step(ctx: CaseContext) -> str:
    return ctx.steps[-1]["title"] if ctx.steps else "the start"


def _verdict(case: Case, ctx: CaseContext, outcome: BaseException | None) -> CaseResult:
    result = CaseResult(
        case=case,
        verdict=Verdict.PASS,
        notes=list(ctx.notes),
        departures=list(ctx.departures),
        observations=list(ctx.observations),
        steps=ctx.steps,
    )
    if ctx.extensions:
        result.departures.append(
            "sent frame types the contract does not define (ignored): " + ", ".join(sorted(ctx.extensions))
        )
    if isinstance(outcome, CaseSkipped):
        result.verdict, result.reason = Verdict.SKIPPED, outcome.reason
    elif isinstance(outcome, Failure):
        result.verdict, result.reason = Verdict.FAIL, outcome.message
        result.failure = {
            "step": outcome.step,
            "message": outcome.message,
            "expected": outcome.expected,
            "seen": outcome.seen,
        }
    elif isinstance(outcome, trio.TooSlowError) and ctx.scope is not None and ctx.scope.cancelled_caught:
        # The case's own budget ran out while the server was still answering (a server that stops
        # answering fails a step first, after answer_timeout_s): slow is not wrong, so not a failure.
        result.verdict = Verdict.SKIPPED
        result.reason = (
            f"inconclusive: the case's time ran out after {_last_step(ctx)}: the server answers too slowly "
            "for the suite's budget (raise --case-timeout-s)"
        )
    elif isinstance(outcome, trio.TooSlowError):
        result.verdict = Verdict.FAIL
        result.reason = f"timed out waiting for the server after {_last_step(ctx)} (a step's wait ran out)"
        result.failure = {"step": _last_step(ctx), "message": result.reason, "expected": None, "seen": None}
    elif isinstance(outcome, ConnectFailed):
        result.verdict = Verdict.FAIL
        result.reason = f"could not open a connection after {_last_step(ctx)}: {outcome}"
        result.failure = {"step": _last_step(ctx), "message": result.reason, "expected": None, "seen": None}
    elif outcome is not None:
        while isinstance(outcome, BaseExceptionGroup) and outcome.exceptions:
            outcome = outcome.exceptions[0]  # the error itself, not Trio's wrapping of it
        detail = sanitize(str(outcome), ctx.secrets) if str(outcome) else ""
        result.verdict = Verdict.FAIL
        result.reason = (
            f"the suite could not complete the case after {_last_step(ctx)}: "
            f"{type(outcome).__name__}" + (f" ({detail[:200]})" if detail else "")
        )
        result.failure = {"step": _last_step(ctx), "message": result.reason, "expected": None, "seen": None}
    elif ctx.informational:
        result.verdict = Verdict.INFORMATIONAL
        result.reason = "; ".join(ctx.observations)
    elif result.departures:
        result.verdict = Verdict.NON_STRICT
        result.reason = "; ".join(result.departures)
    else:
        result.reason = "; ".join(result.notes)  # a pass says how it was checked, when that matters
    if result.verdict in (Verdict.FAIL, Verdict.NON_STRICT):
        result.wire = {label: log.as_list() for label, log in ctx.logs.items()}
        result.wire_dropped = {label: log.dropped for label, log in ctx.logs.items() if log.dropped}
        result.labels = ctx.labels
    # Belt and braces (R13): no string the suite sent as a text or a name survives in what is saved.
    result.reason = sanitize(result.reason, ctx.secrets)
    result.notes = sanitize(result.notes, ctx.secrets)
    result.departures = sanitize(result.departures, ctx.secrets)
    result.steps = sanitize(result.steps, ctx.secrets)
    if result.failure is not None:
        result.failure = sanitize(result.failure, ctx.secrets)
    return result


async def run_suite(
    url: str,
    secret: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    known_failures: Sequence[KnownFailure] = (),
    concurrency: int = 8,
    case_timeout_s: float = 20.0,
    grace_s: float = 1.0,
    window_s: float = 0.5,
    max_connections: int = 100,
    max_wait_s: float = 12.0,
    connect_timeout_s: float = 5.0,
    on_result: Callable[[CaseResult], None] | None = None,
) -> SuiteResult:
    """Run the selected cases against the server at ``url``; raises SuiteError if it cannot run at all."""
    cases = select_cases(all_cases().values(), include, exclude)
    if not cases:
        raise SuiteError("no case matches --cases/--exclude")
    started_wall = time.time()
    started = trio.current_time()
    prefix = "cf-" + _secrets.token_hex(4)
    has_ping, limits = await preflight(url, secret, prefix, within_s=connect_timeout_s)
    env = SuiteEnv(
        url=url,
        secret=secret,
        prefix=prefix,
        has_ping=has_ping,
        limits=limits,
        grace_s=grace_s,
        window_s=window_s,
        max_connections=max_connections,
        max_wait_s=max_wait_s,
        connect_timeout_s=max(connect_timeout_s, 5.0),
    )
    limiter = trio.CapacityLimiter(max(1, concurrency))
    results: dict[str, CaseResult] = {}

    async def one(case: Case) -> None:
        async with limiter:
            result = await run_case(case, env, case_timeout_s)
        results[case.id] = result
        if on_result is not None:
            on_result(result)

    async with trio.open_nursery() as nursery:
        for case in cases:
            if not case.exclusive:
                nursery.start_soon(one, case)
    for case in cases:
        if case.exclusive:
            await one(case)

    ordered = [results[case.id] for case in cases]
    stale = _apply_known_failures(ordered, known_failures)
    return SuiteResult(
        url=url,
        started_at=datetime.fromtimestamp(started_wall, UTC).isoformat(timespec="seconds"),
        duration_s=round(trio.current_time() - started, 3),
        has_ping=has_ping,
        limits=limits,
        results=ordered,
        stale_known_failures=stale,
        options={
            "include": list(include),
            "exclude": list(exclude),
            "concurrency": concurrency,
            "case_timeout_s": case_timeout_s,
            "grace_s": grace_s,
            "window_s": window_s,
            "max_connections": max_connections,
            "max_wait_s": max_wait_s,
            "connect_timeout_s": connect_timeout_s,
        },
    )


def _apply_known_failures(results: Sequence[CaseResult], known: Sequence[KnownFailure]) -> list[KnownFailure]:
    """Mark failing cases that the file lists; return entries that matched no failing case."""
    used: set[int] = set()
    for result in results:
        for index, entry in enumerate(known):
            if fnmatch.fnmatchcase(result.case.id, entry.pattern):
                if result.verdict is Verdict.FAIL:
                    result.known_failure = entry
                    used.add(index)
                break
    return [entry for index, entry in enumerate(known) if index not in used]
