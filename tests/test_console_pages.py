"""The pages the reference server serves over plain HTTP, and the commands around them.

The server answers ``GET``/``HEAD`` of the console, the patient page and their static files on
the WebSocket port (reference_server/_pages.py), with a Content-Security-Policy that allows this
origin only; everything else, the WebSocket endpoint above all, behaves as before. The static
files load nothing from elsewhere, insert no HTML and store nothing. ``queuechat token --console``
prints a link with the token in the fragment; ``queuechat serve`` prints the pages' addresses;
``queuechat play`` runs a server with patients and stops by itself or on SIGINT.
"""

from __future__ import annotations

import io
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import pytest
import structlog
import trio
import websocket
from conftest import StartServer

from queuechat._links import LinkError, console_link, http_base, page_lines, patient_link
from reference_server._logging import configure_logging
from reference_server._pages import PAGES, content_security_policy
from reference_server.protocol import DEVELOPMENT_SECRET, Limits, clinician_token

WAIT_S = 10.0
STATIC = resources.files("reference_server").joinpath("static")


def host_port(ws_url: str) -> tuple[str, int]:
    parts = urlsplit(ws_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def http(ws_url: str, request: bytes, *,
               split_at: int | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send a raw HTTP request (optionally in two writes); read the answer's head and Content-Length bytes
    (a HEAD: none), or to EOF."""
    host, port = host_port(ws_url)
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            if split_at is None:
                await stream.send_all(request)
            else:
                await stream.send_all(request[:split_at])
                await trio.sleep(0.05)  # a pause between the two packets is the point of this request
                await stream.send_all(request[split_at:])
            data = b""
            while True:
                head, found, body = data.partition(b"\r\n\r\n")
                if found:
                    lines = head.decode("latin-1").split("\r\n")
                    pairs = (line.partition(":") for line in lines[1:])
                    headers = {name.strip().lower(): value.strip() for name, _, value in pairs}
                    wanted = 0 if request.startswith(b"HEAD") else int(headers.get("content-length", -1))
                    if len(body) >= wanted >= 0:
                        return int(lines[0].split(" ")[1]), headers, body
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"the answer ended early: {data[:200]!r}")
                data += chunk


def get(path: str, host: str = "127.0.0.1", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n{extra}\r\n".encode()


# --------------------------------------------------------------------------- serving


async def test_every_page_is_served_with_its_type_and_a_strict_policy(start_server: StartServer) -> None:
    live = await start_server()
    host, port = host_port(live.url)
    for path, page in PAGES.items():
        status, headers, body = await http(live.url, get(path, f"{host}:{port}"))
        assert status == 200, path
        assert headers["content-type"] == page.content_type
        assert body == STATIC.joinpath(page.file).read_bytes()
        assert int(headers["content-length"]) == len(body)
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and f"connect-src 'self' ws://{host}:{port}" in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
        assert "set-cookie" not in headers


async def test_head_query_string_and_a_split_request_line(start_server: StartServer) -> None:
    live = await start_server()
    status, headers, body = await http(live.url, get("/console", method="HEAD"))
    assert (status, body) == (200, b"") and int(headers["content-length"]) > 0
    status, _, body = await http(live.url, get("/patient?x=1"))
    assert status == 200 and b"Patient check-in" in body
    for split_at in (7, len("GET /console HTTP/1.1\r\nHo")):  # in the request line; in the headers
        status, _, body = await http(live.url, get("/console"), split_at=split_at)
        assert status == 200 and b"Clinician console" in body


async def test_other_paths_and_the_websocket_endpoint_are_unchanged(
        start_server: StartServer, room: str) -> None:
    live = await start_server()
    # A plain GET of a path that is not a page: trio-websocket's answer, as before (not a page).
    for path in ("/nope", "/console/", "/static/", "/static/../pyproject.toml", "/v1/ws"):
        status, headers, _ = await http(live.url, get(path))
        assert status == 400, path
        assert "content-security-policy" not in headers
    post = get("/static/console.js", method="POST", extra="Content-Length: 0\r\n")
    status, _, _ = await http(live.url, post)
    assert status == 400
    # A WebSocket upgrade to another path: 404, as docs/protocol.md says.
    upgrade = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    for path in ("/elsewhere", "/", "/console"):  # a page's path too: it is not a page request
        status, _, body = await http(live.url, get(path, extra=upgrade))
        assert (status, body) == (404, b"queuechat speaks WebSocket at /v1/ws\n"), path
    # And the endpoint itself speaks the protocol after pages were served.
    async with live.patient(room, "Test Patient A") as patient:
        assert patient.welcome["position"] == 1
    assert live.server.statistics().internal_errors == 0


async def test_a_connection_that_sends_nothing_is_closed_after_the_handshake_time(
        start_server: StartServer) -> None:
    live = await start_server(Limits(hello_timeout_s=0.3))
    host, port = host_port(live.url)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        started = trio.current_time()
        async with stream:
            assert await stream.receive_some(100) == b""
        assert 0.25 <= trio.current_time() - started < 3


def test_a_host_header_that_is_not_a_host_is_not_repeated_in_the_policy() -> None:
    assert "ws://evil" not in content_security_policy("evil; script-src *")
    assert content_security_policy(None).count("connect-src 'self';") == 1
    assert "connect-src 'self' ws://[::1]:8765;" in content_security_policy("[::1]:8765")


async def test_serving_pages_logs_no_request_line(start_server: StartServer) -> None:
    """A query string could carry anything (a token pasted by mistake): the log names the page only."""
    saved = structlog.get_config()
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    try:
        live = await start_server()
        secret = "0123456789abcdef-not-a-real-token"
        status, _, _ = await http(live.url, get(f"/console?token={secret}"))
        assert status == 200
    finally:
        structlog.configure(**saved)
    logged = stream.getvalue()
    assert '"event": "http.page_served"' in logged and '"page": "console.html"' in logged
    assert secret not in logged and "token=" not in logged


# --------------------------------------------------------------------------- the static files


def static_text(name: str) -> str:
    return STATIC.joinpath(name).read_text(encoding="utf-8")


def test_the_pages_load_nothing_from_elsewhere_and_insert_no_html() -> None:
    for page in PAGES.values():
        text = static_text(page.file)
        # Any absolute URL in an attribute or a CSS url(): none (xmlns in the SVG is a name, not a load).
        assert not re.search(r"""(?:src|href|action)\s*=\s*["']?(?:[a-z]+:)?//""", text, re.I), page.file
        assert not re.search(r"url\(\s*['\"]?(?:[a-z]+:)?//", text, re.I), page.file
        assert "@import" not in text
        if page.file.endswith(".js"):
            code = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # comments may name what the code avoids
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                         "new Function", "localStorage", "sessionStorage", "document.cookie", "indexedDB"):
                assert sink not in code, (page.file, sink)
        if page.file.endswith(".html"):
            assert "<script>" not in text and "style=" not in text
            assert not re.search(r"<[^>]+\son[a-z]+\s*=", text), page.file  # no inline handlers (CSP)


def test_the_console_carries_the_documented_hooks() -> None:
    html, js = static_text("console.html"), static_text("console.js")
    for hook in ('data-chat-box="closed"', 'data-action="minimize"', 'data-action="close"',
                 'data-action="send"',
                 'data-action="open-chat"', 'data-notice="patient-left"', 'data-setting="chat-notifications"',
                 'data-setting="patient-initiated-chat"'):
        assert hook in html, hook
    for hook in ('"data-patient"', '"data-unread"', '"data-message-id"', '"data-action": "menu"'):
        assert hook in js, hook


# --------------------------------------------------------------------------- links and commands


def test_console_and_patient_links() -> None:
    token = clinician_token(DEVELOPMENT_SECRET, "demo-room")
    assert console_link("ws://127.0.0.1:8765/v1/ws", "demo-room", token) == \
        f"http://127.0.0.1:8765/console#room=demo-room&token={token}"
    assert http_base("wss://example.test/v1/ws") == "https://example.test"
    assert http_base("ws://[::1]:9/v1/ws") == "http://[::1]:9"
    assert patient_link("ws://127.0.0.1:1/v1/ws", "a-b") == "http://127.0.0.1:1/patient#room=a-b"
    for bad in ("http://127.0.0.1:1/v1/ws", "ws://127.0.0.1:1/other", "ws://127.0.0.1:99999/v1/ws",
                "ws:///v1/ws", "ws://h/v1/ws?token=x"):
        with pytest.raises(LinkError):
            http_base(bad)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "queuechat", *args], capture_output=True, text=True,
                          timeout=60)


