"""``queuechat conformance``: run the conformance suite against a server and write its reports.

Exit codes: 0 no unexpected failure (known failures allowed), 1 an unexpected
failure, 2 a usage or connection error (one line on stderr, no traceback).
"""

from __future__ import annotations

import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import click

from reference_server.protocol import EndpointError, UrlFault, check_ws_url

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
DEFAULT_PATH = "/v1/ws"
_URL_FAULTS = {
    UrlFault.NOT_A_URL: "--url must be a ws:// or wss:// URL, not {url!r}",
    UrlFault.SCHEME: "--url must be a ws:// or wss:// URL, not {url!r}",
    UrlFault.NO_HOST: "--url has no host: {url!r}",
    UrlFault.PORT: "--url has an invalid port: {url!r}",
    UrlFault.REMOTE: "{host} is not a loopback address: the suite opens many connections and fills rooms; "
                     "pass --allow-remote to test a server on another host",
}


@dataclass(frozen=True)
class ConformanceOptions:
    url: str
    secret: str
    cases: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    known_failures: Path | None = None
    out: Path | None = None
    junit: Path | None = None
    allow_remote: bool = False
    concurrency: int = 8
    case_timeout_s: float = 20.0
    max_connections: int = 100
    max_wait_s: float = 12.0
    grace_s: float = 1.0
    connect_timeout_s: float = 5.0
    quiet: bool = False


def split_globs(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--cases 'R1.*,R3.*' --cases R5.*`` -> ('R1.*', 'R3.*', 'R5.*')."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def check_url(url: str, allow_remote: bool) -> str:
    """The URL to test (``/v1/ws`` added when it has no path); a usage error when it is not allowed."""
    try:
        endpoint = check_ws_url(url, allow_remote=allow_remote)
    except EndpointError as error:
        raise click.UsageError(_URL_FAULTS[error.fault].format(url=url, host=error.host)) from None
    if endpoint.path in ("", "/"):
        url = urllib.parse.urlunsplit((endpoint.scheme, endpoint.netloc, DEFAULT_PATH, endpoint.query, ""))
    return url


def run_conformance(options: ConformanceOptions) -> int:
    import trio

    from conformance import (
        SuiteError,
        Verdict,
        load_known_failures,
        run_suite,
        write_html,
        write_json,
        write_junit,
    )

    url = check_url(options.url, options.allow_remote)
    if not options.secret:
        raise click.UsageError("--secret (or QUEUECHAT_SECRET) must not be empty")
    try:
        known = load_known_failures(options.known_failures) if options.known_failures is not None else []
        suite = trio.run(
            lambda: run_suite(
                url,
                options.secret,
                include=split_globs(options.cases),
                exclude=split_globs(options.exclude),
                known_failures=known,
                concurrency=options.concurrency,
                case_timeout_s=options.case_timeout_s,
                grace_s=options.grace_s,
                max_connections=options.max_connections,
                max_wait_s=options.max_wait_s,
                connect_timeout_s=options.connect_timeout_s,
            )
        )
    except SuiteError as error:
        click.echo(f"queuechat conformance: {error}", err=True)
        return EXIT_USAGE

    written: list[Path] = []
    try:
        if options.out is not None:
            write_json(suite, options.out / "result.json")
            write_html(suite, options.out / "report.html")
            written += [options.out / "result.json", options.out / "report.html"]
        if options.junit is not None:
            write_junit(suite, options.junit)
            written.append(options.junit)
    except OSError as error:
        click.echo(
            f"queuechat conformance: cannot write the reports: {error.strerror} ({error.filename})", err=True
        )
        return EXIT_USAGE

    if not options.quiet:
        for result in suite.results:
            if result.verdict is Verdict.PASS:
                continue
            label = result.verdict.value.upper()
            if result.verdict is Verdict.FAIL and result.known_failure is not None:
                label = "KNOWN"
            reason = result.reason if len(result.reason) <= 160 else result.reason[:157] + "..."
            click.echo(f"{label:<14}{result.case.id:<46}{reason}")
    counts = suite.counts()
    summary = ", ".join(
        f"{counts[k]} {k}" for k in ("pass", "fail", "non-strict", "informational", "skipped")
    )
    if counts["known failures"]:
        summary += f" ({counts['known failures']} known)"
    click.echo(f"queuechat conformance: {len(suite.results)} cases in {suite.duration_s:.1f} s: {summary}")
    if not suite.has_ping:
        click.echo(
            "queuechat conformance: the server does not answer ping; absence of frames was checked "
            "over a quiet window instead"
        )
    for entry in suite.stale_known_failures:
        click.echo(
            f"queuechat conformance: known failure {entry.pattern!r} (line {entry.line}) matched no "
            "failing case"
        )
    for path in written:
        click.echo(f"queuechat conformance: wrote {path}")
    return suite.exit_code


def list_cases(cases: tuple[str, ...], exclude: tuple[str, ...]) -> int:
    from conformance import GROUPS, all_cases, select_cases

    chosen = select_cases(all_cases().values(), split_globs(cases), split_globs(exclude))
    for group, title in GROUPS.items():
        members = [c for c in chosen if c.group == group]
        if members:
            click.echo(f"{title}:")
            for case in members:
                click.echo(f"  {case.id:<46}{case.description}")
    click.echo(f"{len(chosen)} cases")
    return EXIT_OK


def main(options: ConformanceOptions) -> None:
    sys.exit(run_conformance(options))
