"""Reads of new connections, at most a few per scheduler round: a burst of arrivals or departures
does not stall the sessions already open.

Trio wakes every task whose socket became readable in one scheduler round. When 2,000 clients
that arrived together send their hellos, or leave, together, the server's next round runs 2,000
reads, parses and answers before anyone else's message (10-50 ms on this project's machine).
Connections in their first seconds (the shell sets how many) wait for their socket here instead:
a private epoll set, one-shot per wait, that one task drains ``per_round`` events at a time. What
is left is reported by the kernel at the next round, in arrival order; the sessions already open
are read as Trio reads them, at once.

Linux only (``select.epoll``); elsewhere :func:`new_read_gate` gives ``None`` and every
connection is read the usual way.
"""

from __future__ import annotations

import contextlib
import select

import outcome
import trio

# What a wait is for: readable, or the peer hung up or reset (reported with no asking).
_WANTED = select.EPOLLIN | select.EPOLLONESHOT if hasattr(select, "EPOLLONESHOT") else 0


class ReadGate:
    """One epoll set; :meth:`wait_readable` parks a task until its socket is readable and the
    gate's turn comes; :meth:`run` (one task per server) lets ``per_round`` through a round."""

    def __init__(self, per_round: int) -> None:
        self.per_round = per_round
        self._epoll = select.epoll()
        self._waiting: dict[int, trio.lowlevel.Task] = {}
        self.woken = 0  # statistics: reads let through

    def close(self) -> None:
        """Wake every waiter with ClosedResourceError (the server is ending) and drop the epoll set."""
        waiting, self._waiting = self._waiting, {}
        for task in waiting.values():
            trio.lowlevel.reschedule(task, outcome.Error(trio.ClosedResourceError("the server is closing")))
        self._epoll.close()

    async def run(self) -> None:
        """Wake at most ``per_round`` waiting readers each round in which some socket is readable."""
        epoll, waiting, per_round = self._epoll, self._waiting, self.per_round
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, per_round):
                    task = waiting.pop(fd, None)
                    if task is not None:  # None: its wait was cancelled after the kernel saw data
                        self.woken += 1
                        trio.lowlevel.reschedule(task)
        finally:
            self.close()

    async def wait_readable(self, fd: int) -> None:
        """Return once socket ``fd`` is readable (or hung up) and its turn has come; a checkpoint.

        ClosedResourceError if the socket is closed (see :meth:`notify_closing`) or the gate is.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if fd < 0 or self._epoll.closed:
            raise trio.ClosedResourceError("the socket is closed")
        if fd in self._waiting:
            raise trio.BusyResourceError("another task is already reading this socket")
        try:
            self._epoll.modify(fd, _WANTED)
        except FileNotFoundError:  # first wait of this socket (or a new socket on a reused fd)
            self._epoll.register(fd, _WANTED)
        self._waiting[fd] = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            if self._waiting.pop(fd, None) is not None and not self._epoll.closed:
                with contextlib.suppress(OSError):
                    self._epoll.modify(fd, 0)  # disarmed until the next wait
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def notify_closing(self, fd: int) -> None:
        """Socket ``fd`` is about to be closed by another task: its waiter gets ClosedResourceError,
        as with Trio's own ``notify_closing`` (a closed fd leaves the epoll set unseen)."""
        task = self._waiting.pop(fd, None)
        if fd >= 0 and not self._epoll.closed:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        if task is not None:
            closed = trio.ClosedResourceError("another task closed this socket")
            trio.lowlevel.reschedule(task, outcome.Error(closed))

    def forget(self, fd: int) -> None:
        """Socket ``fd`` no longer waits here (its connection grew up): leave the epoll set."""
        if fd >= 0 and fd not in self._waiting and not self._epoll.closed:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)


def new_read_gate(per_round: int) -> ReadGate | None:
    """A gate where the platform has epoll (Linux), else None."""
    if not hasattr(select, "epoll") or not _WANTED:
        return None
    return ReadGate(per_round)
