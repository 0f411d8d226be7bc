"""An acoustic loop without hardware, for the hands-free tests and benchmark.

Through a private PulseAudio daemon (:class:`agent.sandbox.pulse.PulseRig`): the
agent's speaker plays into the null sink (``paspk``, 48 kHz, as the mixer renders)
and the mic captures from that sink's monitor (``pamon``, 16 kHz): whatever the
speaker plays comes back into the mic with a real, device-clocked delay, as in a
room. A near-end talker and stationary noise are further streams into the same sink.

The speaker period is handed to a :class:`~agent.audio.handsfree.FarEndTap` as the
agent's playback does, and each mic read goes through one
:class:`~agent.audio.handsfree.HandsFree` per configuration under test, all fed the
same samples, so "with" and "without" are compared on one capture.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agent.audio.handsfree import (
    PROCESS_RATE,
    FarEndTap,
    HandsFree,
    HandsFreeSettings,
    HandsFreeStats,
)
from agent.errors import AudioError
from agent.metrics import Metrics
from agent.pcm import Pcm, samples_per_frame
from agent.sandbox.pulse import PulseRig

if TYPE_CHECKING:
    from agent.hw.alsa import AlsaSink

SPEAKER_RATE = 48000
MIC_RATE = PROCESS_RATE


@dataclass(frozen=True)
class Scene:
    """What plays during one take; signals start at the take's start unless delayed."""

    seconds: float
    far: Pcm | None = None  # at SPEAKER_RATE: what the agent's speaker plays (the room)
    near: Pcm | None = None  # at MIC_RATE: the talker in front of the device
    near_start_s: float = 0.0
    noise: Pcm | None = None  # at MIC_RATE: a fan
    echo_gain: float = 1.0  # the speaker's level into the room (scales ``far``)


@dataclass
class Take:
    """One capture and what each configuration made of it (all at MIC_RATE)."""

    mic: Pcm
    outs: list[Pcm]
    stats: list[HandsFreeStats]
    far: Pcm | None = None  # the reference as the tap gave it (``keep_far``)
    tap_dropped: int = 0
    tap_padded: int = 0
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    underruns: dict[str, int] = field(default_factory=dict)  # per stream, after the start

    @property
    def disturbed(self) -> bool:
        """The machine starved the loop: the speaker ran dry for a period or more in
        all (underruns), so the take measures the load, not the processing. (Each
        underrun moves the echo against its reference and the canceller takes a few
        hundred ms to find it again: 60 ms of them in one take, at load 3.8, left an
        ERLE of 10.6 dB over the window.) Likewise a talker or fan stream that ran dry
        (it plays on, later: its windows no longer hold what they should)."""
        return (
            self.tap_padded >= MIC_RATE // 50 or bool(self.errors) or any(self.underruns.values())
        )


NICE = -5  # the systemd unit's Nice=: the agent's audio threads run at this priority


