"""One request and its answer over a Trio connection: the Trio side of ``reference_server``'s ref rule.

Used by the conformance suite's ping barrier and by the tests' wire client (``tests/wire.py``).
It only sends and reads; timeouts are the caller's (``trio.fail_after`` around it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from reference_server.protocol import answers

Frame = dict[str, Any]


async def exchange(
    send: Callable[[Frame], Awaitable[None]],
    receive: Callable[[], Awaitable[Frame]],
    frame: Frame,
    ref: str,
    *,
    before: list[Frame] | None = None,
    stop_type: str | None = None,
) -> tuple[list[Frame], Frame | None]:
    """Send ``frame`` with ``ref``, read until its answer: (the frames before the answer, the answer).

    ``before`` collects those frames as they come (so a caller whose wait is cut short still has
    them); a frame of type ``stop_type`` (a close, say) ends the wait with it kept and no answer.
    """
    events = before if before is not None else []
    await send({**frame, "ref": ref})
    while True:
        got = await receive()
        if answers(got, ref):
            return events, got
        events.append(got)
        if stop_type is not None and got.get("type") == stop_type:
            return events, None
