"""The files the tools leave behind and the texts they share, each format defined once with its writer and
reader side by side:

- ``formats.history``: a simulation's history (``queuechat-history`` version 1, JSON Lines);
- ``formats.hlog``: the load tests' HdrHistogram interval log (``latency.hlog``), the names of what is
  timed, and the percentile query;
- ``formats.timeline``: the load run's ``timeline.csv``;
- ``formats.summary``: a load run's ``summary.json`` and a simulation's ``*.summary.json``;
- ``formats.junit``: JUnit XML verdicts for CI;
- ``formats.duration``: durations as every command and scenario file writes them (``90s``, ``2m30``).

They import the standard library, hdrhistogram, numpy and msgspec, and none of the other packages, so
that the reports can read what the simulator and the load tests wrote without importing either. Import
the submodules directly; this file imports nothing, so that a light command loads only what it reads.
"""
