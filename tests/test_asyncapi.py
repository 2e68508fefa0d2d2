"""docs/asyncapi.yaml against the AsyncAPI 3.0.0 meta-schema and against the code's frames.

The code (reference_server._frames) is the source of the frame shapes; the
AsyncAPI file must agree with it, and docs/protocol.md must cover every rule,
frame, error code and limit. Sample values are obviously fake.
"""

from __future__ import annotations

import copy
import json
import re
import typing
from typing import Any

import jsonschema
import msgspec
import pytest

from reference_server import _codec, _frames
from reference_server._codec import ProtocolError
from reference_server._frames import (
    CLINICIAN_REQUESTS,
    ERROR_CODES,
    PATIENT_REQUESTS,
    REQUEST_TYPES,
    SERVER_FRAME_CLASSES,
    SERVER_FRAME_TYPES,
)
from reference_server._limits import OPEN_CHAT_MAX_MESSAGES, Limits
from reference_server._tokens import DEVELOPMENT_SECRET, clinician_token
from tests import asyncapi_schema as spec

PROTOCOL_MD = spec.ROOT / "docs" / "protocol.md"

# Fake ids in the server's shape: 22 URL-safe characters (16 random bytes).
PATIENT_A = "5P0zSOIlqLmyL6Vb1bg0Yg"
PATIENT_B = "r3vLxddvVn9fW0XmWpSM7Q"
PATIENT_GONE = "Xy-_0123456789abcdefAB"
TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z in milliseconds
ROOM = "demo-room"


def _wire(frame: msgspec.Struct) -> dict[str, Any]:
    """A server frame as a client sees it: encoded by the code, decoded as JSON."""
    decoded = json.loads(_codec.encode(frame))  # type: ignore[arg-type]
    assert isinstance(decoded, dict)
    return decoded


def _literal_values(alias: Any) -> set[str]:
    return set(typing.get_args(alias))


# --------------------------------------------------------------------------- (a) meta-schema


def test_asyncapi_file_is_valid_asyncapi_3_0_0() -> None:
    document = spec.load_asyncapi()
    assert document["asyncapi"] == "3.0.0"
    meta = spec.asyncapi_json_schema()
    jsonschema.Draft7Validator.check_schema(meta)
    errors = list(jsonschema.Draft7Validator(meta).iter_errors(document))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:10])


def test_meta_schema_check_is_not_vacuous() -> None:
    """A broken payload schema deep in components is caught by the meta-schema."""
    document = spec.load_asyncapi()
    document["components"]["messages"]["unread"]["payload"]["properties"]["count"] = {"type": 5}
    assert list(jsonschema.Draft7Validator(spec.asyncapi_json_schema()).iter_errors(document))


def test_every_payload_is_a_valid_draft7_schema() -> None:
    for table in (spec.request_schemas(), spec.event_schemas()):
        for schemas in table.values():
            for schema in schemas:
                jsonschema.Draft7Validator.check_schema(schema)


def test_server_channel_and_operations() -> None:
    document = spec.load_asyncapi()
    (server,) = document["servers"].values()
    assert server["protocol"] == "ws"
    assert server["host"] == "127.0.0.1:8765"
    assert server["pathname"] == _frames.WS_PATH
    (channel,) = document["channels"].values()
    assert channel["address"] == _frames.WS_PATH
    # Every message of the channel is used by exactly one operation, and every
    # component message is in the channel.
    used: list[str] = []
    for operation in document["operations"].values():
        assert operation["action"] in ("send", "receive")
        used += [ref["$ref"].rsplit("/", 1)[-1] for ref in operation["messages"]]
    assert sorted(used) == sorted(channel["messages"]) == sorted(document["components"]["messages"])


# --------------------------------------------------------------------------- (b) names


def test_every_request_type_is_a_message() -> None:
    assert set(spec.request_schemas()) == set(REQUEST_TYPES)


def test_every_server_frame_type_is_a_message() -> None:
    assert set(spec.event_schemas()) == set(SERVER_FRAME_TYPES)


def test_no_message_names_a_type_the_code_does_not_know() -> None:
    document = spec.load_asyncapi()
    names = {message["name"] for message in document["components"]["messages"].values()}
    assert names == set(REQUEST_TYPES) | set(SERVER_FRAME_TYPES)


