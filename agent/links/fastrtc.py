"""The FastRTC link: the device as a voice client of a FastRTC app (uplink + downlink).

Two tasks under one TaskGroup, run until cancelled::

    uplink:   Fanout queue "fastrtc" (PTT-gated 8 kHz frames, silence while idle)
              -> StreamResampler 8 kHz -> fastrtc.input_rate -> mu-law -> `media`
    sessions: connect -> `start` (a fresh websocket_id) + `ping`
              -> first `pong`: the app took us: mixer source "fastrtc" at output_rate, UP
              -> `media` -> mixer; `log` -> journal + status; `ping` every 20 s
    on any end: decide (see :func:`decide`) -> status RETRY/ATTENTION -> back off -> again

The app's handler neither resamples nor announces its rates, so both come from the
config (``fastrtc.input_rate``/``output_rate``). A session the app refuses because
its ``concurrency_limit`` is reached waits at least :data:`REFUSAL_WAIT_S`, doubling
with each refusal in a row: a busy single-seat app is not hammered. Cancellation
(SIGTERM) sends ``stop`` and closes within :data:`STOP_TIMEOUT_S`.

The wire codec is :mod:`agent.proto.fastrtc`; this module only moves its strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import websockets.asyncio.client
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from agent.audio.resample import StreamResampler
from agent.backoff import BackoffPolicy, Reconnector
from agent.config import FastRTCConfig, SecurityConfig
from agent.errors import AgentError, LinkError
from agent.links.keepalive import AppPing, NoPong
from agent.links.tls import client_context, ws_tls
from agent.metrics import Metrics
from agent.pcm import UPLINK_RATE, Frame, PcmSink, SourceFactory
from agent.proto.fastrtc import (
    PATH,
    PAUSE_DETECTED,
    RESPONSE_STARTING,
    STARTED_TALKING,
    Log,
    MalformedMessage,
    Media,
    Notice,
    Pong,
    Refused,
    SendInput,
    Stopword,
    Unknown,
    decode,
    encode_media,
    encode_ping,
    encode_start,
    encode_stop,
    new_websocket_id,
)
from agent.service import Heartbeat
from agent.status import LinkState, StatusBoard

logger = logging.getLogger(__name__)


class _HideQuery(logging.Filter):
    """The websockets library logs the request line at DEBUG (``> GET /path?query``): an
    app's URL may carry a token in its query (a signed or private app), so the query
    is masked there as it is left out of this link's own lines."""

    _query = re.compile(r"(^> GET [^?\s]*)\?\S*")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self._query.sub(r"\1?***", message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


ws_logger = logging.getLogger(__name__ + ".ws")
ws_logger.addFilter(_HideQuery())

NAME = "fastrtc"  # link name, mixer source, Fanout subscriber
LOG = {"LINK": NAME}  # journald field on every record of this link
OPEN_TIMEOUT_S = 5.0  # TCP + WebSocket handshake
STOP_TIMEOUT_S = 1.0  # send `stop` and close on cancellation
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: ~30 s of 24 kHz mu-law in base64; apps may send big chunks
SEND_BUFFER_LIMIT = 32 * 1024  # bytes queued in the socket (~0.5 s at 48 kHz): drop, don't lag
REFUSAL_WAIT_S = 10.0  # least wait after a concurrency refusal; doubles per refusal in a row
REFUSAL_CAP_S = 120.0  # ... up to this
REFUSAL_JITTER = 0.2  # refusal waits are stretched by up to this fraction (devices desync)
REPLY_QUIET_S = 1.0  # no reply audio this long after `response_starting`: the reply is over
QUIET_PEAK = 64  # a media message whose samples all stay within +-this is silence (-54 dBFS)

# What the app's `log` notes mean to someone looking at the device's status.
ACTIVITY = {
    STARTED_TALKING: "hearing you",
    PAUSE_DETECTED: "thinking",
    RESPONSE_STARTING: "assistant talking",
}

Connect = Callable[..., Awaitable[ClientConnection]]


# --- why a connection ended ---------------------------------------------------------


class SessionRefused(LinkError):
    """The app answered ``start`` with ``{"status":"failed"}``."""

    def __init__(self, refusal: Refused) -> None:
        self.refusal = refusal
        if refusal.busy:
            seats = "" if refusal.limit is None else f" (limit {refusal.limit})"
            text = f"app busy: concurrency limit reached{seats}"
        else:
            text = f"app refused the session ({refusal.error or 'no reason given'})"
        super().__init__(text)


class HandshakeRefused(LinkError):
    """The HTTP upgrade was answered with an error status."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"WebSocket handshake refused (HTTP {status})")


class AppUnreachable(LinkError):
    """No connection to the app (refused, timed out, DNS, TLS)."""

    def __init__(self, message: str, *, untrusted: bool = False) -> None:
        self.untrusted = untrusted  # the app's TLS certificate failed verification
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Down:
    """What to show and how long to wait after a failed attempt or a dropped link."""

    state: LinkState  # RETRY or ATTENTION
    detail: str  # status detail
    slow: bool = False  # wait the slow cadence (a person must act first)
    at_least_s: float = 0.0  # never retry sooner than this


def refusal_wait(refusals: int, *, base_s: float = REFUSAL_WAIT_S) -> float:
    """Least wait after the ``refusals``-th refusal in a row: base, 2x, 4x, ... capped."""
    return min(base_s * 2.0 ** max(0, refusals - 1), max(base_s, REFUSAL_CAP_S))


def decide(
    exc: BaseException, refusals: int = 0, *, refusal_base_s: float = REFUSAL_WAIT_S
) -> Down:
    """The retry policy of this link, as one pure function of why the attempt ended.

    ``refusals`` counts app refusals in a row, this one included.
    """
    match exc:
        case SessionRefused():
            wait = refusal_wait(refusals, base_s=refusal_base_s)
            return Down(LinkState.RETRY, str(exc), at_least_s=wait)
        case HandshakeRefused(status=status) if 400 <= status < 500:
            # Not a FastRTC endpoint, or it wants auth we do not have: a person must look.
            return Down(
                LinkState.ATTENTION, f"{exc}; check fastrtc.url (apps serve {PATH})", slow=True
            )
        case HandshakeRefused():
            return Down(LinkState.RETRY, str(exc))
        case NoPong():
            return Down(LinkState.RETRY, "no pong, reconnecting")
        case AppUnreachable(untrusted=True):
            return Down(LinkState.RETRY, "app unreachable: TLS certificate not trusted")
        case AppUnreachable():
            return Down(LinkState.RETRY, "app unreachable")
        case ConnectionClosed(rcvd=rcvd) if rcvd is not None:
            return Down(LinkState.RETRY, f"app closed the connection ({rcvd.code})")
        case _:
            return Down(LinkState.RETRY, "connection lost")


# --- the link -----------------------------------------------------------------------


class FastRTCLink:
    """Streams the PTT-gated mic to a FastRTC app and plays its replies; ``run()`` until
    cancelled."""

    name = NAME

    def __init__(
        self,
        cfg: FastRTCConfig,
        *,
        uplink: asyncio.Queue[Frame],
        mixer: SourceFactory,
        status: StatusBoard,
        metrics: Metrics,
        connect: Connect = websockets.asyncio.client.connect,
        reconnector: Reconnector | None = None,
        heartbeat: Heartbeat | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        new_id: Callable[[], str] = new_websocket_id,
        ping_interval_s: float = 20.0,
        pong_timeout_s: float = 10.0,
        refusal_wait_s: float = REFUSAL_WAIT_S,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        security: SecurityConfig | None = None,
    ) -> None:
        """Tuning, all optional: ``ping_*``: our keepalive (the first ping, sent with
        ``start``, also tells an accepted session from a refused one);
        ``refusal_wait_s``: least wait after the first refusal in a row (tests shorten it);
        ``open_timeout_s``: TCP + TLS + WebSocket handshake deadline; ``security``: TLS
        trust (``security.ca_file``) for a wss:// URL. ws:// to a non-loopback host is
        refused by the configuration check (the URL only ever comes from the config)."""
        self.cfg = cfg
        self._uplink = uplink
        self._mixer = mixer
        self._status = status
        self._metrics = metrics
        self._connect = connect
        self._reconnector = reconnector or Reconnector(BackoffPolicy(), clock=clock)
        self._heartbeat = heartbeat
        self._clock = clock
        self._rng = rng
        self._new_id = new_id
        self._ping_interval_s = ping_interval_s
        self._pong_timeout_s = pong_timeout_s
        self._refusal_wait_s = refusal_wait_s
        self._open_timeout_s = open_timeout_s
        self._tls = client_context(security or SecurityConfig())
        self._refusals = 0  # refusals in a row
        self._live: ClientConnection | None = None  # set while accepted: media flows
        self._resampler = StreamResampler(UPLINK_RATE, cfg.input_rate)
        self._sink: PcmSink | None = None
        parts = urlsplit(cfg.url)
        self._who = f"app {parts.netloc or cfg.url}"  # status detail while up
        # for logs: without a query string (config holds no secrets, but an app's URL may)
        self._shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self._activity = ""  # the app's latest `log` note, shown in the status
        self._last_media = 0.0  # when audible reply audio last arrived
        self._asked_inputs = False  # `send_input` logged on this connection
        self._malformed_seen: set[str] = set()  # reasons logged on this connection
        self.websocket_id = ""  # of the current (or last) connection

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Stream and play until cancelled (then `stop` and close, ≤ 1 s)."""
        self._status.set_link(NAME, LinkState.CONNECTING, self._who)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump_uplink(), name="fastrtc-uplink")
                tg.create_task(self._sessions(), name="fastrtc-sessions")
        finally:
            self._live = None
            self._drop_source()
            self._status.set_link(NAME, LinkState.STOPPED)

    async def _sessions(self) -> None:
        attempt = 0
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
            except Exception as e:  # a bug: show it, but keep the other links and sources alive
                logger.exception("fastrtc link failed unexpectedly", extra=LOG)
                exc = e
            finally:
                self._live = None
                self._drop_source()
            if isinstance(exc, SessionRefused):
                self._refusals += 1
                self._metrics.inc("refusals_total", link=NAME, reason=exc.refusal.error or "none")
            down = decide(exc, self._refusals, refusal_base_s=self._refusal_wait_s)
            at_least = down.at_least_s * (1.0 + REFUSAL_JITTER * self._rng())
            delay = self._reconnector.next_delay(slow=down.slow, at_least_s=at_least)
            self._status.set_link(NAME, down.state, down.detail, retry_in=delay)
            if down.state is LinkState.ATTENTION:
                self._status.set_error(f"fastrtc: {down.detail}")
            logger.log(
                logging.WARNING if down.state is LinkState.ATTENTION else logging.INFO,
                "fastrtc link down (%s: %s); next attempt in %.1f s",
                type(exc).__name__,
                down.detail,
                delay,
                extra=LOG,
            )
            if self._heartbeat is not None:
                self._heartbeat.pause()
            await asyncio.sleep(delay)

    async def _attempt(self) -> None:
        """One connection, until it ends (by raising, or cleanly)."""
        url = self.cfg.url
        logger.info("connecting to %s", self._shown, extra=LOG)
        try:
            ws = await self._connect(
                url,
                open_timeout=self._open_timeout_s,
                ping_interval=None,  # liveness is the FastRTC `ping`/`pong` below
                close_timeout=STOP_TIMEOUT_S,
                max_size=MAX_MESSAGE_BYTES,
                compression=None,  # mu-law hardly compresses; spare the Pi's CPU
                logger=ws_logger,
                **ws_tls(url, self._tls),
            )
        except InvalidStatus as e:
            raise HandshakeRefused(e.response.status_code) from None
        except InvalidURI:
            raise LinkError(f"invalid URL {self._shown!r}") from None
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise AppUnreachable(
                f"cannot connect to {self._shown}: {type(e).__name__}",
                untrusted=isinstance(e, ssl.SSLCertVerificationError),
            ) from None
        self.websocket_id = self._new_id()
        self._asked_inputs = False
        self._malformed_seen.clear()
        try:
            # The server handles messages in order: it answers this ping only after
            # it has accepted the `start` (a refused start gets the refusal and a close).
            await ws.send(encode_start(self.websocket_id))
            await ws.send(encode_ping())
            await self._receive(ws)
        except asyncio.CancelledError:
            await self._stop(ws)
            raise
        finally:
            self._live = None
            if ws.state is not State.CLOSED:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await ws.close()

    async def _stop(self, ws: ClientConnection) -> None:
        """Say `stop` and close, within STOP_TIMEOUT_S; we are being cancelled."""
        self._live = None
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await ws.send(encode_stop())
                await ws.close()
        except (TimeoutError, ConnectionClosed, OSError):
            ws.transport.abort()
        logger.info("fastrtc link stopped (session %s)", self.websocket_id, extra=LOG)

    # -- downlink ----------------------------------------------------------------------
    async def _receive(self, ws: ClientConnection) -> None:
        """Read messages until the connection ends; ping on schedule; raise NoPong."""
        # the ping sent with `start` is outstanding
        ping = AppPing(self._clock, self._ping_interval_s, self._pong_timeout_s, awaiting_pong=True)
        while True:
            message: str | bytes | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ping.wait_s()):
                    message = await ws.recv()
            if message is None:  # a quiet moment: heartbeat, keepalive, reply timeout
                self._beat()
                if ping.due():  # raises NoPong
                    await ws.send(encode_ping())
                self._reply_over(self._clock())
            elif self._handle(ws, message, self._clock()):
                ping.pong()

    def _handle(self, ws: ClientConnection, message: str | bytes, t_arrival: float) -> bool:
        """Act on one message; True when it was a `pong`. Raises SessionRefused."""
        self._beat()
        try:
            event = decode(message)
        except MalformedMessage as e:
            self._metrics.inc("malformed_total", link=NAME, reason=e.reason)
            # Once per reason and connection at WARNING; a garbage-spewing peer stays at DEBUG.
            level = logging.DEBUG if e.reason in self._malformed_seen else logging.WARNING
            self._malformed_seen.add(e.reason)
            logger.log(level, "ignored a malformed message: %s", e, extra=LOG)
            return False
        match event:
            case Media(pcm=pcm):
                self._metrics.inc("frames_received_total", link=NAME)
                if self._sink is None:  # audio before our pong: the app took us all the same
                    self._accepted(ws)
                assert self._sink is not None
                if pcm.size:
                    self._sink.push(pcm, t_arrival)
                    if int(np.abs(pcm).max()) > QUIET_PEAK:
                        self._last_media = t_arrival
                self._reply_over(t_arrival)
            case Pong():
                if self._sink is None:
                    self._accepted(ws)
                return True
            case Refused() as refusal:
                raise SessionRefused(refusal)
            case Log(message=note):
                self._metrics.inc("app_events_total", link=NAME, event=note[:32] or "empty")
                logger.info("fastrtc app: %s", note[:200], extra={**LOG, "APP_EVENT": note[:64]})
                activity = ACTIVITY.get(note)
                if activity is not None:
                    self._activity = activity
                    self._last_media = t_arrival  # the reply's quiet timer starts now
                    self._show_up()
            case SendInput():
                self._metrics.inc("app_events_total", link=NAME, event="send_input")
                if not self._asked_inputs:
                    self._asked_inputs = True
                    logger.warning(
                        "fastrtc app asks for extra inputs (send_input); this device has "
                        "none to give (an app that waits for them will not answer)",
                        extra={**LOG, "APP_EVENT": "send_input"},
                    )
            case Stopword():
                self._metrics.inc("app_events_total", link=NAME, event="stopword")
                logger.info(
                    "fastrtc app heard its stop word", extra={**LOG, "APP_EVENT": "stopword"}
                )
            case Notice(level=severity, message=text):
                self._metrics.inc("app_events_total", link=NAME, event=severity)
                logger.warning("fastrtc app %s: %s", severity, text[:200], extra=LOG)
                if severity == "error":
                    self._status.set_error(f"fastrtc: {text[:120]}")
            case Unknown(kind=kind):
                self._metrics.inc("unknown_events_total", link=NAME)
                logger.debug("ignored a message of unknown kind %r", kind, extra=LOG)
        return False

    def _accepted(self, ws: ClientConnection) -> None:
        """The app took the session: open the mixer source and start sending the mic."""
        self._sink = self._mixer.add_source(NAME, self.cfg.output_rate, 1)
        self._resampler.reset()
        self._refusals = 0
        self._activity = ""
        self._reconnector.connected()
        self._live = ws
        self._show_up()
        logger.info(
            "fastrtc session %s accepted by %s (send %d Hz, play %d Hz)",
            self.websocket_id,
            self._shown,
            self.cfg.input_rate,
            self.cfg.output_rate,
            extra=LOG,
        )

    def _reply_over(self, now: float) -> None:
        """Back to the plain status once the reply's audio has stopped for a while."""
        if self._activity == ACTIVITY[RESPONSE_STARTING] and now - self._last_media > REPLY_QUIET_S:
            self._activity = ""
            self._show_up()

    def _show_up(self) -> None:
        detail = f"{self._who}, {self._activity}" if self._activity else self._who
        self._status.set_link(NAME, LinkState.UP, detail)

    def _drop_source(self) -> None:
        if self._sink is not None:
            self._sink = None
            self._mixer.remove_source(NAME)

    # -- uplink --------------------------------------------------------------------------
    async def _pump_uplink(self) -> None:
        """One media message per uplink frame while accepted; drain and count while not."""
        while True:
            frame = await self._uplink.get()
            ws = self._live
            if ws is None:
                self._metrics.inc("frames_dropped_total", link=NAME, reason="link_down")
                continue
            if ws.transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
                self._metrics.inc("frames_dropped_total", link=NAME, reason="backpressure")
                continue
            pcm = self._resampler.process(frame.pcm)
            try:
                await ws.send(encode_media(pcm))
            except ConnectionClosed:
                self._metrics.inc("frames_dropped_total", link=NAME, reason="link_down")
                continue
            self._metrics.inc("frames_sent_total", link=NAME)

    def _beat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.beat()
