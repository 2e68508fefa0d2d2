"""The garbage-collection policy of a long-lived server: what survives a handshake is frozen.

CPython's full collections walk every tracked object; a server holding thousands of
connections (each a few dozen long-lived objects) paused for seconds at each one. The
policy, applied by the shell's timer task once a second:

- at start, everything alive (modules, the model) is frozen (``gc.freeze()``: moved to
  the permanent generation, never walked again);
- every ``freeze_every_s`` (a quarter second) a freeze (``gc.freeze()`` is a list merge:
  it costs nothing): what survives a handshake, and the state of every connection waiting
  for its next frame (about 20 objects of Trio's wait per connection, remade at each
  message), leaves the collector's walks, so a young collection walks only what was made
  in the last quarter second (at 10,000 connections, freezing once a second left young
  collections of 10-20 ms). In steady state the server makes no cyclic garbage (the
  collections in the capacity runs collected 0 objects), so what is frozen and later
  dropped is freed by its reference count, as it would be anyway;
- frozen objects that become cyclic garbage are not collected while frozen. A closed
  connection leaves none (``tests/test_wsconn.py`` checks it: its objects are freed by
  their reference counts), but an error path might: at most every ``thaw_every_s``, when
  the frozen objects grew by half since the last thaw, everything is thawed, collected in
  full, once, and frozen again. That pause is rare and its size is the heap's; it is
  counted in :meth:`statistics`. (Thawing whenever many frozen connections had closed, as
  a first version did, paused the server for a full collection after every burst.)

Process-wide (the collector is), so it is a server option, on for ``queuechat serve``
and the benchmark servers, off for servers run inside a test or a simulation.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Any


class GcPolicy:
    """Freeze after handshakes, thaw when enough frozen connections have closed; count every pause."""

    def __init__(self, *, freeze_every_s: float = 0.25, thaw_every_s: float = 600.0) -> None:
        self.freeze_every_s = freeze_every_s
        self.thaw_every_s = thaw_every_s
        self._last_check = time.monotonic()
        self._frozen_seen = 0
        self._frozen_counted_at = -math.inf
        self._frozen_after_thaw = 0
        self.freezes = 0
        self.thaws = 0
        self.collections = [0, 0, 0]
        self.pause_max_s = 0.0
        self._started = 0.0
        self._installed = False

    def start(self, *, freeze: bool) -> None:
        """Start counting collections; with ``freeze``, apply the policy (see :meth:`tick`), from a
        freeze of what exists now (imports, settings)."""
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True
        if freeze:
            gc.collect()
            self._freeze()
            self._frozen_after_thaw = gc.get_freeze_count()

    def stop(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def tick(self) -> None:
        """Called every ``freeze_every_s``: freeze, or thaw when due."""
        now = time.monotonic()
        # At most every thaw_every_s: gc.get_freeze_count() walks the whole permanent generation.
        if now - self._last_check >= self.thaw_every_s:
            self._last_check = now
            if gc.get_freeze_count() > 1.5 * self._frozen_after_thaw:
                self.thaws += 1
                gc.unfreeze()
                gc.collect()
                self._freeze()
                self._frozen_after_thaw = gc.get_freeze_count()
                return
        self._freeze()

    def _freeze(self) -> None:
        gc.freeze()
        self.freezes += 1

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.collections[int(info.get("generation", 0))] += 1
        self.pause_max_s = max(self.pause_max_s, time.perf_counter() - self._started)

    def statistics(self) -> dict[str, Any]:
        """The fields of ServerStatistics that come from here (``gc_frozen`` counted at most every
        10 s: gc.get_freeze_count() walks the whole permanent generation)."""
        now = time.monotonic()
        if now - self._frozen_counted_at >= 10.0:
            self._frozen_seen = gc.get_freeze_count()
            self._frozen_counted_at = now
        return {"gc_collections": list(self.collections),
                "gc_pause_max_ms": round(self.pause_max_s * 1000, 1), "gc_frozen": self._frozen_seen}
