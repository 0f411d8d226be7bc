"""Signal helpers for the audio tests: tones, FFT levels, SNR against a fitted sine."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


def tone(rate: int, freq: float, seconds: float, dbfs: float = -20.0) -> npt.NDArray[np.int16]:
    """A sine whose RMS level is ``dbfs`` (the convention of agent.audio.level)."""
    amp = 32768.0 * math.sqrt(2.0) * 10.0 ** (dbfs / 20.0)
    n = np.arange(round(seconds * rate))
    samples: npt.NDArray[np.float64] = np.round(np.sin(2.0 * np.pi * freq * n / rate) * amp)
    return np.clip(samples, -32768, 32767).astype(np.int16)


def level_at(samples: npt.NDArray[np.generic], rate: int, freq: float) -> float:
    """RMS level (dBFS, sine convention) of the component at ``freq``, from a Hann FFT.

    The peak bin's neighbours are summed in power, so the estimate does not depend
    on where ``freq`` falls between bins (within ~0.1 dB).
    """
    x = np.asarray(samples, dtype=np.float64)
    window = np.hanning(x.size)
    spectrum = np.fft.rfft(x * window)
    k = round(freq * x.size / rate)
    band = spectrum[max(k - 3, 0) : k + 4]
    power = float(np.sum(np.abs(band) ** 2))
    # Parseval for a Hann window: a sine of amplitude A gives sum|X|^2 = (A^2/4) * N * sum(w^2)
    amplitude = math.sqrt(4.0 * power / (x.size * float(np.sum(window**2))))
    rms = amplitude / math.sqrt(2.0)
    return 20.0 * math.log10(max(rms, 1e-9) / 32768.0)


def sine_snr(samples: npt.NDArray[np.generic], rate: int, freq: float) -> tuple[float, float]:
    """(SNR in dB, amplitude) of ``samples`` against the best-fitting sine at ``freq``.

    The fit absorbs any delay, so a resampler's latency does not count as error.
    """
    y = np.asarray(samples, dtype=np.float64)
    n = np.arange(y.size)
    basis = np.stack(
        [np.sin(2 * np.pi * freq * n / rate), np.cos(2 * np.pi * freq * n / rate)], axis=1
    )
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    fit = basis @ coef
    err = y - fit
    return 10.0 * math.log10(float(np.sum(fit**2)) / float(np.sum(err**2))), float(np.hypot(*coef))
