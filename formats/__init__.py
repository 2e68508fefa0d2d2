"""The files the tools leave behind, each format defined once with its writer and reader side by side:

- ``formats.history``: a simulation's history (``queuechat-history`` version 1, JSON Lines);
- ``formats.hlog``: the load tests' HdrHistogram interval log (``latency.hlog``), the names of what is
  timed, and the percentile query;
- ``formats.timeline``: the load run's ``timeline.csv``;
- ``formats.summary``: a load run's ``summary.json`` and a simulation's ``*.summary.json``;
- ``formats.junit``: JUnit XML verdicts for CI.

They import the standard library, hdrhistogram, numpy and msgspec, and none of the other packages, so
that the reports can read what the simulator and the load tests wrote without importing either.
"""
