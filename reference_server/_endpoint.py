"""Where a server is: one reading of ``ws://HOST:PORT/PATH`` URLs, and of loopback hosts, for every command.

Pure (the standard library only) and beside the protocol, so that the load tests under gevent read a
``--host`` as the commands read a ``--url``. Load, simulations and the conformance suite fill rooms and
open many connections, and the development secret is for this machine only: a host that is not loopback
is refused unless the caller allows it (``--allow-remote``).

The check raises one :class:`EndpointError` per URL, naming the first fault found in a fixed order
(:class:`UrlFault`); each command words its own message from the fault, as its users have always read it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from typing import Final
from urllib.parse import urlsplit

from ._frames import WS_PATH

# What a URL that is not a server's endpoint is told (``queuechat load --url``, ``token --console --url``).
EXPECTED_URL: Final = f"expected ws://HOST:PORT{WS_PATH} (or wss://)"


def is_loopback_host(host: str) -> bool:
    """``localhost``, or a loopback address (``127.x.y.z``, ``::1``, ``[::1]``); a name is never looked up,
    so a name other than ``localhost`` is not loopback whatever it resolves to."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class UrlFault(Enum):
    """Why a URL is refused, in the order the check looks: the first one found is the one reported."""

    NOT_A_URL = "not a URL"  # urllib cannot split it (an unclosed ``[``, a bad IPv6 address)
    SCHEME = "scheme"  # not one of the schemes allowed (``ws``, and ``wss`` unless left out)
    NO_HOST = "no host"
    PORT = "port"  # not a number, or out of range
    PATH = "path"  # not the one path asked for, or with a query or fragment
    REMOTE = "remote"  # a host that is not loopback, where remote servers are not allowed


class EndpointError(ValueError):
    """A URL refused: ``fault`` says why, ``host`` is its host when it has one (for the remote refusal)."""

    def __init__(self, url: str, fault: UrlFault, *, detail: str = "", host: str = "") -> None:
        if fault in (UrlFault.NOT_A_URL, UrlFault.PORT):
            message = f"{url!r} is not a URL: {detail}"
        elif fault is UrlFault.REMOTE:
            message = f"{host!r} is not a loopback address"
        else:
            message = f"{url!r}: {EXPECTED_URL}"
        super().__init__(message)
        self.url = url
        self.fault = fault
        self.detail = detail  # urllib's own words, for NOT_A_URL and PORT
        self.host = host


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """A checked ``ws://`` or ``wss://`` URL, in parts."""

    url: str
    scheme: str
    host: str  # as urllib gives it: lower case, an IPv6 address without its brackets
    port: int | None  # as written; None when left out
    netloc: str  # as written, brackets and port included
    path: str
    query: str
    fragment: str

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def port_or_default(self) -> int:
        """The port to connect to: the one written, else the scheme's (80 for ``ws``, 443 for ``wss``)."""
        return self.port or (443 if self.scheme == "wss" else 80)


def check_ws_url(
    url: str,
    *,
    allow_remote: bool = True,
    schemes: Collection[str] = ("ws", "wss"),
    exact_path: str | None = None,
) -> Endpoint:
    """``url`` in parts, or :class:`EndpointError` for its first fault (:class:`UrlFault` order).

    ``exact_path``: the path must be this one, with neither query nor fragment (a link to a page is built
    from it). ``allow_remote=False`` refuses a host that is not loopback.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as error:
        raise EndpointError(url, UrlFault.NOT_A_URL, detail=str(error)) from None
    if parts.scheme not in schemes:
        raise EndpointError(url, UrlFault.SCHEME)
    if not host:
        raise EndpointError(url, UrlFault.NO_HOST)
    try:
        port = parts.port
    except ValueError as error:
        raise EndpointError(url, UrlFault.PORT, detail=str(error), host=host) from None
    if exact_path is not None and (parts.path != exact_path or parts.query or parts.fragment):
        raise EndpointError(url, UrlFault.PATH, host=host)
    if not allow_remote and not is_loopback_host(host):
        raise EndpointError(url, UrlFault.REMOTE, host=host)
    return Endpoint(url=url, scheme=parts.scheme, host=host, port=port, netloc=parts.netloc, path=parts.path,
                    query=parts.query, fragment=parts.fragment)