@contextmanager
def thread_nice(nice: int = NICE) -> Iterator[None]:
    """Run the calling thread at ``nice`` for the block (as the service's unit does;
    unchanged where that is not allowed)."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, before)


@contextmanager
def alsa_env(rig: PulseRig) -> Iterator[None]:
    """Point this process's alsa-lib at the rig's devices for the block."""
    saved = {k: os.environ.get(k) for k in rig.env()}
    os.environ.update(rig.env())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


WARM_S = 0.3  # a player's stream has played this long in real time before the scene starts
START_TIMEOUT_S = 10.0


@dataclass
class _Start:
    """The scene's common start. A new stream into the rig's daemon does not play at
    once: measured here, its first writes stalled 1.7-1.9 s, a different time for
    each stream, so a scene started at once reached the mic with its streams shifted
    by up to a second against each other and against the take's windows (a fan at
    -45 to -49 dBFS in a window where -40 was sent; the noise suppressor judged on
    its onset). So each player writes silence until its stream has played
    :data:`WARM_S` in real time (its writes block on the device clock), says so, and
    starts its signal only when every player is ready; the mic's take starts then too.
    """

    stop: threading.Event
    go: threading.Event = field(default_factory=threading.Event)
    ready: list[threading.Event] = field(default_factory=list)
    underruns: dict[str, int] = field(default_factory=dict)  # per player, after the go

    def player(self) -> threading.Event:
        event = threading.Event()
        self.ready.append(event)
        return event

    @property
    def all_ready(self) -> bool:
        return all(e.is_set() for e in self.ready)


def _player(
    name: str, pcm: Pcm, rate: int, start_s: float, start: _Start, ready: threading.Event,
    errors: list[str],
) -> None:  # fmt: skip
    with thread_nice():
        _play(name, pcm, rate, start_s, start, ready, errors)


def _warm_up(
    sink: AlsaSink, period: int, start: _Start, ready: threading.Event, *, hold: bool = True
) -> None:
    """Silence until the stream plays in real time and (``hold``) every player is ready."""
    silence = np.zeros(period, np.int16)
    blocking_since: float | None = None
    while not start.stop.is_set() and not start.go.is_set() and (hold or not ready.is_set()):
        t = time.monotonic()
        sink.write(silence)
        now = time.monotonic()
        if blocking_since is None and now - t >= 0.005:  # the device takes it in real time
            blocking_since = now
        if blocking_since is not None and now - blocking_since >= WARM_S:
            ready.set()


def _periods(signal: Pcm, period: int) -> Iterator[Pcm]:
    """``signal`` in periods of ``period`` samples, the last padded, then silence."""
    for i in itertools.count(0, period):
        chunk = signal[i : i + period]
        yield chunk if chunk.size == period else np.pad(chunk, (0, period - chunk.size))


def _play(
    name: str, pcm: Pcm, rate: int, start_s: float, start: _Start, ready: threading.Event,
    errors: list[str],
) -> None:  # fmt: skip
    """A talker or a fan: a stream of its own into the sink, as a person in the room."""
    from agent.hw.alsa import AlsaSink  # pyalsaaudio: only where the rig plays

    sink = AlsaSink("paspk", rate, metrics=Metrics(), label=name, clocked=True)
    period = samples_per_frame(rate)
    lead = np.zeros(round(start_s * rate), np.int16)
    signal = np.concatenate((lead, pcm))
    stop = start.stop
    try:
        sink.open()
        _warm_up(sink, period, start, ready)
        xruns_at_start = sink.xruns
        for chunk in _periods(signal, period):
            if stop.is_set():
                break
            sink.write(chunk)
            start.underruns[name] = sink.xruns - xruns_at_start
    except AudioError as exc:
        errors.append(f"{name}: {exc}")
    finally:
        sink.close()


class _Tick:
    """The speaker, written from the mic's loop: one period after each mic read, as the
    agent's capture thread ticks its speaker (:mod:`agent.audio.duplex`), so the
    reference and its echo run on one clock. (Written by a thread of its own, a late
    write left the tap without reference while the device still played its buffer: the
    tap gave silence, the reference slid against the echo, and under load one take in
    two lost 10-20 dB of ERLE to it.)"""

    def __init__(self, signal: Pcm, tap: FarEndTap) -> None:
        from agent.hw.alsa import AlsaSink

        self.sink = AlsaSink(
            "paspk", SPEAKER_RATE, metrics=Metrics(), label="speaker", clocked=True
        )
        self.period = samples_per_frame(SPEAKER_RATE)
        self.tap = tap
        self._chunks = _periods(signal, self.period)
        self._silence = np.zeros(self.period, np.int16)
        self._xruns_at_start = 0

    def open(self, start: _Start) -> None:
        self.sink.open()
        _warm_up(self.sink, self.period, start, threading.Event(), hold=False)

    def write_silence(self) -> None:
        self.sink.write(self._silence)

    def go(self) -> None:
        """The scene starts: underruns count from here."""
        self._xruns_at_start = self.sink.xruns

    def tick(self) -> None:
        chunk = next(self._chunks)
        self.sink.write(chunk)
        self.tap.rendered(chunk, SPEAKER_RATE, 1, None)

    @property
    def underruns(self) -> int:
        return self.sink.xruns - self._xruns_at_start

    def close(self) -> None:
        self.sink.close()


def record_steady(
    rig: PulseRig,
    scene: Scene,
    settings: list[HandsFreeSettings],
    *,
    keep_far: bool = False,
    attempts: int = 3,
    usable: Callable[[Take], bool] | None = None,
) -> Take:
    """:func:`record`, again (up to ``attempts`` times) while a take is
    :attr:`~Take.disturbed` or not ``usable`` (the scene did not reach the mic as
    played: on a loaded machine a stream starts late); the last take if none is."""
    take = record(rig, scene, settings, keep_far=keep_far)
    for _ in range(attempts - 1):
        if not take.disturbed and (usable is None or usable(take)):
            break
        take = record(rig, scene, settings, keep_far=keep_far)
    return take


def record(
    rig: PulseRig, scene: Scene, settings: list[HandsFreeSettings], *, keep_far: bool = False
) -> Take:
    """Play ``scene`` through the loop; process the capture with each of ``settings``."""
    from agent.hw.alsa import AlsaSource

    tap = FarEndTap()
    tap.listening = True  # the processors below take from it (as a capture stage would)
    processors = [HandsFree(s) for s in settings]
    stop = threading.Event()
    errors: list[str] = []
    players: list[threading.Thread] = []
    mic_parts: list[Pcm] = []
    far_parts: list[Pcm] = []
    outs: list[list[Pcm]] = [[] for _ in settings]
    start = _Start(stop)
    t0 = time.monotonic()
    with alsa_env(rig), thread_nice():
        source = AlsaSource("pamon", MIC_RATE, metrics=Metrics())
        source.open()
        far_signal = _far(scene)
        speaker = _Tick(far_signal, tap) if far_signal is not None else None
        try:
            if speaker is not None:
                speaker.open(start)
            streams: list[tuple[str, Pcm | None, float]] = [
                ("talker", scene.near, scene.near_start_s),
                ("noise", scene.noise, 0.0),
            ]
            for name, pcm, start_s in streams:
                if pcm is None:
                    continue
                t = threading.Thread(
                    target=_player,
                    args=(name, pcm, MIC_RATE, start_s, start, start.player(), errors),
                    name=f"rig-{name}", daemon=True,
                )  # fmt: skip
                t.start()
                players.append(t)
            deadline = time.monotonic() + START_TIMEOUT_S
            while not start.all_ready and not errors:  # the mic runs (unkept) meanwhile
                if time.monotonic() > deadline:
                    errors.append(f"the rig's streams did not start in {START_TIMEOUT_S:g} s")
                    break
                source.read()
                if speaker is not None:
                    speaker.write_silence()
            start.go.set()
            if speaker is not None:
                speaker.go()
            t0 = time.monotonic()
            captured = 0
            want = round(scene.seconds * MIC_RATE)
            while captured < want:
                x = source.read()
                if speaker is not None:
                    speaker.tick()
                far, delay = tap.take(x.size)
                mic_parts.append(x)
                if keep_far:
                    far_parts.append(far)
                for hf, out in zip(processors, outs, strict=True):
                    out.append(hf.process(x, far, delay))
                captured += x.size
        except AudioError as exc:  # the speaker (the players keep their own)
            errors.append(f"speaker: {exc}")
        finally:
            stop.set()
            for t in players:
                t.join(5.0)
            if speaker is not None:
                start.underruns["speaker"] = speaker.underruns
                speaker.close()
            source.close()
    mic = np.concatenate(mic_parts)
    return Take(
        mic=mic,
        outs=[_fit(np.concatenate(o), mic.size) for o in outs],
        stats=[hf.stats() for hf in processors],
        far=np.concatenate(far_parts) if keep_far else None,
        tap_dropped=tap.dropped_samples,
        # without a speaker stream the tap gives silence throughout: not a starved speaker
        tap_padded=tap.padded_samples if speaker is not None else 0,
        wall_s=time.monotonic() - t0,
        errors=errors,
        underruns=dict(start.underruns),
    )


def _far(scene: Scene) -> Pcm | None:
    if scene.far is None:
        return None
    if scene.echo_gain == 1.0:
        return scene.far
    scaled = scene.far.astype(np.float32) * np.float32(scene.echo_gain)
    return np.clip(np.round(scaled), -32768, 32767).astype(np.int16)


def _fit(x: Pcm, n: int) -> Pcm:
    """Pad (the last <10 ms still in the processing) or cut to ``n`` samples."""
    return x[:n] if x.size >= n else np.pad(x, (0, n - x.size))


# -- measurements -------------------------------------------------------------------


def level_db(x: Pcm) -> float:
    """RMS level, dBFS (full-scale square wave = 0)."""
    if x.size == 0:
        return -120.0
    f = x.astype(np.float64)
    return 10.0 * math.log10(max(float(np.mean(f * f)), 1e-3) / 32768.0**2)


def window(x: Pcm, start_s: float, end_s: float | None = None, rate: int = MIC_RATE) -> Pcm:
    return x[round(start_s * rate) : None if end_s is None else round(end_s * rate)]


def _best_lag(x: np.ndarray, r: np.ndarray, max_lag: int) -> int:
    """Lag in [-max_lag, max_lag] at which ``x`` is ``r`` delayed, for ``r`` covering
    ``x``'s span widened by ``max_lag`` on each side."""
    size = 1 << (x.size + r.size).bit_length()
    corr = np.fft.irfft(np.fft.rfft(r, size) * np.conj(np.fft.rfft(x, size)), size)
    # corr[k] = sum_i x[i] r[i + k], and x[i] = r[i + max_lag - lag]
    return max_lag - int(np.argmax(corr[: 2 * max_lag + 1]))


