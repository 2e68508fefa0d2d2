"""The read gate (reference_server/_readgate.py): young connections' reads, a few per scheduler round.

The gate itself with socket pairs (plain pytest-trio), then the shell with it over loopback: a
young connection is read through the gate, an older one by Trio, and a session behaves the same
either way.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from conftest import StartServer
from test_shell import wait_for_stats

from reference_server import _shell
from reference_server._readgate import ReadGate, new_read_gate
from reference_server.protocol import Limits

pytestmark = pytest.mark.skipif(new_read_gate(1) is None, reason="the read gate needs epoll (Linux)")


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


Pair = tuple[socket.socket, socket.socket]


def socket_pairs(made: list[Pair], n: int) -> list[Pair]:
    for _ in range(n):
        a, b = socket.socketpair()
        a.setblocking(False)
        made.append((a, b))
    return made[-n:]


class Rounds(trio.abc.Instrument):
    """Counts scheduler rounds: Trio polls for I/O once before each batch of runnable tasks."""

    def __init__(self) -> None:
        self.now = 0

    def after_io_wait(self, timeout: float) -> None:
        self.now += 1


async def test_the_gate_lets_at_most_per_round_readers_through_a_round_and_every_one_in_the_end(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    gate = ReadGate(per_round=3)
    rounds = Rounds()
    woken_in: Counter[int] = Counter()
    ready = socket_pairs(pairs, 20)
    all_woken = trio.Event()
    woken = 0

    async def reader(sock: socket.socket) -> None:
        nonlocal woken
        await gate.wait_readable(sock.fileno())
        woken_in[rounds.now] += 1
        assert sock.recv(10) == b"x"
        woken += 1
        if woken == len(ready):
            all_woken.set()

    trio.lowlevel.add_instrument(rounds)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gate.run)
            for ours, _ in ready:
                nursery.start_soon(reader, ours)
            await trio.testing.wait_all_tasks_blocked()
            for _, theirs in ready:
                theirs.send(b"x")  # all readable at once: a storm
            await all_woken.wait()
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(rounds)
    assert sum(woken_in.values()) == 20
    assert max(woken_in.values()) <= 3, woken_in
    assert gate.woken == 20


async def test_a_socket_closed_by_another_task_wakes_its_waiter_with_closed_resource_error(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    gate = ReadGate(per_round=4)
    [(ours, _)] = socket_pairs(pairs, 1)
    fd = ours.fileno()
    failures: list[BaseException] = []

    async def waiter() -> None:
        try:
            await gate.wait_readable(fd)
        except trio.ClosedResourceError as error:
            failures.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.run)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        gate.notify_closing(fd)
        ours.close()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [type(f) for f in failures] == [trio.ClosedResourceError]


async def test_a_cancelled_wait_leaves_nothing_behind_and_the_socket_can_wait_again(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    gate = ReadGate(per_round=4)
    [(ours, theirs)] = socket_pairs(pairs, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.run)
        with trio.move_on_after(0.05) as waited:
            await gate.wait_readable(ours.fileno())
        assert waited.cancelled_caught
        theirs.send(b"x")  # readiness after the cancel: no one woken by it, and no BusyResourceError below
        await gate.wait_readable(ours.fileno())
        assert ours.recv(10) == b"x"
        nursery.cancel_scope.cancel()


async def test_a_new_socket_on_a_reused_fd_waits_as_any_other(pairs: list[Pair]) -> None:
    gate = ReadGate(per_round=4)
    [(first, first_peer)] = socket_pairs(pairs, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.run)
        first_peer.send(b"1")
        await gate.wait_readable(first.fileno())  # registered, then disarmed (one-shot)
        fd = first.fileno()
        first.close()
        [(second, second_peer)] = socket_pairs(pairs, 1)
        assert second.fileno() == fd  # the kernel gives the lowest free number back
        second_peer.send(b"2")
        await gate.wait_readable(second.fileno())
        assert second.recv(10) == b"2"
        nursery.cancel_scope.cancel()


async def test_closing_the_gate_wakes_every_waiter(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    gate = ReadGate(per_round=4)
    failures: list[type[BaseException]] = []

    async def waiter(fd: int) -> None:
        try:
            await gate.wait_readable(fd)
        except trio.ClosedResourceError as error:
            failures.append(type(error))

    async with trio.open_nursery() as nursery:
        for ours, _ in socket_pairs(pairs, 3):
            nursery.start_soon(waiter, ours.fileno())
        await trio.testing.wait_all_tasks_blocked()
        gate.close()
    assert failures == [trio.ClosedResourceError] * 3
    with pytest.raises(trio.ClosedResourceError):
        await gate.wait_readable(pairs[0][0].fileno())


NO_PINGS = Limits(ping_interval_s=None, ping_timeout_s=None)


async def test_a_young_connection_is_read_through_the_gate_and_leaves_it_after_its_first_seconds(
    start_server: StartServer, room: str, mock_clock: trio.testing.MockClock
) -> None:
    live = await start_server(NO_PINGS)
    gate = live.server._read_gate
    assert gate is not None
    async with live.clinician(room) as clinician, live.patient(room) as patient:
        patient_id = patient.welcome["patient"]
        through_gate = gate.woken
        await patient.ok({"type": "send", "text": "young"})
        assert gate.woken > through_gate  # read at the gate
        mock_clock.jump(_shell._JUNIOR_S + 1)
        # The reader was already waiting at the gate: this read is the gate's, the next ones Trio's.
        await patient.ok({"type": "send", "text": "grown up"})
        through_gate = gate.woken
        for i in range(3):
            await patient.ok({"type": "send", "text": f"old {i}"})
        assert gate.woken == through_gate
        await clinician.barrier()
        _, answer = await clinician.ok({"type": "open_chat", "patient": patient_id})
        assert [m["text"] for m in answer["messages"]] == ["young", "grown up", "old 0", "old 1", "old 2"]


@pytest.mark.parametrize("junior_s", [0.0, _shell._JUNIOR_S], ids=["read-by-trio", "read-at-the-gate"])
async def test_a_session_ends_the_same_read_either_way(
    start_server: StartServer, room: str, junior_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closes from both sides and a server-side close of a waiting reader (leave) tear the connection
    down, whichever way it is read."""
    monkeypatch.setattr(_shell, "_JUNIOR_S", junior_s)
    live = await start_server()
    async with live.clinician(room) as clinician:
        async with live.patient(room) as leaving:
            await leaving.ok({"type": "send", "text": "bye"})
            await leaving.send({"type": "leave"})
            code, _ = await leaving.expect_close()
            assert code == 1000
        async with live.patient(room) as dropping:
            await dropping.ok({"type": "send", "text": "gone"})
        await clinician.barrier()
    await wait_for_stats(live.server, connections_open=0, internal_errors=0)
