"""The WebSocket codec (``reference_server/wscodec.py``) on its own: no sockets.

What it writes is read back by wsproto (an independent RFC 6455 implementation) and by the codec's
own parser; each broken-frame builder is refused by one of them with the close code the RFC gives.
"""

from __future__ import annotations

import os

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from reference_server import wscodec
from reference_server.wscodec import (
    FIN,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    MessageAssembler,
)


def wsproto_reads(data: bytes, *, from_client: bool = True) -> list[tuple[Opcode, object, bool]]:
    """What wsproto makes of ``data`` as the receiving side: (opcode, payload, message_finished) per frame."""
    protocol = FrameProtocol(client=not from_client, extensions=[])
    protocol.receive_bytes(data)
    return [(frame.opcode, frame.payload, frame.message_finished) for frame in protocol.received_frames()]


def one_byte_at_a_time(parser: FrameParser, data: bytes) -> list[wscodec.Frame]:
    frames: list[wscodec.Frame] = []
    for index in range(len(data)):
        frames += parser.feed(data[index:index + 1])
    return frames


# --------------------------------------------------------------------------------------- handshake


def test_accept_key_is_rfc_6455s_own_example() -> None:
    """RFC 6455 section 1.3 (and 4.2.2): the key ``dGhlIHNhbXBsZSBub25jZQ==`` is accepted as
    ``s3pPLMBiTxaQ9kYGzzhZRbK+xOo=``."""
    assert wscodec.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert wscodec.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_upgrade_request_and_response_agree_and_a_wrong_key_is_not_accepted() -> None:
    key = wscodec.new_key()
    assert len(key) == 24 and key != wscodec.new_key()
    request = wscodec.upgrade_request("127.0.0.1:80", "/v1/ws", key)
    head, rest = wscodec.split_head(request + b"tail") or (b"", b"")
    first, headers = wscodec.parse_head(head)
    assert first == "GET /v1/ws HTTP/1.1" and rest == b"tail"
    assert headers["sec-websocket-key"] == key.decode() and headers["sec-websocket-version"] == "13"
    response = wscodec.upgrade_response(headers["sec-websocket-key"])
    response_head, _ = wscodec.split_head(response) or (b"", b"")
    assert wscodec.is_accepted(response_head, key)
    assert not wscodec.is_accepted(response_head, wscodec.new_key())
    assert wscodec.split_head(response[:-1]) is None  # not whole yet


# --------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
def test_client_frames_round_trip_through_wsproto_and_the_codecs_server_parser(size: int) -> None:
    """Every length form (7-bit, 16-bit, 64-bit) masked as a client must, read back unchanged."""
    payload = os.urandom(size)
    frame = wscodec.client_frame(payload, OP_BINARY)
    assert wsproto_reads(frame) == [(Opcode.BINARY, payload, True)]
    assert FrameParser(masked=True).feed(frame) == [(FIN | OP_BINARY, payload)]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_server_frames_round_trip_through_wsproto_and_the_codecs_client_parser(size: int) -> None:
    payload = b"x" * size
    for frame in (wscodec.text_frame(payload), wscodec.server_frame(payload)):
        assert wsproto_reads(frame, from_client=False) == [(Opcode.TEXT, payload.decode(), True)]
        assert FrameParser(masked=False).feed(frame) == [(FIN | OP_TEXT, payload)]
    assert FrameParser(masked=False).feed(wscodec.ping_frame(b"p")) == [(FIN | OP_PING, b"p")]


def test_masking_twice_gives_the_payload_back_and_a_given_key_is_used() -> None:
    payload = "déjà vu 🙂".encode()
    key = b"\x17\x2a\x5c\x03"
    assert wscodec.mask(wscodec.mask(payload, key), key) == payload
    frame = wscodec.client_frame(payload, key=key)
    assert frame[2:6] == key and frame[6:] == wscodec.mask(payload, key)
    assert wscodec.mask(b"", key) == b""


def test_close_frames_carry_code_and_reason() -> None:
    frame = wscodec.client_frame(wscodec.close_payload(4000, "replaced"), OP_CLOSE)
    ((opcode, payload, _),) = wsproto_reads(frame)
    assert opcode == Opcode.CLOSE and payload == (4000, "replaced")
    ((first, raw),) = FrameParser(masked=True).feed(frame)
    assert first & wscodec.OPCODE_BITS == OP_CLOSE and wscodec.close_code(raw) == 4000
    assert wscodec.close_code(b"") == wscodec.CLOSE_NO_STATUS


