"""For comparison only (``python -m benchmarks.simulate_throughput --configs plain:1``): the simulator's
agents over trio-websocket's own client instead of the simulator's lean client.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from simulator import ABNORMAL_CLOSURE, ConnectionHandler, MemoryListener

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def open_plain_client(handler: ConnectionHandler, nursery: trio.Nursery, listener: MemoryListener,
                      target: str) -> PlainClient:
    """The simulator's ``stack`` hook: one connection of the plain stack, started."""
    client = PlainClient(handler, nursery, listener)
    client.start_plain(target)
    return client


class PlainClient:
    """The straightforward stack: trio-websocket's own client over ``trio.testing.memory_stream_pair``,
    with a reader task and a writer task per connection. Same interface as the simulator's
    ``ClientProtocol``; no stall faults.
    """

    def __init__(self, handler: ConnectionHandler, nursery: trio.Nursery, listener: MemoryListener) -> None:
        self._handler = handler
        self._nursery = nursery
        self._listener = listener
        self._outgoing: list[str | int] = []  # texts to send; an int is a close code
        self._writable = trio.lowlevel.ParkingLot()
        self._scope = trio.CancelScope()
        self._dropped = False
        self.open = False
        self.closed = False

    def start_plain(self, target: str) -> None:
        self._nursery.start_soon(self._run, target)

    def send(self, frame: dict[str, Any]) -> int:
        if not self.open or self.closed:
            return 0
        text = _encode(frame).decode("utf-8")
        self._outgoing.append(text)
        self._writable.unpark_all()
        return len(text.encode("utf-8"))

    def close(self, code: int = 1000) -> None:
        if self.open and not self.closed:
            self._outgoing.append(code)
            self._writable.unpark_all()

    def drop(self) -> None:
        self._dropped = True
        self._scope.cancel()
        self._finish(ABNORMAL_CLOSURE, "client")

    def _finish(self, code: int, by: str) -> None:
        if not self.closed:
            self.closed = True
            self.open = False
            self._handler.on_close(code, by)

    async def _run(self, target: str) -> None:
        client, server = trio.testing.memory_stream_pair()
        self._listener.connect(server)
        code, by = ABNORMAL_CLOSURE, "server"
        with self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    ws = await wrap_client_stream(nursery, client, "simulator.invalid", target)  # type: ignore[arg-type]
                    self.open = True
                    self._handler.on_open()
                    nursery.start_soon(self._writer, ws)
                    while True:
                        try:
                            text = await ws.get_message()
                        except ConnectionClosed as closed:
                            reason = closed.reason
                            code = reason.code if reason is not None else ABNORMAL_CLOSURE
                            break
                        frame = _decode(text)
                        self._handler.on_frame(frame, len(text) if isinstance(text, bytes) else
                                               len(text.encode("utf-8")))
                    nursery.cancel_scope.cancel()
            except Exception:
                code = ABNORMAL_CLOSURE
        if self._dropped:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)
            return
        self._finish(int(code), by)

    async def _writer(self, ws: WebSocketConnection) -> None:
        while True:
            while self._outgoing:
                item = self._outgoing.pop(0)
                try:
                    if isinstance(item, int):
                        await ws.aclose(item)
                        return
                    await ws.send_message(item)
                except ConnectionClosed:
                    return
            await self._writable.park()
