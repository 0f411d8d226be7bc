"""The whole agent, wired by agent.app, with only the PBX link enabled: the sandbox PBX
pushes a two-party call, the simulated paced speaker writes what it plays to a file."""

from __future__ import annotations

import asyncio
import dataclasses
import wave
from pathlib import Path

import numpy as np
import pytest

from agent import config
from agent.app import Agent, Hardware
from agent.controls import StateStore
from agent.hw.sim import RecordingSink, ToneSource
from agent.links.pbx import PbxLink
from agent.sandbox.pbx import two_party_call
from agent.secrets import Credentials
from tests.support import wait_until

pytestmark = pytest.mark.slow

SECRET = "integration-pbx-secret"
OUT_RATE = 48000


def levels_at(pcm: np.ndarray, freqs: tuple[float, ...]) -> list[float]:
    """Peak level (dBFS) of the sine at each frequency (Hann-windowed FFT)."""
    x = pcm.astype(np.float64)
    window = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x * window)) * 2 / window.sum()
    out = []
    for f in freqs:
        k = round(f * len(x) / OUT_RATE)
        out.append(float(20 * np.log10(max(spectrum[k - 2 : k + 3].max(), 1e-9) / 32767)))
    return out


async def test_a_pbx_call_plays_on_the_speaker(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pbx-secret").write_text(SECRET + "\n")
    (creds / "pbx-secret").chmod(0o600)
    cfg = config.from_dict(
        {
            "device": {"id": "dev_pbx"},
            "audio": {"volume": 1.0},
            "videosdk": {"enabled": False},
            "pbx": {"enabled": True, "listen": "127.0.0.1:8765", "sample_rate": 16000},
            "metrics": {"listen": ""},
        }
    )
    # port 0: the OS picks a free port (the config validator insists on a real one)
    cfg = dataclasses.replace(cfg, pbx=dataclasses.replace(cfg.pbx, listen="127.0.0.1:0"))
    wav = tmp_path / "speaker.wav"
    speaker = RecordingSink(OUT_RATE, 1, wav, paced=True)
    hw = Hardware(
        mic=lambda _a, _m: ToneSource(8000, 1000.0, -90.0, paced=True),
        speaker=lambda _a, _m: speaker,
    )
    agent = Agent(cfg, credentials=Credentials(creds, env={}), hardware=hw, state=StateStore(None))
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(
            lambda: (
                agent.status.links.get("pbx") is not None
                and agent.status.links["pbx"].state.value == "up"
            ),
            10,
            "the PBX server listening",
        )
        assert agent.generation is not None
        link = agent.generation.links["pbx"]
        assert isinstance(link, PbxLink) and link.port
        assert agent.status.led.value == "on"  # the only link is up
        async with two_party_call(link.url, secret=SECRET, sample_rate=16000) as call:
            await call.stream(1.5)
            summary = agent.status.summary()
            assert "pbx: up (1 call, 2 channels, from 1009)" in summary, summary
            await call.end()
        await wait_until(
            lambda: "waiting for calls" in agent.status.summary(), 3, "the call over in STATUS"
        )
        await asyncio.sleep(0.3)  # let the tail play out
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 5) == 0
    with wave.open(str(wav), "rb") as w:
        played = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    period = OUT_RATE // 50
    periods = played[: played.size - played.size % period].reshape(-1, period)
    audible = [p for p in periods if np.abs(p).max() > 100]
    # 1.5 s of call is 75 periods; a period lost to scheduling on a loaded machine is
    # tolerated, a call that did not play is not
    assert len(audible) >= 65, f"{len(audible)} periods of call audio for a 1.5 s call"
    assert len(audible) <= 90, f"{len(audible)} periods of audio: the call played too long"
    middle = np.concatenate(audible[25:50])  # 0.5 s, from 0.5 s into the call
    l440, l660, l550 = levels_at(middle, (440.0, 660.0, 550.0))
    assert abs(l440 + 12) <= 1.5 and abs(l660 + 12) <= 1.5, (l440, l660)
    assert l550 < -42, l550
    assert agent.metrics.total("calls_total", link="pbx") == 1
    assert agent.metrics.total("malformed_total", link="pbx") == 0
