"""Audio device faults in the whole agent, through the real ALSA ports (agent.hw.alsa)
with alsa-lib's answers scripted (tests/reliability/alsastub.py): the mic vanishes and
returns, the speaker is busy at start, xrun storms, a reload. Each time the other half
keeps running at real time and the agent recovers without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import alsaaudio
import pytest

from agent.app import Hardware
from agent.hw.alsa import AlsaSink, AlsaSource
from tests.reliability.alsastub import AlsaStub
from tests.reliability.fullagent import FAST_LINKS, FullAgent, full_agent
from tests.support import wait_until

pytestmark = pytest.mark.slow
LINKS = ("videosdk", "orgo")  # the speaker checks listen for the Orgo tone alone

MIC, SPK = "stub-mic", "stub-spk"
REAL_TIME = 0.7  # at least this share of 50 periods/s (a loaded 2-core machine)


@pytest.fixture
def alsa(monkeypatch: pytest.MonkeyPatch) -> AlsaStub:
    stub = AlsaStub(exclusive=True)
    monkeypatch.setattr(alsaaudio, "PCM", stub.pcm)
    return stub


def alsa_hardware() -> Hardware:
    return Hardware(
        mic=lambda cfg, m: AlsaSource(MIC, cfg.capture_rate, metrics=m),
        speaker=lambda cfg, m: AlsaSink(SPK, cfg.playback_rate, metrics=m),
    )


async def per_second(count: Callable[[], float], seconds: float = 1.5) -> float:
    c0, t0 = count(), time.monotonic()
    await asyncio.sleep(seconds)
    return (count() - c0) / (time.monotonic() - t0)


def uplink(rig: FullAgent) -> Callable[[], float]:
    return lambda: rig.vsdk.frames_total


def no_restart(rig: FullAgent, generation: object) -> None:
    assert rig.agent.generation is generation, "the agent rebuilt itself"
    assert rig.agent.metrics.total("task_crashes_total") == 0
    assert rig.link_state("videosdk") == "up" and rig.link_state("orgo") == "up"


async def test_the_mic_vanishes_and_returns_while_the_speaker_plays_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alsa: AlsaStub
) -> None:
    mic, spk = alsa.dev(MIC), alsa.dev(SPK)
    async with full_agent(
        tmp_path, policies=FAST_LINKS, hardware=alsa_hardware(), links=LINKS
    ) as rig:
        gen = rig.agent.generation
        assert await per_second(uplink(rig), 1.0) >= 50 * REAL_TIME
        alsa.unplug(MIC)
        await wait_until(lambda: rig.device_state("mic") == "attention", 2.0, "mic missing")
        assert rig.agent.status.devices["mic"].detail == f"capture device missing: {MIC}"
        # the other half: the speaker keeps playing the Orgo computer at real time
        assert await per_second(lambda: spk.periods) >= 50 * REAL_TIME
        assert min(spk.energy[-10:]) > 1000, "the speaker plays the computer, not silence"
        assert await per_second(uplink(rig), 0.5) <= 2, "no mic, no uplink frames"
        assert mic.refused >= 1, "the agent kept trying to reopen the mic"
        alsa.plug(MIC)
        await wait_until(lambda: rig.device_state("mic") == "up", 5.0, "mic back")
        assert await per_second(uplink(rig), 1.0) >= 50 * REAL_TIME
        assert mic.opens == 2
        no_restart(rig, gen)


async def test_a_busy_speaker_at_start_leaves_the_uplink_alone_and_is_picked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alsa: AlsaStub
) -> None:
    alsa.busy(SPK)
    spk = alsa.dev(SPK)
    async with full_agent(
        tmp_path, policies=FAST_LINKS, hardware=alsa_hardware(), links=LINKS
    ) as rig:
        gen = rig.agent.generation
        await wait_until(lambda: rig.device_state("speaker") == "attention", 3.0, "busy")
        assert rig.agent.status.devices["speaker"].detail == f"playback device busy: {SPK}"
        assert rig.agent.status.led.value == "blink-4hz"  # needs attention
        assert await per_second(uplink(rig)) >= 50 * REAL_TIME
        assert spk.refused >= 2 and spk.opens == 0
        alsa.busy(SPK, False)
        await wait_until(lambda: rig.device_state("speaker") == "up", 5.0, "speaker up")
        assert await per_second(lambda: spk.periods, 1.0) >= 50 * REAL_TIME
        assert min(spk.energy[-10:]) > 1000
        no_restart(rig, gen)


async def test_xrun_storms_on_one_side_leave_the_other_at_real_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alsa: AlsaStub
) -> None:
    mic, spk = alsa.dev(MIC), alsa.dev(SPK)
    async with full_agent(
        tmp_path, policies=FAST_LINKS, hardware=alsa_hardware(), links=LINKS
    ) as rig:
        gen, metrics = rig.agent.generation, rig.agent.metrics
        alsa.storm(MIC, 0.5)  # every other read an overrun
        assert await per_second(lambda: spk.periods, 2.0) >= 50 * REAL_TIME
        assert await per_second(uplink(rig), 1.0) > 5, "the mic still delivers"
        alsa.storm(MIC, 0.0)
        alsa.storm(SPK, 0.5)  # every other write an underrun
        assert await per_second(uplink(rig), 2.0) >= 50 * REAL_TIME
        assert await per_second(lambda: spk.periods, 1.0) > 5, "the speaker still plays"
        alsa.storm(SPK, 0.0)
        assert await per_second(uplink(rig), 1.0) >= 50 * REAL_TIME
        assert await per_second(lambda: spk.periods, 1.0) >= 50 * REAL_TIME
        # counted, recovered in place: no device was reopened, nothing needs attention
        assert metrics.total("xruns_total", device="mic") == mic.xruns >= 20
        assert metrics.total("xruns_total", device="speaker") == spk.xruns >= 20
        assert mic.opens == 1 and spk.opens == 1
        assert rig.device_state("mic") == "up" and rig.device_state("speaker") == "up"
        no_restart(rig, gen)


async def test_a_reload_never_finds_its_own_devices_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alsa: AlsaStub
) -> None:
    """A reload that changes the audio devices opens them only once the old ones are
    closed: the stub refuses a second open of a held device (EBUSY), as a real hw: PCM
    does. (The stub serves both names of each device: the reload reopens, same card.)"""
    mic, spk = alsa.dev(MIC), alsa.dev(SPK)
    async with full_agent(
        tmp_path, policies=FAST_LINKS, hardware=alsa_hardware(), links=LINKS
    ) as rig:
        for n in range(3):
            opens = mic.opens
            rig.write_config({"audio": {"capture_device": f"mic{n}",
                                        "playback_device": f"spk{n}"}})  # fmt: skip
            rig.agent.reload()
            await wait_until(lambda o=opens: mic.opens > o, 5.0, "reloaded")
            await wait_until(
                lambda: rig.device_state("mic") == "up" and rig.device_state("speaker") == "up",
                3.0,
                "devices up after reload",
            )
            assert await per_second(uplink(rig), 1.0) >= 50 * REAL_TIME, n
        assert mic.refused == 0 and spk.refused == 0, "a device was busy after a reload"
        assert mic.opens == 4 and spk.opens == 4
        assert mic.open_handles == 1 and spk.open_handles == 1
