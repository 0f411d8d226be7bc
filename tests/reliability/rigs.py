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

Adding a link to the suite = one :class:`LinkRig` subclass here and one entry in
:data:`RIGS`; ``scenarios`` lists the faults that apply to it.

FastRTC has no REST side (``rest`` is None) and its "credentials refused" is the app's
concurrency refusal. The PBX turns the picture around: the PBX is the client, so a
fake PBX (:mod:`agent.sandbox.pbx`) calls the link's server through the proxy, and
"up" means "a call is playing" (see :class:`PbxRig`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agent.audio.fanout import Fanout
from agent.audio.mixer import Mixer
from agent.backoff import BackoffPolicy, Reconnector
from agent.config import (
    DeviceConfig,
    FastRTCConfig,
    OrgoConfig,
    PbxConfig,
    SecurityConfig,
    VideoSDKConfig,
)
from agent.links.fastrtc import FastRTCLink, refusal_wait
from agent.links.orgo import OrgoLink
from agent.links.pbx import PbxLink
from agent.links.videosdk import VideoSDKLink
from agent.metrics import Metrics
from agent.pcm import UPLINK_SAMPLES, Frame
from agent.sandbox.fastrtc import FakeFastRTC
from agent.sandbox.faultproxy import FaultProxy, Resolver
from agent.sandbox.orgo import FakeOrgo, tone
from agent.sandbox.pbx import PbxCall, two_party_call
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
    refusal_s: float = 0.1  # FastRTC: least wait after an app refusal (doubles per refusal)
    idle_s: float = 1.0  # PBX: a call silent this long is closed (pbx.idle_timeout_s)
    close_s: float = 1.0  # closing handshake wait of a dead peer (the links' constant)
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
        self.marks: dict[str, float] = {}  # scenarios' notes between their steps
        self.rest: FaultProxy | None = None  # None: the link has no REST side
        self.ws: FaultProxy
        self.http: httpx.AsyncClient
        self.task: asyncio.Task[None] | None = None
        self._helpers: list[asyncio.Task[None]] = []

    # -- what each link provides ----------------------------------------------------
    @abc.abstractmethod
    async def _start_fake(self) -> tuple[int | None, int]:
        """Start the fake; return (REST port or None, WebSocket port)."""

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

    def sources_flowing(self) -> list[str]:
        """The mixer sources while audio flows and nothing else is going on."""
        return [self.name]

    @abc.abstractmethod
    def secrets(self) -> list[str]:
        """Every secret value the run involved so far (scanned for in logs and status)."""

    def check_counters(self) -> None:  # noqa: B027 - optional hook
        """After the cycles, link running: its counters match what the fakes saw."""

    def check_after_stop(self, attempts: int) -> None:
        """After the link stopped: REST requests made == seen, one ``connecting`` per
        attempt."""
        assert self.rest_requests_made() == self.rest_requests_seen(), "REST made != seen"
        assert len(self.entered("connecting")) == attempts, "one 'connecting' per attempt"

    def _helper_tasks(self) -> list[Callable[[], Any]]:
        return []

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        self.resolver.install(asyncio.get_running_loop())
        rest_port, ws_port = await self._start_fake()
        if rest_port is not None:
            self.rest = FaultProxy(rest_port)
            await self.rest.start()
        self.ws = FaultProxy(ws_port)
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
        if self.rest is not None:
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
        state = self.state()
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


# The faults of an outgoing link with a REST side and credentials (tests/reliability/
# scenarios.py); the rigs below name theirs.
CLIENT_SCENARIOS = frozenset(
    {
        "server_killed",
        "reset_mid_frame",
        "half_open",
        "accept_no_answer",
        "handshake_then_silence",
        "slow_rest",
        "dns_failure",
        "auth_storm",
    }
)


class UplinkRig(LinkRig):
    """A link that also sends the mic: numbered frames from a Fanout, 50 a second."""

    def _subscribe(self) -> asyncio.Queue[Frame]:
        self.fanout = Fanout(self.metrics)
        self.uplink = self.fanout.subscribe(self.name)
        self.published = 0
        return self.uplink

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

    def uplink_accounted(self) -> tuple[int, float]:
        """(frames published, frames sent + dropped + from before the first call + still
        queued): must be equal."""
        sent = self.metric("frames_sent_total")
        dropped = self.metric("frames_dropped_total")
        early = self.metric("frames_before_call_total")
        return self.published, sent + dropped + early + self.uplink.qsize()

    def check_uplink(self) -> None:
        published, accounted = self.uplink_accounted()
        assert published == accounted, "every uplink frame is sent, dropped (counted) or queued"


class VideoSDKRig(UplinkRig):
    """VideoSDK: the fake echoes the uplink, so room audio flows while media goes up."""

    name = "videosdk"
    scenarios = CLIENT_SCENARIOS

    async def _start_fake(self) -> tuple[int, int]:
        self.fake = FakeVideoSDK(token=VSDK_TOKEN, echo=True, keep_frames=200)
        await self.fake.start()
        return _port(self.fake.api_base), self.fake.ws_port

    async def _stop_fake(self) -> None:
        await self.fake.stop()

    def _make_link(self) -> VideoSDKLink:
        write_secret(self.tmp / "creds", "videosdk-token", VSDK_TOKEN)
        self.fake.ws_url_base = f"ws://{FAULT_HOST}:{self.ws.port}"
        uplink = self._subscribe()
        assert self.rest is not None
        t = self.timing
        return VideoSDKLink(
            VideoSDKConfig(room_id="rig-room", api_base=f"http://127.0.0.1:{self.rest.port}"),
            DeviceConfig(id="dev_rig", name="Fault rig"),
            Credentials(self.tmp / "creds", env={}),
            uplink=uplink,
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

    def flow(self) -> float:
        return self.metric("frames_received_total")

    def secrets(self) -> list[str]:
        return [VSDK_TOKEN, *(s.ref for s in self.fake.sessions)]

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

    def check_counters(self) -> None:
        self.check_uplink()
        assert self.fake.frames_total <= self.metric("frames_sent_total")


# --- Orgo ------------------------------------------------------------------------------

ORGO_KEY = "sk_orgo_rig_7f3a9c2e5b1d4e60"


class OrgoRig(LinkRig):
    """Orgo: the fake computer plays a tone (24 kHz mono) at 20 ms pace."""

    name = "orgo"
    scenarios = CLIENT_SCENARIOS

    async def _start_fake(self) -> tuple[int, int]:
        self.fake = FakeOrgo(api_key=ORGO_KEY, generator=tone())
        await self.fake.__aenter__()
        return _port(self.fake.api_base), _port(self.fake.audio_url.replace("{computer_id}", "x"))

    async def _stop_fake(self) -> None:
        await self.fake.__aexit__(None, None, None)

    def _make_link(self) -> OrgoLink:
        write_secret(self.tmp / "creds", "orgo-api-key", ORGO_KEY)
        assert self.rest is not None
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

    def secrets(self) -> list[str]:
        return [ORGO_KEY, self.fake.password, *(s.token for s in self.fake.sessions if s.token)]

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


# --- FastRTC ------------------------------------------------------------------------------

RTC_TOKEN = "rig-rtc-sign-2c7e9a1f4b6d"  # a signed app's URL carries a token in its query


class FastRTCRig(UplinkRig):
    """FastRTC: the fake app speaks a tone (24 kHz mu-law, 40 ms a message) while the mic
    goes up at 48 kHz. No REST side; "credentials refused" is the app's concurrency
    refusal (``busy``)."""

    name = "fastrtc"
    scenarios = frozenset(
        {
            "server_killed",
            "reset_mid_frame",
            "half_open",
            "accept_no_answer",
            "handshake_then_silence",
            "dns_failure",
            "refusal_storm",
        }
    )

    async def _start_fake(self) -> tuple[int | None, int]:
        # Two seats: a session the app has not yet seen end (its TCP still open) must
        # not turn the link's next attempt into a refusal. A busy app is `busy`.
        self.fake = FakeFastRTC(concurrency_limit=2, keep_sessions=50)
        await self.fake.start()
        return None, self.fake.port

    async def _stop_fake(self) -> None:
        await self.fake.stop()

    def _make_link(self) -> FastRTCLink:
        t = self.timing
        cfg = FastRTCConfig(
            enabled=True,
            url=f"ws://{FAULT_HOST}:{self.ws.port}/websocket/offer?token={RTC_TOKEN}",
            input_rate=self.fake.input_rate,
            output_rate=self.fake.output_rate,
        )
        return FastRTCLink(
            cfg,
            uplink=self._subscribe(),
            mixer=self.mixer,
            status=self.status,
            metrics=self.metrics,
            reconnector=Reconnector(t.backoff),
            ping_interval_s=t.ping_s,
            pong_timeout_s=t.pong_s,
            refusal_wait_s=t.refusal_s,
            open_timeout_s=t.open_s,
        )

    def flow(self) -> float:
        return self.metric("frames_received_total")

    def secrets(self) -> list[str]:
        return [RTC_TOKEN]

    def set_auth_refused(self, refused: bool) -> None:
        self.fake.busy = refused

    def rest_requests_seen(self) -> int:
        return 0

    def rest_requests_made(self) -> int:
        return 0

    def refusals_seen(self) -> int:
        return self.fake.refusals

    def refusal_wait(self, in_a_row: int) -> float:
        """Least wait after the ``in_a_row``-th refusal (the link adds up to +20 %)."""
        return refusal_wait(in_a_row, base_s=self.timing.refusal_s)

    def check_counters(self) -> None:
        self.check_uplink()
        assert self.fake.media_total <= self.metric("frames_sent_total"), "app got more than sent"
        refusals = self.metric("refusals_total", reason="concurrency_limit_reached")
        assert refusals == self.fake.refusals, (refusals, self.fake.refusals)
        assert self.metric("malformed_total") == 0


# --- PBX ---------------------------------------------------------------------------------

PBX_SECRET = "rig-pbx-secret-4e1a7c9b2d6f80"
PBX_WRONG = "rig-pbx-secret-4e1a7c9b2d6f81"  # a near miss


class PbxRig(LinkRig):
    """The PBX link: the server is ours, the fake PBX is the client, through the proxy::

        fake PBX (agent.sandbox.pbx) ──▶ 127.0.0.1:proxy ──▶ PbxLink's listener

    The fake PBX keeps one two-party call going (8 kHz, 80 ms fragments, paced): when
    its connection breaks it dials again after ``redial_s``. ``state()`` is "up" while
    the link listens *and* a call plays, "idle" while it listens with no call: a fault
    that ends a call is then a drop, and audio flowing again a recovery, as for the
    outgoing links. The rig keeps a ledger of what the PBX side saw and did (calls
    admitted, HTTP refusals, garbage sent, calls it ended) and of how each call ended
    by the scenario's doing; :meth:`check_counters` compares the link's counters to it.
    """

    name = "pbx"
    scenarios = frozenset(
        {
            "pbx_client_reset",
            "pbx_client_half_open",
            "pbx_slowloris",
            "pbx_garbage",
            "pbx_401_storm",
            "pbx_connection_storm",
        }
    )
    max_calls = 2
    redial_s = 0.05

    def __init__(self, tmp: Path, timing: Timing = TIMING) -> None:
        super().__init__(tmp, timing)
        self.secret = PBX_SECRET  # what the fake PBX sends
        self.call: PbxCall | None = None  # the fake PBX's current call, once connected
        self.admitted = 0  # calls that got 101 (the main call and any extra)
        self.http_refusals: Counter[int] = Counter()  # status -> count, as the PBX saw them
        self.ended: Counter[str] = Counter()  # calls_ended_total{reason} the faults caused
        self.malformed: Counter[str] = Counter()  # malformed_total{reason} for garbage sent
        self.refused: Counter[str] = Counter()  # connections_refused_total{reason} expected
        self.pbx_warnings: list[str] = []  # WARNING records of the link's logger
        self.slow: list[asyncio.Task[None]] = []  # slowloris connections of a scenario

    # -- the fake has no server of its own: the link is the server ----------------------
    async def _start_fake(self) -> tuple[int | None, int]:
        raise NotImplementedError  # start() is overridden

    async def _stop_fake(self) -> None:
        pass

    def _make_link(self) -> PbxLink:
        write_secret(self.tmp / "creds", "pbx-secret", PBX_SECRET)
        t = self.timing
        cfg = PbxConfig(
            enabled=True,
            listen="127.0.0.1:0",
            max_calls=self.max_calls,
            idle_timeout_s=t.idle_s,
        )
        return PbxLink(
            cfg,
            Credentials(self.tmp / "creds", env={}),
            mixer=self.mixer,
            status=self.status,
            metrics=self.metrics,
            reconnector=Reconnector(t.backoff),
            open_timeout_s=t.open_s,
        )

    async def start(self) -> None:
        self.resolver.install(asyncio.get_running_loop())  # unused; close() uninstalls it
        self.http = httpx.AsyncClient(timeout=None, trust_env=False)  # unused; closed
        self.status.add_listener(self._record)
        self._log = _Records(self.pbx_warnings)
        logging.getLogger("agent.links.pbx").addHandler(self._log)
        self.link = self._make_link()
        self.task = asyncio.create_task(self.link.run(), name=f"{self.name}-under-test")
        await wait_until(lambda: self.link.port not in (None, 0), 5.0, "the PBX link listening")
        self.ws = FaultProxy(self.link.port)
        await self.ws.start()
        self.url = f"ws://127.0.0.1:{self.ws.port}"
        self._helpers = [
            asyncio.create_task(self._render(), name="render"),
            asyncio.create_task(self._pbx(), name="fake-pbx"),
        ]

    async def close(self) -> None:
        await super().close()
        logging.getLogger("agent.links.pbx").removeHandler(self._log)

    def new_call(self, secret: str | None = None) -> PbxCall:
        return two_party_call(self.url, secret=secret or self.secret, sample_rate=8000)

    async def _pbx(self) -> None:
        """The fake PBX: one call at a time, dialled again whenever it breaks."""
        while True:
            call = self.new_call()
            try:
                await call.connect()
            except InvalidStatus as e:
                self.http_refusals[e.response.status_code] += 1
                await asyncio.sleep(self.redial_s)
                continue
            except (OSError, TimeoutError, InvalidHandshake):
                await asyncio.sleep(self.redial_s)
                continue
            self.admitted += 1
            self.call = call
            try:
                await call.stream(24 * 3600.0)  # until the connection breaks
            except ConnectionClosed:
                pass
            finally:
                self.call = None
                if call.ws is not None:
                    call.ws.transport.abort()
            await asyncio.sleep(self.redial_s)

    # -- observations ------------------------------------------------------------------
    def state(self) -> str:
        part = self.status.links.get(self.name)
        if part is None:
            return ""
        if part.state.value == "up" and not self.metrics.get("active_channels", link=self.name):
            return "idle"
        return part.state.value

    def link_state(self) -> str:
        """The link's own state (up = listening)."""
        part = self.status.links.get(self.name)
        return "" if part is None else part.state.value

    def flow(self) -> float:
        return self.metric("frames_received_total")

    def secrets(self) -> list[str]:
        return [PBX_SECRET, PBX_WRONG]

    def set_auth_refused(self, refused: bool) -> None:
        self.secret = PBX_WRONG if refused else PBX_SECRET

    def rest_requests_seen(self) -> int:
        return 0

    def rest_requests_made(self) -> int:
        return 0

    def sources_flowing(self) -> list[str]:
        return [f"{self.name}/{self.call_slot()}/1", f"{self.name}/{self.call_slot()}/2"]

    def call_slot(self) -> str:
        names = self.mixer.source_names
        return names[0].split("/")[1] if names else "?"

    def check_counters(self) -> None:
        """The link's counters == what the PBX side saw and what the faults did."""
        refused = Counter(self.refused)
        refused["bad_secret"] += self.http_refusals[401]
        refused["too_many_calls"] += self.http_refusals[503]
        counted = {
            r: int(self.metric("connections_refused_total", reason=r))
            for r in ("no_secret", "bad_secret", "too_many_calls", "bad_request",
                      "handshake_timeout")
        }  # fmt: skip
        assert counted == {r: refused[r] for r in counted}, (counted, dict(refused))
        assert self.metric("calls_total") == self.admitted, (self.metric("calls_total"),
                                                             self.admitted)  # fmt: skip
        ended = {
            r: int(self.metric("calls_ended_total", reason=r))
            for r in ("closed", "lost", "idle_timeout", "too_large", "stopping", "error")
        }
        assert ended == {r: self.ended[r] for r in ended}, (ended, dict(self.ended))
        assert self.metric("calls_total") == sum(ended.values()) + 1, "one call still playing"
        malformed = {r: int(self.metric("malformed_total", reason=r)) for r in self.malformed}
        assert malformed == dict(self.malformed), (malformed, dict(self.malformed))
        assert self.metric("malformed_total") == sum(self.malformed.values())

    def check_after_stop(self, attempts: int) -> None:
        super().check_after_stop(attempts)
        assert attempts == 1, "the server never had to start again"


class _Records(logging.Handler):
    """Keeps the text of WARNING records (the link's log-flood guard is checked on it)."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


# The links the fault suite runs against.
RIGS: dict[str, type[LinkRig]] = {
    "videosdk": VideoSDKRig,
    "orgo": OrgoRig,
    "fastrtc": FastRTCRig,
    "pbx": PbxRig,
}