def test_variant_counts_match_the_code() -> None:
    events = spec.event_schemas()
    for frame_type, classes in SERVER_FRAME_CLASSES.items():
        assert len(events[frame_type]) == len(classes), frame_type
    for role, table in (("clinician", CLINICIAN_REQUESTS), ("patient", PATIENT_REQUESTS)):
        requests = spec.request_schemas(role)
        assert set(requests) == {"hello", *table}, role
        for frame_type, schemas in requests.items():
            assert len(schemas) == 1, (role, frame_type)


def test_request_messages_carry_a_role() -> None:
    for key, message in spec.request_messages().items():
        assert message.get(spec.ROLE_KEY) in ("clinician", "patient", "any"), key


def test_constants_agree_with_the_code() -> None:
    schemas = spec.load_asyncapi()["components"]["schemas"]
    assert schemas["Room"]["pattern"] == _frames.ROOM_PATTERN
    assert schemas["Ref"]["maxLength"] == _frames.MAX_REF_CHARS
    assert schemas["PatientName"]["maxLength"] == _frames.MAX_NAME_CHARS
    assert set(schemas["ErrorCode"]["enum"]) == set(ERROR_CODES)
    assert set(schemas["Limits"]["required"]) == set(Limits().as_wire())
    assert set(schemas["Limits"]["properties"]) == set(Limits().as_wire())
    messages = spec.load_asyncapi()["components"]["messages"]
    assert messages["okOpenChat"]["payload"]["properties"]["messages"]["maxItems"] == OPEN_CHAT_MAX_MESSAGES
    welcome_example = messages["welcomeClinician"]["examples"][0]["payload"]
    assert welcome_example["limits"] == Limits().as_wire()
    hello_example = messages["helloClinician"]["examples"][0]["payload"]
    assert hello_example["token"] == clinician_token(DEVELOPMENT_SECRET, hello_example["room"])


def test_examples_validate() -> None:
    for message in spec.event_messages().values():
        for example in message.get("examples", []):
            spec.validate_event(example["payload"])
    for message in spec.request_messages().values():
        role = message[spec.ROLE_KEY]
        for example in message.get("examples", []):
            spec.validate_request(example["payload"], None if role == "any" else role)


# --------------------------------------------------------------------------- (c) server frames


def _limits_off() -> dict[str, Any]:
    return Limits(
        rate_per_s=None,
        rate_burst=None,
        max_patients_per_room=None,
        max_rooms=None,
        hello_timeout_s=None,
        ping_interval_s=None,
        ping_timeout_s=None,
    ).as_wire()


def _chat_message(
    message_id: int, sender: typing.Literal["clinician", "patient"], client_ts: int | float | None
) -> _frames.ChatMessage:
    extra: dict[str, Any] = {} if client_ts is None else {"client_ts": client_ts}
    return _frames.ChatMessage(
        patient=PATIENT_A,
        id=message_id,
        from_=sender,
        text=f"fake text {message_id}",
        ts=TS + message_id,
        **extra,
    )


def _box_state_for(reason: str) -> tuple[str, str | None, bool]:
    return {
        "open_chat": ("open", PATIENT_A, True),
        "minimize_chat": ("minimized", PATIENT_A, True),
        "close_chat": ("closed", None, False),
        "auto_open": ("open", PATIENT_A, True),
        "patient_left": ("open", PATIENT_A, False),
        "erased": ("closed", None, False),
    }[reason]


