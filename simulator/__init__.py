"""The queue-chat simulator: seeded clinic scenarios in virtual time, checked against the rules.

It imports the protocol, Trio and trio-websocket's framing (wsproto); it
imports the reference server only to run it in-process
(:func:`run_in_process`), and never the domain model: the checker is an
independent reading of the contract.
"""

from formats.history import FORMAT as HISTORY_FORMAT
from formats.history import VERSION as HISTORY_VERSION
from formats.history import HistoryError, HistoryWriter, read_history, read_lines, redacted

from ._checker import MAX_SHOWN_PER_RULE, Checker, Summary, Violation
from ._run import RunResult, check_history, history_name, parse_url, run_in_process, run_over_sockets
from ._scenario import SCENARIO_DIR, Dist, Scenario, ScenarioError, resolve
from ._scenario import load as load_scenario
from ._scenario import parse as parse_scenario
from ._transport import ABNORMAL_CLOSURE, ConnectionHandler, MemoryListener, OpenClient

__all__ = [
    # run_in_process(stack=...): another client stack, for comparison (benchmarks/_plain_client.py)
    "ABNORMAL_CLOSURE",
    "ConnectionHandler",
    "MemoryListener",
    "OpenClient",
    "Checker",
    "Dist",
    "HISTORY_FORMAT",
    "HISTORY_VERSION",
    "MAX_SHOWN_PER_RULE",
    "SCENARIO_DIR",
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
