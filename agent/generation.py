"""The generation: the running parts built from the agent's config, supervised.

:class:`Generation` is an async context manager that owns the TaskGroup of the parts
it builds (the mixer, the PTT gate and the uplink fanout; then ``capture``,
``playback`` and one ``link-<name>`` task per enabled link). Every part is built
under supervision: a build that raises is one log line, ATTENTION and a retry, never
a crashed agent. READY semantics, reload and what each change rebuilds are in
docs/architecture.md; the pure reload decisions are :mod:`agent.reload`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from agent.audio.duplex import Duplex
from agent.audio.fanout import Fanout
from agent.backoff import BackoffPolicy, Reconnector
from agent.config import Config
from agent.pcm import Frame
from agent.ptt import PttGate
from agent.reload import (
    AT_NEXT_START,
    LINKS,
    READ_AT_START,
    Change,
    only_link,
    show_value,
)
from agent.reload import plan as reload_plan
from agent.status import LinkState

if TYPE_CHECKING:
    from agent.app import Agent
    from agent.audio.capture import Capture
    from agent.audio.handsfree import FarEndTap, HandsFreeStage
    from agent.audio.mixer import Mixer

logger = logging.getLogger(__name__)

BUILD_RETRY = BackoffPolicy(initial_s=0.5, cap_s=30.0)

Runner = Callable[[Callable[[], None]], Awaitable[None]]
"""A built part's run: ``await run(ready)`` until cancelled, calling ``ready()`` once."""


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
        # what the speaker played, for the echo canceller (built with the mixer when the
        # config may want hands-free; costs nothing until a capture stage listens)
        self.tap: FarEndTap | None = None
        self.fanout = Fanout(agent.metrics)
        self.duplex = Duplex()  # one audio clock: the mic's reads also feed the speaker
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
            self._build_failed("audio", "speaker", e, None)
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
        self.gate = PttGate(cfg.ptt.mode, idle=cfg.ptt.idle, on_change=self.agent.on_transmit)
        self.agent.status.set_ptt(mode=cfg.ptt.mode)
        self._build_mixer(cfg)

    def _build_mixer(self, cfg: Config) -> None:
        from agent.audio.mixer import Mixer

        self.mixer = Mixer(cfg.audio.playback_rate, metrics=self.agent.metrics)
        if self.tap is None and (cfg.audio.handsfree_asked or cfg.audio.echo_cancel == "auto"):
            from agent.audio.handsfree import FarEndTap

            self.tap = FarEndTap()
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
        self.agent.controls.load_key()  # a rotated command-key applies at a reload
        failed = {n for n, p in self.parts.items() if p.failed}
        rotated = {n for n in READ_AT_START if self._credentials_rotated(n)}
        todo = reload_plan(old, new, running=set(self.parts), failed=failed, rotated=rotated)
        for key, a, b in todo.changes:
            note = " (applies at the next restart)" if key in AT_NEXT_START else ""
            logger.info("reload: %s %s -> %s%s", key, show_value(a), show_value(b), note)
        await self.stop_parts(todo.stop)
        if todo.new_mixer:
            try:
                self._build_mixer(new)
            except Exception as e:
                self.failed = _reason(e)
                self._build_failed("audio", "speaker", e, None)
                return list(todo.changes)
        self._apply_live(new, todo.keys)
        for part in todo.start:
            if part == "capture":
                self.start_part("capture", self._capture)
            elif part == "playback":
                self.start_part("playback", self._playback)
            else:
                self.start_link(part.removeprefix("link-"))
        if todo.restarted:
            logger.info("reload: restarted %s", ", ".join(todo.restarted))
        elif todo.changes:
            logger.info("reload: applied without restarting anything")
        return list(todo.changes)

    def _apply_live(self, new: Config, keys: frozenset[str]) -> None:
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
                agent.wake()
                kind, key = _status_slot(part.name)
                self._build_failed(part.name, key, e, delay, first=first, kind=kind)
                await asyncio.sleep(delay)
        if part.failed:
            logger.info("%s: built after all", part.name)
            part.failed = ""
            agent.status.clear_error(f"{part.name}: cannot start")

        def ready() -> None:
            if not part.ready:
                part.ready = True
                agent.wake()

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
        from agent.audio.capture import Capture

        agent, cfg = self.agent, self.cfg
        capture = Capture(
            agent.hardware.mic(cfg.audio, agent.metrics),
            metrics=agent.metrics,
            status=agent.status,
            gain_db=cfg.audio.mic_gain_db,
            heartbeat=agent.heartbeats.register("capture", 5.0).beat,
            duplex=self.duplex,
            handsfree=self._handsfree_stage(),
            # the loop reads the mic and ticks the speaker in one wakeup (docs/architecture.md,
            # "One clock per period"); mics it cannot poll fall back to the capture thread
            on_loop=True,
        )
        self.capture = capture

        async def run(ready: Callable[[], None]) -> None:
            capture.on_ready = ready
            await self._pump(capture)

        return run

    def _handsfree_stage(self) -> Callable[[int], HandsFreeStage | None] | None:
        """The capture's hands-free stage builder, or None when [audio] asks for none."""
        audio = self.cfg.audio
        if not (audio.handsfree_asked or audio.echo_cancel == "auto"):
            return None
        from agent.audio.handsfree import HANDSFREE_MODES, HandsFreeSettings, stage_factory

        gate = self.gate
        active: Callable[[], bool] | None = None
        if audio.echo_cancel == "auto" and not (audio.noise_suppression or audio.auto_gain):
            # on in open/vox only, following the PTT mode as it changes (a command, a reload)
            def active() -> bool:
                return gate is not None and gate.mode in HANDSFREE_MODES

        settings = HandsFreeSettings(
            echo_cancel=audio.echo_cancel != "off",
            noise_suppression=audio.noise_suppression,
            auto_gain=audio.auto_gain,
        )
        return stage_factory(settings, self.tap, metrics=self.agent.metrics, active=active)

    def _playback(self) -> Runner:
        from agent.audio.playback import Playback

        agent, cfg = self.agent, self.cfg
        assert self.mixer is not None
        playback = Playback(
            agent.hardware.speaker(cfg.audio, agent.metrics),
            self.mixer,
            metrics=agent.metrics,
            status=agent.status,
            heartbeat=agent.heartbeats.register("playback", 5.0).beat,
            duplex=self.duplex,
            tap=self.tap,
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
        self.agent.metrics.inc("part_build_failures_total", part=part)
        detail = f"cannot start: {reason}"
        if kind == "link":
            self.agent.status.set_link(key, LinkState.ATTENTION, detail)
        else:
            self.agent.status.set_device(key, LinkState.ATTENTION, detail)
        self.agent.status.set_error(f"{part}: {detail}")

    async def _pump(self, capture: Capture) -> None:
        """Capture → level → PTT gate → every uplink."""
        from agent.audio.level import Vad

        ptt = self.cfg.ptt
        vad = Vad(ptt.vox_threshold_dbfs, ptt.vox_hangover_ms)
        gate = self.gate
        assert gate is not None  # a generation without a gate starts no capture
        frame: Frame
        # aclosing: leaving the loop (cancellation) closes the capture device at once
        # The mic level for STATUS is sampled by Capture itself; the VAD only runs for VOX.
        async with contextlib.aclosing(capture.frames()) as frames:
            async for frame in frames:
                if self.cfg.ptt is not ptt:  # a reload changed [ptt]: the new VOX settings
                    ptt = self.cfg.ptt
                    vad = Vad(ptt.vox_threshold_dbfs, ptt.vox_hangover_ms)
                speech = gate.mode == "vox" and vad.update(frame.pcm)
                out = gate.gate(frame, speech=speech)
                if out is not None:
                    self.fanout.publish(out)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{text} ({type(exc).__name__})" if str(exc) else text


def _status_slot(part: str) -> tuple[str, str]:
    """Where a part shows on the status board: (``link``|``device``, name)."""
    if part.startswith("link-"):
        return "link", part.removeprefix("link-")
    return "device", {"capture": "mic", "playback": "speaker"}.get(part, part)
