"""Simulated devices: what the demo and the tests stand on."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from agent.errors import AudioError, DeviceUnavailable
from agent.hw.ports import AudioSink, AudioSource, device_name
from agent.hw.sim import RecordingSink, SilenceSource, ToneSource, WavSource
from tests.audio.signals import level_at, tone


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())


def test_the_simulated_devices_satisfy_the_ports(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", tone(8000, 300, 0.1), 8000)
    sources: list[AudioSource] = [
        ToneSource(8000),
        SilenceSource(),
        WavSource(tmp_path / "a.wav"),
    ]
    sink: AudioSink = RecordingSink()
    assert [device_name(s) for s in sources] == ["tone", "silence", str(tmp_path / "a.wav")]
    assert device_name(sink) == "recorder"


def test_a_tone_source_gives_a_continuous_sine_at_its_level() -> None:
    source = ToneSource(48000, 1000, -18.0)
    source.open()
    periods = [source.read() for _ in range(50)]
    assert {p.size for p in periods} == {960}
    pcm = np.concatenate(periods)
    assert level_at(pcm, 48000, 1000) == pytest.approx(-18.0, abs=0.05)
    assert np.abs(np.diff(pcm.astype(int))).max() < 0.2 * 32768 * 10 ** (-18 / 20) * 1.5


def test_a_wav_file_is_converted_to_the_mic_format_and_looped(tmp_path: Path) -> None:
    left, right = tone(16000, 400, 0.5, dbfs=-20), tone(16000, 400, 0.5, dbfs=-20)
    write_wav(tmp_path / "s.wav", np.stack([left, right], 1).reshape(-1), 16000, channels=2)
    looped = WavSource(tmp_path / "s.wav", rate=8000, loop=True)
    looped.open()
    pcm = np.concatenate([looped.read() for _ in range(100)])  # 2 s from a 0.5 s file
    assert level_at(pcm[800:], 8000, 400) == pytest.approx(-20, abs=0.2)
    once = WavSource(tmp_path / "s.wav", rate=8000, loop=False)
    once.open()
    tail = np.concatenate([once.read() for _ in range(100)])[4000 + 160 :]
    assert not tail.any()  # after the end: silence


def test_unreadable_or_unsupported_wav_files_are_audio_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    with pytest.raises(AudioError):
        WavSource(tmp_path / "junk.wav")
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(b"\x80" * 800)
    with pytest.raises(AudioError, match="16-bit"):
        WavSource(tmp_path / "8bit.wav")
    with pytest.raises(AudioError):
        WavSource(tmp_path / "missing.wav")


def test_a_recording_sink_keeps_and_files_what_was_played(tmp_path: Path) -> None:
    x = tone(16000, 500, 0.4)
    for path in (tmp_path / "out.wav", tmp_path / "out.raw"):
        sink = RecordingSink(16000, 1, path=path)
        sink.open()
        for i in range(0, x.size, 320):
            sink.write(x[i : i + 320])
        sink.close()
        assert np.array_equal(sink.samples, x)
        assert sink.frames_written == x.size
        if path.suffix == ".wav":
            with wave.open(str(path)) as wav:
                assert (wav.getframerate(), wav.getnchannels()) == (16000, 1)
                saved = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
        else:
            saved = np.frombuffer(path.read_bytes(), "<i2")
        assert np.array_equal(saved, x)


def test_a_recording_sink_can_bound_its_memory() -> None:
    sink = RecordingSink(8000, 1, keep_s=0.1)
    sink.open()
    for i in range(100):
        sink.write(np.full(160, i, np.int16))
    assert sink.frames_written == 16000
    kept = sink.samples
    assert 800 <= kept.size <= 960 and kept[-1] == 99  # the newest ~0.1 s


def test_a_recording_sink_refuses_partial_frames() -> None:
    sink = RecordingSink(48000, 2)
    sink.open()
    with pytest.raises(AudioError):
        sink.write(np.zeros(3, np.int16))


def test_unplugging_makes_io_fail_until_plugged_back() -> None:
    source = ToneSource(8000)
    source.open()
    source.unplug()
    with pytest.raises(DeviceUnavailable):
        source.read()
    with pytest.raises(DeviceUnavailable):
        source.open()
    source.plug()
    source.open()
    assert source.read().size == 160 and source.opens == 2
    sink = RecordingSink(8000)
    sink.open()
    sink.unplug()
    with pytest.raises(DeviceUnavailable):
        sink.write(np.zeros(160, np.int16))


def test_reading_a_closed_device_is_an_audio_error() -> None:
    with pytest.raises(AudioError, match="not open"):
        SilenceSource().read()


def test_rates_without_whole_20ms_periods_are_refused() -> None:
    with pytest.raises(ValueError):
        ToneSource(11025)
