"""Observability: ``/metrics`` (Prometheus text) and ``/status`` (JSON) on ``metrics.listen``.

Everything the agent counts goes into one :class:`~agent.metrics.Metrics`; this
module exposes it, with no second bookkeeping:

- :class:`AgentCollector` is a ``prometheus_client`` custom collector over
  :meth:`Metrics.snapshot` (counters and gauges, ``field_agent_`` prefix, HELP text,
  ``*_ms`` gauges converted to seconds), :meth:`Metrics.windows` (latency summaries:
  median and p99 of the recent window, count, sum), the
  :class:`~agent.status.StatusBoard` (link and device states, PTT, volume, mic level,
  uptime), the thermal zones under ``/sys/class/thermal`` and the Raspberry Pi's
  throttling flags (``vcgencmd get_throttled``) where the board has them; nothing
  is exported (and nothing logged) for what the board lacks. The standard
  ``process_*`` families (CPU seconds, RSS, fds) come from prometheus_client's own
  ``ProcessCollector``. All on a private :class:`CollectorRegistry`, never the
  global one.
- :func:`status_document` is the ``/status`` JSON: :meth:`StatusBoard.to_json` (the
  same state as the STATUS line, which it also carries as ``summary``) plus per-link
  counters and latencies, jitter buffers per source, capture/playback counters,
  process CPU and RSS.
- :class:`ObserveServer` serves both from the agent's event loop. The HTTP side is
  websockets' server (already a dependency) answering every request in
  ``process_request``; WebSocket upgrades are refused. A scrape reads counters under
  the Metrics lock only, so it never stalls the audio threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from agent import __version__
from agent.metrics import Metrics, Window
from agent.status import LinkState, StatusBoard

logger = logging.getLogger(__name__)

PREFIX = "field_agent_"
QUANTILES = (0.5, 0.99)
THROTTLED_MAX_AGE_S = 5.0  # vcgencmd runs at most this often (a scrape is every 15 s or so)
VCGENCMD_TIMEOUT_S = 2.0

# HELP text of every family the agent counts today. Families added later still get
# exported (with a generic help line) before they are described here.
HELP: dict[str, str] = {
    "frames_captured_total": "Uplink frames (20 ms, 8 kHz mono) cut from the mic.",
    "capture_frames_dropped_total": "Captured frames dropped before the uplinks, by reason.",
    "frames_sent_total": "Uplink frames sent, per link.",
    "frames_received_total": "Downlink audio messages received, per link.",
    "frames_dropped_total": "Uplink frames dropped, per link and reason.",
    "frames_played_total": "20 ms periods rendered with audio from a mixer source (per link).",
    "playback_periods_total": "20 ms periods written to the speaker.",
    "messages_dropped_total": "Topic messages refused locally, per link and reason.",
    "xruns_total": "ALSA over- and underruns, recovered in place, per device.",
    "audio_underruns_total": "Jitter-buffer underruns (audio arrived late), per source.",
    "jitter_resets_total": "Jitter-buffer resets to target (audio piled up), per source.",
    "jitter_depth_ms": "Audio buffered in the jitter buffer, per source.",
    "jitter_target_ms": "Jitter-buffer target depth, per source.",
    "audio_rejected_total": "Audio refused by the mixer or capture, per source and reason.",
    "mixer_clipped_periods_total": "Mixed periods that had to be clipped.",
    "mic_silence_alarms_total": "Times the mic delivered only exact zeros for 10 s.",
    "reconnects_total": "Reconnection attempts, per link.",
    "sessions_created_total": "Sessions created over REST, per link.",
    "password_fetches_total": "Audio passwords fetched over REST, per link.",
    "malformed_total": "Malformed messages from a server, per link and reason.",
    "unknown_events_total": "Well-formed events of an unknown kind, per link.",
    "server_errors_total": "Error messages sent by a server, per link.",
    "task_crashes_total": "Unexpected exceptions in a supervised part (then restarted).",
    "button_presses_total": 'GPIO button presses (button="ptt_button": PTT presses).',
    "uplink_latency_seconds": "Capture clock to socket, per uplink frame (recent window).",
    "playout_latency_seconds": "Arrival to speaker write, per source (recent window).",
}

# Raspberry Pi firmware throttling bits (vcgencmd get_throttled)
THROTTLE_BITS: dict[int, tuple[str, str]] = {
    0: ("under_voltage", "now"),
    1: ("freq_capped", "now"),
    2: ("throttled", "now"),
    3: ("soft_temp_limit", "now"),
    16: ("under_voltage", "since_boot"),
    17: ("freq_capped", "since_boot"),
    18: ("throttled", "since_boot"),
    19: ("soft_temp_limit", "since_boot"),
}


# -- board sensors (pure parsing, tested with a fake sysfs) ---------------------------
def read_temperatures(root: Path = Path("/")) -> list[tuple[str, str, float]]:
    """``(zone, type, °C)`` for every readable ``sys/class/thermal/thermal_zone*`` under
    ``root``; [] where there are none (containers, most VMs). Zones that cannot be read
    or hold no number (a sensor that is off answers EINVAL/ENODATA) are left out."""
    out = []
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        try:
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            kind = (zone / "type").read_text().strip()
        except OSError:
            kind = ""
        out.append((zone.name, kind, milli / 1000.0))
    return out


def parse_throttled(text: str) -> int | None:
    """The flags in ``vcgencmd get_throttled`` output (``throttled=0x50005``), or None."""
    key, sep, value = text.strip().partition("=")
    if not sep or key.strip() != "throttled":
        return None
    try:
        return int(value.strip(), 0)
    except ValueError:
        return None


def throttle_flags(value: int) -> list[tuple[str, str, bool]]:
    """``(flag, when, set)`` for every documented bit of a get_throttled value."""
    return [(flag, when, bool(value >> bit & 1)) for bit, (flag, when) in THROTTLE_BITS.items()]


class Throttling:
    """``vcgencmd get_throttled``, run asynchronously and cached; None where it is absent."""

    def __init__(self, command: str | None = "vcgencmd") -> None:
        self.path = shutil.which(command) if command else None
        self.value: int | None = None
        self._at = -1e9
        self._warned = False

    async def refresh(self) -> None:
        if self.path is None or time.monotonic() - self._at < THROTTLED_MAX_AGE_S:
            return
        self._at = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.path,
                "get_throttled",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                async with asyncio.timeout(VCGENCMD_TIMEOUT_S):
                    out, _ = await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
        except (OSError, TimeoutError) as e:
            self._fail(f"vcgencmd get_throttled failed: {e or 'timed out'}")
            return
        value = parse_throttled(out.decode(errors="replace"))
        if value is None:
            self._fail(f"vcgencmd get_throttled: unexpected output {out[:80]!r}")
        self.value = value

    def _fail(self, message: str) -> None:
        self.value = None
        if not self._warned:  # once: a board without the firmware interface stays that way
            self._warned = True
            logger.warning("%s; throttling flags not exported", message)


# -- process usage (for /status; /metrics uses prometheus_client's ProcessCollector) ----
def process_usage(proc: Path = Path("/proc/self")) -> dict[str, float]:
    """CPU seconds (user + system, all threads) and resident memory in bytes."""
    try:
        stat = (proc / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        rss = int((proc / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return {}
    return {"cpu_seconds": round(cpu, 2), "rss_bytes": float(rss)}


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (NaN for an empty one)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


# -- the Prometheus collector -------------------------------------------------------
def _help(name: str, kind: str) -> str:
    return HELP.get(name, f"field-agent {kind} {name}.")


class AgentCollector(Collector):
    """The agent's families, built afresh from its Metrics and StatusBoard on each scrape."""

    def __init__(
        self,
        metrics: Metrics,
        status: StatusBoard,
        *,
        root: Path = Path("/"),
        throttling: Throttling | None = None,
    ) -> None:
        self.metrics = metrics
        self.status = status
        self.root = root
        self.throttling = throttling

    def collect(self) -> Iterable[Metric]:
        yield from self._counters_and_gauges()
        yield from self._summaries()
        yield from self._status()
        yield from self._board()

    def _counters_and_gauges(self) -> Iterator[Metric]:
        counters = self.metrics.counter_names()
        for name, series in self.metrics.snapshot().items():
            if name in counters:
                base = name.removesuffix("_total")
                m = Metric(PREFIX + base, _help(name, "counter"), "counter")
                for labels, value in series:
                    m.add_sample(PREFIX + base + "_total", labels, value)
            elif name.endswith("_ms"):  # Prometheus wants base units
                exported = PREFIX + name.removesuffix("_ms") + "_seconds"
                m = Metric(exported, _help(name, "gauge"), "gauge")
                for labels, value in series:
                    m.add_sample(exported, labels, value / 1000.0)
            else:
                m = Metric(PREFIX + name, _help(name, "gauge"), "gauge")
                for labels, value in series:
                    m.add_sample(PREFIX + name, labels, value)
            yield m

    def _summaries(self) -> Iterator[Metric]:
        for name, series in self.metrics.windows().items():
            full = PREFIX + name
            m = Metric(full, _help(name, "summary"), "summary")
            for labels, window in series:
                values = sorted(window.values)
                for q in QUANTILES:
                    m.add_sample(full, {**labels, "quantile": str(q)}, quantile(values, q))
                m.add_sample(full + "_count", labels, float(window.count))
                m.add_sample(full + "_sum", labels, window.sum)
            yield m

    def _status(self) -> Iterator[Metric]:
        board = self.status
        up = Metric(PREFIX + "link_up", "1 when the link is up (streaming), else 0.", "gauge")
        state = Metric(
            PREFIX + "link_state", "Current state of each link (1 for the current one).", "gauge"
        )
        for link, part in board.links.items():
            up.add_sample(PREFIX + "link_up", {"link": link}, float(part.state is LinkState.UP))
            for s in LinkState:
                state.add_sample(
                    PREFIX + "link_state", {"link": link, "state": s.value}, float(part.state is s)
                )
        device = Metric(PREFIX + "device_up", "1 when the device (mic, speaker) works.", "gauge")
        for name, part in board.devices.items():
            device.add_sample(
                PREFIX + "device_up", {"device": name}, float(part.state is LinkState.UP)
            )
        yield from (up, state, device)
        yield _gauge("transmitting", "1 while the mic is transmitting (PTT).",
                     float(board.ptt_state == "talking"))  # fmt: skip
        yield _gauge("volume", "Speaker volume, 0..1.", board.volume)
        yield _gauge("muted", "1 while the speaker is muted.", float(board.muted))
        if board.mic_dbfs is not None:
            yield _gauge("mic_level_dbfs", "Mic level (dBFS, sampled).", board.mic_dbfs)
        yield _gauge(
            "uptime_seconds", "Seconds since the agent started.", board.clock() - board.started_at
        )
        info = Metric(PREFIX + "build", "field-agent version (always 1).", "info")
        info.add_sample(PREFIX + "build_info", {"version": __version__}, 1.0)
        yield info

    def _board(self) -> Iterator[Metric]:
        temps = read_temperatures(self.root)
        if temps:
            m = Metric(
                PREFIX + "thermal_zone_celsius",
                "Temperature of each thermal zone (the CPU on a Raspberry Pi).",
                "gauge",
            )
            for zone, kind, celsius in temps:
                m.add_sample(m.name, {"zone": zone, "type": kind}, celsius)
            yield m
        value = self.throttling.value if self.throttling is not None else None
        if value is not None:
            yield _gauge("throttled_raw", "vcgencmd get_throttled, as reported.", float(value))
            m = Metric(
                PREFIX + "throttled",
                "Raspberry Pi firmware flags: under-voltage, frequency capping, throttling, "
                "soft temperature limit; now or since boot.",
                "gauge",
            )
            for flag, when, on in throttle_flags(value):
                m.add_sample(m.name, {"flag": flag, "when": when}, float(on))
            yield m


