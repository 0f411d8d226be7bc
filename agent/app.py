"""Wiring: the one place that builds the agent's parts and runs them.

::

    Capture ──frames──▶ level/VAD ─▶ PttGate ─▶ Fanout ─▶ uplink queue per link
    links ──downlink──▶ Mixer sources ─▶ Playback ─▶ speaker
    StatusBoard ─▶ STATUS= / LEDs / status topic;  Heartbeats ─▶ WATCHDOG=1

:class:`Agent` runs one :class:`Generation`: the parts built from one Config
(mixer, PTT gate, fanout; then capture, playback and each enabled link), each a
named task of the generation's own TaskGroup. Every part is built under
supervision: a build that raises is one log line and ATTENTION, never a crashed
agent; a part that fails later is logged with its traceback, counted, and
restarted after a backoff, so one bug in one link never silences the others.
READY=1 goes out once every part reports ready, never while one failed to build.

SIGHUP loads the config again: a bad file is reported and everything kept
running; a good one is applied (RELOADING=1 ... READY=1). A SIGHUP during
start-up waits until the build is over. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from agent import config as config_mod
from agent.audio.fanout import Fanout
from agent.backoff import BackoffPolicy, Reconnector
from agent.config import AudioConfig, Config, SecurityConfig
from agent.controls import Controls, StateStore
from agent.errors import ConfigError, GpioUnavailable
from agent.hw.ports import AudioSink, AudioSource
from agent.links.tls import httpx_verify
from agent.metrics import Metrics
from agent.pcm import Frame
from agent.ptt import PttGate
from agent.secrets import Credentials
from agent.service import Heartbeats, Notifier, run_watchdog, watchdog_interval
from agent.status import Led, LinkState, StatusBoard

if TYPE_CHECKING:
    from agent.audio.engine import Capture
    from agent.audio.mixer import Mixer

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


Runner = Callable[[Callable[[], None]], Awaitable[None]]
"""A built part's run: ``await run(ready)`` until cancelled, calling ``ready()`` once."""

LINKS = ("videosdk", "orgo", "pbx", "fastrtc")  # link names = their config sections
BUILD_RETRY = BackoffPolicy(initial_s=0.5, cap_s=30.0)

# What a reload restarts (everything else is applied in place, or at the next start):
# the config sections each link is built from: a change there restarts that link only
LINK_SECTIONS: dict[str, frozenset[str]] = {
    "videosdk": frozenset({"videosdk", "device", "security"}),
    "orgo": frozenset({"orgo", "security"}),
    "pbx": frozenset({"pbx", "security"}),
    "fastrtc": frozenset({"fastrtc", "security"}),
}
# credentials a link reads once, when it starts (the others read theirs at each attempt)
READ_AT_START: dict[str, tuple[str, ...]] = {"pbx": ("pbx-secret",)}
CAPTURE_KEYS = frozenset({"audio.capture_device", "audio.capture_rate"})  # reopen the mic
PLAYBACK_KEYS = frozenset({"audio.playback_device"})  # reopen the speaker
MIXER_KEYS = frozenset({"audio.playback_rate"})  # new mixer: speaker + every link restart
AT_NEXT_START = frozenset({"metrics.listen"})  # bound once, at start

Change = tuple[str, Any, Any]  # (section.key, old value, new value)


@dataclass
class Part:
    """One supervised part of a generation (capture, playback, ``link-<name>``)."""

    name: str
    task: asyncio.Task[None] | None = None
    ready: bool = False  # built, started, and said so (device opened or retrying)
    failed: str = ""  # why its last build failed ("" once built)