def component_db(
    x: Pcm, reference: Pcm, start_s: float, end_s: float, *, max_lag_s: float = 0.5,
    window_s: float = 0.5, taps: int = 33,
) -> float:  # fmt: skip
    """Level (dBFS) of the part of ``x`` that is ``reference`` (delayed, filtered) over
    ``[start_s, end_s)``.

    Per window: the lag that best aligns the reference with ``x`` (cross-correlation),
    then the least-squares fit of a short FIR filter (``taps`` around that lag) from
    the reference to ``x``; the fitted part's level is the component's. So a talker
    is told from echo and noise in a mix, a high-pass filter's phase does not count
    as attenuation, and a gap in a stream (an underrun on a loaded machine) shifts
    only its own window.
    """
    max_lag = round(max_lag_s * MIC_RATE)
    win = round(window_s * MIC_RATE)
    half = taps // 2
    pad = max_lag + half
    r = np.concatenate((np.zeros(pad), reference.astype(np.float64), np.zeros(x.size + pad)))
    fitted = 0.0
    n = 0
    for a in range(round(start_s * MIC_RATE), round(end_s * MIC_RATE) - win + 1, win):
        seg_x = x[a : a + win].astype(np.float64)
        seg_r = r[a + half : a + half + win + 2 * max_lag]  # reference[a - max_lag : ...]
        if not seg_r.any() or not seg_x.any():
            continue
        lag = _best_lag(seg_x, seg_r, max_lag)
        start = a + pad - lag  # index in r of reference[a - lag]
        basis = np.stack([r[start - k : start - k + win] for k in range(-half, half + 1)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, seg_x, rcond=None)
        fit = basis @ coef
        fitted += float(np.dot(fit, fit))
        n += win
    if n == 0:
        return -120.0
    return 10.0 * math.log10(max(fitted / n, 1e-3) / 32768.0**2)
