"""Link rigs for the fault suite: one real link against its fake, behind fault proxies.

A rig is everything one link needs to be broken on purpose and watched::

    link ──REST──▶ 127.0.0.1:rest proxy ──▶ fake REST
         ──WS────▶ agent-fault.invalid:ws proxy ──▶ fake WebSocket
                   (a Resolver shim maps the name to 127.0.0.1, or lets it fail)

The link reaches its WebSocket server by a name (so DNS can fail for real; the REST
side by address, so every REST request it makes reaches the fake), through two
:class:`~agent.sandbox.faultproxy.FaultProxy` instances, with short keepalive, timeout
and backoff settings (:data:`TIMING`), a real :class:`~agent.audio.mixer.Mixer` rendered
every 20 ms, and an HTTP client with **no** timeout of its own (every deadline must be
the link's). The rig records every state change of the link with its time.

Adding a link to the suite (PBX, FastRTC, ...) = one :class:`LinkRig` subclass here and
one entry in :data:`RIGS`; ``scenarios`` lists the faults that apply to it.
"""

from __future__ import annotations

import abc
import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import numpy as np

from agent.audio.frames import UPLINK_SAMPLES, Fanout, Frame
from agent.audio.mixer import Mixer
from agent.config import DeviceConfig, OrgoConfig, SecurityConfig, VideoSDKConfig
from agent.links.backoff import BackoffPolicy, Reconnector
from agent.links.orgo import OrgoLink
from agent.links.videosdk import VideoSDKLink
from agent.metrics import Metrics
from agent.sandbox.faultproxy import FaultProxy, Resolver
from agent.sandbox.orgo import FakeOrgo, tone
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from agent.status import StatusBoard
from tests.support import wait_until

FAULT_HOST = "agent-fault.invalid"  # RFC 6761: never resolves for real


FAST_BACKOFF = BackoffPolicy(
    initial_s=0.05, cap_s=0.4, jitter=0.3, slow_s=0.4, healthy_after_s=60.0
)


@dataclass(frozen=True)
class Timing:
    """The short settings every rig runs with, and the bounds that follow from them."""

    ping_s: float = 1.5  # keepalive interval (WebSocket ping / Orgo ping)
    pong_s: float = 0.5  # keepalive timeout; pong + the 1 s close wait <= ping: 2 intervals
    open_s: float = 1.0  # WebSocket handshake deadline
    rest_s: float = 1.0  # REST request deadline (the link's own, the client has none)
    backoff: BackoffPolicy = FAST_BACKOFF
    # Connect, first audio and event-loop latency on a loaded 2-core machine: added to
    # every bound below. Not a tolerance on the protocol timers themselves.
    allowance_s: float = 1.0

    @property
    def detect_half_open_s(self) -> float:
        """The promise: a half-open connection is dropped within two ping intervals."""
        return 2 * self.ping_s

    @property
    def reconnect_s(self) -> float:
        """Fault cleared -> audio again: at most one (capped) backoff delay, then connect."""
        return self.backoff.cap_s + self.allowance_s


