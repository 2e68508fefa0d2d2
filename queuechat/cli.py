"""The ``queuechat`` command. Each subcommand imports its machinery only when it runs,
so that the load tests' gevent never shares a process with Trio.

Exit codes: 0 success, 1 runtime failure, 2 usage error.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Any

import click

from reference_server.protocol import DEVELOPMENT_SECRET, ROOM_PATTERN, Limits

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _LimitValue(click.ParamType):  # type: ignore[type-arg]
    """A positive number, or ``off`` for a limit that can be switched off."""

    name = "number|off"

    def __init__(self, kind: type, can_be_off: bool) -> None:
        self.kind = kind
        self.can_be_off = can_be_off

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, int | float):
            return value
        text = str(value).strip().lower()
        if text == "off":
            if self.can_be_off:
                return None
            self.fail("this limit cannot be switched off", param, ctx)
        try:
            number = self.kind(text)
        except ValueError:
            self.fail(f"{value!r} is not a {'whole ' if self.kind is int else ''}number", param, ctx)
        if not number > 0:
            self.fail(f"{value!r} must be greater than 0", param, ctx)
        return number


# option name -> (Limits field, type, can be off)
_LIMIT_OPTIONS: dict[str, tuple[type, bool]] = {
    "max_text_chars": (int, False),
    "max_frame_bytes": (int, False),
    "max_queued_frames": (int, False),
    "max_queued_bytes": (int, False),
    "rate_per_s": (float, True),
    "rate_burst": (int, True),
    "max_patients_per_room": (int, True),
    "max_rooms": (int, True),
    "hello_timeout_s": (float, True),
    "ping_interval_s": (float, True),
    "ping_timeout_s": (float, True),
}


def _limit_options(func: Any) -> Any:
    defaults = Limits()
    for name, (kind, can_be_off) in reversed(_LIMIT_OPTIONS.items()):
        default = getattr(defaults, name)
        func = click.option(
            "--" + name.replace("_", "-"),
            name,
            type=_LimitValue(kind, can_be_off),
            default=None,
            show_default=False,
            help=f"Limit {name} (default {default if default is not None else 'off'})"
            + ("; 'off' switches it off." if can_be_off else "."),
        )(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="queuechat")
def main() -> None:
    """queuechat: reference server, simulator and load tests for patient-queue chat."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port; 0 picks a free one.")
@click.option("--secret", envvar="QUEUECHAT_SECRET", default=None,
              help="Secret for clinician tokens (or QUEUECHAT_SECRET). Without it, a development "
                   "secret is used, on loopback only.")
@_limit_options
@click.option("--stats-interval-s", type=_LimitValue(float, True), default=60.0, show_default=True,
              help="Seconds between statistics log lines; 'off' for none.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Structured logs (JSON lines) go to stderr.")
def serve(host: str, port: int, secret: str | None, stats_interval_s: float | None, log_level: str,
          **limit_values: Any) -> None:
    """Run the reference server until SIGINT or SIGTERM."""
    changes = {name: value for name, value in limit_values.items() if value is not None}
    # An explicit "off" arrives as None too: tell them apart through the raw parameter source.
    ctx = click.get_current_context()
    for name in limit_values:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT" and limit_values[name] is None:
            changes[name] = None
    try:
        limits = Limits(**changes)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if secret is None:
        if not is_loopback_host(host):
            raise click.UsageError(
                f"refusing the development secret on non-loopback host {host!r}: "
                "give --secret or set QUEUECHAT_SECRET"
            )
        secret = DEVELOPMENT_SECRET
        click.echo("queuechat serve: using the development secret (loopback only; "
                   "set --secret or QUEUECHAT_SECRET for anything else)")
    elif not secret:
        raise click.UsageError("the secret must not be empty")

    from ._serve import run_server

    sys.exit(run_server(host=host, port=port, secret=secret, limits=limits,
                        stats_interval_s=stats_interval_s, log_level=log_level))


@main.command()
@click.argument("room")
@click.option("--secret", envvar="QUEUECHAT_SECRET", default=None,
              help="The server's secret (or QUEUECHAT_SECRET); default: the development secret.")
def token(room: str, secret: str | None) -> None:
    """Print the clinician token for ROOM."""
    from reference_server.protocol import clinician_token

    if not re.fullmatch(ROOM_PATTERN.strip("^$"), room):
        raise click.UsageError(f"room must match {ROOM_PATTERN.strip('^$')}")
    click.echo(clinician_token(secret if secret is not None else DEVELOPMENT_SECRET, room))


if __name__ == "__main__":  # pragma: no cover
    main()
