"""Hands-free: echo cancellation, noise suppression and automatic gain on the uplink.

The processing is WebRTC's audio processing module (AEC3, NS, AGC2) through
``pywebrtc-audio`` (Apache-2.0, ~0.4 MB wheels for aarch64 and x86_64), the
optional extra ``field-agent[handsfree]``. It is imported only when a
:class:`HandsFree` is built (``[audio] echo_cancel`` on, ``noise_suppression > 0``
or ``auto_gain``); an agent that does not ask for it never loads it.

It runs at :data:`PROCESS_RATE` (16 kHz, the library's sweet spot: wideband
speech, a third of 48 kHz's cost); the uplink stays 8 kHz.

The interface the audio core feeds (everything else is inside this module)
--------------------------------------------------------------------------

Playback side, once per period written to the speaker, in the thread that writes::

    tap.rendered(pcm, rate, channels, playout_delay_s)

``pcm`` is exactly what went to the device (interleaved int16, after volume, mute,
ducking and the device resampler), ``rate``/``channels`` the device's, and
``playout_delay_s`` the time until its first sample is heard (ALSA ``delay()``),
or ``None`` when the device cannot tell (AEC3 then finds the delay itself).

Capture side, once per mic read, before the frames are cut and the PTT/VOX gate::

    uplink = stage.process(mono_pcm_at_the_mic_rate)   # -> 8 kHz mono int16

(any length in, any length out, a few ms of latency); :class:`HandsFreeStage`
resamples the mic to 16 kHz, takes as many far-end samples from the tap, runs
:meth:`HandsFree.process` and resamples to 8 kHz. Both calls may come from
different threads (the tap has a lock) or from one audio thread.

The step itself, :meth:`HandsFree.process` ``(mic, far, playout_delay_s) ->
processed mic``, is pure but for the library's adaptive state: mono int16 at
16 kHz in, whole 10 ms blocks out. Bad input (a wrong length, floats with NaN,
the library raising) never crashes: one rate-limited log line, a counter
(``handsfree_errors_total{reason=}``) and the mic passes through unprocessed.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

import numpy as np

from agent.audio.resample import Floats, StreamResampler
from agent.config_checks import HANDSFREE_DISTRIBUTION, HANDSFREE_INSTALL, HANDSFREE_MODULE
from agent.errors import AgentError
from agent.metrics import Metrics
from agent.pcm import UPLINK_RATE, Pcm, to_int16

logger = logging.getLogger(__name__)

LIBRARY = HANDSFREE_MODULE  # the module
DISTRIBUTION = HANDSFREE_DISTRIBUTION  # what pip installs
INSTALL_HINT = HANDSFREE_INSTALL
PROCESS_RATE = 16000
BLOCK = PROCESS_RATE // 100  # the library's 10 ms frame
ECHO_CANCEL_MODES = ("auto", "on", "off")
HANDSFREE_MODES = ("open", "vox")  # ptt modes in which echo_cancel = "auto" is on
# WebRTC NS levels: kLow 6 dB, kModerate 12 dB, kHigh 18 dB, kVeryHigh 21 dB.
# noise_suppression 1..3 -> moderate, high, very high (0: off; "low" is too weak to matter)
NS_LEVELS = {1: 1, 2: 2, 3: 3}
FAR_ACTIVE_DBFS = -60.0  # far-end blocks above this count for the ERLE estimate
ERLE_TIME_CONSTANT_S = 2.0
LOG_INTERVAL_S = 10.0


class HandsFreeUnavailable(AgentError, ImportError):
    """The processing library is not installed (or does not load on this machine)."""


def load_library() -> ModuleType:
    """Import ``pywebrtc_audio``; :class:`HandsFreeUnavailable` says what to install."""
    try:
        return importlib.import_module(LIBRARY)
    except ImportError as exc:
        raise HandsFreeUnavailable(
            f"hands-free processing needs {DISTRIBUTION}: {INSTALL_HINT} ({exc})"
        ) from exc


def library_available() -> bool:
    try:
        load_library()
    except HandsFreeUnavailable:
        return False
    return True


@dataclass(frozen=True)
class HandsFreeSettings:
    """What the processing does (from ``[audio]``, with ``echo_cancel`` resolved)."""

    echo_cancel: bool = True
    noise_suppression: int = 0  # 0 off, 1..3
    auto_gain: bool = False

    @property
    def any(self) -> bool:
        return self.echo_cancel or self.noise_suppression > 0 or self.auto_gain

    def __post_init__(self) -> None:
        if self.noise_suppression not in (0, *NS_LEVELS):
            raise ValueError(f"noise_suppression must be 0..3, got {self.noise_suppression}")


def resolve(echo_cancel: str, ptt_mode: str) -> bool:
    """``echo_cancel`` = "auto" | "on" | "off" -> on or off for this PTT mode."""
    if echo_cancel == "auto":
        return ptt_mode in HANDSFREE_MODES
    return echo_cancel == "on"


@dataclass(frozen=True)
class HandsFreeStats:
    """What status and /metrics show."""

    erle_db: float | None  # echo return loss enhancement estimate (mic / uplink while far plays)
    gain_db: float | None  # AGC2's applied gain (None with auto_gain off)
    voice_probability: float  # the library's speech probability of the last block
    cpu_s: float  # thread CPU spent in the processing
    audio_s: float  # audio processed
    errors: int  # inputs passed through unprocessed

    @property
    def cpu_per_audio_s(self) -> float:
        return self.cpu_s / self.audio_s if self.audio_s > 0 else 0.0

    @property
    def cpu_percent(self) -> float:
        """CPU as a percentage of the audio's duration (one core)."""
        return 100.0 * self.cpu_per_audio_s


