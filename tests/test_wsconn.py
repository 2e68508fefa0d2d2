"""The server's own WebSocket connections (``reference_server/_wsconn.py``) and the shell around them:
the private names of trio-websocket, wsproto and Trio the shell relies on (one test per name, so that
an upgrade that moves one fails here, by name), the scoping of the library fixes to the server's own
connections, and the coalesced ``position`` pushes (R30, docs/protocol.md "Choices").
"""

from __future__ import annotations

import ast
import contextlib
import gc
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing
import trio_websocket
from conftest import StartServer
from trio_websocket import WebSocketConnection
from wire import frame_types
from wsproto import ConnectionType, WSConnection

import reference_server
import reference_server._shell as shell
from reference_server._domain import Effect, PositionsChanged, Send
from reference_server._frames import Position, ProviderStatus
from reference_server._wsconn import PRIVATE_NAMES, ServerWebSocket

PACKAGE = Path(reference_server.__file__).parent
HANDLERS = ("_handle_close_connection_event", "_handle_message_event", "_handle_ping_event",
            "_handle_pong_event", "_handle_request_event")


def _library_connection() -> WebSocketConnection:
    stream, _ = trio.testing.memory_stream_pair()
    return WebSocketConnection(stream, WSConnection(ConnectionType.SERVER))  # type: ignore[arg-type]


@pytest.mark.parametrize(("where", "name", "kind"), PRIVATE_NAMES,
                         ids=[f"{where}.{name}" for where, name, _ in PRIVATE_NAMES])
async def test_each_private_name_the_shell_relies_on_exists_in_the_installed_library(
    where: str, name: str, kind: str,
) -> None:
    """If this fails after an upgrade, the named internal moved: see docs/server-internals.md for its use."""
    if where == "trio_websocket.WebSocketConnection":
        if kind == "method":
            assert callable(getattr(WebSocketConnection, name, None)), f"{where}.{name} is gone"
        else:
            assert hasattr(_library_connection(), name), f"{where}.{name} is gone"
    else:
        assert where == "trio.SocketStream.socket"
        sock = trio.socket.socket()
        try:
            assert hasattr(sock, name), f"{where}.{name} is gone"
            assert hasattr(sock._sock, "send")  # the non-blocking send of the stdlib socket
        finally:
            sock.close()


def test_the_library_reader_dispatches_the_events_the_server_handles_to_the_handlers_it_overrides() -> None:
    """ServerWebSocket's own reader replaces trio-websocket's ``_reader_task``: its handler table must be
    the one this module mirrors (an upgrade that adds or renames a handler fails here)."""
    source = Path(trio_websocket.__file__).with_name("_impl.py").read_text()
    for handler in HANDLERS:
        assert f"self.{handler}" in source, handler
    assert "async def _reader_task(self)" in source


def _private_attributes(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_")
            and not node.attr.startswith("__")}


def _own_names() -> set[str]:
    """Private names this package defines itself (methods, attributes it assigns, slots)."""
    own: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                own.add(node.value)  # __slots__ entries
    return own


def test_no_private_name_of_the_libraries_is_used_outside_the_list() -> None:
    """The shell uses none of the libraries' private names; _wsconn uses only the listed ones."""
    listed = {name for _, name, _ in PRIVATE_NAMES}
    library = set(dir(WebSocketConnection)) | set(vars(_library_connection())) | {"_sock"}
    own = _own_names() - listed
    shell = (_private_attributes(PACKAGE / "_shell.py") & library) - own
    assert shell == set(), f"the shell reaches into the library: {sorted(shell)}"
    wsconn = (_private_attributes(PACKAGE / "_wsconn.py") & (library | listed)) - own
    assert wsconn <= listed, f"not in PRIVATE_NAMES: {sorted(wsconn - listed)}"
    # And every listed name is still used (the list says what the code relies on, no more).
    # (Two are overridden only, never read as attributes.)
    overridden_only = {"_handle_request_event", "_close_web_socket"}
    assert listed <= _private_attributes(PACKAGE / "_wsconn.py") | overridden_only


