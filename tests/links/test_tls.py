"""agent.links.tls: the one TLS client context the links share, against real wss://
servers on loopback (certificates from trustme CAs) and the real websockets client."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
import websockets.asyncio.client
from websockets.asyncio.server import ServerConnection, serve

from agent.config import SecurityConfig
from agent.links.tls import client_context, httpx_verify, ws_tls


@contextlib.asynccontextmanager
async def wss_server(ca: trustme.CA) -> AsyncIterator[str]:
    """A wss:// echo server on 127.0.0.1 with a certificate from ``ca``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)

    async def echo(ws: ServerConnection) -> None:
        async for msg in ws:
            await ws.send(msg)

    async with serve(echo, "127.0.0.1", 0, ssl=ctx) as server:
        yield f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def handshake(url: str, ctx: ssl.SSLContext) -> bool:
    """True if a wss:// connection with ``ctx`` opens and echoes; False if the server's
    certificate is refused."""
    try:
        async with websockets.asyncio.client.connect(url, open_timeout=5, **ws_tls(url, ctx)) as ws:
            await ws.send(b"ping")
            return await ws.recv() == b"ping"
    except ssl.SSLCertVerificationError:
        return False


async def test_a_ca_file_edited_in_place_is_trusted_by_the_next_links(tmp_path: Path) -> None:
    """Every link gets the same context for the same ca_file (one parsed CA store in
    memory, not one per connection), and an operator who replaces the file's CA (same
    path) and reloads gets links that trust the new CA, not the old one."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    path = tmp_path / "private-ca.pem"
    old_ca.cert_pem.write_to_path(str(path))
    security = SecurityConfig(ca_file=str(path))
    first = client_context(security)
    assert client_context(security) is first
    assert httpx_verify(security) is first
    async with wss_server(old_ca) as old_url, wss_server(new_ca) as new_url:
        assert await handshake(old_url, first)
        assert not await handshake(new_url, first)

        new_ca.cert_pem.write_to_path(str(path))  # edited later: a newer mtime
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        second = client_context(security)
        assert second is not first
        assert await handshake(new_url, second)
        assert not await handshake(old_url, second)
        assert await handshake(old_url, first), "links still up keep what they trusted"


@pytest.mark.parametrize("ca_file", [False, True], ids=["system", "ca_file"])
async def test_the_shared_context_still_verifies(tmp_path: Path, ca_file: bool) -> None:
    """The shared context (REST's too) refuses a certificate from a CA nobody configured,
    with and without a ca_file."""
    stranger = trustme.CA()
    security = SecurityConfig()
    if ca_file:
        path = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(path))
        security = SecurityConfig(ca_file=str(path))
    assert httpx_verify(security) is client_context(security)
    async with wss_server(stranger) as url:
        assert not await handshake(url, client_context(security))
