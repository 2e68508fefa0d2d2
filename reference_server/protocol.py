"""The wire protocol, defined once: frames, validation, encoding, tokens, limits, and where a server is
(``ws://`` URLs, loopback hosts).

Imported by the server, the simulator, the load tests (under gevent) and the
conformance suite; it imports neither Trio nor the server shell.
"""

from ._codec import (
    ProtocolError,
    checked_ref,
    decode_event,
    encode,
    encode_bytes,
    has_lone_surrogate,
    parse_object,
    redact,
    validate,
)
from ._endpoint import EXPECTED_URL, Endpoint, EndpointError, UrlFault, check_ws_url, is_loopback_host
from ._frames import *  # noqa: F403 -- the frame classes are this module's public surface
from ._frames import __all__ as _frames_all
from ._limits import LOAD_TEST_RATE_BURST, LOAD_TEST_RATE_PER_S, OPEN_CHAT_MAX_MESSAGES, Limits
from ._requests import ANSWER_KINDS, RefNumbers, answers
from ._tokens import DEVELOPMENT_SECRET, clinician_token, token_is_valid

__all__ = [
    *_frames_all,
    "ANSWER_KINDS",
    "DEVELOPMENT_SECRET",
    "EXPECTED_URL",
    "Endpoint",
    "EndpointError",
    "LOAD_TEST_RATE_BURST",
    "LOAD_TEST_RATE_PER_S",
    "OPEN_CHAT_MAX_MESSAGES",
    "Limits",
    "ProtocolError",
    "RefNumbers",
    "UrlFault",
    "answers",
    "check_ws_url",
    "checked_ref",
    "clinician_token",
    "decode_event",
    "encode",
    "encode_bytes",
    "has_lone_surrogate",
    "is_loopback_host",
    "parse_object",
    "redact",
    "token_is_valid",
    "validate",
]
