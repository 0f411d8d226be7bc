"""End to end: a tone on the fake Orgo computer, through the link, the real Mixer and
the real playback pipeline, to a simulated speaker paced like a sound card.

The speaker is :class:`agent.hw.sim.RecordingSink` (paced at 20 ms per period),
not the ALSA file plugin: that plugin is not paced, so the playback thread would
drain the jitter buffer as fast as it can. Pitch and level are properties of the
mix, which any speaker only copies.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent.audio.mixer import Mixer
from agent.audio.playback import Playback
from agent.hw.sim import RecordingSink
from agent.pcm import Pcm
from agent.sandbox.orgo import tone
from tests.support import wait_until

from .conftest import Harness

OUT_RATE = 48000
TONE_HZ = 440.0
TONE_DBFS = -12.0  # peak level of the sine on the Orgo computer
PERIOD = OUT_RATE // 50


def pitch_and_level(pcm: Pcm, rate: int) -> tuple[float, float]:
    """(frequency of the strongest bin, interpolated; level in dBFS of the sine's peak)."""
    x = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    offset = 0.5 * (a - c) / (a - 2 * b + c)  # parabolic interpolation between bins
    freq = (k + offset) * rate / len(x)
    rms = float(np.sqrt(np.mean(x**2)))
    return freq, float(20 * np.log10(rms * np.sqrt(2) / 32767))


@pytest.mark.parametrize("announce", [None, (48000, 2)], ids=["24k-mono", "48k-stereo"])
async def test_tone_plays_at_the_right_pitch_and_level(
    harness: Harness, announce: tuple[int, int] | None
) -> None:
    mixer = Mixer(OUT_RATE, metrics=harness.metrics)
    mixer.volume = 1.0
    harness.mixer = mixer  # type: ignore[assignment]
    harness.fake.generator = tone(TONE_HZ, TONE_DBFS)
    harness.fake.announce = announce
    speaker = RecordingSink(OUT_RATE, 1, paced=True)
    playback = asyncio.create_task(
        Playback(speaker, mixer, metrics=harness.metrics, status=harness.status).run()
    )
    try:
        harness.start()
        await wait_until(lambda: harness.state() == "up", what="link up")
        await asyncio.sleep(0.9)
    finally:
        playback.cancel()
        await asyncio.gather(playback, return_exceptions=True)
    periods = speaker.samples.reshape(-1, PERIOD)
    audible = [p for p in periods if np.any(p)]
    assert len(audible) >= 35, f"only {len(audible)} periods of sound in 0.9 s"
    played = np.concatenate(audible[-25:])  # the last 500 ms, past the start-up
    freq, level = pitch_and_level(played, OUT_RATE)
    assert abs(freq - TONE_HZ) <= 2.0, f"{freq:.1f} Hz"
    assert abs(level - TONE_DBFS) <= 1.0, f"{level:.2f} dBFS"
    src = mixer.source("orgo")
    assert src is not None and (src.rate, src.channels) == (announce or (24000, 1))
