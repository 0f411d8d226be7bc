"""Wiring: the one place that builds the agent's parts and runs them.

::

    Capture ──frames──▶ level/VAD ─▶ PttGate ─▶ Fanout ─▶ uplink queue per link
    links ──downlink──▶ Mixer sources ─▶ Playback ─▶ speaker
    StatusBoard ─▶ STATUS= / LEDs / status topic;  Heartbeats ─▶ WATCHDOG=1

:class:`Agent` runs one :class:`~agent.generation.Generation`: the parts built
from one Config (mixer, PTT gate, fanout; then capture, playback and each enabled
link), each a named task of the generation's own TaskGroup. Every part is built under
supervision: a build that raises is one log line and ATTENTION, never a crashed
agent; a part that fails later is logged with its traceback, counted, and
restarted after a backoff, so one bug in one link never silences the others.
READY=1 goes out once every part reports ready, never while one failed to build.

SIGHUP loads the config again: a bad file is reported and everything kept
running; a good one is applied where each change belongs (:mod:`agent.reload`,
RELOADING=1 ... READY=1). A SIGHUP during start-up waits until the build is over.
See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent import config as config_mod
from agent.audio.cues import Cues
from agent.backoff import BackoffPolicy, Reconnector
from agent.channels import Channels
from agent.config import AudioConfig, Config, PixelsConfig, RoomConfig, SecurityConfig
from agent.controls import Controls, StateStore
from agent.errors import ConfigError, GpioUnavailable, PixelsUnavailable
from agent.generation import Generation
from agent.hw.ports import AudioSink, AudioSource
from agent.links.registry import LinkDeps, LinkPolicies
from agent.links.registry import build as build_links
from agent.links.tls import httpx_verify
from agent.metrics import Metrics
from agent.netwatch import NetWatch, Route
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
    spi: Callable[[PixelsConfig], Any] | None = None  # the pixels' SpiBus; None = spidev


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
        wall_clock: Callable[[], float] | None = None,
        link_policies: LinkPolicies | None = None,
    ) -> None:
        """``link_policies``: shorter link timings (tests, benchmarks); None = production."""
        self.cfg = cfg
        self.link_policies = link_policies or LinkPolicies()
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
        self._wake = asyncio.Event()  # stop, reload, or a part became ready or failed
        self.generation: Generation | None = None
        self._panel: Any = None
        self._pixels: Any = None  # agent.hw.pixels.PixelLeds when pixels.enabled
        self._http_now: httpx.AsyncClient | None = None  # the links' REST client right now
        self.controls = Controls(
            self.status,
            store=state or StateStore.from_env(),
            default_volume=cfg.audio.volume,
            publish=self._publish_reply,
            set_leds=self._set_led,
            config=lambda: self.cfg,
            credentials=credentials,
            metrics=self.metrics,
            wall_clock=wall_clock or time.time,
            cues=Cues(lambda: self.cfg.cues, metrics=self.metrics),
            alert=self._publish_alert,
        )
        # the VideoSDK room the device is in; each switch is announced by the channel cue
        self.channels = Channels(
            cfg.videosdk.channels(),
            store=self.controls.store,
            on_channel_changed=self._announce_channel,
        )
        self.controls.channels = self.channels
        self.status.channel = self.channels.to_json

    def _announce_channel(self, number: int, _room: RoomConfig) -> None:
        self.controls.play_cue_channel(number)

    # -- control -------------------------------------------------------------------
    def stop(self) -> None:
        """Stop cleanly (SIGTERM/SIGINT)."""
        self._stop.set()
        self._wake.set()

    def reload(self) -> None:
        """Load the config again (SIGHUP); before the agent is ready, once it is."""
        self._reload.set()
        self._wake.set()

    def wake(self) -> None:
        """Something the main loop waits for happened (a part became ready or failed)."""
        self._wake.set()

    # -- main loop -----------------------------------------------------------------
    async def run(self) -> int:
        """Run until stop(); return the process exit code (0 after a clean stop)."""
        self.status.add_listener(lambda _b: self._status_changed.set())
        own_http = self._http is None
        http = self._http or _http_client(self.cfg.security)
        self._http_now = http
        self._open_gpio()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._report_status(), name="status")
                tg.create_task(NetWatch(self._on_route).run(), name="network")
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
            self.controls.close()  # pending state written
            if self._panel is not None:
                self._panel.close()  # LEDs off on a clean stop
            if self._pixels is not None:
                self._pixels.close()
            if own_http and self._http_now is not None:
                await self._http_now.aclose()
        logger.info("stopped")
        return 0

    def _on_route(self, old: Route, new: Route) -> None:
        """The default route came, went or moved: links whose connection went out
        through a lost interface drop it at once; a waiting link retries now."""
        self.metrics.inc("network_changes_total", route="up" if new.present else "down")
        lost = old.lost(new)
        links = self.generation.links if self.generation is not None else {}
        for link in links.values():
            link.runner.network_changed(new.present, lost=lost)

    async def _generations(self, http: httpx.AsyncClient) -> None:
        """Run generations until stop(): READY once the parts are ready; a reload is
        validated first (a refused one touches nothing) and handled only once the
        build is over (a SIGHUP during start-up waits; it never kills)."""
        while not self._stop.is_set():
            async with Generation(self, self.cfg, http) as gen:
                self.generation = gen
                reload = await self._serve(gen)
            if not reload:
                return

    async def _serve(self, gen: Generation) -> bool:
        """Announce READY when ``gen`` is ready; return True when a good reload asks for
        a new generation, False on stop."""
        announce, reported = True, False
        while True:
            if self._stop.is_set():
                self.notifier.stopping()
                logger.info("stopping")
                return False
            if announce and gen.ready:
                announce = False
                logger.info("ready (%s)", self.status.summary())
                self.notifier.status(self.status.summary())
                self.notifier.ready()
            elif announce and gen.settled and not reported:
                reported = True
                logger.error(
                    "not ready: %s could not be built (see above); no READY until it is",
                    ", ".join(p.split(":")[0] for p in gen.problems()),
                )
            if self._reload.is_set() and gen.settled:
                self._reload.clear()
                self.notifier.reloading()
                new = self._load_reload()
                if new is not None and gen.failed:
                    self.cfg = new  # nothing was built: build it all again
                    return True
                if new is not None:
                    await self._apply(gen, new)
                announce, reported = True, False  # READY=1 once the (re)built parts are ready
                continue
            self._wake.clear()
            await self._wake.wait()

    def _load_reload(self) -> Config | None:
        """The new config, or None when the reload is refused (the running one stays)."""
        if self._reload_config is None:
            logger.warning("reload asked for, but this agent has no config file to reload")
            self.metrics.inc("reloads_total", result="refused")
            return None
        try:
            new = self._reload_config()
        except ConfigError as e:
            for line in e.problems:
                logger.error("reload refused, keeping the running config: %s", line)
            self.status.set_error("reload refused: bad config (see journal)")
            self.metrics.inc("reloads_total", result="refused")
            return None
        logger.info("config reloaded from %s", new.path)
        self.status.clear_error("reload refused")
        return new

    async def _apply(self, gen: Generation, new: Config) -> None:
        old, self.cfg = self.cfg, new
        self.channels.configure(new.videosdk.channels())  # before the link is rebuilt
        stale: httpx.AsyncClient | None = None
        if old.security != new.security and self._http is None:
            # REST trust (security.ca_file) too: a new client for the links restarted below
            try:
                client = _http_client(new.security)
            except (OSError, ValueError) as e:  # the file changed since it was validated
                logger.error("reload: security.ca_file unusable (%s); REST keeps its trust", e)
            else:
                stale, gen.http, self._http_now = gen.http, client, client
        changes = await gen.apply(new)
        if stale is not None:
            await stale.aclose()
        if not changes:
            logger.info("reload: no change in %s", new.path)
        self.metrics.inc("reloads_total", result="applied" if changes else "unchanged")
        if old.gpio != new.gpio or old.pixels != new.pixels:
            if self._panel is not None:
                self._panel.close()
                self._panel = None
            if self._pixels is not None:
                self._pixels.close()
                self._pixels = None
            self._open_gpio()

    def _build_links(
        self, cfg: Config, gen: Generation, mixer: Any, http: httpx.AsyncClient
    ) -> dict[str, Any]:
        """Every enabled link of the registry (agent.links.registry), built from ``cfg``."""
        deps = LinkDeps(
            credentials=self.credentials,
            device=cfg.device,
            security=cfg.security,
            http=http,
            mixer=mixer,
            status=self.status,
            metrics=self.metrics,
            uplink=gen.fanout.subscribe,
            heartbeat=lambda name: self.heartbeats.register(f"link-{name}", 30.0),
            on_command=self.controls.on_command,
            connect=self._connect,
            channels=self.channels,
            policies=self.link_policies,
        )
        links: dict[str, Any] = dict(build_links(cfg, deps))
        for name in links:
            self.status.set_link(name, LinkState.CONNECTING)
        gen.links = links
        return links

    def on_transmit(self, transmitting: bool) -> None:
        """The PTT gate opened or closed: status, and ducking of the speaker."""
        self.status.set_ptt(state="talking" if transmitting else "idle")
        mixer = self.generation.mixer if self.generation is not None else None
        if mixer is not None:
            mixer.set_duck_db(self.cfg.ptt.duck_while_talking_db if transmitting else 0.0)

    # -- GPIO and remote replies ---------------------------------------------------
    def _open_pixels(self) -> None:
        """The APA102 LEDs (``[pixels]``); none there: one line, the agent goes on."""
        if not self.cfg.pixels.enabled:
            return
        from agent.hw.pixels import PixelLeds, open_bus

        try:
            bus = (self.hardware.spi or open_bus)(self.cfg.pixels)
        except PixelsUnavailable as e:
            logger.error("%s; the pixel LEDs are off, audio goes on", e)
            self.status.set_device("pixels", LinkState.ATTENTION, "pixel LEDs unavailable")
            return
        self._pixels = PixelLeds(self.cfg.pixels, bus, loop=asyncio.get_running_loop())
        self.controls.refresh_leds()

    def _open_gpio(self) -> None:
        self._open_pixels()
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
        if self._pixels is not None:
            self._pixels.set_led(key, pattern)

    def _publish_reply(self, doc: dict[str, Any]) -> None:
        link = self.generation.links.get("videosdk") if self.generation else None
        topic = self.cfg.videosdk.status_topic
        if link is not None and topic:
            link.publish(topic, doc)

    def _publish_alert(self, doc: dict[str, Any]) -> bool:
        """An emergency alert on ``videosdk.alert_topic``, the status topic's path (False:
        no link or topic to take it now)."""
        link = self.generation.links.get("videosdk") if self.generation else None
        topic = self.cfg.videosdk.alert_topic
        return link is not None and bool(topic) and bool(link.publish(topic, doc))

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


def _http_client(security: SecurityConfig) -> httpx.AsyncClient:
    """The REST client of the links, trusting ``security.ca_file`` besides the system."""
    return httpx.AsyncClient(
        timeout=HTTP_TIMEOUT_S, follow_redirects=False, verify=httpx_verify(security)
    )


class _Stopped(Exception):
    """Internal: leaves the agent's TaskGroup after a clean stop."""


def run_service(
    cfg: Config,
    *,
    credentials_dir: Path | None,
    config_path: Path,
    reload_pending: threading.Event | None = None,
) -> int:
    """Entry point of ``field-agent run``: real hardware, signals, systemd.

    ``reload_pending``: set by the CLI's early SIGHUP handler (a SIGHUP during start-up
    is remembered, then handled once the agent is ready)."""

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
        if reload_pending is not None and reload_pending.is_set():
            logger.info("SIGHUP during start-up: reloading once ready")
            agent.reload()
        logger.info("starting with %s", cfg.path)
        return await agent.run()

    return asyncio.run(main())
