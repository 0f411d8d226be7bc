"""A faithful fake of Orgo's computer audio, on loopback (docs/protocols.md, Orgo).

REST (``GET {api_base}/computers/{id}/vnc-password``, Bearer API key) and the audio
WebSocket (``{audio_url}?token=&sample_rate=&channels=``) behave as the vendor
documents: the password rotates on every (re)start of the computer, a missing or
stale token is closed with 4401, a stopped computer refuses connections, the
stream starts with ``started`` and then carries paced PCM16, ``ping`` gets ``pong``.

Faults for tests and the demo: announce a format other than the one asked for,
pack 1-3 frames per message or cut the byte stream at ragged (even odd) sizes,
delay messages by random jitter, stop answering pings, inject text garbage and
``error`` messages, hand out a stale password after a restart.

::

    async with FakeOrgo(announce=(48000, 2)) as fake:
        cfg = OrgoConfig(enabled=True, computer_id=fake.computer_id,
                         api_base=fake.api_base, audio_url=fake.audio_url)
        ...
        await fake.restart_computer()
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import random
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from agent.pcm import FRAME_MS, Pcm, samples_per_frame
from agent.sandbox.rest import Reply, Request, RestServer

logger = logging.getLogger(__name__)


class _HideToken(logging.Filter):
    """The server's debug log shows request lines: keep ``?token=`` out of it."""

    _token = re.compile(r"(token=)[^&\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self._token.sub(r"\1***", message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


ws_logger = logging.getLogger(__name__ + ".ws")
ws_logger.addFilter(_HideToken())

Generator = Callable[[int, int, int, int], Pcm]
"""``(first_sample, count, rate, channels) -> interleaved int16``: the computer's speaker."""

Packing = Literal["frames", "ragged"]

FRAME_S = FRAME_MS / 1000


def tone(freq_hz: float = 440.0, dbfs: float = -12.0) -> Generator:
    """A sine at ``freq_hz`` whose peak is ``dbfs`` below full scale, same on every channel."""
    amplitude = 32767 * 10 ** (dbfs / 20)

    def generate(first: int, count: int, rate: int, channels: int) -> Pcm:
        n = np.arange(first, first + count, dtype=np.float64)
        mono = np.round(amplitude * np.sin(2 * np.pi * freq_hz * n / rate)).astype(np.int16)
        return np.repeat(mono, channels)

    return generate


def ramp() -> Generator:
    """Every interleaved sample differs from its neighbours: shows any slip or swap."""

    def generate(first: int, count: int, rate: int, channels: int) -> Pcm:
        idx = np.arange(first * channels, (first + count) * channels, dtype=np.int64)
        return ((idx * 7 + 1) % 65536 - 32768).astype(np.int16)

    return generate


@dataclass
class Session:
    """One audio WebSocket connection as the fake saw it (read by tests)."""

    token: str | None
    asked: tuple[int, int]  # (Hz, channels) from the query
    accepted: bool = False  # token valid, stream started
    format: tuple[int, int] | None = None  # what `started` announced
    sent: bytearray = field(default_factory=bytearray)  # every PCM byte sent, in order
    messages_sent: int = 0  # binary messages
    received: list[str] = field(default_factory=list)  # client text messages
    got_stop: bool = False
    close_code: int | None = None

    def sent_pcm(self) -> Pcm:
        """The audio sent so far (whole samples), interleaved int16."""
        whole = len(self.sent) - len(self.sent) % 2
        return np.frombuffer(bytes(self.sent[:whole]), dtype="<i2").astype(np.int16)


class FakeOrgo:
    """Orgo's REST API and audio WebSocket for one computer, on 127.0.0.1."""

    def __init__(
        self,
        computer_id: str = "a3bb189e-8bf9-3888-9912-ace4e6543002",
        api_key: str = "sk_orgo_fake_0123456789abcdef",
        *,
        generator: Generator | None = None,
        announce: tuple[int, int] | None = None,
        packing: Packing = "frames",
        frames_per_message: tuple[int, int] = (1, 3),
        jitter_s: float = 0.0,
        desktop_token: bool = False,
        seed: int = 0,
        rest_port: int = 0,
        ws_port: int = 0,
    ) -> None:
        self.computer_id = computer_id
        self.api_key = api_key
        self.generator = generator or tone()
        self.announce = announce  # (Hz, channels) to announce instead of the asked format
        self.packing: Packing = packing
        self.frames_per_message = frames_per_message  # (min, max) whole frames per message
        self.jitter_s = jitter_s  # each message is held back 0..jitter_s (order is kept)
        self.desktop_token = desktop_token  # also hand out `desktop_api_token` (preferred)
        self.answer_pings = True
        self.silent = False  # capture paused: `started` and pongs, but no audio messages
        self.forbidden = False  # REST answers 403 (the key's account lost access)
        self.sessions: list[Session] = []
        self.password_fetches = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # REST runs in a thread
        self._running = True
        self._password = self._new_secret()
        self._desktop = self._new_secret()
        self._stale: tuple[str, str] | None = None  # what a stale fetch hands out
        self._stale_fetches = 0
        self._live: dict[ServerConnection, Session] = {}
        self._rest = RestServer(port=rest_port)  # 0 = any free port
        self._rest.route("GET", r"/api/computers/([^/]+)/vnc-password", self._vnc_password)
        self._ws: Server | None = None
        self._port = ws_port

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> FakeOrgo:
        self._rest.start()
        await self._listen()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close_live(1001, "server shutting down")
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        await asyncio.to_thread(self._rest.stop)

    @property
    def api_base(self) -> str:
        """For ``orgo.api_base``."""
        return f"{self._rest.url}/api"

    @property
    def audio_url(self) -> str:
        """For ``orgo.audio_url``: a template with ``{computer_id}``."""
        return f"ws://127.0.0.1:{self._port}/{{computer_id}}/audio"

    @property
    def password(self) -> str:
        """The current password (tests check it never leaks)."""
        with self._lock:
            return self._password

    @property
    def desktop_api_token(self) -> str:
        """The current ``desktop_api_token`` (handed out when ``desktop_token`` is set)."""
        with self._lock:
            return self._desktop

    @property
    def running(self) -> bool:
        return self._running

    @property
    def rest_requests(self) -> list[Request]:
        """Every REST request seen (headers lower-cased), refused ones included."""
        return self._rest.requests

    def accepted(self) -> list[Session]:
        """Sessions whose token was valid (streams that started)."""
        return [s for s in self.sessions if s.accepted]

    # -- the computer ------------------------------------------------------------------
    async def restart_computer(self, *, stale_fetches: int = 0) -> None:
        """Reboot: live streams drop, the password rotates.

        ``stale_fetches``: the REST API keeps handing out the old password this many
        times (API lag), so a client connects with it and gets closed 4401.
        """
        self._rotate(stale_fetches)
        await self._close_live(1012, "computer restarting")

    async def stop_computer(self, *, refuse: bool = False) -> None:
        """Stop: live streams drop; new connections are rejected (HTTP 502), or with
        ``refuse`` the port stops listening (connection refused)."""
        self._running = False
        await self._close_live(1001, "computer stopped")
        if refuse and self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
            self._ws = None

    async def start_computer(self) -> None:
        """Boot: accept connections again, with a new password."""
        self._rotate(0)
        self._running = True
        if self._ws is None:
            await self._listen()

    async def expire_token(self) -> None:
        """Rotate the password and close every live stream with 4401 (token now stale)."""
        self._rotate(0)
        await self._close_live(4401, "invalid token")

    # -- fault injection ---------------------------------------------------------------
    async def inject_text(self, text: str) -> None:
        """Send a raw text message (e.g. garbage) on every live stream."""
        for ws in list(self._live):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(text)

    async def send_error(self, message: str = "Failed to start audio capture") -> None:
        await self.inject_text(json.dumps({"type": "error", "message": message}))

    async def drop_connections(self) -> None:
        """Break every live stream without a closing handshake (network loss)."""
        for ws in list(self._live):
            ws.transport.abort()

    # -- REST --------------------------------------------------------------------------
    def _vnc_password(self, req: Request) -> Reply:
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(401, {"error": "Unauthorized"})
        if req.match.group(1) != self.computer_id:
            return Reply(404, {"error": "Computer not found"})
        if self.forbidden:
            return Reply(403, {"error": "Forbidden"})
        with self._lock:
            self.password_fetches += 1
            password, desktop = self._password, self._desktop
            if self._stale_fetches > 0 and self._stale is not None:
                self._stale_fetches -= 1
                password, desktop = self._stale
        body = {"password": password}
        if self.desktop_token:
            body["desktop_api_token"] = desktop
        return Reply(200, body)

    def _rotate(self, stale_fetches: int) -> None:
        with self._lock:
            self._stale = (self._password, self._desktop)
            self._stale_fetches = stale_fetches
            self._password, self._desktop = self._new_secret(), self._new_secret()

    def _new_secret(self) -> str:
        return secrets.token_hex(8)

    # -- WebSocket ---------------------------------------------------------------------
    async def _listen(self) -> None:
        self._ws = await serve(
            self._handler,
            "127.0.0.1",
            self._port,
            process_request=self._process_request,
            logger=ws_logger,
        )
        self._port = self._ws.sockets[0].getsockname()[1]

    def _process_request(self, ws: ServerConnection, request: WsRequest) -> WsResponse | None:
        path = urlsplit(request.path).path
        if path != f"/{self.computer_id}/audio":
            return ws.respond(http.HTTPStatus.NOT_FOUND, "unknown computer\n")
        if not self._running:
            return ws.respond(http.HTTPStatus.BAD_GATEWAY, "computer is not running\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        token = query.get("token", [None])[0]
        asked = (_int(query, "sample_rate", 24000), _int(query, "channels", 1))
        session = Session(token, asked)
        self.sessions.append(session)
        with self._lock:
            valid = {self._password} | ({self._desktop} if self.desktop_token else set())
        if token not in valid:
            await ws.close(4401, "invalid token")
            session.close_code = ws.close_code
            return
        session.accepted = True
        self._live[ws] = session
        sender = asyncio.create_task(self._stream(ws, session), name="fake-orgo-stream")
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    continue
                session.received.append(message)
                with contextlib.suppress(ValueError):
                    kind = json.loads(message).get("type")
                    if kind == "ping" and self.answer_pings:
                        await ws.send('{"type":"pong"}')
                    elif kind == "stop":
                        session.got_stop = True
                        break
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
            self._live.pop(ws, None)
        await ws.close(1000, "stopped")
        session.close_code = ws.close_code

    async def _stream(self, ws: ServerConnection, session: Session) -> None:
        """Send `started`, then the generator's audio paced at 20 ms per frame."""
        rate, channels = self.announce or session.asked
        session.format = (rate, channels)
        await ws.send(json.dumps({"type": "started", "sample_rate": rate, "channels": channels}))
        rng = random.Random(self._rng.random())
        loop = asyncio.get_running_loop()
        spf = samples_per_frame(rate)
        frame_bytes = spf * channels * 2
        t0 = loop.time()
        sent_frames = 0
        pending = b""  # ragged packing: bytes not yet cut into a message
        cut = rng.randint(1, 3 * frame_bytes)
        while True:
            lo, hi = self.frames_per_message
            k = rng.randint(lo, hi) if self.packing == "frames" else 1
            # A message leaves once its last frame has been captured.
            await asyncio.sleep(max(0.0, t0 + (sent_frames + k) * FRAME_S - loop.time()))
            data = (
                self.generator(sent_frames * spf, k * spf, rate, channels).astype("<i2").tobytes()
            )
            sent_frames += k
            if self.silent:
                continue
            if self.packing == "frames":
                await self._send(ws, session, data, rng)
                continue
            pending += data
            while len(pending) >= cut:
                await self._send(ws, session, pending[:cut], rng)
                pending = pending[cut:]
                cut = rng.randint(1, 3 * frame_bytes)

    async def _send(
        self, ws: ServerConnection, session: Session, data: bytes, rng: random.Random
    ) -> None:
        if self.jitter_s > 0:
            await asyncio.sleep(rng.uniform(0, self.jitter_s))
        session.sent += data
        session.messages_sent += 1
        await ws.send(data)

    async def close_streams(self, code: int, reason: str) -> None:
        """Close every live stream with ``code``: the vendor documents 4404 (computer
        not found or stopped) and 4500 (server error) besides 4401."""
        await self._close_live(code, reason)

    async def _close_live(self, code: int, reason: str) -> None:
        live = list(self._live.items())
        for ws, session in live:
            self._live.pop(ws, None)
            with contextlib.suppress(Exception):
                await ws.close(code, reason)
            session.close_code = code


def _int(query: dict[str, list[str]], key: str, default: int) -> int:
    try:
        return int(query[key][0])
    except (KeyError, ValueError):
        return default


__all__ = ["FakeOrgo", "Generator", "Session", "ramp", "tone"]
