"""Level meter and VOX detector."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio.level import Vad
from agent.pcm import SILENCE_DBFS, dbfs
from tests.audio.signals import tone


def test_levels_read_as_a_meter_should() -> None:
    full_scale_sine = np.round(np.sin(np.arange(8000) * 2 * np.pi / 8) * 32767).astype(np.int16)
    assert dbfs(full_scale_sine) == pytest.approx(-3.01, abs=0.01)
    assert dbfs(tone(8000, 440, 1.0, dbfs=-32.0)) == pytest.approx(-32.0, abs=0.05)
    assert dbfs(np.full(160, -32768, np.int16)) == pytest.approx(0.0, abs=0.001)


def test_silence_and_empty_chunks_read_the_floor_not_minus_infinity() -> None:
    assert dbfs(np.zeros(160, np.int16)) == SILENCE_DBFS
    assert dbfs(np.zeros(0, np.int16)) == SILENCE_DBFS
    assert SILENCE_DBFS < dbfs(np.r_[np.zeros(159), 1].astype(np.int16)) < -100


def frames(level_dbfs: float | None, count: int) -> list[np.ndarray]:
    if level_dbfs is None:
        return [np.zeros(160, np.int16)] * count
    return [tone(8000, 300, 0.02, dbfs=level_dbfs)] * count


def test_vox_opens_on_speech_and_holds_for_the_hangover() -> None:
    vad = Vad(threshold_dbfs=-40.0, hangover_ms=600)
    assert not any(vad.update(f) for f in frames(-55.0, 10))  # background noise
    assert all(vad.update(f) for f in frames(-30.0, 5))  # talking
    held = [vad.update(f) for f in frames(None, 40)]  # a pause
    assert held[:30] == [True] * 30  # 600 ms of hangover at 20 ms a frame
    assert held[30:] == [False] * 10
    assert vad.update(frames(-30.0, 1)[0])  # talking again opens at once


def test_vox_counts_audio_time_not_calls() -> None:
    vad = Vad(threshold_dbfs=-40.0, hangover_ms=100, rate=16000)
    vad.update(tone(16000, 300, 0.02, dbfs=-20.0))
    assert vad.update(np.zeros(1600, np.int16))  # 100 ms of 16 kHz silence: still held
    assert not vad.update(np.zeros(16, np.int16))


def test_vox_rejects_a_negative_hangover() -> None:
    with pytest.raises(ValueError):
        Vad(-40.0, -1)