def test_importing_the_server_changes_no_trio_websocket_connection() -> None:
    """The fixes are a subclass used for the server's own connections: importing the server (in a fresh
    interpreter) leaves trio-websocket's class, and so every client connection, as the library made it."""
    code = (
        "import trio_websocket\n"
        "c = trio_websocket.WebSocketConnection\n"
        "before = dict(vars(c))\n"
        "import reference_server.server\n"
        "after = dict(vars(c))\n"
        "changed = sorted(n for n in before.keys() | after.keys() if before.get(n) is not after.get(n))\n"
        "assert not changed, changed\n"
        "assert reference_server.server.QueueChatServer\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_server_connection_class_overrides_the_fixed_handlers() -> None:
    for handler in HANDLERS:
        assert getattr(ServerWebSocket, handler) is not getattr(WebSocketConnection, handler), handler
        assert getattr(WebSocketConnection, handler).__module__ == "trio_websocket._impl"


async def test_a_client_connection_in_the_server_process_keeps_the_library_behaviour(
    start_server: StartServer, room: str,
) -> None:
    """A trio-websocket client beside the server: its messages come through the library's own channel,
    with their text (the server's R13 emptying of handled events is not applied to it)."""
    live = await start_server()
    async with live.clinician(room) as clinician:
        assert type(clinician.ws) is WebSocketConnection
        await clinician.send({"type": "ping", "ref": "r1"})
        answer = await clinician.recv()
        assert answer == {"type": "ok", "ref": "r1"}


# ---------------------------------------------------------------------------------------------- R30


async def test_R30_one_departure_gives_every_waiting_patient_behind_its_new_position_once(
    start_server: StartServer, room: str,
) -> None:
    live = await start_server()
    async with live.clinician(room) as clinician, trio.open_nursery() as nursery:
        patients = [await nursery.start(_hold_patient, live, room, i) for i in range(21)]
        await clinician.barrier()
        patients[0][1].set()  # the first in the queue closes its connection: departs
        assert (await clinician.recv())["type"] == "patient_left"
        for position, (client, _) in enumerate(patients[1:], start=1):
            assert [f for f in await client.barrier() if f["type"] == "position"] == [
                {"type": "position", "position": position}]
        for _, done in patients:
            done.set()


async def test_R30_a_departure_at_the_head_of_120_patients_is_one_effect_the_flusher_expands_once(
    start_server: StartServer, room: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Choice 24: the model announces the departure's moves as one effect, not 119; the flusher asks
    the model once for the pushes, and each of the 119 patients behind gets its new place once. (The
    domain tests show the same for 500 without sockets; 120 keeps this test's handshakes cheap.)"""
    live = await start_server()
    server, model = live.server, live.server._model
    announced: list[Effect] = []
    expanded: list[int] = []
    apply, pending_positions = server._apply, model.pending_positions

    def spy_apply(effects: list[Effect], requester: shell._Connection | None = None) -> None:
        announced.extend(e for e in effects if isinstance(e, PositionsChanged))
        apply(effects, requester)

    def spy_pending(room_slug: str) -> list[Effect]:
        pushes = pending_positions(room_slug)
        expanded.append(len(pushes))
        return pushes

    monkeypatch.setattr(server, "_apply", spy_apply)
    monkeypatch.setattr(model, "pending_positions", spy_pending)
    async with live.clinician(room) as clinician, trio.open_nursery() as nursery, \
            contextlib.AsyncExitStack() as behind:
        _, first_leaves = await nursery.start(_hold_patient, live, room, 0)
        patients = [await behind.enter_async_context(live.patient(room, f"P{i}")) for i in range(119)]
        await clinician.barrier()
        first_leaves.set()
        assert (await clinician.recv())["type"] == "patient_left"
        for position, client in enumerate(patients, start=1):
            assert [f for f in await client.barrier() if f["type"] == "position"] == [
                {"type": "position", "position": position}]
        assert announced == [PositionsChanged(room)] and expanded == [119]


async def _hold_patient(live, room, i, task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
    done = trio.Event()
    async with live.patient(room, f"Patient {i}") as client:
        assert client.welcome["position"] == i + 1
        task_status.started((client, done))
        await done.wait()


async def test_R30_positions_queued_in_one_round_are_coalesced_to_the_latest_and_go_before_later_frames(
    start_server: StartServer, room: str,
) -> None:
    """Two changes of place before the flusher ran: the patient gets the latest value once; a frame
    queued after them goes after it (provider_status then position, as §5 asks, still holds for a
    change that comes with it)."""
    live = await start_server()
    server = live.server
    async with live.clinician(room) as clinician, live.patient(room) as patient:
        await clinician.barrier()
        conn_id = max(server._connections)  # the patient's (connected after the clinician)
        # Effects as the model makes them, applied in one synchronous step (no flusher round between).
        server._apply([Send(conn_id, Position(position=3)), Send(conn_id, Position(position=2))])
        server._apply([Send(conn_id, ProviderStatus(status="away")), Send(conn_id, Position(position=1))])
        frames = await patient.barrier()
        assert frames == [{"type": "position", "position": 2}, {"type": "provider_status", "status": "away"},
                          {"type": "position", "position": 1}]


async def test_R30_a_departure_queues_positions_a_slice_per_scheduler_round(
    start_server: StartServer, room: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pushes of a departure near the head of a full room are not all queued in one turn: the
    flusher queues a slice per round (here 2, for 6 patients), and every patient still gets its place."""
    live = await start_server()
    server = live.server
    monkeypatch.setattr(shell, "_POSITIONS_PER_ROUND", 2)
    slices: list[int] = []
    queue_positions = server._queue_positions

    def spy(n: int) -> None:
        before = len(server._positions)
        queue_positions(n)
        slices.append(before - len(server._positions))

    monkeypatch.setattr(server, "_queue_positions", spy)
    async with live.clinician(room) as clinician, trio.open_nursery() as nursery:
        patients = [await nursery.start(_hold_patient, live, room, i) for i in range(7)]
        await clinician.barrier()
        patients[0][1].set()
        assert (await clinician.recv())["type"] == "patient_left"
        for position, (client, _) in enumerate(patients[1:], start=1):
            assert [f for f in await client.barrier() if f["type"] == "position"] == [
                {"type": "position", "position": position}]
        for _, done in patients:
            done.set()
    assert slices[:3] == [2, 2, 2] and max(slices) == 2  # (then the others' departures at the end)


async def test_a_closed_connection_leaves_no_cyclic_garbage(start_server: StartServer, room: str) -> None:
    """The server's per-connection objects are freed by their reference counts when the connection
    ends (so the GC policy may freeze them): no collection is needed, none finds them."""
    live = await start_server()
    async with live.clinician(room) as clinician:
        async with live.patient(room) as patient:
            await patient.ok({"type": "send", "text": "a question"})
            await clinician.barrier()
        assert frame_types(await clinician.barrier())[0] == "patient_left"
        await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage} & {"ServerWebSocket", "_Connection", "_TailFirstLock",
                                                          "FrameProtocol", "Connection"}
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    assert left == set()
