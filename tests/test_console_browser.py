"""The clinician console and the patient page in headless Chromium, against ``queuechat serve``.

Each rule of the help article is asserted where a clinician sees it: on the DOM, through the stable
hooks (``data-patient``, ``data-unread``, ``data-chat-box``, ``data-action``, ``data-message-id``;
docs/console.md). Patients are played by plain WebSocket clients (:class:`WirePatient`) or by the
patient page in a second tab. One Chromium and one server for the module; every wait polls the DOM
with a deadline. Screenshots of each chat-box state go to ``$QUEUECHAT_SCREENSHOTS`` when set
(docs/images/ is made that way), else to the test's temporary folder.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import find_chromium, png_size
from console_driver import Browser, RunningServer, Tab, WirePatient, open_browser, run_server

from reference_server.protocol import DEVELOPMENT_SECRET, clinician_token

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium is not installed (.ci/run installs Debian's chromium)")

_rooms = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(tmp_path_factory.mktemp("console-server") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with open_browser() as opened:
        yield opened


class Keep:
    """Closes what a test opened (patients, then tabs, as given), however the test ends."""

    def __init__(self) -> None:
        self.opened: list[WirePatient | Tab] = []

    def __call__(self, *things: WirePatient | Tab) -> None:
        self.opened.extend(things)


@pytest.fixture
def keep() -> Iterator[Keep]:
    kept = Keep()
    yield kept
    for thing in kept.opened:
        thing.close()


def new_room() -> str:
    return f"console-test-{os.getpid()}-{next(_rooms)}"


def console_url(server: RunningServer, room: str) -> str:
    return f"{server.http_url}/console#room={room}&token={clinician_token(DEVELOPMENT_SECRET, room)}"


def open_console(browser: Browser, server: RunningServer, room: str, *,
                 stub_notifications: bool = False) -> Tab:
    tab = browser.open(console_url(server, room), stub_notifications=stub_notifications)
    tab.wait_for("document.body.dataset.connection === 'open'", "the console to connect")
    return tab


def entry(patient: WirePatient) -> str:
    return f'#queue [data-patient="{patient.id}"]'


def wait_in_queue(tab: Tab, *patients: WirePatient) -> None:
    for patient in patients:
        tab.wait_for(f"!!document.querySelector({json.dumps(entry(patient))})", "the patient in the queue")


def unread(tab: Tab, patient: WirePatient) -> str | None:
    return tab.attr(f"{entry(patient)} [data-unread]", "data-unread")


def wait_unread(tab: Tab, patient: WirePatient, count: int) -> None:
    selector = json.dumps(f"{entry(patient)} [data-unread]")
    tab.wait_for(f"document.querySelector({selector})?.dataset.unread === '{count}'", f"badge {count}")


def box(tab: Tab) -> tuple[str | None, str | None]:
    return tab.attr("[data-chat-box]", "data-chat-box"), tab.attr("[data-chat-box]", "data-patient")


def wait_box(tab: Tab, state: str, patient: WirePatient | None) -> None:
    who = patient.id if patient is not None else ""
    tab.wait_for(f"(() => {{ const b = document.querySelector('[data-chat-box]');"
                 f" return b.dataset.chatBox === '{state}' && b.dataset.patient === '{who}'; }})()",
                 f"the chat box {state} on {who or 'nobody'}")


def open_chat(tab: Tab, patient: WirePatient) -> None:
    """The article's way: the three dots next to the name, then Chat in the information panel."""
    tab.click(f"{entry(patient)} [data-action=menu]")
    tab.wait_for(f"document.querySelector('#info').dataset.patient === '{patient.id}'",
                 "the information panel")
    tab.click("#info [data-action=open-chat]")
    wait_box(tab, "open", patient)


def wait_text_shown(tab: Tab, text: str) -> None:
    tab.wait_for(f"[...document.querySelectorAll('[data-message-id]')].some(e => e.textContent.includes("
                 f"{json.dumps(text)}))", "the message in the chat box")


