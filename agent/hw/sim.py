"""Simulated audio devices: the same ports as :mod:`agent.hw.alsa`, no hardware.

Sources: :class:`ToneSource` (a sine), :class:`WavSource` (a 16-bit WAV file,
looped or not), :class:`SilenceSource` (exact zeros). Sink:
:class:`RecordingSink` (keeps what was played as a numpy array, and can stream
it to a WAV or raw file).

``paced=True`` sleeps so each 20 ms period takes 20 ms of wall clock, like a
real sound card (for the demo); ``paced=False`` returns at once (for tests).

Like gpiozero's mock pins, the devices can be "unplugged" (:meth:`unplug`):
opening, reading and writing then raise :class:`DeviceUnavailable` until
:meth:`plug` is called, which lets tests and the demo exercise recovery.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soxr

from agent.errors import AudioError, DeviceUnavailable
from agent.pcm import FRAME_MS, Pcm, downmix, samples_per_frame, to_int16

logger = logging.getLogger(__name__)


def write_wav(path: str | Path, pcm: Pcm, rate: int, channels: int = 1) -> Path:
    """Write int16 samples as a 16-bit PCM WAV file (a mic input for WavSource)."""
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return path


class _Pacer:
    """Sleeps so that the n-th period ends n x 20 ms after the first (no drift)."""

    def __init__(self, period_s: float = FRAME_MS / 1000) -> None:
        self.period_s = period_s
        self._start: float | None = None
        self._count = 0

    def reset(self) -> None:
        self._start, self._count = None, 0

    def wait(self) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self._count += 1
        delay = self._start + self._count * self.period_s - now
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.2:  # fell far behind (debugger, suspend): start counting afresh
            self._start, self._count = now, 0


class _SimPort:
    name: str

    def __init__(self, rate: int, channels: int, paced: bool, name: str) -> None:
        if rate <= 0 or rate % (1000 // FRAME_MS):
            raise ValueError(f"rate {rate} Hz cannot hold whole 20 ms periods")
        self.rate = rate
        self.channels = channels
        self.paced = paced
        self.name = name
        self.is_open = False
        self.opens = 0
        self._plugged = threading.Event()
        self._plugged.set()
        self._pacer = _Pacer()

    @property
    def period(self) -> int:
        """Samples per channel in one 20 ms period."""
        return samples_per_frame(self.rate)

    def unplug(self) -> None:
        """Simulate pulling the device: I/O raises DeviceUnavailable until :meth:`plug`."""
        self._plugged.clear()

    def plug(self) -> None:
        self._plugged.set()

    def open(self) -> None:
        if not self._plugged.is_set():
            raise DeviceUnavailable(f"{self.name}: no such device (unplugged)")
        if not self.is_open:
            self.is_open = True
            self.opens += 1
            self._pacer.reset()
            self._opened()

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            self._closed()

    def _check(self) -> None:
        if not self._plugged.is_set():
            self.is_open = False
            raise DeviceUnavailable(f"{self.name}: no such device (unplugged)")
        if not self.is_open:
            raise AudioError(f"{self.name}: not open")

    def _opened(self) -> None:
        pass

    def _closed(self) -> None:
        pass


class _SimSource(_SimPort):
    def read(self) -> Pcm:
        """One 20 ms period (interleaved int16)."""
        self._check()
        if self.paced:
            self._pacer.wait()
        return self._next(self.period)

    def _next(self, n: int) -> Pcm:
        raise NotImplementedError


class ToneSource(_SimSource):
    """A phase-continuous sine at ``freq_hz`` with RMS level ``dbfs`` (see agent.audio.level)."""

    def __init__(
        self,
        rate: int = 8000,
        freq_hz: float = 1000.0,
        dbfs: float = -20.0,
        paced: bool = False,
        *,
        channels: int = 1,
        name: str = "tone",
    ) -> None:
        super().__init__(rate, channels, paced, name)
        self.freq_hz = freq_hz
        self.dbfs = dbfs
        self.amplitude = 32768.0 * math.sqrt(2.0) * 10.0 ** (dbfs / 20.0)
        self._phase = 0.0

    def _next(self, n: int) -> Pcm:
        step = 2.0 * math.pi * self.freq_hz / self.rate
        phases = self._phase + step * np.arange(n)
        self._phase = float((self._phase + step * n) % (2.0 * math.pi))
        mono = to_int16(np.sin(phases) * self.amplitude)
        return mono if self.channels == 1 else np.repeat(mono, self.channels)


class SilenceSource(_SimSource):
    """Exact zeros (a muted or disconnected mic)."""

    def __init__(
        self, rate: int = 8000, paced: bool = False, *, channels: int = 1, name: str = "silence"
    ) -> None:
        super().__init__(rate, channels, paced, name)

    def _next(self, n: int) -> Pcm:
        return np.zeros(n * self.channels, np.int16)


class WavSource(_SimSource):
    """A 16-bit PCM WAV file played as a mic, converted to mono at ``rate`` Hz.

    At the end it starts over (``loop``) or delivers silence.
    """

    def __init__(
        self, path: str | Path, rate: int = 8000, loop: bool = True, paced: bool = False
    ) -> None:
        super().__init__(rate, 1, paced, str(path))
        self.path = Path(path)
        self.loop = loop
        self._samples = self._load()
        self._pos = 0

    def _load(self) -> Pcm:
        try:
            with wave.open(str(self.path), "rb") as wav:
                width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
                raw = wav.readframes(wav.getnframes())
        except (OSError, EOFError, wave.Error) as exc:
            raise AudioError(f"{self.path}: cannot read WAV: {exc}") from exc
        if width != 2:
            raise AudioError(f"{self.path}: {8 * width}-bit WAV, want 16-bit PCM")
        samples = np.frombuffer(raw, dtype="<i2").astype(np.int16)
        samples = downmix(samples, channels)
        if rate != self.rate and samples.size:
            samples = to_int16(soxr.resample(samples.astype(np.float32), rate, self.rate))
        return samples

    def _next(self, n: int) -> Pcm:
        out = np.zeros(n, np.int16)
        filled = 0
        total = self._samples.size
        while filled < n and total:
            if self._pos >= total:
                if not self.loop:
                    break
                self._pos = 0
            take = min(n - filled, total - self._pos)
            out[filled : filled + take] = self._samples[self._pos : self._pos + take]
            filled += take
            self._pos += take
        return out


class RecordingSink(_SimPort):
    """Keeps everything written (``samples``); optionally streams it to ``path``.

    ``path`` ending in ``.wav`` is written as a WAV file, anything else as raw
    little-endian int16. ``keep_s`` bounds what stays in memory (the newest
    seconds), for long demo runs; None keeps everything.
    """

    def __init__(
        self,
        rate: int = 48000,
        channels: int = 1,
        path: str | Path | None = None,
        paced: bool = False,
        *,
        keep_s: float | None = None,
        name: str = "recorder",
    ) -> None:
        super().__init__(rate, channels, paced, name)
        self.path = None if path is None else Path(path)
        self.keep_s = keep_s
        self._chunks: list[Pcm] = []
        self._kept = 0
        self._lock = threading.Lock()
        self._wav: wave.Wave_write | None = None
        self._raw: BinaryIO | None = None
        self.frames_written = 0  # samples per channel, in total

    def _opened(self) -> None:
        if self.path is None or self._wav is not None or self._raw is not None:
            return
        if self.path.suffix.lower() == ".wav":
            wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed in _closed()
            wav.setnchannels(self.channels)
            wav.setsampwidth(2)
            wav.setframerate(self.rate)
            self._wav = wav
        else:
            self._raw = self.path.open("wb")

    def _closed(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def write(self, pcm: Pcm) -> None:
        self._check()
        chunk = np.array(pcm, dtype=np.int16).reshape(-1)
        if chunk.size % self.channels:
            raise AudioError(f"{self.name}: {chunk.size} samples is not whole frames")
        data = chunk.astype("<i2").tobytes()
        if self._wav is not None:
            self._wav.writeframesraw(data)
        elif self._raw is not None:
            self._raw.write(data)
        with self._lock:
            self._chunks.append(chunk)
            self._kept += chunk.size
            self.frames_written += chunk.size // self.channels
            if self.keep_s is not None:
                limit = int(self.keep_s * self.rate) * self.channels
                while self._chunks and self._kept - self._chunks[0].size >= limit:
                    self._kept -= self._chunks.pop(0).size
        if self.paced:
            self._pacer.wait()

    @property
    def samples(self) -> Pcm:
        """Everything kept so far, interleaved int16 (a copy)."""
        with self._lock:
            if not self._chunks:
                return np.zeros(0, np.int16)
            return np.concatenate(self._chunks)

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._kept = 0


class ClockedSink(RecordingSink):
    """A recording speaker with a device buffer drained by its own clock (``PolledSink``).

    It plays ``rate x speed`` frames per second of wall clock (``speed=1.001``: a card
    whose crystal runs 0.1 % fast) out of a buffer of ``periods`` 20 ms periods, never
    blocks, and tells its room (:meth:`frames_free`) like ALSA's ``avail()``. Running dry
    is an underrun (``underruns``, the buffer restarts empty); writing past the buffer
    an overrun (``overruns``, the surplus is dropped). Fed by :mod:`agent.audio.duplex`.
    """

    def __init__(
        self,
        rate: int = 48000,
        channels: int = 1,
        *,
        speed: float = 1.0,
        periods: int = 4,
        name: str = "clocked",
    ) -> None:
        super().__init__(rate, channels, name=name)
        self.speed = speed
        self.buffer_frames = periods * samples_per_frame(rate)
        self.underruns = 0
        self.overruns = 0
        self._queued = 0.0  # frames in the device buffer at _t
        self._t: float | None = None  # None: stopped (nothing written since open/underrun)

    def _opened(self) -> None:
        super()._opened()
        self._queued, self._t = 0.0, None

    def _drain(self) -> float:
        now = time.monotonic()
        if self._t is not None:
            self._queued -= (now - self._t) * self.rate * self.speed
            if self._queued < 0:
                self.underruns += 1
                self._queued, now = 0.0, now  # restarts when written again
                self._t = None
                return 0.0
        self._t = now if self._t is not None else None
        return self._queued

    def frames_free(self) -> int:
        self._check()
        return self.buffer_frames - math.ceil(self._drain())

    def frames_queued(self) -> int:
        self._check()
        return math.floor(self._drain())

    def write(self, pcm: Pcm) -> None:
        queued = self._drain()
        super().write(pcm)
        frames = np.asarray(pcm).size // self.channels
        if queued + frames > self.buffer_frames:
            self.overruns += 1
            frames = max(0, int(self.buffer_frames - queued))
        self._queued = queued + frames
        if self._t is None:
            self._t = time.monotonic()
