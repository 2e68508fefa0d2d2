"""The one reading of ``ws://`` URLs and loopback hosts (reference_server/_endpoint.py) that every
command uses: what is loopback, what each fault is, and the order faults are found in."""

from __future__ import annotations

import click
import pytest

from loadtests._settings import host_problem
from queuechat._conformance import check_url as conformance_url
from queuechat._load import LoadUsageError
from queuechat._load import check_url as load_url
from reference_server.protocol import (
    EXPECTED_URL,
    Endpoint,
    EndpointError,
    UrlFault,
    check_ws_url,
    is_loopback_host,
)
from simulator import parse_url


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost",
                                  "0:0:0:0:0:0:0:1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["192.0.2.10", "0.0.0.0", "::", "example.org", "localhost.example.org",
                                  "128.0.0.1", "[::2]", "", "127.0.0.1.nip.io"])
def test_hosts_that_are_not_loopback(host: str) -> None:
    """A name is never looked up: only ``localhost`` counts, whatever another name resolves to."""
    assert not is_loopback_host(host)


def test_a_url_in_parts() -> None:
    endpoint = check_ws_url("ws://127.0.0.1:8765/v1/ws")
    assert endpoint == Endpoint(url="ws://127.0.0.1:8765/v1/ws", scheme="ws", host="127.0.0.1", port=8765,
                                netloc="127.0.0.1:8765", path="/v1/ws", query="", fragment="")
    assert endpoint.loopback and endpoint.port_or_default == 8765


def test_an_ipv6_url_loses_its_brackets_in_the_host_only() -> None:
    endpoint = check_ws_url("ws://[::1]:9/v1/ws", allow_remote=False)
    assert (endpoint.host, endpoint.netloc, endpoint.port) == ("::1", "[::1]:9", 9)
    assert endpoint.loopback


def test_a_port_left_out_is_the_schemes() -> None:
    assert check_ws_url("ws://chat.example.org/v1/ws").port_or_default == 80
    assert check_ws_url("wss://chat.example.org").port_or_default == 443
    assert check_ws_url("wss://chat.example.org").port is None


def test_host_names_are_lower_case() -> None:
    assert check_ws_url("ws://LOCALHOST:1/v1/ws", allow_remote=False).host == "localhost"


def fault(url: str, **options: object) -> EndpointError:
    with pytest.raises(EndpointError) as caught:
        check_ws_url(url, **options)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize(("url", "expected"), [
    ("ws://[::1", UrlFault.NOT_A_URL),
    ("http://127.0.0.1:8765/v1/ws", UrlFault.SCHEME),
    ("127.0.0.1:8765", UrlFault.SCHEME),
    ("", UrlFault.SCHEME),
    ("ws:///v1/ws", UrlFault.NO_HOST),
    ("ws://127.0.0.1:99999/v1/ws", UrlFault.PORT),
    ("ws://127.0.0.1:port/v1/ws", UrlFault.PORT),
])
def test_each_fault(url: str, expected: UrlFault) -> None:
    assert fault(url).fault is expected


def test_faults_are_found_in_one_order() -> None:
    """Scheme before host before port before path before remote: a URL wrong twice names the first."""
    assert fault("http://:99999/x").fault is UrlFault.SCHEME
    assert fault("ws://:99999/x").fault is UrlFault.NO_HOST
    assert fault("ws://example.org:99999/x", allow_remote=False, exact_path="/v1/ws").fault is UrlFault.PORT
    assert fault("ws://example.org/x", allow_remote=False, exact_path="/v1/ws").fault is UrlFault.PATH


def test_wss_can_be_refused() -> None:
    """The simulator speaks plain ws:// only (TLS is left to a proxy)."""
    assert check_ws_url("ws://127.0.0.1:1", schemes=("ws",)).scheme == "ws"
    assert fault("wss://127.0.0.1:1", schemes=("ws",)).fault is UrlFault.SCHEME


@pytest.mark.parametrize("url", ["ws://127.0.0.1:1/other", "ws://127.0.0.1:1/v1/ws?token=x",
                                 "ws://127.0.0.1:1/v1/ws#room=a", "ws://127.0.0.1:1"])
def test_an_exact_path_takes_neither_another_path_nor_a_query_nor_a_fragment(url: str) -> None:
    assert fault(url, exact_path="/v1/ws").fault is UrlFault.PATH
    assert check_ws_url(url).url == url  # without exact_path, any path will do


