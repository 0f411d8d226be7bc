"""Streaming sample-rate conversion.

One :class:`StreamResampler` per stream: it keeps the filter state across chunks,
so 20 ms pieces resample exactly like the whole signal would (no clicks at chunk
edges), and it emits output for every chunk (no bursts). Work is done in float32;
the int16 result saturates (never wraps) and NaN becomes 0.

Two engines, chosen by the ratio:

- **integer ratios** (8k <-> 48k, 16k <-> 48k, 24k -> 48k, 16k -> 8k, ...): a
  polyphase FIR (Kaiser-windowed sinc, 80 dB stopband, passband flat within
  0.001 dB up to 85 % of the lower Nyquist), one small matrix product per chunk.
  About 2 ms of latency, a few microseconds per chunk.
- **other ratios** (44.1k <-> 48k, ...): libsoxr through ``soxr.ResampleStream``
  in its variable-rate mode with a fixed ratio. Measured here with 20 ms chunks,
  libsoxr's fixed-rate engines work in large FFT blocks (8k <-> 48k at ``HQ``
  emits nothing for 7 chunks, then ~150 ms at once); the variable-rate engine
  emits every chunk after a ~30 ms start, with >110 dB SNR, for ~1 ms of CPU per
  second of audio. (python-soxr calls ``vr`` experimental because of
  ``set_io_ratio``, which is not used here.) libsoxr's own int16 output is not
  used: it adds TPDF dither, turning digital silence into +-1 LSB noise.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soxr

from agent.pcm import Pcm, to_int16

logger = logging.getLogger(__name__)

Floats = npt.NDArray[np.float32]

STOPBAND_DB = 80.0
TRANSITION = 0.15  # transition band width, as a fraction of the lower sample rate
MAX_INTEGER_RATIO = 12  # larger integer ratios go to libsoxr (long filters)


def lowpass(taps: int, cutoff: float, *, beta: float) -> Floats:
    """Kaiser-windowed sinc low-pass; ``cutoff`` as a fraction of the sample rate (< 0.5)."""
    n = np.arange(taps) - (taps - 1) / 2.0
    h: npt.NDArray[np.float64] = 2.0 * cutoff * np.sinc(2.0 * cutoff * n) * np.kaiser(taps, beta)
    normalised: npt.NDArray[np.float64] = h / h.sum()  # unity gain at 0 Hz
    return normalised.astype(np.float32)


def _design(ratio: int) -> Floats:
    """Anti-alias / anti-image filter at the higher rate for a ``ratio``:1 conversion.

    Cut-off at the lower rate's Nyquist, transition band ``TRANSITION`` x the lower
    rate centred on it; the length follows Kaiser's formula for ``STOPBAND_DB``.
    """
    width = TRANSITION / ratio  # fraction of the higher rate
    beta = 0.1102 * (STOPBAND_DB - 8.7)
    taps = math.ceil((STOPBAND_DB - 7.95) / (2.285 * 2.0 * math.pi * width)) + 1
    taps = ratio * math.ceil(taps / ratio)  # whole polyphase branches
    return lowpass(taps, 0.5 / ratio, beta=beta)


class _Engine(Protocol):
    def process(self, x: Floats) -> Floats: ...  # (frames, channels) in and out

    def reset(self) -> None: ...


def _windows(buf: Floats, start: int, count: int, taps: int, step: int) -> Floats:
    """Rows ``buf[start + i*step : ... + taps]`` as a strided view (no copy).

    Built with the ndarray constructor: ``sliding_window_view`` costs ~10 us a call.
    """
    itemsize = buf.itemsize
    return np.ndarray((count, taps), np.float32, buf, start * itemsize, (step * itemsize, itemsize))


class _Upsampler:
    """Integer interpolation by ``factor``: every input sample becomes ``factor`` outputs."""

    def __init__(self, factor: int, channels: int, gain: float = 1.0) -> None:
        h = _design(factor) * (factor * gain)  # interpolation loses 1/factor of the energy
        self.taps = h.size // factor
        # bank[j, p]: tap applied to the j-th oldest of ``taps`` inputs for output phase p
        self._bank = np.ascontiguousarray(h.reshape(self.taps, factor)[::-1])
        self.factor = factor
        self.channels = channels
        self._history = [np.zeros(self.taps - 1, np.float32) for _ in range(channels)]

    def reset(self) -> None:
        for history in self._history:
            history[:] = 0.0

    def process(self, x: Floats) -> Floats:
        n = x.shape[0]
        if self.channels == 1:  # the common case, without the per-channel copies
            buf = np.concatenate((self._history[0], x.reshape(-1)))
            self._history[0] = buf[n:]
            mono: Floats = np.dot(_windows(buf, 0, n, self.taps, 1), self._bank)
            return mono.reshape(-1, 1)
        out = np.empty((n * self.factor, self.channels), np.float32)
        for c in range(self.channels):
            buf = np.concatenate((self._history[c], x[:, c]))
            self._history[c] = buf[n:]
            windows = _windows(buf, 0, n, self.taps, 1)
            out[:, c] = np.dot(windows, self._bank).reshape(-1)
        return out


class _Downsampler:
    """Integer decimation by ``factor``: one output per ``factor`` inputs.

    ``mono``: interleaved ``channels`` in, their average out, in the same one product
    (the filter's taps repeated per channel), not a downmix and then a filter.
    """

    def __init__(self, factor: int, channels: int, gain: float = 1.0, mono: bool = False) -> None:
        self._h = (_design(factor)[::-1] * gain).astype(np.float32)  # oldest -> newest
        self.taps = self._h.size
        self.factor = factor
        self.channels = channels
        self._mixed: Floats | None = None
        if mono and channels > 1:
            self._mixed = np.repeat(self._h / np.float32(channels), channels)
            self._history = [np.zeros((self.taps - 1) * channels, np.float32)]
        else:
            self._history = [np.zeros(self.taps - 1, np.float32) for _ in range(channels)]
        self._skip = 0  # where in the next buffer the next output's window starts

    def reset(self) -> None:
        for history in self._history:
            history[:] = 0.0
        self._skip = 0

    def process(self, x: Floats) -> Floats:
        starts = x.shape[0]  # windows that fit: history is taps - 1 long
        count = max(0, -(-(starts - self._skip) // self.factor))
        if self._mixed is not None:  # interleaved frames in, one mono product out
            c = self.channels
            buf = np.concatenate((self._history[0], x.reshape(-1)))
            self._history[0] = buf[starts * c :]
            skip, self._skip = self._skip, self._skip + count * self.factor - starts
            if not count:
                return np.zeros((0, 1), np.float32)
            rows = _windows(buf, skip * c, count, self.taps * c, self.factor * c)
            mixed: Floats = np.dot(rows, self._mixed)
            return mixed.reshape(-1, 1)
        if self.channels == 1:  # the common case, without the per-channel copies
            buf = np.concatenate((self._history[0], x.reshape(-1)))
            self._history[0] = buf[starts:]
            skip, self._skip = self._skip, self._skip + count * self.factor - starts
            if not count:
                return np.zeros((0, 1), np.float32)
            mono: Floats = np.dot(_windows(buf, skip, count, self.taps, self.factor), self._h)
            return mono.reshape(-1, 1)
        out = np.empty((count, self.channels), np.float32)
        for c in range(self.channels):
            buf = np.concatenate((self._history[c], x[:, c]))
            self._history[c] = buf[starts:]
            if count:
                windows = _windows(buf, self._skip, count, self.taps, self.factor)
                out[:, c] = np.dot(windows, self._h)
        self._skip = self._skip + count * self.factor - starts
        return out


class _Soxr:
    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        self._args = (in_rate, out_rate, channels)
        self._stream = soxr.ResampleStream(in_rate, out_rate, channels, "float32", "HQ", vr=True)

    def reset(self) -> None:
        self._stream.clear()

    def process(self, x: Floats) -> Floats:
        out: Floats = self._stream.resample_chunk(np.ascontiguousarray(x))
        return out

    def finish(self) -> Floats:
        out: Floats = self._stream.resample_chunk(
            np.zeros((0, self._args[2]), np.float32), last=True
        )
        return out


class StreamResampler:
    """Resample interleaved int16 audio from ``in_rate`` to ``out_rate``, chunk by chunk.

    Identity (no copy, no delay) when the rates are equal.

    ``gain`` scales the output (folded into the filter's taps: no extra pass), and
    ``mono`` averages the ``channels`` to one (folded into the decimating filter). The
    hands-free path uses both, to go from the speaker's int16 stereo to the canceller's
    +-1.0 mono, and back, in one product per period: on a board that sleeps between
    periods every numpy call costs several times what it does back to back.
    """

    def __init__(
        self, in_rate: int, out_rate: int, channels: int = 1, *, gain: float = 1.0,
        mono: bool = False,
    ) -> None:  # fmt: skip
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.channels = channels
        self.out_channels = 1 if mono else channels
        self._gain = np.float32(gain)
        self._engine: _Engine | None = None
        self._mix_before = mono and channels > 1  # engines that do not mix themselves
        self._gain_after = gain != 1.0
        self.latency_s = 0.0  # group delay of the filter
        # what the engine is fed: one channel when mixed before it, else the input's
        self._engine_channels = engine_channels = 1 if self._mix_before else channels
        if in_rate == out_rate:
            return
        if out_rate % in_rate == 0 and out_rate // in_rate <= MAX_INTEGER_RATIO:
            up = _Upsampler(out_rate // in_rate, engine_channels, gain)
            self.latency_s = (up.taps * up.factor - 1) / 2.0 / out_rate
            self._engine = up
            self._gain_after = False
        elif in_rate % out_rate == 0 and in_rate // out_rate <= MAX_INTEGER_RATIO:
            down = _Downsampler(in_rate // out_rate, channels, gain, mono)
            self.latency_s = (down.taps - 1) / 2.0 / in_rate
            self._engine = down
            self._mix_before = self._gain_after = False  # both done in its one product
            self._engine_channels = channels  # it takes the interleaved frames
        else:
            self._engine = _Soxr(in_rate, out_rate, engine_channels)
            self.latency_s = 0.030

    @property
    def identity(self) -> bool:
        return self._engine is None

    @property
    def engine(self) -> str:
        """Which engine converts: ``identity``, ``polyphase`` or ``soxr``."""
        if self._engine is None:
            return "identity"
        return "soxr" if isinstance(self._engine, _Soxr) else "polyphase"

    def process(self, pcm: npt.NDArray[Any]) -> Pcm:
        """Resample one chunk (``len % channels == 0``); returns the output ready now.

        Non-int16 input is first converted with saturation (NaN -> 0).
        """
        if self._engine is None and not (self._mix_before or self._gain_after):
            return to_int16(pcm)
        return to_int16(self.process_floats(np.asarray(pcm, dtype=np.float32)))

    def process_floats(self, samples: npt.NDArray[Any]) -> Floats:
        """Like :meth:`process`, float32 out (no rounding, no clipping); int16 or
        float32 in. For pipelines that convert to int16 once at the end (the mixer)."""
        x = np.asarray(samples, dtype=np.float32)
        if self._mix_before:
            x = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        if self._engine is not None:
            x = self._engine.process(x.reshape(-1, self._engine_channels)).reshape(-1)
        if self._gain_after:
            x = x * self._gain
        return x

    def flush(self) -> Pcm:
        """The audio still inside the filter (end of stream); the stream starts afresh."""
        if self._engine is None:
            return np.zeros(0, np.int16)
        if isinstance(self._engine, _Soxr):
            tail = self._engine.finish()
        else:  # push the filter's delay worth of zeros through
            zeros = math.ceil(self.latency_s * self.in_rate) + 1
            tail = self._engine.process(np.zeros((zeros, self._engine_channels), np.float32))
        self._engine.reset()
        return to_int16(tail.reshape(-1) * self._gain if self._gain_after else tail.reshape(-1))

    def reset(self) -> None:
        """Forget the filter state (after a gap, so old audio is not smeared into new)."""
        if self._engine is not None:
            self._engine.reset()