def _sample_server_frames() -> list[msgspec.Struct]:
    f = _frames
    frames: list[msgspec.Struct] = [
        f.ClinicianWelcome(
            ref="c1",
            room=ROOM,
            queue=[
                f.QueueEntry(
                    patient=PATIENT_A, name="Test Patient A", state="in_call", unread=0, joined_at=TS
                ),
                f.QueueEntry(
                    patient=PATIENT_B, name="Test Patient B", state="waiting", unread=3, joined_at=TS + 1
                ),
            ],
            chat_box=f.ChatBoxView(state="open", patient=PATIENT_B, patient_present=True),
            call=f.CallView(patient=PATIENT_A),
            settings=f.ClinicianSettings(chat_notifications=True),
            room_settings=f.RoomSettingsView(patient_initiated_chat=False),
            provider_status="on_call",
            limits=Limits().as_wire(),
        ),
        f.ClinicianWelcome(
            room=ROOM,
            queue=[],
            chat_box=f.ChatBoxView(state="closed", patient=None, patient_present=False),
            call=None,
            settings=f.ClinicianSettings(chat_notifications=False),
            room_settings=f.RoomSettingsView(patient_initiated_chat=True),
            provider_status="online",
            limits=_limits_off(),
        ),
        f.ClinicianWelcome(
            room=ROOM,
            queue=[f.QueueEntry(patient=PATIENT_B, name="X", state="waiting", unread=0, joined_at=TS)],
            chat_box=f.ChatBoxView(state="minimized", patient=PATIENT_GONE, patient_present=False),
            call=None,
            settings=f.ClinicianSettings(chat_notifications=True),
            room_settings=f.RoomSettingsView(patient_initiated_chat=True),
            provider_status="online",
            limits=Limits(rate_per_s=1000, rate_burst=5000, max_text_chars=10).as_wire(),
        ),
        f.PatientWelcome(
            ref="p-1", patient=PATIENT_A, position=1, provider_status="away", patient_initiated_chat=True
        ),
        f.PatientWelcome(
            patient=PATIENT_B, position=37, provider_status="on_call", patient_initiated_chat=False
        ),
        f.Ok(),
        f.Ok(ref="x" * _frames.MAX_REF_CHARS),
        f.SendOk(id=1, ts=TS),
        f.SendOk(ref="a1", id=42, ts=TS + 5),
        f.OpenChatOk(messages=[], truncated=False),
        f.OpenChatOk(
            ref="c2",
            messages=[
                _chat_message(1, "patient", TS),
                _chat_message(2, "clinician", None),
                _chat_message(3, "patient", 12.5),
                _chat_message(4, "patient", -(2**53)),
            ],
            truncated=False,
        ),
        f.OpenChatOk(
            messages=[_chat_message(i, "patient", None) for i in range(101, 101 + OPEN_CHAT_MAX_MESSAGES)],
            truncated=True,
        ),
        f.Error(ref="c9", code="invalid", message="field 'text' must be a non-empty string", field="text"),
        f.Message(patient=PATIENT_A, id=1, from_="patient", text="fake question", ts=TS, client_ts=TS - 3),
        f.Message(patient=PATIENT_A, id=2, from_="clinician", text="fake answer", ts=TS + 9),
        f.Message(patient=PATIENT_B, id=7, from_="patient", text="\U0001f600 fake", ts=TS, client_ts=0.25),
        f.Unread(patient=PATIENT_A, count=0),
        f.Unread(patient=PATIENT_B, count=12),
        f.Notify(patient=PATIENT_B, id=3),
        f.PatientJoined(patient=PATIENT_B, name="Test Patient B", position=2, joined_at=TS),
        f.Position(position=1),
        f.RoomSettings(patient_initiated_chat=True),
        f.RoomSettings(patient_initiated_chat=False),
    ]
    for code in ERROR_CODES:
        if code == "invalid":
            frames.append(f.Error(code=code, message="field 'room' is wrong", field="room"))
        else:
            frames.append(f.Error(code=code, message=f"fake explanation for {code}"))
            frames.append(f.Error(ref="r-2", code=code, message="fake explanation"))
    for reason in _literal_values(_frames.BoxReason):
        state, patient, present = _box_state_for(reason)
        frames.append(f.ChatBox(state=state, patient=patient, patient_present=present, reason=reason))  # type: ignore[arg-type]
    frames.append(
        f.ChatBox(state="minimized", patient=PATIENT_A, patient_present=False, reason="patient_left")
    )
    frames.append(f.ChatBox(state="open", patient=PATIENT_GONE, patient_present=False, reason="open_chat"))
    frames += [f.Erased(patient=PATIENT_A, reason=r) for r in _literal_values(_frames.ErasedReason)]  # type: ignore[arg-type]
    frames += [f.PatientLeft(patient=PATIENT_A, reason=r) for r in _literal_values(_frames.LeftReason)]  # type: ignore[arg-type]
    frames += [f.ProviderStatus(status=s) for s in _literal_values(_frames.ProviderStatusValue)]  # type: ignore[arg-type]
    frames += [f.Call(state=s) for s in _literal_values(_frames.CallStateValue)]  # type: ignore[arg-type]
    return frames


def test_samples_cover_every_server_frame_class() -> None:
    classes = {cls for group in SERVER_FRAME_CLASSES.values() for cls in group}
    assert {type(frame) for frame in _sample_server_frames()} == classes


