"""A test client for the wire: real WebSockets on loopback, every frame checked against docs/asyncapi.yaml.

Waits are on frames and on the ``ping`` barrier, never on sleeps; every
receive is bounded by ``fail_after`` so that a broken server fails a test
instead of hanging it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from conformance._exchange import exchange
from reference_server.protocol import RefNumbers, clinician_token
from reference_server.server import QueueChatServer
from tests.asyncapi_schema import validate_event

RECEIVE_TIMEOUT_S = 5.0
_refs = RefNumbers()


class Closed(Exception):
    """The server closed the connection while a frame was expected."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"connection closed with {code} ({reason})")
        self.code = code
        self.reason = reason


@dataclass
class WireClient:
    """One connection; ``seen`` keeps every frame received, in order."""

    ws: WebSocketConnection
    seen: list[dict[str, Any]] = field(default_factory=list)
    welcome: dict[str, Any] = field(default_factory=dict)

    @property
    def patient_id(self) -> str:
        return str(self.welcome["patient"])

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(frame))

    async def recv(self, timeout_s: float = RECEIVE_TIMEOUT_S) -> dict[str, Any]:
        with trio.fail_after(timeout_s):
            try:
                raw = await self.ws.get_message()
            except ConnectionClosed as closed:
                # trio-websocket 0.12's client leaves its socket to the garbage collector
                # after a close the server started (a ResourceWarning); let go of it here.
                await trio.aclose_forcefully(self.ws._stream)
                reason = closed.reason
                raise Closed(reason.code if reason else None, reason.reason if reason else None) from None
        assert isinstance(raw, str), "server sent a binary frame"
        frame = json.loads(raw)
        validate_event(frame)
        self.seen.append(frame)
        return dict(frame)

    async def request(self, frame: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Send ``frame`` with a fresh ref; return (events before the answer, the answer)."""
        events, answer = await exchange(self.send, self.recv, frame, _refs.fresh("r"))
        assert answer is not None
        return events, answer

    async def ok(self, frame: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        events, answer = await self.request(frame)
        assert answer["type"] == "ok", f"expected ok for {frame['type']}, got error {answer.get('code')}"
        return events, answer

    async def error(self, frame: dict[str, Any], code: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        events, answer = await self.request(frame)
        assert answer["type"] == "error", f"expected error {code} for {frame['type']}, got ok"
        assert answer["code"] == code, f"expected error {code} for {frame['type']}, got {answer['code']}"
        return events, answer

    async def barrier(self) -> list[dict[str, Any]]:
        """Every frame caused so far on this connection (the ``ping`` barrier), in order."""
        events, _ = await self.ok({"type": "ping"})
        return events

    async def expect_close(
        self, timeout_s: float = RECEIVE_TIMEOUT_S
    ) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the server closes; return the close code and the frames before it."""
        frames: list[dict[str, Any]] = []
        while True:
            try:
                frames.append(await self.recv(timeout_s))
            except Closed as closed:
                return closed.code, frames

    async def aclose(self) -> None:
        await self.ws.aclose()


@dataclass
class LiveServer:
    """A reference server on 127.0.0.1 with an OS-chosen port."""

    url: str
    secret: str
    server: QueueChatServer
    nursery: trio.Nursery

    def token(self, room: str) -> str:
        return clinician_token(self.secret, room)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[WireClient]:
        async with open_websocket_url(self.url) as ws:
            yield WireClient(ws)

    @asynccontextmanager
    async def clinician(self, room: str, **extra: Any) -> AsyncIterator[WireClient]:
        async with self.connect() as client:
            await client.send({"type": "hello", "role": "clinician", "room": room, "token": self.token(room),
                               **extra})
            client.welcome = await client.recv()
            assert client.welcome["type"] == "welcome", client.welcome
            yield client

    @asynccontextmanager
    async def patient(self, room: str, name: str = "Test Patient", **extra: Any) -> AsyncIterator[WireClient]:
        async with self.connect() as client:
            await client.send({"type": "hello", "role": "patient", "room": room, "name": name, **extra})
            client.welcome = await client.recv()
            assert client.welcome["type"] == "welcome", client.welcome
            yield client


def frame_types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]
