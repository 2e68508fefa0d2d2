"""Test support shared by the project's tests and benchmarks, imported as ``tests.support`` (README.md here).

This module and the second server import nothing of the project; the raw clients use its codec.
"""

from __future__ import annotations

import hashlib
import hmac

DEV_SECRET = "queuechat-development-secret"


def clinician_token(secret: str, room: str) -> str:
    """The contract's clinician token, ``hex(HMAC-SHA256(secret, room))``, without the reference server."""
    return hmac.new(secret.encode("utf-8"), room.encode("utf-8"), hashlib.sha256).hexdigest()
