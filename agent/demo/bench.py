"""``field-agent demo``: the whole agent on simulated hardware against the sandbox.

Starts the sandbox VideoSDK (echoing the device's voice back as room audio) and
the sandbox Orgo computer (a 440 Hz tone) on loopback, then the real agent with a
simulated mic (a spoken-like test signal, or ``--mic FILE``), a speaker that
records to a WAV file, and gpiozero's MockFactory for the buttons and LEDs
(``--real-audio``: the ALSA default mic and speaker instead).

Two ways to drive it, both through the mock GPIO pins, so the real
pin → debounce → controls path runs:

- scripted (no terminal, e.g. CI): press PTT at 2 s, release at 5 s, kill the
  room server at 6 s and bring it back at 7 s, then print a summary;
- live (stdin and stdout are a terminal): the keyboard is the hardware
  (:mod:`agent.demo.keys`) and a terminal view shows what the device does
  (:mod:`agent.demo.view`) until ``q``; then the same summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import config
from agent.app import Agent, Hardware, alsa_mic, alsa_speaker
from agent.controls import StateStore
from agent.demo import (
    CHANNEL_DOWN_PIN,
    CHANNEL_UP_PIN,
    DEMO_ROOMS,
    DOWN_PIN,
    EMERGENCY_PIN,
    MUTE_PIN,
    PTT_PIN,
    STATUS_LED,
    TALK_LED,
    UP_PIN,
)
from agent.demo.devices import MeteredSink, rms_dbfs, voice_like
from agent.hw.ports import AudioSink, AudioSource
from agent.hw.sim import RecordingSink, WavSource, write_wav
from agent.metrics import Metrics
from agent.sandbox.orgo import FakeOrgo, tone
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials

if TYPE_CHECKING:
    from agent.demo.view import LogRing

logger = logging.getLogger("agent.demo")  # the package: log lines read "demo: ..."

TAP_S = 0.05  # how long a tapped button (mute, volume) stays pressed; > the 20 ms debounce
ROOM_DOWN_S = 1.0  # how long the room server stays dead after a kill


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
                "channel_up_button": CHANNEL_UP_PIN,
                "channel_down_button": CHANNEL_DOWN_PIN,
                "emergency_button": EMERGENCY_PIN,
            },
            "videosdk": {
                "rooms": [{"id": i, "name": n} for i, n in DEMO_ROOMS],
                "api_base": fake_vs.api_base,
            },
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


class DemoBench:
    """The demo's world: sandbox servers, the agent, and its buttons, LEDs and speaker.

    ``async with DemoBench() as bench:`` starts everything; the methods press the
    buttons the way a person would (through the mock pins) and kill the room server.
    """

    def __init__(
        self, *, mic: Path | None = None, speaker_out: Path | None = None,
        real_audio: bool = False, keep: bool = False,
    ) -> None:  # fmt: skip
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        # the demo's config, credentials and mic WAV: removed on exit unless ``keep``
        self.work = Path(tempfile.mkdtemp(prefix="field-agent-demo-"))
        self.keep = keep
        self.real_audio = real_audio
        # the speaker's recording (outside the work folder, so it outlives it); None:
        # recorded in memory only (the summary's level still comes from it)
        self.speaker_path: Path | None = None if real_audio else speaker_out
        self._mic = mic
        self.pins = MockFactory(pin_class=MockPWMPin)
        self.fake_vs = FakeVideoSDK(echo=True, keep_frames=5000)
        self.fake_orgo = FakeOrgo(generator=tone(440.0, -24.0))
        self.speaker: MeteredSink | None = None
        self._recorder: RecordingSink | None = None
        self._agent: Agent | None = None
        self._task: asyncio.Task[int] | None = None
        self._exit = contextlib.AsyncExitStack()
        self._pressed_at: float | None = None
        self._held_s = 0.0
        self.room_down = False
        self.exit_code: int | None = None
        self.started_at = 0.0
        self.ran_s = 0.0

    @property
    def agent(self) -> Agent:
        assert self._agent is not None, "use `async with DemoBench()`"
        return self._agent

    async def __aenter__(self) -> DemoBench:
        loop = asyncio.get_running_loop()
        await self._exit.enter_async_context(self.fake_vs)
        await self._exit.enter_async_context(self.fake_orgo)
        creds = self.work / "credentials"
        creds.mkdir(mode=0o700)
        for name, value in (
            ("videosdk-token", "sandbox-token"),
            ("orgo-api-key", self.fake_orgo.api_key),
        ):
            (creds / name).write_text(value + "\n")
            (creds / name).chmod(0o600)
        cfg = _config(self.fake_vs, self.fake_orgo)
        self._agent = Agent(
            cfg,
            credentials=Credentials(creds, env={}),
            hardware=self._hardware(cfg),
            state=StateStore(None),
        )
        self._task = asyncio.create_task(self._agent.run(), name="agent")
        self.started_at = loop.time()
        return self

    def _hardware(self, cfg: config.Config) -> Hardware:
        def make_speaker(a: config.AudioConfig, m: Metrics) -> AudioSink:
            if self.real_audio:
                self.speaker = MeteredSink(alsa_speaker(a, m))
            else:
                self._recorder = RecordingSink(
                    a.playback_rate, path=self.speaker_path, paced=True, keep_s=5.0
                )
                self.speaker = MeteredSink(self._recorder)
            return self.speaker

        if self.real_audio:
            return Hardware(mic=alsa_mic, speaker=make_speaker, pin_factory=self.pins)
        mic_file = self._mic or write_wav(self.work / "voice.wav", voice_like(8000), 8000)

        def make_mic(a: config.AudioConfig, _m: Metrics) -> AudioSource:
            return WavSource(mic_file, 8000, loop=True, paced=True)

        return Hardware(mic=make_mic, speaker=make_speaker, pin_factory=self.pins)

    async def __aexit__(self, *exc: object) -> None:
        self.ran_s = self.elapsed()
        try:
            if self._task is not None and self._agent is not None:
                self.release_ptt()
                self._agent.stop()
                async with asyncio.timeout(5):
                    self.exit_code = await self._task
            if self._recorder is not None:
                self._recorder.close()
        finally:
            try:
                await self._exit.aclose()
            finally:
                if self.keep:
                    logger.info("kept the demo's work folder %s", self.work)
                else:
                    shutil.rmtree(self.work, ignore_errors=True)

    # -- what a person does ----------------------------------------------------------
    def elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self.started_at

    def pin(self, number: int) -> Any:
        """The mock pin (gpiozero is untyped): ``drive_low()`` presses a button."""
        return self.pins.pin(number)

    def press_ptt(self) -> None:
        if self._pressed_at is None:
            logger.info("PTT pressed")
            self.pin(PTT_PIN).drive_low()
            self._pressed_at = asyncio.get_running_loop().time()

    def release_ptt(self) -> None:
        if self._pressed_at is not None:
            logger.info("PTT released")
            self.pin(PTT_PIN).drive_high()
            self._held_s += asyncio.get_running_loop().time() - self._pressed_at
            self._pressed_at = None

    def tap(self, number: int) -> None:
        """Press and release a button (mute, volume up/down)."""
        self.pin(number).drive_low()
        asyncio.get_running_loop().call_later(TAP_S, self.pin(number).drive_high)

    def hold_emergency(self) -> None:
        """Hold the emergency button just past ``emergency.hold_s``: raises an emergency,
        or cancels the one going on."""
        pin = self.pin(EMERGENCY_PIN)
        if pin.state == 0:
            return  # already held
        logger.info("emergency button held")
        pin.drive_low()
        hold_s = self.agent.cfg.emergency.hold_s + 0.2
        asyncio.get_running_loop().call_later(hold_s, pin.drive_high)

    def led_lit(self, number: int) -> bool:
        """Whether the LED on pin ``number`` is lit right now (blinking included)."""
        return bool(self.pin(number).state)

    async def kill_room(self, down_s: float = ROOM_DOWN_S) -> None:
        """Kill the room's WebSocket server; bring it back ``down_s`` later."""
        if self.room_down:
            logger.info("the room server is already down")
            return
        self.room_down = True
        try:
            logger.info("killing the room server")
            await self.fake_vs.stop_ws()
            await asyncio.sleep(down_s)
        finally:
            await self.fake_vs.start_ws()
            self.room_down = False
            logger.info("room server back")

    # -- results -------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What happened (after the bench has stopped the agent)."""
        fake_vs, metrics = self.fake_vs, self.agent.metrics
        samples = self._recorder.samples if self._recorder is not None else np.zeros(0, np.int16)
        return {
            "duration_s": self.ran_s,
            "exit_code": self.exit_code,
            "videosdk_sessions": len(fake_vs.started_sessions),
            "reconnects": max(0, len(fake_vs.started_sessions) - 1),
            "frames_sent": fake_vs.frames_total,
            "voiced_frames_sent": fake_vs.voiced_total,
            "ptt_held_s": round(self._held_s, 2),
            "orgo_frames_received": int(metrics.total("frames_received_total", link="orgo")),
            "speaker_file": (
                "(ALSA default)" if self.real_audio
                else str(self.speaker_path) if self.speaker_path
                else "(not saved: --speaker-out FILE.wav keeps it)"
            ),
            "speaker_rms_dbfs": round(rms_dbfs(samples), 1) if self._recorder else None,
            "led_status_final": self.agent.status.led.value,
            "uplink_frames_dropped": int(metrics.total("frames_dropped_total", link="videosdk")),
        }


