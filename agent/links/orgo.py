"""The Orgo link: plays an Orgo computer's speaker through the mixer (downlink only).

One loop, run until cancelled::

    fetch the password (REST)  ->  connect (WS, ?token=&sample_rate=&channels=)
      -> `started`: (re)create the mixer source "orgo" in the announced format
      -> audio -> source.push(pcm, t_arrival); `ping` every 30 s, `pong` due in 10 s
    on any end: decide (see :func:`decide`) -> status RETRY/ATTENTION -> back off -> again

The password rotates whenever the computer restarts, so it is fetched again before
every connect; a close 4401 (token refused) therefore costs exactly one new fetch.
Neither the API key nor the password ever reaches a log record, a status detail or
an exception message: URLs are logged without their query, and both values are
registered with :class:`~agent.secrets.RedactingFilter`, which also guards the
websockets library's own debug log of this link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import websockets.asyncio.client
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from agent.backoff import BackoffPolicy, Reconnector
from agent.config import OrgoConfig, SecurityConfig
from agent.errors import AgentError, AuthRefused, CredentialError, LinkError
from agent.links.keepalive import AppPing, NoPong
from agent.links.tls import client_context, ws_tls
from agent.metrics import Metrics
from agent.pcm import PcmSink, SourceFactory
from agent.proto.orgo import (
    CLOSE_BAD_TOKEN,
    Audio,
    MalformedMessage,
    OrgoStream,
    Pong,
    ServerError,
    Started,
    Unknown,
    audio_url,
    encode_ping,
    encode_stop,
    parse_password,
    redact_url,
)
from agent.secrets import Credentials, RedactingFilter, Secret
from agent.service import Heartbeat
from agent.status import LinkState, StatusBoard

logger = logging.getLogger(__name__)

# The websockets library logs the request line (with ?token=) at DEBUG: give it a
# logger of ours that scrubs registered secrets before any handler sees the record.
ws_logger = logging.getLogger(__name__ + ".ws")
ws_logger.addFilter(RedactingFilter())

NAME = "orgo"
API_KEY = "orgo-api-key"  # credential file name
LOG = {"LINK": NAME}  # journald field on every record of this link
FETCH_TIMEOUT_S = 5.0  # REST password fetch, in total (a server trickling bytes included)
OPEN_TIMEOUT_S = 5.0  # TCP + WebSocket handshake
STOP_TIMEOUT_S = 1.0  # send `stop` and close on cancellation
OFFLINE_CAP_S = 60.0  # longest wait while the computer is offline
TOKEN_REFUSALS_FOR_ATTENTION = 3  # 4401s in a row before a person is asked to look
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: ~5 s of 48 kHz stereo, far above any real message

Connect = Callable[..., Awaitable[ClientConnection]]


# --- why a connection ended ---------------------------------------------------------


class PasswordRefused(AuthRefused):
    """The REST API refused to give the password (HTTP 401/403/404)."""

    def __init__(self, status: int, computer_id: str) -> None:
        self.status = status
        reasons = {
            401: "Orgo refused the API key (credential orgo-api-key)",
            403: "the API key's account is not a member of this computer",
            404: "unknown computer, or it has no password yet",
        }
        super().__init__(
            f"computer {computer_id}: {reasons.get(status, 'refused')} (HTTP {status})"
        )


class ApiUnavailable(LinkError):
    """The REST API could not be reached or answered with an error we may retry."""


class TokenRefused(AuthRefused):
    """The audio server refused the password (close 4401, or HTTP 401/403 on upgrade)."""


class ComputerOffline(LinkError):
    """The audio server refused the connection: the computer is stopped or unreachable."""


@dataclass(frozen=True, slots=True)
class Down:
    """What to show and how long to wait after a failed attempt or a dropped link."""

    state: LinkState  # RETRY or ATTENTION
    detail: str  # status detail; names the computer, never a secret
    slow: bool = False  # wait the slow cadence (a person must act first)


def decide(exc: BaseException, computer_id: str, token_refusals: int = 0) -> Down:
    """The retry policy of this link, as one pure function of why the attempt ended.

    ``token_refusals`` counts 4401s in a row, this one included.
    """
    match exc:
        case PasswordRefused() | CredentialError():
            return Down(LinkState.ATTENTION, str(exc), slow=True)
        case TokenRefused() if token_refusals >= TOKEN_REFUSALS_FOR_ATTENTION:
            return Down(
                LinkState.ATTENTION,
                f"computer {computer_id} refused its password {token_refusals} times in a row",
                slow=True,
            )
        case TokenRefused():
            return Down(LinkState.RETRY, "password refused, fetching a new one")
        case ComputerOffline():
            return Down(LinkState.RETRY, "computer offline")
        case NoPong():
            return Down(LinkState.RETRY, "no pong, reconnecting")
        case ApiUnavailable():
            return Down(LinkState.RETRY, str(exc))
        case MalformedMessage():
            return Down(LinkState.RETRY, "bad answer from the Orgo API")
        case _:
            return Down(LinkState.RETRY, "connection lost")


# --- the link -------------------------------------------------------------------------


class OrgoLink:
    """Plays one Orgo computer's audio; reconnects forever; ``run()`` until cancelled."""

    name = NAME

    def __init__(
        self,
        cfg: OrgoConfig,
        creds: Credentials,
        *,
        mixer: SourceFactory,
        status: StatusBoard,
        metrics: Metrics,
        http: httpx.AsyncClient,
        connect: Connect = websockets.asyncio.client.connect,
        reconnector: Reconnector | None = None,
        heartbeat: Heartbeat | None = None,
        clock: Callable[[], float] = time.monotonic,
        ping_interval_s: float = 30.0,
        pong_timeout_s: float = 10.0,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
        security: SecurityConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self._creds = creds
        self._mixer = mixer
        self._status = status
        self._metrics = metrics
        self._http = http
        self._connect = connect
        self._reconnector = reconnector or Reconnector(BackoffPolicy(cap_s=OFFLINE_CAP_S))
        self._heartbeat = heartbeat
        self._clock = clock
        self._ping_interval_s = ping_interval_s
        self._pong_timeout_s = pong_timeout_s
        self._open_timeout_s = open_timeout_s
        self._fetch_timeout_s = fetch_timeout_s
        self._tls = client_context(security or SecurityConfig())
        self._sink: PcmSink | None = None
        self._token_refusals = 0  # close 4401s in a row
        self._malformed_seen: set[str] = set()  # reasons already logged on this connection
        self._who = f"computer {cfg.computer_id}"  # status detail while connecting / up

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, play, reconnect; forever. Cancel to stop (sends `stop`, closes)."""
        attempt = 0
        try:
            while True:
                if attempt:
                    self._metrics.inc("reconnects_total", link=NAME)
                attempt += 1
                self._beat()
                self._status.set_link(NAME, LinkState.CONNECTING, self._who)
                try:
                    await self._attempt()
                    exc: BaseException = LinkError("connection ended")  # a clean close: reconnect
                except (AgentError, OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as e:
                    exc = e
                except Exception as e:  # a bug: show it, but keep the speaker's other sources alive
                    logger.exception("orgo link failed unexpectedly", extra=LOG)
                    exc = e
                finally:
                    self._drop_source()
                refused = isinstance(exc, TokenRefused)
                self._token_refusals = self._token_refusals + 1 if refused else 0
                down = decide(exc, self.cfg.computer_id, self._token_refusals)
                delay = self._reconnector.next_delay(slow=down.slow)
                self._status.set_link(NAME, down.state, down.detail, retry_in=delay)
                logger.log(
                    logging.WARNING if down.state is LinkState.ATTENTION else logging.INFO,
                    "orgo link down (%s: %s); next attempt in %.1f s",
                    type(exc).__name__,
                    down.detail,
                    delay,
                    extra=LOG,
                )
                if self._heartbeat is not None:
                    self._heartbeat.pause()
                await asyncio.sleep(delay)
        finally:
            self._drop_source()
            self._status.set_link(NAME, LinkState.STOPPED)

    async def _attempt(self) -> None:
        """One password fetch and one connection, until it ends (by raising, or cleanly)."""
        token = await self._fetch_password()
        url = audio_url(
            self.cfg.audio_url,
            self.cfg.computer_id,
            token=token.reveal(),
            sample_rate=self.cfg.sample_rate,
            channels=self.cfg.channels,
        )
        shown = redact_url(url)
        logger.info("connecting to %s", shown, extra=LOG)
        self._beat()
        try:
            ws = await self._connect(
                url,
                open_timeout=self._open_timeout_s,
                ping_interval=None,  # liveness is the Orgo `ping`/`pong` below
                close_timeout=STOP_TIMEOUT_S,
                max_size=MAX_MESSAGE_BYTES,
                compression=None,  # raw PCM hardly compresses; spare the Pi's CPU
                logger=ws_logger,
                **ws_tls(url, self._tls),
            )
        except InvalidStatus as e:
            code = e.response.status_code
            if code in (401, 403):
                raise TokenRefused(f"audio server refused the password (HTTP {code})") from None
            raise ComputerOffline(f"audio server rejected the connection (HTTP {code})") from None
        except InvalidURI:
            # Its message would carry the URL, token included.
            raise LinkError(f"invalid audio URL {shown}") from None
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise ComputerOffline(f"cannot connect to {shown}: {type(e).__name__}") from None
        logger.info("connected to %s", shown, extra=LOG)
        try:
            await self._receive(ws)
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code == CLOSE_BAD_TOKEN:
                raise TokenRefused(f"computer {self.cfg.computer_id} closed with 4401") from None
            raise
        except asyncio.CancelledError:
            await self._stop(ws)
            raise
        finally:
            if ws.state is not State.CLOSED:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await ws.close()

    async def _stop(self, ws: ClientConnection) -> None:
        """Say `stop` and close, within STOP_TIMEOUT_S; we are being cancelled."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await ws.send(encode_stop())
                await ws.close()
        logger.info("orgo link stopped", extra=LOG)

    # -- REST ------------------------------------------------------------------------
    async def _fetch_password(self) -> Secret:
        key = self._creds.get(API_KEY)
        cid = self.cfg.computer_id
        url = f"{self.cfg.api_base.rstrip('/')}/computers/{quote(cid, safe='')}/vnc-password"
        self._metrics.inc("password_fetches_total", link=NAME)
        try:
            # httpx's timeout bounds each read, not the reply: a trickling server would
            # hold the link for ever without the outer deadline.
            async with asyncio.timeout(self._fetch_timeout_s):
                resp = await self._http.get(
                    url,
                    headers={"Authorization": f"Bearer {key.reveal()}"},
                    timeout=self._fetch_timeout_s,
                )
        except TimeoutError:
            raise ApiUnavailable("Orgo API timed out") from None
        except httpx.HTTPError as e:
            raise ApiUnavailable(f"Orgo API unreachable ({type(e).__name__})") from None
        if resp.status_code in (401, 403, 404):
            raise PasswordRefused(resp.status_code, cid)
        if resp.status_code != 200:
            raise ApiUnavailable(f"Orgo API answered HTTP {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            raise MalformedMessage("password", "password response is not JSON") from None
        token = parse_password(body)
        RedactingFilter.register(token)
        logger.debug("fetched the password of computer %s", cid, extra=LOG)
        return Secret("orgo-password", token)

    # -- the stream --------------------------------------------------------------------
    async def _receive(self, ws: ClientConnection) -> None:
        """Read messages until the connection ends; ping on schedule; raise NoPong."""
        stream = OrgoStream(self.cfg.sample_rate, self.cfg.channels)
        self._malformed_seen.clear()
        ping = AppPing(self._clock, self._ping_interval_s, self._pong_timeout_s)
        while True:
            message: str | bytes | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ping.wait_s()):
                    message = await ws.recv()
            if message is None:  # a silent moment: heartbeat and keepalive
                self._beat()
                if ping.due():  # raises NoPong
                    await ws.send(encode_ping())
                    logger.debug("ping", extra=LOG)
            elif self._handle(stream, message, self._clock()):
                ping.pong()

    def _handle(self, stream: OrgoStream, message: str | bytes, t_arrival: float) -> bool:
        """Act on one message; True when it was a `pong`."""
        self._beat()
        frames, dropped = stream.frames_received, stream.dropped_bytes
        try:
            events = stream.receive(message)
        except MalformedMessage as e:
            self._metrics.inc("malformed_total", link=NAME, reason=e.reason)
            # Once per reason and connection at WARNING; a garbage-spewing peer stays at DEBUG.
            level = logging.DEBUG if e.reason in self._malformed_seen else logging.WARNING
            self._malformed_seen.add(e.reason)
            logger.log(level, "ignored a malformed message: %s", e, extra=LOG)
            return False
        if isinstance(message, bytes) and len(message) % (stream.channels * 2):
            # Off-spec (a message should hold whole frames) but the bytes are kept.
            self._metrics.inc("malformed_total", link=NAME, reason="unaligned")
        if stream.dropped_bytes > dropped:
            self._metrics.inc("malformed_total", link=NAME, reason="partial_sample")
        if stream.frames_received > frames:
            self._metrics.inc("frames_received_total", stream.frames_received - frames, link=NAME)
        pong = False
        for event in events:
            match event:
                case Audio(pcm=pcm):
                    if self._sink is None:  # audio before `started`: the asked format
                        self._open_source(stream.sample_rate, stream.channels)
                    assert self._sink is not None
                    self._sink.push(pcm, t_arrival)
                case Started(sample_rate=rate, channels=channels):
                    logger.info(
                        "computer %s streams %d Hz, %d channel(s)",
                        self.cfg.computer_id,
                        rate,
                        channels,
                        extra=LOG,
                    )
                    self._open_source(rate, channels)
                case Pong():
                    pong = True
                case ServerError(message=text):
                    self._metrics.inc("server_errors_total", link=NAME)
                    text = RedactingFilter.scrub(text[:200])  # a server may echo the token
                    logger.warning("Orgo server error: %s", text, extra=LOG)
                    self._status.set_error(f"orgo: {text}")
                case Unknown(type=kind):
                    logger.debug("ignored a message of unknown type %r", kind, extra=LOG)
        return pong

    def _open_source(self, rate: int, channels: int) -> None:
        """(Re)create the mixer source in this format; the link is up from here."""
        self._sink = self._mixer.add_source(NAME, rate, channels)
        self._token_refusals = 0
        self._reconnector.connected()
        self._status.set_link(NAME, LinkState.UP, self._who)

    def _drop_source(self) -> None:
        if self._sink is not None:
            self._sink = None
            self._mixer.remove_source(NAME)

    def _beat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.beat()
