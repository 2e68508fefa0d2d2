"""Fixtures: a live reference server on loopback (port 0) and wire clients.

Set QUEUECHAT_TEST_VARIANT to the name of a deliberately wrong model in
``variants.py`` to run the same tests against it (test_variants.py does).
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import structlog
import trio
from wire import LiveServer

from reference_server._logging import configure_logging
from reference_server.domain import QueueChatModel
from reference_server.protocol import Limits
from reference_server.server import QueueChatServer

TEST_SECRET = "test-secret-not-for-production"

# Tests stop commands with SIGINT, as Ctrl-C does. A shell that runs pytest as a background job starts it
# with SIGINT ignored, and an ignored signal stays ignored across exec: every child would ignore the
# SIGINT a test sends and be killed at the test's timeout instead. A handler (unlike SIG_IGN) is reset
# to the default in children, so install Python's usual one when the parent was started ignoring it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

StartServer = Callable[..., Awaitable[LiveServer]]


@pytest.fixture(scope="session", autouse=True)
def server_logs_to_nowhere() -> Iterator[None]:
    """In-process servers log JSON lines at warning level into nothing: structlog's default (every debug
    line printed to stdout) would reach the terminal from servers that run in threads, between tests.
    Tests that read logs configure their own and put this back."""
    saved = structlog.get_config()
    with open(os.devnull, "w", encoding="utf-8") as nowhere:
        configure_logging("warning", stream=nowhere)
        yield
    structlog.configure(**saved)


@pytest.fixture
def quiet_server_logs() -> Iterator[None]:
    """In-process servers and simulations log at error level only, then structlog is put back as it was
    (modules that run whole simulations use it: ``pytestmark = pytest.mark.usefixtures(...)``)."""
    saved = structlog.get_config()
    configure_logging("error")
    yield
    structlog.configure(**saved)


def _model_class() -> type[QueueChatModel]:
    name = os.environ.get("QUEUECHAT_TEST_VARIANT")
    if not name:
        return QueueChatModel
    from variants import VARIANTS

    return VARIANTS[name].model


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> AsyncIterator[StartServer]:
    """Start servers with chosen limits; all are shut down (R46) at the end of the test."""
    started: list[QueueChatServer] = []

    async def start(limits: Limits | None = None, **options: Any) -> LiveServer:
        server = QueueChatServer(secret=TEST_SECRET, limits=limits, stats_interval_s=None,
                                 model_class=_model_class(), **options)
        url = await nursery.start(lambda task_status: server.serve(host="127.0.0.1", port=0,
                                                                   task_status=task_status))
        started.append(server)
        return LiveServer(url=url, secret=TEST_SECRET, server=server, nursery=nursery)

    yield start
    for server in started:
        await server.shutdown()
    for server in started:
        # A server bug is contained to one connection and counted; no test may hide one.
        assert server.statistics().internal_errors == 0, "the server hit an internal error"


@pytest.fixture
async def live(start_server: StartServer) -> LiveServer:
    """A server with the contract's default limits."""
    return await start_server()


_room_counter = iter(range(1, 10**9))


@pytest.fixture
def room() -> str:
    """A fresh room slug per test."""
    return f"room-{next(_room_counter)}"
