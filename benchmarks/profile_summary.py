"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) of the server.

    .venv/bin/python -m benchmarks.profile_summary /tmp/relay.txt [--top 25]

Prints where the time goes, by layer (each sample is put in the layer of its
innermost recognised frame, so that e.g. a socket send under the writer
counts as socket I/O), then the functions with the most self time and the
most inclusive time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")

# (layer, predicate on (func, file)), innermost frame first.
LAYERS: list[tuple[str, str, str]] = [
    ("socket syscalls (trio socket recv/send)", "trio/_socket.py", ""),
    ("socket syscalls (trio socket recv/send)", "trio/_highlevel_socket.py", ""),
    ("socket syscalls (trio socket recv/send)", "_wsconn.py", "send_nowait"),
    ("JSON decode/validate/encode (msgspec, _codec)", "_codec.py", ""),
    ("JSON decode/validate/encode (msgspec, _codec)", "msgspec/", ""),
    ("domain model (_domain)", "_domain.py", ""),
    ("frame building (_frames)", "_frames.py", ""),
    ("wsproto", "wsproto/", ""),
    ("trio-websocket", "trio_websocket/", ""),
    ("the server's connections (_wsconn: reading, framing)", "_wsconn.py", ""),
    ("trio memory channel", "trio/_channel.py", ""),
    ("server shell (_shell: reader, apply, writer)", "_shell.py", ""),
    ("trio scheduler, epoll, checkpoints", "trio/", ""),
    ("echo handler", "_relay_server.py", "_echo_handler"),
]


_WSPROTO_SEND = (".send", ".send_data", "._serialize_frame", ".ping", ".pong", ".close")


def parse(path: str) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            text, _, count = line.rpartition(" ")
            frames = []
            for part in text.split(";"):
                m = _FRAME.match(part)
                frames.append((m.group("func"), m.group("file")) if m else (part, ""))
            stacks.append((frames, int(count)))
    return stacks


def layer_of(frames: list[tuple[str, str]]) -> str:
    for func, file in reversed(frames):
        for name, file_part, func_part in LAYERS:
            if file_part in file and func_part in func:
                if name == "wsproto":
                    sending = any("wsproto/" in p and f.endswith(_WSPROTO_SEND) for f, p in frames)
                    return "wsproto (send)" if sending else "wsproto (receive: parse, unmask, UTF-8)"
                return name
    return "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    stacks = parse(args.profile)
    total = sum(count for _, count in stacks)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    layers: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        layers[layer_of(frames)] += count
        func, file = frames[-1]
        self_time[f"{func} ({file})"] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            inclusive[name] += count
    print(f"{total} samples\n\nby layer:")
    for name, count in layers.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("\nself time:")
    for name, count in self_time.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("\ninclusive time:")
    for name, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
