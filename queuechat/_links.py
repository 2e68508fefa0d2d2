"""Addresses of the pages the reference server serves (docs/console.md), from its ``ws://`` endpoint.

Pure (the standard library and the protocol): ``queuechat token --console`` uses it without starting
anything.
The clinician's token goes in the URL *fragment*, which a browser never sends to a server.
"""

from __future__ import annotations

from urllib.parse import quote

from reference_server.protocol import WS_PATH, EndpointError, check_ws_url


class LinkError(ValueError):
    """A URL that is not a server's ``ws://HOST:PORT/v1/ws`` endpoint."""


def http_base(ws_url: str) -> str:
    """``ws://HOST:PORT/v1/ws`` -> ``http://HOST:PORT`` (``wss`` -> ``https``)."""
    try:
        endpoint = check_ws_url(ws_url, exact_path=WS_PATH)
    except EndpointError as error:
        raise LinkError(str(error)) from None
    scheme = "https" if endpoint.scheme == "wss" else "http"
    return f"{scheme}://{endpoint.netloc.rpartition('@')[2]}"


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
