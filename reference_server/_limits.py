"""The server's limits (R41-R45): one frozen record, listed in the clinician's welcome.

Every limit is a setting. ``None`` switches a limit off where the contract
allows it (the rate limit, capacities, timers); sizes are always on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Fixed by the contract, not settings: how much of a conversation open_chat returns.
OPEN_CHAT_MAX_MESSAGES = 500


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Limits in force; names match the ``limits`` object of the clinician's welcome."""

    max_text_chars: int = 4096
    max_frame_bytes: int = 65536
    max_queued_frames: int = 1024
    max_queued_bytes: int = 4 * 1024 * 1024
    rate_per_s: float | None = 100.0
    rate_burst: int | None = 200
    max_patients_per_room: int | None = 500
    max_rooms: int | None = 10_000
    hello_timeout_s: float | None = 10.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 60.0

    def __post_init__(self) -> None:
        for name in ("max_text_chars", "max_frame_bytes", "max_queued_frames", "max_queued_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {name} must be a positive integer, got {value!r}")
        for name in ("max_patients_per_room", "max_rooms", "rate_burst"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"limit {name} must be a positive integer or off, got {value!r}")
        for name in ("rate_per_s", "hello_timeout_s", "ping_interval_s", "ping_timeout_s"):
            value = getattr(self, name)
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and (not is_number or not value > 0):
                raise ValueError(f"limit {name} must be a positive number or off, got {value!r}")
        if (self.rate_per_s is None) != (self.rate_burst is None):
            raise ValueError("rate_per_s and rate_burst are switched off together")

    def as_wire(self) -> dict[str, Any]:
        """The ``limits`` object of the clinician's welcome."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Limits:
        return dataclasses.replace(self, **changes)


# Limits for load tests: the request rate raised so that the generator, not R43, is the bound.
LOAD_TEST_RATE_PER_S = 100_000.0
LOAD_TEST_RATE_BURST = 200_000
