"""Speech-like test signals (numpy only): voiced syllables and pauses, and stationary noise.

Not speech, but what the processing reacts to as speech: a glottal pulse train with
a moving pitch through vowel formants, in syllables of 120-300 ms with pauses
between them (the noise suppressor tells them from a fan; the echo canceller sees a
non-stationary, coloured signal). Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

from agent.pcm import Pcm

# (F1, F2, F3) Hz of a few vowels
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480))


def _scaled(x: np.ndarray, dbfs: float) -> Pcm:
    rms = float(np.sqrt(np.mean(x**2))) or 1.0
    x = x * (32768.0 * 10.0 ** (dbfs / 20.0) / rms)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def talker(
    rate: int, seconds: float, *, seed: int = 1, f0: float = 120.0, dbfs: float = -26.0
) -> Pcm:
    """A talker at ``dbfs`` RMS (over the whole signal, pauses included)."""
    rng = np.random.default_rng(seed)
    n = round(rate * seconds)
    out = np.zeros(n)
    t = 0
    while t < n:
        m = min(round(rate * rng.uniform(0.12, 0.3)), n - t)
        gap = round(rate * rng.uniform(0.03, 0.25))
        k = np.arange(m)
        wobble = 0.15 * np.sin(2 * np.pi * rng.uniform(1, 3) * k / rate + rng.uniform(0, 6))
        pitch = f0 * rng.uniform(0.85, 1.2) * (1 + wobble)
        pulses = np.diff(np.floor(np.cumsum(pitch / rate)), prepend=0.0)
        exc = pulses + 0.05 * rng.standard_normal(m)
        if rng.random() < 0.2:  # a fricative
            exc = 0.3 * rng.standard_normal(m)
        fr = np.fft.rfftfreq(m, 1 / rate)
        f1, f2, f3 = _VOWELS[int(rng.integers(len(_VOWELS)))]
        env = sum(
            a / (1 + ((fr - f) / bw) ** 2)
            for f, bw, a in ((f1, 90, 1.0), (f2, 120, 0.5), (f3, 170, 0.25))
        )
        out[t : t + m] += np.fft.irfft(np.fft.rfft(exc) * env, m) * np.hanning(m)
        t += m + gap
    return _scaled(out, dbfs)


def fan_noise(rate: int, seconds: float, *, seed: int = 3, dbfs: float = -40.0) -> Pcm:
    """Stationary noise with a pink-ish (1/f) spectrum and a hum: a fan, a forklift idling."""
    rng = np.random.default_rng(seed)
    n = round(rate * seconds)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    spectrum /= np.sqrt(np.maximum(f, 50.0))
    x = np.fft.irfft(spectrum, n)
    x += 0.3 * np.std(x) * np.sin(2 * np.pi * 100.0 * np.arange(n) / rate)
    return _scaled(x, dbfs)
