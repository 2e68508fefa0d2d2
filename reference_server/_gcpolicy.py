"""The garbage-collection policy of a long-lived server: what survives a handshake is frozen.

CPython's full collections walk every tracked object; a server holding thousands of
connections (each a few dozen long-lived objects) paused for seconds at each one. The
policy, applied by the shell's timer task once a second:

- at start, everything alive (modules, the model) is frozen (``gc.freeze()``: moved to
  the permanent generation, never walked again);
- after connections were accepted, or at the latest every ``freeze_every_s``, a young
  collection (generations 0-1, cheap) then a freeze: what survives a handshake leaves the
  collector's walks, so a full collection walks only what changed since the last freeze;
- frozen objects that become cyclic garbage (a closed connection's tasks and streams
  refer to each other) are not collected while frozen: once as many frozen connections
  have closed as are open (at least ``thaw_after_closed``), everything is thawed and
  collected in full, once, then frozen again. That pause is rare and its size is the
  heap's; it is counted in :meth:`statistics`.

Process-wide (the collector is), so it is a server option, on for ``queuechat serve``
and the benchmark servers, off for servers run inside a test or a simulation.
"""

from __future__ import annotations

import gc
import time
from typing import Any


class GcPolicy:
    """Freeze after handshakes, thaw when enough frozen connections have closed; count every pause."""

    def __init__(self, *, freeze_every_s: float = 30.0, thaw_after_closed: int = 1000) -> None:
        self.freeze_every_s = freeze_every_s
        self.thaw_after_closed = thaw_after_closed
        self.epoch = 0  # freezes so far; a connection opened in epoch e is frozen once epoch > e
        self.opened_since_freeze = 0
        self.closed_frozen = 0
        self.freezes = 0
        self.thaws = 0
        self.collections = [0, 0, 0]
        self.pause_max_s = 0.0
        self._last_freeze = 0.0
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

    def stop(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def opened(self) -> int:
        """A connection was accepted; its epoch, to hand back to :meth:`closed`."""
        self.opened_since_freeze += 1
        return self.epoch

    def closed(self, epoch: int) -> None:
        if epoch < self.epoch:
            self.closed_frozen += 1

    def tick(self, open_connections: int) -> None:
        """Called about once a second: freeze or thaw when due."""
        now = time.monotonic()
        if self.closed_frozen >= max(self.thaw_after_closed, open_connections):
            self.thaws += 1
            self.closed_frozen = 0
            gc.unfreeze()
            gc.collect()
            self._freeze()
        elif self.opened_since_freeze or now - self._last_freeze >= self.freeze_every_s:
            gc.collect(1)
            self._freeze()

    def _freeze(self) -> None:
        gc.freeze()
        self.freezes += 1
        self.epoch += 1
        self.opened_since_freeze = 0
        self._last_freeze = time.monotonic()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.collections[int(info.get("generation", 0))] += 1
        self.pause_max_s = max(self.pause_max_s, time.perf_counter() - self._started)

    def statistics(self) -> dict[str, Any]:
        """The fields of ServerStatistics that come from here."""
        return {"gc_collections": list(self.collections),
                "gc_pause_max_ms": round(self.pause_max_s * 1000, 1), "gc_frozen": gc.get_freeze_count()}
