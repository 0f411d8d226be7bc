"""Capture and playback pipelines on real alsa-lib (file plugin) and simulated devices."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import threading
from collections.abc import Callable

import numpy as np
import pytest

from agent.audio.capture import Capture, CaptureProcessor
from agent.audio.jitter import JitterPolicy
from agent.audio.mixer import Mixer
from agent.audio.playback import Playback
from agent.backoff import BackoffPolicy
from agent.hw.alsa import AlsaSink, AlsaSource
from agent.hw.sim import RecordingSink, SilenceSource, ToneSource
from agent.metrics import Metrics
from agent.pcm import Frame
from agent.status import Led, LinkState, StatusBoard
from tests.audio.signals import level_at, sine_snr, tone
from tests.audio.testbed import AlsaTestbed

FAST = BackoffPolicy(initial_s=0.01, factor=2.0, cap_s=0.05, jitter=0.0)
# The file plugin is not paced: the capture thread reads as fast as it can, so the
# bounded frame queue would drop the oldest frames (by design) before the test reads
# them. Tests that check every sample give it room for the whole file.
ROOMY = 2000


async def first_frames(capture: Capture, count: int) -> list[Frame]:
    frames: list[Frame] = []
    async with contextlib.aclosing(capture.frames()) as stream:
        async for frame in stream:
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll a condition set from another thread (status, device), for at most 10 s."""
    async with asyncio.timeout(10.0):
        while not condition():  # noqa: ASYNC110 - the state changes in an audio thread
            await asyncio.sleep(0.005)


def device_state(status: StatusBoard, name: str) -> LinkState | None:
    part = status.devices.get(name)
    return None if part is None else part.state


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def status() -> StatusBoard:
    return StatusBoard()


# -- capture ------------------------------------------------------------------------


async def test_capture_at_8khz_returns_the_devices_samples_bit_exact(
    alsa: AlsaTestbed, metrics: Metrics, status: StatusBoard
) -> None:
    samples = np.random.default_rng(1).integers(-32768, 32768, 160 * 60).astype(np.int16)
    alsa.write_mic(samples)
    source = AlsaSource("testmic", 8000, metrics=metrics)
    beats: list[int] = []
    capture = Capture(
        source,
        metrics=metrics,
        status=status,
        heartbeat=lambda: beats.append(1),
        queue_frames=ROOMY,
    )
    frames = await first_frames(capture, 50)
    assert [f.pcm.size for f in frames] == [160] * 50
    assert metrics.total("xruns_total") == 0, "the file plugin reported an overrun"
    assert np.array_equal(np.concatenate([f.pcm for f in frames]), samples[: 160 * 50])
    assert [f.seq for f in frames] == list(range(1, 51))
    assert all(a.t_capture <= b.t_capture for a, b in itertools.pairwise(frames))
    assert len(beats) >= 50
    assert device_state(status, "mic") is LinkState.UP
    assert status.mic_dbfs is not None and -10 < status.mic_dbfs < 0  # full-scale noise
    assert not source.is_open  # leaving the loop closed the device


async def test_a_48khz_mic_is_resampled_to_clean_8khz_frames(
    alsa: AlsaTestbed, metrics: Metrics, status: StatusBoard
) -> None:
    alsa.write_mic(tone(48000, 1000, 2.2, dbfs=-10.0))
    capture = Capture(
        AlsaSource("testmic", 48000, metrics=metrics),
        metrics=metrics,
        status=status,
        queue_frames=ROOMY,
    )
    frames = await first_frames(capture, 100)
    assert [f.pcm.size for f in frames] == [160] * 100
    pcm = np.concatenate([f.pcm for f in frames[5:]])
    snr, _ = sine_snr(pcm, 8000, 1000)
    assert snr >= 60.0
    assert level_at(pcm, 8000, 1000) == pytest.approx(-10.0, abs=0.1)


async def test_mic_gain_saturates_instead_of_wrapping(
    metrics: Metrics, status: StatusBoard
) -> None:
    source = ToneSource(8000, 500, -6.0)
    capture = Capture(source, metrics=metrics, status=status, gain_db=12.0, queue_frames=ROOMY)
    frames = await first_frames(capture, 20)
    pcm = np.concatenate([f.pcm for f in frames]).astype(int)
    reference = ToneSource(8000, 500, -6.0)
    reference.open()
    clean = np.concatenate([reference.read() for _ in range(20)]).astype(int)
    assert pcm.max() == 32767 and pcm.min() == -32768  # 4x a -6 dBFS sine clips ...
    assert np.all(np.sign(pcm) == np.sign(clean))  # ... but never flips sign
    small = np.abs(clean) < 8000
    assert np.abs(pcm[small] - clean[small] * 10 ** (12 / 20)).max() <= 1


