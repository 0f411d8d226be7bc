"""Observability: ``/metrics`` (Prometheus text) and ``/status`` (JSON) on ``metrics.listen``.

Everything the agent counts goes into one :class:`~agent.metrics.Metrics`; this
module exposes it, with no second bookkeeping:

- ``/metrics``: :mod:`agent.observe.exposition` (a ``prometheus_client`` custom collector,
  loaded at the first scrape) renders counters, gauges, latency summaries, link and
  device states, process CPU/RSS, and the board's sensors read here: the thermal
  zones under ``/sys/class/thermal`` and the Raspberry Pi's throttling flags
  (``vcgencmd get_throttled``) where the board has them; nothing is exported (and
  nothing logged) for what the board lacks.
- :func:`status_document` is the ``/status`` JSON: :meth:`StatusBoard.to_json` (the
  same state as the STATUS line, which it also carries as ``summary``) plus per-link
  counters and latencies, jitter buffers per source, capture/playback counters,
  process CPU and RSS.
- :class:`ObserveServer` serves both from the agent's event loop. The HTTP side is
  websockets' server (already a dependency) answering every request in
  ``process_request`` (a WebSocket upgrade just gets the same answer). A scrape holds
  the Metrics lock only while copying (about 60 us measured here for 3 latency windows
  and 30 counters), so the audio threads never wait on it for longer than that.

Bounded, for a LAN with scanners and strangers: at most :data:`MAX_CONNECTIONS`
connections at once, and each has :data:`REQUEST_TIMEOUT_S` in all to send its
request (a half-open or slowloris connection is dropped then: the total, not per
byte). When full, a new connection takes the place of the oldest one that has sent
no request for :data:`EVICT_AFTER_S` (``http_connections_refused_total{reason=
"evicted"}``), so a flood of idle connections cannot lock a scraper out; if every
one is younger, the new one is closed at accept, before anything is read
(``reason="busy"``). The audio runs in its own
threads and never waits on this server; a flood of 500 half-open connections and
slowloris from loopback leaves the uplink at 50 frames/s (tests/observe/test_flood.py).
asyncio's "accept() out of file descriptors" is logged once a minute and counted
(:mod:`agent.resources`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from agent import __version__, resources
from agent.metrics import Metrics, Window, quantile
from agent.observe.host import Throttling, process_usage, read_temperatures, throttle_flags
from agent.status import StatusBoard

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 16  # a scraper and a few people: more at once is a scan or a flood
REQUEST_TIMEOUT_S = 5.0  # from accept to the whole request read (slowloris-proof)
EVICT_AFTER_S = 0.5  # when full, a connection silent this long makes room for a new one


# -- /status --------------------------------------------------------------------------
def _ms_summary(window: Window) -> dict[str, float]:
    values = sorted(window.values)
    return {
        "p50": round(quantile(values, 0.5) * 1000, 2),
        "p99": round(quantile(values, 0.99) * 1000, 2),
        "n": len(values),
    }


def status_document(
    metrics: Metrics,
    status: StatusBoard,
    *,
    root: Path = Path("/"),
    throttling: Throttling | None = None,
) -> dict[str, Any]:
    """The ``/status`` JSON: the StatusBoard's document plus per-link and audio details."""
    doc = status.to_json()
    doc["summary"] = status.summary()
    doc["version"] = __version__
    windows = metrics.windows()

    def window(name: str, **labels: str) -> dict[str, float] | None:
        for have, w in windows.get(name, []):
            if have == labels and w.values:
                return _ms_summary(w)
        return None

    for name, link in doc["links"].items():
        link.update(
            frames_sent=metrics.total("frames_sent_total", link=name),
            frames_received=metrics.total("frames_received_total", link=name),
            frames_dropped=metrics.total("frames_dropped_total", link=name),
            reconnects=metrics.total("reconnects_total", link=name),
            malformed=metrics.total("malformed_total", link=name),
        )
        latency = window("uplink_latency_seconds", link=name)
        if latency is not None:
            link["uplink_latency_ms"] = latency
    snap = metrics.snapshot()
    sources: dict[str, dict[str, Any]] = {}
    for labels, value in snap.get("jitter_depth_ms", []):
        name = labels.get("source", "")
        entry = sources[name] = {
            "depth_ms": round(value, 1),
            "target_ms": round(metrics.get("jitter_target_ms", source=name), 1),
            "underruns": metrics.total("audio_underruns_total", source=name),
            "resets": metrics.total("jitter_resets_total", source=name),
            "stalls": metrics.total("playout_stalls_total", source=name),
            "frames_played": metrics.total("frames_played_total", source=name),
        }
        latency = window("playout_latency_seconds", source=name)
        if latency is not None:
            entry["playout_latency_ms"] = latency
    doc["sources"] = sources
    doc["audio"] = {
        "frames_captured": metrics.total("frames_captured_total"),
        "capture_drops": metrics.total("capture_frames_dropped_total"),
        "playback_periods": metrics.total("playback_periods_total"),
        "xruns": {labels.get("device", ""): v for labels, v in snap.get("xruns_total", [])},
    }
    doc["process"] = process_usage(root / "proc/self")
    temps = read_temperatures(root)
    if temps:
        doc["thermal_c"] = {kind or zone: round(c, 1) for zone, kind, c in temps}
    if throttling is not None and throttling.value is not None:
        doc["throttled"] = {
            "raw": hex(throttling.value),
            **{f"{flag}_{when}": on for flag, when, on in throttle_flags(throttling.value) if on},
        }
    return doc


