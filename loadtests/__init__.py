"""Load tests for queue chat: a Locust file (``loadtests/locustfile.py``) and what it is made of.

Importing this package imports neither Locust (nor gevent) nor Trio: the
parts that need Locust are loaded by the Locust file. ``queuechat load``
runs it; ``python -m loadtests.sink`` is a minimal server for measuring the
generator itself. What is exported here is what the command needs around a
run: its settings and their checks, the SLO file, the JUnit file's name,
the exit codes and the summary's text, and the run's metadata. The
results folder's files are defined in ``formats`` (``formats.summary``,
``formats.hlog``, ``formats.timeline``, ``formats.junit``).
"""

from ._meta import environment
from ._report import (
    EXIT_INVALID,
    EXIT_PASS,
    EXIT_SLO_BREACH,
    EXIT_USAGE,
    JUNIT_FILE,
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
    "JUNIT_FILE",
    "Settings",
    "SloError",
    "environment",
    "format_summary",
    "load_thresholds",
]
