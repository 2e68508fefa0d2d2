"""The cases, one module per group of rules; importing this package registers them all."""

from . import (  # noqa: F401 - imported to register their cases
    bad_input,
    badges,
    calls,
    chat_box,
    chatting,
    console,
    erasure,
    identity,
    leaving,
    limits,
    order,
    room_settings,
    transport,
)