@pytest.mark.parametrize("frame", _sample_server_frames(), ids=lambda fr: type(fr).__name__)
def test_server_frame_validates(frame: msgspec.Struct) -> None:
    spec.validate_event(_wire(frame))


def test_each_server_frame_matches_exactly_one_variant() -> None:
    for frame in _sample_server_frames():
        wire = _wire(frame)
        matches = [
            schema
            for schema in spec.event_schemas()[wire["type"]]
            if jsonschema.Draft7Validator(schema).is_valid(wire)
        ]
        assert len(matches) == 1, type(frame).__name__


def _good_message() -> dict[str, Any]:
    return _wire(_frames.Message(patient=PATIENT_A, id=1, from_="patient", text="SECRET-TEXT-1", ts=TS))


def _bad_frames() -> list[tuple[str, dict[str, Any]]]:
    bad: list[tuple[str, dict[str, Any]]] = []

    def variant(label: str, base: dict[str, Any], **changes: Any) -> None:
        frame = copy.deepcopy(base)
        for key, value in changes.items():
            if value is _DROP:
                frame.pop(key)
            else:
                frame[key] = value
        bad.append((label, frame))

    message = _good_message()
    variant("message without ts", message, ts=_DROP)
    variant("message without text", message, text=_DROP)
    variant("message with empty text", message, text="")
    variant("message from a third party", message, **{"from": "nurse"})
    variant("message with ref", message, ref="c1")
    variant("message with null client_ts", message, client_ts=None)
    variant("message with string client_ts", message, client_ts="123")
    variant("message with id 0", message, id=0)
    variant("message with a short patient id", message, patient="p1")
    box = _wire(_frames.ChatBox(state="open", patient=PATIENT_A, patient_present=True, reason="open_chat"))
    variant("chat_box with unknown reason", box, reason="bogus")
    variant("chat_box open on nobody", box, patient=None)
    variant("chat_box closed on a patient", box, state="closed", reason="close_chat")
    variant("chat_box minimized by open_chat", box, state="minimized")
    variant("chat_box patient_left while present", box, reason="patient_left")
    variant(
        "provider_status with unknown status", _wire(_frames.ProviderStatus(status="online")), status="busy"
    )
    variant(
        "erased with unknown reason", _wire(_frames.Erased(patient=PATIENT_A, reason="refresh")), reason="x"
    )
    variant("position 0", _wire(_frames.Position(position=1)), position=0)
    variant("unread negative", _wire(_frames.Unread(patient=PATIENT_A, count=1)), count=-1)
    variant(
        "unread with extra field", _wire(_frames.Unread(patient=PATIENT_A, count=1)), name="SECRET-NAME-1"
    )
    error = _wire(_frames.Error(code="not_found", message="m"))
    variant("error with unknown code", error, code="oops")
    variant("error invalid without field", error, code="invalid")
    variant("error not_found with field", error, field="patient")
    variant("error without message", error, message=_DROP)
    variant("ok with id only", _wire(_frames.Ok()), id=1)
    variant("ok with messages only", _wire(_frames.Ok()), messages=[])
    joined = _wire(_frames.PatientJoined(patient=PATIENT_B, name="SECRET-NAME-1", position=1, joined_at=TS))
    variant("patient_joined with an over-long name", joined, name="SECRET-NAME-" + "Z" * 70)
    variant("patient_joined with empty name", joined, name="")
    variant("unknown type", {"type": "gossip", "text": "SECRET-TEXT-1"})
    welcome = _wire(_sample_server_frames()[0])
    limits = dict(welcome["limits"], rate_burst=None)
    variant("welcome with rate_burst off alone", welcome, limits=limits)
    limits = dict(welcome["limits"], max_text_chars=None)
    variant("welcome with a size limit off", welcome, limits=limits)
    limits = {k: v for k, v in welcome["limits"].items() if k != "max_rooms"}
    variant("welcome without a limit", welcome, limits=limits)
    variant(
        "welcome with a bad queue state",
        welcome,
        queue=[dict(welcome["queue"][0], state="departed", name="SECRET-NAME-1")],
    )
    variant("welcome with a patient field", welcome, patient=PATIENT_A)
    variant("clinician welcome while away", welcome, provider_status="away")
    variant("welcome with a call on nobody", welcome, call={})
    chat = _wire(_frames.OpenChatOk(messages=[_chat_message(1, "patient", None)], truncated=False))
    variant(
        "open_chat ok with a message missing id",
        chat,
        messages=[{k: v for k, v in chat["messages"][0].items() if k != "id"}],
    )
    variant("open_chat ok with a typed message", chat, messages=[dict(chat["messages"][0], type="message")])
    variant(
        "open_chat ok with too many messages", chat, messages=chat["messages"] * (OPEN_CHAT_MAX_MESSAGES + 1)
    )
    return bad


