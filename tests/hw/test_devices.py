"""``field-agent devices`` and the audio selftest, on a machine with no sound card."""

from __future__ import annotations

import numpy as np

from agent.hw.devices import list_devices, probe_rates, selftest_audio
from agent.hw.sim import RecordingSink, SilenceSource, ToneSource
from tests.audio.signals import level_at, tone
from tests.audio.testbed import AlsaTestbed


def test_devices_says_plainly_that_there_is_no_sound_card(alsa: AlsaTestbed) -> None:
    text = list_devices()
    assert "No sound cards found" in text
    assert "Capture devices" in text and "Playback devices" in text
    # PCMs defined in the ALSA configuration are still named, for the curious
    assert "testmic" in text


def test_probing_a_device_reports_the_rates_it_accepts(alsa: AlsaTestbed) -> None:
    assert probe_rates("testmic", capture=True).endswith("Hz")


def test_selftest_plays_a_tone_and_meters_the_mic(alsa: AlsaTestbed) -> None:
    alsa.write_mic(tone(8000, 300, 3.0, dbfs=-30.0))
    meter: list[str] = []
    ok, report = selftest_audio("testmic", "testspk", seconds=2.0, out=meter.append)
    assert ok, report
    assert "speaker testspk: played a 1000 Hz tone at -12 dBFS for 2.0 s: ok" in report
    assert "mic testmic: level average -30.0 dBFS" in report
    assert report.rstrip().endswith("PASS")
    assert len(meter) == 4 and all("dBFS |" in line for line in meter)  # twice a second
    played = alsa.read_spk()
    assert played.size == 2 * 48000
    assert abs(level_at(played, 48000, 1000) + 12.0) < 0.1


def test_selftest_fails_clearly_without_a_mic(alsa: AlsaTestbed) -> None:
    ok, report = selftest_audio("gonemic", "testspk", seconds=0.5)
    assert not ok
    assert "mic gonemic: FAILED" in report and report.rstrip().endswith("FAIL")


def test_selftest_fails_on_a_mic_that_only_sends_zeros() -> None:
    sink = RecordingSink(48000)
    ok, report = selftest_audio(
        "dead-mic", "speaker", seconds=1.0,
        open_source=lambda dev, rate: SilenceSource(rate, name=dev),
        open_sink=lambda dev, rate: sink,
    )  # fmt: skip
    assert not ok
    assert "only exact zeros" in report
    assert sink.frames_written == 48000  # the speaker half still ran


def test_selftest_with_simulated_devices_passes() -> None:
    sink = RecordingSink(48000)
    ok, report = selftest_audio(
        "sim-mic", "sim-speaker", seconds=1.0,
        open_source=lambda dev, rate: ToneSource(rate, 500, -40.0, name=dev),
        open_sink=lambda dev, rate: sink,
    )  # fmt: skip
    assert ok, report
    assert "level average -40.0 dBFS" in report
    assert np.abs(sink.samples).max() > 0
