"""``queuechat conformance``: exit codes, --allow-remote, known failures, and the three reports.

The servers run in a thread of their own (their own Trio loop) so that the
command, which calls ``trio.run``, can be invoked in-process with click's
CliRunner. Each run selects a few cases, to stay quick.
"""

from __future__ import annotations

import json
import queue
import re
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pytest
import trio
from click.testing import CliRunner, Result
from variants import VARIANTS

from queuechat._conformance import check_url, split_globs
from queuechat.cli import main
from reference_server.domain import QueueChatModel
from reference_server.protocol import Limits
from reference_server.server import QueueChatServer

SECRET = "conformance-cli-secret"
LIMITS = Limits(hello_timeout_s=2.0, ping_interval_s=0.2, ping_timeout_s=1.0, max_patients_per_room=6)
TEXT_MARKER, NAME_MARKER = "QCCONF-TEXT", "QCCONF-NAME"  # in every text and name the suite sends


@contextmanager
def threaded_server(model: type[QueueChatModel] = QueueChatModel) -> Iterator[str]:
    """A server on 127.0.0.1 (port 0) in its own thread and Trio loop; shut down (R46) on exit."""
    started: queue.Queue[tuple[str, QueueChatServer, trio.lowlevel.TrioToken]] = queue.Queue()

    async def serve() -> None:
        server = QueueChatServer(secret=SECRET, limits=LIMITS, stats_interval_s=None, model_class=model)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                lambda task_status: server.serve(host="127.0.0.1", port=0, task_status=task_status)
            )
            started.put((url, server, trio.lowlevel.current_trio_token()))

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    url, server, token = started.get(timeout=10)
    try:
        yield url
    finally:
        trio.from_thread.run(server.shutdown, trio_token=token)
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def reference_url() -> Iterator[str]:
    with threaded_server() as url:
        yield url


@pytest.fixture(scope="module")
def broken_url() -> Iterator[str]:
    """A server whose box never opens by itself (R6 broken)."""
    with threaded_server(VARIANTS["no_auto_open"].model) as url:
        yield url


def conformance(*args: str) -> Result:
    return CliRunner().invoke(main, ["conformance", *args], catch_exceptions=False)


def read_outputs(out: Path, junit: Path) -> tuple[dict[str, Any], str, ET.Element]:
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    report = (out / "report.html").read_text(encoding="utf-8")
    return result, report, ET.parse(junit).getroot()


def assert_private(*texts: str) -> None:
    """No message text or patient name the suite sent reaches an output (R13)."""
    for text in texts:
        assert TEXT_MARKER not in text
        assert NAME_MARKER not in text


def assert_self_contained(report: str) -> None:
    """The HTML page loads nothing: no http(s) address, script, stylesheet link, import or url()."""
    assert report.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", report, re.IGNORECASE)
    assert "http://" not in report and "https://" not in report
    for needle in ("<script", "<link", "@import", "url(", "<img", "<iframe"):
        assert needle not in report.lower()


def test_exit_0_and_all_three_reports_against_the_reference_server(
    reference_url: str, tmp_path: Path
) -> None:
    """All selected cases pass (exit 0); result.json, report.html and JUnit XML are written."""
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    run = conformance(
        "--url",
        reference_url,
        "--secret",
        SECRET,
        "--cases",
        "R5.*,R6.*",
        "--cases",
        "R40.*",
        "--out",
        str(out),
        "--junit",
        str(junit),
    )
    assert run.exit_code == 0, run.output
    result, report, root = read_outputs(out, junit)
    assert result["exit_code"] == 0
    cases = result["cases"]
    assert isinstance(cases, list) and cases
    assert {case["verdict"] for case in cases} == {"pass"}
    assert {case["id"].split(".")[0] for case in cases} == {"R5", "R6", "R40"}
    assert root.tag == "testsuites" and root.get("failures") == "0"
    assert len(root.findall(".//testcase")) == len(cases)
    assert_self_contained(report)
    assert "Cases by rule" in report and "R6.auto-open-minimized" in report
    assert_private(run.output, json.dumps(result), report, junit.read_text(encoding="utf-8"))


def test_exit_1_on_a_wrong_server_with_expected_and_seen_frames(broken_url: str, tmp_path: Path) -> None:
    """A server without auto-open fails the R6 cases (exit 1); the reports show the departure, privately."""
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    run = conformance(
        "--url", broken_url, "--secret", SECRET, "--cases", "R6.*", "--out", str(out), "--junit", str(junit)
    )
    assert run.exit_code == 1, run.output
    assert "FAIL" in run.output and "R6.auto-open-minimized" in run.output
    result, report, root = read_outputs(out, junit)
    failing = [case for case in result["cases"] if case["verdict"] == "fail"]
    assert failing and all(case["rule"] == "R6" for case in failing)
    first = failing[0]
    assert first["failure"]["expected"] and first["failure"]["seen"]
    assert any("auto_open" in line for lines in first["failure"]["expected"].values() for line in lines)
    # The wire log keeps frames with text and name replaced by their lengths.
    frames = [entry["frame"] for log in first["wire"].values() for entry in log]
    texts = [f["text"] for f in frames if isinstance(f, dict) and "text" in f]
    names = [f["name"] for f in frames if isinstance(f, dict) and "name" in f]
    assert texts and all(isinstance(value, int) for value in texts)
    assert names and all(isinstance(value, int) for value in names)
    assert root.get("failures") == str(len(failing))
    assert root.find(".//failure") is not None
    assert 'class="diff"' in report and "Failing and non-strict cases" in report
    assert_self_contained(report)
    assert_private(run.output, json.dumps(result), report, junit.read_text(encoding="utf-8"))


