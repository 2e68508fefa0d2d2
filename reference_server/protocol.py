"""The wire protocol, defined once: frames, validation, encoding, tokens, limits.

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
from ._frames import *  # noqa: F403 -- the frame classes are this module's public surface
from ._frames import __all__ as _frames_all
from ._limits import LOAD_TEST_RATE_BURST, LOAD_TEST_RATE_PER_S, OPEN_CHAT_MAX_MESSAGES, Limits
from ._requests import ANSWER_KINDS, RefNumbers, answers
from ._tokens import DEVELOPMENT_SECRET, clinician_token, token_is_valid

__all__ = [
    *_frames_all,
    "ANSWER_KINDS",
    "DEVELOPMENT_SECRET",
    "LOAD_TEST_RATE_BURST",
    "LOAD_TEST_RATE_PER_S",
    "OPEN_CHAT_MAX_MESSAGES",
    "Limits",
    "ProtocolError",
    "RefNumbers",
    "answers",
    "checked_ref",
    "clinician_token",
    "decode_event",
    "encode",
    "encode_bytes",
    "has_lone_surrogate",
    "parse_object",
    "redact",
    "token_is_valid",
    "validate",
]