async def test_a_mic_of_exact_zeros_is_reported_once(
    metrics: Metrics, status: StatusBoard, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.audio.capture"):
        frames = await first_frames(
            Capture(SilenceSource(8000), metrics=metrics, status=status), 1500
        )
    assert len(frames) == 1500  # 30 s of audio, unpaced
    reports = [r for r in caplog.records if "mic delivers silence" in r.getMessage()]
    assert len(reports) == 1
    assert status.last_error == "mic delivers silence"
    assert metrics.get("mic_silence_alarms_total") == 1


async def test_a_missing_mic_is_shown_and_picked_up_when_it_appears(
    alsa: AlsaTestbed, metrics: Metrics, status: StatusBoard
) -> None:
    capture = Capture(
        AlsaSource("gonemic", 8000, metrics=metrics),
        metrics=metrics,
        status=status,
        reopen_backoff=FAST,
        queue_frames=ROOMY,
    )
    task = asyncio.create_task(first_frames(capture, 10))
    await wait_for(lambda: device_state(status, "mic") is LinkState.ATTENTION)
    assert status.devices["mic"].detail == "capture device missing: gonemic"
    assert status.led is Led.BLINK_4HZ
    assert "mic: needs attention: capture device missing: gonemic" in status.summary()
    staging = alsa.directory / "staging"  # the device appears whole, as a USB card would
    staging.mkdir()
    (staging / "mic.raw").write_bytes(np.arange(1, 1601, dtype="<i2").tobytes())
    staging.rename(alsa.gone_dir)
    frames = await asyncio.wait_for(task, 10)
    assert np.array_equal(np.concatenate([f.pcm for f in frames]), np.arange(1, 1601))
    assert device_state(status, "mic") is LinkState.UP


async def test_a_mic_vanishing_mid_stream_comes_back_with_frames_still_numbered_on(
    metrics: Metrics, status: StatusBoard
) -> None:
    source = ToneSource(8000, 440, -20.0)
    capture = Capture(
        source, metrics=metrics, status=status, reopen_backoff=FAST, queue_frames=ROOMY
    )
    frames: list[Frame] = []
    seen_attention = False
    async with contextlib.aclosing(capture.frames()) as stream:
        async for frame in stream:
            frames.append(frame)
            if len(frames) == 20:
                source.unplug()
                await wait_for(lambda: device_state(status, "mic") is LinkState.ATTENTION)
                seen_attention = True
                source.plug()
                await wait_for(lambda: device_state(status, "mic") is LinkState.UP)
            if len(frames) == 60:
                break
    assert seen_attention and source.opens == 2
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs))  # strictly increasing: no restart, no repeats


async def test_a_consumer_that_falls_behind_loses_the_oldest_frames_counted(
    metrics: Metrics, status: StatusBoard
) -> None:
    capture = Capture(SilenceSource(8000), metrics=metrics, status=status, queue_frames=5)
    frames: list[Frame] = []
    async with contextlib.aclosing(capture.frames()) as stream:
        async for frame in stream:
            frames.append(frame)
            if len(frames) == 1:
                await asyncio.sleep(0.2)  # meanwhile the unpaced mic produces far more than 5
            if len(frames) == 6:
                break
    assert metrics.get("capture_frames_dropped_total", reason="queue_full") > 0
    assert frames[1].seq > frames[0].seq + 5  # what was kept is the newest


def test_the_capture_processor_accepts_any_read_length_and_stereo() -> None:
    processor = CaptureProcessor(8000, channels=2)
    left = np.arange(1, 1001, dtype=np.int16)
    stereo = np.stack([left, left], axis=1).reshape(-1)
    frames = []
    for cut in np.split(stereo, [6, 200, 201 * 2, 1000, 1998]):  # odd, short and long reads
        frames += processor.process(cut, 0.0)
    assert [f.pcm.size for f in frames] == [160] * 6
    assert np.array_equal(np.concatenate([f.pcm for f in frames]), left[:960])


# -- playback -----------------------------------------------------------------------