async def run_scripted(bench: DemoBench, duration_s: float, script: Script) -> None:
    """PTT down and up, kill and restore the room server, at the script's times."""
    loop = asyncio.get_running_loop()
    t0 = bench.started_at

    async def at(t: float) -> None:
        await asyncio.sleep(max(0.0, t0 + t - loop.time()))

    if script.press_s < duration_s:
        await at(script.press_s)
        bench.press_ptt()
        await at(min(script.release_s, duration_s))
        bench.release_ptt()
    if script.kill_s < duration_s:
        await at(script.kill_s)
        await bench.kill_room(min(script.restore_s, duration_s) - script.kill_s)
    await at(duration_s)


async def run_live(bench: DemoBench, duration_s: float | None, logs: LogRing) -> None:
    """The keyboard drives the hardware, the terminal view shows it, until ``q``."""
    from rich.console import Console
    from rich.live import Live

    from agent.demo.keys import Keyboard, PttKeys
    from agent.demo.view import DemoView

    loop = asyncio.get_running_loop()
    quit_ = asyncio.Event()
    room_tasks: set[asyncio.Task[None]] = set()

    def kill_room() -> None:
        task = loop.create_task(bench.kill_room(), name="demo-kill-room")
        room_tasks.add(task)
        task.add_done_callback(room_tasks.discard)

    ptt = PttKeys(loop, on_change=lambda talk: bench.press_ptt() if talk else bench.release_ptt())
    keys = {
        " ": ptt.hold,
        "t": ptt.toggle_latch,
        "m": lambda: bench.tap(MUTE_PIN),
        "+": lambda: bench.tap(UP_PIN),
        "=": lambda: bench.tap(UP_PIN),
        "-": lambda: bench.tap(DOWN_PIN),
        "k": kill_room,
        "]": lambda: bench.tap(CHANNEL_UP_PIN),
        "[": lambda: bench.tap(CHANNEL_DOWN_PIN),
        "e": bench.hold_emergency,
        "q": quit_.set,
    }
    view = DemoView(bench, ptt, logs)
    console = Console()
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in stop_signals:
        loop.add_signal_handler(sig, quit_.set)
    try:
        with (
            Keyboard(loop, keys),
            Live(view.render(), console=console, auto_refresh=False, transient=False) as live,
        ):
            while not quit_.is_set():
                if duration_s is not None and bench.elapsed() >= duration_s:
                    break
                live.update(view.render(), refresh=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1 / view.fps):
                        await quit_.wait()
            ptt.close()
            live.update(view.render(), refresh=True)
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
        for task in list(room_tasks):
            task.cancel()
        await asyncio.gather(*room_tasks, return_exceptions=True)


