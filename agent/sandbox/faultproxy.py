"""Network faults on loopback: a TCP proxy that breaks connections on purpose, and a
resolver shim whose names can stop resolving.

:class:`FaultProxy` sits between the agent and a fake server (both on 127.0.0.1) and
forwards bytes both ways until told to misbehave::

    async with FaultProxy(fake_port) as proxy:       # the agent connects to proxy.port
        await proxy.kill()           # server process killed: connections reset, port closed
        await proxy.revive()         # listening again on the same port
        await proxy.reset_mid_frame()  # next server->client chunk cut in half, then RST
        proxy.freeze()               # half-open: live connections stop forwarding both ways
        proxy.thaw()                 # frozen connections are reset (the server's TCP gave up)
        proxy.mode = "blackhole"     # new connections accepted, never answered
        proxy.mode = "mute"          # server->client: the HTTP handshake passes, then nothing
        proxy.mode = "trickle"       # server->client: one byte every ``trickle_s``
        proxy.mode = "pass"

``tls=`` (an ``ssl.SSLContext`` with a server certificate) makes the proxy terminate
TLS in front of a plain fake: a self-signed ``https://``/``wss://`` server.

:class:`Resolver` gives the event loop names under the reserved ``.invalid`` TLD
(RFC 6761) that resolve to loopback while ``broken`` is false; while it is true the
lookup goes to the system resolver, which fails as it does for a real DNS outage.
No real external name is ever looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

Mode = Literal["pass", "blackhole", "mute", "trickle"]
CHUNK = 65536
_HEADERS_END = b"\r\n\r\n"


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST (SO_LINGER 0), not FIN: what a peer sees when a process dies hard
    or a middlebox drops the connection."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Pipe:
    """One proxied connection: the client side, the server side, two pumps."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    flowing: asyncio.Event = field(default_factory=asyncio.Event)  # cleared = frozen
    handshake_passed: bool = False  # "mute": the server's HTTP response went through
    closed: bool = False

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        _reset(self.client)
        _reset(self.server)
        self._cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.server):
            if writer is not None:
                writer.close()
        self._cancel()

    def _cancel(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class FaultProxy:
    """A loopback TCP proxy to ``target_host:target_port`` with injectable faults."""

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        trickle_s: float = 0.2,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.tls = tls
        self.trickle_s = trickle_s
        self.mode: Mode = "pass"
        self.connections = 0  # accepted, over the proxy's life
        self.cuts = 0  # mid-frame resets done
        self._port = port
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._cut_armed: asyncio.Future[None] | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.host, self._port, ssl=self.tls, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection cleanly (FIN, not RST)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for pipe in list(self._pipes):
            pipe.close()
        self._pipes.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    @property
    def port(self) -> int:
        return self._port

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def live(self) -> int:
        """Connections open right now (frozen ones included)."""
        return sum(1 for p in self._pipes if not p.closed)

    # -- faults ----------------------------------------------------------------------
    async def kill(self) -> None:
        """The server process dies: the port stops listening, every connection is reset."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.reset_all()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def revive(self) -> None:
        """The server is back, on the same port."""
        await self.start()

    def reset_all(self) -> None:
        """Reset every live connection (RST); the port keeps listening."""
        for pipe in list(self._pipes):
            pipe.reset()
        self._pipes.clear()

    async def reset_mid_frame(self, within_s: float = 5.0) -> None:
        """Cut the next server->client chunk in half, forward the first half, then reset
        the connection; return once done (TimeoutError if no data flowed in time)."""
        self._cut_armed = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(within_s):
                await self._cut_armed
        finally:
            self._cut_armed = None

    def freeze(self) -> None:
        """Half-open: live connections stop forwarding (and reading) both ways; the
        sockets stay open, so neither end's TCP notices. New connections work."""
        for pipe in self._pipes:
            pipe.flowing.clear()

    def thaw(self) -> None:
        """End the half-open connections the way the server's TCP eventually does: reset."""
        for pipe in list(self._pipes):
            if not pipe.flowing.is_set():
                pipe.reset()
                self._pipes.discard(pipe)

    # -- forwarding ------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        pipe = _Pipe(writer)
        pipe.flowing.set()
        self._pipes.add(pipe)
        try:
            if self.mode == "blackhole":  # accepted, never answered: swallow what comes
                pipe.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
                while await reader.read(CHUNK):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:  # the server behind is down: the client sees a reset
                return
            pipe.server = up_writer
            pipe.tasks = [
                asyncio.create_task(self._pump(pipe, reader, up_writer, down=False)),
                asyncio.create_task(self._pump(pipe, up_reader, writer, down=True)),
            ]
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not pipe.closed:
                pipe.closed = True
                for w in (writer, pipe.server):
                    if w is not None:
                        w.close()
            self._pipes.discard(pipe)

    async def _pump(
        self,
        pipe: _Pipe,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        down: bool,
    ) -> None:
        try:
            while True:
                await pipe.flowing.wait()
                data = await reader.read(CHUNK)
                await pipe.flowing.wait()  # frozen while reading: hold the bytes forever
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if down and not await self._forward_down(pipe, data, writer):
                    return
                if not down:
                    writer.write(data)
                    await writer.drain()
        except (OSError, RuntimeError):  # a reset side, or a transport already closing
            pipe.reset()

    async def _forward_down(self, pipe: _Pipe, data: bytes, writer: asyncio.StreamWriter) -> bool:
        """Server->client, with the faults applied; False when the pipe is finished."""
        cut = self._cut_armed
        if cut is not None and not cut.done() and len(data) >= 2:
            writer.write(data[: len(data) // 2])
            await writer.drain()
            self.cuts += 1
            cut.set_result(None)
            pipe.reset()
            return False
        match self.mode:
            case "mute":
                if not pipe.handshake_passed:
                    end = data.find(_HEADERS_END)
                    if end >= 0:
                        pipe.handshake_passed = True
                        writer.write(data[: end + len(_HEADERS_END)])
                        await writer.drain()
                return True
            case "trickle":
                for i in range(len(data)):
                    writer.write(data[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(self.trickle_s)
                return True
            case _:
                writer.write(data)
                await writer.drain()
                return True


class Resolver:
    """Loopback names for fault rigs, on one event loop; ``broken`` makes them fail.

    Install on the running loop (``with Resolver(["agent-fault.invalid"]):``); every
    library that resolves through ``loop.getaddrinfo`` (asyncio, websockets, httpx
    via anyio) sees the names. While ``broken``, the lookup of such a name goes to the
    system resolver unchanged, so it fails for real (``socket.gaierror``).
    """

    def __init__(self, names: Iterable[str], address: str = "127.0.0.1") -> None:
        self.names = {n.lower() for n in names}
        for name in self.names:
            if not name.endswith(".invalid"):
                raise ValueError(f"{name!r}: only names under .invalid (RFC 6761) are allowed")
        self.address = address
        self.broken = False
        self.lookups = 0  # of our names, while working or broken
        self.failures = 0  # of our names, while broken
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> Resolver:
        self.install(asyncio.get_running_loop())
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        real = loop.getaddrinfo

        async def getaddrinfo(host: Any, port: Any, **kw: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if isinstance(name, str) and name.lower() in self.names:
                self.lookups += 1
                if self.broken:
                    try:
                        return await real(host, port, **kw)
                    except OSError:
                        self.failures += 1
                        raise
                host = self.address
            return await real(host, port, **kw)

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(AttributeError):
                del self._loop.getaddrinfo  # back to the class's method
            self._loop = None
