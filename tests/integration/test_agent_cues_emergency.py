"""Sound cues and the emergency button in the whole agent (agent.app) against the fake
VideoSDK on loopback: the paced simulated mic and speaker, MockFactory pins."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import config
from agent.app import Agent, Hardware
from agent.audio.cues import TALK_PERMIT_QUIET_S
from agent.commands import sign_command
from agent.controls import StateStore
from agent.hw.sim import RecordingSink, WavSource, write_wav
from agent.sandbox.videosdk import FakeSession, FakeVideoSDK
from agent.secrets import Credentials
from tests.controls.speaker import bursts, ms, notes

pytestmark = pytest.mark.slow

COUNTER = (np.arange(8000 * 30) % 30000 + 1).astype(np.int16)  # never zero
KEY = "integration-command-key-0123456789"
PTT, EMERGENCY = 17, 16


async def start(
    tmp_path: Path, fake: FakeVideoSDK, pins: Any, **sections: dict[str, Any]
) -> tuple[Agent, RecordingSink, asyncio.Task[int], FakeSession]:
    creds = tmp_path / "creds"
    creds.mkdir()
    for name, value in (("videosdk-token", "sandbox-token"), ("command-key", KEY)):
        (creds / name).write_text(value + "\n")
        (creds / name).chmod(0o600)
    raw: dict[str, dict[str, Any]] = {
        "device": {"id": "dev_it", "name": "Integration"},
        "gpio": {"ptt_button": PTT, "emergency_button": EMERGENCY, "talk_led": 22},
        "videosdk": {"room_id": "room-it", "api_base": fake.api_base},
        "metrics": {"listen": ""},
        **sections,
    }
    cfg = config.from_dict(raw)
    mic = write_wav(tmp_path / "mic.wav", COUNTER, 8000)
    speaker = RecordingSink(48000, paced=True)
    hw = Hardware(
        mic=lambda _a, _m: WavSource(mic, 8000, loop=False, paced=True),
        speaker=lambda _a, _m: speaker,
        pin_factory=pins,
    )
    agent = Agent(
        cfg, credentials=Credentials(creds, env={}), hardware=hw, state=StateStore(tmp_path)
    )
    task = asyncio.create_task(agent.run())
    await fake.wait_for(lambda: fake.started_sessions, 10, "a started session")
    session = fake.started_sessions[0]
    await fake.wait_for(lambda: "DEVICE_CMD" in session.subscriptions, 3, "command topic")
    await fake.wait_for(lambda: agent.status.any_uplink_up, 3, "the link up")
    return agent, speaker, task, session


def on_topic(fake: FakeVideoSDK, topic: str) -> list[dict[str, Any]]:
    return [
        p.data if isinstance(p.data, dict) else json.loads(p.data)
        for p in fake.published
        if p.topic == topic
    ]


def voiced(session: FakeSession) -> list[bool]:
    return [bool(np.frombuffer(f.pcm, "<i2").any()) for f in session.frames]


async def test_emergency_alerts_on_the_topic_open_the_mic_and_a_signed_command_cancels(
    tmp_path: Path, gpio_mock: Any
) -> None:
    async with FakeVideoSDK() as fake:
        agent, _spk, task, session = await start(
            tmp_path, fake, gpio_mock, emergency={"alert_every_s": 2.0}
        )
        await asyncio.sleep(0.3)
        assert not any(voiced(session))  # hold mode, PTT up: silence
        gpio_mock.pin(EMERGENCY).drive_low()
        await fake.wait_for(lambda: on_topic(fake, "DEVICE_ALERT"), 4, "the alert")
        gpio_mock.pin(EMERGENCY).drive_high()
        n = len(session.frames)
        await fake.wait_for(lambda: len(session.frames) > n + 10, 3, "frames")
        assert all(voiced(session)[n:])  # the mic is open, no PTT pressed
        await fake.wait_for(lambda: len(on_topic(fake, "DEVICE_ALERT")) >= 2, 4, "a repeat")
        text = sign_command(
            KEY, topic="DEVICE_CMD", device="dev_it", cmd="emergency", value="cancel"
        )
        await fake.send_message("DEVICE_CMD", text, sender_id="console", sender_name="Console")
        await fake.wait_for(
            lambda: on_topic(fake, "DEVICE_ALERT")[-1]["state"] == "cancelled", 3, "the cancel"
        )
        await asyncio.sleep(0.3)
        n = len(session.frames)
        await fake.wait_for(lambda: len(session.frames) > n + 10, 3, "frames")
        assert not any(voiced(session)[n:])  # closed again
        agent.stop()
        assert await asyncio.wait_for(task, 3) == 0
    alerts = on_topic(fake, "DEVICE_ALERT")
    assert [a["state"] for a in alerts] == ["active", "active", "cancelled"]
    assert alerts[0]["device"] == {"id": "dev_it", "name": "Integration"}
    assert alerts[-1]["sender"] == "console"
    ok = [d for d in on_topic(fake, "DEVICE_STATUS") if d.get("ok") == "emergency"]
    assert len(ok) == 1 and ok[0]["status"]["emergency"] is None
    statuses = [d for d in on_topic(fake, "DEVICE_STATUS") if "links" in d]
    assert any(d["emergency"] and d["emergency"]["mic_open"] for d in statuses)
    assert agent.metrics.get("emergencies_total", by="button") == 1


async def test_talk_permit_is_heard_at_once_and_the_room_gets_the_roger_not_the_chirp(
    tmp_path: Path, gpio_mock: Any
) -> None:
    async with FakeVideoSDK() as fake:
        agent, speaker, task, session = await start(
            tmp_path, fake, gpio_mock, cues={"roger_to_room": True}
        )
        await asyncio.sleep(0.3)
        at_press, n_press = speaker.frames_written, len(session.frames)
        gpio_mock.pin(PTT).drive_low()
        await asyncio.sleep(1.0)
        n_release = len(session.frames)
        gpio_mock.pin(PTT).drive_high()
        await asyncio.sleep(0.5)
        agent.stop()
        assert await asyncio.wait_for(task, 3) == 0
    played = speaker.samples[at_press:]
    (onset, end), *_ = bursts(played)
    print(f"talk permit heard {ms(onset) + 20:.0f} ms after the press (speaker clock)")
    assert ms(onset) + 20 < 100
    assert notes(played[onset:end]) == pytest.approx([1200, 1800], abs=15)
    talk = [np.frombuffer(f.pcm, "<i2") for f in list(session.frames)[n_press:n_release]]
    first = next(i for i, f in enumerate(talk) if f.any())
    assert first <= 2  # the gate opened at once (press -> first frame)
    # the frames captured while the chirp played (output delay + 120 ms + echo) went out
    # 40 dB down (the counter mic peaks at 30000), the rest exactly as captured
    loud = [i for i, f in enumerate(talk) if np.abs(f).max() > 300]
    assert all(np.abs(f).max() <= 300 for f in talk[first : loud[0]])
    ducked_ms = (loud[0] - first) * 20
    assert TALK_PERMIT_QUIET_S * 1000 - 40 <= ducked_ms <= TALK_PERMIT_QUIET_S * 1000 + 40
    assert loud == list(range(loud[0], len(talk)))
    after = np.concatenate([np.frombuffer(f.pcm, "<i2") for f in list(session.frames)[n_release:]])
    # after PTT up: a few mic frames until the release is seen, then the roger beep
    beeps = [(s, e) for s, e in bursts(after, 8000) if np.abs(after[s:e]).max() < 30000]
    roger = [(s, e) for s, e in beeps if notes(after[s:e], 8000) == pytest.approx([2400], abs=15)]
    assert len(roger) == 1 and 80 <= ms(roger[0][1] - roger[0][0], 8000) <= 100
