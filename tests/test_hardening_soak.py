"""A short soak in CI: ``benchmarks/soak.py`` for twelve seconds (the long run is 30 minutes).

A steady clinic with churn (patients leaving and arriving, chats opened and closed,
calls, refreshes) against a server in a process of its own; afterwards no internal
error, no error the clinic's own races do not explain, the connection and session
counts held their level all along, and once everyone has gone the server's
connections, sessions, present patients, active rooms and Trio tasks are back where
they started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_soak_short_run_holds_its_level_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--minutes", "0.2", "--sample-s", "3",
         "--rooms", "6", "--patients", "8", "--rate", "150", "--json", str(out)],
        capture_output=True, timeout=180, check=False, cwd=ROOT,
    )
    result = json.loads(out.read_text())
    assert done.returncode == 0, done.stderr[-2000:]
    assert result["internal_errors"] == 0 and result["unexpected_errors"] == {}
    assert len(result["samples"]) >= 3
    expected = 6 * (8 + 1)
    assert result["verdict"]["connections_range"] == [expected, expected]
    assert result["verdict"]["sessions_range"] == [expected, expected]
    churn = result["churn"]
    assert churn["left"] > 0 and churn["joined"] > 0 and churn["open_chat"] > 0
    assert all(s["deliveries"] > 0 for s in result["samples"])
    after = result["after_close"]
    left = (after["connections"], after["sessions"], after["patients_present"], after["rooms_active"])
    assert left == (0, 0, 0, 0)
    assert after["tasks"] == result["before_open"]["tasks"]
