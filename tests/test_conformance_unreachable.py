"""``queuechat conformance`` against URLs that are not a queue-chat WebSocket: one line, exit 2.

Issue 11, item 9: an HTTP server answering 404 made the suite end in an
``ExceptionGroup`` traceback (trio-websocket raises a refused handshake in the
connection's reader task, which crashed the preflight's nursery). Each kind of
wrong endpoint here must end with a single line on stderr naming what was
found, exit code 2, and no traceback, within a bounded time.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import trio
import wsproto.utilities
from click.testing import CliRunner, Result

from conformance import SuiteError, run_suite
from conformance._client import _GuardedNursery
from queuechat._conformance import ConformanceOptions, run_conformance
from queuechat.cli import main


class _NotFound(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 404, as a web server with no WebSocket endpoint would."""

    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass


@contextmanager
def http_404_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.server_address[1]}/v1/ws"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def tcp_listener(on_accept: Callable[[socket.socket], None] | None = None) -> Iterator[str]:
    """A TCP listener on 127.0.0.1:0; ``on_accept`` (if any) handles each connection, else it says nothing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            if on_accept is not None:
                on_accept(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}/v1/ws"
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        listener.close()
        for conn in accepted:
            conn.close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    return f"ws://127.0.0.1:{port}/v1/ws"


def conformance(*args: str) -> Result:
    return CliRunner().invoke(main, ["conformance", "--secret", "s", *args], catch_exceptions=False)


def assert_one_line(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("queuechat conformance: "), stderr
    for needle in needles:
        assert needle in lines[0], stderr
    for word in ("Traceback", "ExceptionGroup", "unexpected"):
        assert word not in stderr


def test_http_404_is_one_line_and_exit_2() -> None:
    """An HTTP server with no WebSocket there: 'HTTP 404 instead of a WebSocket upgrade', exit 2."""
    with http_404_server() as url:
        run = conformance("--url", url)
    assert run.exit_code == 2, run.output
    assert_one_line(run.stderr, "HTTP 404 instead of a WebSocket upgrade", "/v1/ws")
    assert run.stdout == ""


def test_closed_port_is_one_line_and_exit_2() -> None:
    run = conformance("--url", closed_port_url())
    assert run.exit_code == 2, run.output
    assert_one_line(run.stderr, "connection refused")


def test_silent_tcp_listener_is_bounded_by_the_connect_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    """A listener that accepts and says nothing: the wait is ``connect_timeout_s``, then one line, exit 2."""
    with tcp_listener() as url:
        started = time.monotonic()
        code = run_conformance(ConformanceOptions(url=url, secret="s", connect_timeout_s=0.3))
        elapsed = time.monotonic() - started
    assert code == 2
    assert elapsed < 3.0
    captured = capsys.readouterr()
    assert_one_line(captured.err, "no WebSocket handshake within 0.3 s")


def test_silent_tcp_listener_via_the_command_line_option() -> None:
    """``--connect-timeout-s`` bounds the wait on the command line too (needs the option in cli.py)."""
    with tcp_listener() as url:
        started = time.monotonic()
        run = conformance("--url", url, "--connect-timeout-s", "0.3")
        elapsed = time.monotonic() - started
    assert run.exit_code == 2, run.output
    assert elapsed < 3.0
    assert_one_line(run.stderr, "no WebSocket handshake within 0.3 s")


@pytest.mark.parametrize(
    ("name", "reply", "needle"),
    [
        ("closes at once", None, "closed the connection during the WebSocket handshake"),
        ("speaks another protocol", b"SSH-2.0-OpenSSH_9.0\r\n\r\n", "not a WebSocket handshake"),
        ("answers HTTP 200", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", "HTTP 200 instead"),
    ],
)
def test_other_non_websocket_servers_are_one_line_and_exit_2(
    name: str, reply: bytes | None, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def answer(conn: socket.socket) -> None:
        if reply is not None:
            conn.recv(4096)
            conn.sendall(reply)
        conn.close()

    with tcp_listener(answer) as url:
        code = run_conformance(ConformanceOptions(url=url, secret="s", connect_timeout_s=3.0))
    assert code == 2, name
    assert_one_line(capsys.readouterr().err, needle)


async def test_run_suite_raises_suite_error_not_a_group() -> None:
    """The library entry point raises SuiteError (no ExceptionGroup) for a 404, promptly."""
    with http_404_server() as url, trio.fail_after(10), pytest.raises(SuiteError, match="HTTP 404"):
        await run_suite(url, "s", connect_timeout_s=2.0)


async def test_a_pong_refused_while_our_close_is_under_way_does_not_fail_the_case() -> None:
    """trio-websocket answers a server ping that arrives after the suite's close frame went out, and
    wsproto refuses that pong (LocalProtocolError in LOCAL_CLOSING) in the connection's reader task. A
    server pinging at odd times (the second server does) made a passing case end "could not complete";
    the reader now ends quietly. Any other error of an established connection still reaches the case."""
    refused_pong = wsproto.utilities.LocalProtocolError("Event Pong cannot be sent in state LOCAL_CLOSING")

    async def reader(error: Exception) -> None:
        raise error

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            guard = _GuardedNursery(nursery, trio.CancelScope())
            guard.established = True
            guard.start_soon(reader, refused_pong)
        with pytest.RaisesGroup(RuntimeError):
            async with trio.open_nursery() as nursery:
                guard = _GuardedNursery(nursery, trio.CancelScope())
                guard.established = True
                guard.start_soon(reader, RuntimeError("a real failure"))


async def test_a_refused_handshake_in_the_reader_cancels_the_wait() -> None:
    """Before the handshake, an error in the reader task is kept and the handshake wait is cancelled
    (trio-websocket would otherwise leave it waiting and crash the nursery)."""

    async def reader() -> None:
        raise ValueError("refused")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as handshake:
                guard = _GuardedNursery(nursery, handshake)
                guard.start_soon(reader)
                await trio.sleep_forever()
    assert isinstance(guard.error, ValueError)
