"""File and text formats shared by the packages: each defined once, with its reader beside its writer.

Import the submodules directly (``from formats.duration import parse_duration``); this file imports
nothing, so that a light command loads only the format it reads.
"""
