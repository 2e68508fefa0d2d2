"""Render an HTML page in headless Chromium over the DevTools protocol (CDP) and take a screenshot.

Used by ``tests/test_report_browser.py`` and ``scripts/screenshot_report.py``: a report must render in a
real browser (its title set, every image decoded) without fetching anything but ``file:`` and
``data:`` URLs. Only websocket-client (a dependency already) talks to the browser; Chromium is
Debian's ``chromium`` package (``.ci/run`` installs it).

Bounded: every wait has a deadline; Chromium runs in a session of its own, in a throwaway profile,
and is killed (its whole process group) in ``finally``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import websocket

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# A fixed viewport and scale, so that the screenshot's size is known from the page's layout alone.
VIEWPORT = (1280, 800)
_DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


class BrowserError(Exception):
    """Chromium could not be started, or the page could not be rendered within the time allowed."""


@dataclass(frozen=True)
class PageRender:
    title: str
    images_total: int
    images_loaded: int  # complete and decoded (naturalWidth > 0)
    external_requests: list[str]  # URLs the page asked for that were neither file: nor data:
    screenshot_size: tuple[int, int]  # (width, height) in pixels, as captured
    requests: list[str] = field(default_factory=list)  # every URL requested, for a failure message
    seconds: float = 0.0  # from Chromium's start to the screenshot written


def find_chromium() -> str | None:
    """The Chromium binary (``$CHROMIUM`` first), or None when there is none."""
    candidates = [os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else []
    for name in [*candidates, *CHROMIUM_NAMES]:
        found = shutil.which(name)
        if found:
            return found
    return None


def render_page(html_path: Path, screenshot: Path, timeout_s: float = 30.0) -> PageRender:
    """Open ``html_path`` in headless Chromium, wait for its load event, inspect it, and write a PNG of
    the whole page to ``screenshot``. Raises :class:`BrowserError` on any failure to do so."""
    binary = find_chromium()
    if binary is None:
        raise BrowserError("no chromium on PATH (Debian: apt-get install chromium)")
    started = time.monotonic()
    deadline = started + timeout_s
    url = html_path.resolve().as_uri()
    with _chromium(binary, deadline) as endpoint, _Cdp(endpoint, deadline) as cdp:
        target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
        session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call("Emulation.setDeviceMetricsOverride", session=session, width=VIEWPORT[0],
                 height=VIEWPORT[1], deviceScaleFactor=1, mobile=False)
        cdp.events.clear()
        navigation = cdp.call("Page.navigate", session=session, url=url)
        if navigation.get("errorText"):
            raise BrowserError(f"Chromium could not open {url}: {navigation['errorText']}")
        # The load event that counts is the one after our document is committed (not about:blank's).
        committed = cdp.wait_event("Page.frameNavigated", session, after=0,
                                   where=lambda params: not params["frame"].get("parentId")
                                   and params["frame"].get("url") == url)
        cdp.wait_event("Page.loadEventFired", session, after=committed)
        state = cdp.call("Runtime.evaluate", session=session, returnByValue=True, expression=(
            "({title: document.title, total: document.images.length,"
            " loaded: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length})"
        ))["result"]["value"]
        requested = [event["params"]["request"]["url"] for event in cdp.events
                     if event.get("method") == "Network.requestWillBeSent"
                     and event.get("sessionId") == session]
        metrics = cdp.call("Page.getLayoutMetrics", session=session)
        content = metrics.get("cssContentSize") or metrics["contentSize"]
        width, height = max(1, round(content["width"])), max(1, round(content["height"]))
        shot = cdp.call("Page.captureScreenshot", session=session, format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        png = base64.b64decode(shot["data"])
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(png)
    return PageRender(
        title=str(state["title"]), images_total=int(state["total"]), images_loaded=int(state["loaded"]),
        external_requests=[u for u in requested if not u.startswith(("file:", "data:"))],
        screenshot_size=png_size(png), requests=requested, seconds=time.monotonic() - started,
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; BrowserError when it is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise BrowserError("the screenshot is not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# --------------------------------------------------------------------------- Chromium


@contextlib.contextmanager
def _chromium(binary: str, deadline: float) -> Iterator[str]:
    """Headless Chromium in a throwaway profile; yields the browser's DevTools WebSocket URL."""
    with tempfile.TemporaryDirectory(prefix="queuechat-chromium-") as profile:
        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                   "--disable-dev-shm-usage", "--disable-component-update", "--disable-sync",
                   "--mute-audio", "--hide-scrollbars", f"--user-data-dir={profile}",
                   "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"]
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True, errors="replace",
                                       start_new_session=True)
        except OSError as error:
            raise BrowserError(f"cannot start {binary}: {error.strerror or error}") from None
        lines: queue.Queue[str | None] = queue.Queue()
        assert process.stderr is not None
        reader = threading.Thread(target=_pump, args=(process.stderr, lines), daemon=True)
        reader.start()
        seen: list[str] = []
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise BrowserError("Chromium did not open its DevTools port in time") from None
                if line is None:
                    tail = " | ".join(s.strip() for s in seen[-3:])
                    raise BrowserError(f"Chromium exited (code {process.wait()}) before its DevTools port "
                                       f"opened: {tail}")
                seen.append(line)
                match = _DEVTOOLS.search(line)
                if match:
                    break
            yield match.group(1)
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # its session: renderers, GPU process too
            process.wait(timeout=10.0)
            reader.join(timeout=5.0)
            process.stderr.close()


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


class _Cdp:
    """One DevTools connection: numbered calls, their answers, and the events seen meanwhile."""

    def __init__(self, endpoint: str, deadline: float) -> None:
        self.endpoint = endpoint
        self.deadline = deadline
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self._ws: websocket.WebSocket | None = None

    def __enter__(self) -> _Cdp:
        try:
            # No Origin header: Chromium refuses DevTools connections from origins it was not told about.
            self._ws = websocket.create_connection(self.endpoint, timeout=self._left(),
                                                   suppress_origin=True)
        except (OSError, websocket.WebSocketException) as error:
            raise BrowserError(f"cannot connect to Chromium's DevTools at {self.endpoint}: {error}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close(timeout=1)

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BrowserError("the page did not render within the time allowed")
        return left

    def _receive(self) -> dict[str, Any]:
        assert self._ws is not None
        self._ws.settimeout(self._left())
        try:
            message = json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException:
            raise BrowserError("the page did not render within the time allowed") from None
        except (OSError, websocket.WebSocketException) as error:
            raise BrowserError(f"the DevTools connection failed: {error}") from None
        return message if isinstance(message, dict) else {}

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer, keeping the events that arrive first."""
        assert self._ws is not None
        self._next += 1
        number = self._next
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        while True:
            answer = self._receive()
            if answer.get("id") == number:
                if "error" in answer:
                    raise BrowserError(f"{method} failed: {answer['error'].get('message')}")
                result = answer.get("result")
                return result if isinstance(result, dict) else {}
            if "method" in answer:
                self.events.append(answer)

    def wait_event(self, method: str, session: str, *, after: int,
                   where: Callable[[dict[str, Any]], bool] = lambda params: True) -> int:
        """Wait for a ``method`` event of ``session`` matching ``where``, among the events from index
        ``after`` on (those already seen count); returns the index just past it."""
        index = after
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if event.get("method") == method and event.get("sessionId") == session \
                        and where(event.get("params") or {}):
                    return index
            event = self._receive()
            if "method" in event:
                self.events.append(event)
