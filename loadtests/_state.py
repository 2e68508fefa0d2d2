"""What the users and the plugin of one Locust process share: the rooms that are live, and the part of
the process's state the users draw on.

The users (:mod:`loadtests._users`) and the plugin (:mod:`loadtests._plugin`, Locust's event hooks)
both import this module and neither imports the other: the plugin builds the whole process state
(a :class:`RecordingState` with the merging and the results on top) and registers it here; a user
looks it up by its Locust environment.
"""

from __future__ import annotations

import itertools
import sys
import time
import weakref
from collections.abc import Sized
from typing import Protocol

from locust.env import Environment

from ._client import UNAUTHORIZED
from ._hdr import Recorder
from ._settings import Settings, from_options

ROLE_LOCAL, ROLE_MASTER, ROLE_WORKER = "local", "master", "worker"


class LiveClient(Protocol):
    """What the plugin needs of a live room when the test stops (a :class:`loadtests._users.RoomClient`)."""

    stopping: bool

    @property
    def pending(self) -> Sized: ...

    def end_schedule(self) -> None: ...

    def expire_pending(self, code: str) -> int: ...


# Every live room of this process, so that the plugin can count messages in flight when it flushes.
LIVE_CLIENTS: weakref.WeakSet[LiveClient] = weakref.WeakSet()


class RecordingState:
    """What a process's users record into and draw from, for the test that runs now: the settings, the
    recorder, the seed and the users' numbering, and who gave up."""

    def __init__(self, environment: Environment, role: str) -> None:
        self.environment = environment
        self.role = role
        self.settings: Settings = from_options(environment.parsed_options)
        self.recorder = Recorder(interval_s=self.settings.interval_s)
        self.started_at = time.time()
        self.seed = 0
        self._user_numbers = itertools.count()
        self._said: set[str] = set()

    def next_user_number(self) -> int:
        """This process's users in the order they are made, from 0 each test: with the seed, each user's
        random stream."""
        return next(self._user_numbers)

    def worker_index(self) -> int:
        """Locust's index for this worker (given by the master), 0 for a single process."""
        index = getattr(self.environment.runner, "worker_index", 0) if self.role == ROLE_WORKER else 0
        return max(0, int(index or 0))

    def user_gave_up(self, reason: str) -> None:
        """A user stops before the end: recorded (the run is invalid) and said once per reason."""
        self.recorder.user_stopped(reason)
        if reason in self._said:
            return
        self._said.add(reason)
        at = time.time() - self.started_at
        print(f"queuechat: {reason}" if reason == UNAUTHORIZED else
              f"queuechat: a user stopped at {at:.1f} s: {reason}; the run will be invalid",
              file=sys.stderr, flush=True)


_STATES: weakref.WeakKeyDictionary[Environment, RecordingState] = weakref.WeakKeyDictionary()


def register_process_state(environment: Environment, state: RecordingState) -> None:
    """The plugin's state for this environment, made when Locust initialises the process."""
    _STATES[environment] = state


def process_state(environment: Environment) -> RecordingState:
    state = _STATES.get(environment)
    if state is None:  # an Environment made without Locust's init event (a library use)
        state = _STATES[environment] = RecordingState(environment, ROLE_LOCAL)
    return state
