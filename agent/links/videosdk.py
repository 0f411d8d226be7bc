"""The VideoSDK ingest link: session, full-duplex audio, topic messaging, reconnect.

One :class:`VideoSDKLink` per agent. :meth:`VideoSDKLink.run` loops until cancelled:

1. create an ingest session (``POST {api_base}/v2/ingest/sessions``) with the
   provisioned token or a freshly minted JWT;
2. connect to the returned ``wsUrl`` unmodified (it is single-use and expires 90 s
   after creation: every connect uses a brand-new session, never one older than
   80 s), send ``start`` at once, subscribe to the configured topics;
3. send one ``media`` frame per uplink :class:`~agent.pcm.Frame` (the queue
   is paced by the capture clock), play received room audio through the mixer
   source ``"videosdk"``, deliver command-topic messages to ``on_command`` and log
   the others, publish the status JSON on ``status_topic`` (coalesced);
4. on any drop, wait what the :class:`~agent.backoff.Reconnector` says and
   start over. Refused credentials put the link in ATTENTION and retry slowly.

While the link is down the uplink queue is still drained (frames counted as
dropped), so memory stays bounded and the capture side never blocks.

The wire codec is :mod:`agent.proto.videosdk`; this module only moves its strings.
Secrets never reach a log line: the token and JWT are only put in a header, and
``wsUrl`` is logged with its ``ref`` redacted (websockets' own debug lines go
through a redacting logger).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent.backoff import BackoffPolicy, Reconnector
from agent.config import Config, DeviceConfig, SecurityConfig, VideoSDKConfig
from agent.errors import AuthRefused, CredentialError, HttpRefused, LinkError, ProtocolError
from agent.links.registry import LinkDeps
from agent.links.runner import History, Outcome, Runner, attention, retry
from agent.links.tls import InsecureTransport, client_context, plaintext_refusal, ws_tls
from agent.links.transport import closed, host_of, link_error, retry_after
from agent.links.videosdk_auth import TokenSource
from agent.links.wire import wire_logger
from agent.links.wsclient import goodbye, send_media
from agent.metrics import Metrics
from agent.pcm import Frame, PcmSink, SourceFactory
from agent.proto.videosdk import (
    SAMPLE_RATE,
    SESSIONS_PATH,
    IngestSession,
    MalformedMessage,
    MeetingJoined,
    MeetingLeft,
    ParticipantJoined,
    ParticipantLeft,
    RoomAudio,
    TopicMessage,
    Unknown,
    check_topic,
    decode,
    encode_media,
    encode_message,
    encode_start,
    encode_stop,
    encode_subscribe,
    parse_session_response,
    redact_url,
    session_request,
)
from agent.secrets import Credentials
from agent.service import Heartbeat
from agent.status import StatusBoard

logger = logging.getLogger(__name__)
_wire_logger = wire_logger("videosdk")  # websockets' request line carries ?ref=: masked

LINK = "videosdk"
SOURCE = "videosdk"  # mixer source name
WS_MAX_SIZE = 64 * 1024  # bytes; a 20 ms frame is ~450, a message ≤ 8 KB + envelope
SEND_BUFFER_LIMIT = 16 * 1024  # bytes queued in the socket (~0.7 s of audio): drop, don't lag
STOP_TIMEOUT_S = 1.0  # stop + close 1000 on cancellation, at most this long

Connect = Callable[..., AbstractAsyncContextManager[ClientConnection]]


class _WatchedConnection(ClientConnection):
    """A client connection that remembers when the server last sent any byte.

    Pings, pongs and data all count: a server silent for longer than two of its
    ping intervals is gone even if TCP has not noticed.
    """

    last_rx: float = 0.0  # time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        super().data_received(data)


class SessionError(HttpRefused):
    """The session request failed with an HTTP status other than 401/403."""


def decide(exc: BaseException, history: History) -> Outcome:
    """The one place that decides retry-or-attention for a failed attempt (pure)."""
    match exc:
        case CredentialError() | InsecureTransport() | AuthRefused():
            return attention(str(exc))
        case SessionError(status=429, retry_after_s=wait):
            return retry("session request rate-limited (HTTP 429)", at_least_s=wait)
        case SessionError(status=status) if 400 <= status < 500:
            return attention(f"session request refused (HTTP {status}); check videosdk.room_id")
        case SessionError(status=status):
            return retry(f"session request failed (HTTP {status})")
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
        mixer=deps.mixer,
        status=deps.status,
        metrics=deps.metrics,
        http=deps.http,
        connect=deps.connect or ws_connect,
        reconnector=Reconnector(p.backoff_for(BackoffPolicy())),
        heartbeat=deps.heartbeat(LINK),
        on_command=deps.on_command,
        ping_interval_s=p.ws_ping_interval_s or 20.0,
        ping_timeout_s=p.ws_ping_timeout_s or 15.0,
        security=cfg.security,
    )


class _Limiter:
    """At most one log line per key per ``interval_s``; counts what it held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def allow(self, key: str) -> int | None:
        """None to stay silent, else the number of lines held back since the last one."""
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self._interval_s:
            self._held[key] += 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


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
    ) -> None:
        """Tuning, all optional: ``ping_*``: our keepalive (a missed pong drops the link;
        interval + timeout + the 1 s close wait stay within two intervals, so a half-open
        connection is dropped within 2 ping intervals);
        ``silence_s``: drop when the server sent nothing at all for this long (two of its
        30 s pings + 5 s); ``open_timeout_s``: bound on the session request and on the
        WebSocket handshake, each; ``status_interval_s``: status publications are at most
        this frequent; ``outbox_size``: unsent topic messages kept while down;
        ``wall_clock``: epoch seconds for JWT ``exp``; ``security``: TLS trust
        (``ca_file``) and whether a ws:// ``wsUrl`` to a non-loopback host is allowed."""
        self._cfg = cfg
        self._device = device
        self._tokens = TokenSource(creds, wall_clock=wall_clock)
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
        self._silence_s = silence_s
        self._open_timeout_s = open_timeout_s
        self._status_interval_s = status_interval_s
        self._outbox_size = outbox_size
        self._security = security or SecurityConfig()
        self._tls = client_context(self._security)

        self._topics = self._valid_topics(cfg)
        self._live: ClientConnection | None = None  # set while started: media flows
        self._outbox: collections.deque[str] = collections.deque()
        self._wake = asyncio.Event()
        self._status_dirty = bool(cfg.status_topic)
        self._last_status_sent = -1e9
        self._last_msg_at = 0.0
        self._silence_note = ""
        self._limiter = _Limiter()
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

    @staticmethod
    def _valid_topics(cfg: VideoSDKConfig) -> tuple[str, ...]:
        wanted = [*cfg.topics, *([cfg.command_topic] if cfg.command_topic else [])]
        topics: list[str] = []
        for topic in dict.fromkeys(wanted):
            try:
                topics.append(check_topic(topic))
            except ProtocolError as e:
                logger.warning(
                    "videosdk: not subscribing to %r: %s", topic[:140], e, extra={"LINK": LINK}
                )
        return tuple(topics)

    # -- public API ------------------------------------------------------------------
    async def run(self) -> None:
        """Stream until cancelled; on cancellation send ``stop`` and close 1000 (≤ 1 s)."""
        self._status.add_listener(self._on_status)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump_uplink(), name="videosdk-uplink")
                tg.create_task(self.runner.run(), name="videosdk-sessions")
        finally:
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
        if len(self._outbox) >= self._outbox_size:
            self._metrics.inc("messages_dropped_total", link=LINK, reason="queue_full")
            logger.warning(
                "videosdk: message on %r refused: %d messages already wait for the link",
                topic,
                len(self._outbox),
                extra=extra,
            )
            return False
        self._outbox.append(text)
        self._wake.set()
        return True

    # -- one session -------------------------------------------------------------------
    async def _attempt(self) -> None:
        """One session from creation to drop; raises why it ended."""
        self._silence_note = ""
        token = self._tokens.token()
        self._hb.beat()
        session = await self._create_session(token)
        self._hb.beat()
        if not session.fresh(self._clock()):
            raise LinkError("session URL too old to use; creating another")
        try:
            await self._stream(session)
        except (OSError, InvalidHandshake, InvalidURI) as e:  # TimeoutError included
            raise link_error(e, session.ws_url) from None

    async def _create_session(self, token: str) -> IngestSession:
        url = self._cfg.api_base.rstrip("/") + SESSIONS_PATH
        body = session_request(
            self._cfg.room_id,
            participant_id=self._device.id,
            participant_name=self._device.name or self._device.id,
            device_id=self._device.id,
            region=self._cfg.region,
        )
        asked_at = self._clock()  # the URL's age counts from the request: a slow reply ages it
        host = host_of(url)
        try:
            async with asyncio.timeout(self._open_timeout_s):  # whatever the client's timeout
                reply = await self._http.post(url, json=body, headers={"Authorization": token})
        except TimeoutError:
            raise LinkError(f"session request to {host} timed out") from None
        except httpx.HTTPError as e:
            raise LinkError(f"session request failed: {link_error(e, url)}") from None
        status = reply.status_code
        if status in (401, 403):
            raise AuthRefused(f"VideoSDK refused the credentials (HTTP {status})")
        if not 200 <= status < 300:
            wait = retry_after(reply.headers.get("retry-after"))
            raise SessionError(host, status, what="session request", retry_after_s=wait)
        try:
            payload = reply.json()
        except ValueError:
            raise ProtocolError("session reply is not JSON") from None
        session = parse_session_response(payload, now=asked_at)
        self._metrics.inc("sessions_created_total", link=LINK)
        logger.info(
            "videosdk session created for room %s (call %s)",
            self._cfg.room_id,
            session.call_id,
            extra={"LINK": LINK, "CALL_ID": session.call_id, "ROOM_ID": self._cfg.room_id},
        )
        refusal = plaintext_refusal(session.ws_url, allow_insecure=self._security.allow_insecure)
        if refusal is not None:
            raise InsecureTransport(f"session wsUrl refused: {refusal}")
        return session

    async def _stream(self, session: IngestSession) -> None:
        room = self._cfg.room_id
        extra = {"LINK": LINK, "CALL_ID": session.call_id, "ROOM_ID": room}
        logger.debug("videosdk connecting to %s", redact_url(session.ws_url), extra=extra)
        async with self._connect(
            session.ws_url,
            open_timeout=self._open_timeout_s,
            ping_interval=self._ping_interval_s,
            ping_timeout=self._ping_timeout_s,
            close_timeout=STOP_TIMEOUT_S,
            max_size=WS_MAX_SIZE,
            logger=_wire_logger,
            create_connection=_WatchedConnection,
            **ws_tls(session.ws_url, self._tls),
        ) as ws:
            sink: PcmSink | None = None
            try:
                await ws.send(encode_start())
                for topic in self._topics:
                    await ws.send(encode_subscribe(topic))
                sink = self._mixer.add_source(SOURCE, SAMPLE_RATE, 1)
                self._live = ws
                self._hb.beat()
                self.runner.up(f"room {room}")
                logger.info("call %s in room %s", session.call_id, room, extra=extra)
                await self._connected(ws, sink, extra)
            except ConnectionClosed as e:  # closed while starting
                raise self._closed(e) from None
            except asyncio.CancelledError:
                self._live = None
                await goodbye(ws, encode_stop(), STOP_TIMEOUT_S, logger)
                raise
            finally:
                self._live = None
                if sink is not None:
                    self._mixer.remove_source(SOURCE)

    async def _connected(self, ws: ClientConnection, sink: PcmSink, extra: dict[str, str]) -> None:
        self._last_msg_at = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            helpers = [
                tg.create_task(self._messenger(ws), name="videosdk-messages"),
                tg.create_task(self._watch_silence(ws), name="videosdk-silence"),
            ]
            try:
                ended = await self._receive(ws, sink, extra)
            finally:
                for task in helpers:
                    task.cancel()
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
            self._last_msg_at = time.monotonic()
            self._hb.beat()
            try:
                event = decode(raw)
            except MalformedMessage as e:
                self._metrics.inc("malformed_total", link=LINK, reason=e.reason)
                held = self._limiter.allow("malformed:" + e.reason)
                if held is not None:
                    logger.warning(
                        "videosdk: ignored a malformed server frame (%s; %d more not logged)",
                        e,
                        held,
                        extra=extra,
                    )
                continue
            self._dispatch(event, sink, extra)

    def _dispatch(self, event: object, sink: PcmSink, extra: dict[str, str]) -> None:
        match event:
            case RoomAudio(pcm=pcm):
                self._metrics.inc("frames_received_total", link=LINK)
                if pcm:
                    sink.push(np.frombuffer(pcm, dtype="<i2").astype(np.int16), time.monotonic())
            case TopicMessage(topic=topic) if topic == self._cfg.command_topic:
                self._command(event, extra)
            case TopicMessage(topic=topic, message=message, sender_name=name, sender_id=sender):
                logger.info(
                    "videosdk [%s] %s: %s",
                    topic,
                    name or sender or "?",
                    _clip(message),
                    extra={**extra, "TOPIC": topic, "SENDER": name or sender},
                )
            case ParticipantJoined(participant_id=pid, name=name):
                logger.info(
                    "videosdk: %s joined the room", name or pid or "a participant", extra=extra
                )
            case ParticipantLeft(participant_id=pid, name=name):
                logger.info(
                    "videosdk: %s left the room", name or pid or "a participant", extra=extra
                )
            case MeetingJoined(session_id=sid):
                logger.info("videosdk: joined the meeting (session %s)", sid or "?", extra=extra)
            case MeetingLeft(message=message):
                logger.info(
                    "videosdk: left the meeting (%s)", _clip(message) or "no reason", extra=extra
                )
            case Unknown(event=name):
                self._metrics.inc("unknown_events_total", link=LINK)
                held = self._limiter.allow("unknown")
                if held is not None:
                    logger.debug(
                        "videosdk: ignored unknown event %r (%d more not logged)",
                        name[:64],
                        held,
                        extra=extra,
                    )

    def _command(self, event: TopicMessage, extra: dict[str, str]) -> None:
        sender = event.sender_name or event.sender_id
        logger.info(
            "videosdk: command from %s: %s",
            sender or "?",
            _clip(event.message),
            extra={**extra, "TOPIC": event.topic, "SENDER": sender},
        )
        if self._on_command is None:
            return
        try:
            self._on_command(event)
        except Exception:  # a bad command must not take the link down
            logger.exception("videosdk: the command handler failed", extra=extra)

    def _closed(self, exc: ConnectionClosed) -> LinkError:
        if exc.sent is not None and exc.sent.code == 1009:
            self._metrics.inc("malformed_total", link=LINK, reason="too_large")
            return LinkError(f"server sent a frame over {WS_MAX_SIZE // 1024} KiB")
        if self._silence_note:
            return LinkError(self._silence_note)
        return closed(exc)

    async def _watch_silence(self, ws: ClientConnection) -> None:
        step = min(1.0, self._silence_s / 4)
        while True:
            await asyncio.sleep(step)
            last = max(self._last_msg_at, getattr(ws, "last_rx", 0.0))
            quiet = time.monotonic() - last
            if quiet > self._silence_s:
                self._silence_note = f"server silent for {quiet:.0f} s"
                await ws.close(1011, "server silent")
                return

    # -- uplink ----------------------------------------------------------------------
    async def _pump_uplink(self) -> None:
        """One media frame per uplink frame while up; drain and count while down."""
        while True:
            self._hb.pause()
            frame = await self._uplink.get()
            self._hb.beat()
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
        """Send queued topic messages, then the latest status (≤ 1 per interval)."""
        self._wake.set()  # whatever waited for a connection goes out now
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    await ws.send(self._outbox[0])
                    self._outbox.popleft()
                if self._status_dirty and self._cfg.status_topic:
                    wait = self._last_status_sent + self._status_interval_s - self._clock()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._status_dirty = False
                    text = self._status_message()
                    if text is not None:
                        await ws.send(text)
                        self._last_status_sent = self._clock()
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
            self._status_dirty = True
            self._wake.set()


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _encode(frame: Frame) -> str:
    return encode_media(frame.pcm.astype("<i2", copy=False).tobytes())
