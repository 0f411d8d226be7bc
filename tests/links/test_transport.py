"""agent.links.transport: what a person reads when a connection fails, against real
servers on loopback (TLS with a certificate from the future or the past, a refused
port, a name under .invalid that no DNS answers) and the real client libraries."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
import trustme
import websockets.asyncio.client
from websockets.asyncio.server import ServerConnection, serve

from agent.errors import HttpRefused, LinkError, PeerClosed, TlsUntrusted, Unreachable
from agent.links.transport import host_of, link_error, shown_url, tls_reason

SECRET = "tok-3c1e9b7d5a2f-never-shown"
NOW = dt.datetime.now(dt.UTC)


@contextlib.asynccontextmanager
async def tls_server(
    ca: trustme.CA, not_before: dt.datetime, not_after: dt.datetime
) -> AsyncIterator[int]:
    """A WebSocket server on 127.0.0.1 whose certificate is valid only in that window."""
    cert = ca.issue_cert("127.0.0.1", not_before=not_before, not_after=not_after)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)

    async def echo(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(echo, "127.0.0.1", 0, ssl=ctx) as server:
        yield server.sockets[0].getsockname()[1]


def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def ws_failure(url: str, **kw: object) -> BaseException:
    try:
        async with websockets.asyncio.client.connect(url, open_timeout=3, **kw):  # type: ignore[arg-type]
            pass
    except Exception as e:
        return e
    raise AssertionError("connected")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ((NOW + dt.timedelta(days=2), NOW + dt.timedelta(days=30)),
         "certificate is not yet valid: is the clock right?"),
        ((NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=2)),
         "certificate has expired: is the clock right, or is the certificate old?"),
    ],
)  # fmt: skip
async def test_a_certificate_outside_its_validity_names_the_clock(
    window: tuple[dt.datetime, dt.datetime], reason: str
) -> None:
    ca = trustme.CA()
    async with tls_server(ca, *window) as port:
        url = f"wss://127.0.0.1:{port}/ws?token={SECRET}"
        err = link_error(await ws_failure(url, ssl=client_ctx(ca)), url)
        assert isinstance(err, TlsUntrusted)
        assert str(err) == f"cannot connect to 127.0.0.1:{port}: {reason}"
        # the same through httpx (the REST calls)
        async with httpx.AsyncClient(verify=client_ctx(ca)) as http:
            rest = f"https://127.0.0.1:{port}/api?key={SECRET}"
            with pytest.raises(httpx.ConnectError) as info:
                await http.get(rest)
        err = link_error(info.value, rest)
        assert str(err) == f"cannot connect to 127.0.0.1:{port}: {reason}"
        assert SECRET not in str(err)


async def test_an_untrusted_certificate_says_how_to_trust_it() -> None:
    ca = trustme.CA()
    async with tls_server(ca, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=1)) as port:
        url = f"wss://127.0.0.1:{port}/ws"
        err = link_error(await ws_failure(url), url)  # the system's CAs only
        assert isinstance(err, TlsUntrusted)
        assert "security.ca_file" in str(err)


async def test_a_refused_port_and_a_name_no_dns_knows() -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws?token={SECRET}"
    err = link_error(await ws_failure(url), url)
    assert isinstance(err, Unreachable)
    assert str(err) == f"cannot connect to 127.0.0.1:{port}: connection refused"
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(f"http://127.0.0.1:{port}/x")
    assert str(link_error(info.value, f"http://127.0.0.1:{port}/x")).endswith("connection refused")

    url = f"wss://agent-test.invalid/ws?token={SECRET}"
    err = link_error(await ws_failure(url), url)
    assert isinstance(err, Unreachable)
    assert str(err).startswith("cannot connect to agent-test.invalid: DNS")
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(url.replace("wss", "https"))
    assert str(link_error(info.value, url)).startswith("cannot connect to agent-test.invalid: DNS")


async def test_an_http_refusal_keeps_its_status_and_retry_after() -> None:
    async def refuse(connection: ServerConnection, request: object) -> object:
        response = connection.respond(429, "slow down\n")
        response.headers["Retry-After"] = "7"
        return response

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=refuse) as srv:
        port = srv.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ws?token={SECRET}"
        err = link_error(await ws_failure(url), url)
    assert isinstance(err, HttpRefused) and err.status == 429 and err.retry_after_s == 7.0
    assert SECRET not in str(err)


async def test_a_close_keeps_its_code_and_a_timeout_says_so() -> None:
    async def close_4404(ws: ServerConnection) -> None:
        await ws.close(4404, "computer not found")

    async with serve(close_4404, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with websockets.asyncio.client.connect(f"ws://127.0.0.1:{port}") as ws:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                await ws.recv()
    err = link_error(info.value, "ws://x")
    assert isinstance(err, PeerClosed) and err.code == 4404
    assert str(err) == "server closed the connection (4404 computer not found)"
    assert str(link_error(TimeoutError(), "wss://h.example:8443/a?b=c")) == (
        "cannot connect to h.example:8443: timed out"
    )
    already = LinkError("said already")
    assert link_error(already, "ws://x") is already
    await asyncio.sleep(0)


def test_urls_are_shown_without_query_or_user() -> None:
    assert host_of("wss://user:pw@[::1]:8443/a?token=x") == "[::1]:8443"
    assert shown_url(f"wss://user:pw@media.example/ws/a?ref={SECRET}#f") == (
        "wss://media.example/ws/a"
    )
    assert tls_reason(ssl.SSLError(1, "boom")).startswith("TLS handshake failed")