_DROP = object()


@pytest.mark.parametrize("label,frame", _bad_frames(), ids=[label for label, _ in _bad_frames()])
def test_bad_server_frame_fails(label: str, frame: dict[str, Any]) -> None:
    with pytest.raises(AssertionError) as caught:
        spec.validate_event(frame)
    report = str(caught.value)
    assert "SECRET-TEXT" not in report and "SECRET-NAME" not in report, "the report quotes a frame value"


def test_validate_event_refuses_non_objects() -> None:
    values: list[Any] = [[], "ok", None, {"no": "type"}, {"type": 5}]
    for value in values:
        with pytest.raises(AssertionError):
            spec.validate_event(value)


# --------------------------------------------------------------------------- (d) requests


def _sample_requests() -> list[tuple[str, dict[str, Any]]]:
    """(role, wire request); built from the code's request Structs."""
    token = clinician_token(DEVELOPMENT_SECRET, ROOM)
    samples: list[tuple[str, msgspec.Struct, str, dict[str, Any]]] = [
        (
            "clinician",
            _frames.ClinicianHello(room=ROOM, token=token),
            "hello",
            {"role": "clinician", "ref": "c1"},
        ),
        ("patient", _frames.PatientHello(room="r", name="Test Patient A"), "hello", {"role": "patient"}),
        (
            "patient",
            _frames.PatientHello(room="a" * 64, name="Z" * 64),
            "hello",
            {"role": "patient", "ref": ""},
        ),
    ]
    values: dict[type, list[dict[str, Any]]] = {
        _frames.ClinicianSend: [
            {"patient": PATIENT_A, "text": "fake reply"},
            {"patient": PATIENT_B, "text": "x", "client_ts": TS},
            {"patient": "anything", "text": "fake " * 800, "client_ts": 1.5},
        ],
        _frames.PatientSend: [{"text": "fake question"}, {"text": "\u00e9", "client_ts": -(2**53)}],
        _frames.OpenChat: [{"patient": PATIENT_A}],
        _frames.StartCall: [{"patient": PATIENT_B}],
        _frames.SetNotifications: [{"chat": False}, {"chat": True}],
        _frames.SetRoom: [{"patient_initiated_chat": False}],
    }
    for role, table in (("clinician", CLINICIAN_REQUESTS), ("patient", PATIENT_REQUESTS)):
        for frame_type, cls in table.items():
            for index, fields in enumerate(values.get(cls, [{}])):
                extra = {"ref": f"{frame_type}-{index}"} if index % 2 == 0 else {}
                samples.append((role, cls(**fields), frame_type, extra))
    out = []
    for role, struct, frame_type, extra in samples:
        wire = json.loads(msgspec.json.encode(struct))
        wire.update(extra, type=frame_type)
        out.append((role, wire))
    return out


def _payload_type(role: str, wire: dict[str, Any]) -> type[msgspec.Struct]:
    if wire["type"] == "hello":
        return _frames.ClinicianHello if role == "clinician" else _frames.PatientHello
    table = CLINICIAN_REQUESTS if role == "clinician" else PATIENT_REQUESTS
    return table[wire["type"]]


def test_samples_cover_every_request_class() -> None:
    seen = {(role, _payload_type(role, wire)) for role, wire in _sample_requests()}
    expected = {("clinician", cls) for cls in CLINICIAN_REQUESTS.values()}
    expected |= {("patient", cls) for cls in PATIENT_REQUESTS.values()}
    expected |= {("clinician", _frames.ClinicianHello), ("patient", _frames.PatientHello)}
    assert seen == expected


@pytest.mark.parametrize(
    "role,wire", _sample_requests(), ids=lambda v: v if isinstance(v, str) else v["type"]
)
def test_request_validates(role: str, wire: dict[str, Any]) -> None:
    # The code accepts it ...
    _codec.validate(wire, _frames.Hello if wire["type"] == "hello" else _payload_type(role, wire))
    _codec.validate(wire, _payload_type(role, wire))
    # ... and so does the AsyncAPI file, for that role and without a role.
    spec.validate_request(wire, role)
    spec.validate_request(wire)