def test_fragmented_input_fed_one_byte_at_a_time_gives_the_same_frames_and_messages() -> None:
    """A message in fragments with a ping between them, then a long frame: byte by byte or whole."""
    text = "un café, s'il vous plaît".encode()
    wire = wscodec.fragments(text, [3, 4, 15], between=wscodec.client_frame(b"hi", OP_PING))
    wire += wscodec.client_frame(b"y" * 300) + wscodec.client_frame(b"", OP_PONG)
    whole = FrameParser(masked=True).feed(wire)
    assert one_byte_at_a_time(FrameParser(masked=True), wire) == whole
    assert [first & wscodec.OPCODE_BITS for first, _ in whole] == [
        OP_TEXT, OP_PING, OP_CONTINUATION, OP_PING, OP_CONTINUATION, OP_PING, OP_CONTINUATION,
        OP_TEXT, OP_PONG]
    messages = MessageAssembler().feed(whole)
    assert messages == [(OP_PING, b"hi"), (OP_PING, b"hi"), (OP_PING, b"hi"), (OP_TEXT, text),
                        (OP_TEXT, b"y" * 300), (OP_PONG, b"")]
    read = wsproto_reads(wire)
    data_frames = [payload for opcode, payload, _ in read if opcode in (Opcode.TEXT, Opcode.CONTINUATION)]
    assert "".join(str(part) for part in data_frames[:4]) == text.decode()  # wsproto agrees


def test_the_assembler_refuses_a_continuation_out_of_place() -> None:
    with pytest.raises(FrameError) as stray:
        MessageAssembler().feed([(FIN | OP_CONTINUATION, b"x")])
    assert stray.value.close_code == 1002
    with pytest.raises(FrameError):
        MessageAssembler().feed([(OP_TEXT, b"a"), (FIN | OP_TEXT, b"b")])


# --------------------------------------------------------------------------------------- broken frames


@pytest.mark.parametrize(("name", "wire"), [
    ("reserved bits", wscodec.reserved_bits_frame(b'{"type":"ping"}')),
    ("reserved opcode", wscodec.bad_opcode_frame(b'{"type":"ping"}')),
    ("unmasked client frame", wscodec.unmasked_client_frame(b'{"type":"ping"}')),
    ("control frame over 125 bytes", wscodec.long_control_frame()),
    ("fragmented control frame", wscodec.fragmented_control_frame(b"p")),
    ("continuation with nothing begun", wscodec.client_frame(b"x", OP_CONTINUATION)),
])
def test_each_broken_frame_is_refused_by_wsproto_with_1002(name: str, wire: bytes) -> None:
    with pytest.raises(ParseFailed) as failed:
        wsproto_reads(wire)
    assert failed.value.code == 1002, name


def test_a_text_frame_that_is_not_utf8_is_refused_by_wsproto_with_1007() -> None:
    with pytest.raises(ParseFailed) as failed:
        wsproto_reads(wscodec.not_utf8_text_frame())
    assert failed.value.code == 1007


def test_the_codecs_parser_refuses_a_wrong_mask_or_a_frame_over_its_limit_keeping_what_came_before() -> None:
    good = wscodec.client_frame(b"before")
    server = FrameParser(masked=True)
    assert server.feed(good + wscodec.unmasked_client_frame(b"x") + good) == [(FIN | OP_TEXT, b"before")]
    assert server.error is not None and server.error.close_code == 1002
    assert server.feed(good) == []  # nothing after the error
    client = FrameParser(masked=False)
    assert client.feed(wscodec.masked_server_frame(b"x")) == []
    assert client.error is not None and client.error.close_code == 1002
    limited = FrameParser(masked=True, max_payload=65536)
    assert limited.feed(wscodec.oversized_header(65537)) == []  # refused from the header alone
    assert limited.error is not None and limited.error.close_code == 1009


def test_a_cut_frame_stays_buffered_until_the_rest_arrives() -> None:
    frame = wscodec.client_frame(b"never finished " * 30)
    parser = FrameParser(masked=True)
    assert parser.feed(wscodec.cut_frame(frame)) == [] and parser.buffered == len(frame) // 2
    assert parser.feed(frame[len(frame) // 2:]) == [(FIN | OP_TEXT, b"never finished " * 30)]
    assert parser.buffered == 0
