"""Drive the clinician console and the patient page in headless Chromium, and play patients on the wire.

Used by ``tests/test_console_browser.py``. One Chromium per test module (:func:`open_browser`), a new
tab per test (:meth:`Browser.open`); every wait polls the DOM through ``Runtime.evaluate`` with a
bounded deadline (:meth:`Tab.wait_for`), never a fixed sleep. The DevTools plumbing is
``tests/browser.py``'s. The patient side is :class:`WirePatient`, a websocket-client connection.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import websocket
from browser import VIEWPORT, BrowserError, _Cdp, _chromium, find_chromium

from reference_server._pages import PAGES, content_security_policy, read_page

BROWSER_BUDGET_S = 300.0  # the whole module's DevTools session
WAIT_S = 10.0


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class RunningServer:
    ws_url: str  # ws://127.0.0.1:PORT/v1/ws
    http_url: str  # http://127.0.0.1:PORT
    log: Path  # the server's stderr (JSON lines), at debug level


@contextlib.contextmanager
def run_server(log: Path, *extra: str) -> Iterator[RunningServer]:
    """``queuechat serve`` on a free loopback port, with debug logs in ``log``; stopped by SIGINT."""
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "queuechat", "serve", "--port", "0", "--log-level", "debug", *extra],
            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        try:
            assert process.stdout is not None
            deadline = time.monotonic() + 20.0
            ws_url = ""
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError(f"queuechat serve exited early: {log.read_text()[-500:]}")
                match = re.search(r"ready on (ws://\S+)", line)
                if match:
                    ws_url = match.group(1)
                    break
            if not ws_url:
                raise RuntimeError("queuechat serve did not say it was ready")
            yield RunningServer(ws_url=ws_url, http_url=ws_url.removesuffix("/v1/ws").replace("ws://", "http://"),
                                log=log)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()


# --------------------------------------------------------------------------- the browser


# The page sees a Notification API whose permission is granted and which records what it shows.
NOTIFICATION_STUB = """
window.__notifications = [];
window.Notification = class {
  static get permission() { return "granted"; }
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.__notifications.push({ title, tag: options && options.tag }); }
};
"""


class Browser:
    """One headless Chromium and its DevTools connection."""

    def __init__(self, cdp: _Cdp) -> None:
        self.cdp = cdp

    def open(self, url: str, *, stub_notifications: bool = False, pages_for: str | None = None) -> Tab:
        """A new tab at ``url``, loaded (its load event fired).

        ``pages_for``: an origin (``http://127.0.0.1:PORT``) whose page requests this browser answers
        itself with the shipped static files and headers, as the reference server would: the page then
        talks to whatever WebSocket server listens on that port (the second server, for one).
        """
        cdp = self.cdp
        target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
        session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call("Emulation.setDeviceMetricsOverride", session=session, width=VIEWPORT[0],
                 height=VIEWPORT[1], deviceScaleFactor=1, mobile=False)
        if stub_notifications:
            cdp.call("Page.addScriptToEvaluateOnNewDocument", session=session, source=NOTIFICATION_STUB)
        tab = Tab(cdp, target, session, pages_for)
        if pages_for is not None:
            # Answered by DevTools, the page has no address of its own, and Chromium's Local Network
            # Access checks would refuse its WebSocket to 127.0.0.1: allow it for this origin.
            for permission in ("localNetworkAccess", "localNetwork", "loopbackNetwork"):
                with contextlib.suppress(BrowserError):  # names differ between Chromium versions
                    cdp.call("Browser.grantPermissions", permissions=[permission], origin=pages_for)
            cdp.call("Fetch.enable", session=session, patterns=[{"urlPattern": f"{pages_for}/*"}])
        tab.navigate(url)
        return tab


@contextlib.contextmanager
def open_browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        raise BrowserError("no chromium on PATH")
    deadline = time.monotonic() + BROWSER_BUDGET_S
    with _chromium(binary, deadline) as endpoint, _Cdp(endpoint, deadline) as cdp:
        yield Browser(cdp)


class Tab:
    """One page: evaluate, wait on a condition, click, type, reload, screenshot."""

    def __init__(self, cdp: _Cdp, target: str, session: str, pages_for: str | None = None) -> None:
        self.cdp = cdp
        self.target = target
        self.session = session
        self.pages_for = pages_for
        self._answered = 0  # events up to here were looked at for paused page requests

    def navigate(self, url: str) -> None:
        self._load("Page.navigate", url=url)

    def reload(self) -> None:
        self._load("Page.reload", ignoreCache=True)

    def _load(self, method: str, **params: Any) -> None:
        """Start a navigation and wait for its load event. When this browser answers the page
        requests itself, the command's own answer waits for them: it is sent without waiting, and
        paused requests are answered meanwhile."""
        mark = len(self.cdp.events)
        if self.pages_for is None:
            answer = self.cdp.call(method, session=self.session, **params)
            if answer.get("errorText"):
                raise BrowserError(f"cannot open the page: {answer['errorText']}")
            self.cdp.wait_event("Page.loadEventFired", self.session, after=mark)
            return
        assert self.cdp._ws is not None
        self.cdp._next += 1
        self.cdp._ws.send(json.dumps({"id": self.cdp._next, "method": method, "params": params,
                                      "sessionId": self.session}))
        while True:  # answer the page's requests until it has loaded
            self._answer_paused()
            if any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == self.session
                   for e in self.cdp.events[mark:]):
                return
            message = self.cdp._receive()
            if "method" in message:
                self.cdp.events.append(message)
            elif "error" in message:
                raise BrowserError(f"{method} failed: {message['error'].get('message')}")

    def _answer_paused(self) -> None:
        """Fulfil paused requests for our pages from the package (as reference_server/_pages.py does)."""
        while self._answered < len(self.cdp.events):
            event = self.cdp.events[self._answered]
            self._answered += 1
            if event.get("method") != "Fetch.requestPaused" or event.get("sessionId") != self.session:
                continue
            request_id = event["params"]["requestId"]
            parts = urlsplit(event["params"]["request"]["url"])
            body = read_page(parts.path)
            if body is None:
                self.cdp.call("Fetch.failRequest", session=self.session, requestId=request_id,
                              errorReason="Failed")
                continue
            headers = [{"name": "Content-Type", "value": PAGES[parts.path].content_type},
                       {"name": "Content-Security-Policy", "value": content_security_policy(parts.netloc)},
                       {"name": "Referrer-Policy", "value": "no-referrer"}]
            self.cdp.call("Fetch.fulfillRequest", session=self.session, requestId=request_id,
                          responseCode=200, responseHeaders=headers,
                          body=base64.b64encode(body).decode("ascii"))

    def evaluate(self, expression: str) -> Any:
        answer = self.cdp.call("Runtime.evaluate", session=self.session, expression=expression,
                               returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            described = details.get("exception", {}).get("description") or details
            raise AssertionError(f"page script failed: {described}")
        return answer.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = WAIT_S) -> Any:
        """Poll ``expression`` until it is truthy; else AssertionError naming ``what`` and the last value."""
        deadline = time.monotonic() + timeout_s
        for attempt in itertools.count():
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {expression} gave {value!r}")
            time.sleep(min(0.02 * (attempt + 1), 0.1))  # polling interval, bounded by the deadline above
        raise AssertionError("unreachable")

    def click(self, selector: str) -> None:
        found = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                              " if (!e || e.disabled) return false; e.click(); return true; })()")
        assert found, f"no enabled element to click: {selector}"

    def attr(self, selector: str, name: str) -> str | None:
        value = self.evaluate(f"document.querySelector({json.dumps(selector)})"
                              f"?.getAttribute({json.dumps(name)}) ?? null")
        return None if value is None else str(value)

    def count(self, selector: str) -> int:
        return int(self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))

    def html(self) -> str:
        return str(self.evaluate("document.documentElement.outerHTML"))

    def press(self, key: str, code: str, key_code: int) -> None:
        """One key, as the keyboard sends it, to the focused element."""
        for kind in ("keyDown", "keyUp"):
            self.cdp.call("Input.dispatchKeyEvent", session=self.session, type=kind, key=key, code=code,
                          windowsVirtualKeyCode=key_code, **({"text": "\r"} if key == "Enter" and
                                                                kind == "keyDown" else {}))

    def heap_strings(self) -> str:
        """A heap snapshot of the page's JavaScript after a full garbage collection, as text."""
        self.cdp.call("HeapProfiler.enable", session=self.session)
        self.cdp.call("HeapProfiler.collectGarbage", session=self.session)
        mark = len(self.cdp.events)
        self.cdp.call("HeapProfiler.takeHeapSnapshot", session=self.session, reportProgress=False)
        chunks = [event["params"]["chunk"] for event in self.cdp.events[mark:]
                  if event.get("method") == "HeapProfiler.addHeapSnapshotChunk"
                  and event.get("sessionId") == self.session]
        del self.cdp.events[mark:]  # several MB: not kept for the rest of the module
        return "".join(chunks)

    def requested_urls(self) -> list[str]:
        urls = []
        for event in self.cdp.events:
            if event.get("sessionId") != self.session:
                continue
            if event.get("method") == "Network.requestWillBeSent":
                urls.append(event["params"]["request"]["url"])
            elif event.get("method") == "Network.webSocketCreated":
                urls.append(event["params"]["url"])
        return urls

    def request_headers(self) -> list[dict[str, str]]:
        return [event["params"]["request"].get("headers", {}) for event in self.cdp.events
                if event.get("sessionId") == self.session
                and event.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> bytes:
        shot = self.cdp.call("Page.captureScreenshot", session=self.session, format="png")
        data = base64.b64decode(shot["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self.cdp.call("Target.closeTarget", targetId=self.target)


# --------------------------------------------------------------------------- patients on the wire


class WirePatient:
    """A patient played by a plain WebSocket client (websocket-client): hello, send, leave."""

    def __init__(self, ws_url: str, room: str, name: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=WAIT_S)
        self._refs = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        # The contract lets a welcome come without the hello's ref: the first welcome or error answers.
        hello = {"type": "hello", "role": "patient", "room": room, "name": name, "ref": "p0"}
        self.ws.send(json.dumps(hello))
        while True:
            self.welcome = json.loads(self.ws.recv())
            if self.welcome.get("type") in ("welcome", "error"):
                break
        assert self.welcome["type"] == "welcome", self.welcome
        self.id: str = self.welcome["patient"]

    def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        ref = f"p{next(self._refs)}"
        self.ws.send(json.dumps({**frame, "ref": ref}))
        while True:
            got = json.loads(self.ws.recv())
            if got.get("type") in ("ok", "error") and got.get("ref") == ref:
                return dict(got)
            self.events.append(got)

    def send(self, text: str) -> dict[str, Any]:
        answer = self._request({"type": "send", "text": text})
        assert answer["type"] == "ok", answer
        return answer

    def leave(self) -> None:
        assert self._request({"type": "leave"})["type"] == "ok"
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close(timeout=1)
