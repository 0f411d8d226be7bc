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
import logging
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agent.backoff import Reconnector
from agent.config import DeviceConfig, SecurityConfig, VideoSDKConfig
from agent.errors import AuthRefused, CredentialError, LinkError, ProtocolError
from agent.links.tls import InsecureTransport, client_context, plaintext_refusal, ws_tls
from agent.links.videosdk_auth import TokenSource, session_target
from agent.metrics import Metrics
from agent.pcm import Frame, PcmSink, SourceFactory
from agent.proto.videosdk import (
    SAMPLE_RATE,
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
from agent.status import LinkState, StatusBoard

logger = logging.getLogger(__name__)

LINK = "videosdk"
SOURCE = "videosdk"  # mixer source name
WS_MAX_SIZE = 64 * 1024  # bytes; a 20 ms frame is ~450, a message ≤ 8 KB + envelope
SEND_BUFFER_LIMIT = 16 * 1024  # bytes queued in the socket (~0.7 s of audio): drop, don't lag
STOP_TIMEOUT_S = 1.0  # stop + close 1000 on cancellation, at most this long

Connect = Callable[..., AbstractAsyncContextManager[ClientConnection]]


class _RedactRef(logging.Filter):
    """Scrubs ``ref=`` values from websockets' debug lines (``> GET /...?ref=...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_url(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_wire_logger = logging.getLogger(__name__ + ".wire")
_wire_logger.addFilter(_RedactRef())


class _WatchedConnection(ClientConnection):
    """A client connection that remembers when the server last sent any byte.

    Pings, pongs and data all count: a server silent for longer than two of its
    ping intervals is gone even if TCP has not noticed.
    """

    last_rx: float = 0.0  # time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        super().data_received(data)


class SessionError(LinkError):
    """The session request failed with an HTTP status other than 401/403."""

    def __init__(self, message: str, *, status: int, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Drop:
    """Why an attempt ended and how to retry. ``reason`` is shown to users (no secrets)."""

    reason: str
    attention: bool = False  # a person must act (credentials, config): ATTENTION + slow retry
    at_least_s: float = 0.0  # the server asked us to wait this long


def classify(exc: BaseException) -> Drop:
    """The one place that decides retry-or-attention for a failed attempt (pure)."""
    match exc:
        case CredentialError():
            return Drop(str(exc), attention=True)
        case InsecureTransport():
            return Drop(str(exc), attention=True)
        case AuthRefused():
            return Drop(str(exc), attention=True)
        case SessionError(status=429, retry_after_s=wait):
            return Drop("session request rate-limited (HTTP 429)", at_least_s=wait)
        case SessionError(status=status) if 400 <= status < 500:
            return Drop(
                f"session request refused (HTTP {status}); check videosdk.room_id", attention=True
            )
        case InvalidStatus():
            return Drop(f"WebSocket handshake refused (HTTP {exc.response.status_code})")
        case InvalidHandshake() | InvalidURI():
            return Drop(f"WebSocket handshake failed ({type(exc).__name__})")
        case ProtocolError():
            return Drop(f"bad session reply: {redact_url(str(exc))}")
        case LinkError():
            return Drop(redact_url(str(exc)))
        case TimeoutError():
            return Drop("timed out connecting")
        case OSError():
            return Drop(f"cannot connect ({exc.strerror or type(exc).__name__})")
        case _:
            return Drop(f"unexpected error ({type(exc).__name__})")


def describe_close(exc: ConnectionClosed) -> str:
    """A user-facing reason for a closed connection."""
    if exc.rcvd is not None:
        reason = f" {exc.rcvd.reason}" if exc.rcvd.reason else ""
        return f"server closed the connection ({exc.rcvd.code}{reason})"
    if exc.sent is not None and exc.sent.code == 1011:
        return f"server stopped answering ({exc.sent.reason or 'keepalive'})"
    if exc.sent is not None:
        return f"connection closed ({exc.sent.code} {exc.sent.reason})".rstrip()
    return "connection lost"


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
        on_command: Callable[[str], None] | None = None,
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
        self._reconnector = reconnector or Reconnector(clock=clock)
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
        self._status.set_link(LINK, LinkState.CONNECTING)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump_uplink(), name="videosdk-uplink")
                tg.create_task(self._sessions(), name="videosdk-sessions")
        finally:
            self._live = None
            self._status.remove_listener(self._on_status)
            self._status.set_link(LINK, LinkState.STOPPED)

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

    # -- session loop ------------------------------------------------------------------
    async def _sessions(self) -> None:
        first = True
        while True:
            if not first:
                self._metrics.inc("reconnects_total", link=LINK)
            first = False
            drop = await self._attempt()
            delay = self._reconnector.next_delay(slow=drop.attention, at_least_s=drop.at_least_s)
            extra = {"LINK": LINK, "ROOM_ID": self._cfg.room_id}
            if drop.attention:
                self._status.set_link(LINK, LinkState.ATTENTION, drop.reason, retry_in=delay)
                self._status.set_error(f"videosdk: {drop.reason}")
                logger.error(
                    "videosdk needs attention: %s (next try in %.0f s)",
                    drop.reason,
                    delay,
                    extra=extra,
                )
            else:
                self._status.set_link(LINK, LinkState.RETRY, drop.reason, retry_in=delay)
                logger.warning(
                    "videosdk link down: %s; retry in %.1f s", drop.reason, delay, extra=extra
                )
            self._hb.pause()
            await asyncio.sleep(delay)

    async def _attempt(self) -> Drop:
        """One session from creation to drop; never raises except CancelledError."""
        self._status.set_link(LINK, LinkState.CONNECTING)
        self._silence_note = ""
        try:
            token = self._tokens.token()
            self._hb.beat()
            session = await self._create_session(token)
            self._hb.beat()
            if not session.fresh(self._clock()):
                return Drop("session URL too old to use; creating another")
            return await self._stream(session)
        except Exception as e:  # any failure is a drop; CancelledError passes through
            drop = classify(e)
            if drop.reason.startswith("unexpected error"):  # a bug: keep the traceback, not refs
                trace = "".join(traceback.format_exception(e))
                logger.error(
                    "videosdk: %s\n%s", drop.reason, redact_url(trace), extra={"LINK": LINK}
                )
            return drop

    async def _create_session(self, token: str) -> IngestSession:
        # fleet: VideoSDK itself, or the session broker (session_url + Bearer device-token)
        target = session_target(self._cfg, self._tokens, token)
        body = session_request(
            self._cfg.room_id,
            participant_id=self._device.id,
            participant_name=self._device.name or self._device.id,
            device_id=self._device.id,
            region=self._cfg.region,
        )
        asked_at = self._clock()  # the URL's age counts from the request: a slow reply ages it
        try:
            async with asyncio.timeout(self._open_timeout_s):  # whatever the client's timeout
                reply = await self._http.post(
                    target.url, json=body, headers={"Authorization": target.authorization}
                )
        except TimeoutError:
            raise LinkError("session request timed out") from None
        except httpx.HTTPError as e:
            raise LinkError(f"session request failed ({type(e).__name__})") from None
        status = reply.status_code
        if status in (401, 403):  # fleet: a broker's refusal says "not enrolled or revoked"
            raise target.refused(status, reply.content)
        if status == 429:
            raise SessionError("rate-limited", status=status, retry_after_s=_retry_after(reply))
        if not 200 <= status < 300:
            detail = target.detail(reply.content)  # fleet: the broker's reason, if any
            raise SessionError(f"session request failed (HTTP {status}{detail})", status=status)
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

    async def _stream(self, session: IngestSession) -> Drop:
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
                self._reconnector.connected()
                self._hb.beat()
                self._status.set_link(LINK, LinkState.UP, f"room {room}")
                logger.info("videosdk up in room %s (call %s)", room, session.call_id, extra=extra)
                return await self._connected(ws, sink, extra)
            except ConnectionClosed as e:  # closed while starting
                return self._closed(e)
            except asyncio.CancelledError:
                self._live = None
                await self._goodbye(ws)
                raise
            finally:
                self._live = None
                if sink is not None:
                    self._mixer.remove_source(SOURCE)

    async def _goodbye(self, ws: ClientConnection) -> None:
        """``stop`` then close 1000, bounded: the agent must exit within 2 s."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await ws.send(encode_stop())
                await ws.close(1000, "device stopping")
        except (TimeoutError, ConnectionClosed, OSError):
            ws.transport.abort()
        logger.info("videosdk stopped", extra={"LINK": LINK, "ROOM_ID": self._cfg.room_id})

    async def _connected(self, ws: ClientConnection, sink: PcmSink, extra: dict[str, str]) -> Drop:
        self._last_msg_at = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            helpers = [
                tg.create_task(self._messenger(ws), name="videosdk-messages"),
                tg.create_task(self._watch_silence(ws), name="videosdk-silence"),
            ]
            try:
                drop = await self._receive(ws, sink, extra)
            finally:
                for task in helpers:
                    task.cancel()
        return drop

    # -- downlink --------------------------------------------------------------------
    async def _receive(self, ws: ClientConnection, sink: PcmSink, extra: dict[str, str]) -> Drop:
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
            case TopicMessage(topic=topic, message=message) if topic == self._cfg.command_topic:
                self._command(message, event, extra)
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

    def _command(self, message: str, event: TopicMessage, extra: dict[str, str]) -> None:
        sender = event.sender_name or event.sender_id
        logger.info(
            "videosdk: command from %s: %s",
            sender or "?",
            _clip(message),
            extra={**extra, "TOPIC": event.topic, "SENDER": sender},
        )
        if self._on_command is None:
            return
        try:
            self._on_command(message)
        except Exception:  # a bad command must not take the link down
            logger.exception("videosdk: the command handler failed", extra=extra)

    def _closed(self, exc: ConnectionClosed) -> Drop:
        if exc.sent is not None and exc.sent.code == 1009:
            self._metrics.inc("malformed_total", link=LINK, reason="too_large")
            return Drop(f"server sent a frame over {WS_MAX_SIZE // 1024} KiB")
        if self._silence_note:
            return Drop(self._silence_note)
        return Drop(describe_close(exc))

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
            ws = self._live
            if ws is None:
                self._metrics.inc("frames_dropped_total", link=LINK, reason="link_down")
                continue
            if ws.transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
                self._metrics.inc("frames_dropped_total", link=LINK, reason="backpressure")
                continue
            try:
                await ws.send(encode_media(frame.pcm.astype("<i2", copy=False).tobytes()))
            except ConnectionClosed:
                self._metrics.inc("frames_dropped_total", link=LINK, reason="link_down")
                continue
            self._metrics.inc("frames_sent_total", link=LINK)
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


def _retry_after(reply: httpx.Response) -> float:
    try:
        return max(0.0, min(300.0, float(reply.headers.get("retry-after", "0"))))
    except ValueError:
        return 0.0
