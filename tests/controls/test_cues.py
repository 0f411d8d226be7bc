"""Sound cues, heard in the speaker file: which cue, its pitch and timing, its latency
from the button's pin, and what the uplink carries while it plays."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.audio.cues import TALK_PERMIT_QUIET_S, Cues, channel_notes, synthesize
from agent.errors import ProtocolError
from agent.hw.sim import write_wav
from agent.metrics import Metrics
from agent.pcm import UPLINK_SAMPLES, Frame
from agent.status import LinkState
from tests.controls.speaker import (
    MUTE,
    PTT,
    RATE,
    UP,
    bench,
    bursts,
    make_config,
    ms,
    notes,
    pitch,
)


async def test_talk_permit_is_heard_within_100_ms_of_the_press_and_kept_off_the_uplink(
    tmp_path: Path, gpio_mock: Any
) -> None:
    async with bench(tmp_path, gpio_mock) as b:
        b.link(LinkState.UP)
        await asyncio.sleep(0.1)
        at_press = b.position()
        t_press = asyncio.get_running_loop().time()
        gpio_mock.pin(PTT).drive_low()
        await asyncio.sleep(0.4)
        assert b.gate.transmitting
        # the uplink: frames captured while the chirp plays go out 40 dB down, then as is
        counter = np.arange(1, UPLINK_SAMPLES + 1, dtype=np.int16) * 100
        during = b.gate.gate(Frame(counter, 1, t_press + 0.1))
        after = b.gate.gate(Frame(counter, 2, t_press + TALK_PERMIT_QUIET_S + 0.02))
        assert during is not None and np.array_equal(during.pcm, counter // 100)
        assert after is not None and np.array_equal(after.pcm, counter)
        gpio_mock.pin(PTT).drive_high()
        await asyncio.sleep(0.3)
    played = b.speaker.samples
    found = bursts(played[at_press:])
    assert len(found) == 2, found  # the permit chirp at the press, the roger beep at release
    (start, end), (r_start, r_end) = found
    chirp = played[at_press + start : at_press + end]
    # its latency: from the pin edge to its first sound, on the speaker's own clock (+ the
    # 20 ms period playing at the press)
    assert ms(start) + 20 < 100, f"talk permit heard {ms(start) + 20:.0f} ms after the press"
    assert 110 <= ms(end - start) <= 130  # 50 ms + 70 ms
    assert pitch(chirp[: RATE * 40 // 1000]) == pytest.approx(1200, abs=15)
    assert pitch(chirp[-RATE * 50 // 1000 :]) == pytest.approx(1800, abs=15)
    roger = played[at_press + r_start : at_press + r_end]
    assert pitch(roger) == pytest.approx(2400, abs=15) and 80 <= ms(r_end - r_start) <= 100
    # loudness: cues.volume 0.5 x speaker volume 0.8 x the tones' 0.9 of full scale
    assert np.abs(chirp).max() == pytest.approx(0.5 * 0.8 * 0.9 * 32767, rel=0.05)
    assert b.metrics.get("cues_played_total", cue="talk_permit") == 1


async def test_refusal_when_no_uplink_is_up_and_no_roger_after_it(
    tmp_path: Path, gpio_mock: Any
) -> None:
    async with bench(tmp_path, gpio_mock) as b:
        b.link(LinkState.RETRY)
        at = b.position()
        await b.hold(PTT, 0.5)
        await asyncio.sleep(0.3)
    played = b.speaker.samples[at:]
    found = bursts(played)
    assert len(found) == 2, found  # the two notes of the refusal, nothing at release
    assert pitch(played[found[0][0] : found[0][1]]) == pytest.approx(480, abs=15)
    assert pitch(played[found[1][0] : found[1][1]]) == pytest.approx(360, abs=15)
    assert b.cues.played == ["refusal"]


async def test_link_lost_and_link_back_chimes(tmp_path: Path, gpio_mock: Any) -> None:
    async with bench(tmp_path, gpio_mock) as b:
        b.link(LinkState.UP)  # the first connect: no chime
        await asyncio.sleep(0.2)
        at = b.position()
        b.link(LinkState.RETRY)
        await asyncio.sleep(0.6)
        back = b.position()
        b.link(LinkState.UP)
        await asyncio.sleep(0.5)
    lost = b.speaker.samples[at:back]
    assert notes(lost) == pytest.approx([880, 660, 440], abs=15)  # falling
    again = b.speaker.samples[back:]
    assert notes(again) == pytest.approx([440, 660, 880], abs=15)  # rising
    assert b.cues.played == ["link_lost", "link_back"]


async def test_mute_cue_plays_out_before_the_speaker_mutes(tmp_path: Path, gpio_mock: Any) -> None:
    async with bench(tmp_path, gpio_mock) as b:
        at = b.position()
        await b.tap(MUTE)
        assert b.status.muted and not b.mixer.muted  # the cue is still playing
        await asyncio.sleep(0.4)
        assert b.mixer.muted
        unmute = b.position()
        await b.tap(MUTE)
        assert not b.mixer.muted
        await asyncio.sleep(0.4)
    on = b.speaker.samples[at:unmute]
    assert notes(on) == pytest.approx([700, 500], abs=15)
    off = b.speaker.samples[unmute:]
    assert notes(off) == pytest.approx([500, 700], abs=15)


async def test_volume_step_ticks_at_the_new_volume(tmp_path: Path, gpio_mock: Any) -> None:
    async with bench(tmp_path, gpio_mock) as b:
        at = b.position()
        await b.tap(UP)
        await asyncio.sleep(0.3)
    played = b.speaker.samples[at:]
    [(s, e)] = bursts(played)
    assert pitch(played[s:e]) == pytest.approx(1000, abs=25) and 30 <= ms(e - s) <= 50
    assert b.status.volume == pytest.approx(0.9)
    assert np.abs(played[s:e]).max() == pytest.approx(0.5 * 0.9 * 0.9 * 32767, rel=0.05)


@pytest.mark.parametrize(("channel", "beeps"), [(1, [70]), (3, [70, 70, 70]), (12, [300, 70, 70])])
async def test_channel_n_is_n_beeps(
    tmp_path: Path, gpio_mock: Any, channel: int, beeps: list[int]
) -> None:
    async with bench(tmp_path, gpio_mock) as b:
        at = b.position()
        end = b.cues.play_channel(channel)
        assert end is not None
        await asyncio.sleep(end - asyncio.get_running_loop().time() + 0.2)
    played = b.speaker.samples[at:]
    found = bursts(played)
    assert [round(ms(e - s) / 10) * 10 for s, e in found] == beeps
    assert all(pitch(played[s:e]) == pytest.approx(1100, abs=20) for s, e in found)


async def test_a_long_cue_plays_whole_and_a_new_cue_cuts_the_one_playing(
    tmp_path: Path, gpio_mock: Any
) -> None:
    async with bench(tmp_path, gpio_mock) as b:
        at = b.position()
        b.controls.play_cue("alarm")  # 1.5 s: pushed in chunks
        await asyncio.sleep(1.8)
        cut = b.position()
        b.controls.play_cue("alarm")
        await asyncio.sleep(0.3)
        b.controls.play_cue("volume_step")
        await asyncio.sleep(0.3)
    alarm = b.speaker.samples[at:cut]
    assert notes(alarm) == pytest.approx([960, 770] * 3, abs=15)
    [(s, e)] = bursts(alarm)
    assert 1480 <= ms(e - s) <= 1520  # no gap, nothing trimmed
    assert b.metrics.total("audio_underruns_total", source="cues") == 0
    rest = b.speaker.samples[cut:]
    assert notes(rest) == pytest.approx([960, 770, 1000], abs=25)  # 300 ms of alarm, the tick
    [(s, e)] = bursts(rest)
    assert 310 <= ms(e - s) <= 400  # the tick came at once, cutting the alarm


async def test_a_wav_cue_and_the_tone_when_its_file_disappears(
    tmp_path: Path, gpio_mock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rate = 16000
    t = np.arange(int(0.2 * rate)) / rate
    tone = (np.sin(2 * np.pi * 600 * t) * 20000).astype(np.int16)
    wav = write_wav(tmp_path / "permit.wav", tone, rate)
    cfg = make_config(cues={"talk_permit": str(wav)})
    caplog.set_level(logging.INFO, "agent.audio.cues")
    async with bench(tmp_path, gpio_mock, cfg) as b:
        b.link(LinkState.UP)
        await asyncio.sleep(0.1)
        first = b.position()
        b.controls.play_cue("talk_permit")
        await asyncio.sleep(0.4)
        wav.unlink()
        second = b.position()
        b.controls.play_cue("talk_permit")
        await asyncio.sleep(0.4)
        b.controls.play_cue("talk_permit")
        await asyncio.sleep(0.4)
    played = b.speaker.samples
    [(s, e)] = bursts(played[first:second])
    assert pitch(played[first + s : first + e]) == pytest.approx(600, abs=10)
    assert 190 <= ms(e - s) <= 210
    assert np.abs(played[first + s : first + e]).max() == pytest.approx(20000 * 0.5 * 0.8, rel=0.05)
    later = played[second:]
    found = bursts(later)
    assert len(found) == 2  # the tone, twice
    assert notes(later) == pytest.approx([1200, 1800, 1200, 1800], abs=15)
    lines = [r.getMessage() for r in caplog.records if "instead" in r.getMessage()]
    assert lines == [f"cue talk_permit: file {wav} not found; playing the tone instead"]
    assert b.metrics.get("cue_file_errors_total", cue="talk_permit") == 2


async def test_cues_off_plays_nothing_and_leaves_the_uplink_alone(
    tmp_path: Path, gpio_mock: Any
) -> None:
    cfg = make_config(cues={"talk_permit": "", "roger": "", "volume_step": ""})
    async with bench(tmp_path, gpio_mock, cfg) as b:
        b.link(LinkState.UP)
        at = b.position()
        t_press = asyncio.get_running_loop().time()
        await b.hold(PTT, 0.3)
        frame = Frame(np.ones(UPLINK_SAMPLES, np.int16), 1, t_press + 0.05)
        b.gate.press()
        assert b.gate.gate(frame) is frame  # no ducking without a cue
        b.gate.release()
        b.cfg[0] = make_config(cues={"enabled": False})  # a reload turns every cue off
        await b.tap(UP)
        assert b.controls.play_cue("alarm") is None
        await asyncio.sleep(0.2)
    assert not bursts(b.speaker.samples[at:])


async def test_roger_to_room_sends_the_beep_after_ptt_up(tmp_path: Path, gpio_mock: Any) -> None:
    cfg = make_config(cues={"roger_to_room": True})
    async with bench(tmp_path, gpio_mock, cfg) as b:
        b.link(LinkState.UP)
        await b.hold(PTT, 0.4)
        await asyncio.sleep(0.05)
        assert not b.gate.transmitting
        frames = [b.gate.gate(Frame.silence(i, 0.0)) for i in range(20)]
    pcm = np.concatenate([f.pcm for f in frames if f is not None])
    [(s, e)] = bursts(pcm, 8000)
    assert pitch(pcm[s:e], 8000) == pytest.approx(2400, abs=15) and 80 <= ms(e - s, 8000) <= 100
    assert all(f is not None and not f.pcm.any() for f in frames[8:])  # then idle silence


def test_tones_are_click_free_and_channel_numbers_above_nine() -> None:
    x = synthesize(channel_notes(1), RATE)
    assert abs(x[0]) < 0.01 and abs(x[int(0.07 * RATE) - 1]) < 0.01  # ramps at both edges
    assert len(channel_notes(9)) == 9 and [n.ms for n in channel_notes(21)] == [300, 300, 70]
    with pytest.raises(ValueError, match="unknown cue"):
        Cues(lambda: make_config().cues).play("fanfare")


class RefusingMixer:
    """A mixer that refuses every source (as Mixer.add_source does for an absurd format)."""

    out_rate = 48000

    def add_source(self, name: str, rate: int, channels: int = 1) -> Any:
        raise ProtocolError(f"source {name!r}: refused")

    def remove_source(self, name: str) -> None:
        pass


async def test_a_cue_that_cannot_play_is_one_counted_line_never_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    cues = Cues(lambda: make_config().cues, metrics=metrics)
    cues.attach(RefusingMixer())
    caplog.set_level(logging.WARNING, "agent.audio.cues")
    assert cues.play("talk_permit") is None and cues.play_channel(2) is None
    assert [r.getMessage() for r in caplog.records] == [
        "cue talk_permit not played: ProtocolError: source 'cues': refused"
    ]
    assert metrics.total("cue_failures_total") == 2
