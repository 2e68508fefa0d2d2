"""Transport: hello first, one answer per request with its ``ref``, ``ping`` as barrier, 1007, check order."""

from __future__ import annotations

from .._context import CaseContext
from .._expect import error, message, ok, send_ok
from .._patterns import OPTIONAL, close
from .._registry import group

case = group("transport")


@case(
    "transport.hello-required-first",
    "The first frame must be hello: anything else answers hello_required and closes with 1008",
)
async def hello_required_first(t: CaseContext) -> None:
    """Three fresh connections send, as their first frame, a ping, text that is not JSON, and a JSON
    array; each is answered error{hello_required} and closed with 1008."""
    x = await t.connect("X")
    await t.request(
        x,
        {"type": "ping"},
        ref=False,
        answer={**error("hello_required"), "ref": OPTIONAL},
        close=1008,
        title="X sends ping before hello",
    )
    y = await t.connect("Y")
    await t.request(
        y,
        {},
        raw="this is not JSON",
        ref=False,
        answer=error("hello_required"),
        close=1008,
        title="Y sends text that is not JSON before hello",
    )
    z = await t.connect("Z")
    await t.request(
        z,
        {},
        raw="[1, 2]",
        ref=False,
        answer=error("hello_required"),
        close=1008,
        title="Z sends a JSON array before hello",
    )


@case(
    "transport.ref-echoed",
    "Every answer carries the request's ref (any string of up to 64 characters); without a ref, none",
    checks=("R40",),
)
async def ref_echoed(t: CaseContext) -> None:
    """On a fresh console (box closed) C closes the box with a 64-character ref with non-ASCII characters,
    then without a ref, then sends open_chat for an unknown id with a ref: ok with the ref, ok without one,
    and error{not_found} with the ref."""
    (c,) = await t.setup()
    long_ref = ("Ω-ref-" * 11)[:64]
    await t.request(c, {"type": "close_chat"}, ref=long_ref, answer=ok(),
                    title="C closes the closed box with a 64-character ref")
    await t.request(c, {"type": "close_chat"}, ref=False, answer=ok(),
                    title="C closes the closed box without a ref")
    await t.request(
        c,
        {"type": "open_chat", "patient": "no-such-patient-id"},
        answer=error("not_found"),
        title="C opens a chat with an unknown id, with a ref",
    )


@case(
    "transport.ping-barrier",
    "ping is answered ok after every frame the connection's earlier requests caused, and does nothing else",
    checks=("R1",),
)
async def ping_barrier(t: CaseContext) -> None:
    """C sends three messages to A and a ping without waiting for answers: C receives the three ok
    (ids 1, 2, 3) and then the ping's ok; A receives the three messages, in order."""
    c, a = await t.setup("A")
    refs = [t.ref(c) for _ in range(4)]
    texts = [t.text() for _ in range(3)]
    frames = [{"type": "send", "patient": a.pid, "text": texts[i], "ref": refs[i]} for i in range(3)]
    frames.append({"type": "ping", "ref": refs[3]})
    await t.pipeline(
        c,
        frames,
        own=[{**send_ok(i + 1), "ref": refs[i]} for i in range(3)] + [{**ok(), "ref": refs[3]}],
        events={a: [message(a, i + 1, "clinician", texts[i]) for i in range(3)]},
        title="C sends three messages and a ping without waiting",
    )


@case(
    "transport.second-hello-forbidden",
    "A second hello on a welcomed connection answers forbidden and the connection stays open",
)
async def second_hello_forbidden(t: CaseContext) -> None:
    """C and A, welcomed, each send hello again: error{forbidden}; both then ping and get ok."""
    c, a = await t.setup("A")
    room = c.welcome.get("room", "")
    await t.request(
        c,
        {"type": "hello", "role": "clinician", "room": room, "token": t.token(room)},
        answer=error("forbidden"),
        title="C says hello a second time",
    )
    await t.request(
        a,
        {"type": "hello", "role": "patient", "room": room, "name": t.name("A")},
        answer=error("forbidden"),
        title="A says hello a second time",
    )
    await t.still_works(c, "C still works")
    await t.still_works(a, "A still works")


@case("transport.unknown-fields-ignored", "Unknown fields in a request are ignored", checks=("R1",))
async def unknown_fields_ignored(t: CaseContext) -> None:
    """C closes its (closed) box with an extra nested field, then writes to A with an extra field: ok, and
    A gets the message as usual."""
    c, a = await t.setup("A")
    await t.request(
        c, {"type": "close_chat", "extra": {"nested": [1, 2]}}, answer=ok(),
        title="C closes the closed box, with an unknown field",
    )
    text = t.text()
    await t.request(
        c,
        {"type": "send", "patient": a.pid, "text": text, "priority": "high"},
        answer=send_ok(1),
        events={a: [message(a, 1, "clinician", text)]},
        title="C writes to A with an unknown field",
    )


@case("transport.invalid-utf8-1007", "A text frame that is not valid UTF-8 is closed with 1007")
async def invalid_utf8(t: CaseContext) -> None:
    """A patient, welcomed, sends a text frame whose payload is not UTF-8: the server closes with 1007."""
    room = t.room()
    raw = await t.connect_raw("A")
    await raw.send_text({"type": "hello", "role": "patient", "room": room, "name": t.name("A")})
    welcome = await raw.next(t.env.answer_timeout_s)
    t.check_frames("A says hello (raw WebSocket client)", "A", [{"type": "welcome"}], [welcome])
    await raw.send_frame(0x1, b'{"type":"ping","ref":"\xff\xfe"}', logged={"(text frame, not UTF-8)": 27})
    seen = []
    for _ in range(8):
        frame = await raw.next(t.env.answer_timeout_s)
        seen.append(frame)
        if frame["type"] == "(close)":
            break
    t.check_frames("A sends a text frame that is not UTF-8", "A", [close(1007)], seen)


@case(
    "transport.check-order",
    "Checks apply in the contract's order: unknown_type before invalid, "
    "forbidden before invalid, invalid before the state errors",
    checks=("R40",),
)
async def check_order(t: CaseContext) -> None:
    """C sends an unknown type with a bad ref (unknown_type), and a send to an unknown id with an empty
    text (invalid, field text, not not_found); A sends open_chat with a bad patient (forbidden)."""
    c, a = await t.setup("A")
    await t.request(
        c,
        {"type": "no_such_request", "ref": 12},
        ref=False,
        answer={**error("unknown_type"), "ref": OPTIONAL},
        title="C: unknown type with a ref that is not a string",
    )
    await t.request(
        c,
        {"type": "send", "patient": "no-such-patient-id", "text": ""},
        answer=error("invalid", "text"),
        title="C: send to an unknown id with an empty text",
    )
    await t.request(
        a,
        {"type": "open_chat", "patient": 5},
        answer=error("forbidden"),
        title="A: open_chat (a clinician's request) with a patient that is not a string",
    )
