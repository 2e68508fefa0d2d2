"""The queue-chat reference server.

This package's top level holds the wire protocol and the pure domain model
only; the Trio shell lives in :mod:`reference_server.server` and is never
imported from here, because the gevent-based load tests import the protocol.
"""

from . import domain, protocol
from .domain import QueueChatModel
from .protocol import Limits, clinician_token

__all__ = ["Limits", "QueueChatModel", "clinician_token", "domain", "protocol"]
