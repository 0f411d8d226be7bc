"""The VideoSDK ingest link: session, full-duplex audio, topic messaging, reconnect.

One :class:`VideoSDKLink` per agent. :meth:`VideoSDKLink.run` loops until cancelled:

1. create an ingest session (``POST {api_base}/v2/ingest/sessions``) in the current
   channel's room with the provisioned token or a freshly minted JWT;
2. connect to the returned ``wsUrl`` unmodified (single-use, expires 90 s after
   creation: every connect uses a brand-new session, never one older than 80 s),
   send ``start`` at once, subscribe to the configured topics;
3. send one ``media`` frame per uplink :class:`~agent.pcm.Frame` (paced by the
   capture clock), play room audio through the mixer source ``"videosdk"``, deliver
   command-topic messages to ``on_command``, log the others, publish the status JSON
   on ``status_topic`` (coalesced);
4. on any drop, wait what the :class:`~agent.backoff.Reconnector` says and start
   over (refused credentials: ATTENTION, retried slowly); a channel switch ends the
   session and starts one in the new room at once (:mod:`.videosdk_channel`).

While down, the uplink queue is still drained (frames counted as dropped). The wire
codec is :mod:`agent.proto.videosdk`; this module only moves its strings. Secrets
never reach a log line: the token and JWT are only put in a header, and ``wsUrl`` is
logged with its ``ref`` redacted (websockets' own debug lines are redacted too).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent.backoff import BackoffPolicy, Reconnector
from agent.channels import Channels
from agent.config import Config, DeviceConfig, SecurityConfig, VideoSDKConfig
from agent.errors import AuthRefused, CredentialError, HttpRefused, LinkError, ProtocolError
from agent.links.registry import LinkDeps
from agent.links.runner import History, Outcome, Runner, attention, remote_of, retry
from agent.links.tls import InsecureTransport, client_context, plaintext_refusal, ws_tls
from agent.links.transport import closed, host_of, link_error, retry_after
from agent.links.videosdk_auth import ClockRefused, SessionError, TokenSource, session_target
from agent.links.videosdk_channel import RoomSwitch
from agent.links.videosdk_room import Limiter, RoomEvents
from agent.links.wire import wire_logger
from agent.links.wsclient import STOP_TIMEOUT_S, WatchedConnection, send_media, speaking
from agent.metrics import Metrics
from agent.pcm import Frame, PcmSink, SourceFactory
from agent.proto.videosdk import (
    SAMPLE_RATE,
    IngestSession,
    MalformedMessage,
    TopicMessage,
    encode_media,
    encode_message,
    encode_stop,
    parse_session_response,
    redact_url,
    session_request,
)
from agent.proto.videosdk_session import RoomSession, valid_topics
from agent.secrets import Credentials
from agent.service import Heartbeat
from agent.status import StatusBoard

logger = logging.getLogger(__name__)
_LOG = {"LINK": "videosdk"}
_wire_logger = wire_logger("videosdk")  # websockets' request line carries ?ref=: masked

LINK = "videosdk"
SOURCE = "videosdk"  # mixer source name
WS_MAX_SIZE = 64 * 1024  # bytes; a 20 ms frame is ~450, a message ≤ 8 KB + envelope
SEND_BUFFER_LIMIT = 16 * 1024  # bytes queued in the socket (~0.7 s of audio): drop, don't lag

Connect = Callable[..., AbstractAsyncContextManager[ClientConnection]]


def decide(exc: BaseException, history: History) -> Outcome:
    """The one place that decides retry-or-attention for a failed attempt (pure)."""
    match exc:
        case ClockRefused() if not history.refusals:  # the next JWT has the server's time
            return retry(str(exc), refusal=True)
        case CredentialError() | InsecureTransport() | AuthRefused():
            return attention(str(exc))
        case SessionError(status=429, retry_after_s=wait):
            return retry("session request rate-limited (HTTP 429)", at_least_s=wait)
        case SessionError(status=status) if 400 <= status < 500:
            return attention(f"session request refused (HTTP {status}); check videosdk.room_id")
        case SessionError(status=status, detail=detail):
            return retry(f"session request failed (HTTP {status}{detail})")
        case HttpRefused(status=status):
            return retry(f"WebSocket handshake refused (HTTP {status})")
        case ProtocolError():
            return retry(f"bad session reply: {redact_url(str(exc))}")
        case LinkError():
            return retry(redact_url(str(exc)))
        case TimeoutError():
            return retry("timed out connecting")
        case _:
            return retry(redact_url(str(link_error(exc, ""))))


def create(cfg: Config, deps: LinkDeps) -> VideoSDKLink:
    """The registry's factory: this link built from the whole config and the agent's parts."""
    p = deps.policies
    return VideoSDKLink(
        cfg.videosdk,
        deps.device,
        deps.credentials,
        uplink=deps.uplink(LINK),
        http=deps.http,
        connect=deps.connect or ws_connect,
        reconnector=deps.reconnector(BackoffPolicy()),
        on_command=deps.on_command,
        channels=deps.channels,
        ping_interval_s=p.ws_ping_interval_s or 20.0,
        ping_timeout_s=p.ws_ping_timeout_s or 15.0,
        security=cfg.security,
        **deps.common(LINK),
    )


class VideoSDKLink:
    """Streams the uplink into a VideoSDK room and plays the room back."""

    name = LINK

    def __init__(
        self,
        cfg: VideoSDKConfig,
        device: DeviceConfig,
        creds: Credentials,
        *,
        uplink: asyncio.Queue[Frame],
        mixer: SourceFactory,
        status: StatusBoard,
        metrics: Metrics,
        http: httpx.AsyncClient,
        connect: Connect = ws_connect,
        reconnector: Reconnector | None = None,
        heartbeat: Heartbeat | None = None,
        on_command: Callable[[TopicMessage], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float | None = 15.0,
        silence_s: float = 65.0,
        open_timeout_s: float = 10.0,
        status_interval_s: float = 0.25,
        outbox_size: int = 32,
        security: SecurityConfig | None = None,
        channels: Channels | None = None,
    ) -> None:
        """Tuning, all optional: ``ping_*``: our keepalive (a missed pong drops the link;
        interval + timeout + the 1 s close wait stay within two intervals, so a half-open
        connection is dropped within 2 ping intervals);
        ``silence_s``: drop when the server sent nothing at all for this long (two of its
        30 s pings + 5 s); ``open_timeout_s``: bound on the session request and on the
        WebSocket handshake, each; ``status_interval_s``: status publications are at most
        this frequent; ``outbox_size``: unsent topic messages kept while down;
        ``wall_clock``: epoch seconds for JWT ``exp``; ``security``: TLS trust (``ca_file``),
        ws:// to non-loopback hosts; ``channels``: the agent's (None: cfg's, not saved)."""
        self._cfg = cfg
        self._device = device
        self._tokens, self._wall = TokenSource(creds, wall_clock=wall_clock), wall_clock
        self._uplink = uplink
        self._mixer = mixer
        self._status = status
        self._metrics = metrics
        self._http = http
        self._connect = connect
        self._hb = heartbeat or Heartbeat(LINK, 30.0, clock)
        self._on_command = on_command
        self._clock = clock
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._open_timeout_s = open_timeout_s
        self._security = security or SecurityConfig()
        self._tls = client_context(self._security)
        topics, refused = valid_topics(
            [*cfg.topics, *([cfg.command_topic] if cfg.command_topic else [])]
        )
        for topic, why in refused:
            logger.warning("videosdk: not subscribing to %r: %s", topic, why, extra=_LOG)
        self._flow = RoomSession(
            topics,
            outbox_size=outbox_size,
            status_interval_s=status_interval_s,
            silence_s=silence_s,
            publishes_status=bool(cfg.status_topic),
        )
        self._live: ClientConnection | None = None  # set while started: media flows
        self._was_live = False  # a call has started in this run (drops count from then)
        self._wake = asyncio.Event()
        self._silence_note = ""
        self._limiter = Limiter()
        self._room = RoomEvents(metrics, self._limiter, cfg.command_topic, on_command)
        self.runner = Runner(
            LINK,
            self._attempt,
            decide,
            status=status,
            metrics=metrics,
            reconnector=reconnector or Reconnector(clock=clock),
            heartbeat=self._hb,
            clock=clock,
        )
        self.runner.remote = remote_of(cfg.session_url or cfg.api_base)  # see network_changed
        self.rooms = RoomSwitch(channels or Channels(cfg.channels()), self.runner, metrics, status)

    # -- public API ------------------------------------------------------------------
    async def run(self) -> None:
        """Stream until cancelled; on cancellation send ``stop`` and close 1000 (≤ 1 s)."""
        self._status.add_listener(self._on_status)
        self.rooms.attach()  # a channel switch restarts the session in the new room
        try:
            await self.runner.run_with(self._pump_uplink)
        finally:
            self.rooms.detach()
            self._live = None
            self._status.remove_listener(self._on_status)

    def publish(self, topic: str, data: str | dict[str, Any]) -> bool:
        """Queue a topic message (sent now if up, else after the next connect).

        False, with one log line, when refused locally: bad topic, over 8 KB, or the
        outbox already holds ``outbox_size`` unsent messages.
        """
        extra = {"LINK": LINK, "TOPIC": str(topic)[:128]}
        try:
            text = encode_message(topic, data)
        except ProtocolError as e:
            logger.warning("videosdk: message on %r refused: %s", str(topic)[:140], e, extra=extra)
            return False
        if not self._flow.queue(text):
            self._metrics.inc("messages_dropped_total", link=LINK, reason="queue_full")
            why = f"{self._flow.waiting} messages already wait for the link"
            logger.warning("videosdk: message on %r refused: %s", topic, why, extra=extra)
            return False
        self._wake.set()
        return True

    # -- one session -------------------------------------------------------------------
    async def _attempt(self) -> None:
        """One session from creation to drop; raises why it ended."""
        self._silence_note = ""
        token = self._tokens.token()
        self._hb.beat()
        session = await self.rooms.session(self._create_session(token))
        self._hb.beat()
        if not session.fresh(self._clock()):
            raise LinkError("session URL too old to use; creating another")
        try:
            await self._stream(session)
        except (OSError, InvalidHandshake, InvalidURI) as e:  # TimeoutError included
            raise link_error(e, session.ws_url) from None

    async def _create_session(self, token: str) -> IngestSession:
        # fleet: VideoSDK itself, or the session broker (session_url + Bearer device-token)
        target = session_target(self._cfg, self._tokens, token)
        body = session_request(
            self.rooms.room_id,
            participant_id=self._device.id,
            participant_name=self._device.name or self._device.id,
            device_id=self._device.id,
            region=self._cfg.region,
        )
        asked_at, sent_at = self._clock(), self._wall()  # the URL ages from the request
        host = host_of(target.url)
        try:
            async with asyncio.timeout(self._open_timeout_s):  # whatever the client's timeout
                reply = await self._http.post(
                    target.url, json=body, headers={"Authorization": target.authorization}
                )
        except TimeoutError:
            raise LinkError(f"session request to {host} timed out") from None
        except httpx.HTTPError as e:
            raise LinkError(f"session request failed: {link_error(e, target.url)}") from None
        status = reply.status_code
        self._tokens.saw_reply(reply.headers.get("date"), host, sent_at)
        if status in (401, 403):  # a broker's: "not enrolled"; a wrong clock, said so
            raise self._tokens.refused(target, status, reply.content)
        if not 200 <= status < 300:
            wait = retry_after(reply.headers.get("retry-after"))
            raise SessionError(
                host,
                status,
                what="session request",
                retry_after_s=wait,
                detail=target.detail(reply.content),  # a broker's reason, if any
            )
        try:
            payload = reply.json()
        except ValueError:
            raise ProtocolError("session reply is not JSON") from None
        session = parse_session_response(payload, now=asked_at)
        self._metrics.inc("sessions_created_total", link=LINK)
        room, call = self.rooms.room_id, session.call_id
        extra = {"LINK": LINK, "CALL_ID": call, "ROOM_ID": room}
        logger.info("videosdk session created for room %s (call %s)", room, call, extra=extra)
        refusal = plaintext_refusal(session.ws_url, allow_insecure=self._security.allow_insecure)
        if refusal is not None:
            raise InsecureTransport(f"session wsUrl refused: {refusal}")
        return session

    async def _stream(self, session: IngestSession) -> None:
        room = self.rooms.room_id
        extra = {"LINK": LINK, "CALL_ID": session.call_id, "ROOM_ID": room}
        logger.debug("videosdk connecting to %s", redact_url(session.ws_url), extra=extra)
        async with self._connect(
            session.ws_url,
            open_timeout=self._open_timeout_s,
            ping_interval=self._ping_interval_s,
            ping_timeout=self._ping_timeout_s,
            close_timeout=STOP_TIMEOUT_S,
            max_size=WS_MAX_SIZE,
            compression=None,  # base64 PCM hardly compresses; spare the Pi's CPU
            logger=_wire_logger,
            create_connection=WatchedConnection,
            **ws_tls(session.ws_url, self._tls),
        ) as ws:
            sink: PcmSink | None = None
            try:
                async with speaking(ws, encode_stop(), logger, on_end=self._unlive):
                    for text in self._flow.opening(time.monotonic()):
                        await ws.send(text)  # `start` first, then the subscriptions
                    sink = self._mixer.add_source(SOURCE, SAMPLE_RATE, 1)
                    self._live = ws
                    self._was_live = True
                    self._hb.beat()
                    self.runner.up(f"room {room}")
                    logger.info("call %s in room %s", session.call_id, room, extra=extra)
                    await self._connected(ws, sink, extra)
            except ConnectionClosed as e:  # closed while starting
                raise self._closed(e) from None
            finally:
                if sink is not None:
                    self._mixer.remove_source(SOURCE)

    def _unlive(self) -> None:
        self._live = None  # no more media onto this socket

    async def _connected(self, ws: ClientConnection, sink: PcmSink, extra: dict[str, str]) -> None:
        async with asyncio.TaskGroup() as tg:
            messenger = tg.create_task(self._messenger(ws), name="videosdk-messages")
            try:
                ended = await self._receive(ws, sink, extra)
            finally:
                messenger.cancel()
        raise ended  # outside the TaskGroup: not wrapped in an ExceptionGroup

    # -- downlink --------------------------------------------------------------------
    async def _receive(
        self, ws: ClientConnection, sink: PcmSink, extra: dict[str, str]
    ) -> LinkError:
        """Play and dispatch until the connection closes; return why it did."""
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed as e:
                return self._closed(e)
            self._hb.beat()
            try:
                event = self._flow.receive(raw, time.monotonic())
            except MalformedMessage as e:
                self._room.malformed(e, extra)
                continue
            self._room.dispatch(event, sink, extra)

    def _closed(self, exc: ConnectionClosed) -> LinkError:
        if exc.sent is not None and exc.sent.code == 1009:
            self._metrics.inc("malformed_total", link=LINK, reason="too_large")
            return LinkError(f"server sent a frame over {WS_MAX_SIZE // 1024} KiB")
        if self._silence_note:
            return LinkError(self._silence_note)
        return closed(exc)

    # -- uplink ----------------------------------------------------------------------
    async def _pump_uplink(self) -> None:
        """One media frame per uplink frame while up; drain and count while down.

        Frames from before the first call of this run are not drops (there was no
        stream yet to lose them from: a healthy start shows none); they are counted
        apart, in ``frames_before_call_total``."""
        while True:
            self._hb.pause()
            frame = await self._uplink.get()
            self._hb.beat()
            if self._live is None and not self._was_live:
                self._metrics.inc("frames_before_call_total", link=LINK)
                continue
            sent = await send_media(
                self._live,
                functools.partial(_encode, frame),
                metrics=self._metrics,
                link=LINK,
                buffer_limit=SEND_BUFFER_LIMIT,
            )
            if not sent:
                continue
            # capture clock -> handed to the socket (t_capture is time.monotonic())
            self._metrics.observe(
                "uplink_latency_seconds", time.monotonic() - frame.t_capture, link=LINK
            )

    async def _messenger(self, ws: ClientConnection) -> None:
        """Send queued topic messages, then the latest status (≤ 1 per interval); close
        the connection when the server has been silent too long."""
        self._wake.set()  # whatever waited for a connection goes out now
        step = min(1.0, self._flow.silence_s / 4)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(step):
                        await self._wake.wait()
                self._flow.heard(getattr(ws, "last_rx", 0.0))
                note = self._flow.silent(time.monotonic())
                if note is not None:
                    self._silence_note = note
                    await ws.close(1011, "server silent")
                    return
                # a quiet moment of a healthy call (the server heard within silence_s):
                # progress, as Orgo's and FastRTC's quiet moments are. Without it a call
                # with no uplink frames (no mic) and no downlink messages stalled its
                # heartbeat 30 s after the join, and the watchdog restarted the agent.
                self._hb.beat()
                if not self._wake.is_set():
                    continue
                self._wake.clear()
                while (text := self._flow.next_message()) is not None:
                    await ws.send(text)
                    self._flow.sent()
                wait = self._flow.status_wait(self._clock())
                if wait:
                    await asyncio.sleep(wait)
                text = self._flow.status_due(self._clock(), self._status_message)
                if text is not None:
                    await ws.send(text)
        except ConnectionClosed:
            return

    def _status_message(self) -> str | None:
        try:
            return encode_message(self._cfg.status_topic, self._status.to_json())
        except ProtocolError as e:
            if self._limiter.allow("status") is not None:
                logger.warning("videosdk: status not published: %s", e, extra={"LINK": LINK})
            return None

    def _on_status(self, board: StatusBoard) -> None:
        if self._cfg.status_topic:
            self._flow.status_changed()
            self._wake.set()


def _encode(frame: Frame) -> str:
    return encode_media(frame.pcm.astype("<i2", copy=False).tobytes())
