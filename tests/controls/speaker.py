"""A device on the bench for cue and emergency tests: the real Controls, PttGate, Mixer
and Playback into a paced RecordingSink (the speaker file), buttons and LEDs on
gpiozero's MockFactory; and the signal analysis that finds a cue's pitch and timing
in the recording."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent import config
from agent.audio.cues import Cues
from agent.audio.mixer import Mixer
from agent.audio.playback import Playback
from agent.commands import sign_command
from agent.config import GpioConfig
from agent.controls import Controls, StateStore
from agent.hw.gpio import GpioPanel
from agent.hw.sim import RecordingSink
from agent.metrics import Metrics
from agent.proto.videosdk import TopicMessage
from agent.ptt import PttGate
from agent.secrets import Credentials
from agent.status import LinkState, StatusBoard

RATE = 48000
PTT, MUTE, UP, DOWN, EMERGENCY, STATUS_LED, TALK_LED = 17, 5, 6, 13, 16, 27, 22
KEY = "0123456789abcdef0123456789abcdef"
DEVICE = "dev_cue"
PINS = GpioConfig(
    ptt_button=PTT,
    mute_button=MUTE,
    volume_up_button=UP,
    volume_down_button=DOWN,
    emergency_button=EMERGENCY,
    status_led=STATUS_LED,
    talk_led=TALK_LED,
)


def make_config(**sections: dict[str, Any]) -> config.Config:
    raw: dict[str, dict[str, Any]] = {
        "device": {"id": DEVICE, "name": "Cue Bench"},
        "videosdk": {"room_id": "r"},
        "commands": {"burst": 50},
    }
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table}
    return config.from_dict(raw)


@dataclass
class Bench:
    status: StatusBoard
    controls: Controls
    gate: PttGate
    mixer: Mixer
    speaker: RecordingSink
    panel: GpioPanel
    pins: Any
    metrics: Metrics
    cfg: list[config.Config]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)
    link_takes_alerts: bool = True

    @property
    def cues(self) -> Cues:
        assert self.controls.cues is not None
        return self.controls.cues

    def link(self, state: LinkState) -> None:
        self.status.set_link("videosdk", state, "room r")

    def position(self) -> int:
        """The speaker's playhead now, in samples (the period being played)."""
        return self.speaker.frames_written

    async def hold(self, pin: int, seconds: float) -> None:
        self.pins.pin(pin).drive_low()
        await asyncio.sleep(seconds)
        self.pins.pin(pin).drive_high()

    async def tap(self, pin: int) -> None:
        await self.hold(pin, 0.05)
        await asyncio.sleep(0.03)

    def publish_alert(self, doc: dict[str, Any]) -> bool:
        if not self.link_takes_alerts:
            return False
        self.alerts.append(doc)
        return True

    def command(self, text: str, sender: str = "console-1") -> None:
        import datetime as dt

        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.controls.on_command(TopicMessage("DEVICE_CMD", text, sender, "C", now, "m-1", ""))

    def signed(self, cmd: str, value: Any = None) -> str:
        return sign_command(KEY, topic="DEVICE_CMD", device=DEVICE, cmd=cmd, value=value)


@contextlib.asynccontextmanager
async def bench(
    tmp_path: Path,
    pins: Any,
    cfg: config.Config | None = None,
    *,
    mode: str = "hold",
    store: StateStore | None = None,
) -> AsyncIterator[Bench]:
    """The bench, playing from start to end of the block."""
    cfg_box = [cfg or make_config()]
    metrics, status = Metrics(), StatusBoard(ptt_mode=mode)
    mixer = Mixer(RATE, metrics=metrics)
    speaker = RecordingSink(RATE, paced=True)
    creds = tmp_path / "creds"
    creds.mkdir(exist_ok=True)
    (creds / "command-key").write_text(KEY + "\n")
    (creds / "command-key").chmod(0o600)
    holder: list[Bench] = []
    controls = Controls(
        status,
        store=store or StateStore(tmp_path),
        default_volume=0.8,
        publish=lambda doc: holder[0].replies.append(doc),
        set_leds=lambda k, p: holder[0].panel.set_led(k, p) if holder else None,
        config=lambda: cfg_box[0],
        credentials=Credentials(creds, env={}),
        metrics=metrics,
        cues=Cues(lambda: cfg_box[0].cues, metrics=metrics),
        alert=lambda doc: holder[0].publish_alert(doc),
    )
    gate = PttGate(mode, on_change=lambda tx: status.set_ptt(state="talking" if tx else "idle"))
    controls.attach(gate, mixer)
    panel = GpioPanel(
        PINS, loop=asyncio.get_running_loop(), on_button=controls.on_button, factory=pins
    )
    b = Bench(status, controls, gate, mixer, speaker, panel, pins, metrics, cfg_box)
    holder.append(b)
    playback = Playback(speaker, mixer, metrics=metrics, status=status)
    task = asyncio.create_task(playback.run(), name="playback")
    await asyncio.sleep(0.1)  # the speaker is open and playing silence
    try:
        yield b
    finally:
        controls.close()
        panel.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- finding cues in the recording ------------------------------------------------------


def bursts(
    x: np.ndarray, rate: int = RATE, *, threshold: float = 300.0, bridge_s: float = 0.012
) -> list[tuple[int, int]]:
    """(start, end) sample indices of each sounding run; quieter gaps shorter than
    ``bridge_s`` (zero crossings, fades) do not split a run."""
    block = max(1, rate // 1000)  # 1 ms
    n = x.size // block
    if n == 0:
        return []
    peaks = np.abs(x[: n * block].astype(np.int32)).reshape(n, block).max(axis=1)
    loud = peaks > threshold
    runs: list[list[int]] = []
    bridge = int(bridge_s * 1000)
    for i in np.flatnonzero(loud):
        if runs and i - runs[-1][1] <= bridge:
            runs[-1][1] = int(i)
        else:
            runs.append([int(i), int(i)])
    return [(a * block, (b + 1) * block) for a, b in runs]


def pitch(x: np.ndarray, rate: int = RATE) -> float:
    """The dominant frequency of ``x`` (Hz, ~1 Hz resolution)."""
    seg = x.astype(np.float64) * np.hanning(x.size)
    spectrum = np.abs(np.fft.rfft(seg, n=max(rate, x.size)))
    return float(np.argmax(spectrum) * rate / max(rate, x.size))


def ms(samples: int, rate: int = RATE) -> float:
    return samples * 1000.0 / rate


def notes(x: np.ndarray, rate: int = RATE) -> list[float]:
    """The pitches of the notes in ``x``, in order: each sounding run, split where its
    pitch changes (20 ms windows, 10 ms apart; a pitch must hold for 2 windows)."""
    out: list[float] = []
    win, hop = rate // 50, rate // 100
    for start, end in bursts(x, rate):
        runs: list[list[float]] = []
        for i in range(start, max(start + 1, end - win + 1), hop):
            p = pitch(x[i : i + win], rate)
            if runs and abs(runs[-1][0] - p) <= 30:
                runs[-1].append(p)
            else:
                runs.append([p])
        for run in runs:
            if len(run) >= 2 or len(runs) == 1:
                p = float(np.median(run))
                if not out or abs(out[-1] - p) > 30 or len(runs) == 1:
                    out.append(p)
    return out
