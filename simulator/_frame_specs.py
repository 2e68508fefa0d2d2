"""Frame specs: what a due frame must look like, matched against what the server sent.

A spec is a frame's fields (a tuple for "one of"); the key :data:`OPTIONAL` marks a frame that may come
or not, because the console replica lost track of what the server's console shows (no cascade).
"""

from __future__ import annotations

from typing import Any, Final

_ABSENT: Final = object()
OPTIONAL: Final = "_optional"  # a spec key: the frame may come or not (the replica lost track of it)


def matches(frame: dict[str, Any], spec: dict[str, Any]) -> bool:
    """``frame`` has every field of ``spec`` (one of a tuple's values; True is not 1)."""
    for key, want in spec.items():
        if key == OPTIONAL:
            continue
        got = frame.get(key, _ABSENT)
        if isinstance(want, tuple):
            if got not in want:
                return False
        elif got != want or (type(got) is bool) != (type(want) is bool):
            return False
    return True


def optional(spec: dict[str, Any], *drop: str) -> dict[str, Any]:
    """``spec`` as a frame that may or may not come, without the fields the replica cannot know."""
    return {**{k: v for k, v in spec.items() if k not in drop}, OPTIONAL: True}


def describe(frame: dict[str, Any]) -> str:
    """A frame or spec for a violation's message: ids, sizes and states, never a message list."""
    hidden = ("messages", "limits", "queue", OPTIONAL)
    return "{" + ", ".join(f"{k}: {v!r}" if not isinstance(v, tuple) else f"{k}: one of {v!r}"
                           for k, v in frame.items() if k not in hidden) + "}"

