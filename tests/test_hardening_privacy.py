"""Privacy audit (R11-R13): after each erasure trigger, nothing of the text or the name is left.

The server runs in a process of its own (``tests/support/server_runner.py``), started
in a fresh working directory with its log at debug level captured to a file. The test
holds the markers: unique texts and names (``QCMK`` + 24 hex digits). It passes the
server only their SHA-256 hashes; the server walks every object reachable from the
garbage collector's roots (``gc.get_objects()``, modules, every thread's frames, and
``gc.get_referents`` recursively, which reaches strings and bytes that the collector
does not track) and says which hashes it found. Then its whole log output, its stdout
and every file it opened for writing are searched here, in the clear.

Each test has its positive controls: before the trigger the departing patient's
markers are found; after it, a present patient's name (and, where nothing erased it,
their conversation) still is.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reference_server.protocol import DEVELOPMENT_SECRET, clinician_token
from tests.support.rawws import SyncClient
from tests.support.server_process import ServerProcess

PREFIX = "QCMK"


def marker() -> str:
    return PREFIX + secrets.token_hex(12)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Audit:
    """A server process, its clients, and the markers they used."""

    def __init__(self, server: ServerProcess, every_marker: list[str]) -> None:
        self.server = server
        self.clients: list[SyncClient] = []
        self.markers: dict[str, str] = {}  # label -> marker
        self.every_marker = every_marker  # all the module's, for the log and file search at the end
        self.wait_connections(0)

    def mark(self, label: str) -> str:
        self.markers[label] = marker()
        self.every_marker.append(self.markers[label])
        return self.markers[label]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.wait_connections(0)

    def connect(self) -> SyncClient:
        client = SyncClient(self.server.url)
        self.clients.append(client)
        return client

    def clinician(self, room: str) -> SyncClient:
        client = self.connect()
        client.hello({"type": "hello", "role": "clinician", "room": room,
                      "token": clinician_token(DEVELOPMENT_SECRET, room)})
        return client

    def patient(self, room: str, name: str) -> tuple[SyncClient, str]:
        client = self.connect()
        welcome = client.hello({"type": "hello", "role": "patient", "room": room, "name": name})
        return client, str(welcome["patient"])

    def wait_connections(self, n: int) -> None:
        """Bounded poll until the server has ``n`` connections (a closed one has been torn down)."""
        for _ in range(500):
            if self.server.stats(heavy=False)["connections_open"] == n:
                return
            time.sleep(0.01)
        raise AssertionError(f"the server did not get to {n} connections")

    def found(self, trace: bool = False) -> dict[str, list[str]]:
        """label -> kinds of object the marker was found in (empty: not in the server's memory);
        with ``trace``, also how each was reached (type and function names only)."""
        answer = self.server.search(PREFIX, [digest(m) for m in self.markers.values()], trace=trace)
        by_hash = answer["found"]
        chains = answer.get("chains", {})
        out = {}
        for label, m in self.markers.items():
            kinds = by_hash[digest(m)]
            out[label] = kinds + [" <- ".join(c[:8]) for c in chains.get(digest(m), [])] if kinds else []
        return out

    def assert_gone(self, labels: list[str]) -> dict[str, list[str]]:
        """Fail (with how each was reached) if any of ``labels`` is found; return all findings."""
        found = self.found()
        if any(found[label] for label in labels):
            traced = self.found(trace=True)
            left = {label: traced[label] for label in labels if traced[label]}
            raise AssertionError(f"still in the server's memory after erasure: {left}")
        return found


@pytest.fixture(scope="module")
def audit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[str]]]:
    """One server process for the module (in a fresh directory, debug log captured); at the end its
    whole log output, stdout and every file it opened for writing are searched for every marker."""
    workdir = tmp_path_factory.mktemp("audit") / "server"
    server = ServerProcess(log_level="debug", workdir=workdir)
    every_marker: list[str] = []
    with server:
        yield server, every_marker
        written = server.written()
    assert server.stderr_path is not None and server.stdout_path is not None
    log = server.stderr_path.read_bytes() + server.stdout_path.read_bytes()
    assert b"connection.closed" in log and b"session.patient_checked_in" in log  # the log was captured
    files = [Path(p) for p in written if Path(p).is_file()] + [p for p in workdir.rglob("*") if p.is_file()]
    assert every_marker
    for m in every_marker:
        assert m.encode() not in log, "a marker is in the server's log"
        for path in files:
            assert m.encode() not in path.read_bytes(), f"a marker is in {path}"


def side(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("type") == kind]


TRIGGERS = ["chat_closed", "viewed_other", "call_started", "refresh_drop", "refresh_replace", "not_in_view"]


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_R13_after_each_erasure_nothing_of_text_or_name_is_in_memory_logs_or_files(
    audit_server: tuple[ServerProcess, list[str]], trigger: str
) -> None:
    room = f"audit-{trigger.replace('_', '-')}"
    server, every_marker = audit_server
    audit = Audit(server, every_marker)
    clinician = audit.clinician(room)
    # The patient who will depart, and one who stays (the control).
    leaving, leaving_id = audit.patient(room, audit.mark("leaving name"))
    staying, staying_id = audit.patient(room, audit.mark("staying name"))
    leaving.ok({"type": "send", "text": f"my symptoms are {audit.mark('leaving text')} since monday"})
    staying.ok({"type": "send", "text": audit.mark("staying text")})  # its last frame: kept in no buffer
    clinician.barrier()
    in_view = trigger != "not_in_view"
    if in_view:
        clinician.ok({"type": "open_chat", "patient": leaving_id})
        clinician.ok({"type": "send", "patient": leaving_id, "text": audit.mark("reply to leaving")})
        assert side([leaving.recv_json()], "message")
    clinician.ok({"type": "send", "patient": staying_id, "text": audit.mark("reply to staying")})
    assert side([staying.recv_json()], "message")
    if not in_view:
        before_departure = audit.found()
        assert all(before_departure[label] for label in audit.markers), before_departure  # positive control
    leaving.ok({"type": "leave"})
    assert leaving.expect_close()[0] == 1000
    leaving.close()
    audit.wait_connections(2)  # the clinician and the staying patient: the leaving one is torn down
    assert staying.recv_json() == {"type": "position", "position": 1}
    events = clinician.barrier()
    if in_view:
        assert [f["type"] for f in events] == ["patient_left", "chat_box"]
        # The positive control: departed, still in the box (R11), the conversation is kept,
        # and the search finds every marker.
        kept = audit.found()
        assert all(kept[label] for label in audit.markers), kept
    else:
        assert [f["type"] for f in events] == ["patient_left", "erased"]
        assert events[1]["reason"] == "not_in_view"

    # The trigger.
    if trigger == "chat_closed":
        erased = side(clinician.ok({"type": "close_chat"})[0], "erased")
    elif trigger == "viewed_other":
        erased = side(clinician.ok({"type": "open_chat", "patient": staying_id})[0], "erased")
    elif trigger == "call_started":
        erased = side(clinician.ok({"type": "start_call", "patient": staying_id})[0], "erased")
        assert staying.recv_json() == {"type": "call", "state": "started"}
    elif trigger == "refresh_drop":
        clinician.close()
        assert staying.recv_json() == {"type": "provider_status", "status": "away"}
        erased = [{"reason": "refresh"}]
    elif trigger == "refresh_replace":
        audit.clinician(room)
        code, frames = clinician.expect_close()
        assert code == 4000
        erased = side(frames, "erased")
        clinician.close()
    else:
        erased = events[1:]
    expected_reason = {"refresh_drop": "refresh", "refresh_replace": "refresh"}.get(trigger, trigger)
    assert erased and erased[0]["reason"] == expected_reason
    audit.wait_connections(2 if trigger != "refresh_drop" else 1)

    gone = [label for label in ("leaving name", "leaving text", "reply to leaving") if label in audit.markers]
    if trigger.startswith("refresh"):
        gone += ["staying text", "reply to staying"]  # R12: present patients' conversations too
    after = audit.assert_gone(gone)
    # Positive controls after the trigger: the present patient's name, and what was not erased.
    assert after["staying name"]
    if not trigger.startswith("refresh"):
        assert after["staying text"] and after["reply to staying"]
    audit.close()


def test_R13_a_departed_patient_never_in_view_leaves_nothing_even_with_no_clinician(
    audit_server: tuple[ServerProcess, list[str]],
) -> None:
    """Written while no clinician was connected (kept for later, R12), never opened, then gone."""
    server, every_marker = audit_server
    audit = Audit(server, every_marker)
    patient, _ = audit.patient("nobody-home", audit.mark("name"))
    for i in range(3):
        patient.ok({"type": "send", "text": audit.mark(f"text {i}")})
    before = audit.found()
    assert all(before.values()), before  # positive control: kept while present
    patient.close()  # the connection just drops: departed, disconnected
    audit.wait_connections(0)
    audit.assert_gone(list(audit.markers))
