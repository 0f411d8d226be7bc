"""The PBX link: a WebSocket server that plays the call audio a Yeastar PBX pushes.

The PBX is the client (PROTOCOLS.md §4); the device is a call-monitor speaker::

    PBX ──HTTP upgrade, header <pbx.secret_header>: <pbx-secret>──▶ Doorman.admit()
          wrong or missing secret: HTTP 401 · max_calls reached: HTTP 503 (before upgrade)
    PBX ──JSON frames, channels interleaved──▶ _call() ─▶ CallStream (agent.proto.yeastar)
          each channel: its own mixer source "pbx/<call slot>/<channel>" (own jitter buffer)
          `end`: that channel's source drains, then goes · close: every channel goes

The link runs on :class:`~agent.links.runner.Runner` (one attempt = read the secret,
load the TLS pair if configured, listen until cancelled): if that fails (port taken,
no credential, bad certificate) :func:`decide` says why, the runner shows it, backs
off and tries again. Who may call is :mod:`agent.links.pbx_admit`. Bad input never
reaches beyond the call that sent it: a malformed frame is
dropped and counted (``malformed_total{link="pbx",reason=}``), an oversized message
closes that call (1009), a silent call is closed after ``pbx.idle_timeout_s``.

Mixer source names reuse a small set of slots (call 1..max_calls, channel 1..16), so
per-source metrics stay bounded however many calls a device plays in its life.
The secret never reaches a log record or a status detail: the websockets library's
debug log of request headers goes through :func:`agent.links.wire.wire_logger`, which
masks the secret header, and the value is registered with
:class:`~agent.secrets.RedactingFilter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from agent.backoff import BackoffPolicy, Reconnector
from agent.config import Config, PbxConfig
from agent.errors import CredentialError, LinkError
from agent.links.pbx_admit import Doorman, peer_of
from agent.links.registry import LinkDeps
from agent.links.runner import History, Outcome, Runner, attention, retry
from agent.links.wire import wire_logger
from agent.metrics import Metrics
from agent.pcm import Pcm, PcmSink, SourceFactory
from agent.proto.yeastar import (
    CALLFLOWS,
    MAX_CHANNELS,
    CallStream,
    ChannelAudio,
    ChannelEnded,
    ChannelKey,
    ChannelOpened,
    MalformedFrame,
)
from agent.secrets import Credentials
from agent.service import Heartbeat
from agent.status import StatusBoard

logger = logging.getLogger(__name__)

NAME = "pbx"
SECRET = "pbx-secret"  # credential file name
LOG = {"LINK": NAME}  # journald field on every record of this link
BEAT_S = 1.0  # the listening loop proves progress this often
OPEN_TIMEOUT_S = 5.0  # TLS + HTTP upgrade of one connection
CLOSE_TIMEOUT_S = 1.0  # closing handshake of one connection
DRAIN_MARGIN_S = 0.1  # an ended channel's source stays this long after its buffer empties
MAX_DRAIN_S = 2.0  # ... but never longer than this (the jitter buffer's capacity)
MAX_LEAD_IN_S = 0.2  # silence before a channel's first audio: one fragment, at most this


class TlsUnavailable(LinkError):
    """pbx.tls_cert / pbx.tls_key could not be loaded."""


class CannotListen(LinkError):
    """The listening socket could not be opened."""


def decide(exc: BaseException, history: History) -> Outcome:
    """The retry policy of this link, as one pure function of why the server went down."""
    match exc:
        case CredentialError() | TlsUnavailable():
            return attention(str(exc))
        case CannotListen():
            return retry(str(exc))
        case _:
            return retry("server stopped", cause=str(exc))


def create(cfg: Config, deps: LinkDeps) -> PbxLink:
    """The registry's factory: this link built from the whole config and the agent's parts."""
    reconnector = deps.reconnector(BackoffPolicy())
    return PbxLink(cfg.pbx, deps.credentials, reconnector=reconnector, **deps.common(NAME))


@dataclass(eq=False)
class _Call:
    """One PBX connection (the PBX opens one per call)."""

    slot: int  # 1..max_calls, reused
    peer: str
    stream: CallStream
    started: float  # clock() at the upgrade
    channels_opened: int = 0
    sinks: dict[ChannelKey, tuple[str, PcmSink]] = field(default_factory=dict)
    malformed_seen: set[str] = field(default_factory=set)  # reasons logged at WARNING
    unprimed: set[ChannelKey] = field(default_factory=set)  # opened, no audio pushed yet

    def source_name(self) -> str:
        used = {name for name, _ in self.sinks.values()}
        for ch in range(1, MAX_CHANNELS + 1):
            name = f"{NAME}/{self.slot}/{ch}"
            if name not in used:
                return name
        raise AssertionError("CallStream admits at most MAX_CHANNELS channels")


class PbxLink:
    """Serves the PBX; plays every call it pushes; ``run()`` until cancelled."""

    name = NAME

    def __init__(
        self,
        cfg: PbxConfig,
        creds: Credentials,
        *,
        mixer: SourceFactory,
        status: StatusBoard,
        metrics: Metrics,
        heartbeat: Heartbeat | None = None,
        reconnector: Reconnector | None = None,
        clock: Callable[[], float] = time.monotonic,
        open_timeout_s: float = OPEN_TIMEOUT_S,
    ) -> None:
        """``open_timeout_s``: how long one connection may take for its TLS handshake
        and HTTP upgrade (a slowloris client is dropped after it); tests shorten it."""
        self.cfg = cfg
        self._creds = creds
        self._mixer = mixer
        self._status = status
        self._metrics = metrics
        self._clock = clock
        self._open_timeout_s = open_timeout_s
        host, _, port = cfg.listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self.port: int | None = None  # the port actually bound (tests listen on port 0)
        self._door = Doorman(cfg, metrics, clock, open_timeout_s)
        self._calls: list[_Call] = []
        self._retiring: dict[str, asyncio.TimerHandle] = {}  # source name -> removal
        self._up = False  # listening (the runner was told)
        # websockets logs every request header at DEBUG: the secret header is masked
        self._ws_logger = wire_logger(NAME, hide_headers=(cfg.secret_header,), quiet_info=True)
        self.runner = Runner(
            NAME,
            self._serve,
            decide,
            status=status,
            metrics=metrics,
            reconnector=reconnector or Reconnector(BackoffPolicy()),
            heartbeat=heartbeat,
            clock=clock,
        )

    @property
    def url(self) -> str:
        scheme = "wss" if self.cfg.tls_cert else "ws"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port if self.port is not None else self._port}"

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Listen, serve calls; on failure show why, back off, listen again. Cancel to stop."""
        try:
            await self.runner.run()
        finally:
            self._end_all_calls()
            for handle in self._retiring.values():
                handle.cancel()
            for name in self._retiring:
                self._mixer.remove_source(name)
            self._retiring.clear()

    async def _serve(self) -> None:
        self.runner.connecting = f"starting {self.url}"
        self._up = False
        try:
            await self._listen()
        finally:
            self._end_all_calls()

    async def _listen(self) -> None:
        self._door.secret = self._creds.get(SECRET).reveal().encode("utf-8")
        tls = self._tls_context()
        try:
            server = await serve(
                self._call,
                self._host,
                self._port,
                process_request=self._door.admit,
                max_size=self.cfg.max_message_bytes,
                compression=None,  # base64 PCM hardly compresses; spare the Pi's CPU
                open_timeout=self._open_timeout_s,
                close_timeout=CLOSE_TIMEOUT_S,
                # Liveness is the audio itself (pbx.idle_timeout_s): no reliance on how
                # the PBX's client answers pings.
                ping_interval=None,
                server_header=None,  # do not tell scanners what answers here
                ssl=tls,
                logger=self._ws_logger,
                create_connection=self._door.connection_class(),
            )
        except OSError as e:
            reason = "address in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise CannotListen(f"cannot listen on {self.cfg.listen}: {reason}") from None
        except ValueError as e:  # e.g. a host name idna cannot encode (config checks it)
            raise CannotListen(f"cannot listen on {self.cfg.listen!r}: {e}") from None
        try:
            self.port = server.sockets[0].getsockname()[1] if server.sockets else self._port
            self._show()
            while True:
                self.runner.beat()
                await asyncio.sleep(BEAT_S)
        finally:
            server.close()  # closes every call with 1001 (going away)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S + 1.0):
                    await server.wait_closed()

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.cfg.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        except (OSError, ssl.SSLError, ValueError) as e:  # ValueError: a NUL in a path
            what = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise TlsUnavailable(
                f"cannot load pbx.tls_cert {self.cfg.tls_cert} / pbx.tls_key "
                f"{self.cfg.tls_key}: {what}"
            ) from None
        return ctx

    # -- one call ------------------------------------------------------------------------
    async def _call(self, ws: ServerConnection) -> None:
        """One connection, from the upgrade to its close."""
        used = {c.slot for c in self._calls}
        slot = next(s for s in range(1, len(used) + 2) if s not in used)
        call = _Call(slot, peer_of(ws), CallStream(), self._clock())
        self._calls.append(call)
        self._metrics.inc("calls_total", link=NAME)
        logger.info("PBX connected from %s (call slot %d)", call.peer, slot, extra=LOG)
        ended = "closed"
        try:
            while True:
                try:
                    async with asyncio.timeout(self.cfg.idle_timeout_s):
                        message = await ws.recv()
                except TimeoutError:
                    ended = "idle_timeout"
                    logger.warning(
                        "call from %s sent nothing for %g s (pbx.idle_timeout_s); closing it",
                        call.peer,
                        self.cfg.idle_timeout_s,
                        extra=LOG,
                    )
                    await ws.close(CloseCode.NORMAL_CLOSURE, "idle timeout")
                    return
                self._on_message(call, message)
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == CloseCode.MESSAGE_TOO_BIG:
                ended = "too_large"
                logger.warning(
                    "call from %s closed: a message over %d bytes (pbx.max_message_bytes)",
                    call.peer,
                    self.cfg.max_message_bytes,
                    extra=LOG,
                )
            elif e.sent is not None and e.sent.code == CloseCode.GOING_AWAY:
                ended = "stopping"
            elif e.rcvd is None:  # no closing handshake: reset, or the PBX vanished
                ended = "lost"
        except Exception:  # a bug: this call ends, the others and the server go on
            ended = "error"
            logger.exception("call from %s failed unexpectedly", call.peer, extra=LOG)
            with contextlib.suppress(Exception):
                await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._door.admitted.discard(ws)
            if call in self._calls:
                self._calls.remove(call)
                for key, (name, sink) in call.sinks.items():
                    self._retire(name, sink)
                    logger.debug("channel %s ends with its connection", key, extra=LOG)
                call.sinks.clear()
                call.stream.close()
            self._metrics.inc("calls_ended_total", link=NAME, reason=ended)
            logger.info(
                "call from %s ended (%s) after %.1f s: %d frames, %d channel(s)",
                call.peer,
                ended.replace("_", " "),
                self._clock() - call.started,
                call.stream.frames_received,
                call.channels_opened,
                extra=LOG,
            )
            self._show()

    def _on_message(self, call: _Call, message: str | bytes) -> None:
        t_arrival = self._clock()
        try:
            events = call.stream.receive(message)
        except MalformedFrame as e:
            self._metrics.inc("malformed_total", link=NAME, reason=e.reason)
            # Once per reason and call at WARNING; a garbage-spewing peer stays at DEBUG.
            level = logging.DEBUG if e.reason in call.malformed_seen else logging.WARNING
            call.malformed_seen.add(e.reason)
            logger.log(level, "ignored a frame from %s: %s", call.peer, e, extra=LOG)
            return
        self._metrics.inc("frames_received_total", link=NAME)
        changed = False
        for event in events:
            match event:
                case ChannelAudio(key=key, pcm=pcm):
                    sink = call.sinks[key][1]
                    if key in call.unprimed:
                        call.unprimed.discard(key)
                        sink.push(self._lead_in(pcm.size), t_arrival)
                    sink.push(pcm, t_arrival)
                case ChannelOpened(key=key, number=number, callflow=flow):
                    name = call.source_name()
                    pending = self._retiring.pop(name, None)
                    if pending is not None:  # the slot's previous call is still draining
                        pending.cancel()
                    call.sinks[key] = (name, self._mixer.add_source(name, self.cfg.sample_rate))
                    call.unprimed.add(key)
                    call.channels_opened += 1
                    if flow not in CALLFLOWS:
                        logger.debug("unknown callflow %r (played anyway)", flow, extra=LOG)
                    logger.info(
                        "call %s: channel %s (number %s%s) playing as %s",
                        key.callid,
                        key.channelid or "-",
                        number or "unknown",
                        f", {flow}" if flow else "",
                        name,
                        extra=LOG,
                    )
                    changed = True
                case ChannelEnded(key=key):
                    call.unprimed.discard(key)
                    name, sink = call.sinks.pop(key)
                    self._retire(name, sink)
                    logger.info(
                        "call %s: channel %s ended", key.callid, key.channelid or "-", extra=LOG
                    )
                    changed = True
        if changed:
            self._show()

    # -- sources -------------------------------------------------------------------------
    def _lead_in(self, fragment: int) -> Pcm:
        """Silence as long as a channel's first fragment, played before it.

        The PBX sends a fragment's worth of audio (80 ms at 8 kHz) once per fragment
        duration: a buffer started on one fragment runs dry whenever the next one is a
        little late, and the first half-second of every call would stutter while the
        jitter buffer grows its target. One fragment of lead-in gives a fragment of
        slack from the start; the jitter buffer trims it later if it is never needed.
        """
        return np.zeros(min(fragment, int(self.cfg.sample_rate * MAX_LEAD_IN_S)), np.int16)

    def _retire(self, name: str, sink: PcmSink) -> None:
        """Remove a source once what it holds has played (the tail of the last words)."""
        depth_ms = float(getattr(sink, "depth_ms", 0.0))  # a MixerSource knows its depth
        delay = min(depth_ms / 1000.0 + DRAIN_MARGIN_S, MAX_DRAIN_S)
        old = self._retiring.pop(name, None)
        if old is not None:
            old.cancel()
        self._retiring[name] = asyncio.get_running_loop().call_later(delay, self._remove, name)

    def _remove(self, name: str) -> None:
        self._retiring.pop(name, None)
        self._mixer.remove_source(name)

    def _end_all_calls(self) -> None:
        """The server stops: every source goes now (nothing will drain it)."""
        for call in self._calls:
            for name, _sink in call.sinks.values():
                self._mixer.remove_source(name)
            call.sinks.clear()
            call.stream.close()
        self._calls.clear()
        self._door.admitted.clear()
        self._metrics.set("active_calls", 0, link=NAME)
        self._metrics.set("active_channels", 0, link=NAME)

    # -- status --------------------------------------------------------------------------
    def _show(self) -> None:
        """``1 call, 2 channels, from 1009`` (or ``waiting for calls on ws://...``)."""
        calls = [c for c in self._calls if c.stream.channels]
        n_calls = sum(len(c.stream.callids) for c in calls)  # one per connection, normally
        channels = sum(len(c.stream.channels) for c in calls)
        self._metrics.set("active_calls", n_calls, link=NAME)
        self._metrics.set("active_channels", channels, link=NAME)
        if not calls:
            detail = f"waiting for calls on {self.url}"
        else:
            detail = f"{_plural(n_calls, 'call')}, {_plural(channels, 'channel')}"
            numbers = [n[0] for n in (c.stream.numbers() for c in calls) if n]
            if numbers:
                detail += f", from {', '.join(numbers)}"
        if self._up:
            self.runner.show(detail)
        else:
            self._up = True
            self.runner.up(detail)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
