"""The mixer as links and the playback thread use it (no device: render() into numpy)."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from agent.audio.mixer import Mixer
from agent.errors import ProtocolError
from agent.metrics import Metrics
from tests.audio.signals import level_at, tone


def chunks(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, x.size, size)]


def run(mixer: Mixer, feeds: dict[str, list[np.ndarray]], periods: int) -> np.ndarray:
    """Push one chunk per source, render one period; ``periods`` times."""
    out = []
    for i in range(periods):
        for name, pieces in feeds.items():
            if i < len(pieces):
                source = mixer.source(name)
                assert source is not None
                source.push(pieces[i])
        out.append(mixer.render())
    return np.concatenate(out)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_render_is_always_one_period_of_int16(metrics: Metrics) -> None:
    for rate, channels in ((48000, 1), (48000, 2), (16000, 1), (44100, 1)):
        out = Mixer(rate, metrics=metrics, channels=channels).render()
        assert out.dtype == np.int16 and out.size == rate // 50 * channels
        assert not out.any()  # nothing plays: silence


def test_volume_mute_and_ducking_scale_the_mix(metrics: Metrics) -> None:
    mixer = Mixer(48000, metrics=metrics)
    mixer.add_source("room", 8000)
    x = chunks(tone(8000, 500, 3.0, dbfs=-12.0), 160)

    def level(periods: np.ndarray) -> float:
        return level_at(periods[48000:], 48000, 500)

    assert level(run(mixer, {"room": x[:100]}, 100)) == pytest.approx(-12.0, abs=0.1)
    mixer.volume = 0.5
    assert level(run(mixer, {"room": x[:100]}, 100)) == pytest.approx(-18.02, abs=0.1)
    mixer.set_duck_db(10.0)
    assert level(run(mixer, {"room": x[:100]}, 100)) == pytest.approx(-28.02, abs=0.1)
    mixer.set_duck_db(0.0)
    mixer.muted = True
    assert not run(mixer, {"room": x[:100]}, 100).any()
    mixer.muted = False
    mixer.volume = 7.0  # out of range: clamped to 1.0
    assert level(run(mixer, {"room": x[:100]}, 100)) == pytest.approx(-12.0, abs=0.1)


def test_loud_sources_saturate_instead_of_wrapping(metrics: Metrics) -> None:
    mixer = Mixer(8000, metrics=metrics)
    mixer.add_source("a", 8000)
    mixer.add_source("b", 8000)
    loud = chunks(np.full(160 * 20, 30000, np.int16), 160)
    out = run(mixer, {"a": loud, "b": loud}, 20)
    assert out.max() == 32767 and out.min() >= 0  # 60000 clips; it never turns negative
    assert metrics.total("mixer_clipped_periods_total") > 0


def test_a_stalled_source_goes_silent_and_does_not_hold_up_the_other(metrics: Metrics) -> None:
    mixer = Mixer(48000, metrics=metrics)
    mixer.add_source("room", 8000)
    mixer.add_source("orgo", 24000)
    room = chunks(tone(8000, 500, 4.0), 160)
    orgo = chunks(tone(24000, 1500, 1.0), 480)  # stops after 1 s
    out = run(mixer, {"room": room, "orgo": orgo}, 200).reshape(200, 960)
    late = out[60:].reshape(-1)  # well after orgo stopped
    assert level_at(late, 48000, 1500) < -90  # orgo is silent, not repeating itself
    assert level_at(late, 48000, 500) == pytest.approx(-20, abs=0.1)  # room plays on


def test_mono_sources_fill_both_channels_of_a_stereo_mix(metrics: Metrics) -> None:
    mixer = Mixer(48000, metrics=metrics, channels=2)
    mixer.add_source("room", 16000)
    mixer.add_source("music", 48000, 2)
    left, right = tone(48000, 700, 2.0, dbfs=-20), tone(48000, 900, 2.0, dbfs=-26)
    music = np.stack([left, right], axis=1).reshape(-1)
    out = run(
        mixer,
        {"room": chunks(tone(16000, 300, 2.0, dbfs=-30), 320), "music": chunks(music, 1920)},
        100,
    ).reshape(-1, 2)[4800:]
    for ch in (0, 1):
        assert level_at(out[:, ch], 48000, 300) == pytest.approx(-30, abs=0.1)
    assert level_at(out[:, 0], 48000, 700) == pytest.approx(-20, abs=0.1)
    assert level_at(out[:, 1], 48000, 900) == pytest.approx(-26, abs=0.1)
    assert level_at(out[:, 0], 48000, 900) < -80


def test_stereo_sources_are_downmixed_for_a_mono_speaker(metrics: Metrics) -> None:
    mixer = Mixer(48000, metrics=metrics)
    mixer.add_source("orgo", 24000, 2)
    x = tone(24000, 1000, 2.0, dbfs=-20)
    stereo = np.stack([x, x], axis=1).reshape(-1)
    out = run(mixer, {"orgo": chunks(stereo, 960)}, 100)[9600:]
    assert level_at(out, 48000, 1000) == pytest.approx(-20, abs=0.1)


def test_re_adding_a_source_with_a_new_format_replaces_it(metrics: Metrics) -> None:
    mixer = Mixer(48000, metrics=metrics)
    first = mixer.add_source("orgo", 24000)
    assert mixer.add_source("orgo", 24000) is first  # same format: same source, buffer kept
    second = mixer.add_source("orgo", 48000, 2)
    assert second is not first and mixer.source("orgo") is second
    first.push(tone(24000, 1000, 0.5))  # a late push to the old source goes nowhere
    assert not np.concatenate([mixer.render() for _ in range(10)]).any()
    mixer.remove_source("orgo")
    mixer.remove_source("never-added")
    assert mixer.source_names == []


@pytest.mark.parametrize(
    ("rate", "channels"),
    [(0, 1), (-8000, 1), (10**9, 1), (100, 1), (8000.5, 1), (True, 1), ("8000", 1),
     (8000, 0), (8000, 9), (8000, 1.5)],
)  # fmt: skip
def test_absurd_formats_are_refused_with_a_protocol_error(
    metrics: Metrics, rate: object, channels: object
) -> None:
    mixer = Mixer(48000, metrics=metrics)
    with pytest.raises(ProtocolError):
        mixer.add_source("peer", rate, channels)  # type: ignore[arg-type]
    assert mixer.source_names == []


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"\x01\x02\x03", "odd_bytes"),
        (np.array([0.1, np.nan, 0.2], np.float32), "nonfinite"),
        (np.array([0.1, np.inf], np.float64), "nonfinite"),
        (np.zeros(160, np.int32), "dtype"),
        (np.zeros(160, np.uint8), "dtype"),
        ([1, 2, 3], "type"),
        (np.zeros(161, np.int16), "length"),  # a stereo source needs whole frames
        (np.zeros(48000 * 2 * 6, np.int16), "too_long"),
    ],
)
def test_bad_audio_is_counted_and_dropped_never_raised(
    metrics: Metrics, bad: object, reason: str
) -> None:
    mixer = Mixer(48000, metrics=metrics)
    source = mixer.add_source("peer", 48000, 2)
    source.push(bad)  # type: ignore[arg-type]
    assert metrics.get("audio_rejected_total", source="peer", reason=reason) == 1
    assert not mixer.render().any()
    source.push(np.zeros(1920, np.int16))  # the source still works afterwards
    assert metrics.total("audio_rejected_total") == 1


def test_bad_audio_is_logged_once_per_interval_not_per_chunk(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    mixer = Mixer(48000, metrics=metrics)
    source = mixer.add_source("peer", 8000)
    with caplog.at_level(logging.WARNING, logger="agent.audio"):
        for _ in range(50):
            source.push(b"\x00" * 321)
    assert metrics.get("audio_rejected_total", source="peer", reason="odd_bytes") == 50
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1


def test_a_starved_speaker_logs_stalls_once_per_interval_and_counts_them_all(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    # A stalled playback thread (seen under QEMU TCG), or a speaker still starting (a new
    # PulseAudio stream takes ~2 s), makes every push pile up audio: the journal gets one
    # line per 10 s, the stall counter every cut, and the jitter resets (the network's or
    # the sender's fault, shown in `field-agent status`) stay at 0.
    mixer = Mixer(48000, metrics=metrics)
    source = mixer.add_source("orgo", 8000)
    with caplog.at_level(logging.INFO, logger="agent.audio"):
        for i in range(250):  # 10 s of audio, never rendered, arriving over 25 s
            source.push(np.full(320, 1000, np.int16), t_arrival=100.0 + i * 0.1)
    lines = [r.getMessage() for r in caplog.records if "rendered nothing" in r.getMessage()]
    stalls = metrics.get("playout_stalls_total", source="orgo")
    assert stalls >= 10
    assert metrics.get("jitter_resets_total", source="orgo") == 0
    assert 2 <= len(lines) <= 3  # 25 s of stalls: at most one line per 10 s
    counts = [int(line.rsplit("; ", 1)[1].split("(")[1].split()[0]) for line in lines]
    assert counts[0] == 1 and sum(counts) <= stalls


def test_bytes_and_float_audio_are_accepted(metrics: Metrics) -> None:
    mixer = Mixer(8000, metrics=metrics)
    x = tone(8000, 1000, 1.0, dbfs=-20)
    mixer.add_source("pcm", 8000).push(x.astype("<i2").tobytes())
    out = np.concatenate([mixer.render() for _ in range(50)])
    assert level_at(out[800:], 8000, 1000) == pytest.approx(-20, abs=0.1)
    mixer.remove_source("pcm")
    mixer.add_source("floats", 8000).push(x.astype(np.float32) / 32768.0)
    out = np.concatenate([mixer.render() for _ in range(50)])
    assert level_at(out[800:], 8000, 1000) == pytest.approx(-20, abs=0.1)


def test_pushing_from_one_thread_while_rendering_in_another_loses_nothing(
    metrics: Metrics,
) -> None:
    mixer = Mixer(8000, metrics=metrics)
    source = mixer.add_source("room", 8000)
    ramp = np.arange(160 * 400) % 30000 + 1  # never 0: silence is 0
    pieces = chunks(ramp.astype(np.int16), 160)
    rendered: list[np.ndarray] = []
    ahead = threading.Semaphore(2)  # the link may run up to 2 packets ahead of playback
    pushed = threading.Semaphore(0)

    def pusher() -> None:
        for piece in pieces:
            assert ahead.acquire(timeout=5)
            source.push(piece)
            pushed.release()

    thread = threading.Thread(target=pusher)
    thread.start()
    for _ in pieces:  # each render overlaps the next push
        assert pushed.acquire(timeout=5)
        rendered.append(mixer.render())
        ahead.release()
    thread.join()
    rendered += [mixer.render() for _ in range(5)]
    out = np.concatenate(rendered)
    played = out[out != 0]
    assert played.size >= ramp.size - 160 * 10  # at most a few periods still buffered
    assert np.array_equal(played, ramp[: played.size])  # in order, nothing torn or doubled


def test_latencies_are_recorded_per_source(metrics: Metrics) -> None:
    mixer = Mixer(8000, metrics=metrics)
    source = mixer.add_source("room", 8000)
    for piece in chunks(tone(8000, 400, 1.0), 160):
        source.push(piece)
        mixer.render()
    latencies = mixer.latencies("room")
    assert len(latencies) >= 45 and all(0 <= t < 1 for t in latencies)
    assert mixer.latencies("nobody") == []


def test_gauges_report_depth_and_target(metrics: Metrics) -> None:
    mixer = Mixer(8000, metrics=metrics)
    mixer.add_source("room", 8000)
    run(mixer, {"room": chunks(tone(8000, 400, 2.0), 160)}, 100)
    assert metrics.get("jitter_target_ms", source="room") == 40
    assert 0 < metrics.get("jitter_depth_ms", source="room") <= 40
