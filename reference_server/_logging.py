"""Structured logs: one JSON object a line, carrying ids, sizes, codes and times only (R13).

Nothing that calls the logger passes message text or patient names; the
privacy tests capture every line of a chat session and look for them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
LOG_LEVELS = tuple(_LEVELS)


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send the project's structured logs to ``stream`` (stderr by default) at ``level``."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream if stream is not None else sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
