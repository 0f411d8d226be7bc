"""The downlink mixer: any number of sources in, one 20 ms period at a time out.

Links add a source per stream (``mixer.add_source("orgo", 24000, 1)``) and push
audio into it from the asyncio thread; the playback thread calls
:meth:`Mixer.render` once per period. Each source converts on push: channels
first (stereo is averaged to mono before resampling, mono is duplicated after),
then its own streaming resampler to the output rate, then its own adaptive
:class:`~agent.audio.jitter.JitterBuffer`. Render pulls one period from every
source into a float32 sum, applies volume, mute and ducking, and saturates once,
converting to int16 (float sums cannot wrap).

Threading: one lock per source guards its jitter buffer (held for a ring-buffer
copy, microseconds); the mixer lock guards the source table. ``volume``,
``muted`` and the duck gain are plain attributes read once per render.

Bad audio never raises into the link: it is dropped and counted in
``audio_rejected_total{source=,reason=}`` with a rate-limited log line. Only
:meth:`Mixer.add_source` raises (:class:`~agent.errors.ProtocolError`), for an
absurd format a peer announced.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import numpy as np

from agent.audio.jitter import JitterBuffer, JitterPolicy
from agent.audio.reject import Rejections
from agent.audio.resample import Floats, StreamResampler
from agent.errors import ProtocolError
from agent.metrics import Metrics
from agent.pcm import FRAMES_PER_S, Pcm, samples_per_frame, to_int16

logger = logging.getLogger(__name__)

MIN_RATE = 4000  # Hz; anything outside is a peer's bug, not audio
MAX_RATE = 192000
MAX_CHANNELS = 8
MAX_PUSH_S = 5.0  # one push longer than this is refused (memory, not latency, limit)
GAUGE_EVERY = FRAMES_PER_S  # renders between gauge updates (once a second)
RESET_LOG_EVERY_S = 10.0  # a starved device resets every few pushes: one line per 10 s


def _check_format(name: str, rate: Any, channels: Any) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise ProtocolError(f"source {name!r}: sample rate must be an integer, got {rate!r}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(
            f"source {name!r}: sample rate {rate} Hz outside {MIN_RATE}..{MAX_RATE} Hz"
        )
    if isinstance(channels, bool) or not isinstance(channels, int | np.integer):
        raise ProtocolError(f"source {name!r}: channels must be an integer, got {channels!r}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError(f"source {name!r}: {channels} channels outside 1..{MAX_CHANNELS}")


class _Cuts:
    """A kind of jitter-buffer cut (reset, stall): every one counted, one log line per
    ``RESET_LOG_EVERY_S`` (a starved device cuts every few pushes)."""

    def __init__(self, metric: str, line: str) -> None:
        self.metric, self.line = metric, line
        self.seen = 0  # the buffer's running total when last counted
        self.logged_at = -RESET_LOG_EVERY_S
        self.unlogged = 0

    def count(self, total: int, t: float, metrics: Metrics, source: str) -> None:
        """Count what ``total`` (the buffer's running count) grew by since last time."""
        n, self.seen = total - self.seen, total
        if not n:
            return
        metrics.inc(self.metric, n, source=source)
        self.unlogged += n
        if t - self.logged_at >= RESET_LOG_EVERY_S:
            logger.info(self.line, source, self.unlogged)
            self.logged_at, self.unlogged = t, 0


class MixerSource:
    """One downlink stream of the mixer (a :class:`~agent.pcm.PcmSink`)."""

    def __init__(
        self,
        name: str,
        rate: int,
        channels: int,
        *,
        out_rate: int,
        out_channels: int,
        policy: JitterPolicy,
        metrics: Metrics,
        rejections: Rejections,
    ) -> None:
        self.name = name
        self.rate = rate
        self.channels = channels
        self._out_channels = out_channels
        self._metrics = metrics
        self._rejections = rejections
        # channels are reduced before resampling (less work), expanded after
        self._resample_channels = 1 if channels != out_channels else channels
        self._resampler = StreamResampler(rate, out_rate, self._resample_channels)
        self._buffer = JitterBuffer(out_rate, out_channels, policy)
        self._lock = threading.Lock()  # guards _buffer (push thread vs render thread)
        self._push_lock = threading.Lock()  # guards _resampler against concurrent pushers
        self._max_push = int(MAX_PUSH_S * rate) * channels
        self._resets = _Cuts(
            "jitter_resets_total",
            "jitter buffer of %s reset to its target (audio piled up; %d time(s) "
            "since the last such line)",
        )
        self._stalls = _Cuts(
            "playout_stalls_total",
            "%s audio piled up while the speaker rendered nothing (starting, stalled "
            "or missing); cut to its target (%d time(s) since the last such line)",
        )
        self._seen_underruns = 0
        self._seen_latencies = 0
        self._seen_played = 0
        self.detached = False  # set when replaced or removed: later pushes are ignored

    # -- the link's side (asyncio thread) ------------------------------------------
    def push(
        self, pcm: Pcm | Floats | bytes | bytearray | memoryview, t_arrival: float | None = None
    ) -> None:
        """Queue interleaved samples at this source's rate and channel count.

        Accepts int16 arrays (any shape whose size is a multiple of ``channels``),
        little-endian int16 ``bytes``, or float arrays scaled to +-1.0. Anything
        else is rejected (counted, logged now and then), never raised.
        """
        if self.detached:
            return
        if t_arrival is None:
            t_arrival = time.monotonic()
        samples = self._validate(pcm)
        if samples is None or samples.size == 0:
            return
        with self._push_lock:
            converted = self._expand(self._resampler.process_floats(self._reduce(samples)))
            if converted.size == 0:
                return
            with self._lock:
                self._buffer.push(converted, t_arrival)
                resets = self._buffer.resets
                stalls = self._buffer.stalls
                underruns = self._buffer.underruns
            new_underruns, self._seen_underruns = underruns - self._seen_underruns, underruns
            self._resets.count(resets, t_arrival, self._metrics, self.name)
            self._stalls.count(stalls, t_arrival, self._metrics, self.name)
        if new_underruns:  # counted when the late audio arrives (it was late, not over)
            self._metrics.inc("audio_underruns_total", new_underruns, source=self.name)

    def _validate(self, pcm: object) -> Floats | None:
        """The samples as int16-scaled float32, or None (rejected and counted)."""
        if isinstance(pcm, bytes | bytearray | memoryview):
            raw = bytes(pcm)
            if len(raw) % 2:
                self._reject("odd_bytes", f"{len(raw)} bytes is not a whole number of samples")
                return None
            samples = np.frombuffer(raw, dtype="<i2").astype(np.float32)
        elif isinstance(pcm, np.ndarray):
            if pcm.dtype == np.int16:
                samples = pcm.reshape(-1).astype(np.float32)
            elif pcm.dtype.kind == "f":
                if not np.isfinite(np.add.reduce(pcm, axis=None)):
                    self._reject("nonfinite", "NaN or infinite samples")
                    return None
                samples = pcm.reshape(-1).astype(np.float32) * np.float32(32768.0)
            else:
                self._reject("dtype", f"samples of dtype {pcm.dtype}, want int16")
                return None
        else:
            self._reject("type", f"got {type(pcm).__name__}, want int16 samples")
            return None
        if samples.size % self.channels:
            self._reject(
                "length", f"{samples.size} samples is not a multiple of {self.channels} channels"
            )
            return None
        if samples.size > self._max_push:
            self._reject("too_long", f"{samples.size} samples in one push")
            return None
        return samples

    def _reject(self, reason: str, detail: str) -> None:
        self._rejections.reject(self.name, reason, detail)

    def _reduce(self, samples: Floats) -> Floats:
        if self.channels == self._resample_channels:
            return samples
        channels = self.channels
        mono: Floats = samples[0::channels] + samples[1::channels]  # elementwise beats sum(axis=1)
        for c in range(2, channels):
            mono += samples[c::channels]
        mono *= np.float32(1.0 / channels)
        return mono

    def _expand(self, samples: Floats) -> Floats:
        if self._resample_channels == self._out_channels:
            return samples
        return np.repeat(samples, self._out_channels)

    # -- the mixer's side (playback thread) ----------------------------------------
    def _pull_into(self, acc: Floats, now: float) -> bool:
        with self._lock:
            return self._buffer.pull_into(acc, now)

    def _gauges(self) -> None:
        """Once a second: depth and target gauges; periods played and the arrival->render
        latencies since the last call (batched here to keep the render path lean)."""
        buffer = self._buffer
        with self._lock:
            depth, target = buffer.depth_ms, buffer.target_ms
            played = buffer.periods_played
            new = buffer.latency_count - self._seen_latencies
            latencies = buffer.latencies()[-new:] if new > 0 else []
            self._seen_latencies = buffer.latency_count
        self._metrics.set("jitter_depth_ms", depth, source=self.name)
        self._metrics.set("jitter_target_ms", target, source=self.name)
        if played > self._seen_played:
            self._metrics.inc("frames_played_total", played - self._seen_played, source=self.name)
            self._seen_played = played
        for latency in latencies:
            self._metrics.observe("playout_latency_seconds", latency, source=self.name)

    # -- views ---------------------------------------------------------------------
    def latencies(self) -> list[float]:
        """Recent arrival->render latencies in seconds (resampler delay included)."""
        with self._lock:
            return self._buffer.latencies()

    @property
    def depth_ms(self) -> float:
        with self._lock:
            return self._buffer.depth_ms

    @property
    def target_ms(self) -> float:
        with self._lock:
            return self._buffer.target_ms


class Mixer:
    """Mixes every source into ``out_rate`` Hz, ``channels`` interleaved; one period per render."""

    def __init__(
        self,
        out_rate: int,
        *,
        metrics: Metrics,
        channels: int = 1,
        jitter: JitterPolicy | None = None,
    ) -> None:
        if out_rate % FRAMES_PER_S or not MIN_RATE <= out_rate <= MAX_RATE:
            raise ValueError(f"output rate {out_rate} Hz cannot hold whole 20 ms periods")
        if not 1 <= channels <= 2:
            raise ValueError(f"output channels must be 1 or 2, got {channels}")
        self.out_rate = out_rate
        self.channels = channels
        self.period = samples_per_frame(out_rate)
        self.volume = 1.0
        self.muted = False
        self._duck_gain = 1.0
        self._metrics = metrics
        self._policy = jitter or JitterPolicy()
        self._rejections = Rejections(metrics)
        self._lock = threading.Lock()
        self._sources: dict[str, MixerSource] = {}
        self._renders = 0

    # -- SourceFactory -------------------------------------------------------------
    def add_source(self, name: str, rate: int, channels: int = 1) -> MixerSource:
        """Create the source ``name``; re-adding with a new format replaces it.

        Re-adding with the same format returns the existing source (buffer kept).
        Raises :class:`ProtocolError` for rates outside 4..192 kHz or channels
        outside 1..8.
        """
        _check_format(name, rate, channels)
        with self._lock:
            old = self._sources.get(name)
            if old is not None and (old.rate, old.channels) == (rate, channels):
                return old
            source = MixerSource(
                name,
                int(rate),
                int(channels),
                out_rate=self.out_rate,
                out_channels=self.channels,
                policy=self._policy,
                metrics=self._metrics,
                rejections=self._rejections,
            )
            self._sources[name] = source
        if old is not None:
            old.detached = True
            logger.info(
                "source %s now %d Hz x%d (was %d Hz x%d)",
                name,
                rate,
                channels,
                old.rate,
                old.channels,
            )
        else:
            logger.debug("source %s added: %d Hz x%d", name, rate, channels)
        return source

    def remove_source(self, name: str) -> None:
        """Remove the source ``name``; unknown names are ignored."""
        with self._lock:
            source = self._sources.pop(name, None)
        if source is not None:
            source.detached = True

    def source(self, name: str) -> MixerSource | None:
        with self._lock:
            return self._sources.get(name)

    @property
    def source_names(self) -> list[str]:
        with self._lock:
            return list(self._sources)

    def latencies(self, name: str) -> list[float]:
        """Recent arrival->render latencies (s) of source ``name`` ([] if unknown)."""
        source = self.source(name)
        return [] if source is None else source.latencies()

    # -- controls ------------------------------------------------------------------
    def set_duck_db(self, db: float) -> None:
        """Attenuate everything by ``db`` decibels (0 = no ducking), e.g. while transmitting."""
        if not math.isfinite(db):
            raise ValueError(f"duck attenuation must be finite, got {db}")
        self._duck_gain = 10.0 ** (-abs(db) / 20.0)

    @property
    def gain(self) -> float:
        """The linear gain applied to the mix now (volume x ducking; 0 when muted)."""
        if self.muted:
            return 0.0
        return min(max(self.volume, 0.0), 1.0) * self._duck_gain

    # -- the playback thread -------------------------------------------------------
    def render(self) -> Pcm:
        """Exactly one 20 ms period at ``out_rate`` (interleaved), silence if nothing plays."""
        now = time.monotonic()
        with self._lock:
            sources = list(self._sources.values())
        acc = np.zeros(self.period * self.channels, np.float32)
        playing = False
        for source in sources:
            playing = source._pull_into(acc, now) or playing
        self._renders += 1
        if self._renders % GAUGE_EVERY == 0:
            for source in sources:
                source._gauges()
        gain = self.gain
        if not playing or gain == 0.0:
            return np.zeros(self.period * self.channels, np.int16)
        if gain != 1.0:
            acc *= np.float32(gain)
        if acc.max() > 32767.0 or acc.min() < -32768.0:
            self._metrics.inc("mixer_clipped_periods_total")
        return to_int16(acc)