def test_unknown_request_fields_are_allowed() -> None:
    spec.validate_request({"type": "ping", "extra": [1, 2]}, "patient")
    spec.validate_request({"type": "send", "text": "fake", "patient": PATIENT_B}, "patient")


def _invalid_requests() -> list[tuple[str, dict[str, Any], type[msgspec.Struct]]]:
    token = clinician_token(DEVELOPMENT_SECRET, ROOM)
    hello_c = {"type": "hello", "role": "clinician", "room": ROOM, "token": token}
    hello_p = {"type": "hello", "role": "patient", "room": ROOM, "name": "Test Patient A"}
    f = _frames
    return [
        ("clinician", dict(hello_c, room="Demo Room"), f.Hello),
        ("clinician", dict(hello_c, room=""), f.Hello),
        ("clinician", dict(hello_c, room="a" * 65), f.Hello),
        ("clinician", dict(hello_c, token=None), f.ClinicianHello),
        ("clinician", {k: v for k, v in hello_c.items() if k != "token"}, f.ClinicianHello),
        ("patient", dict(hello_p, name=""), f.PatientHello),
        ("patient", dict(hello_p, name="Z" * 65), f.PatientHello),
        ("patient", dict(hello_p, role="nurse"), f.Hello),
        ("patient", dict(hello_p, ref="r" * 65), f.PatientHello),
        ("patient", dict(hello_p, ref=7), f.PatientHello),
        ("clinician", {"type": "send", "patient": PATIENT_A, "text": ""}, f.ClinicianSend),
        ("clinician", {"type": "send", "text": "fake"}, f.ClinicianSend),
        ("clinician", {"type": "send", "patient": 3, "text": "fake"}, f.ClinicianSend),
        ("patient", {"type": "send", "text": "fake", "client_ts": "123"}, f.PatientSend),
        ("patient", {"type": "send", "text": "fake", "client_ts": True}, f.PatientSend),
        ("patient", {"type": "send", "text": "fake", "client_ts": None}, f.PatientSend),
        ("patient", {"type": "send"}, f.PatientSend),
        ("clinician", {"type": "open_chat"}, f.OpenChat),
        ("clinician", {"type": "start_call", "patient": None}, f.StartCall),
        ("clinician", {"type": "set_notifications", "chat": "yes"}, f.SetNotifications),
        ("clinician", {"type": "set_notifications", "chat": 1}, f.SetNotifications),
        ("clinician", {"type": "set_room"}, f.SetRoom),
        ("clinician", {"type": "close_chat", "ref": ["c1"]}, f.CloseChat),
    ]


@pytest.mark.parametrize("role,wire,payload_type", _invalid_requests())
def test_invalid_request_is_refused_by_code_and_schema(
    role: str, wire: dict[str, Any], payload_type: type[msgspec.Struct]
) -> None:
    with pytest.raises(ProtocolError) as caught:
        _codec.validate(wire, payload_type)
    assert caught.value.code == "invalid"
    with pytest.raises(AssertionError):
        spec.validate_request(wire, role)


# --------------------------------------------------------------------------- (e) msgspec's schemas


