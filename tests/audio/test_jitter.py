"""Adaptive jitter buffer, driven deterministically: one ``pull`` is one 20 ms render.

Audio is a counting ramp (sample i has value i), so gaps, repeats and drops are
visible exactly: a continuous stretch of output is a run of consecutive values.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from agent.audio.jitter import JitterBuffer, JitterPolicy

RATE = 8000
PERIOD = 160


class Ramp:
    """20 ms packets of consecutive sample numbers (1, 2, 3, ... so silence is 0)."""

    def __init__(self) -> None:
        self.next = 1

    def packet(self, samples: int = PERIOD) -> np.ndarray:
        out = np.arange(self.next, self.next + samples, dtype=np.float32)
        self.next += samples
        return out


def render(jb: JitterBuffer, t: float = 0.0) -> np.ndarray:
    out = jb.pull(t)
    return np.zeros(PERIOD, np.float32) if out is None else out


def lockstep(jb: JitterBuffer, ramp: Ramp, periods: int) -> Iterator[np.ndarray]:
    for _ in range(periods):
        jb.push(ramp.packet(), 0.0)
        yield render(jb)


def silent(period: np.ndarray) -> bool:
    return not period.any()


def test_a_clean_link_plays_every_sample_once_in_order_at_the_minimum_target() -> None:
    jb, ramp = JitterBuffer(RATE), Ramp()
    out = np.concatenate(list(lockstep(jb, ramp, 500)))
    played = out[out != 0]
    assert np.array_equal(played, np.arange(1, played.size + 1))  # no gap, repeat or drop
    assert out.size - played.size == PERIOD  # one period of prebuffer at the start
    assert jb.target_ms <= 50 and jb.underruns == 0 and jb.resets == 0


def test_a_200ms_stall_then_burst_recovers_without_further_gaps() -> None:
    jb, ramp = JitterBuffer(RATE), Ramp()
    list(lockstep(jb, ramp, 100))
    stalled = [render(jb) for _ in range(10)]  # 200 ms: nothing arrives
    for _ in range(10):  # ... then the 10 late packets at once
        jb.push(ramp.packet(), 0.0)
    after = list(lockstep(jb, ramp, 200))
    assert sum(silent(p) for p in stalled) >= 8  # the stall itself is heard as silence
    assert not any(silent(p) for p in after)  # audio resumes at the very next render
    resumed = np.concatenate(after)
    assert np.array_equal(np.diff(resumed), np.ones(resumed.size - 1))  # continuous after
    assert jb.underruns == 1
    assert jb.depth_ms <= jb.target_ms + 20  # the late surplus was dropped, not queued
    assert 40 < jb.target_ms <= 80  # grew a step to ride out the next stall


def test_a_source_that_stops_drains_then_plays_silence_not_stale_audio() -> None:
    jb, ramp = JitterBuffer(RATE), Ramp()
    list(lockstep(jb, ramp, 50))
    jb.push(ramp.packet(80), 0.0)  # a half packet ends the utterance
    tail = [render(jb) for _ in range(5)]
    assert tail[0].all() and tail[1][:80].all()  # everything buffered is played ...
    assert all(silent(p) for p in tail[2:])  # ... then silence
    quiet = [render(jb) for _ in range(250)]  # 5 s of nothing
    assert all(silent(p) for p in quiet)
    first_new = ramp.next
    fresh = list(lockstep(jb, ramp, 5))
    played = np.concatenate(fresh)
    assert played[played != 0].min() == first_new  # nothing old comes back
    assert jb.underruns == 0 and jb.target_ms == 40  # silence is not an underrun


def test_a_trickle_that_never_reaches_the_target_is_still_played() -> None:
    jb, ramp = JitterBuffer(RATE), Ramp()
    jb.push(ramp.packet(100), 0.0)  # 12.5 ms, less than the 40 ms target
    out = [render(jb) for _ in range(5)]
    assert sum(p.any() for p in out) == 1  # played after a short wait, not held forever


def test_a_sender_running_fast_is_reset_to_the_target_and_counted() -> None:
    policy = JitterPolicy(trim_window_ms=1e9)  # isolate the reset rule
    jb, ramp = JitterBuffer(RATE, policy=policy), Ramp()
    for _ in range(400):  # 5 packets for every 4 renders: +5 ms per period
        for _ in range(5):
            jb.push(ramp.packet(), 0.0)
        for _ in range(4):
            render(jb)
            assert jb.depth_ms <= jb.target_ms + 150 + 80
    assert jb.resets >= 5
    assert jb.depth_ms <= jb.target_ms + 150 + 80


def test_audio_piling_up_while_nothing_renders_is_a_stall_and_a_burst_a_reset() -> None:
    """A speaker that is starting or stalled: packets keep arriving every 20 ms and
    nothing is rendered for 1 s. The buffer is cut to its target as for a reset, but
    counted as a stall (the renderer's doing). The same second of audio arriving at once
    while rendering goes on (a network burst) is a reset."""
    policy = JitterPolicy(trim_window_ms=1e9)
    jb, ramp = JitterBuffer(RATE, policy=policy), Ramp()
    for i in range(20):
        jb.push(ramp.packet(), i * 0.02)
        render(jb)
    for i in range(50):  # 1 s, no render
        jb.push(ramp.packet(), 0.4 + i * 0.02)
    assert jb.stalls >= 3 and jb.resets == 0
    assert jb.depth_ms <= jb.target_ms + 150 + 20
    newest = ramp.next - 1
    after = np.concatenate([render(jb) for _ in range(10)])
    assert after.max() == newest  # what plays once rendering resumes is the newest audio

    jb, ramp = JitterBuffer(RATE, policy=policy), Ramp()
    for i in range(20):
        jb.push(ramp.packet(), i * 0.02)
        render(jb)
    for _ in range(50):  # a second of audio in one instant
        jb.push(ramp.packet(), 0.4)
    assert jb.resets >= 1 and jb.stalls == 0


def test_unused_latency_is_trimmed_after_a_quiet_window() -> None:
    jb, ramp = JitterBuffer(RATE), Ramp()
    for _ in range(6):  # a 120 ms head start that the link never needs
        jb.push(ramp.packet(), 0.0)
    list(lockstep(jb, ramp, 150))  # 3 s of perfectly regular packets
    assert jb.depth_ms <= jb.target_ms + 20
    assert jb.resets == 0


def test_large_chunks_from_a_regular_sender_are_not_mistaken_for_drift() -> None:
    jb, ramp = JitterBuffer(RATE), Ramp()
    out = []
    for _ in range(60):  # a 100 ms chunk every 5 renders (e.g. a chunky TTS sender)
        jb.push(ramp.packet(5 * PERIOD), 0.0)
        out += [render(jb) for _ in range(5)]
    played = np.concatenate(out)
    played = played[played != 0]
    assert np.array_equal(played, np.arange(1, played.size + 1))
    assert jb.resets == 0 and jb.dropped == 0


def test_the_target_grows_with_underruns_and_shrinks_back_slowly() -> None:
    policy = JitterPolicy(shrink_after_ms=2000, shrink_step_ms=10)
    jb, ramp = JitterBuffer(RATE, policy=policy), Ramp()
    list(lockstep(jb, ramp, 20))
    for _ in range(3):  # three 160 ms hiccups, longer than anything buffered
        for _ in range(8):
            render(jb)
        for _ in range(8):
            jb.push(ramp.packet(), 0.0)
        list(lockstep(jb, ramp, 20))
    grown = jb.target_ms
    assert jb.underruns == 3 and grown == 100
    list(lockstep(jb, ramp, 100))  # 2 s clean: one step down
    assert jb.target_ms == grown - 10
    list(lockstep(jb, ramp, 1000))  # 20 s clean: back at the floor, no further
    assert jb.target_ms == 40


def test_the_target_never_exceeds_its_maximum() -> None:
    jb, ramp = JitterBuffer(RATE, policy=JitterPolicy(max_target_ms=80)), Ramp()
    for _ in range(10):
        list(lockstep(jb, ramp, 5))
        for _ in range(4):
            render(jb)
    assert jb.target_ms == 80


def test_latency_is_measured_from_arrival_to_render() -> None:
    jb, ramp = JitterBuffer(RATE), Ramp()
    for i in range(100):
        jb.push(ramp.packet(), t_arrival=i * 0.02)
        jb.pull(now=i * 0.02 + 0.005)
    latencies = jb.latencies()
    assert len(latencies) >= 95
    # one period of prebuffer: each period is played 20 ms after it arrived (+5 ms)
    assert abs(float(np.median(latencies)) - 0.025) < 1e-9


def test_stereo_periods_hold_both_channels() -> None:
    jb = JitterBuffer(48000, channels=2)
    block = np.tile(np.array([1.0, -1.0], np.float32), 960 * 3)
    jb.push(block, 0.0)
    out = jb.pull(0.0)
    assert out is not None and out.size == 1920
    assert np.all(out[0::2] == 1.0) and np.all(out[1::2] == -1.0)


def test_more_than_the_capacity_keeps_the_newest_audio() -> None:
    jb = JitterBuffer(RATE, policy=JitterPolicy(capacity_ms=100, reset_excess_ms=10_000))
    ramp = Ramp()
    jb.push(ramp.packet(4000), 0.0)  # 500 ms into a 100 ms buffer
    assert jb.depth_ms == 100
    out = jb.pull(0.0)
    assert out is not None and out[0] == 4000 - 800 + 1
