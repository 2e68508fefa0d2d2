"""``queuechat serve``: the reference server in the foreground, stopped by SIGINT/SIGTERM (R46)."""

from __future__ import annotations

import signal
import sys

import trio

from reference_server.protocol import Limits
from reference_server.server import QueueChatServer, configure_logging, get_logger

from ._links import page_lines


async def _serve_until_signal(server: QueueChatServer, host: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(lambda task_status: server.serve(host=host, port=port,
                                                                       task_status=task_status))
            print(f"queuechat serve: ready on {url}", flush=True)
            for line in page_lines(url):
                print(line, flush=True)
            async for signum in signals:
                get_logger("queuechat.serve").info("server.signal", signal=signal.Signals(signum).name)
                await server.shutdown()
                break


def run_server(*, host: str, port: int, secret: str, limits: Limits, stats_interval_s: float | None,
               log_level: str) -> int:
    configure_logging(log_level)
    # The server has this process to itself: the GC policy for a long-lived server is on (_gcpolicy).
    server = QueueChatServer(secret=secret, limits=limits, stats_interval_s=stats_interval_s, gc_freeze=True)
    failure: list[OSError] = []
    try:
        trio.run(_serve_until_signal, server, host, port)
    except* OSError as group:
        failure.extend(e for e in group.exceptions if isinstance(e, OSError))
    if failure:
        error = failure[0]
        print(f"queuechat serve: cannot listen on {host}:{port}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0
