"""The server under test, in its own process: ``python benchmarks/_relay_server.py echo|relay``
(run as a script, not with -m: see relay.py).

Binds 127.0.0.1 port 0, prints ``port N`` on stdout once it listens (``relay``: followed by the
folder reference_server was imported from), and runs
until SIGTERM/SIGINT (or until stdin closes, so that it never outlives the
driver). ``relay`` is the reference server with the load-test rate limit and
no statistics logging; ``echo`` is a bare trio-websocket echo server.

Profiling: ``BENCH_CPROFILE=FILE`` runs the server under cProfile and writes
the stats to FILE when it stops (for call counts; the driver's ``--py-spy``
is the low-overhead sampler used for the time breakdown).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket


async def _echo_handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    while True:
        try:
            message = await ws.get_message()
            await ws.send_message(message)
        except ConnectionClosed:
            return


async def _until_stopped(nursery: trio.Nursery) -> None:
    """Return on SIGTERM/SIGINT or when stdin reaches EOF (the driver died)."""
    async def stdin_eof() -> None:
        def read_to_eof() -> None:
            while os.read(0, 4096):
                pass

        await trio.to_thread.run_sync(read_to_eof, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()

    nursery.start_soon(stdin_eof)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def _main(kind: str) -> None:
    async with trio.open_nursery() as nursery:
        if kind == "echo":
            server: Any = await nursery.start(
                lambda task_status: serve_websocket(_echo_handler, "127.0.0.1", 0, ssl_context=None,
                                                    task_status=task_status))
            port = server.port
            print(f"port {port}", flush=True)
            await _until_stopped(nursery)
            nursery.cancel_scope.cancel()
        else:
            from reference_server.protocol import (
                DEVELOPMENT_SECRET,
                LOAD_TEST_RATE_BURST,
                LOAD_TEST_RATE_PER_S,
                Limits,
            )
            from reference_server.server import QueueChatServer, configure_logging

            configure_logging("warning")
            limits = Limits(rate_per_s=LOAD_TEST_RATE_PER_S, rate_burst=LOAD_TEST_RATE_BURST)
            qc = QueueChatServer(secret=DEVELOPMENT_SECRET, limits=limits, stats_interval_s=None)
            url = await nursery.start(lambda task_status: qc.serve(host="127.0.0.1", port=0,
                                                                   task_status=task_status))
            import reference_server

            port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
            print(f"port {port} {Path(reference_server.__file__).parent}", flush=True)
            await _until_stopped(nursery)
            with trio.move_on_after(2):
                await qc.shutdown()
            nursery.cancel_scope.cancel()


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "relay"
    if kind not in ("echo", "relay"):
        sys.exit(f"usage: {sys.argv[0]} echo|relay")
    profile_to = os.environ.get("BENCH_CPROFILE")
    if not profile_to:
        trio.run(_main, kind)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        trio.run(_main, kind)
    finally:
        profiler.disable()
        profiler.dump_stats(profile_to)


if __name__ == "__main__":
    main()
