"""The load test's own settings: Locust command-line options (``--qc-*``), read into one record.

Every option is also shown in Locust's web UI. On workers, Locust hands the
master's values over with each spawn, so the record is (re)read when a test
starts, never at import.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

from reference_server.protocol import DEVELOPMENT_SECRET, EndpointError, UrlFault, check_ws_url

from ._cpu import DEFAULT_LIMIT_PERCENT, DEFAULT_MIN_SUSTAINED_S, DEFAULT_SAMPLE_S, DEFAULT_SUSTAINED_FRACTION

TEXT_MARK = "qc-load-text "  # load messages are this, repeated: recognisable, and never real text
PATIENT_NAME = "QC Load Patient"  # likewise for names
DEFAULT_DRAIN_S = 3.0
MAX_DRAIN_S = 60.0


@dataclass(frozen=True, kw_only=True)
class Settings:
    rate_per_user: float = 10.0  # messages per second, both directions together
    patients: int = 2  # patients per room (per user)
    text_chars: int = 64
    action_interval_s: float = 1.0  # between the clinician's actions (open_chat, a call)
    call_s: float = 1.0  # how long a call lasts (chat goes on meanwhile)
    timeout_s: float = 30.0  # an answer or a delivery later than this is an error
    drain_s: float = DEFAULT_DRAIN_S  # after the schedule ends: how long late deliveries may still land
    secret: str = DEVELOPMENT_SECRET
    interval_s: float = 1.0  # HdrHistogram interval log resolution
    out: str | None = None
    slo: str | None = None
    cpu_limit_percent: float = DEFAULT_LIMIT_PERCENT
    cpu_sustained_fraction: float = DEFAULT_SUSTAINED_FRACTION
    cpu_min_sustained_s: float = DEFAULT_MIN_SUSTAINED_S
    cpu_sample_s: float = DEFAULT_SAMPLE_S
    progress_s: float = 3.0  # 0: no progress lines
    allow_remote: bool = False  # load only loopback hosts unless told otherwise
    seed: int | None = None  # the users' start offsets; None: a random seed, chosen when a test starts

    @property
    def text(self) -> str:
        return (TEXT_MARK * (self.text_chars // len(TEXT_MARK) + 1))[: self.text_chars]

    def problems(self) -> list[str]:
        out = []
        if not self.rate_per_user > 0:
            out.append("--qc-rate must be greater than 0")
        if not 1 <= self.patients <= 500:
            out.append("--qc-patients must be between 1 and 500")
        if not 1 <= self.text_chars <= 4096:
            out.append("--qc-text-chars must be between 1 and 4096")
        for name in ("action_interval_s", "call_s", "timeout_s", "interval_s", "cpu_sample_s"):
            if not getattr(self, name) > 0:
                out.append(f"--qc-{name.replace('_', '-').removesuffix('-s')} must be greater than 0")
        if not self.cpu_limit_percent > 0:
            out.append("--qc-cpu-limit must be greater than 0")
        if not 0 <= self.cpu_sustained_fraction <= 1:
            out.append("--qc-cpu-sustained must be between 0 and 1")
        if not 0 <= self.drain_s <= MAX_DRAIN_S:
            out.append(f"--qc-drain must be between 0 and {MAX_DRAIN_S:g} seconds")
        if self.progress_s < 0:
            out.append("--qc-progress must not be negative")
        if self.seed is not None and self.seed < 0:
            out.append("--qc-seed must not be negative")
        if not self.secret:
            out.append("the secret must not be empty")
        return out


def user_random(seed: int, worker_index: int, user_number: int) -> random.Random:
    """A user's own random stream: the same seed, worker and user give the same draws, whatever else
    draws (never the global ``random``). A text seed: hashed with SHA-512, the same in every process."""
    return random.Random(f"queuechat-load:{seed}:{worker_index}:{user_number}")


def host_problem(url: str | None, *, allow_remote: bool) -> str | None:
    """Why this ``--host`` may not be loaded, or None: a ws:// URL, on loopback unless allowed."""
    if not url:
        return "give the server with --host ws://127.0.0.1:8765/v1/ws"
    try:
        check_ws_url(url, allow_remote=allow_remote)
    except EndpointError as error:
        if error.fault is UrlFault.REMOTE:
            return (f"refusing to send load to non-loopback host {error.host!r}; pass --qc-allow-remote if "
                    "this server is yours to load")
        return f"--host {url!r} is not a ws:// or wss:// URL"
    return None


# option (without the --qc- prefix) -> (Settings field, type, help)
OPTIONS: dict[str, tuple[str, type, str]] = {
    "rate": ("rate_per_user", float, "Messages per second per user (one room), both directions together; "
             "sent on a schedule (open model)."),
    "patients": ("patients", int, "Patients per room; each user is one room: a clinician and its patients."),
    "text-chars": ("text_chars", int, "Characters per message (synthetic text)."),
    "action-interval": ("action_interval_s", float, "Seconds between the clinician's actions "
                        "(open_chat, a call)."),
    "call": ("call_s", float, "Seconds a call lasts."),
    "timeout": ("timeout_s", float, "Seconds after which a missing answer or delivery counts as an error."),
    "drain": ("drain_s", float, "Seconds after the send schedule ends during which late deliveries still "
              "count (no new sends); every message still missing then is an 'undelivered' error, recorded "
              "with the latency it reached."),
    "interval": ("interval_s", float, "Seconds per interval in the HdrHistogram interval log (.hlog)."),
    "out": ("out", str, "Folder for the results (.hgrm, .hlog, JSON, JUnit XML); default: the folder "
            "of --csv, else none."),
    "slo": ("slo", str, "SLO threshold file (TOML, k6-like); a breach makes the exit code 1."),
    "cpu-limit": ("cpu_limit_percent", float, "A generator above this CPU percent ..."),
    "cpu-sustained": ("cpu_sustained_fraction", float, "... for at least this fraction of the run makes "
                      "the run invalid (exit code 3)."),
    "cpu-sample": ("cpu_sample_s", float, "Seconds between CPU samples of each generator process."),
    "progress": ("progress_s", float, "Seconds between progress lines; 0 for none."),
    "seed": ("seed", int, "Seed for the users' random start offsets: the same seed, users and workers give "
             "the same schedule; default: a random seed, recorded in summary.json (meta.command.seed)."),
}


def from_options(options: Any) -> Settings:
    """Read the record from Locust's parsed options (missing ones keep their defaults)."""
    values: dict[str, Any] = {}
    for option, (name, kind, _) in OPTIONS.items():
        value = getattr(options, "qc_" + option.replace("-", "_"), None) if options is not None else None
        if value is None or value == "":
            continue
        values[name] = kind(value)
    secret = getattr(options, "qc_secret", None) if options is not None else None
    values["secret"] = secret or os.environ.get("QUEUECHAT_SECRET") or DEVELOPMENT_SECRET
    values["allow_remote"] = options is not None and bool(getattr(options, "qc_allow_remote", False))
    return Settings(**values)