class Generation:
    """The running parts built from the agent's Config, under one TaskGroup of their own.

    ::

        async with Generation(agent, cfg, http) as gen:
            ...  # gen.ready: every part reported ready; gen.failed: what could not be built
            await gen.apply(new_cfg)  # a good reload, applied in place

    A generation lives from start to stop: a reload changes its parts in place
    (:meth:`apply`); only a reload after the mixer itself could not be built makes a
    new one.

    Entering builds the mixer, the PTT gate and the uplink fanout (a failure there is
    one log line, ATTENTION, ``gen.failed``, and no parts), then starts one named task
    per part: ``capture``, ``playback`` and ``link-<name>`` per enabled link. Each task
    builds its part under supervision: a build that raises is one log line, ATTENTION
    on the part, and a retry after a backoff; a part that crashes later is restarted.
    A part is *ready* once built and started: the capture and playback devices opened
    or retrying, a link constructed and running. Leaving cancels every part (links
    say goodbye, devices close) and waits for them.
    """

    def __init__(self, agent: Agent, cfg: Config, http: httpx.AsyncClient) -> None:
        self.agent = agent
        self.cfg = cfg
        self.http = http
        self.parts: dict[str, Part] = {}
        self.links: dict[str, Any] = {}  # link name -> the running link object
        self.failed = ""  # why the generation could not be built ("" = it was)
        self.mixer: Mixer | None = None
        self.gate: PttGate | None = None
        self.fanout = Fanout(agent.metrics)
        self.capture: Capture | None = None  # the running one (mic gain applies live)
        self._credential_prints: dict[str, bytes | None] = {}
        self._tg = asyncio.TaskGroup()

    # -- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> Generation:
        await self._tg.__aenter__()
        try:
            self._build_core(self.cfg)
        except Exception as e:
            self.failed = _reason(e)
            self.agent._build_failed("audio", "speaker", e, None)
            return self
        self.start_part("capture", self._capture)
        self.start_part("playback", self._playback)
        for name in LINKS:
            if getattr(self.cfg, name).enabled:
                self.start_link(name)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        for part in self.parts.values():
            if part.task is not None:
                part.task.cancel()
        try:
            await self._tg.__aexit__(*exc_info)
        finally:
            for name in list(self.parts):
                self._forget(name)

    # -- state -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Every part built and reported ready (never when something failed to build)."""
        return not self.failed and all(p.ready for p in self.parts.values())

    @property
    def settled(self) -> bool:
        """The build is over: every part is ready or failed to build."""
        return bool(self.failed) or all(p.ready or p.failed for p in self.parts.values())

    def problems(self) -> list[str]:
        """What failed to build, one ``part: reason`` per line."""
        out = [f"audio: {self.failed}"] if self.failed else []
        return out + [f"{p.name}: {p.failed}" for p in self.parts.values() if p.failed]

    # -- parts -------------------------------------------------------------------
    def _build_core(self, cfg: Config) -> None:
        self.gate = PttGate(cfg.ptt.mode, idle=cfg.ptt.idle, on_change=self.agent._on_transmit)
        self.agent.status.set_ptt(mode=cfg.ptt.mode)
        self._build_mixer(cfg)

    def _build_mixer(self, cfg: Config) -> None:
        from agent.audio.mixer import Mixer

        self.mixer = Mixer(cfg.audio.playback_rate, metrics=self.agent.metrics)
        assert self.gate is not None
        self.agent.controls.attach(self.gate, self.mixer)  # volume and mute carry over
        if self.gate.transmitting:
            self.mixer.set_duck_db(cfg.ptt.duck_while_talking_db)

    def start_part(self, name: str, build: Callable[[], Runner]) -> Part:
        """Start part ``name`` as a named task of this generation's TaskGroup."""
        part = Part(name)
        self.parts[name] = part
        part.task = self._tg.create_task(self._supervise(part, build), name=name)
        return part

    def start_link(self, name: str) -> Part:
        return self.start_part(f"link-{name}", functools.partial(self._link, name))

    async def stop_parts(self, names: Iterable[str]) -> None:
        """Cancel these parts together and wait until they have let go of their devices
        and sockets (links say goodbye, each within a second)."""
        names = list(names)
        tasks = [p.task for n in names if (p := self.parts.get(n)) and p.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for name in names:
            self._forget(name)

    # -- reload --------------------------------------------------------------------
    async def apply(self, new: Config) -> list[Change]:
        """Apply a validated config in place; return what changed, key by key.

        Each change goes where it belongs: ``audio.volume`` sets the volume and
        ``audio.mic_gain_db`` the gain, ``[ptt]`` goes to the gate, all without
        reopening anything; a capture device or rate reopens the mic only, a playback
        device the speaker only; ``audio.playback_rate`` needs a new mixer, so the
        speaker and every link playing into it restart; a change to a link's section
        (or to ``[device]``/``[security]``, which links are built from, or to a
        credential the link reads only at start) restarts that link only. A part whose
        build failed is built again.
        """
        old, self.cfg = self.cfg, new
        changes = config_changes(old, new)
        keys = {k for k, _, _ in changes}
        sections = {k.split(".")[0] for k in keys}
        for key, a, b in changes:
            note = " (applies at the next restart)" if key in AT_NEXT_START else ""
            logger.info("reload: %s %s -> %s%s", key, show_value(a), show_value(b), note)
        failed = {n for n, p in self.parts.items() if p.failed}
        new_mixer = bool(keys & MIXER_KEYS)
        stop: set[str] = set()
        start: list[str] = []
        if keys & CAPTURE_KEYS or "capture" in failed:
            stop.add("capture")
            start.append("capture")
        if keys & PLAYBACK_KEYS or new_mixer or "playback" in failed:
            stop.add("playback")
            start.append("playback")
        for name in LINKS:
            part = f"link-{name}"
            running, wanted = part in self.parts, getattr(new, name).enabled
            restart = (
                new_mixer
                or part in failed
                or bool(sections & LINK_SECTIONS[name])
                or self._credentials_rotated(name)
            )
            if running and (restart or not wanted):
                stop.add(part)
            if wanted and (restart or not running):
                start.append(part)
        await self.stop_parts(sorted(stop))
        if new_mixer:
            try:
                self._build_mixer(new)
            except Exception as e:
                self.failed = _reason(e)
                self.agent._build_failed("audio", "speaker", e, None)
                return changes
        self._apply_live(old, new, keys)
        for part in start:
            if part == "capture":
                self.start_part("capture", self._capture)
            elif part == "playback":
                self.start_part("playback", self._playback)
            else:
                self.start_link(part.removeprefix("link-"))
        restarted = sorted({*stop, *start})
        if restarted:
            logger.info("reload: restarted %s", ", ".join(restarted))
        elif changes:
            logger.info("reload: applied without restarting anything")
        return changes

    def _apply_live(self, old: Config, new: Config, keys: set[str]) -> None:
        agent = self.agent
        if "audio.volume" in keys:
            agent.controls.set_volume(new.audio.volume)
        if "audio.mic_gain_db" in keys and self.capture is not None:
            self.capture.gain_db = new.audio.mic_gain_db  # read by the capture thread
        gate = self.gate
        if gate is not None:
            if "ptt.mode" in keys:
                gate.set_mode(new.ptt.mode)
                agent.status.set_ptt(mode=new.ptt.mode)
            gate.idle = new.ptt.idle
        transmitting = gate is not None and gate.transmitting
        if "ptt.duck_while_talking_db" in keys and transmitting and self.mixer is not None:
            self.mixer.set_duck_db(new.ptt.duck_while_talking_db)

    def _credential_print(self, link: str) -> bytes | None:
        """A digest of the credentials ``link`` reads at start (never the values)."""
        names = READ_AT_START.get(link)
        if not names:
            return None
        digest = hashlib.sha256()
        for name in names:
            path = self.agent.credentials.path_of(name)
            try:
                digest.update(path.read_bytes() if path is not None else b"\0missing")
            except OSError:
                digest.update(b"\0unreadable")
        return digest.digest()

    def _credentials_rotated(self, link: str) -> bool:
        if link not in READ_AT_START or f"link-{link}" not in self.parts:
            return False
        if self._credential_print(link) == self._credential_prints.get(link):
            return False
        logger.info("reload: %s changed: link %s restarts", "/".join(READ_AT_START[link]), link)
        return True

    def _forget(self, name: str) -> None:
        self.parts.pop(name, None)
        self.agent.heartbeats.unregister(name)
        if name.startswith("link-"):
            link = name.removeprefix("link-")
            self.links.pop(link, None)
            self.fanout.unsubscribe(link)
            self.agent.status.remove_link(link)

    async def _supervise(self, part: Part, build: Callable[[], Runner]) -> None:
        """Build the part (retrying a build that raises), then run it, restarting it
        with backoff if it fails unexpectedly."""
        agent = self.agent
        retry = Reconnector(BUILD_RETRY)
        while True:
            try:
                run = build()
                break
            except Exception as e:
                delay = retry.next_delay()
                first = not part.failed
                part.failed = _reason(e)
                agent._wake.set()
                kind, key = _status_slot(part.name)
                agent._build_failed(part.name, key, e, delay, first=first, kind=kind)
                await asyncio.sleep(delay)
        if part.failed:
            logger.info("%s: built after all", part.name)
            part.failed = ""
            agent.status.clear_error(f"{part.name}: cannot start")

        def ready() -> None:
            if not part.ready:
                part.ready = True
                agent._wake.set()

        retry = Reconnector(BUILD_RETRY)
        while True:
            try:
                await run(ready)
                return
            except Exception:
                agent.metrics.inc("task_crashes_total", task=part.name)
                delay = retry.next_delay()
                logger.exception(
                    "%s failed unexpectedly; restarting it in %.1f s", part.name, delay
                )
                agent.status.set_error(f"{part.name} failed unexpectedly (see journal)")
                await asyncio.sleep(delay)

    def _capture(self) -> Runner:
        from agent.audio.engine import Capture

        agent, cfg = self.agent, self.cfg
        capture = Capture(
            agent.hardware.mic(cfg.audio, agent.metrics),
            metrics=agent.metrics,
            status=agent.status,
            gain_db=cfg.audio.mic_gain_db,
            heartbeat=agent.heartbeats.register("capture", 5.0).beat,
        )
        self.capture = capture

        async def run(ready: Callable[[], None]) -> None:
            capture.on_ready = ready
            await agent._pump(capture, self)

        return run

    def _playback(self) -> Runner:
        from agent.audio.engine import Playback

        agent, cfg = self.agent, self.cfg
        assert self.mixer is not None
        playback = Playback(
            agent.hardware.speaker(cfg.audio, agent.metrics),
            self.mixer,
            metrics=agent.metrics,
            status=agent.status,
            heartbeat=agent.heartbeats.register("playback", 5.0).beat,
        )

        async def run(ready: Callable[[], None]) -> None:
            playback.on_ready = ready
            await playback.run()

        return run

    def _link(self, name: str) -> Runner:
        """Build link ``name`` alone: ``Agent._build_links`` with every other link off."""
        others = dict(self.links)
        self._credential_prints[name] = self._credential_print(name)
        built = self.agent._build_links(only_link(self.cfg, name), self, self.mixer, self.http)
        self.links = {**others, **built}  # _build_links set gen.links to its own result
        link = built[name]

        async def run(ready: Callable[[], None]) -> None:
            ready()
            await link.run()

        return run


def config_changes(old: Config, new: Config) -> list[Change]:
    """Every key whose value differs, in the order of the config file's sections."""
    out: list[Change] = []
    for section in config_mod.SECTIONS:
        a, b = getattr(old, section), getattr(new, section)
        if a != b:
            for f in dataclasses.fields(a):
                va, vb = getattr(a, f.name), getattr(b, f.name)
                if va != vb:
                    out.append((f"{section}.{f.name}", va, vb))
    return out


def show_value(v: Any) -> str:
    """A config value as the file spells it; a URL without its query or user info (a
    FastRTC app's URL may carry a token: config holds no secret, but a URL might)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "(unset)"
    if isinstance(v, tuple):
        return "[" + ", ".join(show_value(x) for x in v) + "]"
    if isinstance(v, str):
        if "://" in v:
            parts = urlsplit(v)
            host = parts.netloc.rpartition("@")[2]
            v = urlunsplit((parts.scheme, host, parts.path, "..." if parts.query else "", ""))
        return f'"{v}"'
    return repr(v)


def only_link(cfg: Config, name: str) -> Config:
    """``cfg`` with every link section but ``name`` disabled."""
    sections = {n: dataclasses.replace(getattr(cfg, n), enabled=n == name) for n in LINKS}
    return dataclasses.replace(cfg, **sections)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{text} ({type(exc).__name__})" if str(exc) else text


def _status_slot(part: str) -> tuple[str, str]:
    """Where a part shows on the status board: (``link``|``device``, name)."""
    if part.startswith("link-"):
        return "link", part.removeprefix("link-")
    return "device", {"capture": "mic", "playback": "speaker"}.get(part, part)


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
        self.status = StatusBoard(ptt_mode=cfg.ptt.mode, volume=cfg.audio.volume)
        self._reload_config = reload_config
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._status_changed = asyncio.Event()
        self._wake = asyncio.Event()  # stop, reload, or a part became ready or failed
        self.generation: Generation | None = None
        self._panel: Any = None
        self._http_now: httpx.AsyncClient | None = None  # the links' REST client right now
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
        self._wake.set()

    def reload(self) -> None:
        """Load the config again (SIGHUP); before the agent is ready, once it is."""
        self._reload.set()
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
            if own_http and self._http_now is not None:
                await self._http_now.aclose()
        logger.info("stopped")
        return 0

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
        if old.gpio != new.gpio:
            if self._panel is not None:
                self._panel.close()
                self._panel = None
            self._open_gpio()

    def _build_failed(
        self,
        part: str,
        key: str,
        exc: BaseException,
        delay: float | None,
        *,
        first: bool = True,
        kind: str = "device",
    ) -> None:
        """One log line (the first time), ATTENTION and the last error for a part that
        could not be built; the traceback only at DEBUG (it is a bug, or the config)."""
        reason = _reason(exc)
        again = "" if delay is None else f"; trying again in {delay:.1f} s"
        if first:
            logger.error("%s: cannot start: %s%s", part, reason, again)
        logger.debug("%s: build failed", part, exc_info=exc)
        self.metrics.inc("part_build_failures_total", part=part)
        detail = f"cannot start: {reason}"
        if kind == "link":
            self.status.set_link(key, LinkState.ATTENTION, detail)
        else:
            self.status.set_device(key, LinkState.ATTENTION, detail)
        self.status.set_error(f"{part}: {detail}")

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

    async def _pump(self, capture: Any, gen: Generation) -> None:
        """Capture → level → PTT gate → every uplink."""
        from agent.audio.level import Vad

        ptt = gen.cfg.ptt
        vad = Vad(ptt.vox_threshold_dbfs, ptt.vox_hangover_ms)
        gate = gen.gate
        assert gate is not None  # a generation without a gate starts no capture
        frame: Frame
        # aclosing: leaving the loop (cancellation) closes the capture device at once
        # The mic level for STATUS is sampled by Capture itself; the VAD only runs for VOX.
        async with contextlib.aclosing(capture.frames()) as frames:
            async for frame in frames:
                if gen.cfg.ptt is not ptt:  # a reload changed [ptt]: the new VOX settings
                    ptt = gen.cfg.ptt
                    vad = Vad(ptt.vox_threshold_dbfs, ptt.vox_hangover_ms)
                speech = gate.mode == "vox" and vad.update(frame.pcm)
                out = gate.gate(frame, speech=speech)
                if out is not None:
                    gen.fanout.publish(out)

    def _on_transmit(self, transmitting: bool) -> None:
        self.status.set_ptt(state="talking" if transmitting else "idle")
        mixer = self.generation.mixer if self.generation is not None else None
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
