"""The GC policy of a long-lived server (``reference_server/_gcpolicy.py``): what it freezes, when it
thaws, what it counts. The collector is process-wide: every test leaves nothing frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from reference_server._gcpolicy import GcPolicy


@pytest.fixture
def policy() -> Iterator[GcPolicy]:
    policy = GcPolicy(thaw_every_s=3600.0)
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
    policy.tick()
    assert gc.get_freeze_count() >= frozen + 1000
    assert not any(made[0] is o for o in gc.get_objects())  # out of every generation's walk
    del made


def test_a_frozen_object_dropped_is_still_freed_by_its_reference_count(policy: GcPolicy) -> None:
    policy.start(freeze=True)
    node = Node()
    policy.tick()
    before = gc.get_freeze_count()
    del node
    assert gc.get_freeze_count() == before - 1


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
    """Frozen cyclic garbage is collected, at most every thaw_every_s (here 0: at the first tick after
    the frozen objects grew by half), and not while they have not grown (the fixture's hour)."""
    policy = GcPolicy(thaw_every_s=0.0)
    try:
        policy.start(freeze=True)
        policy.tick()
        assert policy.thaws == 0  # nothing grew
        grown = [Node() for _ in range(gc.get_freeze_count())]  # doubles the frozen objects
        for node in grown:
            node.other = node  # each its own cycle
        policy.tick()  # frozen now, with the cycles
        del grown
        frozen = gc.get_freeze_count()
        policy.tick()
        assert policy.thaws == 1
        assert gc.get_freeze_count() < frozen * 0.75  # the cycles were collected
    finally:
        policy.stop()
        gc.unfreeze()


def test_no_thaw_before_the_interval_however_much_was_frozen(policy: GcPolicy) -> None:
    policy.start(freeze=True)
    grown = [Node() for _ in range(2 * gc.get_freeze_count())]
    policy.tick()
    policy.tick()
    assert policy.thaws == 0
    del grown
