"""The clinician console and the patient check-in page, served by the reference server.

A browser's plain ``GET /console`` reaches the same port as the WebSocket endpoint. trio-websocket
answers every request that is not a WebSocket upgrade with 400, so the shell asks
:func:`serve_page_if_asked` first: it *peeks* at the request (``MSG_PEEK``, nothing consumed), and
only when it is a plain ``GET``/``HEAD`` (no WebSocket upgrade) of one of :data:`PAGES` does it read
the request and answer it. Every other connection, the WebSocket endpoint's above all, goes on to
trio-websocket untouched.

The pages are static files shipped in the package (``reference_server/static``): plain HTML, CSS
and JavaScript, no build step. Every answer carries a Content-Security-Policy that allows nothing
but this origin (and a WebSocket to this host), no Referer, no caching. The clinician's token never
reaches the server in a request: it travels in the URL fragment, which browsers do not send.
Logs name the page served, never the request line (a query string could carry anything).
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Final

import trio

from ._logging import get_logger

log = get_logger("queuechat.pages")

STATIC_FOLDER: Final = "static"  # beside this module; package data (pyproject.toml)


@dataclass(frozen=True, slots=True)
class Page:
    """One static file: its name in the package and its media type."""

    file: str
    content_type: str


_HTML = "text/html; charset=utf-8"
PAGES: Final[dict[str, Page]] = {
    "/": Page("index.html", _HTML),
    "/console": Page("console.html", _HTML),
    "/patient": Page("patient.html", _HTML),
    "/static/common.js": Page("common.js", "text/javascript; charset=utf-8"),
    "/static/console.js": Page("console.js", "text/javascript; charset=utf-8"),
    "/static/patient.js": Page("patient.js", "text/javascript; charset=utf-8"),
    "/static/style.css": Page("style.css", "text/css; charset=utf-8"),
    "/static/icon.svg": Page("icon.svg", "image/svg+xml"),
}
CONSOLE_PATH: Final = "/console"
PATIENT_PATH: Final = "/patient"

MAX_HEAD_BYTES: Final = 16 * 1024
_REQUEST_LINE = re.compile(rb"^(GET|HEAD) (/[^ ?#]*)(?:\?[^ ]*)? HTTP/1\.[01]\r?$")
# A Host header we are willing to repeat in the CSP: a name or an address, and a port.
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(?::[0-9]{1,5})?$")


def content_security_policy(host: str | None) -> str:
    """Only this origin; WebSocket only to the host the page came from (CSP 'self' does not cover
    ws: in every browser)."""
    connect = "'self'"
    if host is not None and _HOST.fullmatch(host):
        connect += f" ws://{host}"
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src {connect}; object-src 'none'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def read_page(path: str) -> bytes | None:
    """The bytes of the page at ``path``, or None when it is not one of ours."""
    page = PAGES.get(path)
    if page is None:
        return None
    if path not in _CACHE:
        _CACHE[path] = resources.files("reference_server").joinpath(STATIC_FOLDER, page.file).read_bytes()
    return _CACHE[path]


_CACHE: dict[str, bytes] = {}


def response(path: str, *, head_only: bool = False, host: str | None = None) -> bytes:
    """The whole HTTP answer for ``path`` (one of :data:`PAGES`); the connection closes after it."""
    body = read_page(path)
    if body is None:
        raise KeyError(path)
    headers = [
        "HTTP/1.1 200 OK",
        f"Content-Type: {PAGES[path].content_type}",
        f"Content-Length: {len(body)}",
        f"Content-Security-Policy: {content_security_policy(host)}",
        "Referrer-Policy: no-referrer",
        "X-Content-Type-Options: nosniff",
        "X-Frame-Options: DENY",
        "Cross-Origin-Opener-Policy: same-origin",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    head = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def page_path(first_bytes: bytes) -> tuple[str, bool] | None:
    """(path, is HEAD) when the request line in ``first_bytes`` asks for one of our pages."""
    line, found, _ = first_bytes.partition(b"\n")
    if not found:
        return None
    match = _REQUEST_LINE.match(line)
    if match is None:
        return None
    path = match.group(2).decode("ascii", "replace")
    if path not in PAGES:
        return None
    return path, match.group(1) == b"HEAD"


def _is_upgrade(head: bytes) -> bool:
    """An ``Upgrade: websocket`` header among the (peeked) request headers."""
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


def _host_header(head: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"host":
            return value.strip().decode("ascii", "replace")
    return None


async def serve_page_if_asked(
    stream: trio.abc.Stream, timeout_s: float, wait_readable: Callable[[], Awaitable[None]] | None = None
) -> bool:
    """Answer a plain ``GET``/``HEAD`` of one of our pages and close; True when it did.

    False (nothing consumed) for anything else and for a stream that is not a TCP socket:
    trio-websocket takes over. A connection that sends nothing in ``timeout_s`` is closed (True),
    as trio-websocket's own connect timeout would. ``wait_readable``, when given, is how to wait
    for the first bytes (the shell's read gate).
    """
    if type(stream) is not trio.SocketStream:
        return False
    sock = stream.socket
    peeked = b""
    with trio.move_on_after(timeout_s) as waited:
        try:
            if wait_readable is not None:
                await wait_readable()
            peeked = await sock.recv(MAX_HEAD_BYTES, socket.MSG_PEEK)
            # A request line split over packets is rare: look again, briefly, until it is whole.
            while peeked and b"\n" not in peeked and len(peeked) < MAX_HEAD_BYTES:
                await trio.sleep(0.01)
                peeked = await sock.recv(MAX_HEAD_BYTES, socket.MSG_PEEK)
        except (OSError, trio.ClosedResourceError):
            return False
    if waited.cancelled_caught and not peeked:
        # Silent for the whole handshake time: closed, as trio-websocket's connect timeout would.
        await trio.aclose_forcefully(stream)
        return True
    asked = page_path(peeked)
    if asked is None:
        return False
    path, head_only = asked
    with trio.move_on_after(timeout_s):
        with contextlib.suppress(OSError):
            # The whole head, still without consuming it: a WebSocket upgrade goes on to
            # trio-websocket as before (404 for any path but the endpoint's).
            while b"\r\n\r\n" not in peeked and len(peeked) < MAX_HEAD_BYTES:
                await trio.sleep(0.01)
                peeked = await sock.recv(MAX_HEAD_BYTES, socket.MSG_PEEK)
    if _is_upgrade(peeked):
        return False
    try:
        with trio.move_on_after(timeout_s):
            head = await _read_head(stream)
            if head is not None:
                await stream.send_all(response(path, head_only=head_only, host=_host_header(head)))
                log.debug("http.page_served", page=PAGES[path].file, head_only=head_only)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)
    return True


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    """Consume the request head (through the empty line); None when it is too long or cut short."""
    head = b""
    while b"\r\n\r\n" not in head:
        if len(head) >= MAX_HEAD_BYTES:
            await stream.send_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                  b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            return None
        chunk = await stream.receive_some(MAX_HEAD_BYTES - len(head))
        if not chunk:
            return None
        head += chunk
    return head