def _gauge(name: str, doc: str, value: float) -> Metric:
    m = Metric(PREFIX + name, doc, "gauge")
    m.add_sample(PREFIX + name, {}, value)
    return m


def build_registry(
    metrics: Metrics,
    status: StatusBoard,
    *,
    root: Path = Path("/"),
    throttling: Throttling | None = None,
) -> CollectorRegistry:
    """A private registry (never prometheus_client's global one) with the agent's families
    and the standard process ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(metrics, status, root=root, throttling=throttling))
    ProcessCollector(registry=registry, proc=str(root / "proc"))
    return registry


# -- /status --------------------------------------------------------------------------
def _ms_summary(window: Window) -> dict[str, float]:
    values = sorted(window.values)
    return {
        "p50": round(quantile(values, 0.5) * 1000, 2),
        "p99": round(quantile(values, 0.99) * 1000, 2),
        "n": float(len(values)),
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
        self.registry = build_registry(metrics, status, root=root, throttling=self.throttling)
        self._on_bound = on_bound
        self._quiet = logging.getLogger(__name__ + ".http")  # websockets' per-request lines
        self._quiet.setLevel(logging.WARNING)
        self.requests = 0

    async def run(self) -> None:
        """Serve until cancelled. Raises OSError if the address cannot be bound."""
        async with serve(
            _refuse_websocket,
            self.host,
            self.port,
            process_request=self._respond,
            logger=self._quiet,
            server_header=f"field-agent/{__version__}",
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
            encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
            return _reply(conn, http.HTTPStatus.OK, encoder(self.registry).decode(), content_type)
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
