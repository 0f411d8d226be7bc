"""The WebSocket client steps every outgoing link shares: open, wait, say goodbye.

- :func:`open_ws`: websockets' ``connect()`` with the TLS context for wss:// only; any
  failure comes out as the agent's error (:func:`agent.links.transport.link_error`:
  host and cause, never the URL's query).
- :func:`next_message`: one message, or None when the session's next deadline
  (:mod:`agent.proto.keepalive`) says it is time to look at the clock.
- :func:`goodbye`: the last message (the vendor's ``stop``) then close 1000, bounded,
  and *never cut short*: a second cancellation arriving while it runs (the agent's
  TaskGroup stopping) is held until the goodbye is done, and a close that does not
  finish in time ends with a FIN after the buffered frames, not a reset that would
  throw the ``stop`` away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from agent.links.tls import ws_tls
from agent.links.transport import closed, link_error
from agent.metrics import Metrics

Connect = Callable[..., Awaitable[ClientConnection]]
STOP_TIMEOUT_S = 1.0  # stop + close 1000 on cancellation, at most this long


class WatchedConnection(ClientConnection):
    """A client connection that remembers when the server last sent any byte.

    Pings, pongs and data all count: a server silent for longer than two of its
    ping intervals is gone even if TCP has not noticed.
    """

    last_rx: float = 0.0  # time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        super().data_received(data)


async def open_ws(
    connect: Connect, url: str, tls: ssl.SSLContext | None, **kwargs: Any
) -> ClientConnection:
    """Open ``url``; raises a LinkError (HttpRefused, Unreachable, TlsUntrusted, ...)."""
    try:
        return await connect(url, **kwargs, **ws_tls(url, tls))
    except Exception as e:  # every library error: mapped (CancelledError passes)
        raise link_error(e, url) from None


async def next_message(ws: ClientConnection, wait_s: float) -> str | bytes | None:
    """The next message, or None once ``wait_s`` passed without one (time to look at
    the session's deadlines). A closed connection raises :class:`~agent.errors.PeerClosed`."""
    try:
        async with asyncio.timeout(wait_s):
            return await ws.recv()
    except TimeoutError:
        return None
    except ConnectionClosed as e:
        raise closed(e) from None


@contextlib.asynccontextmanager
async def speaking(
    ws: ClientConnection, stop: str, log: logging.Logger, *, on_end: Callable[[], None]
) -> AsyncIterator[ClientConnection]:
    """One connection's life: cancelled (the agent stops), it says ``stop`` and closes
    1000; on any other end it closes 1000. ``on_end`` runs first either way (e.g. no more
    media onto this socket)."""
    try:
        yield ws
    except asyncio.CancelledError:
        on_end()
        await goodbye(ws, stop, STOP_TIMEOUT_S, log)
        raise
    finally:
        on_end()
        await goodbye(ws, None, STOP_TIMEOUT_S, log)


async def goodbye(
    ws: ClientConnection, last: str | None, timeout_s: float, log: logging.Logger
) -> bool:
    """Send ``last`` (if any), close 1000, within ``timeout_s``. True: a clean close.

    Runs to its end even if the task is cancelled meanwhile; the cancellation is
    raised again afterwards.
    """
    if ws.state is State.CLOSED:
        return False
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    clean = False
    cancelled = False
    step = asyncio.ensure_future(_say_goodbye(ws, last))
    while not step.done():
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(step)
        except asyncio.CancelledError:
            if step.cancelled():
                break
            cancelled = True  # held: the goodbye finishes first
            if task is not None:
                task.uncancel()
        except TimeoutError:
            step.cancel()
            break
    if step.done() and not step.cancelled():
        clean = step.exception() is None and bool(step.result())
    if not ws.transport.is_closing():
        ws.transport.close()  # FIN after what is buffered (the `stop`), not a reset
    if not clean:
        log.debug("closing handshake not completed within %.1f s", timeout_s)
    if cancelled:
        raise asyncio.CancelledError
    return clean


async def _say_goodbye(ws: ClientConnection, last: str | None) -> bool:
    with contextlib.suppress(ConnectionClosed, OSError):
        if last is not None:
            await ws.send(last)
        await ws.close(1000, "device stopping")
        return True
    return False


async def send_media(
    ws: ClientConnection | None,
    encode: Callable[[], str],
    *,
    metrics: Metrics,
    link: str,
    buffer_limit: int,
) -> bool:
    """Send one uplink frame (``encode()`` runs only if it is sent); count what is not.

    Dropped, not queued, while the link is down (``link_down``) or while the socket
    already holds more than ``buffer_limit`` bytes (``backpressure``: drop, don't lag).
    """
    if ws is None:
        metrics.inc("frames_dropped_total", link=link, reason="link_down")
        return False
    if ws.transport.get_write_buffer_size() > buffer_limit:
        metrics.inc("frames_dropped_total", link=link, reason="backpressure")
        return False
    try:
        await ws.send(encode())
    except ConnectionClosed:
        metrics.inc("frames_dropped_total", link=link, reason="link_down")
        return False
    metrics.inc("frames_sent_total", link=link)
    return True
