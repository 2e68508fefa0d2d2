"""Load tests for queue chat: a Locust file (``loadtests/locustfile.py``) and what it is made of.

Importing this package imports neither Locust (nor gevent) nor Trio: the
parts that need Locust are loaded by the Locust file. ``queuechat load``
runs it; ``python -m loadtests.sink`` is a minimal server for measuring the
generator itself. What is exported here is what the command needs around a
run: its settings and their checks, the SLO file, the results folder's
names, the exit codes and the summary's text, and the run's metadata.
"""

from ._hdr import MESSAGE_ENTRIES
from ._hdr import decode as decode_histogram
from ._meta import environment
from ._report import (
    EXIT_INVALID,
    EXIT_PASS,
    EXIT_SLO_BREACH,
    EXIT_USAGE,
    HLOG_FILE,
    JUNIT_FILE,
    SUMMARY_FILE,
    TIMELINE_FILE,
    format_summary,
)
from ._settings import DEFAULT_DRAIN_S, Settings
from ._slo import SloError, load_thresholds

__all__ = [
    "DEFAULT_DRAIN_S",
    "EXIT_INVALID",
    "EXIT_PASS",
    "EXIT_SLO_BREACH",
    "EXIT_USAGE",
    "HLOG_FILE",
    "JUNIT_FILE",
    "MESSAGE_ENTRIES",
    "SUMMARY_FILE",
    "TIMELINE_FILE",
    "Settings",
    "SloError",
    "decode_histogram",
    "environment",
    "format_summary",
    "load_thresholds",
]
