"""The ALSA ports on real alsa-lib, through the file plugin (docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import AudioError, DeviceUnavailable
from agent.hw.alsa import AlsaSink, AlsaSource
from agent.metrics import Metrics
from tests.audio.testbed import AlsaTestbed


def test_a_capture_device_reads_20ms_periods_bit_exact(alsa: AlsaTestbed) -> None:
    samples = np.arange(-16000, 16000, 10, dtype=np.int16)[:3200]
    alsa.write_mic(samples)
    for rate in (8000, 16000, 48000):
        source = AlsaSource("testmic", rate, metrics=Metrics())
        source.open()
        source.open()  # idempotent
        try:
            first = source.read()
            assert first.size == rate // 50 and source.rate == rate
            assert np.array_equal(first, samples[: rate // 50])
        finally:
            source.close()
            source.close()
        assert not source.is_open


def test_a_playback_device_writes_exactly_what_it_is_given(alsa: AlsaTestbed) -> None:
    periods = [np.full(960, i - 25, np.int16) for i in range(50)]
    sink = AlsaSink("testspk", 48000, metrics=Metrics())
    sink.open()
    for period in periods:
        sink.write(period)
    sink.close()
    assert np.array_equal(alsa.read_spk(), np.concatenate(periods))


def test_a_stereo_playback_device_takes_interleaved_frames(alsa: AlsaTestbed) -> None:
    sink = AlsaSink("testspk", 48000, channels=2, metrics=Metrics())
    sink.open()
    stereo = np.tile(np.array([1000, -1000], np.int16), 960)
    sink.write(stereo)
    with pytest.raises(AudioError, match="whole frames"):
        sink.write(np.zeros(3, np.int16))
    sink.close()
    assert np.array_equal(alsa.read_spk(), stereo)


def test_devices_that_do_not_exist_are_unavailable_not_crashes(alsa: AlsaTestbed) -> None:
    with pytest.raises(DeviceUnavailable, match="gonemic"):
        AlsaSource("gonemic", 8000, metrics=Metrics()).open()
    with pytest.raises(DeviceUnavailable, match="plughw:CARD=Nope,DEV=0"):
        AlsaSink("plughw:CARD=Nope,DEV=0", 48000, metrics=Metrics()).open()


def test_reading_or_writing_a_closed_device_is_an_audio_error(alsa: AlsaTestbed) -> None:
    with pytest.raises(AudioError, match="not open"):
        AlsaSource("testmic", 8000, metrics=Metrics()).read()
    with pytest.raises(AudioError, match="not open"):
        AlsaSink("testspk", 8000, metrics=Metrics()).write(np.zeros(160, np.int16))
