"""Seeded generator of hostile frames for ``benchmarks/fuzz.py`` (and its short run in the tests).

Each :class:`Item` is the bytes of one WebSocket message as the client puts it
on the wire (one frame, or several fragments with control frames between
them) and what the contract says must follow:

- ``answer``: one ``ok`` or ``error`` (in order, with the request's ``ref``
  when it had a valid one), and the session goes on (R40);
- ``close``: the connection is closed with ``close_code`` (1007 for a text
  frame that is not UTF-8, 1009 for a frame over ``max_frame_bytes``, 1002 for
  a broken frame).

The payloads are valid requests, valid requests mutated (fields dropped,
retyped, made huge, deeply nested, given lone surrogates or control
characters, unknown fields added), JSON that is not an object, and text that
is not JSON; the transport is varied too (binary frames, fragmentation at
random cuts, even inside a multi-byte character, pings between fragments).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from reference_server import wscodec
from reference_server.wscodec import OP_BINARY, OP_CONTINUATION, OP_PING, OP_TEXT, client_frame

MAX_REF = 64


@dataclass(frozen=True, slots=True)
class Item:
    wire: bytes
    expect: str  # "answer" or "close"
    close_code: int = 0
    ref: str | None = None  # the ref the answer must carry (None: none)
    type: str | None = None  # the request's type when the frame is a JSON object with a string type
    kind: str = ""  # what the generator did, for the report


def expected_ref(text: str) -> tuple[str | None, str | None]:
    """(ref, type) as the server will see them: the ref only if a string of <= 64 chars without surrogates."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    ref = obj.get("ref")
    kind = obj.get("type")
    kind = kind if isinstance(kind, str) else None
    if not isinstance(ref, str) or len(ref) > MAX_REF:
        return None, kind
    try:
        ref.encode("utf-8")
    except UnicodeEncodeError:
        return None, kind
    return ref, kind


_UNICODE = [
    "é", "ß", "€", "你好", "𝄞", "🙂", "\u200b", "\u202e", "\ufeff", "a\u0301", "\x00", "\x1f", "\x7f",
    "\ud7ff", "\ue000", "\uffff", "\U0010ffff",
]
_KEYS = ["type", "ref", "text", "patient", "client_ts", "chat", "patient_initiated_chat", "room", "name",
         "token", "role", "id", "from", "ts", "messages", "__proto__", "constructor", ""]


