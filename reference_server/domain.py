"""The pure domain model: rooms, queue, calls, chat box, badges, notifications, erasure."""

from ._domain import (
    MAX_DEPARTED_IDS_PER_ROOM,
    MAX_IDLE_ROOMS,
    Close,
    Effect,
    PositionsChanged,
    QueueChatModel,
    Send,
)

__all__ = [
    "MAX_DEPARTED_IDS_PER_ROOM",
    "MAX_IDLE_ROOMS",
    "Close",
    "Effect",
    "PositionsChanged",
    "QueueChatModel",
    "Send",
]
