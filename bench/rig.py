"""What the whole-agent latency benches share (bench/ptt_latency.py, bench/channel_switch.py).

``whole_agent(gpio=..., videosdk=...)`` runs the real agent (agent.app.Agent) on a paced
simulated mic (a 5 s counter, looped) and a paced speaker, with gpiozero's MockFactory
pins, against the sandbox VideoSDK on loopback, until it streams; its credentials live
in a temporary folder that is removed afterwards. ``pct`` and ``machine`` for the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def machine() -> str:
    py = platform.python_version()
    return f"machine: {platform.machine()}, Python {py}, {os.cpu_count()} cores"


@dataclass
class Rig:
    agent: Any  # agent.app.Agent
    fake: Any  # agent.sandbox.videosdk.FakeVideoSDK
    pins: Any  # gpiozero's MockFactory

    def pin(self, number: int) -> Any:
        return self.pins.pin(number)


@contextlib.asynccontextmanager
async def whole_agent(
    *, gpio: dict[str, int], videosdk: dict[str, Any], keep_frames: int = 2000
) -> AsyncIterator[Rig]:
    """The agent streaming into the fake; ``videosdk`` gets the fake's ``api_base``."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from agent import config
    from agent.app import Agent, Hardware
    from agent.controls import StateStore
    from agent.hw.sim import RecordingSink, WavSource, write_wav
    from agent.sandbox.videosdk import FakeVideoSDK
    from agent.secrets import Credentials

    with tempfile.TemporaryDirectory(prefix="field-agent-bench-") as tmp:
        work = Path(tmp)
        (work / "videosdk-token").write_text("sandbox-token")
        (work / "videosdk-token").chmod(0o600)
        counter = (np.arange(8000 * 5) % 30000 + 1).astype(np.int16)
        mic = write_wav(work / "mic.wav", counter, 8000)
        pins = MockFactory(pin_class=MockPWMPin)
        async with FakeVideoSDK(keep_frames=keep_frames) as server:
            cfg = config.from_dict(
                {
                    "device": {"id": "bench"},
                    "gpio": gpio,
                    "videosdk": {**videosdk, "api_base": server.api_base},
                    "metrics": {"listen": ""},
                }
            )
            hw = Hardware(
                mic=lambda _a, _m: WavSource(mic, 8000, loop=True, paced=True),
                speaker=lambda _a, _m: RecordingSink(48000, paced=True, keep_s=1.0),
                pin_factory=pins,
            )
            agent = Agent(
                cfg, credentials=Credentials(work, env={}), hardware=hw, state=StateStore(None)
            )
            task = asyncio.create_task(agent.run())
            try:
                await server.wait_for(lambda: len(server.frames) > 25, 10, "streaming")
                yield Rig(agent, server, pins)
            finally:
                agent.stop()
                await asyncio.wait_for(task, 5)
