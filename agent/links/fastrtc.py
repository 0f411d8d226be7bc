"""The FastRTC link: the device as a voice client of a FastRTC app (uplink + downlink).

Two tasks under one TaskGroup, run until cancelled::

    uplink:   Fanout queue "fastrtc" (PTT-gated 8 kHz frames, silence while idle)
              -> StreamResampler 8 kHz -> fastrtc.input_rate -> mu-law -> `media`
    sessions: (agent.links.runner.Runner) connect -> `start` (a fresh websocket_id) + `ping`
              -> first `pong`: the app took us: mixer source "fastrtc" at output_rate, UP
              -> `media` -> mixer; `log` -> journal + status; `ping` every 20 s
              (the rules: :class:`agent.proto.fastrtc.FastRTCSession`, no I/O)
    on any end: :func:`decide` -> the runner shows RETRY/ATTENTION, backs off, again

The app's handler neither resamples nor announces its rates, so both come from the
config (``fastrtc.input_rate``/``output_rate``). A session the app refuses because
its ``concurrency_limit`` is reached waits at least :data:`REFUSAL_WAIT_S`, doubling
with each refusal in a row: a busy single-seat app is not hammered. Cancellation
(SIGTERM) sends ``stop`` and closes within 1 s (:func:`agent.links.wsclient.speaking`).

The wire codec is :mod:`agent.proto.fastrtc`; this module only moves its strings.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np
import websockets.asyncio.client
from websockets.asyncio.client import ClientConnection

from agent.audio.resample import StreamResampler
from agent.backoff import BackoffPolicy, Reconnector
from agent.config import Config, FastRTCConfig, SecurityConfig
from agent.errors import HttpRefused, LinkError, PeerClosed, TlsUntrusted, Unreachable
from agent.links.registry import LinkDeps
from agent.links.runner import History, Outcome, Runner, attention, remote_of, retry
from agent.links.tls import client_context
from agent.links.transport import shown_url
from agent.links.wire import MalformedNotes, wire_logger
from agent.links.wsclient import (
    STOP_TIMEOUT_S,
    Connect,
    next_message,
    open_ws,
    send_media,
    speaking,
)
from agent.metrics import Metrics
from agent.pcm import UPLINK_RATE, Frame, PcmSink, SourceFactory
from agent.proto.fastrtc import (
    PATH,
    PAUSE_DETECTED,
    RESPONSE_STARTING,
    STARTED_TALKING,
    FastRTCSession,
    Log,
    MalformedMessage,
    Media,
    Notice,
    Refused,
    SendInput,
    Stopword,
    Unknown,
    encode_media,
    encode_stop,
    new_websocket_id,
)
from agent.proto.keepalive import NoPong, wait_s
from agent.service import Heartbeat
from agent.status import StatusBoard

logger = logging.getLogger(__name__)
ws_logger = wire_logger("fastrtc")  # an app's URL may carry a token in its query: masked

NAME = "fastrtc"  # link name, mixer source, Fanout subscriber
LOG = {"LINK": NAME}  # journald field on every record of this link
OPEN_TIMEOUT_S = 5.0  # TCP + WebSocket handshake
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: ~30 s of 24 kHz mu-law in base64; apps may send big chunks
SEND_BUFFER_LIMIT = 32 * 1024  # bytes queued in the socket (~0.5 s at 48 kHz): drop, don't lag
REFUSAL_WAIT_S = 10.0  # least wait after a concurrency refusal; doubles per refusal in a row
REFUSAL_CAP_S = 120.0  # ... up to this (the runner stretches it by up to 20 %: devices desync)
REPLY_QUIET_S = 1.0  # no reply audio this long after `response_starting`: the reply is over
QUIET_PEAK = 64  # a media message whose samples all stay within +-this is silence (-54 dBFS)

# What the app's `log` notes mean to someone looking at the device's status.
ACTIVITY = {
    STARTED_TALKING: "hearing you",
    PAUSE_DETECTED: "thinking",
    RESPONSE_STARTING: "assistant talking",
}


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


def refusal_wait(refusals: int, *, base_s: float = REFUSAL_WAIT_S) -> float:
    """Least wait after the ``refusals``-th refusal in a row: base, 2x, 4x, ... capped."""
    return min(base_s * 2.0 ** max(0, refusals - 1), max(base_s, REFUSAL_CAP_S))


def decide(
    exc: BaseException, history: History, *, refusal_base_s: float = REFUSAL_WAIT_S
) -> Outcome:
    """The retry policy of this link, as one pure function of why the attempt ended."""
    match exc:
        case SessionRefused():
            wait = refusal_wait(history.refusals + 1, base_s=refusal_base_s)
            return retry(str(exc), at_least_s=wait, refusal=True)
        case HttpRefused(status=status) if 400 <= status < 500:
            # Not a FastRTC endpoint, or it wants auth we do not have: a person must look.
            return attention(
                f"WebSocket handshake refused (HTTP {status}); check fastrtc.url "
                f"(apps serve {PATH})"
            )
        case HttpRefused(status=status):
            return retry(f"WebSocket handshake refused (HTTP {status})")
        case NoPong():
            return retry("no pong, reconnecting")
        case TlsUntrusted():
            return retry("app unreachable: TLS certificate not trusted", cause=str(exc))
        case Unreachable():
            return retry("app unreachable", cause=str(exc))
        case PeerClosed(code=code) if code is not None:
            return retry(f"app closed the connection ({code})")
        case _:
            return retry("connection lost", cause=str(exc))


def create(cfg: Config, deps: LinkDeps) -> FastRTCLink:
    """The registry's factory: this link built from the whole config and the agent's parts."""
    p = deps.policies
    return FastRTCLink(
        cfg.fastrtc,
        uplink=deps.uplink(NAME),
        connect=deps.connect or websockets.asyncio.client.connect,
        reconnector=deps.reconnector(BackoffPolicy()),
        ping_interval_s=p.app_ping_interval_s or 20.0,
        pong_timeout_s=p.app_pong_timeout_s or 10.0,
        refusal_wait_s=p.refusal_wait_s or REFUSAL_WAIT_S,
        security=cfg.security,
        **deps.common(NAME),
    )


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
        self._clock = clock
        self._new_id = new_id
        self._ping_interval_s = ping_interval_s
        self._pong_timeout_s = pong_timeout_s
        self._open_timeout_s = open_timeout_s
        self._tls = client_context(security or SecurityConfig())
        self._live: ClientConnection | None = None  # set while accepted: media flows
        self._resampler = StreamResampler(UPLINK_RATE, cfg.input_rate)
        self._sink: PcmSink | None = None
        self._who = f"app {urlsplit(cfg.url).netloc or cfg.url}"  # status detail while up
        self._shown = shown_url(cfg.url)  # for logs: without a query string
        self._activity = ""  # the app's latest `log` note, shown in the status
        self._last_media = 0.0  # when audible reply audio last arrived
        self._asked_inputs = False  # `send_input` logged on this connection
        self._malformed = MalformedNotes(logger, NAME, metrics)
        self.websocket_id = ""  # of the current (or last) connection
        self.runner = Runner(
            NAME,
            self._attempt,
            functools.partial(decide, refusal_base_s=refusal_wait_s),
            status=status,
            metrics=metrics,
            reconnector=reconnector or Reconnector(BackoffPolicy(), clock=clock),
            heartbeat=heartbeat,
            connecting=self._who,
            clock=clock,
            rng=rng,
        )
        self.runner.remote = remote_of(cfg.url)  # a lost route ends its connection

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Stream and play until cancelled (then `stop` and close, ≤ 1 s)."""
        try:
            await self.runner.run_with(self._pump_uplink)
        finally:
            self._live = None
            self._drop_source()

    async def _attempt(self) -> None:
        """One connection, until it ends (by raising, or cleanly)."""
        logger.info("connecting to %s", self._shown, extra=LOG)
        ws = await open_ws(
            self._connect,
            self.cfg.url,
            self._tls,
            open_timeout=self._open_timeout_s,
            ping_interval=None,  # liveness is the FastRTC `ping`/`pong` below
            close_timeout=STOP_TIMEOUT_S,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,  # mu-law hardly compresses; spare the Pi's CPU
            logger=ws_logger,
        )
        self.websocket_id = self._new_id()
        self._asked_inputs = False
        self._malformed.reset()
        session = FastRTCSession(
            self.websocket_id,
            ping_interval_s=self._ping_interval_s,
            pong_timeout_s=self._pong_timeout_s,
            now=self._clock(),
        )
        async with speaking(ws, encode_stop(), logger, on_end=self._ended):
            for text in session.opening():  # `start`, then the ping that says "accepted"
                await ws.send(text)
            await self._receive(ws, session)

    def _ended(self) -> None:
        self._live = None
        self._drop_source()

    # -- downlink ----------------------------------------------------------------------
    async def _receive(self, ws: ClientConnection, session: FastRTCSession) -> None:
        """Read messages until the connection ends; ping on schedule; raise NoPong."""
        while True:
            now = self._clock()
            message = await next_message(ws, wait_s(session.next_deadline(now), now))
            if message is not None:
                self._handle(ws, session, message, self._clock())
                continue
            self.runner.beat()  # a quiet moment: heartbeat, keepalive, reply timeout
            for text in session.outgoing(self._clock()):  # raises NoPong
                await ws.send(text)
            self._reply_over(self._clock())

    def _handle(
        self, ws: ClientConnection, session: FastRTCSession, message: str | bytes, t_arrival: float
    ) -> None:
        """Act on one message. Raises SessionRefused."""
        self.runner.beat()
        try:
            event = session.receive(message, t_arrival)
        except MalformedMessage as e:
            self._malformed.note(e.reason, e)
            return
        if session.just_accepted:
            self._accepted(ws)
        match event:
            case Media(pcm=pcm):
                self._metrics.inc("frames_received_total", link=NAME)
                assert self._sink is not None
                if pcm.size:
                    self._sink.push(pcm, t_arrival)
                    if int(np.abs(pcm).max()) > QUIET_PEAK:
                        self._last_media = t_arrival
                self._reply_over(t_arrival)
            case Refused() as refusal:
                self._metrics.inc("refusals_total", link=NAME, reason=refusal.error or "none")
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

    def _accepted(self, ws: ClientConnection) -> None:
        """The app took the session: open the mixer source and start sending the mic."""
        self._sink = self._mixer.add_source(NAME, self.cfg.output_rate, 1)
        self._resampler.reset()
        self._activity = ""
        self._live = ws
        self.runner.up(self._who)
        logger.info(
            "session %s accepted by %s (send %d Hz, play %d Hz)",
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
        self.runner.show(f"{self._who}, {self._activity}" if self._activity else self._who)

    def _drop_source(self) -> None:
        if self._sink is not None:
            self._sink = None
            self._mixer.remove_source(NAME)

    # -- uplink --------------------------------------------------------------------------
    async def _pump_uplink(self) -> None:
        """One media message per uplink frame while accepted; drain and count while not."""
        while True:
            frame = await self._uplink.get()
            await send_media(
                self._live,
                functools.partial(self._encode, frame),
                metrics=self._metrics,
                link=NAME,
                buffer_limit=SEND_BUFFER_LIMIT,
            )

    def _encode(self, frame: Frame) -> str:
        return encode_media(self._resampler.process(frame.pcm))
