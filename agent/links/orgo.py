"""The Orgo link: plays an Orgo computer's speaker through the mixer (downlink only).

One attempt, run by :class:`~agent.links.runner.Runner` until cancelled::

    fetch the password (REST)  ->  connect (WS, ?token=&sample_rate=&channels=)
      -> `started`: (re)create the mixer source "orgo" in the announced format
      -> audio -> source.push(pcm, t_arrival); `ping` every 30 s, `pong` due in 10 s
         (the rules: :class:`agent.proto.orgo.OrgoSession`, no I/O)
    on any end: :func:`decide` -> the runner shows RETRY/ATTENTION, backs off, again

Close codes (the vendor documents 1000, 1001, 4401, 4404, 4500): 4401 refetches the
password (3 in a row: ATTENTION); 4404 (computer not found or not running) is
ATTENTION with a slow retry; 4500 (server error) and the rest are retried.

The password rotates whenever the computer restarts, so it is fetched again before
every connect; a close 4401 (token refused) therefore costs exactly one new fetch.
Neither the API key nor the password ever reaches a log record, a status detail or
an exception message: URLs are logged without their query, and both values are
registered with :class:`~agent.secrets.RedactingFilter`, which also guards the
websockets library's own debug log of this link.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
import websockets.asyncio.client
from websockets.asyncio.client import ClientConnection

from agent.backoff import BackoffPolicy, Reconnector
from agent.config import Config, OrgoConfig, SecurityConfig
from agent.errors import AuthRefused, CredentialError, HttpRefused, LinkError, PeerClosed
from agent.links.registry import LinkDeps
from agent.links.runner import History, Outcome, Runner, attention, remote_of, retry
from agent.links.tls import client_context
from agent.links.transport import host_of, link_error
from agent.links.wire import MalformedNotes, wire_logger
from agent.links.wsclient import STOP_TIMEOUT_S, Connect, next_message, open_ws, speaking
from agent.metrics import Metrics
from agent.pcm import PcmSink, SourceFactory
from agent.proto.keepalive import NoPong, wait_s
from agent.proto.orgo import (
    CLOSE_BAD_TOKEN,
    CLOSE_NOT_FOUND,
    CLOSE_SERVER_ERROR,
    Audio,
    MalformedMessage,
    OrgoSession,
    Pong,
    ServerError,
    Started,
    Unknown,
    audio_url,
    encode_stop,
    parse_password,
    redact_url,
)
from agent.secrets import Credentials, RedactingFilter, Secret
from agent.service import Heartbeat
from agent.status import StatusBoard

logger = logging.getLogger(__name__)
ws_logger = wire_logger("orgo")  # websockets' debug lines carry ?token=: masked

NAME = "orgo"
API_KEY = "orgo-api-key"  # credential file name
LOG = {"LINK": NAME}  # journald field on every record of this link
FETCH_TIMEOUT_S = 5.0  # REST password fetch, in total (a server trickling bytes included)
OPEN_TIMEOUT_S = 5.0  # TCP + WebSocket handshake
OFFLINE_CAP_S = 60.0  # longest wait while the computer is offline
TOKEN_REFUSALS_FOR_ATTENTION = 3  # 4401s in a row before a person is asked to look
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: ~5 s of 48 kHz stereo, far above any real message


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


class ComputerGone(LinkError):
    """Close 4404: the computer is not found or not running."""


def decide(exc: BaseException, history: History, *, computer_id: str = "") -> Outcome:
    """The retry policy of this link, as one pure function of why the attempt ended."""
    match exc:
        case PasswordRefused() | CredentialError():
            return attention(str(exc))
        case TokenRefused() if history.refusals + 1 >= TOKEN_REFUSALS_FOR_ATTENTION:
            n = history.refusals + 1
            return attention(
                f"computer {computer_id} refused its password {n} times in a row", refusal=True
            )
        case TokenRefused():
            return retry("password refused, fetching a new one", refusal=True)
        case ComputerGone():
            return attention(
                f"computer {computer_id} not found or not running (close 4404): start it in Orgo"
            )
        case PeerClosed(code=code) if code == CLOSE_SERVER_ERROR:
            return retry("Orgo server error (close 4500)")
        case ComputerOffline():
            return retry("computer offline", cause=str(exc))
        case NoPong():
            return retry("no pong, reconnecting")
        case ApiUnavailable():
            return retry(str(exc))
        case MalformedMessage():
            return retry("bad answer from the Orgo API", cause=str(exc))
        case PeerClosed():
            return retry("connection lost", cause=str(exc))
        case _:
            return retry("connection lost", cause=str(exc))


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
        security: SecurityConfig | None = None,
        ping_interval_s: float = 30.0,
        pong_timeout_s: float = 10.0,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        self.cfg, self._creds = cfg, creds
        self._mixer, self._metrics = mixer, metrics
        self._http, self._connect, self._clock = http, connect, clock
        self._ping_interval_s, self._pong_timeout_s = ping_interval_s, pong_timeout_s
        self._open_timeout_s, self._fetch_timeout_s = open_timeout_s, fetch_timeout_s
        self._tls = client_context(security or SecurityConfig())
        self._status = status
        self._sink: PcmSink | None = None
        self._malformed = MalformedNotes(logger, NAME, metrics)
        self._who = f"computer {cfg.computer_id}"  # status detail while connecting / up
        self.runner = Runner(
            NAME,
            self._attempt,
            functools.partial(decide, computer_id=cfg.computer_id),
            status=status,
            metrics=metrics,
            reconnector=reconnector or Reconnector(BackoffPolicy(cap_s=OFFLINE_CAP_S)),
            heartbeat=heartbeat,
            connecting=self._who,
            clock=clock,
        )
        self.runner.remote = remote_of(cfg.api_base)  # a lost route ends its connection

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, play, reconnect; forever. Cancel to stop (sends `stop`, closes)."""
        try:
            await self.runner.run()
        finally:
            self._drop_source()

    async def _attempt(self) -> None:
        """One password fetch and one connection, until it ends (by raising, or cleanly)."""
        try:
            token = await self._fetch_password()
            url = audio_url(
                self.cfg.audio_url,
                self.cfg.computer_id,
                token=token.reveal(),
                sample_rate=self.cfg.sample_rate,
                channels=self.cfg.channels,
            )
            logger.info("connecting to %s", redact_url(url), extra=LOG)
            self.runner.beat()
            ws = await self._open(url)
            async with speaking(ws, encode_stop(), logger, on_end=self._drop_source):
                try:
                    await self._receive(ws)
                except PeerClosed as e:
                    raise self._closed(e) from None
        finally:
            self._drop_source()

    async def _open(self, url: str) -> ClientConnection:
        try:
            return await open_ws(
                self._connect,
                url,
                self._tls,
                open_timeout=self._open_timeout_s,
                ping_interval=None,  # liveness is the Orgo `ping`/`pong` below
                close_timeout=STOP_TIMEOUT_S,
                max_size=MAX_MESSAGE_BYTES,
                compression=None,  # raw PCM hardly compresses; spare the Pi's CPU
                logger=ws_logger,
            )
        except HttpRefused as e:
            if e.status in (401, 403):
                raise TokenRefused(f"audio server refused the password (HTTP {e.status})") from e
            raise ComputerOffline(f"audio server rejected the connection (HTTP {e.status})") from e
        except LinkError as e:
            raise ComputerOffline(str(e)) from e

    def _closed(self, e: PeerClosed) -> LinkError:
        cid = self.cfg.computer_id
        if e.code == CLOSE_BAD_TOKEN:
            return TokenRefused(f"computer {cid} closed with 4401")
        if e.code == CLOSE_NOT_FOUND:
            return ComputerGone(f"computer {cid} closed with 4404")
        return e

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
            raise ApiUnavailable(f"Orgo API {host_of(url)} timed out") from None
        except httpx.HTTPError as e:
            raise ApiUnavailable(f"Orgo API unreachable: {link_error(e, url)}") from None
        if resp.status_code in (401, 403, 404):
            raise PasswordRefused(resp.status_code, cid)
        if resp.status_code != 200:
            raise ApiUnavailable(f"Orgo API {host_of(url)} answered HTTP {resp.status_code}")
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
        session = OrgoSession(
            self.cfg.sample_rate,
            self.cfg.channels,
            ping_interval_s=self._ping_interval_s,
            pong_timeout_s=self._pong_timeout_s,
            now=self._clock(),
        )
        self._malformed.reset()
        while True:
            now = self._clock()
            message = await next_message(ws, wait_s(session.next_deadline(now), now))
            if message is not None:
                self._handle(session, message, self._clock())
                continue
            self.runner.beat()  # a silent moment: heartbeat and keepalive
            for text in session.outgoing(self._clock()):  # raises NoPong
                await ws.send(text)

    def _handle(self, session: OrgoSession, message: str | bytes, t_arrival: float) -> None:
        """Act on one message."""
        self.runner.beat()
        stream = session.stream
        frames, dropped = stream.frames_received, stream.dropped_bytes
        try:
            events = session.receive(message, t_arrival)
        except MalformedMessage as e:
            self._malformed.note(e.reason, e)
            return
        if isinstance(message, bytes) and len(message) % (stream.channels * 2):
            # Off-spec (a message should hold whole frames) but the bytes are kept.
            self._metrics.inc("malformed_total", link=NAME, reason="unaligned")
        if stream.dropped_bytes > dropped:
            self._metrics.inc("malformed_total", link=NAME, reason="partial_sample")
        if stream.frames_received > frames:
            self._metrics.inc("frames_received_total", stream.frames_received - frames, link=NAME)
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
                    pass  # the session's keepalive took it
                case ServerError(message=text):
                    self._metrics.inc("server_errors_total", link=NAME)
                    text = RedactingFilter.scrub(text[:200])  # a server may echo the token
                    logger.warning("Orgo server error: %s", text, extra=LOG)
                    self._status.set_error(f"orgo: {text}")
                case Unknown(type=kind):
                    logger.debug("ignored a message of unknown type %r", kind, extra=LOG)

    def _open_source(self, rate: int, channels: int) -> None:
        """(Re)create the mixer source in this format; the link is up from here."""
        self._sink = self._mixer.add_source(NAME, rate, channels)
        self.runner.up(self._who)

    def _drop_source(self) -> None:
        if self._sink is not None:
            self._sink = None
            self._mixer.remove_source(NAME)


def create(cfg: Config, deps: LinkDeps) -> OrgoLink:
    """The registry's factory: this link built from the whole config and the agent's parts."""
    p = deps.policies
    return OrgoLink(
        cfg.orgo,
        deps.credentials,
        http=deps.http,
        connect=deps.connect or websockets.asyncio.client.connect,
        reconnector=deps.reconnector(BackoffPolicy(cap_s=OFFLINE_CAP_S)),
        ping_interval_s=p.app_ping_interval_s or 30.0,
        pong_timeout_s=p.app_pong_timeout_s or 10.0,
        security=cfg.security,
        **deps.common(NAME),
    )
