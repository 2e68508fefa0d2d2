"""The queue-chat simulator: seeded clinic scenarios in virtual time, checked against the rules.

It imports the protocol, Trio and trio-websocket's framing (wsproto); it
imports the reference server only to run it in-process
(:func:`run_in_process`), and never the domain model: the checker is an
independent reading of the contract.
"""

from ._checker import Checker, Summary, Violation
from ._history import FORMAT as HISTORY_FORMAT
from ._history import VERSION as HISTORY_VERSION
from ._history import HistoryError, HistoryWriter, read_history, read_lines, redacted
from ._run import RunResult, check_history, history_name, parse_url, run_in_process, run_over_sockets
from ._scenario import Dist, Scenario, ScenarioError, resolve
from ._scenario import load as load_scenario
from ._scenario import parse as parse_scenario

__all__ = [
    "Checker",
    "Dist",
    "HISTORY_FORMAT",
    "HISTORY_VERSION",
    "HistoryError",
    "HistoryWriter",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "Summary",
    "Violation",
    "check_history",
    "history_name",
    "load_scenario",
    "parse_scenario",
    "parse_url",
    "read_history",
    "read_lines",
    "redacted",
    "resolve",
    "run_in_process",
    "run_over_sockets",
]
