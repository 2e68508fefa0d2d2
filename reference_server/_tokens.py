"""Clinician tokens: ``hex(HMAC-SHA256(secret, room))``, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

# Used only when the server is bound to loopback; the server says so when it starts.
DEVELOPMENT_SECRET = "queuechat-development-secret"


def clinician_token(secret: str | bytes, room: str) -> str:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, room.encode("utf-8"), hashlib.sha256).hexdigest()


def token_is_valid(secret: str | bytes, room: str, token: str) -> bool:
    expected = clinician_token(secret, room).encode("ascii")
    try:
        given = token.encode("ascii")
    except UnicodeEncodeError:
        given = b""
    # compare_digest takes time that depends on length only, never on content.
    return hmac.compare_digest(expected, given)
