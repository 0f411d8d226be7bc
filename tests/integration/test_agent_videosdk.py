"""The whole agent, wired by agent.app, against the faithful fake VideoSDK on loopback:
simulated paced mic and speaker, gpiozero MockFactory buttons and LEDs."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import config
from agent.app import Agent, Hardware
from agent.commands import sign_command
from agent.controls import StateStore
from agent.hw.sim import RecordingSink, WavSource, write_wav
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials

pytestmark = pytest.mark.slow

COUNTER = (np.arange(8000 * 30) % 30000 + 1).astype(np.int16)  # never zero; step 1


@dataclass
class Rig:
    agent: Agent
    fake: FakeVideoSDK
    speaker: RecordingSink
    pins: Any
    task: asyncio.Task[int]


COMMAND_KEY = "integration-command-key-0123456789"


async def start_agent(
    tmp_path: Path,
    fake: FakeVideoSDK,
    pins: Any,
    ptt_mode: str = "hold",
    *,
    commands: dict[str, Any] | None = None,
    wall_clock: Any = None,
) -> Rig:
    creds = tmp_path / "creds"
    creds.mkdir()
    for name, value in (("videosdk-token", "sandbox-token"), ("command-key", COMMAND_KEY)):
        (creds / name).write_text(value + "\n")
        (creds / name).chmod(0o600)
    cfg = config.from_dict(
        {
            "device": {"id": "dev_it", "name": "Integration"},
            "ptt": {"mode": ptt_mode},
            "gpio": {"ptt_button": 17, "status_led": 27, "talk_led": 22},
            "videosdk": {"room_id": "room-it", "api_base": fake.api_base},
            "metrics": {"listen": ""},
            "commands": commands or {},
            # the talk-permit chirp ducks the first frames after PTT down: these tests
            # follow the mic's exact samples (tests/integration/test_agent_cues_emergency.py
            # has the chirp)
            "cues": {"talk_permit": ""},
        }
    )
    mic = write_wav(tmp_path / "mic.wav", COUNTER, 8000)
    speaker = RecordingSink(48000, paced=True)
    hw = Hardware(
        mic=lambda _a, _m: WavSource(mic, 8000, loop=False, paced=True),
        speaker=lambda _a, _m: speaker,
        pin_factory=pins,
    )
    agent = Agent(
        cfg,
        credentials=Credentials(creds, env={}),
        hardware=hw,
        state=StateStore(None),
        wall_clock=wall_clock,
    )
    task = asyncio.create_task(agent.run())
    await fake.wait_for(lambda: fake.started_sessions, 10, "a started session")
    return Rig(agent, fake, speaker, pins, task)


async def stop_agent(rig: Rig) -> None:
    rig.agent.stop()
    assert await asyncio.wait_for(rig.task, 3) == 0


def voiced_runs(frames: list[np.ndarray]) -> list[list[int]]:
    """Indexes of consecutive non-silent frames."""
    runs: list[list[int]] = []
    for i, f in enumerate(frames):
        if f.any():
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
    return runs


async def test_ptt_gates_exact_mic_frames_into_the_room(tmp_path: Path, gpio_mock: Any) -> None:
    async with FakeVideoSDK(echo=True) as fake:
        rig = await start_agent(tmp_path, fake, gpio_mock)
        await asyncio.sleep(0.5)
        gpio_mock.pin(17).drive_low()  # press PTT
        await asyncio.sleep(1.0)
        gpio_mock.pin(17).drive_high()  # release
        await asyncio.sleep(0.5)
        await stop_agent(rig)
        session = fake.started_sessions[0]
    frames = [np.frombuffer(f.pcm, "<i2") for f in session.frames]
    assert all(len(f.pcm) == 320 for f in session.frames)  # 20 ms of 8 kHz PCM16
    runs = voiced_runs(frames)
    assert len(runs) == 1, f"one press must give one voiced run, got {len(runs)}"
    run = runs[0]
    assert run[0] > 10 and run[-1] < len(frames) - 10  # silence before and after
    assert 45 <= len(run) <= 55  # ~1 s of talk at 50 frames/s
    voiced = np.concatenate([frames[i] for i in run])
    # exactly the mic's samples: a contiguous slice of the counter, no gap, no repeat
    start = int(voiced[0]) - 1
    np.testing.assert_array_equal(voiced, COUNTER[start : start + voiced.size])
    # silence frames are exact zeros, not noise
    assert not any(frames[i].any() for i in range(len(frames)) if i not in run)
    # the uplink kept the 50 frames/s cadence over the session (within 4 %)
    t = [f.t for f in session.frames]
    fps = (len(t) - 1) / (t[-1] - t[0])
    assert 48 <= fps <= 52, fps
    # the room's echo of our voice reached the speaker
    played = rig.speaker.samples
    assert np.abs(played).max() > 1000
    assert "stop" in session.event_names


async def test_leds_and_reconnect_after_server_death(tmp_path: Path, gpio_mock: Any) -> None:
    async with FakeVideoSDK() as fake:
        rig = await start_agent(tmp_path, fake, gpio_mock, ptt_mode="open")
        await fake.wait_for(lambda: gpio_mock.pin(27).state == 1, 3, "status LED solid")
        assert rig.agent.status.led.value == "on"
        assert gpio_mock.pin(22).state == 1  # open mic + link up: talk LED on
        await fake.stop_ws()
        await fake.wait_for(lambda: rig.agent.status.led.value == "blink-1hz", 3, "LED blinking")
        await fake.start_ws()
        await fake.wait_for(lambda: len(fake.started_sessions) >= 2, 10, "a second session")
        second = fake.started_sessions[-1]
        await fake.wait_for(lambda: len(second.frames) >= 10, 3, "media resumed")
        assert second.ref != fake.started_sessions[0].ref
        assert max(fake.ref_presented.values()) == 1  # no wsUrl was ever reused
        await stop_agent(rig)
    assert gpio_mock.pin(27).state == 0 and gpio_mock.pin(22).state == 0  # LEDs off on stop


async def test_remote_commands_through_the_room(tmp_path: Path, gpio_mock: Any) -> None:
    async with FakeVideoSDK() as fake:
        rig = await start_agent(tmp_path, fake, gpio_mock)
        session = fake.started_sessions[0]
        await fake.wait_for(
            lambda: "DEVICE_CMD" in session.subscriptions, 3, "command topic subscribed"
        )
        await fake.send_message("DEVICE_CMD", signed("volume", 0.3))
        await fake.send_message("DEVICE_CMD", '{"cmd":"reboot"}')
        await fake.wait_for(
            lambda: any("unknown command" in str(p.data) for p in fake.published), 3, "refusal"
        )
        assert rig.agent.status.volume == pytest.approx(0.3)
        statuses = [p for p in fake.published if p.topic == "DEVICE_STATUS"]
        assert any("unknown command 'reboot'" in str(p.data) for p in statuses)
        await stop_agent(rig)


async def test_vox_transmits_when_the_mic_hears_speech(tmp_path: Path, gpio_mock: Any) -> None:
    async with FakeVideoSDK() as fake:
        rig = await start_agent(tmp_path, fake, gpio_mock, ptt_mode="vox")
        session = fake.started_sessions[0]
        await fake.wait_for(lambda: len(session.frames) >= 25, 3, "half a second of frames")
        await stop_agent(rig)
    frames = [np.frombuffer(f.pcm, "<i2") for f in session.frames]
    # the loud mic opens VOX on its first frame; from then on the mic's own samples go out
    assert sum(1 for f in frames if f.any()) >= len(frames) - 2
    assert rig.agent.status.ptt_mode == "vox"


def signed(cmd: str, value: Any = None, ts: int | None = None) -> str:
    return sign_command(
        COMMAND_KEY, topic="DEVICE_CMD", device="dev_it", cmd=cmd, value=value, ts=ts
    )


async def command_rig(tmp_path: Path, fake: FakeVideoSDK, pins: Any, **kw: Any) -> Rig:
    rig = await start_agent(tmp_path, fake, pins, **kw)
    session = fake.started_sessions[0]
    await fake.wait_for(lambda: "DEVICE_CMD" in session.subscriptions, 3, "command topic")
    return rig


def replies(fake: FakeVideoSDK) -> list[dict[str, Any]]:
    out = []
    for p in fake.published:
        if p.topic == "DEVICE_STATUS":
            doc = p.data if isinstance(p.data, dict) else json.loads(p.data)
            if "error" in doc or "ok" in doc:
                out.append(doc)
    return out


async def test_a_strangers_ptt_open_does_not_open_the_mic(tmp_path: Path, gpio_mock: Any) -> None:
    async with FakeVideoSDK() as fake:
        rig = await command_rig(tmp_path, fake, gpio_mock, commands={"allow_mic_control": True})
        await fake.send_message(
            "DEVICE_CMD", '{"cmd":"ptt","value":"open"}', sender_id="stranger", sender_name="X"
        )
        await fake.wait_for(lambda: replies(fake), 3, "a refusal")
        await asyncio.sleep(1.0)
        await stop_agent(rig)
        session = fake.started_sessions[0]
    assert replies(fake) == [
        {"error": "unsigned command refused", "reason": "unsigned", "id": replies(fake)[0]["id"]}
    ]
    frames = [np.frombuffer(f.pcm, "<i2") for f in session.frames]
    assert len(frames) > 40 and not any(f.any() for f in frames)  # only silence went out
    assert rig.agent.metrics.get("commands_refused_total", reason="unsigned") == 1


async def test_a_signed_ptt_open_with_opt_in_opens_it_and_its_replay_is_refused(
    tmp_path: Path, gpio_mock: Any
) -> None:
    async with FakeVideoSDK() as fake:
        rig = await command_rig(tmp_path, fake, gpio_mock, commands={"allow_mic_control": True})
        session = fake.started_sessions[0]
        command = signed("ptt", "open")
        await fake.send_message("DEVICE_CMD", command)
        await fake.wait_for(lambda: replies(fake), 3, "the reply")
        assert replies(fake)[0]["ok"] == "ptt"
        await fake.wait_for(
            lambda: any(np.frombuffer(f.pcm, "<i2").any() for f in list(session.frames)[-5:]),
            3,
            "voiced frames",
        )
        await fake.send_message("DEVICE_CMD", signed("ptt", "hold"))
        await fake.wait_for(lambda: len(replies(fake)) >= 2, 3, "the second reply")
        assert rig.agent.status.ptt_mode == "hold"
        await fake.send_message("DEVICE_CMD", command)  # the same signed text, again
        await fake.wait_for(lambda: len(replies(fake)) >= 3, 3, "the third reply")
        assert replies(fake)[2]["reason"] == "replayed"
        assert rig.agent.status.ptt_mode == "hold"  # the replay did not reopen the mic
        await stop_agent(rig)


async def test_signed_commands_work_with_the_device_clock_3_hours_off(
    tmp_path: Path, gpio_mock: Any
) -> None:
    off = -3 * 3600.0
    async with FakeVideoSDK() as fake:
        rig = await command_rig(tmp_path, fake, gpio_mock, wall_clock=lambda: time.time() + off)
        await fake.send_message("DEVICE_CMD", signed("volume", 0.4))
        await fake.wait_for(lambda: replies(fake), 3, "the reply")
        assert replies(fake)[0]["ok"] == "volume"
        assert rig.agent.status.volume == pytest.approx(0.4)
        # while an old command published again (issued 3 h before the server's time) is not
        await fake.send_message("DEVICE_CMD", signed("volume", 0.9, ts=int(time.time() + off)))
        await fake.wait_for(lambda: len(replies(fake)) >= 2, 3, "the refusal")
        assert replies(fake)[1]["reason"] == "stale"
        assert rig.agent.status.volume == pytest.approx(0.4)
        await stop_agent(rig)
