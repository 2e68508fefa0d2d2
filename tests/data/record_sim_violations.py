"""Record tests/data/sim-violations/: a short simulation against a deliberately wrong server, so that the
simulation report's tests have a real history with real rule violations (never written by hand).

The server is the reference server's shell with a wrong domain model from tests/variants.py
(``box_follows_newest_writer``: the chat box jumps to whichever patient wrote last, breaking R8 and R6).
The run is in virtual time and deterministic: the same code gives the same files.

    .venv/bin/python -m tests.data.record_sim_violations     # from the root; rewrites sim-violations/

It writes ``SCENARIO-seedN.jsonl`` and ``SCENARIO-seedN.summary.json`` exactly as ``queuechat simulate``
does (the summary document comes from the same function).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from formats.summary import write_simulation_summary
from queuechat._simulate import _summary_document
from reference_server.server import configure_logging
from simulator import history_name, parse_scenario, run_in_process
from tests.variants import VARIANTS

HERE = Path(__file__).resolve().parent
OUT = HERE / "sim-violations"
VARIANT = "box_follows_newest_writer"

# Small and busy: two rooms, many box moves and several chats at once, a refresh, ten virtual minutes.
SCENARIO = """
name = "box_drill"
description = "Two busy rooms for ten minutes, against a server whose chat box follows the newest writer."
seed = 3
duration = "10m"
healing = "2m"
[rooms]
count = 2
prefix = "drill"
[arrivals]
rate_per_hour = 20
initial_queue = 3
[patients]
message_interval = { dist = "exponential", mean = "25s", min = "2s" }
text_chars = { dist = "lognormal", median = 40, sigma = 0.6, max = 400 }
patience = { dist = "exponential", mean = "5m" }
departure = { leave = 0.6, close = 0.3, drop = 0.1 }
[clinicians]
think_time = { dist = "exponential", mean = "6s", min = "1s" }
typing_time = { dist = "uniform", min = "1s", max = "4s" }
call_probability = 0.05
call_length = { dist = "uniform", min = "1m", max = "3m" }
[clinicians.habits]
reply = 6
chat_new = 2
minimize = 3
close = 2
open_other = 3
idle = 1
[faults]
refresh_per_hour = 6
"""


def main() -> None:
    configure_logging("error")
    scenario = parse_scenario(tomllib.loads(SCENARIO), "record_sim_violations.py")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()
    history = OUT / history_name(scenario)
    result = run_in_process(scenario, history, model_class=VARIANTS[VARIANT].model)
    write_simulation_summary(history, _summary_document(result))
    rules = sorted({v.rule for v in result.violations})
    size = sum(p.stat().st_size for p in OUT.iterdir()) // 1024
    print(f"{history.name}: {len(result.violations)} violations of {', '.join(rules) or 'no rule'}; "
          f"{size} KiB in {OUT}")


if __name__ == "__main__":
    main()