class Processor(Protocol):
    """What :class:`HandsFree` needs of the library's ``AudioProcessor``."""

    stream_delay_ms: int

    def process(self, near: Floats, far: Floats | None = None) -> Floats: ...

    @property
    def speech_probability(self) -> float: ...

    @property
    def gain_db(self) -> float: ...


ProcessorFactory = Callable[[HandsFreeSettings], Processor]


def webrtc_processor(settings: HandsFreeSettings) -> Processor:
    """The library's ``AudioProcessor`` at 16 kHz mono for ``settings``."""
    lib = load_library()
    ns = settings.noise_suppression
    processor: Processor = lib.AudioProcessor(
        sample_rate=PROCESS_RATE,
        num_channels=1,
        echo_cancellation=settings.echo_cancel,
        noise_suppression=ns > 0,
        high_pass_filter=True,
        auto_gain_control=settings.auto_gain,
        ns_level=NS_LEVELS.get(ns, 1),
    )
    return processor


class _Throttle:
    """One log line per reason per interval."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def ready(self, reason: str) -> bool:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval_s:
            return False
        self._last[reason] = now
        return True


_TO_UNIT = np.float32(1.0 / 32768.0)  # int16 -> the library's +-1.0 floats
_TO_INT16 = np.float32(32768.0)
_LSB_POWER = (1.0 / 32768.0) ** 2  # one int16 step, squared, in +-1.0 units
_FAR_ACTIVE_POWER = (10.0 ** (FAR_ACTIVE_DBFS / 20.0)) ** 2


def _power(x: Floats) -> float:
    """Mean square of +-1.0 floats (0 for none)."""
    return float(np.dot(x, x)) / x.size if x.size else 0.0


class HandsFree:
    """The processing step: mic + far-end reference (16 kHz mono) -> processed mic."""

    def __init__(
        self,
        settings: HandsFreeSettings,
        *,
        metrics: Metrics | None = None,
        processor: ProcessorFactory = webrtc_processor,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._processor = processor(settings)  # HandsFreeUnavailable without the library
        self._mic: Floats = np.zeros(0, np.float32)  # under a block, waiting for the next
        self._far: Floats = np.zeros(0, np.float32)
        self._throttle = _Throttle()
        self._cpu_s = 0.0
        self._audio_samples = 0
        self._published_samples = 0  # counted into handsfree_audio_seconds_total
        self._errors = 0
        self._erle_db = 0.0
        self._erle_weight = 0.0
        self._voice = 0.0
        self._gain: float | None = None
        self._delay_ms = -1

    # -- the step --------------------------------------------------------------------
    def process(self, mic: Pcm, far: Pcm, playout_delay_s: float | None = None) -> Pcm:
        """Feed ``mic`` and the ``far`` end heard with it; return the processed blocks ready.

        Both mono int16 at 16 kHz and of one length (a shorter ``far`` is padded with
        silence, a longer one cut, and counted; floats are converted, NaN zeroed, and
        counted). The output is whole 10 ms blocks: up to 10 ms of the input waits for
        the next call.
        """
        near = self._clean(mic, "mic").astype(np.float32) * _TO_UNIT
        ref = self._clean(far, "far").astype(np.float32) * _TO_UNIT
        return to_int16(self.process_floats(near, ref, playout_delay_s) * _TO_INT16)

    def process_floats(
        self, mic: Floats, far: Floats, playout_delay_s: float | None = None
    ) -> Floats:
        """:meth:`process` for float32 in +-1.0 (the library's own float format) in and
        out, as the capture stage's resamplers give and take them: no conversion on
        the way. ``mic`` and ``far`` must be finite (a resampler's output of int16 is)."""
        if far.size != mic.size:
            self._bad("far_length", "far end of %d samples for %d mic samples", far.size, mic.size)
            far = far[: mic.size] if far.size > mic.size else np.pad(far, (0, mic.size - far.size))
        if self._mic.size:  # a 20 ms read is two whole blocks: nothing waits, no copy
            mic, far = np.concatenate((self._mic, mic)), np.concatenate((self._far, far))
        n = mic.size - mic.size % BLOCK
        near, self._mic = mic[:n], mic[n:]
        ref, self._far = far[:n], far[n:]
        if n == 0:
            return near
        self._set_delay(playout_delay_s)
        t0 = time.thread_time()
        try:
            out = self._processor.process(near, ref)
            if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.size != n:
                raise ValueError(f"library returned {type(out).__name__} of the wrong shape")
            self._voice = float(self._processor.speech_probability)
            if self.settings.auto_gain:
                self._gain = float(self._processor.gain_db)
        except Exception as exc:  # the library's failure must not cost the uplink
            self._bad("library", "processing failed, mic passed through: %s", exc)
            out = near.copy()
        self._cpu_s += time.thread_time() - t0
        self._audio_samples += n
        self._update_erle(near, ref, out)
        return out

    def stats(self) -> HandsFreeStats:
        erle = None
        if self.settings.echo_cancel and self._erle_weight > 0.5:
            erle = self._erle_db
        return HandsFreeStats(
            erle_db=erle,
            gain_db=self._gain,
            voice_probability=self._voice,
            cpu_s=self._cpu_s,
            audio_s=self._audio_samples / PROCESS_RATE,
            errors=self._errors,
        )

    def publish(self, metrics: Metrics) -> HandsFreeStats:
        """Gauges for /metrics (call now and then, not per block); returns the figures."""
        s = self.stats()
        fresh = self._audio_samples - self._published_samples
        if fresh:
            self._published_samples = self._audio_samples
            metrics.inc("handsfree_audio_seconds_total", fresh / PROCESS_RATE)
        if s.erle_db is not None:
            metrics.set("handsfree_erle_db", round(s.erle_db, 1))
        if s.gain_db is not None:
            metrics.set("handsfree_gain_db", round(s.gain_db, 1))
        metrics.set("handsfree_voice_probability", round(s.voice_probability, 3))
        metrics.set("handsfree_cpu_seconds", round(s.cpu_s, 3))
        metrics.set("handsfree_cpu_ratio", round(s.cpu_per_audio_s, 4))
        return s

    # -- helpers ---------------------------------------------------------------------
    def _clean(self, x: Pcm, what: str) -> Pcm:
        x = np.asarray(x).reshape(-1)
        if x.dtype == np.int16:
            return x
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            self._bad("nan", "%s samples not finite (NaN/inf), zeroed", what)
        else:
            self._bad("dtype", "%s samples of type %s, converted", what, x.dtype)
        return to_int16(x)

    def _set_delay(self, playout_delay_s: float | None) -> None:
        if playout_delay_s is None or not math.isfinite(playout_delay_s):
            return
        ms = min(500, max(0, round(playout_delay_s * 1000.0)))
        if abs(ms - self._delay_ms) >= 5:  # the hint only; AEC3 tracks the delay itself
            self._delay_ms = ms
            try:
                self._processor.stream_delay_ms = ms
            except Exception as exc:
                self._bad("library", "delay hint refused: %s", exc)

    def _update_erle(self, near: Floats, far: Floats, out: Floats) -> None:
        """ERLE estimate: mic-to-uplink level ratio (dB) while the far end plays, averaged
        in dB over ~2 s (so a transient while the canceller adapts does not dominate)."""
        if not self.settings.echo_cancel:
            return
        if _power(far) <= _FAR_ACTIVE_POWER:
            return
        pm, po = _power(near), _power(out)
        if pm <= _LSB_POWER:  # the mic hears nothing of it (speaker off, unplugged): no figure
            return
        ratio_db = 10.0 * math.log10(pm / max(po, 1e-2 * _LSB_POWER))
        a = min(1.0, near.size / (ERLE_TIME_CONSTANT_S * PROCESS_RATE))
        if self._erle_weight == 0.0:
            self._erle_db = ratio_db
        self._erle_db += a * (ratio_db - self._erle_db)
        self._erle_weight = min(1.0, self._erle_weight + a)

    def _bad(self, reason: str, msg: str, *args: object) -> None:
        self._errors += 1
        if self._metrics is not None:
            self._metrics.inc("handsfree_errors_total", reason=reason)
        if self._throttle.ready(reason):
            text = msg % args
            logger.warning("hands-free: %s (10 s of like errors are counted, not logged)", text)


class FarEndTap:
    """What the speaker played, for the echo canceller: a queue at 16 kHz.

    The playback path calls :meth:`rendered` with each period written to the device;
    the capture path calls :meth:`take` with each mic read. The reference is kept
    continuous, as the device plays it: capture and playback run on the device
    clock, so what is queued is what the writer is ahead of the mic. An empty queue
    means the speaker ran dry (an underrun: it played silence), so silence is given.
    The reference must come before its echo (the canceller finds delays up to
    ~0.5 s, but cannot use a reference that comes after the echo): the queue's floor
    over each second (what the writer is ahead for good, beyond the jitter: the
    order things started in, two cards drifting apart, mic audio lost in an overrun)
    is cut to :attr:`keep_s` when above :attr:`realign_s`, and at once past
    :attr:`max_lead_s`. Measured on the rig: cutting the queue at every take lost the
    alignment under load (ERLE 6-18 dB); never cutting it let the start's order put
    the reference 100 ms after its echo (ERLE 0 dB); keeping only 5 ms made every
    late write of the speaker thread a spurious pad that moved the reference 15 ms
    (ERLE 11-13 dB in one take of three); 25 ms kept, 37-64 dB in every take.
    """

    def __init__(
        self,
        *,
        rate: int = PROCESS_RATE,
        realign_s: float = 0.045,
        keep_s: float = 0.025,
        max_lead_s: float = 0.4,
    ) -> None:
        self.rate = rate
        self.realign_s = realign_s
        self.keep_s = keep_s
        self.max_lead_s = max_lead_s
        self._floor = 0
        self._window = 0
        self._check_every = rate // 10  # the start's order shows in the first takes
        self._lock = threading.Lock()
        self._chunks: deque[Floats] = deque()  # mono +-1.0 at ``rate``
        self._queued = 0
        self._resampler: StreamResampler | None = None
        self._delay_s: float | None = None
        # False until a capture stage listens: the playback path's call costs nothing then
        self.listening = False
        self.dropped_samples = 0  # reference dropped to stay aligned (capture behind)
        self.padded_samples = 0  # silence given for lack of reference (speaker idle or behind)

    def rendered(
        self, pcm: Pcm, rate: int, channels: int = 1, playout_delay_s: float | None = None
    ) -> None:
        """One period just written to the speaker (interleaved int16 at ``rate``)."""
        if not self.listening:
            return
        with self._lock:
            r = self._resampler
            if r is None or r.in_rate != rate or r.channels != channels:
                # the device's int16 (any channels) -> mono +-1.0 at 16 kHz, in one filter
                r = self._resampler = StreamResampler(
                    rate, self.rate, channels, gain=float(_TO_UNIT), mono=True
                )
            x = r.process_floats(np.asarray(pcm).reshape(-1))
            if x.size:
                self._chunks.append(x)
                self._queued += x.size
            self._delay_s = playout_delay_s
            limit = 2 * self.rate  # a capture that stopped taking: keep 2 s at most
            while self._queued > limit:
                self.dropped_samples += self._chunks[0].size
                self._queued -= self._chunks.popleft().size

    def _drop(self, excess: int) -> None:
        self.dropped_samples += max(0, excess)
        while excess > 0 and self._chunks:
            head = self._chunks[0]
            if head.size <= excess:
                excess -= head.size
                self._queued -= self._chunks.popleft().size
            else:
                self._chunks[0] = head[excess:]
                self._queued -= excess
                excess = 0

    def take(self, n: int) -> tuple[Pcm, float | None]:
        """``n`` samples of reference as int16 (silence where there is none) and the
        playout delay."""
        ref, delay = self.take_floats(n)
        return to_int16(ref * _TO_INT16), delay

    def take_floats(self, n: int) -> tuple[Floats, float | None]:
        """:meth:`take` as the library's +-1.0 floats (what the capture stage feeds it)."""
        with self._lock:
            parts: list[Floats] = []
            need = n
            while need > 0 and self._chunks:
                head = self._chunks[0]
                if head.size <= need:
                    parts.append(self._chunks.popleft())
                    need -= head.size
                else:
                    parts.append(head[:need])
                    self._chunks[0] = head[need:]
                    need = 0
            self._queued -= n - need
            if need:
                self.padded_samples += need
                parts.append(np.zeros(need, np.float32))
                # The speaker has not started or ran dry: its lead is measured afresh
                # (quickly) once it plays again. (Counting on the padding to match
                # the device's silence instead drifted the reference after its echo
                # on a loaded machine: ERLE 4-12 dB against 27-38 dB this way.)
                self._window, self._check_every = 0, self.rate // 10
                out = parts[0] if len(parts) == 1 else np.concatenate(parts)
                return out, self._delay_s
            # The queue's floor over a second is how far the reference runs ahead of
            # the mic for good (the start's order, drift); above the jitter it is
            # dropped once, so the reference stays before its echo (the canceller
            # cannot use a reference that comes after the echo). Jitter (a burst
            # of writes) never triggers it, so the reference stays continuous.
            self._floor = self._queued if self._window == 0 else min(self._floor, self._queued)
            self._window += n
            if self._queued > int(self.max_lead_s * self.rate):  # far off: at once
                self._drop(self._queued - int(self.keep_s * self.rate))
            elif self._window >= self._check_every:  # 0.1 s after the start, then 1 s
                if self._floor > int(self.realign_s * self.rate):
                    self._drop(self._floor - int(self.keep_s * self.rate))
                self._floor, self._window, self._check_every = self._queued, 0, self.rate
            out = parts[0] if len(parts) == 1 else np.concatenate(parts)
            return out, self._delay_s


class HandsFreeStage:
    """The capture path's stage: mic at its device rate -> processed 8 kHz uplink.

    ``active`` (called per read) switches the processing off without rebuilding it
    (``echo_cancel = "auto"`` follows the PTT mode); while off, the mic is only
    resampled and the tap is still drained so it stays aligned.
    """

    def __init__(
        self,
        handsfree: HandsFree,
        tap: FarEndTap | None,
        mic_rate: int,
        *,
        active: Callable[[], bool] | None = None,
    ) -> None:
        self.handsfree = handsfree
        self.tap = tap
        self.mic_rate = mic_rate
        self._active = active
        if tap is not None:
            tap.listening = True
        self._to_process = StreamResampler(mic_rate, PROCESS_RATE, gain=float(_TO_UNIT))
        self._to_uplink = StreamResampler(PROCESS_RATE, UPLINK_RATE, gain=float(_TO_INT16))
        self._bypass = StreamResampler(mic_rate, UPLINK_RATE)

    def process(self, mono: Pcm) -> Pcm:
        """One mic read (mono int16 at ``mic_rate``) -> uplink samples (8 kHz mono int16)."""
        if self._active is not None and not self._active():
            if self.tap is not None:
                self.tap.take_floats(round(mono.size * PROCESS_RATE / self.mic_rate))
            return self._bypass.process(mono)
        # int16 -> +-1.0 at 16 kHz -> the library -> int16 at 8 kHz: the scaling is in
        # the resamplers' taps, so the period costs one product each way
        x = self._to_process.process_floats(mono)
        if self.tap is not None:
            far, delay = self.tap.take_floats(x.size)
        else:
            far, delay = np.zeros(x.size, np.float32), None
        return self._to_uplink.process(self.handsfree.process_floats(x, far, delay))

    def publish(self, metrics: Metrics) -> HandsFreeStats:
        """ERLE, gain, voice probability, CPU and the reference's realignments as gauges."""
        stats = self.handsfree.publish(metrics)
        if self.tap is not None:
            metrics.set("handsfree_reference_dropped_samples", self.tap.dropped_samples)
            metrics.set("handsfree_reference_padded_samples", self.tap.padded_samples)
        return stats


def stage_factory(
    settings: HandsFreeSettings,
    tap: FarEndTap | None,
    *,
    metrics: Metrics | None = None,
    active: Callable[[], bool] | None = None,
) -> Callable[[int], HandsFreeStage | None]:
    """What :class:`~agent.audio.capture.Capture` calls at each mic open (with its rate).

    Without the library (``echo_cancel = "auto"`` on a device without the extra, the
    config check lets that pass in hold/toggle mode) it logs once and returns None:
    the mic goes on unprocessed.
    """
    told = False

    def build(mic_rate: int) -> HandsFreeStage | None:
        nonlocal told
        try:
            handsfree = HandsFree(settings, metrics=metrics)
        except HandsFreeUnavailable as exc:
            if not told:
                told = True
                logger.warning("hands-free processing off: %s", exc)
            if metrics is not None:
                metrics.inc("handsfree_errors_total", reason="unavailable")
            return None
        return HandsFreeStage(handsfree, tap, mic_rate, active=active)

    return build