# -- the HTTP endpoint -----------------------------------------------------------------
def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (as metrics.listen validates it) -> (host, port); ``[::1]`` unwrapped."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class ObserveServer:
    """``GET /metrics`` and ``GET /status`` on ``listen``, inside the running event loop."""

    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        status: StatusBoard,
        *,
        root: Path = Path("/"),
        throttling: Throttling | None = None,
        on_bound: Callable[[int], None] | None = None,
    ) -> None:
        self.host, self.port = split_listen(listen)
        self.metrics = metrics
        self.status = status
        self.root = root
        self.throttling = throttling if throttling is not None else Throttling()
        self._registry: Any = None  # built at the first scrape (prometheus_client loads then)
        self._on_bound = on_bound
        self._quiet = logging.getLogger(__name__ + ".http")  # websockets' per-request lines
        self._quiet.setLevel(logging.WARNING)
        self.requests = 0
        self.connections = 0  # open right now
        self.refused = 0

    def _connection_class(self) -> type[ServerConnection]:
        """A ServerConnection that keeps the server at :data:`MAX_CONNECTIONS`."""
        observer = self
        waiting: dict[ServerConnection, float] = {}  # accepted, no request yet: since when

        class Capped(ServerConnection):
            _counted = False

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                now = time.monotonic()
                if observer.connections >= MAX_CONNECTIONS and not _evict_one(now):
                    observer.refused += 1
                    observer.metrics.inc("http_connections_refused_total", reason="busy")
                    # nothing read, nothing answered: costs an accept
                    if isinstance(transport, asyncio.Transport):
                        transport.abort()
                    else:
                        transport.close()
                    return
                observer.connections += 1
                self._counted = True
                waiting[self] = now
                super().connection_made(transport)

            def data_received(self, data: bytes) -> None:
                if self._counted:
                    super().data_received(data)
                    if self.request is not None:
                        waiting.pop(self, None)

            def eof_received(self) -> None:
                if self._counted:
                    super().eof_received()

            def connection_lost(self, exc: Exception | None) -> None:
                if self._counted:
                    self._counted = False
                    observer.connections -= 1
                    waiting.pop(self, None)
                    super().connection_lost(exc)

        def _evict_one(now: float) -> bool:
            """Full: drop the oldest connection that has sent no request for
            :data:`EVICT_AFTER_S` (a scan, a half-open or slowloris one) to make room;
            a real request takes milliseconds. False when every one is younger."""
            for conn, since in waiting.items():
                if now - since < EVICT_AFTER_S:
                    return False  # in accept order: the rest are younger still
                waiting.pop(conn)
                observer.metrics.inc("http_connections_refused_total", reason="evicted")
                conn.transport.abort()  # its connection_lost frees the slot and the fd
                return True
            return False

        return Capped

    async def run(self) -> None:
        """Serve until cancelled. Raises OSError if the address cannot be bound."""
        resources.install_loop_handler(asyncio.get_running_loop(), self.metrics)
        async with serve(
            _refuse_websocket,
            self.host,
            self.port,
            process_request=self._respond,
            logger=self._quiet,
            server_header=f"field-agent/{__version__}",
            open_timeout=REQUEST_TIMEOUT_S,
            create_connection=self._connection_class(),
            max_size=4096,  # nothing here takes a message; the request line is HTTP
        ) as server:
            port = server.sockets[0].getsockname()[1]
            logger.info("serving /metrics and /status on %s:%d", self.host, port)
            if self._on_bound is not None:
                self._on_bound(port)
            await asyncio.Future()  # until cancelled

    async def _respond(self, conn: ServerConnection, request: Request) -> Response:
        self.requests += 1
        path = request.path.partition("?")[0]
        if path == "/metrics":
            await self.throttling.refresh()
            from agent.observe import exposition

            if self._registry is None:
                self._registry = exposition.build_registry(
                    self.metrics, self.status, root=self.root, throttling=self.throttling
                )
            body, content_type = exposition.render(
                self._registry, request.headers.get("Accept", "")
            )
            return _reply(conn, http.HTTPStatus.OK, body, content_type)
        if path == "/status":
            await self.throttling.refresh()
            doc = status_document(
                self.metrics, self.status, root=self.root, throttling=self.throttling
            )
            body = json.dumps(doc, indent=1, sort_keys=False) + "\n"
            return _reply(conn, http.HTTPStatus.OK, body, "application/json")
        if path == "/":
            return _reply(conn, http.HTTPStatus.OK, "field-agent: /metrics /status\n")
        return _reply(conn, http.HTTPStatus.NOT_FOUND, "not found: try /metrics or /status\n")


def _reply(
    conn: ServerConnection,
    status: http.HTTPStatus,
    body: str,
    content_type: str = "text/plain; charset=utf-8",
) -> Response:
    response = conn.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response


async def _refuse_websocket(conn: ServerConnection) -> None:  # never reached: all answered
    with contextlib.suppress(Exception):
        await conn.close(1008, "no WebSocket here")
