"""The fault proxy and resolver do what the fault suite says they do (a plain TCP server
behind them, a plain client in front)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from agent.sandbox.faultproxy import FaultProxy, Resolver


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """A server that answers an HTTP-like header block, then echoes every chunk."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 OK\r\n\r\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await writer.drain()
    return reader, writer


async def read_for(reader: asyncio.StreamReader, seconds: float) -> bytes:
    out = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        pass
    return out


async def test_pass_then_kill_resets_and_closes_the_port(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await connect(proxy)
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 101 OK\r\n\r\n"
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        await proxy.kill()
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.revive()
        reader, writer = await connect(proxy)
        assert await reader.readuntil(b"\r\n\r\n")
        assert proxy.connections == 2
        writer.close()


async def test_reset_mid_frame_delivers_half_a_chunk_then_resets(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await connect(proxy)
        await reader.readuntil(b"\r\n\r\n")
        cut = asyncio.create_task(proxy.reset_mid_frame())
        await asyncio.sleep(0.05)
        writer.write(b"0123456789")
        await cut
        assert await reader.read(100) == b"01234"
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
        assert proxy.cuts == 1


async def test_freeze_holds_both_ways_without_closing(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await connect(proxy)
        await reader.readuntil(b"\r\n\r\n")
        proxy.freeze()
        writer.write(b"hello?")
        await writer.drain()
        assert await read_for(reader, 0.3) == b"", "nothing comes back, nothing closes"
        assert not reader.at_eof() and proxy.live == 1
        reader2, writer2 = await connect(proxy)  # new connections are fine
        assert await reader2.readuntil(b"\r\n\r\n")
        proxy.thaw()
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        writer2.close()


@pytest.mark.parametrize("mode", ["blackhole", "mute", "trickle"])
async def test_modes(echo: int, mode: str) -> None:
    async with FaultProxy(echo, trickle_s=0.05) as proxy:
        proxy.mode = mode  # type: ignore[assignment]
        reader, writer = await connect(proxy)
        writer.write(b"abcdef")
        got = await read_for(reader, 0.5)
        if mode == "blackhole":
            assert got == b""
        elif mode == "mute":
            assert got == b"HTTP/1.1 101 OK\r\n\r\n", "the handshake passes, nothing after"
        else:
            assert 3 <= len(got) <= 12, "a byte every 50 ms"
        writer.close()


async def test_resolver_names_resolve_until_broken() -> None:
    loop = asyncio.get_running_loop()
    with Resolver(["svc.agent-test.invalid"]) as resolver:
        infos = await loop.getaddrinfo("svc.agent-test.invalid", 80, type=socket.SOCK_STREAM)
        assert {i[4][0] for i in infos} == {"127.0.0.1"}
        resolver.broken = True
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("svc.agent-test.invalid", 80)
        assert resolver.failures == 1
    with pytest.raises(ValueError):
        Resolver(["example.org"])
