"""The one error reports raise for bad input: its message is shown to the user as it is."""

from __future__ import annotations


class ReportError(Exception):
    """A run folder or file that cannot be read as a report's input (missing, malformed, another kind).

    The message names the file and what is wrong with it, never its contents beyond ids and numbers.
    """
