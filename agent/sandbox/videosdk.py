"""A faithful fake of VideoSDK's custom WebSocket ingest, on loopback.

REST half (:class:`agent.sandbox.rest.RestServer`, its own thread) and WebSocket half
(``websockets.asyncio.server``, the caller's event loop), both on 127.0.0.1 with
random ports. It enforces what docs/protocols.md says (VideoSDK):

- ``POST /v2/ingest/sessions`` needs ``Authorization``: a raw token or
  ``Bearer <token>``, either one of :attr:`FakeVideoSDK.accepted_tokens` or an HS256
  JWT signed with ``jwt_secret`` (crawler role, ``allow_join``); otherwise 401
  (403 for a valid JWT without the crawler role). ``roomId`` is required (400).
- The returned ``wsUrl`` carries a single-use ``ref``. **A reused or unknown ref is
  refused at the handshake with HTTP 403** (the client sees ``InvalidStatus``).
- A session expires ``session_ttl_s`` (90 s) after creation, on the injectable
  ``clock``: a ``start`` after that is answered with close 1008 "session expired".
- No ``start`` within ``start_timeout_s`` (5 s) of connecting: close 1008 "start timeout".
- WebSocket pings every ``ping_interval_s`` (30 s); a missed pong ends the connection.
- ``echo=True`` sends each uplink media frame straight back as room audio.
- Topic messaging: ``subscribe``/``unsubscribe`` (topic 1..128 chars), ``message``
  (≤ 8 KB UTF-8) delivered to the *other* subscribed sessions of the room as
  ``{"message", "senderId", "senderName", "timestamp", "id"}``; never echoed.

Everything received is recorded (sessions, refs presented, media frames with
arrival times, events, published messages, protocol violations) for assertions.
Faults: :meth:`FakeVideoSDK.stop_ws` / :meth:`FakeVideoSDK.start_ws` (server death and
restart on the same port), :meth:`FakeVideoSDK.drop`, :meth:`FakeVideoSDK.freeze`,
:meth:`FakeVideoSDK.send_raw` (garbage), ``rest_delay_s``, ``accepted_tokens``; ``ws_url_base``
puts a proxy (:mod:`agent.sandbox.faultproxy`) in the ``wsUrl`` it hands out.

Usage::

    async with FakeVideoSDK(token="t0ken", echo=True) as fake:
        cfg = VideoSDKConfig(room_id="abcd-efgh-ijkl", api_base=fake.api_base)
        ...
        await fake.wait_for(lambda: len(fake.frames) >= 50)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import datetime as dt
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from agent.config_checks import is_loopback_host
from agent.sandbox.rest import Reply, Request, RestServer

logger = logging.getLogger(__name__)
# The fake's own websockets logger: its debug lines carry refs (it is the server).
_wire_logger = logging.getLogger(__name__ + ".wire")

MAX_TOPIC_CHARS = 128
MAX_MESSAGE_BYTES = 8 * 1024


@dataclass(frozen=True)
class ReceivedFrame:
    """One uplink media frame as the fake received it."""

    t: float  # time.monotonic() at arrival
    call_id: str
    pcm: bytes


@dataclass(frozen=True)
class Published:
    """A ``message`` frame a client published."""

    t: float
    call_id: str
    topic: str
    data: Any


@dataclass
class FakeSession:
    """One ingest session, from creation to close. Mutated by the fake only."""

    ref: str
    call_id: str
    room_id: str
    participant_id: str
    participant_name: str
    metadata: dict[str, Any]
    region: str
    auth_scheme: str  # "raw" | "bearer"
    created_at: float  # the fake's (injectable) clock
    claimed: bool = False  # the ref was presented once (never again)
    started_at: float | None = None  # time.monotonic() of ``start``
    stopped: bool = False  # ``stop`` received
    ended_at: float | None = None
    client_close_code: int | None = None  # what the client's close frame said
    client_close_reason: str | None = None
    server_close_code: int | None = None  # what the fake sent, if it closed first
    server_close_reason: str = ""
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # not media
    frames: collections.deque[ReceivedFrame] = field(default_factory=collections.deque)
    subscriptions: set[str] = field(default_factory=set)
    conn: ServerConnection | None = field(default=None, repr=False)

    @property
    def event_names(self) -> list[str]:
        return [str(e.get("event")) for _, e in self.events]


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeVideoSDK:
    """The fake service. ``async with FakeVideoSDK(...) as fake:``; ``fake.api_base``."""

    def __init__(
        self,
        *,
        token: str | None = "sandbox-token",
        jwt_secret: str | None = None,
        api_key: str | None = None,
        echo: bool = False,
        start_timeout_s: float = 5.0,
        ping_interval_s: float | None = 30.0,
        session_ttl_s: float = 90.0,
        stop_grace_s: float = 1.0,
        announce_join: bool = True,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        keep_frames: int | None = None,
        rest_port: int = 0,
        ws_port: int = 0,
    ) -> None:
        """``keep_frames``: remember only the last N media frames (long runs, benchmarks).
        ``rest_port``/``ws_port``: fixed ports (0 = any free one)."""
        if not is_loopback_host(host):
            raise ValueError("the fake listens on loopback only")
        self.host = host
        self.accepted_tokens: set[str] = {token} if token else set()
        self.jwt_secret = jwt_secret
        self.api_key = api_key
        self.echo = echo
        self.start_timeout_s = start_timeout_s
        self.ping_interval_s = ping_interval_s
        self.session_ttl_s = session_ttl_s
        self.stop_grace_s = stop_grace_s
        self.announce_join = announce_join
        self.clock = clock
        self.rest_delay_s = 0.0  # answer session requests this late
        self.rest_status: int | None = None  # force this status on session requests
        self.refused_rooms: set[str] = set()  # session requests for these: 404 room not found
        self.on_session_created: Callable[[FakeSession], None] | None = None  # REST thread
        # "scheme://host:port" put in wsUrl instead of the server's own address (a proxy
        # or TLS terminator in front of it, or a name the test resolves).
        self.ws_url_base: str | None = None

        self.sessions: list[FakeSession] = []
        self.ref_presented: collections.Counter[str] = collections.Counter()
        self.handshake_refusals: list[tuple[str, int, str]] = []  # (ref, status, why)
        self.auth_failures: list[int] = []  # HTTP status of each refused session request
        # every media frame, oldest first (the last ``keep_frames`` when that is set)
        self.frames: collections.deque[ReceivedFrame] = collections.deque(maxlen=keep_frames)
        self.frames_total = 0
        self.voiced_total = 0  # media frames with any non-zero sample (PTT held, not muted)
        self._keep_frames = keep_frames
        self.published: list[Published] = []
        self.violations: list[str] = []  # what a real server might reject

        self._lock = threading.Lock()
        self._by_ref: dict[str, FakeSession] = {}
        self._pending: dict[ServerConnection, FakeSession] = {}
        self._rest = RestServer(host, rest_port)
        self._rest.route("POST", r"/v2/ingest/sessions", self._create_session)
        self._ws: Server | None = None
        self._ws_port = ws_port
        self._frozen: set[ServerConnection] = set()

    # -- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> FakeVideoSDK:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.start_ws()
        self._rest.start()

    async def stop(self) -> None:
        await self.stop_ws(abrupt=False)
        # RestServer.stop() waits out serve_forever's 0.5 s poll: let a thread do that.
        threading.Thread(
            target=self._rest.stop, name="fake-videosdk-rest-stop", daemon=True
        ).start()

    @property
    def api_base(self) -> str:
        """REST base URL, e.g. ``http://127.0.0.1:40123``."""
        return self._rest.url

    @property
    def ws_port(self) -> int:
        return self._ws_port

    @property
    def rest_requests(self) -> list[Request]:
        """Every REST request seen (headers lower-cased)."""
        return self._rest.requests

    async def start_ws(self) -> None:
        """(Re)start the WebSocket server, on the same port as before if there was one."""
        if self._ws is not None:
            return
        self._ws = await serve(
            self._handle,
            self.host,
            self._ws_port,
            process_request=self._check_ref,
            ping_interval=self.ping_interval_s,
            ping_timeout=self.ping_interval_s,
            close_timeout=1.0,
            logger=_wire_logger,
        )
        self._ws_port = self._ws.sockets[0].getsockname()[1]
        logger.debug("fake VideoSDK WebSocket server on %s:%d", self.host, self._ws_port)

    async def stop_ws(self, *, abrupt: bool = True) -> None:
        """Kill the WebSocket server. ``abrupt``: reset every connection (a crash),
        else close them with 1001 (a clean shutdown)."""
        server, self._ws = self._ws, None
        if server is None:
            return
        for conn in list(server.all_connections):
            if abrupt or conn in self._frozen:  # a frozen peer would never finish a close
                conn.transport.abort()
        server.close(close_connections=not abrupt)
        await server.wait_closed()
        self._frozen.clear()

    # -- inspection ----------------------------------------------------------------
    def active(self) -> list[FakeSession]:
        """Sessions connected and started right now."""
        with self._lock:
            return [s for s in self.sessions if s.conn is not None and s.started_at is not None]

    def session(self, call_id: str) -> FakeSession:
        with self._lock:
            return next(s for s in self.sessions if s.call_id == call_id)

    @property
    def started_sessions(self) -> list[FakeSession]:
        with self._lock:
            return [s for s in self.sessions if s.started_at is not None]

    async def wait_for(
        self, predicate: Callable[[], object], within_s: float = 5.0, what: str = ""
    ) -> None:
        """Poll ``predicate`` every 10 ms until true; TimeoutError naming ``what``."""
        deadline = time.monotonic() + within_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake VideoSDK: timed out waiting for {what or predicate!r}")
            await asyncio.sleep(0.01)

    # -- fault injection and server-side traffic -----------------------------------
    def _targets(self, call_id: str | None) -> list[ServerConnection]:
        return [
            s.conn
            for s in self.active()
            if s.conn is not None and (call_id is None or s.call_id == call_id)
        ]

    async def send_raw(self, data: str | bytes, *, call_id: str | None = None) -> int:
        """Send ``data`` as-is to every started session (or one); returns how many."""
        sent = 0
        for conn in self._targets(call_id):
            with contextlib.suppress(ConnectionClosed):
                await conn.send(data)
                sent += 1
        return sent

    async def send_event(self, obj: Mapping[str, Any], *, call_id: str | None = None) -> int:
        return await self.send_raw(json.dumps(obj), call_id=call_id)

    async def send_room_audio(self, pcm: bytes, *, call_id: str | None = None) -> int:
        """Room audio (PCM16 LE, 8 kHz mono) to every started session (or one)."""
        payload = base64.b64encode(pcm).decode("ascii")
        return await self.send_event({"event": "media", "payload": payload}, call_id=call_id)

    async def send_message(
        self,
        topic: str,
        message: Any,
        *,
        sender_id: str = "peer-1",
        sender_name: str = "Peer",
        room_id: str | None = None,
    ) -> int:
        """Another participant publishes: delivered to subscribed sessions of the room."""
        return await self._deliver(room_id, topic, message, sender_id, sender_name, exclude=None)

    async def drop(self, code: int = 1011, reason: str = "internal error") -> int:
        """Close every started session's connection with ``code``; the server stays up."""
        conns = self._targets(None)
        for s in self.active():
            s.server_close_code, s.server_close_reason = code, reason
        for conn in conns:
            await conn.close(code, reason)
        return len(conns)

    def freeze(self) -> None:
        """Stop reading from every connection (a hung server: pings go unanswered)."""
        for conn in self._targets(None):
            conn.transport.pause_reading()
            self._frozen.add(conn)

    # -- REST ------------------------------------------------------------------------
    def _check_auth(self, header: str | None) -> tuple[int, str, str]:
        """(status, why, scheme): status 200 when accepted."""
        if not header:
            return 401, "Authorization header missing", ""
        scheme, token = "raw", header.strip()
        if token[:7].lower() == "bearer ":
            scheme, token = "bearer", token[7:].strip()
        if token in self.accepted_tokens:
            return 200, "", scheme
        if self.jwt_secret is None:
            return 401, "invalid token", scheme
        try:
            claims = jwt.decode(
                token, self.jwt_secret, algorithms=["HS256"], options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            return 401, "token expired", scheme
        except jwt.InvalidTokenError:
            return 401, "invalid token", scheme
        if self.api_key is not None and claims.get("apikey") != self.api_key:
            return 401, "unknown apikey", scheme
        if "crawler" not in (claims.get("roles") or []):
            return 403, "the crawler role is required", scheme
        if "allow_join" not in (claims.get("permissions") or []):
            return 403, "allow_join permission required", scheme
        return 200, "", scheme

    def _create_session(self, req: Request) -> Reply:
        status, why, scheme = self._check_auth(req.headers.get("authorization"))
        if status != 200:
            with self._lock:
                self.auth_failures.append(status)
            return Reply(status, {"message": why})
        if self.rest_status is not None:
            return Reply(self.rest_status, {"message": "forced by the test"})
        try:
            body = req.json()
        except ValueError:
            return Reply(400, {"message": "body is not JSON"})
        problem = _check_session_body(body)
        if problem:
            return Reply(400, {"message": problem})
        if body["roomId"] in self.refused_rooms:
            return Reply(404, {"message": f"room {body['roomId']} not found"})
        participant = body.get("participant") or {}
        ref = "vs_" + secrets.token_hex(10)
        s = FakeSession(
            ref=ref,
            call_id=str(uuid.uuid4()),
            room_id=body["roomId"],
            participant_id=participant.get("id") or "p-" + secrets.token_hex(4),
            participant_name=participant.get("name", ""),
            metadata=dict(participant.get("metadata") or {}),
            region=body.get("region", ""),
            auth_scheme=scheme,
            created_at=self.clock(),
            frames=collections.deque(maxlen=self._keep_frames),
        )
        with self._lock:
            self.sessions.append(s)
            self._by_ref[ref] = s
        if self.on_session_created is not None:
            self.on_session_created(s)
        base = self.ws_url_base or f"ws://{self.host}:{self._ws_port}"
        data = {
            "wsUrl": f"{base}/videosdk?ref={ref}",
            "callId": s.call_id,
            "expiresIn": int(self.session_ttl_s),
        }
        return Reply(
            200, {"message": "Ingest session created", "data": data}, delay_s=self.rest_delay_s
        )

    # -- WebSocket -------------------------------------------------------------------
    def _check_ref(self, conn: ServerConnection, request: WsRequest) -> WsResponse | None:
        path, _, query = request.path.partition("?")
        ref = parse_qs(query).get("ref", [""])[0]
        with self._lock:
            self.ref_presented[ref] += 1
            s = self._by_ref.get(ref)
            why = ""
            if path != "/videosdk":
                why = "unknown path"
            elif s is None:
                why = "unknown ref"
            elif s.claimed:
                why = "ref already used"
            if why or s is None:
                self.handshake_refusals.append((ref, 403, why))
                return _reject(conn, 403, why)
            s.claimed = True
            self._pending[conn] = s
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        with self._lock:
            s = self._pending.pop(conn)
            s.conn = conn
        try:
            if await self._await_start(conn, s):
                if self.announce_join:
                    await _send_quietly(
                        conn,
                        json.dumps(
                            {"event": "meeting-joined", "roomId": s.room_id, "sessionId": s.call_id}
                        ),
                    )
                while True:
                    try:
                        async with asyncio.timeout(self.stop_grace_s if s.stopped else None):
                            raw = await conn.recv()
                    except TimeoutError:  # the client sent stop but did not close
                        s.server_close_code, s.server_close_reason = 1000, "session stopped"
                        await conn.close(1000, "session stopped")
                        break
                    await self._on_frame(conn, s, raw)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                s.conn = None
                s.ended_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await conn.wait_closed()
            s.client_close_code, s.client_close_reason = conn.close_code, conn.close_reason

    async def _await_start(self, conn: ServerConnection, s: FakeSession) -> bool:
        """Wait for ``start``; apply the start timeout and the session expiry."""
        deadline = asyncio.get_running_loop().time() + self.start_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    raw = await conn.recv()
            except TimeoutError:
                s.server_close_code, s.server_close_reason = 1008, "start timeout"
                await conn.close(1008, "start timeout")
                return False
            obj = self._parse(raw)
            if obj is None:
                continue
            if obj.get("event") == "start":
                s.events.append((time.monotonic(), obj))
                if self.clock() - s.created_at > self.session_ttl_s:
                    s.server_close_code, s.server_close_reason = 1008, "session expired"
                    await conn.close(1008, "session expired")
                    return False
                s.started_at = time.monotonic()
                return True
            self.violations.append(f"{obj.get('event')!r} before start")
            await self._on_event(conn, s, obj)

    def _parse(self, raw: str | bytes) -> dict[str, Any] | None:
        if isinstance(raw, bytes):
            self.violations.append("binary frame")
            return None
        try:
            obj = json.loads(raw)
        except ValueError:
            self.violations.append("frame is not JSON")
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
            self.violations.append("frame without an event")
            return None
        return obj

    async def _on_frame(self, conn: ServerConnection, s: FakeSession, raw: str | bytes) -> None:
        obj = self._parse(raw)
        if obj is not None:
            await self._on_event(conn, s, obj)

    async def _on_event(self, conn: ServerConnection, s: FakeSession, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        event = obj["event"]
        if event != "media":
            s.events.append((now, obj))
        match event:
            case "media":
                await self._on_media(conn, s, obj, now)
            case "start":
                self.violations.append("second start")
            case "stop":
                s.stopped = True
            case "subscribe" | "unsubscribe":
                topic = obj.get("topic")
                if not isinstance(topic, str) or not 1 <= len(topic) <= MAX_TOPIC_CHARS:
                    self.violations.append(f"{event} with a bad topic")
                elif event == "subscribe":
                    s.subscriptions.add(topic)
                else:
                    s.subscriptions.discard(topic)
            case "message":
                topic, data = obj.get("topic"), obj.get("data")
                if not isinstance(topic, str) or not 1 <= len(topic) <= MAX_TOPIC_CHARS:
                    self.violations.append("message with a bad topic")
                    return
                text = data if isinstance(data, str) else json.dumps(data)
                if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
                    self.violations.append("message over 8 KB")
                    return
                self.published.append(Published(now, s.call_id, topic, data))
                await self._deliver(s.room_id, topic, data, s.participant_id, s.participant_name, s)
            case _:
                self.violations.append(f"unknown event {event!r}")

    async def _on_media(
        self, conn: ServerConnection, s: FakeSession, obj: Mapping[str, Any], now: float
    ) -> None:
        if s.started_at is None:
            return  # before start: ignored (counted as a violation by the caller)
        payload = obj.get("payload")
        try:
            pcm = base64.b64decode(payload, validate=True) if isinstance(payload, str) else None
        except (binascii.Error, ValueError):
            pcm = None
        if pcm is None or len(pcm) % 2:
            self.violations.append("media payload is not base64 PCM16")
            return
        if len(pcm) != 320:
            self.violations.append(f"media frame of {len(pcm)} bytes, not 320 (20 ms)")
        frame = ReceivedFrame(now, s.call_id, pcm)
        s.frames.append(frame)
        self.frames.append(frame)
        self.frames_total += 1
        if pcm.count(0) != len(pcm):
            self.voiced_total += 1
        if self.echo:
            with contextlib.suppress(ConnectionClosed):
                await conn.send(json.dumps({"event": "media", "payload": payload}))

    async def _deliver(
        self,
        room_id: str | None,
        topic: str,
        data: Any,
        sender_id: str,
        sender_name: str,
        exclude: FakeSession | None,
    ) -> int:
        message = data if isinstance(data, str) else json.dumps(data)
        frame = json.dumps(
            {
                "event": "message",
                "topic": topic,
                "data": {
                    "message": message,
                    "senderId": sender_id,
                    "senderName": sender_name,
                    "timestamp": _now_iso(),
                    "id": str(uuid.uuid4()),
                },
            }
        )
        sent = 0
        for s in self.active():
            if s is exclude or topic not in s.subscriptions or s.conn is None:
                continue
            if room_id is not None and s.room_id != room_id:
                continue
            with contextlib.suppress(ConnectionClosed):
                await s.conn.send(frame)
                sent += 1
        return sent


async def _send_quietly(conn: ServerConnection, text: str) -> None:
    """Send, ignoring a connection the client already closed (its frames still get read)."""
    with contextlib.suppress(ConnectionClosed):
        await conn.send(text)


def _reject(conn: ServerConnection, status: int, why: str) -> WsResponse:
    return conn.respond(status, why + "\n")


def _check_session_body(body: Any) -> str:
    """The documented request body rules; "" when acceptable."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("roomId"), str) or not body["roomId"]:
        return "roomId is required"
    participant = body.get("participant")
    if participant is not None:
        if not isinstance(participant, dict):
            return "participant must be an object"
        for key in ("id", "name"):
            if key in participant and not isinstance(participant[key], str):
                return f"participant.{key} must be a string"
        if "metadata" in participant and not isinstance(participant["metadata"], dict):
            return "participant.metadata must be an object"
    agent = body.get("agent")
    if agent is not None and (not isinstance(agent, dict) or not isinstance(agent.get("id"), str)):
        return "agent.id is required when agent is given"
    if "region" in body and not isinstance(body["region"], str):
        return "region must be a string"
    return ""