def test_a_remote_host_only_when_allowed() -> None:
    error = fault("ws://192.0.2.10:8765/v1/ws", allow_remote=False)
    assert (error.fault, error.host, str(error)) == (UrlFault.REMOTE, "192.0.2.10", "'192.0.2.10' is not a "
                                                                                   "loopback address")
    assert not check_ws_url("ws://192.0.2.10:8765/v1/ws", allow_remote=True).loopback
    assert check_ws_url("ws://localhost:1/v1/ws", allow_remote=False).loopback


def test_the_messages_name_the_url_and_urllibs_complaint() -> None:
    """``queuechat load --url`` and ``token --console --url`` print these after ``--url``."""
    assert str(fault("ws://127.0.0.1:99999/v1/ws")) == \
        "'ws://127.0.0.1:99999/v1/ws' is not a URL: Port out of range 0-65535"
    assert str(fault("ws://[::1")) == "'ws://[::1' is not a URL: Invalid IPv6 URL"
    assert str(fault("http://h/v1/ws")) == f"'http://h/v1/ws': {EXPECTED_URL}"
    assert EXPECTED_URL == "expected ws://HOST:PORT/v1/ws (or wss://)"
    assert isinstance(fault("http://h/v1/ws"), ValueError)


# --------------------------------------------------------------------------- each command's words


def test_simulate_words() -> None:
    """``queuechat simulate --url`` prints these after ``--url: ``."""
    assert parse_url("ws://LocalHost:9") == ("localhost", 9, "/v1/ws")
    assert parse_url("ws://[::1]/x") == ("::1", 80, "/x")
    for url, message in (("wss://h/v1/ws", "'wss://h/v1/ws' is not a ws:// URL (wss:// is left to a proxy)"),
                         ("ws:///v1/ws", "'ws:///v1/ws' has no host"),
                         ("ws://h:99999/v1/ws", "'ws://h:99999/v1/ws' has a bad port"),
                         ("ws://[::1", "Invalid IPv6 URL")):
        with pytest.raises(ValueError) as caught:
            parse_url(url)
        assert str(caught.value) == message


def test_locust_host_words() -> None:
    """The Locust file's ``--host``: a problem, said once, or None."""
    assert host_problem(None, allow_remote=False) == "give the server with --host ws://127.0.0.1:8765/v1/ws"
    assert host_problem("http://h/v1/ws", allow_remote=True) == \
        "--host 'http://h/v1/ws' is not a ws:// or wss:// URL"
    assert host_problem("ws://192.0.2.10:1/v1/ws", allow_remote=False) == (
        "refusing to send load to non-loopback host '192.0.2.10'; pass --qc-allow-remote if this server is "
        "yours to load")
    assert host_problem("ws://192.0.2.10:1/v1/ws", allow_remote=True) is None
    assert host_problem("ws://[::1]:1/v1/ws", allow_remote=False) is None


def test_load_words() -> None:
    assert load_url("wss://example.org/v1/ws", allow_remote=True) == "wss://example.org/v1/ws"
    for url, message in (
        ("http://127.0.0.1:1/v1/ws", f"--url 'http://127.0.0.1:1/v1/ws': {EXPECTED_URL}"),
        ("ws://127.0.0.1:x/v1/ws", "--url 'ws://127.0.0.1:x/v1/ws' is not a URL: Port could not be cast to "
                                   "integer value as 'x'"),
        ("ws://example.org/v1/ws", "refusing to send load to non-loopback host 'example.org': load tests "
                                   "target 127.0.0.1 or ::1; pass --allow-remote if this server is yours to "
                                   "load"),
    ):
        with pytest.raises(LoadUsageError) as caught:
            load_url(url, allow_remote=False)
        assert str(caught.value) == message


def test_conformance_words() -> None:
    assert conformance_url("ws://[::1]:9/", allow_remote=False) == "ws://[::1]:9/v1/ws"
    for url, message in (
        ("http://h/v1/ws", "--url must be a ws:// or wss:// URL, not 'http://h/v1/ws'"),
        ("ws://[::1", "--url must be a ws:// or wss:// URL, not 'ws://[::1'"),
        ("ws://h:99999/v1/ws", "--url has an invalid port: 'ws://h:99999/v1/ws'"),
        ("ws:///v1/ws", "--url has no host: 'ws:///v1/ws'"),
        ("ws://h/v1/ws", "h is not a loopback address: the suite opens many connections and fills rooms; "
                         "pass --allow-remote to test a server on another host"),
    ):
        with pytest.raises(click.UsageError) as caught:
            conformance_url(url, allow_remote=False)
        assert caught.value.message == message
