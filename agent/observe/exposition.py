"""The Prometheus side of :mod:`agent.observe`: a ``prometheus_client`` custom collector
over the agent's :class:`~agent.metrics.Metrics` and :class:`~agent.status.StatusBoard`.

Imported at the first scrape of ``/metrics`` (prometheus_client costs about 1 MB of
RSS; a device nobody scrapes never loads it).

- counters and gauges from :meth:`Metrics.snapshot`, prefixed ``field_agent_``, with
  HELP text; ``*_ms`` gauges are exported in seconds (``*_seconds``);
- latency windows from :meth:`Metrics.windows` as summaries (median and p99 of the
  recent window, count and sum since start);
- link and device states, PTT, volume, mute, mic level, uptime, version;
- thermal zones and the Raspberry Pi's throttling flags where the board has them;
- the standard ``process_*`` families (CPU seconds, RSS, fds) from prometheus_client's
  ``ProcessCollector``.

All on a private :class:`CollectorRegistry`, never prometheus_client's global one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.metrics import Metrics, quantile
from agent.observe.host import Throttling, read_temperatures, throttle_flags
from agent.status import LinkState, StatusBoard

PREFIX = "field_agent_"
QUANTILES = (0.5, 0.99)
# HELP text of every family the agent counts today. Families added later still get
# exported (with a generic help line) before they are described here.
HELP: dict[str, str] = {
    "frames_captured_total": "Uplink frames (20 ms, 8 kHz mono) cut from the mic.",
    "capture_frames_dropped_total": "Captured frames dropped before the uplinks, by reason.",
    "frames_sent_total": "Uplink frames sent, per link.",
    "frames_received_total": "Downlink audio messages received, per link.",
    "frames_dropped_total": "Uplink frames dropped, per link and reason.",
    "frames_before_call_total": "Uplink frames captured before the link's first call (not sent).",
    "frames_played_total": "20 ms periods rendered with audio from a mixer source (per link).",
    "playback_periods_total": "20 ms periods written to the speaker.",
    "messages_dropped_total": "Topic messages refused locally, per link and reason.",
    "xruns_total": "ALSA over- and underruns, recovered in place, per device.",
    "audio_underruns_total": "Jitter-buffer underruns (audio arrived late), per source.",
    "jitter_resets_total": "Jitter-buffer resets to target (audio piled up), per source.",
    "playout_stalls_total": (
        "Audio cut to the jitter target because the speaker rendered nothing while it "
        "piled up (a device starting, stalled or missing), per source."
    ),
    "jitter_depth_ms": "Audio buffered in the jitter buffer, per source.",
    "jitter_target_ms": "Jitter-buffer target depth, per source.",
    "audio_rejected_total": "Audio refused by the mixer or capture, per source and reason.",
    "mixer_clipped_periods_total": "Mixed periods that had to be clipped.",
    "mic_silence_alarms_total": "Times the mic delivered only exact zeros for 10 s.",
    "reconnects_total": "Reconnection attempts, per link.",
    "sessions_created_total": "Sessions created over REST, per link.",
    "rooms_refused_total": "Channel switches VideoSDK refused (back to the last good room).",
    "password_fetches_total": "Audio passwords fetched over REST, per link.",
    "malformed_total": "Malformed messages from a server, per link and reason.",
    "unknown_events_total": "Well-formed events of an unknown kind, per link.",
    "server_errors_total": "Error messages sent by a server, per link.",
    "task_crashes_total": "Unexpected exceptions in a supervised part (then restarted).",
    "commands_accepted_total": "Remote commands executed, per command.",
    "commands_refused_total": "Remote commands refused (not executed), per reason.",
    "part_build_failures_total": "Parts that could not be built (then retried), per part.",
    "reloads_total": "Reloads asked for (SIGHUP), per result (applied, refused, unchanged).",
    "button_presses_total": 'GPIO button presses (button="ptt_button": PTT presses).',
    "cues_played_total": "Sound cues played on the speaker, per cue.",
    "cue_file_errors_total": "Cue plays whose WAV file could not be read (the tone played).",
    "cue_failures_total": "Cues that could not be played at all (logged), per cue.",
    "emergencies_total": "Emergencies raised, by what raised them (button).",
    "emergency_cancels_total": "Emergencies cancelled, by what cancelled them (button, remote).",
    "emergency_alerts_total": "Emergency alerts handed to the alert topic, per state.",
    "emergencies_interrupted_total": "Emergencies found active at start (power cut), not resumed.",
    "emergency_active": "1 while an emergency is active.",
    "handsfree_errors_total": "Hands-free inputs passed through unprocessed, per reason.",
    "handsfree_audio_seconds_total": "Audio processed by the hands-free stage, seconds.",
    "handsfree_erle_db": "Echo return loss enhancement estimate (mic/uplink while far plays).",
    "handsfree_gain_db": "Automatic gain applied to the uplink, dB.",
    "handsfree_voice_probability": "Speech probability of the last processed block, 0..1.",
    "handsfree_cpu_seconds": "Thread CPU spent in the hands-free processing, seconds.",
    "handsfree_cpu_ratio": "Hands-free CPU per second of audio processed.",
    "handsfree_reference_dropped_samples": "Echo reference dropped to stay aligned (16 kHz).",
    "handsfree_reference_padded_samples": "Echo reference padded with silence (16 kHz).",
    "uplink_latency_seconds": "Capture clock to socket, per uplink frame (recent window).",
    "playout_latency_seconds": "Arrival to speaker write, per source (recent window).",
}


# -- the collector -------------------------------------------------------
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


def render(registry: CollectorRegistry, accept: str) -> tuple[str, str]:
    """The exposition (text format, or OpenMetrics when ``accept`` asks) and its type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry).decode(), content_type