TIMING = Timing()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def write_secret(directory: Path, name: str, value: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(value + "\n", encoding="utf-8")
    os.chmod(path, 0o600)


class LinkRig(abc.ABC):
    """One link, its fake, two fault proxies, a resolver shim; see the module doc."""

    name: ClassVar[str]
    scenarios: ClassVar[frozenset[str] | None] = None  # None: every scenario applies

    def __init__(self, tmp: Path, timing: Timing = TIMING) -> None:
        self.tmp = tmp
        self.timing = timing
        self.metrics = Metrics()
        self.status = StatusBoard()
        self.mixer = Mixer(8000, metrics=self.metrics)
        self.resolver = Resolver([FAULT_HOST])
        self.history: list[tuple[float, str]] = []  # (time.monotonic(), state) on change
        self.rest: FaultProxy
        self.ws: FaultProxy
        self.http: httpx.AsyncClient
        self.task: asyncio.Task[None] | None = None
        self._helpers: list[asyncio.Task[None]] = []

    # -- what each link provides ----------------------------------------------------
    @abc.abstractmethod
    async def _start_fake(self) -> tuple[int, int]:
        """Start the fake; return (REST port, WebSocket port)."""

    @abc.abstractmethod
    async def _stop_fake(self) -> None: ...

    @abc.abstractmethod
    def _make_link(self) -> Any:
        """The link under test, built with self.timing, self.http, self.metrics..."""

    @abc.abstractmethod
    def flow(self) -> float:
        """A counter that grows while audio flows (downlink frames received)."""

    @abc.abstractmethod
    def set_auth_refused(self, refused: bool) -> None:
        """Make the fake refuse (or accept again) the link's credentials."""

    @abc.abstractmethod
    def rest_requests_seen(self) -> int:
        """REST requests the fake received."""

    @abc.abstractmethod
    def rest_requests_made(self) -> int:
        """REST requests the link says it made (its own counters)."""

    def trim(self) -> None:  # noqa: B027 - optional hook
        """Forget what the fake recorded (long runs): memory then measures the link."""

    def _helper_tasks(self) -> list[Callable[[], Any]]:
        return []

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        self.resolver.install(asyncio.get_running_loop())
        rest_port, ws_port = await self._start_fake()
        self.rest = FaultProxy(rest_port)
        self.ws = FaultProxy(ws_port)
        await self.rest.start()
        await self.ws.start()
        self.http = httpx.AsyncClient(timeout=None, trust_env=False)
        self.status.add_listener(self._record)
        link = self._make_link()
        self.link = link
        self.task = asyncio.create_task(link.run(), name=f"{self.name}-under-test")
        self._helpers = [asyncio.create_task(self._render(), name="render")]
        self._helpers += [asyncio.create_task(fn()) for fn in self._helper_tasks()]

    async def close(self) -> None:
        await self.stop_link()
        for task in self._helpers:
            task.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        await self.http.aclose()
        await self.ws.stop()
        await self.rest.stop()
        await self._stop_fake()
        self.resolver.uninstall()

    async def stop_link(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _render(self) -> None:
        while True:
            self.mixer.render()
            await asyncio.sleep(0.02)

    def _record(self, board: StatusBoard) -> None:
        part = board.links.get(self.name)
        state = "" if part is None else part.state.value
        if not self.history or self.history[-1][1] != state:
            self.history.append((time.monotonic(), state))

    # -- observations ----------------------------------------------------------------
    def state(self) -> str:
        part = self.status.links.get(self.name)
        return "" if part is None else part.state.value

    def detail(self) -> str:
        part = self.status.links.get(self.name)
        return "" if part is None else part.detail

    def crashed(self) -> bool:
        return self.task is None or self.task.done()

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.total(name, link=self.name, **labels)

    def attempts(self) -> int:
        return int(self.metric("reconnects_total")) + 1

    def entered(self, state: str, since: float = 0.0) -> list[float]:
        """Times the link entered ``state`` after ``since``."""
        return [t for t, s in self.history if s == state and t >= since]

    def drops(self, since: float = 0.0) -> list[float]:
        """Times the link left ``up`` after ``since``."""
        out = []
        for (_, s0), (t1, s1) in zip(self.history, self.history[1:], strict=False):
            if s0 == "up" and s1 != "up" and t1 >= since:
                out.append(t1)
        return out

    def up_spans(self, since: float, until: float) -> list[float]:
        """Durations of the ``up`` periods that began in [since, until]."""
        spans = []
        for i, (t, s) in enumerate(self.history):
            if s == "up" and since <= t <= until:
                end = self.history[i + 1][0] if i + 1 < len(self.history) else time.monotonic()
                spans.append(end - t)
        return spans

    async def wait_flowing(self, within_s: float, frames: int = 3) -> float:
        """Wait until the link is up and ``frames`` more downlink frames arrived; return
        the time audio was seen flowing."""
        start = self.flow()
        await wait_until(
            lambda: self.state() == "up" and self.flow() >= start + frames,
            within_s,
            f"{self.name} up with audio flowing",
        )
        return time.monotonic()


# --- VideoSDK ----------------------------------------------------------------------------

VSDK_TOKEN = "rig-vsdk-token-5b0c8e1f2a7d4c93"


class VideoSDKRig(LinkRig):
    """VideoSDK: the fake echoes the uplink, so room audio flows while media goes up."""

    name = "videosdk"

    async def _start_fake(self) -> tuple[int, int]:
        self.fake = FakeVideoSDK(token=VSDK_TOKEN, echo=True, keep_frames=200)
        await self.fake.start()
        self.published = 0
        return _port(self.fake.api_base), self.fake.ws_port

    async def _stop_fake(self) -> None:
        await self.fake.stop()

    def _make_link(self) -> VideoSDKLink:
        write_secret(self.tmp / "creds", "videosdk-token", VSDK_TOKEN)
        self.fake.ws_url_base = f"ws://{FAULT_HOST}:{self.ws.port}"
        self.fanout = Fanout(self.metrics)
        self.uplink = self.fanout.subscribe(self.name)
        t = self.timing
        return VideoSDKLink(
            VideoSDKConfig(room_id="rig-room", api_base=f"http://127.0.0.1:{self.rest.port}"),
            DeviceConfig(id="dev_rig", name="Fault rig"),
            Credentials(self.tmp / "creds", env={}),
            uplink=self.uplink,
            mixer=self.mixer,
            status=self.status,
            metrics=self.metrics,
            http=self.http,
            reconnector=Reconnector(t.backoff),
            ping_interval_s=t.ping_s,
            ping_timeout_s=t.pong_s,
            open_timeout_s=max(t.open_s, t.rest_s),
            security=SecurityConfig(allow_insecure=True),  # the rig's name is not loopback
        )

    def _helper_tasks(self) -> list[Callable[[], Any]]:
        return [self._produce]

    async def _produce(self) -> None:
        """50 frames a second, like the capture clock; each frame carries its number."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            seq = self.published
            pcm = np.zeros(UPLINK_SAMPLES, np.int16)
            pcm[0], pcm[1] = seq & 0x7FFF, (seq >> 15) & 0x7FFF
            self.fanout.publish(Frame(pcm, seq, time.monotonic()))
            self.published += 1
            await asyncio.sleep(max(0.0, t0 + self.published * 0.02 - loop.time()))

    def flow(self) -> float:
        return self.metric("frames_received_total")

    def set_auth_refused(self, refused: bool) -> None:
        self.fake.accepted_tokens = set() if refused else {VSDK_TOKEN}

    def rest_requests_seen(self) -> int:
        return len(self.fake.rest_requests)

    def rest_requests_made(self) -> int:
        return self.attempts()  # every attempt posts one session request

    def trim(self) -> None:
        self.fake.published.clear()
        for s in self.fake.sessions:
            if s.conn is None:
                s.events.clear()
                s.frames.clear()

    def uplink_accounted(self) -> tuple[int, float]:
        """(frames published, frames sent + dropped + still queued): must be equal."""
        sent = self.metric("frames_sent_total")
        dropped = self.metric("frames_dropped_total")
        return self.published, sent + dropped + self.uplink.qsize()


# --- Orgo ------------------------------------------------------------------------------

ORGO_KEY = "sk_orgo_rig_7f3a9c2e5b1d4e60"


class OrgoRig(LinkRig):
    """Orgo: the fake computer plays a tone (24 kHz mono) at 20 ms pace."""

    name = "orgo"

    async def _start_fake(self) -> tuple[int, int]:
        self.fake = FakeOrgo(api_key=ORGO_KEY, generator=tone())
        await self.fake.__aenter__()
        return _port(self.fake.api_base), _port(self.fake.audio_url.replace("{computer_id}", "x"))

    async def _stop_fake(self) -> None:
        await self.fake.__aexit__(None, None, None)

    def _make_link(self) -> OrgoLink:
        write_secret(self.tmp / "creds", "orgo-api-key", ORGO_KEY)
        t = self.timing
        cfg = OrgoConfig(
            enabled=True,
            computer_id=self.fake.computer_id,
            api_base=f"http://127.0.0.1:{self.rest.port}/api",
            audio_url=f"ws://{FAULT_HOST}:{self.ws.port}/{{computer_id}}/audio",
        )
        return OrgoLink(
            cfg,
            Credentials(self.tmp / "creds", env={}),
            mixer=self.mixer,
            status=self.status,
            metrics=self.metrics,
            http=self.http,
            reconnector=Reconnector(t.backoff),
            ping_interval_s=t.ping_s,
            pong_timeout_s=t.pong_s,
            open_timeout_s=t.open_s,
            fetch_timeout_s=t.rest_s,
            security=SecurityConfig(allow_insecure=True),
        )

    def flow(self) -> float:
        return self.metric("frames_received_total")

    def set_auth_refused(self, refused: bool) -> None:
        self.fake.api_key = "sk_orgo_someone_else" if refused else ORGO_KEY

    def rest_requests_seen(self) -> int:
        return len(self.fake.rest_requests)

    def rest_requests_made(self) -> int:
        return int(self.metric("password_fetches_total"))

    def trim(self) -> None:
        live = {id(s) for s in self.fake._live.values()}
        for s in self.fake.sessions:
            if id(s) not in live:
                s.sent.clear()
                s.received.clear()


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


# The links the fault suite runs against. The lead adds e.g. "pbx": PbxRig after merging.
RIGS: dict[str, type[LinkRig]] = {"videosdk": VideoSDKRig, "orgo": OrgoRig}
