"""Scenario files the simulator tests share (TOML text, as a user would write it)."""

from __future__ import annotations


def slow_readers(duration: str) -> str:
    """One room whose every connection reads 5 s late, on a server that drops a reader past 8 queued frames
    (R42): the reference server erases at the drop, before the client sees the close."""
    return f"""
name = "slow_readers"
duration = "{duration}"
[rooms]
count = 1
[server]
max_queued_frames = 8
[arrivals]
initial_queue = 6
[patients]
message_interval = {{ dist = "exponential", mean = "2s", min = "1s" }}
[faults]
slow_reader_fraction = 1.0
slow_reader_delay = "5s"
"""