def test_known_failures_file_turns_the_failure_into_exit_0(broken_url: str, tmp_path: Path) -> None:
    """Listed failures are still reported (as known) but do not fail the run; unused entries are named."""
    known = tmp_path / "known.txt"
    known.write_text(
        "# departures we know about\nR6.*   auto-open is planned (TICKET-1)\nR99.x  stale entry\n",
        encoding="utf-8",
    )
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    run = conformance(
        "--url",
        broken_url,
        "--secret",
        SECRET,
        "--cases",
        "R6.*",
        "--known-failures",
        str(known),
        "--out",
        str(out),
        "--junit",
        str(junit),
    )
    assert run.exit_code == 0, run.output
    assert "KNOWN" in run.output and "R99.x" in run.output
    result, report, root = read_outputs(out, junit)
    failing = [case for case in result["cases"] if case["verdict"] == "fail"]
    assert failing and all(case["known_failure"]["pattern"] == "R6.*" for case in failing)
    assert result["summary"]["unexpected failures"] == 0
    assert root.get("failures") == "0" and root.find(".//skipped") is not None
    assert "known failure" in report and "TICKET-1" in report


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secret", "s"], "--url is required"),
        (["--url", "http://127.0.0.1:8765/v1/ws", "--secret", "s"], "ws:// or wss://"),
        (["--url", "ws://192.0.2.10:8765/v1/ws", "--secret", "s"], "--allow-remote"),
        (["--url", "ws://example.org/v1/ws", "--secret", "s"], "--allow-remote"),
    ],
    ids=["no-url", "not-websocket", "remote-ip", "remote-name"],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    """Usage errors (a non-loopback URL without --allow-remote among them) exit 2 without connecting."""
    run = conformance(*args)
    assert run.exit_code == 2
    assert message in run.output
    assert "Traceback" not in run.output


def test_unreachable_server_exits_2_with_one_line() -> None:
    """Nothing listening: one clear line on stderr, exit 2, no traceback."""
    run = conformance("--url", f"ws://127.0.0.1:{_closed_port()}/v1/ws", "--secret", "s")
    assert run.exit_code == 2
    assert run.stderr.count("\n") == 1 and "connection refused" in run.stderr
    assert "Traceback" not in run.output


def test_wrong_secret_exits_2_with_one_line(reference_url: str) -> None:
    """The server answers unauthorized to the preflight hello: exit 2, naming --secret."""
    run = conformance("--url", reference_url, "--secret", "not-the-secret")
    assert run.exit_code == 2
    assert run.stderr.count("\n") == 1 and "--secret" in run.stderr
    assert "Traceback" not in run.output


def test_allow_remote_lets_a_non_loopback_url_through() -> None:
    """--allow-remote accepts a non-loopback host; a URL without a path gets /v1/ws."""
    assert check_url("ws://192.0.2.10:8765/v1/ws", allow_remote=True) == "ws://192.0.2.10:8765/v1/ws"
    assert check_url("wss://chat.example.org", allow_remote=True) == "wss://chat.example.org/v1/ws"
    assert check_url("ws://localhost:9/v1/ws", allow_remote=False) == "ws://localhost:9/v1/ws"
    with pytest.raises(click.UsageError):
        check_url("ws://chat.example.org/v1/ws", allow_remote=False)
    assert split_globs(("R1.*,R3.*", " R5.* ")) == ("R1.*", "R3.*", "R5.*")


def test_list_shows_every_case_by_group() -> None:
    run = conformance("--list", "--cases", "R11*")
    assert run.exit_code == 0
    assert "R11b.viewed-other-erases" in run.output and "R5." not in run.output


def test_the_command_imports_the_suite_lazily() -> None:
    """Importing the CLI loads neither Trio nor the suite (subcommands import what they need)."""
    code = (
        "import sys, queuechat.cli; "
        "assert 'trio' not in sys.modules and 'conformance' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_suite_does_not_import_the_server_shell_or_the_tests() -> None:
    """The suite is a client: it uses the protocol package only, never the server shell or tests/."""
    code = (
        "import sys, conformance, conformance.cases; "
        "bad = [m for m in ('reference_server.server', 'reference_server._shell', 'wire', 'variants') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
