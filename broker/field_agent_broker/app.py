"""The broker's ASGI app: ``POST /v1/sessions``, ``/healthz``, ``/metrics``.

A device sends the body it would send to VideoSDK's ``POST /v2/ingest/sessions``
(``roomId``, ``participant`` with ``id``, ``name`` and ``metadata.deviceId``,
``region``) with ``Authorization: Bearer <device token>``. The broker checks, in
this order (the cheap checks first, so a flood costs little):

===========================================  ======  =====================================
check                                        status  ``{"error": ...}``
===========================================  ======  =====================================
no ``Bearer`` token                          401     missing device token
body larger than ``max_body_bytes``          413     read at most that many bytes
not JSON / not the documented shape          400     what is wrong
unknown device id (``metadata.deviceId``)    401     device not enrolled
more than the device's rate                  429     ``Retry-After`` seconds
token does not match the stored hash         401     bad device token
device revoked                               403     device revoked
room not in the device's ``rooms``           403     room ... not allowed for device ...
VideoSDK unreachable / 5xx / bad reply       502     the reason (never a credential)
VideoSDK slower than ``upstream_timeout_s``  504     the reason
===========================================  ======  =====================================

then calls VideoSDK with the account's token (or a JWT minted from the account key and
secret: HS256, crawler role, the same claims the agent mints) and returns VideoSDK's
reply *unchanged* (``{"message", "data": {"wsUrl", "callId", "expiresIn"}}``). The
broker keeps no session state: any replica can answer any request. The rate limit is
per replica (N replicas allow N times the rate).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from field_agent_broker.enrolment import Device, EnrolmentStore
from field_agent_broker.logs import Redactor

logger = logging.getLogger(__name__)

SESSIONS_PATH = "/v2/ingest/sessions"  # VideoSDK's
BROKER_PATH = "/v1/sessions"  # ours
BODY_TIMEOUT_S = 10.0  # a device sends ~200 bytes at once


@dataclass(frozen=True)
class Settings:
    enrolment: Path
    api_base: str = "https://api.videosdk.live"
    upstream_timeout_s: float = 5.0  # bound on the whole VideoSDK request
    max_body_bytes: int = 8192  # a device's body is ~200 bytes
    rate_burst: int = 5  # session requests a device may make at once ...
    rate_per_s: float = 0.2  # ... and then one per 5 s
    jwt_ttl_s: float = 300.0
    ca_file: str = ""  # extra CAs trusted for api_base (a private VideoSDK proxy)
    enrolment_check_s: float = 1.0  # stat() the enrolment file at most this often


class Account:
    """The VideoSDK account credential: a token, or an API key + secret to mint JWTs.

    Never formats as its values; :meth:`authorization` is the one place they are used.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        api_key: str | None = None,
        secret: str | None = None,
        ttl_s: float = 300.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if (token is None) == (api_key is None or secret is None):
            raise ValueError("give a VideoSDK token, or an API key and a secret (exactly one)")
        self._token, self._key, self._secret = token, api_key, secret
        self._ttl_s, self._wall = ttl_s, wall_clock
        self._minted: tuple[str, float] | None = None
        for value in (token, api_key, secret):
            if value:
                Redactor.register(value)

    def __repr__(self) -> str:
        return "Account(***)"

    @property
    def kind(self) -> str:
        return "token" if self._token is not None else "api key + secret"

    def authorization(self) -> str:
        """The ``Authorization`` value for VideoSDK (raw, no "Bearer", as VideoSDK documents)."""
        if self._token is not None:
            return self._token
        assert self._key is not None and self._secret is not None
        now = self._wall()
        if self._minted is not None and self._minted[1] - now > 60.0:
            return self._minted[0]
        claims = jwt_claims(self._key, now=now, ttl_s=self._ttl_s)
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        Redactor.register(token)
        self._minted = (token, now + self._ttl_s)
        return token


def jwt_claims(api_key: str, *, now: float, ttl_s: float) -> dict[str, Any]:
    """The server-side VideoSDK token payload (as agent.proto.videosdk.jwt_claims)."""
    return {
        "apikey": api_key,
        "permissions": ["allow_join"],
        "version": 2,
        "roles": ["crawler"],
        "iat": int(now),
        "exp": int(now + ttl_s),
    }


