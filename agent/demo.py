"""``field-agent demo``: the whole agent on simulated hardware against the sandbox.

Starts the sandbox VideoSDK (echoing the device's voice back as room audio) and
the sandbox Orgo computer (a 440 Hz tone) on loopback, then the real agent with a
simulated mic (a spoken-like test signal, or ``--mic FILE``), a speaker that
records to a WAV file, and gpiozero's MockFactory for the buttons and LEDs.

Scripted run: press PTT at 2 s, release at 5 s, kill the room server at 6 s and
bring it back at 7 s; at the end print a summary of what happened.
"""

from __future__ import annotations

import asyncio
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent import config
from agent.app import Agent, Hardware
from agent.controls import StateStore
from agent.hw.ports import AudioSink, AudioSource
from agent.hw.sim import RecordingSink, WavSource, write_wav
from agent.sandbox.orgo import FakeOrgo, tone
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials

logger = logging.getLogger(__name__)

PTT_PIN, MUTE_PIN, UP_PIN, DOWN_PIN, STATUS_LED, TALK_LED = 17, 5, 6, 13, 27, 22


@dataclass(frozen=True)
class Script:
    """When the scripted demo does what (seconds from start)."""

    press_s: float = 2.0
    release_s: float = 5.0
    kill_s: float = 6.0
    restore_s: float = 7.0


def _config(fake_vs: FakeVideoSDK, fake_orgo: FakeOrgo) -> config.Config:
    return config.from_dict(
        {
            "device": {"id": "demo_device", "name": "Demo Device"},
            "audio": {"playback_rate": 48000, "volume": 0.8},
            "ptt": {"mode": "hold"},
            "gpio": {
                "ptt_button": PTT_PIN,
                "mute_button": MUTE_PIN,
                "volume_up_button": UP_PIN,
                "volume_down_button": DOWN_PIN,
                "status_led": STATUS_LED,
                "talk_led": TALK_LED,
            },
            "videosdk": {"room_id": "demo-room", "api_base": fake_vs.api_base},
            "orgo": {
                "enabled": True,
                "computer_id": fake_orgo.computer_id,
                "api_base": fake_orgo.api_base,
                "audio_url": fake_orgo.audio_url,
            },
            "metrics": {"listen": ""},
        },
        path="<demo>",
    )


def _voice_like(rate: int, seconds: float = 4.0) -> np.ndarray:
    """A test 'voice': a 300-900 Hz warble, loud enough to see on a meter."""
    t = np.arange(int(rate * seconds)) / rate
    f = 600 + 300 * np.sin(2 * math.pi * 0.5 * t)
    phase = 2 * math.pi * np.cumsum(f) / rate
    return (0.3 * 32767 * np.sin(phase)).astype(np.int16)


def _rms_dbfs(pcm: np.ndarray) -> float:
    if pcm.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


async def run_demo(
    *, duration_s: float = 10.0, mic: Path | None = None, speaker_out: Path | None = None,
    script: Script | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run the scripted demo; return the summary (also printed by the CLI)."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    script = script or Script()
    work = Path(tempfile.mkdtemp(prefix="field-agent-demo-"))
    speaker_path = speaker_out or work / "speaker.wav"
    pins = MockFactory(pin_class=MockPWMPin)
    async with (
        FakeVideoSDK(echo=True, keep_frames=5000) as fake_vs,
        FakeOrgo(generator=tone(440.0, -24.0)) as fake_orgo,
    ):
        creds = work / "credentials"
        creds.mkdir(mode=0o700)
        for name, value in (
            ("videosdk-token", "sandbox-token"),
            ("orgo-api-key", fake_orgo.api_key),
        ):
            (creds / name).write_text(value + "\n")
            (creds / name).chmod(0o600)
        cfg = _config(fake_vs, fake_orgo)
        speaker = RecordingSink(cfg.audio.playback_rate, path=speaker_path, paced=True, keep_s=5.0)

        mic_file = mic or write_wav(work / "voice.wav", _voice_like(8000), 8000)

        def make_mic(a: config.AudioConfig, _m: Any) -> AudioSource:
            return WavSource(mic_file, 8000, loop=True, paced=True)

        def make_speaker(a: config.AudioConfig, _m: Any) -> AudioSink:
            return speaker

        agent = Agent(
            cfg,
            credentials=Credentials(creds, env={}),
            hardware=Hardware(mic=make_mic, speaker=make_speaker, pin_factory=pins),
            state=StateStore(None),
        )
        task = asyncio.create_task(agent.run(), name="agent")
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def at(t: float) -> None:
            await asyncio.sleep(max(0.0, t0 + t - loop.time()))

        ptt: Any = pins.pin(PTT_PIN)  # gpiozero is untyped
        held_s = 0.0
        if script.press_s < duration_s:
            await at(script.press_s)
            logger.info("PTT pressed")
            ptt.drive_low()
            pressed_at = loop.time()
            await at(min(script.release_s, duration_s))
            logger.info("PTT released")
            ptt.drive_high()
            held_s = loop.time() - pressed_at
        if script.kill_s < duration_s:
            await at(script.kill_s)
            logger.info("killing the room server")
            await fake_vs.stop_ws()
            await at(min(script.restore_s, duration_s))
            logger.info("room server back")
            await fake_vs.start_ws()
        await at(duration_s)
        agent.stop()
        exit_code = await asyncio.wait_for(task, 5)
        speaker.close()

        voiced = sum(1 for f in fake_vs.frames if any(f.pcm))
        summary = {
            "duration_s": duration_s,
            "exit_code": exit_code,
            "videosdk_sessions": len(fake_vs.started_sessions),
            "reconnects": max(0, len(fake_vs.started_sessions) - 1),
            "frames_sent": fake_vs.frames_total,
            "voiced_frames_sent": voiced,
            "ptt_held_s": round(held_s, 2),
            "orgo_frames_received": int(agent.metrics.total("frames_received_total", link="orgo")),
            "speaker_file": str(speaker_path),
            "speaker_rms_dbfs": round(_rms_dbfs(speaker.samples), 1),
            "led_status_final": agent.status.led.value,
            "uplink_frames_dropped": int(
                agent.metrics.total("frames_dropped_total", link="videosdk")
            ),
        }
    return summary


def format_summary(s: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"demo summary ({s['duration_s']:.0f} s)",
            f"  videosdk: {s['videosdk_sessions']} sessions, {s['reconnects']} reconnect(s), "
            f"{s['frames_sent']} frames sent, {s['voiced_frames_sent']} voiced "
            f"(PTT held {s['ptt_held_s']} s), {s['uplink_frames_dropped']} dropped while down",
            f"  orgo: {s['orgo_frames_received']} frames received",
            f"  speaker: {s['speaker_file']} ({s['speaker_rms_dbfs']} dBFS rms)",
            f"  agent exit code: {s['exit_code']}",
        ]
    )
