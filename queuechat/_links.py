"""Addresses of the pages the reference server serves (docs/console.md), from its ``ws://`` endpoint.

Pure (standard library only): ``queuechat token --console`` uses it without starting anything.
The clinician's token goes in the URL *fragment*, which a browser never sends to a server.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

WS_PATH = "/v1/ws"


class LinkError(ValueError):
    """A URL that is not a server's ``ws://HOST:PORT/v1/ws`` endpoint."""


def http_base(ws_url: str) -> str:
    """``ws://HOST:PORT/v1/ws`` -> ``http://HOST:PORT`` (``wss`` -> ``https``)."""
    try:
        parts = urlsplit(ws_url)
        parts.port  # noqa: B018  # raises on a bad port
    except ValueError as error:
        raise LinkError(f"{ws_url!r} is not a URL: {error}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.path != WS_PATH \
            or parts.query or parts.fragment:
        raise LinkError(f"{ws_url!r}: expected ws://HOST:PORT{WS_PATH} (or wss://)")
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc.rpartition('@')[2]}"


def console_link(ws_url: str, room: str, token: str) -> str:
    """The clinician console for ``room``, ready to open: room and token in the fragment."""
    return f"{http_base(ws_url)}/console#room={quote(room, safe='')}&token={quote(token, safe='')}"


def console_page(ws_url: str) -> str:
    """The console without a token (the page asks for room and token)."""
    return f"{http_base(ws_url)}/console"


def patient_link(ws_url: str, room: str | None = None) -> str:
    """The patient check-in page, for ``room`` when given."""
    base = f"{http_base(ws_url)}/patient"
    return base if room is None else f"{base}#room={quote(room, safe='')}"


def page_lines(ws_url: str) -> list[str]:
    """What ``queuechat serve`` prints after its ready line: where the two pages are."""
    base = http_base(ws_url)
    return [f"queuechat serve: clinician console at {base}/console (a ready link for a room: "
            f"queuechat token ROOM --console --url {ws_url})",
            f"queuechat serve: patient check-in at {base}/patient#room=ROOM"]
