"""The GC policy of a long-lived server (``reference_server/_gcpolicy.py``): what it freezes, when it
thaws, what it counts. The collector is process-wide: every test leaves nothing frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from reference_server._gcpolicy import GcPolicy


@pytest.fixture
def policy() -> Iterator[GcPolicy]:
    policy = GcPolicy(thaw_after_closed=3)
    try:
        yield policy
    finally:
        policy.stop()
        gc.unfreeze()


class Node:
    """A container the collector tracks."""

    def __init__(self) -> None:
        self.other: object = None


def test_start_freezes_what_exists_and_each_tick_freezes_what_was_made_since(policy: GcPolicy) -> None:
    policy.start(freeze=True)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    made = [Node() for _ in range(1000)]
    assert all(gc.is_tracked(n) for n in made)
    policy.tick(open_connections=10)
    assert gc.get_freeze_count() >= frozen + 1000
    assert not any(made[0] is o for o in gc.get_objects())  # out of every generation's walk
    del made


def test_a_frozen_object_dropped_is_still_freed_by_its_reference_count(policy: GcPolicy) -> None:
    policy.start(freeze=True)
    node = Node()
    policy.tick(open_connections=0)
    before = gc.get_freeze_count()
    del node
    assert gc.get_freeze_count() == before - 1


def test_cyclic_garbage_of_closed_frozen_connections_is_collected_at_the_thaw(policy: GcPolicy) -> None:
    """Frozen cycles are not collected; once as many frozen connections closed as the bound (here 3,
    above the open ones), the tick thaws, collects in full and freezes again."""
    policy.start(freeze=True)
    epochs = [policy.opened() for _ in range(3)]
    cycle = Node()
    cycle.other = Node()
    cycle.other.other = cycle  # type: ignore[attr-defined]
    policy.tick(open_connections=3)  # frozen, with the three connections
    probe = id(cycle)
    del cycle
    for epoch in epochs[:2]:
        policy.closed(epoch)
    policy.tick(open_connections=1)  # 2 closed < 3: no thaw
    gc.collect()
    assert policy.thaws == 0
    assert any(id(o) == probe for o in _frozen_and_alive())
    policy.closed(epochs[2])
    policy.tick(open_connections=0)
    assert policy.thaws == 1
    assert not any(id(o) == probe for o in _frozen_and_alive())


def _frozen_and_alive() -> list[object]:
    gc.unfreeze()
    try:
        return [o for o in gc.get_objects() if type(o) is Node]
    finally:
        gc.freeze()


def test_a_connection_opened_after_the_last_freeze_does_not_count_toward_the_thaw(policy: GcPolicy) -> None:
    policy.start(freeze=True)
    epoch = policy.opened()
    policy.closed(epoch)  # closed before any freeze: its objects were never frozen
    assert policy.closed_frozen == 0


def test_collections_are_counted_by_generation_with_the_longest_pause(policy: GcPolicy) -> None:
    policy.start(freeze=False)
    assert gc.get_freeze_count() == 0
    gc.collect(0)
    gc.collect(2)
    stats = policy.statistics()
    assert stats["gc_collections"][0] >= 1 and stats["gc_collections"][2] >= 1
    assert stats["gc_pause_max_ms"] >= 0.0
    policy.stop()
    gc.collect(1)
    assert policy.statistics()["gc_collections"][1] == 0


def test_frozen_objects_grown_by_half_are_thawed_and_collected_after_the_interval() -> None:
    """Cyclic garbage from elsewhere than closed connections is collected too, at most every
    thaw_every_s (here 0: at the first tick after the growth)."""
    policy = GcPolicy(thaw_after_closed=10**9, thaw_every_s=0.0)
    try:
        policy.start(freeze=True)
        policy.tick(open_connections=0)
        assert policy.thaws == 0  # nothing grew
        grown = [Node() for _ in range(gc.get_freeze_count())]  # doubles the frozen objects
        for node in grown:
            node.other = node  # each its own cycle
        policy.tick(open_connections=0)  # frozen now, with the cycles
        del grown
        frozen = gc.get_freeze_count()
        policy.tick(open_connections=0)
        assert policy.thaws == 1
        assert gc.get_freeze_count() < frozen * 0.75  # the cycles were collected
    finally:
        policy.stop()
        gc.unfreeze()