def preloaded_mixer(metrics: Metrics, seconds: float, rate: int = 48000) -> Mixer:
    """A mixer holding ``seconds`` of a -20 dBFS 1 kHz tone (no jitter resets)."""
    policy = JitterPolicy(reset_excess_ms=60_000, trim_window_ms=1e9, capacity_ms=60_000)
    mixer = Mixer(rate, metrics=metrics, jitter=policy)
    mixer.add_source("room", 8000).push(tone(8000, 1000, seconds, dbfs=-20.0))
    return mixer


async def test_playback_plays_the_mix_and_cancelling_closes_the_speaker(
    metrics: Metrics, status: StatusBoard
) -> None:
    sink = RecordingSink(48000, 1, paced=True)
    beats: list[int] = []
    playback = Playback(
        sink, preloaded_mixer(metrics, 2.0), metrics=metrics, status=status,
        heartbeat=lambda: beats.append(1),
    )  # fmt: skip
    task = asyncio.create_task(playback.run())
    await wait_for(lambda: sink.frames_written >= 48000 * 0.3)
    assert device_state(status, "speaker") is LinkState.UP
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sink.is_open
    written = playback.periods_written
    await asyncio.sleep(0.1)
    assert playback.periods_written == written  # the thread has stopped
    assert len(beats) >= written
    out = sink.samples[4800:]
    assert level_at(out, 48000, 1000) == pytest.approx(-20.0, abs=0.1)


