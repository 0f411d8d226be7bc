"""Channels through the whole agent (agent.app): the channel button on a MockFactory pin
moves the device's VideoSDK session to the next room of ``videosdk.rooms``; after a
restart with the same state directory it streams in that room again. The switch is
announced on the speaker: channel 2, two short beeps."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import config
from agent.app import Agent, Hardware
from agent.controls import StateStore
from agent.hw.sim import RecordingSink, WavSource, write_wav
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from tests.controls.speaker import bursts, pitch

pytestmark = pytest.mark.slow

UP = 20


def build(
    tmp_path: Path, fake: FakeVideoSDK, pins: Any, speakers: list[RecordingSink] | None = None
) -> Agent:
    creds = tmp_path / "creds"
    creds.mkdir(exist_ok=True)
    (creds / "videosdk-token").write_text("sandbox-token\n")
    (creds / "videosdk-token").chmod(0o600)
    cfg = config.from_dict(
        {
            "device": {"id": "dev_ch", "name": "Channels"},
            "gpio": {"ptt_button": 17, "channel_up_button": UP},
            "videosdk": {
                "api_base": fake.api_base,
                "rooms": [{"id": "room-a", "name": "Alpha"}, {"id": "room-b", "name": "Bravo"}],
            },
            "metrics": {"listen": ""},
        }
    )
    mic = write_wav(tmp_path / "mic.wav", np.ones(8000, np.int16), 8000)

    def speaker(_a: Any, _m: Any) -> RecordingSink:
        sink = RecordingSink(48000, paced=True)
        (speakers if speakers is not None else []).append(sink)
        return sink

    hw = Hardware(
        mic=lambda _a, _m: WavSource(mic, 8000, loop=True, paced=True),
        speaker=speaker,
        pin_factory=pins,
    )
    (tmp_path / "state").mkdir(exist_ok=True)
    return Agent(
        cfg,
        credentials=Credentials(creds, env={}),
        hardware=hw,
        state=StateStore(tmp_path / "state", interval_s=0.0),
    )


async def test_the_channel_button_moves_the_session_and_a_restart_keeps_it(
    tmp_path: Path, gpio_mock: Any
) -> None:
    async with FakeVideoSDK() as fake:
        speakers: list[RecordingSink] = []
        agent = build(tmp_path, fake, gpio_mock, speakers)
        task = asyncio.create_task(agent.run())
        await fake.wait_for(lambda: fake.active(), 10, "a session")
        assert [s.room_id for s in fake.started_sessions] == ["room-a"]
        speakers[-1].clear()
        gpio_mock.pin(UP).drive_low()
        await asyncio.sleep(0.05)
        gpio_mock.pin(UP).drive_high()
        await fake.wait_for(
            lambda: any(s.room_id == "room-b" and s.frames for s in fake.active()),
            3,
            "frames in room-b",
        )
        await asyncio.sleep(0.6)  # the channel cue: two short beeps, 1100 Hz
        heard = speakers[-1].samples
        beeps = bursts(heard)
        assert len(beeps) == 2, beeps  # and no link-lost / link-back chime for the switch
        assert all(1050 < pitch(heard[a:b]) < 1150 for a, b in beeps)
        assert agent.status.to_json()["channel"]["name"] == "Bravo"
        agent.stop()
        assert await asyncio.wait_for(task, 3) == 0

        again = build(tmp_path, fake, gpio_mock)  # a restart: same state directory
        task = asyncio.create_task(again.run())
        await fake.wait_for(lambda: len(fake.started_sessions) == 3, 10, "a third session")
        assert fake.started_sessions[-1].room_id == "room-b"
        again.stop()
        assert await asyncio.wait_for(task, 3) == 0