class FrameGenerator:
    """Frames for one role; ``patient_ids`` are real ids in the room, used now and then."""

    def __init__(self, seed: int, *, max_frame_bytes: int = 65536, closing_rate: float = 0.002) -> None:
        self.rng = random.Random(seed)
        self.max_frame_bytes = max_frame_bytes
        self.closing_rate = closing_rate
        self.leave_rate = 0.002
        self.end_call_rate = 0.01

    # ------------------------------------------------------------------ values

    def text(self, max_len: int = 40) -> str:
        r = self.rng
        choice = r.random()
        if choice < 0.5:
            return "".join(r.choice("abcdefghij XYZ0123") for _ in range(r.randint(1, max_len)))
        if choice < 0.8:
            return "".join(r.choice(_UNICODE) for _ in range(r.randint(1, 8)))
        if choice < 0.9:
            return "x" * r.choice([4096, 4097, 5000, 1])
        return ""

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        choice = r.randrange(14)
        if choice == 0:
            return None
        if choice == 1:
            return r.random() < 0.5
        if choice == 2:
            return r.randint(-(2**63), 2**63)
        if choice == 3:
            return r.choice([0, -1, 2**53, 2**53 + 1, -(2**53) - 1, 10**30, 1.5, -0.0, 1e308, 5e-324])
        if choice == 4:
            return self.text()
        if choice == 5 and depth < 3:
            return [self.value(depth + 1) for _ in range(r.randint(0, 3))]
        if choice == 6 and depth < 3:
            return {self.text(8): self.value(depth + 1) for _ in range(r.randint(0, 3))}
        if choice == 7:
            return "x" * r.randint(60, 70)
        return self.text(12)

    # ------------------------------------------------------------------ requests

    def request(self, role: str, patient_ids: list[str]) -> dict[str, Any]:
        r = self.rng
        pid = r.choice(patient_ids) if patient_ids and r.random() < 0.8 else self.text(22)
        if role == "clinician":
            kinds = ["ping", "send", "send", "open_chat", "minimize_chat", "close_chat", "set_notifications",
                     "set_room", "start_call", "end_call", "hello", "leave"]
        else:
            kinds = ["ping", "send", "send", "send", "leave", "hello", "open_chat"]
        kind = r.choice(kinds)
        if kind == "leave" and role == "patient" and r.random() > self.leave_rate * 20:
            kind = "send"
        if kind == "end_call" and r.random() > self.end_call_rate * 12:
            kind = "ping"
        frame: dict[str, Any] = {"type": kind}
        if kind == "send":
            frame["text"] = self.text()
            if role == "clinician":
                frame["patient"] = pid
            if r.random() < 0.3:
                frame["client_ts"] = r.choice([1767225600000, 1.5, -3, 2**53])
        elif kind in ("open_chat", "start_call"):
            frame["patient"] = pid
        elif kind == "set_notifications":
            frame["chat"] = r.random() < 0.5
        elif kind == "set_room":
            frame["patient_initiated_chat"] = r.random() < 0.5
        elif kind == "hello":
            frame.update(role=role, room="fuzz-room", name="n")
        if r.random() < 0.5:
            frame["ref"] = f"f{r.randrange(10**6)}"
        return frame

    def mutate(self, frame: dict[str, Any]) -> Any:
        r = self.rng
        frame = dict(frame)
        for _ in range(r.randint(1, 3)):
            op = r.randrange(12)
            keys = list(frame)
            if op == 0 and keys:
                del frame[r.choice(keys)]
            elif op == 1 and keys:
                frame[r.choice(keys)] = self.value()
            elif op == 2:
                frame[r.choice(_KEYS) if r.random() < 0.5 else self.text(10)] = self.value()  # unknown fields
            elif op == 3:
                frame["type"] = r.choice([self.text(10), "", "PING", "ping ", 7, None, ["ping"]])
            elif op == 4:
                frame["ref"] = r.choice(["x" * 65, "x" * 64, "", 5, None, ["r"], "\ud800", "r\udfff"])
            elif op == 5 and keys:
                key = r.choice(keys)
                frame[key] = "a\ud800b" if r.random() < 0.5 else "\udc00"  # lone surrogates
            elif op == 6 and keys:
                depth = r.choice([10, 100, 1000, 5000])
                nested: Any = 1
                for _ in range(min(depth, 200)):
                    nested = [nested] if r.random() < 0.5 else {"a": nested}
                frame[r.choice(keys)] = nested if depth <= 200 else "DEEP"
            elif op == 7:
                frame["text"] = self.text()
            elif op == 8:
                return r.choice([[frame], "text", 42, None, True, [], 1e999])
            elif op == 9 and keys:
                frame[r.choice(keys)] = r.choice([10**40, -(10**40), 1e308 * 10, float("nan"), 2**64])
            elif op == 10:
                frame["client_ts"] = r.choice([float("inf"), float("-inf"), "1", [1], {"a": 1}, 2**53 + 1,
                                               True])
            else:
                frame["patient"] = r.choice(["", "x" * 10000, 0, None, "\x00", self.text(22)])
        return frame

    def dumps(self, obj: Any) -> str:
        text = json.dumps(obj, ensure_ascii=self.rng.random() < 0.5, allow_nan=True)
        if "DEEP" in text:
            depth = self.rng.choice([1000, 5000, 20000])
            text = text.replace('"DEEP"', "[" * depth + "]" * depth, 1)
        return text

    def garbage(self) -> str:
        r = self.rng
        choice = r.randrange(10)
        if choice == 0:
            return ""
        if choice == 1:
            return "".join(chr(r.randrange(0x20, 0x7F)) for _ in range(r.randint(1, 60)))
        if choice == 2:
            return '{"type":"ping"' + r.choice(["", ",", ":", "}}", ",]"])
        if choice == 3:
            return "\ufeff" + '{"type":"ping"}'
        if choice == 4:
            return '{"type":"send","text":"a\x01\x02b"}'  # raw control characters: not JSON
        if choice == 5:
            return '{"type":"ping","ref":"a","ref":"b"}'
        if choice == 6:
            return '{"type":"send","text":"x","client_ts":' + "9" * r.choice([20, 400, 5000]) + "}"
        if choice == 7:
            number = r.choice(["NaN", "Infinity", "-Infinity", "1e400"])
            return '{"type":"send","text":"x","client_ts":' + number + "}"
        if choice == 8:
            return "[" * 30000
        return "".join(chr(r.randrange(0, 0x3000)) for _ in range(r.randint(1, 40))).replace("\ud800", "")

    # ------------------------------------------------------------------ transport

    def transport(self, payload: bytes, opcode: int = OP_TEXT) -> bytes:
        r = self.rng
        choice = r.random()
        if choice < 0.8 or len(payload) < 2:
            return client_frame(payload, opcode)
        cuts = sorted({r.randrange(1, len(payload)) for _ in range(r.randint(1, 4))})
        points = [0, *cuts, len(payload)]
        out = []
        for i in range(len(points) - 1):
            part = payload[points[i] : points[i + 1]]
            out.append(client_frame(part, opcode if i == 0 else OP_CONTINUATION, fin=i == len(points) - 2))
            if i < len(points) - 2 and r.random() < 0.3:
                out.append(client_frame(b"fuzz", OP_PING))  # control frames may come between fragments
        return b"".join(out)

    def item(self, role: str, patient_ids: list[str]) -> Item:
        """One message: nearly always answered; now and then one that must close the connection."""
        r = self.rng
        if r.random() < self.closing_rate:
            return self.closing_item()
        choice = r.random()
        if choice < 0.35:
            obj: Any = self.request(role, patient_ids)
            kind = "valid"
        elif choice < 0.85:
            obj = self.mutate(self.request(role, patient_ids))
            kind = "mutated"
        else:
            obj = None
            kind = "garbage"
        text = self.garbage() if obj is None else self.dumps(obj)
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError:  # a raw lone surrogate cannot be UTF-8: send it escaped instead
            text = json.dumps(obj if obj is not None else text, ensure_ascii=True)
            payload = text.encode("utf-8")
        if len(payload) > self.max_frame_bytes:
            return Item(self.transport(payload), "close", 1009, kind="oversized")
        ref, frame_type = expected_ref(text)
        if r.random() < 0.05:
            return Item(self.transport(payload, OP_BINARY), "answer", kind="binary")  # bad_frame, no ref
        return Item(self.transport(payload), "answer", ref=ref, type=frame_type, kind=kind)

    def closing_item(self) -> Item:
        r = self.rng
        choice = r.randrange(4)
        if choice == 0:  # not UTF-8: a bad byte, a lone surrogate encoded, an overlong form, a cut character
            bad = r.choice([b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\xf8\x88\x80\x80\x80"])
            payload = b'{"type":"send","text":"' + bad + b'"}'
            return Item(self.transport(payload), "close", 1007, kind="invalid_utf8")
        if choice == 1:
            size = self.max_frame_bytes + r.randint(1, 5000)
            payload = b'{"type":"send","text":"' + b"x" * size + b'"}'
            return Item(self.transport(payload), "close", 1009, kind="oversized")
        if choice == 2:
            return Item(wscodec.raw_frame(b'{"type":"ping"}', rsv=r.randint(1, 7)), "close", 1002, kind="rsv")
        wire = wscodec.bad_opcode_frame(b'{"type":"ping"}', 0x3 + r.randrange(5))
        return Item(wire, "close", 1002, kind="opcode")