def test_token_console_prints_a_ready_link_with_the_token_in_the_fragment() -> None:
    run = run_cli("token", "demo-room", "--console", "--url", "ws://127.0.0.1:9000/v1/ws", "--secret", "s3")
    assert run.returncode == 0, run.stderr
    link = run.stdout.strip()
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path, parts.query) == ("http", "127.0.0.1:9000", "/console", "")
    assert parts.fragment == f"room=demo-room&token={clinician_token('s3', 'demo-room')}"
    plain = run_cli("token", "demo-room")
    assert plain.stdout.strip() == clinician_token(DEVELOPMENT_SECRET, "demo-room")
    for args, message in ((("--console", "--url", "http://x/v1/ws"), "expected ws://"),
                          (("--url", "ws://127.0.0.1:1/v1/ws"), "--url goes with --console")):
        bad = run_cli("token", "demo-room", *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


class LineReader:
    """A child's stdout, read by a thread: waits for a line have a deadline even when none comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(process.stdout,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, pattern: str, timeout_s: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        seen: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in time; saw {seen}") from None
            if line is None:
                raise AssertionError(f"no line matching {pattern!r} before the end; saw {seen}")
            seen.append(line)
            if re.search(pattern, line):
                return seen


def test_the_lines_serve_prints_about_the_pages() -> None:
    assert page_lines("ws://127.0.0.1:8765/v1/ws") == [
        "queuechat serve: clinician console at http://127.0.0.1:8765/console (a ready link for a room: "
        "queuechat token ROOM --console --url ws://127.0.0.1:8765/v1/ws)",
        "queuechat serve: patient check-in at http://127.0.0.1:8765/patient#room=ROOM",
    ]


def test_serve_prints_the_pages_addresses() -> None:
    with subprocess.Popen([sys.executable, "-m", "queuechat", "serve", "--port", "0", "--log-level", "error"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        reader = LineReader(process)
        try:
            ready = reader.until(r"ready on ws://")[-1]
            url = ready.removeprefix("queuechat serve: ready on ")
            assert reader.until(r"patient check-in", timeout_s=5)[-2:] == page_lines(url)
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 0
            reader.thread.join(timeout=5)


def test_play_starts_a_server_whose_patients_arrive_and_write_and_stops_on_sigint(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w+") as stderr, subprocess.Popen(
            [sys.executable, "-m", "queuechat", "play", "demo", "--port", "0", "--pace", "0.1",
             "--room", "play-test"], stdout=subprocess.PIPE, stderr=stderr, text=True) as process:
        reader = LineReader(process)
        try:
            lines = reader.until(r"Ctrl-C stops")
            link = next(line.rsplit(" ", 1)[1] for line in lines if "clinician console:" in line)
            parts = urlsplit(link)
            fragment = dict(pair.split("=", 1) for pair in parts.fragment.split("&"))
            token = clinician_token(DEVELOPMENT_SECRET, "play-test")
            assert fragment == {"room": "play-test", "token": token}
            assert "after 30m" in lines[-1]
            ws = websocket.create_connection(f"ws://{parts.netloc}/v1/ws", timeout=WAIT_S)
            try:
                ws.send(json.dumps({"type": "hello", "role": "clinician", **fragment}))
                welcome = json.loads(ws.recv())
                assert welcome["type"] == "welcome"
                seen = {e["patient"] for e in welcome["queue"]}
                deadline = time.monotonic() + 20
                messages = 0
                while messages == 0 and time.monotonic() < deadline:
                    frame = json.loads(ws.recv())
                    if frame["type"] == "patient_joined":
                        seen.add(frame["patient"])
                    messages += frame["type"] == "message" and frame["from"] == "patient"
                assert seen and messages >= 1
            finally:
                ws.close()
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=15) == 0
            reader.thread.join(timeout=5)
        assert "stopped (SIGINT)" in reader.until(r"stopped", timeout_s=5)[-1]
        stderr.seek(0)
        assert "Traceback" not in stderr.read()


def test_play_stops_by_itself_after_its_duration_and_refuses_bad_options() -> None:
    started = time.monotonic()
    run = run_cli("play", "--port", "0", "--duration", "2s", "--pace", "0.1")
    assert run.returncode == 0, run.stderr
    assert "stopped after 2s (--duration)" in run.stdout
    assert time.monotonic() - started < 20
    for args, message in ((("--duration", "9h"), "from 1s to 8h"), (("--host", "0.0.0.0"), "loopback"),
                          (("nosuch",), "no such scenario"), (("--room", "Bad Room"), "--room must match")):
        bad = run_cli("play", *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
