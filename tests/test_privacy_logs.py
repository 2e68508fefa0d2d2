"""R13 for logs: a whole chat session over the wire, logged at DEBUG (the project's structured log and
the standard library's root logger, where trio-websocket writes), carries ids and reasons but never a
message text or a patient name.

Every text and name in the session carries a marker of its own (uuid4-based); the test looks for
every marker, and for pieces of it (a log that shortens a text would still leak its start), in all
captured output. Failures name the marker's label, never the marker.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
import trio
from conftest import StartServer
from test_shell import RawClient, expect_close
from wire import WireClient, frame_types

from reference_server._logging import configure_logging
from reference_server.protocol import Limits

LIMITS = Limits(max_text_chars=64, max_frame_bytes=4096)


@dataclass
class Markers:
    """Unique strings put into texts and names, by label."""

    by_label: dict[str, str] = field(default_factory=dict)

    def new(self, label: str) -> str:
        marker = uuid.uuid4().hex
        self.by_label[label] = marker
        return marker

    def found_in(self, output: str) -> list[str]:
        """Labels of markers that appear in ``output``, whole or as a 12-character piece."""
        found = []
        for label, marker in self.by_label.items():
            pieces = [marker[i:i + 12] for i in range(0, len(marker) - 11, 10)]
            if any(piece in output for piece in pieces):
                found.append(label)
        return found


@dataclass
class Captured:
    structured: io.StringIO
    stdlib: io.StringIO

    def structured_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.structured.getvalue().splitlines() if line.strip()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    """Both logs at DEBUG into memory; the previous configuration is restored afterwards."""
    saved = structlog.get_config()
    structured, stdlib = io.StringIO(), io.StringIO()
    configure_logging("debug", stream=structured)
    root = logging.getLogger()
    handler = logging.StreamHandler(stdlib)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield Captured(structured=structured, stdlib=stdlib)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        structlog.configure(**saved)


def same(a: object, b: object) -> bool:
    """Equality whose failure shows no value (the values are texts)."""
    return a == b


async def test_R13_no_text_or_name_reaches_any_log(
    start_server: StartServer, room: str, captured: Captured, capfd: pytest.CaptureFixture[str],
) -> None:
    """Messages both ways, open_chat, every erasure reason, errors quoting texts and names, leave,
    disconnect, a clinician replaced: the logs carry the ids and reasons, and none of the texts or names."""
    live = await start_server(LIMITS)
    m = Markers()
    patients: dict[str, str] = {}  # label -> patient id
    erasures: set[tuple[str, str]] = set()  # (patient id, reason) seen by a clinician

    def note(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
        erasures.update((f["patient"], f["reason"]) for f in frames if f["type"] == "erased")
        return frames

    async def joined(clinician: WireClient, label: str, patient: WireClient) -> None:
        patients[label] = patient.patient_id
        frame = await clinician.recv()
        assert frame["type"] == "patient_joined" and frame["patient"] == patient.patient_id

    async with live.clinician(room) as c1:
        # --- A: messages both ways, open_chat, errors that carry texts and names, leave
        async with live.patient(room, name=f"Ann {m.new('name A')}") as a:
            await joined(c1, "A", a)
            text_a1 = f"sore throat {m.new('text A1')}"
            await a.ok({"type": "send", "text": text_a1})
            assert frame_types(await c1.barrier()) == ["message", "unread", "notify"]
            _, opened = await c1.ok({"type": "open_chat", "patient": patients["A"]})
            assert same([msg["text"] for msg in opened["messages"]], [text_a1]), "open_chat lost the text"
            await c1.ok({"type": "send", "patient": patients["A"], "text": f"reply {m.new('text C1')}"})
            assert frame_types(await a.barrier()) == ["message"]

            await a.error({"type": "send", "text": m.new("too large text") * 3}, "too_large")
            bad_ts = {"type": "send", "patient": patients["A"], "text": f"x {m.new('text with bad ts')}",
                      "client_ts": m.new("client_ts")}
            await c1.error(bad_ts, "invalid")
            await c1.error({"type": m.new("type")}, "unknown_type")
            await c1.error({"type": "send", "patient": m.new("patient id"), "text": f"y {m.new('text nf')}"},
                           "not_found")
            await c1.send({"type": "ping", "ref": m.new("ref") * 3})  # a ref over 64 characters
            error = await c1.recv()
            assert error["type"] == "error" and error["code"] == "invalid" and error["field"] == "ref"
            await c1.send_raw(f"not json {m.new('bad frame')}")
            assert (await c1.recv())["code"] == "bad_frame"
            trailing_junk = json.dumps({"type": "send", "patient": patients["A"], "text": m.new("text junk")})
            await c1.send_raw(trailing_junk + m.new("junk"))
            assert (await c1.recv())["code"] == "bad_frame"

            async with live.connect() as bad:  # a name over 64 characters
                await bad.send({"type": "hello", "role": "patient", "room": room,
                                "name": "N" * 40 + m.new("long name")})
                code, frames = await expect_close(bad)
                assert code == 1008 and frames[0]["code"] == "invalid" and frames[0]["field"] == "name"
            async with live.connect() as bad:  # a wrong token
                await bad.send({"type": "hello", "role": "clinician", "room": room, "token": m.new("token")})
                code, frames = await expect_close(bad)
                assert code == 1008 and frames[0]["code"] == "unauthorized"
            async with live.connect() as bad:  # a first frame that is not hello
                await bad.send({"type": "send", "text": f"early {m.new('text before hello')}"})
                code, frames = await expect_close(bad)
                assert code == 1008 and frames[0]["code"] == "hello_required"
            async with live.patient(room, name=f"Big {m.new('name big frame')}") as big:
                await joined(c1, "big", big)
                await big.send({"type": "send", "text": m.new("text in a big frame") * 200})  # > 4096 bytes
                code, _ = await expect_close(big)
                assert code == 1009
            async with RawClient.open(live.url) as raw:  # a text frame that is not UTF-8
                await raw.handshake(live.url)
                await raw.send_json({"type": "hello", "role": "patient", "room": room,
                                     "name": f"Raw {m.new('name raw')}"})
                payload = json.dumps({"type": "send", "text": f"z {m.new('text not utf8')}"}).encode()
                await raw.send_frame(0x1, payload[:-2] + b"\xff\xfe" + payload[-2:])
                with trio.fail_after(5):
                    code, _ = await raw.recv_until_close()
                assert code == 1007
            note(await c1.barrier())

            await a.ok({"type": "leave"})
            assert (await expect_close(a))[0] == 1000
        events = note(await c1.barrier())
        assert {"type": "patient_left", "patient": patients["A"], "reason": "left"} in events
        note((await c1.ok({"type": "close_chat"}))[0])  # R11 a: chat_closed

        # --- B: disconnects while shown; opening D erases B (viewed_other)
        async with live.patient(room, name=f"Bea {m.new('name B')}") as b:
            await joined(c1, "B", b)
            await b.ok({"type": "send", "text": f"dizzy {m.new('text B1')}"})
            note((await c1.ok({"type": "open_chat", "patient": patients["B"]}))[0])
        note(await c1.barrier())
        async with live.patient(room, name=f"Dan {m.new('name D')}") as d:
            await joined(c1, "D", d)
            note((await c1.ok({"type": "open_chat", "patient": patients["D"]}))[0])  # R11 b: viewed_other

            # --- E: leaves while shown; a call with D erases E (call_started); ending it departs D
            async with live.patient(room, name=f"Eve {m.new('name E')}") as e:
                await joined(c1, "E", e)
                await e.ok({"type": "send", "text": f"fever {m.new('text E1')}"})
                note((await c1.ok({"type": "open_chat", "patient": patients["E"]}))[0])
                await e.ok({"type": "leave"})
                await expect_close(e)
            note(await c1.barrier())
            note((await c1.ok({"type": "start_call", "patient": patients["D"]}))[0])  # R11 c
            await d.ok({"type": "send", "text": f"in call {m.new('text D1')}"})
            note((await c1.ok({"type": "end_call"}))[0])  # D departs, not in view
            await expect_close(d)

        # --- F: shown when a new clinician connection replaces this one (refresh), then disconnects
        async with live.patient(room, name=f"Fay {m.new('name F')}") as f:
            await joined(c1, "F", f)
            await f.ok({"type": "send", "text": f"rash {m.new('text F1')}"})
            note((await c1.ok({"type": "open_chat", "patient": patients["F"]}))[0])
            async with live.clinician(room) as c2:
                code, frames = await expect_close(c1)
                assert code == 4000
                note(frames)  # R12: erased{refresh}
                await f.ok({"type": "send", "text": f"again {m.new('text F2')}"})
                assert frame_types(await c2.barrier()) == ["message", "unread", "notify"]
                await f.aclose()  # disconnect
                note(await c2.barrier())
                note(await c2.barrier())

    await live.server.shutdown()

    # Every erasure reason was exercised (so the script did what it says).
    expected = {
        (patients["A"], "chat_closed"), (patients["B"], "viewed_other"), (patients["E"], "call_started"),
        (patients["D"], "not_in_view"), (patients["F"], "refresh"), (patients["big"], "not_in_view"),
    }
    assert expected <= erasures
    assert len(m.by_label) >= 25

    structured = captured.structured.getvalue()
    stdlib = captured.stdlib.getvalue()
    out, err = capfd.readouterr()
    for where, output in [("structured log", structured), ("stdlib log", stdlib), ("stdout", out),
                          ("stderr", err)]:
        leaked = m.found_in(output)
        assert not leaked, f"the {where} carries {leaked}"

    # The logs are there, and carry ids and reasons.
    assert stdlib.strip(), "trio-websocket logged nothing at DEBUG: the capture is not working"
    lines = captured.structured_lines()
    events = [line["event"] for line in lines]
    for event in ("server.listening", "connection.opened", "connection.closed", "session.clinician_connected",
                  "server.shutting_down"):
        assert event in events, event
    checked_in = {line["patient"] for line in lines if line["event"] == "session.patient_checked_in"}
    assert set(patients.values()) <= checked_in
    assert len(checked_in) == len(patients) + 1  # and the raw client's patient
    logged_erasures = {(line["patient"], line["reason"]) for line in lines
                       if line["event"] == "conversation.erased"}
    assert expected <= logged_erasures
    assert erasures <= logged_erasures
    rooms = {line["room"] for line in lines if line["event"] == "session.clinician_connected"}
    assert rooms == {room}