def secret_text(label: str) -> str:
    """A message text unlikely to appear anywhere by chance (long: V8 keeps short strings apart)."""
    return f"Sample message text {label} {os.urandom(12).hex()} for the erasure check"


def assert_no_storage(tab: Tab) -> None:
    assert tab.evaluate("[localStorage.length, sessionStorage.length, document.cookie]") == [0, 0, ""]


def assert_forgotten(tab: Tab, text: str) -> None:
    """R11-R13 on the page: the text is in no DOM node, not in the page's state, not in the JS heap."""
    assert text not in tab.html()
    assert text not in tab.evaluate("window.queuechatConsole.snapshot()")
    assert text not in tab.heap_strings()
    assert_no_storage(tab)


# --------------------------------------------------------------------------- R3 R5-R8


def test_badge_counts_messages_of_a_patient_not_in_view_and_clears_when_their_chat_opens(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    markup = "<b>Test</b> Patient &amp; A<img src=x>"  # a name is text, never markup
    alice = WirePatient(server.ws_url, room, markup)
    keep(alice, tab)
    wait_in_queue(tab, alice)
    assert tab.evaluate(f"document.querySelector('{entry(alice)} .name').textContent") == markup
    assert tab.count(f"{entry(alice)} b, {entry(alice)} img") == 0
    assert unread(tab, alice) == "0"
    assert tab.evaluate(f"document.querySelector('{entry(alice)} [data-unread]').hidden") is True
    texts = [secret_text(f"badge {n}") for n in range(3)]
    for text in texts:
        alice.send(text)
    wait_unread(tab, alice, 3)
    badge = f"{entry(alice)} [data-unread]"
    assert tab.attr(badge, "aria-label") == "3 unread messages"
    assert tab.evaluate(f"document.querySelector('{badge}').textContent") == "3"
    assert tab.evaluate(f"document.querySelector('{badge}').hidden") is False
    assert box(tab) == ("closed", "")
    open_chat(tab, alice)
    wait_unread(tab, alice, 0)
    assert tab.evaluate(f"document.querySelector('{badge}').hidden") is True
    tab.wait_for("document.querySelectorAll('#messages [data-message-id]').length === 3",
                 "three messages")
    assert tab.evaluate("[...document.querySelectorAll('#messages [data-message-id]')]"
                        ".map(e => e.dataset.messageId)") == ["1", "2", "3"]
    for text in texts:
        assert text in tab.evaluate("document.querySelector('#messages').textContent")
    assert tab.evaluate("document.querySelector('#info').hidden") is True  # Chat closed the panel
    assert tab.attr("[data-chat-box]", "aria-label") == f"Chat with {markup}"


def test_a_minimized_box_opens_by_itself_on_a_new_message_still_on_its_patient(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    alice = WirePatient(server.ws_url, room, "Test Patient A")
    bob = WirePatient(server.ws_url, room, "Test Patient B")
    keep(alice, bob, tab)
    wait_in_queue(tab, alice, bob)
    open_chat(tab, alice)
    tab.click("[data-chat-box] [data-action=minimize]")
    wait_box(tab, "minimized", alice)
    assert tab.evaluate("document.querySelector('#chat-body').hidden") is True
    bob.send(secret_text("auto-open"))
    wait_box(tab, "open", alice)  # R6, and R8: still on A
    wait_unread(tab, bob, 1)
    assert tab.evaluate("document.querySelector('#chat-body').hidden") is False


def test_a_closed_box_stays_closed_and_only_the_badge_changes(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    alice = WirePatient(server.ws_url, room, "Test Patient A")
    keep(alice, tab)
    wait_in_queue(tab, alice)
    open_chat(tab, alice)
    tab.click("[data-chat-box] [data-action=close]")
    wait_box(tab, "closed", None)
    text = secret_text("closed box")
    alice.send(text)
    wait_unread(tab, alice, 1)
    assert box(tab) == ("closed", "")  # R7
    assert text not in tab.html()
    # Notifications are on in a new room, and this browser has not granted the Notification API:
    # the page says it itself.
    tab.wait_for(f"!!document.querySelector('[data-notification][data-patient=\"{alice.id}\"]')",
                 "the in-page notification")


def test_an_open_box_stays_on_the_first_patient_when_another_writes(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    alice = WirePatient(server.ws_url, room, "Test Patient A")
    bob = WirePatient(server.ws_url, room, "Test Patient B")
    keep(alice, bob, tab)
    wait_in_queue(tab, alice, bob)
    open_chat(tab, alice)
    text = secret_text("from B")
    bob.send(text)
    wait_unread(tab, bob, 1)
    assert box(tab) == ("open", alice.id)  # R8
    assert unread(tab, alice) == "0"
    assert text not in tab.html()
    assert text not in tab.evaluate("window.queuechatConsole.snapshot()")  # not shown: not kept either


# --------------------------------------------------------------------------- R9, R10


def test_after_the_patient_leaves_sending_is_disabled_and_the_notice_shows(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    alice = WirePatient(server.ws_url, room, "Test Patient A")
    keep(alice, tab)
    wait_in_queue(tab, alice)
    open_chat(tab, alice)
    assert tab.evaluate("document.querySelector('[data-action=send]').disabled") is False
    assert tab.evaluate("document.querySelector('[data-notice=patient-left]').hidden") is True
    alice.leave()
    tab.wait_for("document.querySelector('[data-chat-box]').dataset.patientPresent === 'false'",
                 "the box to say the patient has left")
    assert box(tab) == ("open", alice.id)
    assert tab.evaluate("document.querySelector('[data-action=send]').disabled") is True
    assert tab.evaluate("document.querySelector('#send-text').disabled") is True
    notice = tab.evaluate("(() => { const n = document.querySelector('[data-notice=patient-left]');"
                          " return n.hidden ? '' : n.textContent; })()")
    assert "has left" in notice and "no longer send" in notice
    assert tab.count(f"#queue {entry(alice)}") == 0


def test_with_notifications_off_no_notification_is_raised(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room, stub_notifications=True)
    alice = WirePatient(server.ws_url, room, "Test Patient A")
    keep(alice, tab)
    wait_in_queue(tab, alice)
    assert tab.evaluate("document.querySelector('[data-setting=chat-notifications]').checked") is True
    alice.send(secret_text("notified"))
    tab.wait_for("window.__notifications.length === 1", "a notification while notifications are on")
    assert tab.evaluate("window.__notifications[0].tag") == alice.id
    assert secret_text("x")[:20] not in json.dumps(tab.evaluate("window.__notifications"))

    tab.click("[data-action=settings]")
    tab.click("[data-setting=chat-notifications]")
    tab.wait_for("JSON.parse(window.queuechatConsole.snapshot()).notifications === false",
                 "the setting to be saved")
    alice.send(secret_text("silent"))
    wait_unread(tab, alice, 2)
    # Barrier: turned back on, the next message notifies; the one in between must not have.
    tab.click("[data-setting=chat-notifications]")
    tab.wait_for("JSON.parse(window.queuechatConsole.snapshot()).notifications === true",
                 "the setting on")
    alice.send(secret_text("notified again"))
    wait_unread(tab, alice, 3)
    tab.wait_for("window.__notifications.length >= 2", "the notification after turning them on again")
    assert tab.evaluate("window.__notifications.length") == 2
    assert tab.count("[data-notification]") == 0  # granted: none in the page either


# --------------------------------------------------------------------------- R11, R12: the four triggers


def departed_in_view(tab: Tab, server: RunningServer, room: str) -> tuple[WirePatient, str]:
    """A patient writes, their chat is opened and shows the text, then they leave: kept while in view."""
    alice = WirePatient(server.ws_url, room, "Test Patient A")
    wait_in_queue(tab, alice)
    text = secret_text("erase")
    alice.send(text)
    wait_unread(tab, alice, 1)
    open_chat(tab, alice)
    wait_text_shown(tab, text)
    alice.leave()
    tab.wait_for("document.querySelector('[data-chat-box]').dataset.patientPresent === 'false'", "left")
    assert text in tab.html()  # R11: still readable while the box shows it
    return alice, text


def test_closing_the_box_erases_the_departed_patients_conversation(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    alice, text = departed_in_view(tab, server, room)
    keep(alice, tab)
    assert text in tab.evaluate("window.queuechatConsole.snapshot()")
    assert text in tab.heap_strings()  # control: the heap check sees text that is there
    tab.click("[data-chat-box] [data-action=close]")
    tab.wait_for("!!document.querySelector('[data-erased=chat_closed]')", "the erasure notice")
    wait_box(tab, "closed", None)
    assert tab.count("[data-message-id]") == 0
    assert_forgotten(tab, text)


def test_viewing_another_patients_chat_erases_the_departed_patients_conversation(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    bob = WirePatient(server.ws_url, room, "Test Patient B")
    alice, text = departed_in_view(tab, server, room)
    keep(alice, bob, tab)
    open_chat(tab, bob)
    tab.wait_for("!!document.querySelector('[data-erased=viewed_other]')", "the erasure notice")
    assert_forgotten(tab, text)


def test_starting_another_call_erases_the_departed_patients_conversation(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    bob = WirePatient(server.ws_url, room, "Test Patient B")
    alice, text = departed_in_view(tab, server, room)
    keep(alice, bob, tab)
    tab.click(f"{entry(bob)} [data-action=menu]")
    tab.click("#info [data-action=start-call]")
    tab.wait_for("!!document.querySelector('[data-erased=call_started]')", "the erasure notice")
    wait_box(tab, "closed", None)
    assert tab.attr("#call-status", "data-call") == "in_call"
    assert tab.attr("[data-provider-status]", "data-provider-status") == "on_call"
    assert "no audio or video" in tab.evaluate("document.querySelector('#call-bar').textContent")
    assert_forgotten(tab, text)


def test_refreshing_the_page_erases_every_conversation(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    alice = WirePatient(server.ws_url, room, "Test Patient A")
    keep(alice, tab)
    wait_in_queue(tab, alice)
    text = secret_text("refresh")
    alice.send(text)
    open_chat(tab, alice)
    wait_text_shown(tab, text)
    tab.reload()
    tab.wait_for("document.body.dataset.connection === 'open'", "the console to reconnect")
    wait_in_queue(tab, alice)  # the queue stays (R12)
    assert box(tab) == ("closed", "")
    assert_forgotten(tab, text)
    open_chat(tab, alice)  # the present patient's conversation was erased too: ids go on
    assert tab.count("#messages [data-message-id]") == 0
    alice.send(secret_text("after refresh"))
    tab.wait_for("document.querySelector('#messages [data-message-id]')?.dataset.messageId === '2'",
                 "the next message, id 2")


# --------------------------------------------------------------------------- origin, keyboard, patient page


def test_the_console_asks_nothing_outside_its_origin_and_the_token_stays_in_the_fragment(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    token = clinician_token(DEVELOPMENT_SECRET, room)
    tab = open_console(browser, server, room)
    keep(tab)
    origin_ws = server.http_url.replace("http://", "ws://")
    urls = tab.requested_urls()
    assert urls, "no request seen"
    assert all(url.startswith((server.http_url + "/", origin_ws + "/")) for url in urls), urls
    assert f"{origin_ws}/v1/ws" in urls
    assert not any(token in url for url in urls)
    assert not any(token in json.dumps(headers) for headers in tab.request_headers())
    # The CSP refuses an outside address (control: the same fetch to this origin works).
    outside = tab.evaluate("fetch('http://127.0.0.2:9/x').then(() => 'fetched', () => 'refused')")
    inside = tab.evaluate("fetch('/static/style.css').then(r => String(r.status), () => 'refused')")
    assert (outside, inside) == ("refused", "200")
    assert token not in server.log.read_text()
    assert_no_storage(tab)


def test_the_queue_and_chat_work_from_the_keyboard(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    tab = open_console(browser, server, room)
    alice = WirePatient(server.ws_url, room, "Test Patient A")
    keep(alice, tab)
    wait_in_queue(tab, alice)
    tab.evaluate(f"document.querySelector('{entry(alice)} [data-action=menu]').focus()")
    tab.press("Enter", "Enter", 13)
    tab.wait_for("document.activeElement?.id === 'info-chat'", "focus on the Chat button")
    tab.press("Enter", "Enter", 13)
    wait_box(tab, "open", alice)
    tab.wait_for("document.activeElement?.id === 'send-text'", "focus in the message field")
    tab.evaluate("document.execCommand('insertText', false, 'Sample reply text')")
    tab.press("Enter", "Enter", 13)
    got = alice.ws.recv()
    while json.loads(got).get("type") != "message":
        got = alice.ws.recv()
    assert json.loads(got)["text"] == "Sample reply text"
    tab.wait_for("document.querySelectorAll('#messages [data-from=clinician]').length === 1",
                 "the reply shown")


def test_the_patient_page_checks_in_and_follows_status_chat_rule_and_call(
        browser: Browser, server: RunningServer, keep: Keep) -> None:
    room = new_room()
    console = open_console(browser, server, room)
    patient = browser.open(f"{server.http_url}/patient#room={room}")
    keep(patient, console)
    patient.evaluate("document.querySelector('#name').value = 'Test Patient P'")
    patient.click("[data-action=check-in]")
    patient.wait_for("document.querySelector('[data-position]').dataset.position === '1'", "place 1")
    assert patient.attr("#provider", "data-provider-status") == "online"
    console.wait_for("document.querySelectorAll('#queue [data-patient]').length === 1", "the patient")
    pid = console.evaluate("document.querySelector('#queue [data-patient]').dataset.patient")
    # R31 off: the page disables the chat and says why.
    console.click("[data-action=settings]")
    console.click("[data-setting=patient-initiated-chat]")
    patient.wait_for("document.querySelector('#chat').dataset.chatAllowed === 'false'", "chat disabled")
    assert patient.evaluate("document.querySelector('[data-notice=chat-disabled]').hidden") is False
    # A call: the patient sees it start (and may write), then end.
    console.click(f'#queue [data-patient="{pid}"] [data-action=menu]')
    console.click("#info [data-action=start-call]")
    patient.wait_for("document.querySelector('#call').dataset.call === 'started'", "the call started")
    assert patient.evaluate("document.querySelector('#chat').dataset.chatAllowed") == "true"
    assert patient.attr("#provider", "data-provider-status") == "on_call"
    patient.evaluate("document.querySelector('#send-text').value = 'Sample question text'")
    patient.click("[data-action=send]")
    console.wait_for(f"document.querySelector('#queue [data-patient=\"{pid}\"] [data-unread]')"
                     ".dataset.unread === '1'", "the badge")
    console.click("[data-action=end-call]")
    patient.wait_for("document.querySelector('#call').dataset.call === 'ended'", "the call ended")
    patient.wait_for("document.body.dataset.stage === 'left'", "the page to show the patient has left")
    console.wait_for("document.querySelectorAll('#queue [data-patient]').length === 0", "the queue empty")
    assert_no_storage(patient)


def test_screenshots_of_each_box_state_and_the_patient_page(
        browser: Browser, server: RunningServer, tmp_path: Path) -> None:
    shots = Path(os.environ.get("QUEUECHAT_SCREENSHOTS") or tmp_path)
    room = "demo-room" if os.environ.get("QUEUECHAT_SCREENSHOTS") else new_room()
    tab = open_console(browser, server, room)
    alice = WirePatient(server.ws_url, room, "Test Patient A")
    bob = WirePatient(server.ws_url, room, "Test Patient B")
    carol = WirePatient(server.ws_url, room, "Test Patient C")
    patient = browser.open(f"{server.http_url}/patient#room={room}&name=Test%20Patient%20D")
    try:
        wait_in_queue(tab, alice, bob, carol)
        alice.send("Sample question text")
        for _ in range(3):
            bob.send("Another sample text")
        wait_unread(tab, bob, 3)
        open_chat(tab, alice)
        tab.evaluate("document.querySelector('#send-text').value = 'Sample reply text'")
        tab.click("[data-action=send]")
        tab.wait_for("document.querySelectorAll('#messages [data-message-id]').length === 2", "two messages")
        sizes = []
        sizes.append(png_size(tab.screenshot(shots / "console-open.png")))
        tab.click("[data-chat-box] [data-action=minimize]")
        wait_box(tab, "minimized", alice)
        sizes.append(png_size(tab.screenshot(shots / "console-minimized.png")))
        tab.click("[data-chat-box] [data-action=close]")
        wait_box(tab, "closed", None)
        sizes.append(png_size(tab.screenshot(shots / "console-closed.png")))
        patient.click("[data-action=check-in]")
        patient.wait_for("document.querySelector('[data-position]').dataset.position === '4'", "place 4")
        sizes.append(png_size(patient.screenshot(shots / "patient.png")))
        assert sizes == [(1280, 800)] * 4
        assert len({(shots / name).read_bytes() for name in ("console-open.png", "console-minimized.png",
                                                             "console-closed.png")}) == 3
    finally:
        for one in (alice, bob, carol):
            one.close()
        patient.close()
        tab.close()


# --------------------------------------------------------------------------- another server


def test_the_console_depends_on_the_contract_only_against_the_second_server(browser: Browser) -> None:
    """The same pages against tests/support's second server, which takes every freedom the other way
    (no ref on welcome, ids of another shape, fragmented frames, extra frames): the article's rules
    still show. The browser answers the page requests itself, as the reference server would."""
    from tests.support import DEV_SECRET
    from tests.support import clinician_token as token_of
    from tests.support.processes import second_server

    with second_server() as ws_url:
        origin = ws_url.removesuffix("/v1/ws").replace("ws://", "http://")
        room = new_room()
        link = f"{origin}/console#room={room}&token={token_of(DEV_SECRET, room)}"
        tab = browser.open(link, pages_for=origin)
        alice = WirePatient(ws_url, room, "Test Patient A")
        bob = WirePatient(ws_url, room, "Test Patient B")
        try:
            tab.wait_for("document.body.dataset.connection === 'open'", "the console to connect")
            wait_in_queue(tab, alice, bob)
            first, second = secret_text("second server 1"), secret_text("second server 2")
            alice.send(first)
            alice.send(second)
            wait_unread(tab, alice, 2)  # R3
            open_chat(tab, alice)
            wait_unread(tab, alice, 0)
            wait_text_shown(tab, first)
            wait_text_shown(tab, second)
            bob.send(secret_text("second server B"))
            wait_unread(tab, bob, 1)  # R8
            assert box(tab) == ("open", alice.id)
            tab.click("[data-chat-box] [data-action=minimize]")
            wait_box(tab, "minimized", alice)
            bob.send(secret_text("second server B again"))
            wait_box(tab, "open", alice)  # R6
            wait_unread(tab, bob, 2)
            alice.leave()
            tab.wait_for("document.querySelector('[data-chat-box]').dataset.patientPresent === 'false'",
                         "the box to say the patient has left")
            assert tab.evaluate("document.querySelector('[data-action=send]').disabled") is True  # R9
            tab.click("[data-chat-box] [data-action=close]")
            tab.wait_for("!!document.querySelector('[data-erased=chat_closed]')", "the erasure notice")
            assert_forgotten(tab, first)
            assert_forgotten(tab, second)
            assert all(url.startswith((origin + "/", ws_url)) for url in tab.requested_urls())
        finally:
            alice.close()
            bob.close()
            tab.close()
