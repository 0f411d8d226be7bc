"""A small fake FastRTC app on loopback, speaking its protocol (docs/protocols.md).

The real app (``fastrtc`` 0.0.34, ``tests/fastrtc/server.py``) is a 1.1 GB install in
its own venv and takes seconds to start; fault rigs, the soak and the whole-agent
secret scan need a peer that starts in milliseconds and can be told to misbehave.
This one does what fastrtc's ``WebSocketHandler`` does, as far as a client can see::

    C→S {"event":"start","websocket_id":ID}   seat free: accepted (nothing is sent back)
                                              no seat:   {"status":"failed","meta":
                                              {"error":"concurrency_limit_reached",
                                              "limit":N}}, then close 1000
    C→S {"event":"ping"}                      {"event":"pong"} (in order, after `start`)
    C→S {"event":"media","media":{"payload":base64 mu-law}}   counted, decoded
    C→S {"event":"stop"}                      close 1000
    S→C {"event":"media",...}                 the reply: ``generator`` audio at
                                              ``output_rate``, 40 ms per message, paced

Only ``/websocket/offer`` is served (another path: HTTP 403, as a FastAPI app with no
such route answers the upgrade). Faults: :attr:`busy` refuses every ``start`` (a seat
held by someone else), :meth:`send_raw` / :meth:`send_log` on every live session,
:meth:`drop_connections` (no closing handshake), :meth:`stop` / :meth:`start` (the
port stops listening and comes back on the same port)::

    async with FakeFastRTC() as app:
        cfg = FastRTCConfig(enabled=True, url=app.url, input_rate=app.input_rate,
                            output_rate=app.output_rate)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import http
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.audio.g711 import ulaw_decode
from agent.pcm import Pcm
from agent.proto.fastrtc import CONCURRENCY_LIMIT_REACHED, PATH, encode_media

logger = logging.getLogger(__name__)
ws_logger = logging.getLogger(__name__ + ".ws")  # the app's side, apart from the agent's

Generator = Callable[[int, int, int], Pcm]
"""``(first_sample, count, rate) -> int16 samples``: what the app says."""

CHUNK_S = 0.04  # one reply message per 40 ms (fastrtc's sender sleeps 20 ms per message)


def tone(freq_hz: float = 523.0, dbfs: float = -12.0) -> Generator:
    """A sine at ``freq_hz`` whose peak is ``dbfs`` below full scale."""
    amplitude = 32767 * 10 ** (dbfs / 20)

    def generate(first: int, count: int, rate: int) -> Pcm:
        n = np.arange(first, first + count, dtype=np.float64)
        return np.round(amplitude * np.sin(2 * np.pi * freq_hz * n / rate)).astype(np.int16)

    return generate


@dataclass(eq=False)
class Session:
    """One ``/websocket/offer`` connection as the app saw it (read by tests)."""

    websocket_id: str = ""
    accepted: bool = False
    refused: bool = False
    events: list[str] = field(default_factory=list)  # client events, in order
    media_received: int = 0  # media messages
    samples_received: int = 0  # decoded samples (at input_rate)
    media_sent: int = 0  # reply messages
    malformed: int = 0  # client messages the app could not read
    close_code: int | None = None


class FakeFastRTC:
    """A FastRTC app with ``concurrency_limit`` seats, on 127.0.0.1 (port 0 or ``port``)."""

    def __init__(
        self,
        *,
        input_rate: int = 48000,
        output_rate: int = 24000,
        concurrency_limit: int = 1,
        generator: Generator | None = None,
        port: int = 0,
        keep_sessions: int = 1000,
    ) -> None:
        self.input_rate = input_rate
        self.output_rate = output_rate
        self.concurrency_limit = concurrency_limit
        self.generator = generator or tone()
        self.busy = False  # refuse every start (the seat is someone else's)
        self.answer_pings = True
        self.sessions: list[Session] = []
        self.keep_sessions = keep_sessions  # older closed sessions are forgotten (soaks)
        self.connections = 0  # upgrades accepted on the path, over the app's life
        self.refusals = 0  # starts refused, over the app's life
        self.media_total = 0  # media messages received, over the app's life
        # (time.monotonic(), "connect" | "refuse"), the latest 1000: refusal cadence checks
        self.timeline: deque[tuple[float, str]] = deque(maxlen=1000)
        self._live: dict[ServerConnection, Session] = {}
        self._server: Server | None = None
        self._port = port

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> FakeFastRTC:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (again, on the same port after :meth:`stop`)."""
        if self._server is not None:
            return
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            self._port,
            process_request=self._process_request,
            compression=None,
            logger=ws_logger,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every session (1001) and stop listening."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """For ``fastrtc.url``."""
        return f"ws://127.0.0.1:{self._port}{PATH}"

    @property
    def live(self) -> list[Session]:
        return list(self._live.values())

    def accepted(self) -> list[Session]:
        return [s for s in self.sessions if s.accepted]

    # -- faults ------------------------------------------------------------------------
    async def send_raw(self, message: str | bytes) -> None:
        """Send ``message`` as is on every live session (garbage, unknown events...)."""
        for ws in list(self._live):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(message)

    async def send_log(self, note: str) -> None:
        """A ``log`` note as fastrtc's handlers send it (``create_message("log", note)``)."""
        await self.send_raw(json.dumps({"type": "log", "data": note}))

    async def send_error(self, message: str) -> None:
        await self.send_raw(json.dumps({"type": "error", "message": message}))

    def drop_connections(self) -> None:
        """Break every live session without a closing handshake."""
        for ws in list(self._live):
            ws.transport.abort()

    # -- the app -----------------------------------------------------------------------
    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            return ws.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.timeline.append((time.monotonic(), "connect"))
        session = Session()
        self.sessions.append(session)
        self._trim()
        sender: asyncio.Task[None] | None = None
        try:
            async for message in ws:
                event = self._event(message, session)
                if event is None:
                    continue
                session.events.append(str(event.get("event", "?"))[:64])
                match event.get("event"):
                    case "start" if not session.accepted:
                        session.websocket_id = str(event.get("websocket_id", ""))[:128]
                        if self.busy or len(self._live) >= self.concurrency_limit:
                            session.refused = True
                            self.refusals += 1
                            self.timeline.append((time.monotonic(), "refuse"))
                            await ws.send(
                                json.dumps(
                                    {
                                        "status": "failed",
                                        "meta": {
                                            "error": CONCURRENCY_LIMIT_REACHED,
                                            "limit": self.concurrency_limit,
                                        },
                                    }
                                )
                            )
                            break
                        session.accepted = True
                        self._live[ws] = session
                        sender = asyncio.create_task(self._reply(ws, session), name="fake-rtc")
                    case "ping" if self.answer_pings:
                        await ws.send(json.dumps({"event": "pong"}))
                    case "media" if session.accepted:
                        self._media(event, session)
                    case "stop":
                        break
        except ConnectionClosed:
            pass
        finally:
            self._live.pop(ws, None)
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await sender
        with contextlib.suppress(Exception):
            await ws.close(1000)
        session.close_code = ws.close_code

    def _event(self, message: str | bytes, session: Session) -> dict[str, object] | None:
        try:
            event = json.loads(message)
        except (ValueError, RecursionError):
            event = None
        if not isinstance(event, dict):
            session.malformed += 1
            return None
        return event

    def _media(self, event: dict[str, object], session: Session) -> None:
        media = event.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        try:
            ulaw = base64.b64decode(payload if isinstance(payload, str) else "", validate=True)
        except (binascii.Error, ValueError):
            session.malformed += 1
            return
        session.media_received += 1
        session.samples_received += ulaw_decode(ulaw).size
        self.media_total += 1

    async def _reply(self, ws: ServerConnection, session: Session) -> None:
        """The app's voice: ``CHUNK_S`` of the generator per message, on a fixed schedule."""
        loop = asyncio.get_running_loop()
        n = round(self.output_rate * CHUNK_S)
        t0 = loop.time()
        while True:
            await asyncio.sleep(max(0.0, t0 + (session.media_sent + 1) * CHUNK_S - loop.time()))
            pcm = self.generator(session.media_sent * n, n, self.output_rate)
            await ws.send(encode_media(pcm))
            session.media_sent += 1

    def _trim(self) -> None:
        if len(self.sessions) > self.keep_sessions:
            live = set(map(id, self._live.values()))
            old = self.sessions[: len(self.sessions) - self.keep_sessions]
            keep = [s for s in old if id(s) in live]
            self.sessions = keep + self.sessions[len(old) :]


__all__ = ["FakeFastRTC", "Generator", "Session", "tone"]
