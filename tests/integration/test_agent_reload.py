"""Reload (SIGHUP, ``agent.reload()``) of the whole agent against the loopback fakes: a
refused reload touches no link and no device; a good one applies each change where it
belongs and says so, key by key."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from agent.app import Hardware
from agent.hw.sim import RecordingSink, ToneSource
from agent.reload import show_value
from tests.reliability.fullagent import FullAgent, full_agent
from tests.support import wait_until

pytestmark = pytest.mark.slow

LINKS = ("videosdk", "orgo")


class Snapshot:
    """What a reload must not have touched: sessions, connections, device opens."""

    def __init__(self, rig: FullAgent) -> None:
        self.rig = rig
        self.vsdk_session = rig.vsdk.started_sessions[-1]
        self.vsdk_sessions = len(rig.vsdk.sessions)
        self.orgo_sessions = len(rig.orgo.sessions)
        self.mic_opens = rig.mic.opens
        self.speaker_opens = rig.speaker.opens

    def videosdk_untouched(self) -> bool:
        vsdk = self.rig.vsdk
        return (
            len(vsdk.sessions) == self.vsdk_sessions
            and vsdk.started_sessions[-1] is self.vsdk_session
            and self.vsdk_session.ended_at is None
        )

    def orgo_untouched(self) -> bool:
        return len(self.rig.orgo.sessions) == self.orgo_sessions

    def audio_untouched(self) -> bool:
        return self.rig.mic.opens == self.mic_opens and self.rig.speaker.opens == self.speaker_opens


async def snapshot(rig: FullAgent) -> Snapshot:
    await rig.vsdk.wait_for(lambda: rig.all_up() and rig.vsdk.started_sessions, 10, "started")
    return Snapshot(rig)


async def reload(rig: FullAgent, edit: Callable[[], None] | None = None) -> None:
    """Edit the file (or not), ask for a reload, wait until it was handled."""
    metrics = rig.agent.metrics
    before = metrics.total("reloads_total")
    if edit is not None:
        edit()
    rig.agent.reload()
    await wait_until(lambda: metrics.total("reloads_total") > before, 10, "the reload handled")


async def still_streaming(rig: FullAgent, snap: Snapshot, seconds: float = 0.6) -> None:
    """The same VideoSDK session keeps receiving frames (50 a second)."""
    n = rig.vsdk.frames_total
    await wait_until(lambda: rig.vsdk.frames_total >= n + int(40 * seconds), 5, "frames")
    assert snap.videosdk_untouched(), "the VideoSDK session was replaced"


async def test_a_refused_reload_touches_no_link_and_no_device(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    async with full_agent(tmp_path, links=LINKS) as rig:
        good = rig.config_path.read_text()
        snap = await snapshot(rig)
        broken: list[tuple[str, Callable[[], None], str]] = [
            ("half-written TOML", lambda: rig.config_path.write_text(good[: len(good) // 2]
                                                                    + "\n[audio\n"),
             "not valid TOML"),
            ("missing file", lambda: rig.config_path.unlink(), "file not found"),
            ("unreadable file", lambda: rig.config_path.mkdir(), "cannot read"),
            ("bad value", lambda: rig.config_path.write_text(
                good.replace("playback_rate = 48000", "playback_rate = 44101")),
             "audio.playback_rate: must be a multiple of 50 Hz"),
        ]  # fmt: skip
        for what, edit, reason in broken:
            if rig.config_path.is_dir():
                rig.config_path.rmdir()
            caplog.clear()
            await reload(rig, edit)
            refusals = [m for r in caplog.records if "reload refused" in (m := r.getMessage())]
            assert refusals and reason in refusals[0], (what, refusals)
            assert rig.agent.status.last_error.startswith("reload refused"), what
            await still_streaming(rig, snap)
            assert snap.orgo_untouched() and snap.audio_untouched(), what
            assert rig.all_up(), what
        # a good file again: applied, and the refusal is no longer the last error
        await reload(rig, lambda: rig.write_config({"audio": {"volume": 0.5}}))
        assert rig.agent.status.last_error == ""
        assert rig.agent.status.volume == pytest.approx(0.5)
        await still_streaming(rig, snap)
        assert snap.orgo_untouched() and snap.audio_untouched()
        assert rig.agent.metrics.total("task_crashes_total") == 0


async def test_a_good_reload_applies_each_change_where_it_belongs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent")

    def said(line: str) -> bool:
        return any(r.getMessage() == line for r in caplog.records)

    async with full_agent(tmp_path, links=LINKS) as rig:
        gen = rig.agent.generation
        assert gen is not None and gen.mixer is not None
        snap = await snapshot(rig)

        # volume and mic gain: set in place, nothing reopened or reconnected
        await reload(rig, lambda: rig.write_config({"audio": {"volume": 0.5,
                                                              "mic_gain_db": -6.0}}))  # fmt: skip
        assert said("reload: audio.volume 0.8 -> 0.5")
        assert said("reload: audio.mic_gain_db 0.0 -> -6.0")
        assert gen.mixer.volume == pytest.approx(0.5) and rig.agent.status.volume == 0.5
        assert gen.capture is not None and gen.capture.gain_db == -6.0
        await still_streaming(rig, snap)
        assert snap.orgo_untouched() and snap.audio_untouched()

        # [ptt] goes to the gate: the mic is gated from the next frame, the session stays
        await reload(rig, lambda: rig.write_config({"ptt": {"mode": "hold"}}))
        assert said('reload: ptt.mode "open" -> "hold"')
        assert gen.gate is not None and gen.gate.mode == "hold" and not gen.gate.transmitting
        assert rig.agent.status.ptt_mode == "hold"
        await still_streaming(rig, snap)
        assert not any(f.pcm.strip(b"\0") for f in list(snap.vsdk_session.frames)[-10:])
        assert snap.orgo_untouched() and snap.audio_untouched()

        # a capture device change reopens the mic only
        await reload(rig, lambda: rig.write_config({"audio": {"capture_device": "mic2"}}))
        await wait_until(lambda: rig.mic.opens == snap.mic_opens + 1, 3, "the mic reopened")
        await still_streaming(rig, snap)
        assert rig.speaker.opens == snap.speaker_opens and snap.orgo_untouched()
        snap = await snapshot(rig)

        # a room change re-joins VideoSDK only
        await reload(rig, lambda: rig.write_config({"videosdk": {"room_id": "room-two"}}))
        assert said('reload: videosdk.room_id "room-full" -> "room-two"')
        await rig.vsdk.wait_for(
            lambda: rig.vsdk.started_sessions[-1].room_id == "room-two", 10, "the new room"
        )
        await rig.vsdk.wait_for(rig.all_up, 10, "links up")
        assert snap.vsdk_session.stopped, "the old session was not said goodbye to"
        assert snap.orgo_untouched() and snap.audio_untouched()
        snap = await snapshot(rig)

        # a change to a link's section restarts that link only
        await reload(rig, lambda: rig.write_config({"orgo": {"sample_rate": 48000}}))
        await wait_until(lambda: len(rig.orgo.sessions) > snap.orgo_sessions, 10, "orgo again")
        await rig.vsdk.wait_for(rig.all_up, 10, "links up")
        assert rig.orgo.sessions[-1].asked == (48000, 1)
        await still_streaming(rig, snap)
        assert snap.audio_untouched()

        # a half-written file that turns a link off is visible at once
        caplog.clear()
        await reload(rig, lambda: rig.write_config({"videosdk": {"enabled": False}}))
        assert said("reload: videosdk.enabled true -> false")
        assert said("reload: restarted link-videosdk")
        assert "videosdk" not in rig.agent.status.links
        assert rig.link_state("orgo") == "up" and len(rig.orgo.sessions) == snap.orgo_sessions + 1
        assert rig.agent.metrics.total("task_crashes_total") == 0


async def test_a_new_playback_rate_rebuilds_the_mixer_and_what_plays_into_it(
    tmp_path: Path,
) -> None:
    async with full_agent(tmp_path, links=LINKS) as rig:
        gen = rig.agent.generation
        assert gen is not None and gen.mixer is not None and gen.gate is not None
        old_mixer, gate, capture = gen.mixer, gen.gate, gen.capture
        snap = await snapshot(rig)
        await reload(rig, lambda: rig.write_config({"audio": {"playback_rate": 44100}}))
        assert gen.mixer is not old_mixer and gen.mixer.out_rate == 44100
        assert gen.gate is gate and gen.capture is capture, "the mic side was rebuilt"
        assert rig.mic.opens == snap.mic_opens
        await wait_until(lambda: rig.speaker.opens == snap.speaker_opens + 1, 3, "speaker")
        await rig.vsdk.wait_for(lambda: len(rig.vsdk.started_sessions) > 1, 10, "re-joined")
        await rig.vsdk.wait_for(rig.all_up, 10, "links up")
        assert len(rig.orgo.sessions) > snap.orgo_sessions
        # the room (echo) and Orgo play through the new mixer; PTT still gates the mic
        await wait_until(lambda: set(gen.mixer.source_names) >= {"videosdk", "orgo"}, 5, "src")
        written = rig.speaker.frames_written
        await wait_until(lambda: rig.speaker.frames_written > written + 24000, 5, "playing")
        gate.set_mode("hold")
        n = rig.vsdk.frames_total
        await wait_until(lambda: rig.vsdk.frames_total > n + 10, 3, "frames")
        last = list(rig.vsdk.started_sessions[-1].frames)[-5:]
        assert last and not any(f.pcm.strip(b"\0") for f in last)


async def test_a_gpio_change_reopens_buttons_and_leds_only(
    tmp_path: Path, gpio_mock: Any
) -> None:
    mic = ToneSource(8000, 1000.0, -20.0, paced=True)
    speaker = RecordingSink(48000, paced=True)
    hw = Hardware(mic=lambda _c, _m: mic, speaker=lambda _c, _m: speaker, pin_factory=gpio_mock)
    async with full_agent(
        tmp_path, hardware=hw, links=("videosdk",), overrides={"gpio": {"status_led": 27}}
    ) as rig:
        await wait_until(lambda: gpio_mock.pin(27).state == 1, 3, "status LED on")
        session, opens = rig.vsdk.started_sessions[-1], mic.opens
        await reload(rig, lambda: rig.write_config({"gpio": {"status_led": 22}}))
        await wait_until(lambda: gpio_mock.pin(22).state == 1, 3, "the LED on its new pin")
        assert gpio_mock.pin(27).state == 0
        assert rig.vsdk.started_sessions[-1] is session and session.ended_at is None
        assert mic.opens == opens


async def test_a_reload_with_no_change_rebuilds_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    async with full_agent(tmp_path, links=LINKS) as rig:
        snap = await snapshot(rig)
        for _ in range(3):
            await reload(rig)
        assert any(r.getMessage().startswith("reload: no change") for r in caplog.records)
        await still_streaming(rig, snap)
        assert snap.orgo_untouched() and snap.audio_untouched()


async def test_a_rotated_pbx_secret_restarts_the_pbx_link_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The PBX server reads its secret once, at start: a reload after the file changed
    restarts that link (the others read theirs at each attempt and are left alone)."""
    caplog.set_level(logging.INFO, logger="agent")
    async with full_agent(tmp_path, links=("videosdk", "pbx")) as rig:
        snap = await snapshot(rig)
        async with rig.pbx_call() as call:
            await call.stream(0.16, paced=False)
        await reload(rig)
        assert any(r.getMessage().startswith("reload: no change") for r in caplog.records)
        (rig.creds / "pbx-secret").write_text("fa-pbx-secret-rotated-91c3e5a7\n")
        await reload(rig)
        assert any(
            r.getMessage() == "reload: pbx-secret changed: link pbx restarts"
            for r in caplog.records
        )
        await wait_until(lambda: rig.link_state("pbx") == "up", 5, "the PBX server again")
        with pytest.raises(InvalidStatus) as refused:
            await rig.pbx_call().connect()  # the old secret
        assert refused.value.response.status_code == 401
        async with rig.pbx_call(secret="fa-pbx-secret-rotated-91c3e5a7") as call:
            await call.stream(0.16, paced=False)
        await still_streaming(rig, snap)
        assert snap.audio_untouched()
        assert "fa-pbx-secret-rotated-91c3e5a7" not in caplog.text


def test_reload_lines_never_show_a_url_query_or_user_info() -> None:
    token = "fa-rtc-sign-5e0a2c4b6d8f1a3c"
    shown = show_value(f"wss://user:pw@voice.example:7860/websocket/offer?token={token}")
    assert shown == '"wss://voice.example:7860/websocket/offer?..."'
    assert show_value(True) == "true" and show_value(("CHAT", "X")) == '["CHAT", "X"]'
    assert show_value(0.5) == "0.5" and show_value(None) == "(unset)"
    assert os.sep not in show_value(17)