async def test_a_missing_speaker_is_shown_and_reopened(
    metrics: Metrics, status: StatusBoard
) -> None:
    sink = RecordingSink(48000, 1, paced=True, name="usb-speaker")
    sink.unplug()
    playback = Playback(
        sink, preloaded_mixer(metrics, 1.0), metrics=metrics, status=status, reopen_backoff=FAST
    )
    task = asyncio.create_task(playback.run())
    try:
        await wait_for(lambda: device_state(status, "speaker") is LinkState.ATTENTION)
        assert status.devices["speaker"].detail == "playback device missing: usb-speaker"
        sink.plug()
        await wait_for(lambda: device_state(status, "speaker") is LinkState.UP)
        await wait_for(lambda: sink.frames_written >= 4800)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_speaker_at_another_rate_gets_resampled_audio(
    metrics: Metrics, status: StatusBoard
) -> None:
    sink = RecordingSink(16000, 1, paced=True)  # the device settled on 16 kHz
    playback = Playback(sink, preloaded_mixer(metrics, 1.0), metrics=metrics, status=status)
    task = asyncio.create_task(playback.run())
    await wait_for(lambda: sink.frames_written >= 16000 * 0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert level_at(sink.samples[1600:], 16000, 1000) == pytest.approx(-20.0, abs=0.1)


# -- the mixer into a real ALSA speaker ---------------------------------------------


def test_two_sources_at_different_rates_reach_the_speaker_at_their_levels(
    alsa: AlsaTestbed, metrics: Metrics
) -> None:
    mixer = Mixer(48000, metrics=metrics)
    room = mixer.add_source("room", 8000)
    orgo = mixer.add_source("orgo", 24000, 2)
    a = tone(8000, 440, 3.0, dbfs=-20.0)
    b = tone(24000, 1000, 3.0, dbfs=-26.0)
    b_stereo = np.stack([b, b], axis=1).reshape(-1)
    sink = AlsaSink("testspk", 48000, metrics=metrics)
    sink.open()
    played = []
    for i in range(150):
        room.push(a[i * 160 : (i + 1) * 160])
        orgo.push(b_stereo[i * 960 : (i + 1) * 960])
        period = mixer.render()
        played.append(period)
        sink.write(period)
    sink.close()
    out = alsa.read_spk()
    assert np.array_equal(out, np.concatenate(played))  # the speaker got exactly the mix
    steady = out[48000:]
    assert level_at(steady, 48000, 440) == pytest.approx(-20.0, abs=1.0)
    assert level_at(steady, 48000, 1000) == pytest.approx(-26.0, abs=1.0)


def test_after_200ms_of_jitter_the_speaker_resumes_without_a_gap(
    alsa: AlsaTestbed, metrics: Metrics
) -> None:
    mixer = Mixer(48000, metrics=metrics)
    room = mixer.add_source("room", 8000)
    a = tone(8000, 440, 4.0, dbfs=-20.0)
    packets = [a[i : i + 160] for i in range(0, a.size, 160)]
    sink = AlsaSink("testspk", 48000, metrics=metrics)
    sink.open()
    sent = 0
    for period in range(170):
        if period < 50 or period >= 60:  # packets 50..59 are held up for 200 ms ...
            burst = 11 if period == 60 else 1  # ... and arrive together with packet 60
            for _ in range(burst):
                room.push(packets[sent])
                sent += 1
        sink.write(mixer.render())
    sink.close()
    periods = alsa.read_spk().reshape(170, 960)
    silent = [not p.any() for p in periods]
    assert not any(silent[2:50])  # steady before
    assert 5 <= sum(silent[50:60]) <= 10  # the stall is heard (the buffer held ~40 ms)
    assert not any(silent[60:])  # playing again at the first render after the burst
    assert metrics.get("audio_underruns_total", source="room") == 1
    after = periods[61:].reshape(-1)
    assert level_at(after, 48000, 440) == pytest.approx(-20.0, abs=1.0)
    source = mixer.source("room")
    assert source is not None and source.depth_ms <= source.target_ms + 20


# -- real-time cadence ----------------------------------------------------------------


@pytest.mark.slow
async def test_a_paced_mic_delivers_50_frames_a_second(
    pulse: AlsaTestbed, metrics: Metrics, status: StatusBoard
) -> None:
    samples = np.random.default_rng(2).integers(-30000, 30000, 8000 * 14).astype(np.int16)
    pulse.write_mic(samples)
    capture = Capture(AlsaSource("pacedmic", 8000, metrics=metrics), metrics=metrics, status=status)
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    frames: list[Frame] = []
    warm, last = False, loop.time()
    async with contextlib.aclosing(capture.frames()) as stream:
        async for frame in stream:
            now = loop.time()
            frames.append(frame)
            # PulseAudio first hands over what its source buffered (~0.8 s at once);
            # the clock is measured once frames start arriving 20 ms apart
            if not warm and len(frames) > 1 and now - last >= 0.010:
                warm = True
            if warm:
                arrivals.append(now)
            last = now
            if len(arrivals) == 500:
                break
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert 49.5 <= rate <= 50.5
    got = np.concatenate([f.pcm for f in frames])
    assert np.array_equal(got, samples[: got.size])  # and still bit-exact


@pytest.mark.slow
async def test_a_mic_read_by_the_event_loop_that_vanishes_is_shown_and_retried(
    pulse: AlsaTestbed, metrics: Metrics, status: StatusBoard
) -> None:
    pulse.write_mic(tone(8000, 1000, 10.0, dbfs=-20.0))
    capture = Capture(
        AlsaSource("pacedmic", 8000, metrics=metrics), metrics=metrics, status=status,
        reopen_backoff=FAST,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    readers: set[str] = set()
    frames = 0
    async with contextlib.aclosing(capture.frames()) as stream:
        async for _ in stream:
            frames += 1
            readers.add(threading.current_thread().name)
            if frames == 60:
                os.kill(pulse.pulse_daemon["pid"], signal.SIGKILL)  # the sound server dies
                break
        # the read fails on the loop; the capture thread reports it and keeps retrying
        await wait_for(lambda: device_state(status, "mic") is LinkState.ATTENTION)
        detail = status.devices["mic"].detail
        assert "pacedmic" in detail
        await asyncio.sleep(0.3)
        assert device_state(status, "mic") is LinkState.ATTENTION  # still retrying, no crash
    assert readers == {"MainThread"}  # frames are consumed on the loop, as always
    assert loop.is_running()
    assert not capture.source.is_open  # type: ignore[attr-defined]


def _kernel_names() -> set[str]:
    names = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as comm:
            names.add(comm.read().strip())
    return names


async def test_the_audio_threads_carry_their_names_in_the_kernel(
    metrics: Metrics, status: StatusBoard
) -> None:
    """`top -H`, `ps -L` and a profiler outside the process tell the audio threads
    apart by name (Python 3.11 would leave them all named after the process)."""
    seen: set[str] = set()
    capture = Capture(ToneSource(freq_hz=440.0), metrics=metrics, status=status, queue_frames=ROOMY)
    async with contextlib.aclosing(capture.frames()) as stream:
        async for _ in stream:
            seen |= _kernel_names()
            break
    assert "audio-capture" in seen
    playback = Playback(
        RecordingSink(), Mixer(8000, metrics=metrics), metrics=metrics, status=status
    )
    task = asyncio.create_task(playback.run())
    await wait_for(lambda: "audio-playback" in _kernel_names())
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