async def run_demo(
    *, duration_s: float | None = 10.0, mic: Path | None = None,
    speaker_out: Path | None = None, script: Script | None = None, live: bool = False,
    real_audio: bool = False, keep: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Run the demo (scripted, or ``live`` from the keyboard); return the summary."""
    bench = DemoBench(mic=mic, speaker_out=speaker_out, real_audio=real_audio, keep=keep)
    if live:
        from agent.demo.view import LogRing, capture_logs

        logs = LogRing()
        with capture_logs(logs):  # the view shows them
            async with bench:
                await run_live(bench, duration_s, logs)
                shown = logs.count
        for line in logs.since(shown, logging.WARNING):  # stopping: no view any more
            print(line, file=sys.stderr)
        return bench.summary()
    async with bench:
        scripted_s = 10.0 if duration_s is None else duration_s
        await run_scripted(bench, scripted_s, script or Script())
    return bench.summary()


def format_summary(s: dict[str, Any]) -> str:
    level = "" if s["speaker_rms_dbfs"] is None else f" ({s['speaker_rms_dbfs']} dBFS rms)"
    return "\n".join(
        [
            f"demo summary ({s['duration_s']:.0f} s)",
            f"  videosdk: {s['videosdk_sessions']} sessions, {s['reconnects']} reconnect(s), "
            f"{s['frames_sent']} frames sent, {s['voiced_frames_sent']} voiced "
            f"(PTT held {s['ptt_held_s']} s), {s['uplink_frames_dropped']} dropped while down",
            f"  orgo: {s['orgo_frames_received']} frames received",
            f"  speaker: {s['speaker_file']}{level}",
            f"  agent exit code: {s['exit_code']}",
        ]
    )