def _ms_resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _ms_object(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema inside a msgspec property schema (ref, array items or anyOf with null)."""
    node = _ms_resolve(node, defs)
    if "properties" in node:
        return node
    if node.get("type") == "array" and "items" in node:
        return _ms_object(node["items"], defs)
    for branch in node.get("anyOf", []):
        found = _ms_object(branch, defs)
        if found is not None:
            return found
    return None


def _yaml_object(node: dict[str, Any]) -> dict[str, Any] | None:
    if "properties" in node:
        return node
    if "items" in node and isinstance(node["items"], dict):
        return _yaml_object(node["items"])
    for branch in node.get("oneOf", []) + node.get("anyOf", []):
        found = _yaml_object(branch)
        if found is not None:
            return found
    return None


def _yaml_values(node: dict[str, Any]) -> set[Any] | None:
    if "const" in node:
        return {node["const"]}
    if "enum" in node:
        return set(node["enum"])
    return None


# Fields whose YAML allows fewer values than the Struct's type: a clinician's welcome is never "away".
_NARROWER_IN_YAML = {"ClinicianWelcome.provider_status"}


def _compare(ms: dict[str, Any], ya: dict[str, Any], defs: dict[str, Any], where: str) -> None:
    assert set(ms["properties"]) == set(ya["properties"]), f"{where}: property names differ"
    assert set(ms.get("required", [])) == set(ya.get("required", [])), f"{where}: required differs"
    for name, ms_prop in ms["properties"].items():
        ya_prop = ya["properties"][name]
        ms_resolved = _ms_resolve(ms_prop, defs)
        if "enum" in ms_resolved:
            values = _yaml_values(ya_prop)
            if f"{where}.{name}" in _NARROWER_IN_YAML:
                assert values and values < set(ms_resolved["enum"]), f"{where}.{name}: values differ"
            else:
                assert values == set(ms_resolved["enum"]), f"{where}.{name}: values differ"
        ms_child = _ms_object(ms_prop, defs)
        ya_child = _yaml_object(ya_prop)
        if ms_child is not None:
            assert ya_child is not None, f"{where}.{name}: the YAML has no object here"
            _compare(ms_child, ya_child, defs, f"{where}.{name}")


def _matching_candidate(properties: set[str], candidates: list[dict[str, Any]], where: str) -> dict[str, Any]:
    matches = [c for c in candidates if set(c["properties"]) == properties]
    assert len(matches) == 1, f"{where}: {len(matches)} YAML variants have the same property names"
    return matches[0]


@pytest.mark.parametrize(
    "cls", [cls for group in SERVER_FRAME_CLASSES.values() for cls in group], ids=lambda c: c.__name__
)
def test_msgspec_schema_agrees_for_server_frame(cls: type[msgspec.Struct]) -> None:
    generated = msgspec.json.schema(cls)
    defs = generated.get("$defs", {})
    top = _ms_resolve(generated, defs)
    frame_type = cls.__struct_config__.tag
    assert isinstance(frame_type, str)
    candidate = _matching_candidate(set(top["properties"]), spec.event_schemas()[frame_type], cls.__name__)
    _compare(top, candidate, defs, cls.__name__)


@pytest.mark.parametrize(
    "role,frame_type,cls",
    [("clinician", "hello", _frames.ClinicianHello), ("patient", "hello", _frames.PatientHello)]
    + [("clinician", t, c) for t, c in CLINICIAN_REQUESTS.items()]
    + [("patient", t, c) for t, c in PATIENT_REQUESTS.items()],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_msgspec_schema_agrees_for_request(role: str, frame_type: str, cls: type[msgspec.Struct]) -> None:
    """The YAML adds `type`, `ref` (and `role` for hello) to the Struct's fields; the rest agrees."""
    generated = msgspec.json.schema(cls)
    defs = generated.get("$defs", {})
    top = _ms_resolve(generated, defs)
    (candidate,) = spec.request_schemas(role)[frame_type]
    added = {"type", "ref"} | ({"role"} if frame_type == "hello" else set())
    assert set(candidate["properties"]) == set(top.get("properties", {})) | added
    assert set(candidate["required"]) == set(top.get("required", [])) | (added - {"ref"})
    for name, ms_prop in top.get("properties", {}).items():
        ms_resolved = _ms_resolve(ms_prop, defs)
        if "enum" in ms_resolved:
            assert _yaml_values(candidate["properties"][name]) == set(ms_resolved["enum"]), name
        for keyword in ("pattern", "minLength", "maxLength"):
            if keyword in ms_resolved:
                assert candidate["properties"][name].get(keyword) == ms_resolved[keyword], (name, keyword)


# --------------------------------------------------------------------------- docs/protocol.md coverage

RULE_IDS = [f"R{n}" for n in (*range(1, 14), 20, 30, 31, *range(40, 47))]


def _protocol_md() -> str:
    return PROTOCOL_MD.read_text(encoding="utf-8")


def test_protocol_md_labels_every_rule() -> None:
    text = _protocol_md()
    for rule in RULE_IDS:
        heading = re.search(rf"^#+ .*\b{rule}\b", text, re.MULTILINE)
        label = re.search(rf"\*\*{rule}\b[^*]*\*\*", text)
        assert heading or label, f"{rule} has no heading or bold label"


def test_protocol_md_names_every_frame_error_code_and_limit() -> None:
    text = _protocol_md()
    words = [*REQUEST_TYPES, *SERVER_FRAME_TYPES, *ERROR_CODES, *Limits().as_wire()]
    for word in words:
        assert f"`{word}" in text, word
    for heading in ("Choices this implementation makes where the contract is silent", "Exit codes"):
        assert heading in text, heading
