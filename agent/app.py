"""Wiring: the one place that builds the agent's parts and runs them.

::

    Capture ──frames──▶ level/VAD ─▶ PttGate ─▶ Fanout ─▶ uplink queue per link
    links ──downlink──▶ Mixer sources ─▶ Playback ─▶ speaker
    StatusBoard ─▶ STATUS= / LEDs / status topic;  Heartbeats ─▶ WATCHDOG=1

:class:`Agent` owns one *generation* of parts built from one Config. SIGHUP
loads the config again: a bad file is reported and the running generation
kept; a good one replaces the generation (RELOADING=1 ... READY=1). Each part
runs as a named task under one TaskGroup, supervised: an unexpected exception
is logged with its traceback, counted, and the part restarted after a backoff,
so one bug in one link never silences the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent import config as config_mod
from agent.audio.fanout import Fanout
from agent.backoff import BackoffPolicy, Reconnector
from agent.config import AudioConfig, Config
from agent.controls import Controls, StateStore
from agent.errors import ConfigError, GpioUnavailable
from agent.hw.ports import AudioSink, AudioSource
from agent.links.tls import httpx_verify
from agent.metrics import Metrics
from agent.netwatch import watch_network
from agent.pcm import Frame
from agent.ptt import PttGate
from agent.secrets import Credentials
from agent.service import Heartbeats, Notifier, run_watchdog, watchdog_interval
from agent.status import Led, LinkState, StatusBoard

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 10.0
STATUS_REFRESH_S = 1.0


def alsa_mic(cfg: AudioConfig, metrics: Metrics) -> AudioSource:
    from agent.hw.alsa import AlsaSource

    return AlsaSource(cfg.capture_device, cfg.capture_rate, metrics=metrics)


def alsa_speaker(cfg: AudioConfig, metrics: Metrics) -> AudioSink:
    from agent.hw.alsa import AlsaSink

    return AlsaSink(cfg.playback_device, cfg.playback_rate, metrics=metrics)


MicFactory = Callable[[AudioConfig, Metrics], AudioSource]
SpeakerFactory = Callable[[AudioConfig, Metrics], AudioSink]


@dataclass
class Hardware:
    """How the agent gets its devices; the entry point picks real or simulated ones."""

    mic: MicFactory = alsa_mic
    speaker: SpeakerFactory = alsa_speaker
    pin_factory: Any = None  # a gpiozero pin factory object; None = from gpio.pin_factory


@dataclass
class Generation:
    """The parts built from one Config (replaced as a whole on reload)."""

    cfg: Config
    gate: PttGate
    fanout: Fanout
    links: dict[str, Any] = field(default_factory=dict)


class Agent:
    """The agent. Build with a Config; ``await agent.run()`` until ``stop()``."""

    def __init__(
        self,
        cfg: Config,
        *,
        credentials: Credentials,
        hardware: Hardware | None = None,
        connect: Callable[..., Any] | None = None,
        http: httpx.AsyncClient | None = None,
        notifier: Notifier | None = None,
        heartbeats: Heartbeats | None = None,
        metrics: Metrics | None = None,
        reload_config: Callable[[], Config] | None = None,
        state: StateStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.credentials = credentials
        self.hardware = hardware or Hardware()
        self._connect = connect
        self._http = http
        self.notifier = notifier or Notifier()
        self.heartbeats = heartbeats or Heartbeats()
        self.metrics = metrics or Metrics()
        if self.notifier.metrics is None:
            self.notifier.metrics = self.metrics  # counts failed sd_notify
        self.status = StatusBoard(ptt_mode=cfg.ptt.mode, volume=cfg.audio.volume)
        self._reload_config = reload_config
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._status_changed = asyncio.Event()
        self.ready = asyncio.Event()
        self.generation: Generation | None = None
        self._panel: Any = None
        self.controls = Controls(
            self.status,
            store=state or StateStore.from_env(),
            default_volume=cfg.audio.volume,
            publish=self._publish_reply,
            set_leds=self._set_led,
        )

    # -- control -------------------------------------------------------------------
    def stop(self) -> None:
        """Stop cleanly (SIGTERM/SIGINT)."""
        self._stop.set()

    def reload(self) -> None:
        """Load the config again (SIGHUP)."""
        self._reload.set()

    # -- main loop -----------------------------------------------------------------
    async def run(self) -> int:
        """Run until stop(); return the process exit code (0 after a clean stop)."""
        self.status.add_listener(lambda _b: self._status_changed.set())
        own_http = self._http is None
        http = self._http or httpx.AsyncClient(
            timeout=HTTP_TIMEOUT_S,
            follow_redirects=False,
            verify=httpx_verify(self.cfg.security),  # security.ca_file: read at start
        )
        self._open_gpio()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._report_status(), name="status")
                tg.create_task(watch_network(), name="network")  # says when a network appears
                if self.cfg.metrics.listen:
                    tg.create_task(self._observe(self.cfg.metrics.listen), name="observe")
                interval = watchdog_interval()
                if interval is not None:
                    tg.create_task(
                        run_watchdog(self.notifier, self.heartbeats, interval), name="watchdog"
                    )
                await self._generations(http)
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            if self._panel is not None:
                self._panel.close()  # LEDs off on a clean stop
            if own_http:
                await http.aclose()
        logger.info("stopped")
        return 0

    async def _generations(self, http: httpx.AsyncClient) -> None:
        first = True
        while not self._stop.is_set():
            gen_task = asyncio.create_task(self._generation(self.cfg, http), name="generation")
            waiters = [
                asyncio.create_task(self._stop.wait(), name="wait-stop"),
                asyncio.create_task(self._reload.wait(), name="wait-reload"),
            ]
            if first:
                await self._announce_ready(gen_task)
                first = False
            else:
                self.notifier.ready()
            await asyncio.wait([gen_task, *waiters], return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if self._stop.is_set():
                self.notifier.stopping()
                logger.info("stopping")
            gen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gen_task
            if self._reload.is_set():
                self._reload.clear()
                self.notifier.reloading()
                self._apply_reload()

    async def _announce_ready(self, gen_task: asyncio.Task[None]) -> None:
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait([ready, gen_task], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        logger.info("ready (%s)", self.status.summary())
        self.notifier.status(self.status.summary())
        self.notifier.ready()

    def _apply_reload(self) -> None:
        if self._reload_config is None:
            logger.warning("reload asked for, but this agent has no config file to reload")
            return
        try:
            new = self._reload_config()
        except ConfigError as e:
            for line in e.problems:
                logger.error("reload refused, keeping the running config: %s", line)
            self.status.set_error("reload refused: bad config (see journal)")
            return
        logger.info("config reloaded from %s", new.path)
        self.cfg = new
        self.status.set_ptt(mode=new.ptt.mode)

    async def _generation(self, cfg: Config, http: httpx.AsyncClient) -> None:
        from agent.audio.engine import Capture, Playback
        from agent.audio.mixer import Mixer

        metrics = self.metrics
        mixer = Mixer(cfg.audio.playback_rate, metrics=metrics)
        gate = PttGate(cfg.ptt.mode, idle=cfg.ptt.idle, on_change=self._on_transmit)
        gen = Generation(cfg, gate, Fanout(metrics))
        self.generation = gen
        self._mixer = mixer
        self.controls.attach(gate, mixer)
        capture = Capture(
            self.hardware.mic(cfg.audio, metrics),
            metrics=metrics,
            status=self.status,
            gain_db=cfg.audio.mic_gain_db,
            heartbeat=self.heartbeats.register("capture", 5.0).beat,
        )
        playback = Playback(
            self.hardware.speaker(cfg.audio, metrics),
            mixer,
            metrics=metrics,
            status=self.status,
            heartbeat=self.heartbeats.register("playback", 5.0).beat,
        )
        links = self._build_links(cfg, gen, mixer, http)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    self._supervise("capture", lambda: self._pump(capture, gen)), name="capture"
                )
                tg.create_task(self._supervise("playback", playback.run), name="playback")
                for name, link in links.items():
                    tg.create_task(self._supervise(f"link-{name}", link.run), name=f"link-{name}")
                self.ready.set()
        finally:
            self.heartbeats.unregister("capture")
            self.heartbeats.unregister("playback")
            for name in links:
                self.heartbeats.unregister(f"link-{name}")
                self.status.remove_link(name)

    def _build_links(
        self, cfg: Config, gen: Generation, mixer: Any, http: httpx.AsyncClient
    ) -> dict[str, Any]:
        common: dict[str, Any] = {
            "mixer": mixer,
            "status": self.status,
            "metrics": self.metrics,
            "http": http,
        }
        if self._connect is not None:
            common["connect"] = self._connect
        links: dict[str, Any] = {}
        if cfg.videosdk.enabled:
            from agent.links.videosdk import VideoSDKLink

            links["videosdk"] = VideoSDKLink(
                cfg.videosdk,
                cfg.device,
                self.credentials,
                uplink=gen.fanout.subscribe("videosdk"),
                heartbeat=self.heartbeats.register("link-videosdk", 30.0),
                on_command=self.controls.on_command,
                security=cfg.security,
                **common,
            )
        if cfg.orgo.enabled:
            from agent.links.orgo import OrgoLink

            links["orgo"] = OrgoLink(
                cfg.orgo,
                self.credentials,
                heartbeat=self.heartbeats.register("link-orgo", 30.0),
                security=cfg.security,
                **common,
            )
        if cfg.pbx.enabled:
            from agent.links.pbx import PbxLink

            links["pbx"] = PbxLink(
                cfg.pbx,
                self.credentials,
                mixer=mixer,
                status=self.status,
                metrics=self.metrics,
                heartbeat=self.heartbeats.register("link-pbx", 30.0),
            )
        if cfg.fastrtc.enabled:
            from agent.links.fastrtc import FastRTCLink

            links["fastrtc"] = FastRTCLink(
                cfg.fastrtc,
                uplink=gen.fanout.subscribe("fastrtc"),
                heartbeat=self.heartbeats.register("link-fastrtc", 30.0),
                security=cfg.security,
                **{k: v for k, v in common.items() if k != "http"},  # no REST in this link
            )
        for name in links:
            self.status.set_link(name, LinkState.CONNECTING)
        gen.links = links
        return links

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a part; restart it with backoff if it fails unexpectedly."""
        retry = Reconnector(BackoffPolicy(initial_s=0.5, cap_s=30.0))
        while True:
            try:
                await run()
                return
            except Exception:
                self.metrics.inc("task_crashes_total", task=name)
                delay = retry.next_delay()
                logger.exception("%s failed unexpectedly; restarting it in %.1f s", name, delay)
                self.status.set_error(f"{name} failed unexpectedly (see journal)")
                await asyncio.sleep(delay)

    async def _pump(self, capture: Any, gen: Generation) -> None:
        """Capture → level → PTT gate → every uplink."""
        from agent.audio.level import Vad

        vad = Vad(gen.cfg.ptt.vox_threshold_dbfs, gen.cfg.ptt.vox_hangover_ms)
        frame: Frame
        # aclosing: leaving the loop (cancellation) closes the capture device at once
        # The mic level for STATUS is sampled by Capture itself; the VAD only runs for VOX.
        async with contextlib.aclosing(capture.frames()) as frames:
            async for frame in frames:
                speech = gen.gate.mode == "vox" and vad.update(frame.pcm)
                out = gen.gate.gate(frame, speech=speech)
                if out is not None:
                    gen.fanout.publish(out)

    def _on_transmit(self, transmitting: bool) -> None:
        self.status.set_ptt(state="talking" if transmitting else "idle")
        mixer = getattr(self, "_mixer", None)
        if mixer is not None:
            mixer.set_duck_db(self.cfg.ptt.duck_while_talking_db if transmitting else 0.0)

    # -- GPIO and remote replies ---------------------------------------------------
    def _open_gpio(self) -> None:
        if not self.cfg.gpio.pins():
            return
        from agent.hw.gpio import GpioPanel

        try:
            self._panel = GpioPanel(
                self.cfg.gpio,
                loop=asyncio.get_running_loop(),
                on_button=self._on_button,
                factory=self.hardware.pin_factory,
            )
        except GpioUnavailable as e:
            logger.error("%s; buttons and LEDs are off, audio goes on", e)
            self.status.set_device("gpio", LinkState.ATTENTION, "gpio unavailable")
            return
        self.controls.refresh_leds()

    def _on_button(self, key: str, event: Any, t: float) -> None:
        from agent.hw.gpio import ButtonEvent

        if event is ButtonEvent.PRESSED:
            self.metrics.inc("button_presses_total", button=key)
        self.controls.on_button(key, event, t)

    def _set_led(self, key: str, pattern: Led) -> None:
        if self._panel is not None:
            self._panel.set_led(key, pattern)

    def _publish_reply(self, doc: dict[str, Any]) -> None:
        link = self.generation.links.get("videosdk") if self.generation else None
        topic = self.cfg.videosdk.status_topic
        if link is not None and topic:
            link.publish(topic, doc)

    async def _report_status(self) -> None:
        """STATUS= on every significant change and at least every second (countdowns)."""
        while True:
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation
            # that arrives while the event is being set (the stop would then hang).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_REFRESH_S):
                    await self._status_changed.wait()
            self._status_changed.clear()
            self.notifier.status(self.status.summary())

    async def _observe(self, listen: str) -> None:
        """/metrics and /status on ``metrics.listen`` (the first config's; a reload that
        changes it needs a restart). An address that cannot be bound is retried, the
        agent goes on."""
        from agent.observe.server import ObserveServer

        server = ObserveServer(listen, self.metrics, self.status)
        retry = Reconnector(BackoffPolicy(initial_s=5.0, cap_s=60.0))
        failing = False
        while True:
            try:
                await server.run()
            except OSError as e:
                delay = retry.next_delay()
                if not failing:
                    logger.error("cannot serve /metrics and /status on %s: %s", listen, e)
                    self.status.set_error(f"metrics: cannot listen on {listen}")
                failing = True
                await asyncio.sleep(delay)


class _Stopped(Exception):
    """Internal: leaves the agent's TaskGroup after a clean stop."""


def run_service(cfg: Config, *, credentials_dir: Path | None, config_path: Path) -> int:
    """Entry point of ``field-agent run``: real hardware, signals, systemd."""

    async def main() -> int:
        agent = Agent(
            cfg,
            credentials=Credentials(credentials_dir),
            reload_config=lambda: config_mod.load(config_path),
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, agent.stop)
        loop.add_signal_handler(signal.SIGINT, agent.stop)
        loop.add_signal_handler(signal.SIGHUP, agent.reload)
        logger.info("starting with %s", cfg.path)
        return await agent.run()

    return asyncio.run(main())