class RateLimiter:
    """A token bucket per device: ``burst`` at once, then ``per_s``. Only enrolled
    devices get a bucket, so memory is bounded by the fleet size."""

    def __init__(
        self, burst: int, per_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._burst, self._per_s, self._clock = float(burst), per_s, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # id -> (tokens, at)

    def take(self, key: str) -> float:
        """0 when allowed (a token is used), else seconds until one is available."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._per_s if self._per_s > 0 else 3600.0


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "field_agent_broker_"
        self.requests = Counter(
            p + "session_requests", "Session requests by outcome", ["outcome"], registry=registry
        )
        self.latency = Histogram(
            p + "session_request_seconds",
            "Time to answer a session request",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.upstream = Histogram(
            p + "upstream_seconds",
            "VideoSDK's session creation time",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.reloads = Counter(
            p + "enrolment_reloads", "Enrolment file reloads", ["result"], registry=registry
        )
        self.devices = Gauge(p + "enrolled_devices", "Devices in the file", registry=registry)


class Refusal(Exception):
    """A request the broker answers with an error: status, reason (shown), outcome label."""

    def __init__(
        self, status: int, reason: str, outcome: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.status, self.reason, self.outcome = status, reason, outcome
        self.headers = headers or {}


def _printable(text: str, limit: int = 160) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _check_body(body: Any) -> tuple[str, str, dict[str, Any]]:
    """(device id, room id, the body to forward); Refusal(400) when malformed."""

    def bad(reason: str) -> Refusal:
        return Refusal(400, reason, "malformed")

    if not isinstance(body, dict):
        raise bad("body must be a JSON object")
    room = body.get("roomId")
    if not isinstance(room, str) or not room or len(room) > 256:
        raise bad("roomId must be a non-empty string")
    participant = body.get("participant")
    if not isinstance(participant, dict):
        raise bad("participant must be an object with metadata.deviceId")
    metadata = participant.get("metadata", {})
    if not isinstance(metadata, dict):
        raise bad("participant.metadata must be an object")
    device_id = metadata.get("deviceId", participant.get("id"))
    if not isinstance(device_id, str) or not device_id:
        raise bad("participant.metadata.deviceId must be a non-empty string")
    pid = participant.get("id", device_id)
    if pid != device_id:
        raise bad("participant.id must be the device id (participant.metadata.deviceId)")
    name = participant.get("name", "")
    if not isinstance(name, str):
        raise bad("participant.name must be a string")
    forward: dict[str, Any] = {"roomId": room, "participant": participant}
    region = body.get("region")
    if region is not None:
        if not isinstance(region, str):
            raise bad("region must be a string")
        forward["region"] = region
    return device_id, room, forward


class Broker:
    """The request handling; :func:`create_app` wraps it in Starlette."""

    def __init__(
        self,
        settings: Settings,
        account: Account,
        *,
        registry: CollectorRegistry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.account = account
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.store = EnrolmentStore(
            settings.enrolment,
            check_interval_s=settings.enrolment_check_s,
            on_reload=lambda result: self.metrics.reloads.labels(result).inc(),
        )
        self.metrics.devices.set_function(lambda: len(self.store.devices))
        self.limiter = RateLimiter(settings.rate_burst, settings.rate_per_s, clock)
        self._transport = transport
        # scrypt off the event loop, two at a time: each takes 16 MiB and ~45 ms of a core,
        # so a burst of first requests costs bounded memory (and the loop keeps answering)
        self._kdf = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="scrypt")
        self._url = settings.api_base.rstrip("/") + SESSIONS_PATH
        self.http: httpx.AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        verify: ssl.SSLContext | bool = True
        if self.settings.ca_file:
            verify = ssl.create_default_context()
            verify.load_verify_locations(cafile=self.settings.ca_file)
        t = self.settings.upstream_timeout_s
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(t),
            verify=verify,
            follow_redirects=False,
            transport=self._transport,
            trust_env=False,  # api_base is what it says; no proxy from the environment
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        ) as client:
            self.http = client
            logger.info(
                "broker ready: %d devices enrolled, VideoSDK at %s (account %s)",
                len(self.store.devices),
                self.settings.api_base,
                self.account.kind,
                extra={"event": "start"},
            )
            try:
                yield
            finally:
                self.http = None
                self._kdf.shutdown(wait=False, cancel_futures=True)

    # -- routes ---------------------------------------------------------------------------
    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok", "devices": len(self.store.current())})

    async def metrics_page(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def sessions(self, request: Request) -> Response:
        t0 = time.perf_counter()
        device_id = room = ""
        try:
            token = self._bearer(request)
            body = await self._read_json(request)
            device_id, room, forward = _check_body(body)
            device = await self._authenticate(device_id, token, room)
            response, call_id = await self._create(forward)
        except Refusal as r:
            self.metrics.requests.labels(r.outcome).inc()
            self.metrics.latency.observe(time.perf_counter() - t0)
            log = logger.warning if r.status < 500 else logger.error
            log(
                "session refused (HTTP %d): %s",
                r.status,
                r.reason,
                extra={
                    "event": "session",
                    "outcome": r.outcome,
                    "status": r.status,
                    "device": _printable(device_id, 128),
                    "room": _printable(room, 128),
                },
            )
            return JSONResponse({"error": r.reason}, r.status, headers=r.headers)
        ms = (time.perf_counter() - t0) * 1000
        self.metrics.requests.labels("created").inc()
        self.metrics.latency.observe(ms / 1000)
        logger.info(
            "session created for %s in room %s (call %s, %.0f ms)",
            device.id,
            room,
            call_id,
            ms,
            extra={
                "event": "session",
                "outcome": "created",
                "status": 200,
                "device": device.id,
                "room": room,
                "call_id": call_id,
                "ms": round(ms, 1),
            },
        )
        return response

    # -- steps ----------------------------------------------------------------------------
    @staticmethod
    def _bearer(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 512:
            raise Refusal(401, "missing device token (Authorization: Bearer ...)", "no_token")
        return token

    async def _read_json(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        too_big = Refusal(413, f"body larger than {limit} bytes", "too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):  # a trickling client lets go
                async for chunk in request.stream():  # never more than limit (+ a chunk) held
                    size += len(chunk)
                    if size > limit:
                        raise too_big
                    chunks.append(chunk)
        except ClientDisconnect:
            raise Refusal(400, "client went away while sending", "malformed") from None
        except TimeoutError:
            raise Refusal(408, f"body not sent within {BODY_TIMEOUT_S:g} s", "slow_body") from None
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            raise Refusal(400, "body is not JSON", "malformed") from None

    async def _authenticate(self, device_id: str, token: str, room: str) -> Device:
        device = self.store.current().get(device_id)
        if device is None:
            raise Refusal(401, "device not enrolled", "unknown_device")
        wait = self.limiter.take(device_id)  # before scrypt: a flood costs no CPU
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise Refusal(
                429,
                f"too many session requests for this device; retry in {seconds} s",
                "rate_limited",
                {"Retry-After": str(seconds)},
            )
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._kdf, self.store.verify, device, token):
            raise Refusal(401, "bad device token", "bad_token")
        if not device.enabled:
            raise Refusal(403, "device revoked", "revoked")
        if not device.allows(room):
            raise Refusal(
                403, f"room {_printable(room, 64)!r} is not allowed for this device", "room"
            )
        return device

    async def _create(self, forward: dict[str, Any]) -> tuple[Response, str]:
        assert self.http is not None, "the app's lifespan did not run"
        limit = self.settings.upstream_timeout_s
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(limit):  # whatever httpx's per-phase timeouts do
                reply = await self.http.post(
                    self._url, json=forward, headers={"Authorization": self.account.authorization()}
                )
        except (TimeoutError, httpx.TimeoutException):
            raise Refusal(
                504, f"VideoSDK did not answer within {limit:g} s", "upstream_timeout"
            ) from None
        except httpx.HTTPError as e:
            raise Refusal(
                502, f"VideoSDK unreachable ({type(e).__name__})", "upstream_down"
            ) from None
        finally:
            self.metrics.upstream.observe(time.perf_counter() - t0)
        status = reply.status_code
        if status in (401, 403):
            raise Refusal(
                502,
                f"VideoSDK refused the broker's account credentials (HTTP {status})",
                "upstream_auth",
            )
        if status == 429:
            retry = reply.headers.get("retry-after", "5")
            retry = retry if retry.isdigit() else "5"
            raise Refusal(
                429, "VideoSDK rate limit", "upstream_rate_limited", {"Retry-After": retry}
            )
        if 400 <= status < 500:
            raise Refusal(
                status,
                f"VideoSDK refused the request (HTTP {status}): {_upstream_message(reply)}",
                "upstream_refused",
            )
        if not 200 <= status < 300:
            raise Refusal(502, f"VideoSDK error (HTTP {status})", "upstream_error")
        try:
            data = reply.json()["data"]
            ws_url, call_id = data["wsUrl"], data.get("callId", "")
            if not isinstance(ws_url, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise Refusal(502, "VideoSDK sent a malformed reply", "upstream_malformed") from None
        # VideoSDK's own bytes: the device parses exactly what VideoSDK said
        return Response(reply.content, status, media_type="application/json"), str(call_id)


def _upstream_message(reply: httpx.Response) -> str:
    try:
        message = reply.json().get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return Redactor.scrub(_printable(str(message), 200)) or "no reason given"


def create_app(
    settings: Settings,
    account: Account,
    *,
    registry: CollectorRegistry | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The ASGI app (``uvicorn``, or any ASGI server). Raises EnrolmentError when the
    enrolment file cannot be read at start."""
    broker = Broker(settings, account, registry=registry, transport=transport)
    app = Starlette(
        routes=[
            Route(BROKER_PATH, broker.sessions, methods=["POST"]),
            Route("/healthz", broker.healthz, methods=["GET"]),
            Route("/metrics", broker.metrics_page, methods=["GET"]),
        ],
        lifespan=broker.lifespan,
    )
    app.state.broker = broker
    return app
