"""``field-agent selftest``'s echo check: how much of the speaker the mic hears, with
and without the echo canceller.

Plays a probe (bursts of speech-band noise, 300 ms on, 200 ms off) on the speaker
while reading the mic; each speaker period goes to a
:class:`~agent.audio.handsfree.FarEndTap` as the agent's playback does, and each mic
read through :class:`~agent.audio.handsfree.HandsFreeStage`'s processing. After the
canceller's first 2 s, prints the probe's level in the mic as it is and after
cancellation, and the difference (the echo return loss enhancement).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.audio.handsfree import PROCESS_RATE, FarEndTap, HandsFree, HandsFreeSettings
from agent.audio.resample import StreamResampler
from agent.errors import AudioError
from agent.hw.ports import AudioSink, AudioSource
from agent.metrics import Metrics
from agent.pcm import FRAMES_PER_S, Pcm, downmix, samples_per_frame

SETTLE_S = 2.0  # the canceller converges in this; the figures are over the rest


@dataclass(frozen=True)
class EchoCheck:
    heard_dbfs: float  # the probe in the mic, no cancellation
    cancelled_dbfs: float  # the same, after the canceller

    @property
    def erle_db(self) -> float:
        return self.heard_dbfs - self.cancelled_dbfs


def probe(rate: int, seconds: float, dbfs: float = -20.0, seed: int = 11) -> Pcm:
    """Bursts of noise shaped to the speech band (300-3400 Hz), RMS ``dbfs`` while on."""
    rng = np.random.default_rng(seed)
    n = round(rate * seconds)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(f < 300) | (f > 3400)] = 0
    x = np.fft.irfft(spectrum, n)
    on = (np.arange(n) % round(0.5 * rate)) < round(0.3 * rate)
    x *= on
    rms = float(np.sqrt(np.mean(x[on] ** 2))) or 1.0
    x *= 32768.0 * 10.0 ** (dbfs / 20.0) / rms
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def _level(x: Pcm) -> float:
    if x.size == 0:
        return -120.0
    f = x.astype(np.float64)
    return 10.0 * math.log10(max(float(np.mean(f * f)), 1e-3) / 32768.0**2)


def check_echo(
    source: AudioSource, sink: AudioSink, *, seconds: float = 6.0, dbfs: float = -20.0
) -> EchoCheck:
    """Play the probe on ``sink`` (opened here) while reading ``source`` (opened here)."""
    seconds = max(seconds, SETTLE_S + 2.0)
    tap = FarEndTap()
    tap.listening = True
    handsfree = HandsFree(HandsFreeSettings(echo_cancel=True), metrics=Metrics())
    stop = threading.Event()
    failure: list[str] = []

    def play() -> None:
        period = samples_per_frame(sink.rate)
        signal = probe(sink.rate, seconds + 1.0, dbfs)
        try:
            for i in range(0, signal.size - period + 1, period):
                if stop.is_set():
                    break
                chunk = signal[i : i + period]
                out = np.repeat(chunk, sink.channels) if sink.channels > 1 else chunk
                sink.write(out)
                tap.rendered(out, sink.rate, sink.channels, None)
        except AudioError as exc:
            failure.append(str(exc))
        finally:
            sink.close()

    sink.open()
    player = threading.Thread(target=play, name="selftest-echo", daemon=True)
    source.open()
    player.start()
    to16 = StreamResampler(source.rate, PROCESS_RATE)
    raw: list[Pcm] = []
    done: list[Pcm] = []
    try:
        for _ in range(round(seconds * FRAMES_PER_S)):
            x = to16.process(downmix(source.read().reshape(-1), source.channels))
            far, delay = tap.take(x.size)
            raw.append(x)
            done.append(handsfree.process(x, far, delay))
    finally:
        stop.set()
        source.close()
        player.join(5.0)
    if failure:
        raise AudioError(f"speaker: {failure[0]}")
    start = round(SETTLE_S * PROCESS_RATE)
    heard, cancelled = np.concatenate(raw)[start:], np.concatenate(done)[start:]
    return EchoCheck(_level(heard), _level(cancelled[: heard.size]))


def echo_report(
    capture_device: str,
    playback_device: str,
    *,
    capture_rate: int,
    playback_rate: int,
    seconds: float = 6.0,
    open_source: Callable[[str, int], AudioSource] | None = None,
    open_sink: Callable[[str, int], AudioSink] | None = None,
) -> tuple[bool, str]:
    """(ok, lines) for ``selftest``: ok unless a device failed."""
    from agent.hw.alsa import AlsaSink, AlsaSource

    metrics = Metrics()
    source = (open_source or (lambda d, r: AlsaSource(d, r, metrics=metrics)))(
        capture_device, capture_rate
    )
    sink = (open_sink or (lambda d, r: AlsaSink(d, r, metrics=metrics)))(
        playback_device, playback_rate
    )
    try:
        result = check_echo(source, sink, seconds=seconds)
    except AudioError as exc:
        return False, f"echo check: FAILED: {exc}"
    lines = [
        f"echo check: the mic hears the speaker's probe at {result.heard_dbfs:.1f} dBFS "
        f"without cancellation, {result.cancelled_dbfs:.1f} dBFS with it "
        f"({result.erle_db:.1f} dB down)"
    ]
    if result.heard_dbfs < -60.0:
        lines.append("echo check: the mic barely hears the speaker: little echo to cancel")
    elif result.erle_db < 20.0:
        lines.append(
            "echo check: weak cancellation: is the speaker distorting (volume too high), "
            "or the mic clipping?"
        )
    return True, "\n".join(lines)
