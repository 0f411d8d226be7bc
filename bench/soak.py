"""Soak: the whole agent against the fakes, with random faults, for minutes or hours.

    .venv/bin/python bench/soak.py [--minutes 10] [--seed 1] [--log-level DEBUG]
                                   [--production-timers] [--json PATH]

The agent (:class:`agent.app.Agent`: VideoSDK + Orgo + FastRTC + the PBX server, open
mic, simulated paced mic and speaker, secrets in a credentials directory) runs in
this process; the fakes (a fake FastRTC app, and a fake PBX that keeps calling the
agent's PBX server) and the fault proxies in front of them
(:mod:`agent.sandbox.faultproxy`) run in a child process, so RSS, descriptors, tasks
and threads are the agent's own.

Every few seconds of healthy streaming a random fault is injected and later cleared:
server killed, TCP reset mid-frame, half-open connection, accept-and-never-answer,
handshake-then-silence (each on VideoSDK, Orgo or FastRTC), trickling REST, 401 storm
(VideoSDK or Orgo), DNS failure (names under ``.invalid``), Orgo computer restart with
a stale password (4401), FastRTC app busy (concurrency refusals), mic unplugged,
speaker unplugged, and on the PBX side: the PBX vanishes mid-call (reset), stops
sending (half-open: the idle timeout ends the call), sends a wrong secret for a while
(401 storm), dials 20 calls at once (503 beyond ``max_calls``), slowloris handshakes,
garbage frames. Reported:

- per scenario: cycles, crashes, max recovery time (fault cleared -> audio flowing);
- RSS growth after a warm-up, open fds, asyncio tasks, threads (first/last/max);
- uplink frames "0 lost / N": every mic frame is numbered; frames captured while the
  VideoSDK link was up and no fault touching it was active (from 1 s before injection
  until audio flowed again) must all reach the fake room;
- secret hits: every log record (at ``--log-level``, before redaction, streamed to a
  temporary file), STATUS line, status JSON and the final metrics snapshot, scanned
  for every secret value the run involved (files, minted JWTs, passwords, refs);
- counters against what the other side saw: the PBX link's calls, refusals by reason
  (401, 503, slowloris timeouts, non-HTTP) and malformed frames against what the fake
  PBX did; FastRTC's refusals against the app's;
- the unit's ``systemd-analyze security --offline=true`` exposure (if available).

Timers: backoff as shipped except ``slow_s`` = 5 s (a refused credential is retried
after 5 s, not 2 min) and keepalive 5 s / 3 s (VideoSDK), ping 5 s / pong 2 s (Orgo,
FastRTC) instead of 20/15, 30/10 and 20/10, so a half-open connection costs ~10 s, not
~40 s; a busy FastRTC app is retried after 2 s (doubling), not 10 s; the PBX idle
timeout is 5 s, not 30 s; ``--production-timers`` keeps everything as shipped. Exit
status 1 on a crash, a fault not recovered within 90 s, a lost frame during up-time,
a secret hit, a PBX or FastRTC counter that does not match what the PBX side / the
app saw, or growth beyond the limits printed.

CI short mode: ``.venv/bin/python bench/soak.py --minutes 2.5``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import config  # noqa: E402
from agent.app import Agent, Hardware  # noqa: E402
from agent.backoff import BackoffPolicy  # noqa: E402
from agent.controls import StateStore  # noqa: E402
from agent.hw.sim import RecordingSink, ToneSource  # noqa: E402
from agent.links.registry import LinkPolicies  # noqa: E402
from agent.pcm import Pcm  # noqa: E402
from agent.sandbox.faultproxy import FaultProxy, Resolver  # noqa: E402
from agent.secrets import Credentials  # noqa: E402
from agent.service import Notifier  # noqa: E402

HOST = "agent-soak.invalid"  # RFC 6761: only our Resolver shim makes it resolve
VSDK_API_KEY = "soak-vsdk-apikey-6f1d3b8a2c"
VSDK_SECRET = "soak-vsdk-secret-2a9e7c5b3d1f8e6a4c2b0d9f7e5a3c1b"
ORGO_KEY = "sk_orgo_soak_9c7e5a3b1d2f4e6a"
PBX_SECRET = "soak-pbx-secret-3f8a6c1e9b2d"
PBX_WRONG = "soak-pbx-secret-3f8a6c1e9b2e"  # a misconfigured PBX: a near miss
RTC_QUERY_TOKEN = "soak-rtc-sign-8b4e2a6c0d1f"  # a token in the FastRTC app's URL query
RECOVERY_LIMIT_S = 90.0
LINKS = ("videosdk", "orgo", "fastrtc", "pbx")
OUTGOING = ("videosdk", "orgo", "fastrtc")  # links that connect out (by the name HOST)
PBX_STORM = 20  # calls dialled at once
PBX_SLOWLORIS = 4  # connections that trickle (3) or withhold (1) their handshake
LIMITS = {"rss_growth_kib": 20 * 1024, "fds_growth": 8, "tasks_growth": 8, "threads_growth": 4}


# === the child: fakes and proxies =======================================================


def child_main(conn: Connection, seed: int) -> None:
    asyncio.run(_child(conn, seed))


async def _child(conn: Connection, seed: int) -> None:
    from agent.sandbox.fastrtc import FakeFastRTC
    from agent.sandbox.orgo import FakeOrgo, tone
    from agent.sandbox.videosdk import FakeVideoSDK

    vsdk = FakeVideoSDK(
        token=None, jwt_secret=VSDK_SECRET, api_key=VSDK_API_KEY, echo=True, keep_frames=5000
    )
    await vsdk.start()
    orgo = FakeOrgo(api_key=ORGO_KEY, generator=tone(440.0, -12.0), seed=seed)
    await orgo.__aenter__()
    rtc = FakeFastRTC(concurrency_limit=2, keep_sessions=50)
    await rtc.start()
    proxies = {
        ("videosdk", "rest"): FaultProxy(_port(vsdk.api_base)),
        ("videosdk", "ws"): FaultProxy(vsdk.ws_port),
        ("orgo", "rest"): FaultProxy(_port(orgo.api_base)),
        ("orgo", "ws"): FaultProxy(_port(orgo.audio_url.replace("{computer_id}", "x"))),
        ("fastrtc", "ws"): FaultProxy(rtc.port),
    }
    pbx: FakePbx | None = None  # started once the parent says where the agent listens
    for p in proxies.values():
        await p.start()
    vsdk.ws_url_base = f"ws://{HOST}:{proxies['videosdk', 'ws'].port}"
    received: set[int] = set()
    passwords: set[str] = set()

    def collect() -> None:
        while vsdk.frames:
            pcm = np.frombuffer(vsdk.frames.popleft().pcm, "<i2")
            received.add(int(pcm[0]) | int(pcm[1]) << 15)
        passwords.update({orgo.password, orgo.desktop_api_token})
        for s in orgo.sessions:  # keep the fake's own memory flat
            if s.token:
                passwords.add(s.token)
            s.sent.clear()
        for s in vsdk.sessions:
            if s.conn is None:
                s.frames.clear()
                s.events.clear()
        vsdk.published.clear()

    async def collector() -> None:
        while True:
            collect()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(collector())
    conn.send(
        {
            "vsdk_api": f"http://127.0.0.1:{proxies['videosdk', 'rest'].port}",
            "orgo_api": f"http://127.0.0.1:{proxies['orgo', 'rest'].port}/api",
            "orgo_audio": f"ws://{HOST}:{proxies['orgo', 'ws'].port}/{{computer_id}}/audio",
            "computer_id": orgo.computer_id,
            "fastrtc": f"ws://{HOST}:{proxies['fastrtc', 'ws'].port}/websocket/offer",
            "fastrtc_rates": (rtc.input_rate, rtc.output_rate),
        }
    )
    while True:
        cmd, args = await asyncio.to_thread(conn.recv)
        try:
            result: Any = None
            match cmd:
                case "proxy":  # (link, side, method, *args)
                    link, side, method, *rest = args
                    proxy = proxies[link, side]
                    if method == "mode":
                        proxy.mode = rest[0]
                    else:
                        r = getattr(proxy, method)(*rest)
                        if asyncio.iscoroutine(r):
                            await r
                case "refuse":
                    link, on = args
                    if link == "videosdk":
                        vsdk.api_key = "someone-elses-key" if on else VSDK_API_KEY
                    elif link == "fastrtc":
                        rtc.busy = on
                    elif link == "pbx":
                        assert pbx is not None
                        pbx.secret = PBX_WRONG if on else PBX_SECRET
                    else:
                        orgo.api_key = "sk_orgo_not_yours" if on else ORGO_KEY
                case "pbx_start":  # (agent's PBX port,)
                    proxies["pbx", "ws"] = FaultProxy(args[0])
                    await proxies["pbx", "ws"].start()
                    pbx = FakePbx(f"ws://127.0.0.1:{proxies['pbx', 'ws'].port}")
                    pbx.task = asyncio.create_task(pbx.run(), name="fake-pbx")
                case "pbx_storm":
                    assert pbx is not None
                    result = await pbx.storm(PBX_STORM)
                case "pbx_slowloris":
                    assert pbx is not None
                    result = await pbx.slowloris(PBX_SLOWLORIS)
                case "pbx_garbage":
                    assert pbx is not None
                    result = await pbx.garbage()
                case "orgo_restart":
                    await orgo.restart_computer(stale_fetches=1)
                case "received":
                    collect()
                    result = sorted(received)
                case "secrets":
                    collect()
                    auth = [r.headers.get("authorization", "") for r in vsdk.rest_requests]
                    result = sorted(
                        {a.removeprefix("Bearer ").strip() for a in auth}
                        | {s.ref for s in vsdk.sessions}
                        | passwords
                    )
                    vsdk.rest_requests.clear()
                case "report":
                    result = {
                        "sessions": len(vsdk.sessions),
                        "frames_total": vsdk.frames_total,
                        "violations": len(vsdk.violations),
                        "orgo_sessions": len(orgo.sessions),
                        "password_fetches": orgo.password_fetches,
                        "fastrtc_connections": rtc.connections,
                        "fastrtc_refusals": rtc.refusals,
                        "fastrtc_media": rtc.media_total,
                        "pbx": None if pbx is None else pbx.report(),
                    }
                case "quit":
                    conn.send(None)
                    break
            conn.send(("ok", result))
        except Exception as e:  # a bug in the harness: report it, keep serving
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    task.cancel()
    if pbx is not None and pbx.task is not None:
        pbx.task.cancel()
    for p in proxies.values():
        await p.stop()
    await rtc.stop()
    await orgo.__aexit__(None, None, None)
    await vsdk.stop()


class FakePbx:
    """The PBX side, in the child: calls the agent again and again (one call at a time,
    8 kHz, two parties), and the PBX faults that need a client."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.secret = PBX_SECRET
        self.call: Any = None  # the current PbxCall, once connected
        self.task: asyncio.Task[None] | None = None
        self.admitted = 0
        self.statuses: dict[int, int] = defaultdict(int)  # HTTP refusals seen

    def new_call(self, secret: str | None = None) -> Any:
        from agent.sandbox.pbx import two_party_call

        return two_party_call(self.url, secret=secret or self.secret, sample_rate=8000)

    async def run(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        while True:
            call = self.new_call()
            try:
                await call.connect()
            except InvalidStatus as e:
                self.statuses[e.response.status_code] += 1
                await asyncio.sleep(0.1)
                continue
            except (OSError, TimeoutError, InvalidHandshake):
                await asyncio.sleep(0.2)
                continue
            self.admitted += 1
            self.call = call
            try:
                await call.stream(24 * 3600.0)
            except ConnectionClosed:
                pass
            finally:
                self.call = None
                if call.ws is not None:
                    call.ws.transport.abort()
            await asyncio.sleep(0.1)

    async def storm(self, n: int) -> dict[str, int]:
        """``n`` calls at once; the admitted ones play 0.3 s and hang up."""
        calls = [self.new_call() for _ in range(n)]
        results = await asyncio.gather(*(c.connect() for c in calls), return_exceptions=True)
        out: dict[str, int] = defaultdict(int)
        for call, r in zip(calls, results, strict=True):
            status = getattr(getattr(r, "response", None), "status_code", None)
            out["admitted" if r is None else str(status or type(r).__name__)] += 1
            if r is None:
                self.admitted += 1
                await call.stream(0.3)
                await call.end()
                await call.close()
        return dict(out)

    async def slowloris(self, n: int) -> float:
        """``n`` connections trickle their request (the last sends nothing); return the
        seconds until the agent closed them all."""
        t0 = time.monotonic()
        host, port = self.url.removeprefix("ws://").rsplit(":", 1)

        async def one(trickle: bool) -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            answer = asyncio.ensure_future(reader.read(1))  # b"", a byte, or a reset
            request = b"GET / HTTP/1.1\r\nHost: pbx\r\nX-Padding: " + b"a" * 1000
            try:
                for i in range(len(request) if trickle else 0):
                    writer.write(request[i : i + 1])
                    await writer.drain()
                    done, _ = await asyncio.wait([answer], timeout=0.2)
                    if done:
                        break
                await asyncio.wait([answer])
            except OSError:
                pass
            finally:
                answer.cancel()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await answer
                writer.close()

        await asyncio.gather(*(one(i < n - 1) for i in range(n)))
        return time.monotonic() - t0

    async def garbage(self) -> int:
        """Malformed frames in the live call and one non-HTTP connection; how many frames."""
        frames: list[str | bytes] = [b"\x00\x01", "not json", "[" * 50_000,
                                     '{"callid":"g","audio":"!!"}', '{"callid":"g","audio":"QUJD"}',
                                     '{"audio":""}']  # fmt: skip
        sent = 0
        call = self.call
        if call is not None:
            for f in frames:
                await call.send_raw(f)
                sent += 1
        host, port = self.url.removeprefix("ws://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"\x16\x03\x01 not HTTP\r\n\r\n")
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(5):
                await reader.read()
        writer.close()
        return sent

    def report(self) -> dict[str, Any]:
        return {"admitted": self.admitted, "statuses": dict(self.statuses)}


def _port(url: str) -> int:
    from urllib.parse import urlsplit

    port = urlsplit(url).port
    assert port is not None
    return port


class Child:
    """The parent's handle on the child process (one command at a time)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    async def call(self, cmd: str, *args: Any) -> Any:
        async with self._lock:
            self._conn.send((cmd, args))
            status, result = await asyncio.to_thread(self._conn.recv)
        if status != "ok":
            raise RuntimeError(f"child: {result}")
        return result

    async def proxy(self, link: str, side: str, method: str, *args: Any) -> None:
        await self.call("proxy", link, side, method, *args)


# === the agent side =====================================================================


class NumberedMic(ToneSource):
    """A paced 8 kHz mic (a 500 Hz tone) whose every 20 ms period carries its number
    in its first two samples."""

    def __init__(self) -> None:
        super().__init__(8000, 500.0, -20.0, paced=True, name="soak-mic")
        self.seq = 0
        self.read_times = array.array("d")  # index = seq; 8 bytes a frame

    def _next(self, n: int) -> Pcm:
        pcm = super()._next(n)
        pcm[0], pcm[1] = self.seq & 0x7FFF, (self.seq >> 15) & 0x7FFF
        self.read_times.append(time.monotonic())
        self.seq += 1
        return pcm


@dataclass
class FaultRecord:
    scenario: str
    links: tuple[str, ...]
    t_inject: float
    t_clear: float = 0.0
    t_ok: float | None = None


@dataclass
class Stats:
    cycles: int = 0
    crashes: int = 0
    not_recovered: int = 0
    recoveries: list[float] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, child: Child, urls: dict[str, str]) -> None:
        self.args = args
        self.child = child
        self.urls = urls
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="field-agent-soak-"))
        self.log_path = self.tmp / "records.txt"
        self.faults: list[FaultRecord] = []
        self.stats: dict[str, Stats] = defaultdict(Stats)
        self.transitions: list[tuple[float, str, str]] = []  # (t, link, state)
        self.samples: list[dict[str, float]] = []
        self.loop_errors: list[str] = []
        self.resolver = Resolver([HOST])
        self.pbx_storms: list[dict[str, int]] = []  # what each storm of calls got
        self.pbx_slowloris: list[float] = []  # seconds until the agent closed them all
        self.pbx_garbage = 0  # malformed frames sent in live calls
        self.pbx_port = _free_port()

    # -- setup ------------------------------------------------------------------------
    def build_agent(self) -> Agent:
        creds = self.tmp / "credentials"
        creds.mkdir()
        for name, value in (
            ("videosdk-api-key", VSDK_API_KEY),
            ("videosdk-secret", VSDK_SECRET),
            ("orgo-api-key", ORGO_KEY),
            ("pbx-secret", PBX_SECRET),
        ):
            (creds / name).write_text(value + "\n")
            os.chmod(creds / name, 0o600)
        cfg = config.from_dict(
            {
                "device": {"id": "dev_soak", "name": "Soak"},
                "ptt": {"mode": "open"},
                "videosdk": {"room_id": "soak-room", "api_base": self.urls["vsdk_api"]},
                "orgo": {
                    "enabled": True,
                    "computer_id": self.urls["computer_id"],
                    "api_base": self.urls["orgo_api"],
                    "audio_url": self.urls["orgo_audio"],
                },
                "fastrtc": {
                    "enabled": True,
                    "url": f"{self.urls['fastrtc']}?token={RTC_QUERY_TOKEN}",
                    "input_rate": self.urls["fastrtc_rates"][0],
                    "output_rate": self.urls["fastrtc_rates"][1],
                },
                "pbx": {
                    "enabled": True,
                    "listen": f"127.0.0.1:{self.pbx_port}",
                    "idle_timeout_s": 30.0 if self.args.production_timers else 5.0,
                },
                "metrics": {"listen": ""},
                # the fault proxies are reached by a name under .invalid (so DNS can fail)
                "security": {"allow_insecure": True},
            },
            path="<soak>",
        )
        self.mic = NumberedMic()
        self.speaker = RecordingSink(48000, paced=True, keep_s=1.0)
        self.notify_log = self.tmp / "status-lines.txt"
        return Agent(
            cfg,
            credentials=Credentials(creds, env={}),
            hardware=Hardware(mic=lambda _c, _m: self.mic, speaker=lambda _c, _m: self.speaker),
            state=StateStore(None),
            notifier=_FileNotifier(self.notify_log),
            link_policies=self.link_timers(),
        )

    def link_timers(self) -> LinkPolicies | None:
        """Shorter link timings (slow retries 5 s, pings 5 s) unless --production-timers;
        passed to the agent as ``Agent(link_policies=...)``."""
        if self.args.production_timers:
            return None
        return LinkPolicies(
            backoff=dataclasses.replace(BackoffPolicy(), slow_s=5.0),
            app_ping_interval_s=5.0,
            app_pong_timeout_s=2.0,
            ws_ping_interval_s=5.0,
            ws_ping_timeout_s=3.0,
            refusal_wait_s=2.0,
        )

    # -- observation --------------------------------------------------------------------
    def state(self, name: str) -> str:
        """A part's state; for the PBX server "up" means a call is playing ("idle": none)."""
        part = self.agent.status.links.get(name) or self.agent.status.devices.get(name)
        if part is None:
            return ""
        if name == "pbx" and part.state.value == "up":
            return "up" if self.agent.metrics.get("active_channels", link="pbx") else "idle"
        return part.state.value

    def flow(self, link: str) -> float:
        return self.agent.metrics.total("frames_received_total", link=link)

    async def healthy(self, parts: tuple[str, ...], within_s: float) -> float | None:
        """Wait until every part is up and (links) audio flows; return when, or None."""
        deadline = time.monotonic() + within_s
        links = [p for p in parts if p in LINKS]
        while time.monotonic() < deadline:
            if all(self.state(p) == "up" for p in parts):
                start = {link: self.flow(link) for link in links}
                sub = time.monotonic() + 3.0
                while time.monotonic() < min(sub, deadline):
                    if all(self.flow(link) >= start[link] + 3 for link in links):
                        return time.monotonic()
                    if not all(self.state(p) == "up" for p in parts):
                        break
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.02)
        return None

    async def left_up(self, link: str, within_s: float) -> None:
        changed = asyncio.Event()

        def watch(_board: Any) -> None:
            if self.state(link) != "up":
                changed.set()

        self.agent.status.add_listener(watch)
        try:
            watch(self.agent.status)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within_s):
                    await changed.wait()
        finally:
            self.agent.status.remove_listener(watch)

    def on_status(self, board: Any) -> None:
        now = time.monotonic()
        for name, part in [*board.links.items(), *board.devices.items()]:
            last = self.last_state.get(name)
            if last != part.state.value:
                self.last_state[name] = part.state.value
                self.transitions.append((now, name, part.state.value))
        with self.status_file.open("a") as f:
            f.write(json.dumps(board.to_json()) + "\n")

    def sample(self) -> dict[str, float]:
        s = {
            "t": time.monotonic(),
            "rss_kib": _rss_kib(),
            "fds": len(os.listdir("/proc/self/fd")),
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
        }
        self.samples.append(s)
        return s

    async def sampler(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(5.0)

    # -- faults ---------------------------------------------------------------------------
    async def fault(self, name: str) -> None:
        c, rng = self.child, self.rng
        link = rng.choice(self.APPLIES.get(name, ("",)))
        scenario = f"{name}:{link}" if link and len(self.APPLIES[name]) > 1 else name
        parts: tuple[str, ...] = (link,) if link else ()
        rec = FaultRecord(scenario, parts, time.monotonic())
        match name:
            case "server_killed":
                await c.proxy(link, "ws", "kill")
                await asyncio.sleep(rng.uniform(0.5, 3.0))
                rec.t_clear = time.monotonic()
                await c.proxy(link, "ws", "revive")
            case "reset_mid_frame":
                await c.proxy(link, "ws", "reset_mid_frame")
                rec.t_clear = time.monotonic()
            case "half_open":
                await c.proxy(link, "ws", "freeze")
                await self.left_up(link, RECOVERY_LIMIT_S)
                rec.t_clear = time.monotonic()  # detected: the server's TCP gives up too
                await c.proxy(link, "ws", "thaw")
            case "accept_no_answer" | "handshake_then_silence":
                mode = "blackhole" if name == "accept_no_answer" else "mute"
                await c.proxy(link, "ws", "mode", mode)
                await c.proxy(link, "ws", "reset_all")
                await asyncio.sleep(rng.uniform(2.0, 6.0))
                rec.t_clear = time.monotonic()
                await c.proxy(link, "ws", "mode", "pass")
                await c.proxy(link, "ws", "reset_all")
            case "slow_rest":
                await c.proxy(link, "rest", "mode", "trickle")
                await c.proxy(link, "ws", "reset_all")
                await asyncio.sleep(rng.uniform(2.0, 6.0))
                rec.t_clear = time.monotonic()
                await c.proxy(link, "rest", "mode", "pass")
            case "dns_failure":
                rec.links = parts = OUTGOING
                self.resolver.broken = True
                for name_ in OUTGOING:
                    await c.proxy(name_, "ws", "reset_all")
                await asyncio.sleep(rng.uniform(1.0, 4.0))
                rec.t_clear = time.monotonic()
                self.resolver.broken = False
            case "auth_storm" | "fastrtc_busy" | "pbx_401_storm":
                await c.call("refuse", link, True)
                await c.proxy(link, "ws", "reset_all")
                await asyncio.sleep(rng.uniform(3.0, 8.0))
                rec.t_clear = time.monotonic()
                await c.call("refuse", link, False)
            case "orgo_restart":
                await c.call("orgo_restart")
                rec.t_clear = time.monotonic()
            case "mic_unplug" | "speaker_unplug":
                dev = self.mic if name == "mic_unplug" else self.speaker
                dev.unplug()
                await asyncio.sleep(rng.uniform(0.5, 3.0))
                rec.t_clear = time.monotonic()
                dev.plug()
            case "pbx_client_reset":
                await c.proxy("pbx", "ws", "reset_all")
                rec.t_clear = time.monotonic()
            case "pbx_half_open":  # the PBX stops sending: the idle timeout ends the call
                await c.proxy("pbx", "ws", "freeze")
                await self.left_up("pbx", RECOVERY_LIMIT_S)
                rec.t_clear = time.monotonic()
                await c.proxy("pbx", "ws", "thaw")
            case "pbx_storm":
                got = await c.call("pbx_storm")
                self.pbx_storms.append(got)
                rec.t_clear = time.monotonic()
            case "pbx_slowloris":
                self.pbx_slowloris.append(await c.call("pbx_slowloris"))
                rec.t_clear = time.monotonic()
            case "pbx_garbage":
                self.pbx_garbage += await c.call("pbx_garbage")
                rec.t_clear = time.monotonic()
        self.faults.append(rec)
        rec.t_ok = await self.healthy(parts, RECOVERY_LIMIT_S)
        stats = self.stats[scenario]
        stats.cycles += 1
        if rec.t_ok is None:
            stats.not_recovered += 1
            print(f"  {scenario}: NOT recovered within {RECOVERY_LIMIT_S:.0f} s", flush=True)
        else:
            stats.recoveries.append(rec.t_ok - rec.t_clear)
        if self.args.verbose:
            took = "-" if rec.t_ok is None else f"{rec.t_ok - rec.t_clear:.2f} s"
            print(f"  {time.monotonic() - self.t_start:7.1f} s {scenario}: back in {took}")

    # Which links each fault is drawn on (one at random per injection).
    APPLIES: dict[str, tuple[str, ...]] = {
        "server_killed": OUTGOING,
        "reset_mid_frame": OUTGOING,
        "half_open": OUTGOING,
        "accept_no_answer": OUTGOING,
        "handshake_then_silence": OUTGOING,
        "slow_rest": ("videosdk", "orgo"),
        "auth_storm": ("videosdk", "orgo"),
        "orgo_restart": ("orgo",),
        "fastrtc_busy": ("fastrtc",),
        "mic_unplug": ("mic",),
        "speaker_unplug": ("speaker",),
        "pbx_client_reset": ("pbx",),
        "pbx_half_open": ("pbx",),
        "pbx_401_storm": ("pbx",),
        "pbx_storm": ("pbx",),
        "pbx_slowloris": ("pbx",),
        "pbx_garbage": ("pbx",),
    }
    FAULTS = (
        "server_killed", "reset_mid_frame", "half_open", "accept_no_answer",
        "handshake_then_silence", "slow_rest", "dns_failure", "auth_storm", "orgo_restart",
        "fastrtc_busy", "mic_unplug", "speaker_unplug", "pbx_client_reset", "pbx_half_open",
        "pbx_401_storm", "pbx_storm", "pbx_slowloris", "pbx_garbage",
    )  # fmt: skip

    # -- the run --------------------------------------------------------------------------
    async def run(self) -> int:
        self.agent = self.build_agent()
        self.last_state: dict[str, str] = {}
        self.status_file = self.tmp / "status-json.txt"
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _l, ctx: self.loop_errors.append(repr(ctx)))
        self.resolver.install(loop)
        handler = _FileHandler(self.log_path)
        _route_logs(handler, self.args.log_level)
        self.agent.status.add_listener(self.on_status)
        agent_task = asyncio.create_task(self.agent.run(), name="agent")
        duration = self.args.minutes * 60
        self.t_start = time.monotonic()
        sampler = asyncio.create_task(self.sampler())
        crashed = False
        try:
            await self.child.call("pbx_start", self.pbx_port)  # the fake PBX starts calling
            first = await self.healthy((*LINKS, "mic", "speaker"), 30.0)
            if first is None:
                raise RuntimeError("the agent never came up")
            warm = self.t_start + min(60.0, duration * 0.2)
            while time.monotonic() - self.t_start < duration:
                await asyncio.sleep(self.rng.uniform(*self.args.healthy))
                if agent_task.done():
                    crashed = True
                    break
                if time.monotonic() - self.t_start >= duration:
                    break
                await self.fault(self.rng.choice(self.FAULTS))
                if time.monotonic() >= warm and not hasattr(self, "warm_sample"):
                    self.warm_sample = self.sample()
            await asyncio.sleep(2.0)  # frames in flight reach the fake
            end_sample = self.sample()
            crashed = crashed or agent_task.done()
            metrics = self.agent.metrics.snapshot()
            received = set(await self.child.call("received"))
            secrets = await self.child.call("secrets")
            self.child_report = await self.child.call("report")
        finally:
            sampler.cancel()
            self.agent.stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await agent_task
            logging.getLogger().removeHandler(handler)
            handler.close()
        self.resolver.uninstall()
        return self.report(crashed, end_sample, metrics, received, secrets)

    # -- the report ---------------------------------------------------------------------
    def pbx_counters(self) -> list[str]:
        """Print the PBX link's counters beside what the PBX side saw; return mismatches."""
        m = self.agent.metrics

        def n(name: str, **labels: str) -> int:
            return int(m.total(name, link="pbx", **labels))

        side = self.child_report["pbx"] or {"admitted": 0, "statuses": {}}
        statuses = {int(k): v for k, v in side["statuses"].items()}
        storm_503 = sum(s.get("503", 0) for s in self.pbx_storms)
        expected = {
            "calls_total": side["admitted"],
            "refused bad_secret": statuses.get(401, 0),
            "refused too_many_calls": statuses.get(503, 0) + storm_503,
            "refused handshake_timeout": PBX_SLOWLORIS * len(self.pbx_slowloris),
            "refused bad_request": self.stats["pbx_garbage"].cycles,
            "malformed_total": self.pbx_garbage,
        }
        counted = {
            "calls_total": n("calls_total"),
            "refused bad_secret": n("connections_refused_total", reason="bad_secret"),
            "refused too_many_calls": n("connections_refused_total", reason="too_many_calls"),
            "refused handshake_timeout": n("connections_refused_total",
                                           reason="handshake_timeout"),
            "refused bad_request": n("connections_refused_total", reason="bad_request"),
            "malformed_total": n("malformed_total"),
        }  # fmt: skip
        ended = {
            r: n("calls_ended_total", reason=r)
            for r in ("closed", "lost", "idle_timeout", "too_large", "stopping", "error")
        }
        admitted_by_storm = sum(s.get("admitted", 0) for s in self.pbx_storms)
        print(f"counters      pbx calls {counted['calls_total']} (PBX side: {side['admitted']}, "
              f"{admitted_by_storm} of them in {len(self.pbx_storms)} storms of {PBX_STORM}), "
              f"ended {ended}")  # fmt: skip
        refused = ", ".join(f"{k[8:]} {v}" for k, v in counted.items() if k.startswith("refused"))
        print(f"              pbx refused: {refused}; "
              f"malformed {counted['malformed_total']}; slowloris closed within "
              f"{max(self.pbx_slowloris, default=0):.1f} s")  # fmt: skip
        bad = [f"{k}: counted {counted[k]}, happened {v}" for k, v in expected.items()
               if counted[k] != v]  # fmt: skip
        if sum(ended.values()) not in (counted["calls_total"] - 1, counted["calls_total"]):
            bad.append(f"calls ended {sum(ended.values())} of {counted['calls_total']}")
        if ended["error"]:
            bad.append(f"{ended['error']} calls ended by an internal error")
        for line in bad:
            print("   mismatch:", line)
        return bad

    def lost_frames(self, received: set[int]) -> tuple[int, int, int]:
        """(lost during up-time, frames during up-time, frames captured in all)."""
        up: list[tuple[float, float]] = []  # videosdk up intervals
        since = None
        for t, name, state in self.transitions:
            if name != "videosdk":
                continue
            if state == "up" and since is None:
                since = t
            elif state != "up" and since is not None:
                up.append((since, t))
                since = None
        end = self.samples[-1]["t"] - 2.0
        if since is not None:
            up.append((since, end))
        guard = [
            (f.t_inject - 1.0, f.t_ok if f.t_ok is not None else float("inf"))
            for f in self.faults
            if "videosdk" in f.links
        ]
        times = self.mic.read_times
        counted = lost = 0
        for seq, t in enumerate(times):
            if t > end or not any(a <= t <= b for a, b in up):
                continue
            if any(a <= t <= b for a, b in guard):
                continue
            counted += 1
            if seq not in received:
                lost += 1
        return lost, counted, len(times)

    def scan(self, secrets: list[str], metrics: Any) -> tuple[int, list[str]]:
        values = set(secrets) | set(FIXED_SECRETS)
        for v in list(values):
            if v.count(".") == 2 and v.startswith("ey"):
                values.update(seg for seg in v.split(".")[1:] if len(seg) >= 16)
        values = {v for v in values if len(v) >= 8}
        pattern = re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))
        hits: list[str] = []
        sources = [self.log_path, self.status_file, self.notify_log]
        for path in sources:
            if not path.exists():
                continue
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    if pattern.search(line):
                        hits.append(f"{path.name}: {line[:160]!r}")
        for text in [json.dumps(metrics), *self.loop_errors]:
            if pattern.search(text):
                hits.append(f"metrics/loop: {text[:160]!r}")
        return len(hits), hits[:5]

    def report(
        self,
        crashed: bool,
        end: dict[str, float],
        metrics: Any,
        received: set[int],
        secrets: list[str],
    ) -> int:
        warm = getattr(self, "warm_sample", self.samples[0])
        peak = {k: max(s[k] for s in self.samples) for k in ("rss_kib", "fds", "tasks", "threads")}
        growth = {
            "rss_growth_kib": end["rss_kib"] - warm["rss_kib"],
            "fds_growth": end["fds"] - warm["fds"],
            "tasks_growth": end["tasks"] - warm["tasks"],
            "threads_growth": end["threads"] - warm["threads"],
        }
        lost, counted, captured = self.lost_frames(received)
        hits, examples = self.scan(secrets, metrics)
        crashes = int(crashed) + int(self.agent.metrics.total("task_crashes_total"))
        crashes += len(self.loop_errors)
        exposure = _exposure()
        elapsed = end["t"] - self.t_start

        timers = "as shipped" if self.args.production_timers else "short keepalive, slow_s 5 s"
        print(f"\nsoak: {elapsed / 60:.1f} min, seed {self.args.seed}, "
              f"log level {self.args.log_level}, timers {timers}")  # fmt: skip
        print(f"{'scenario':<34}{'cycles':>7}{'crashes':>8}{'not back':>9}{'max recovery s':>16}")
        for name in sorted(self.stats):
            st = self.stats[name]
            worst = f"{max(st.recoveries):.2f}" if st.recoveries else "-"
            print(f"{name:<34}{st.cycles:>7}{st.crashes:>8}{st.not_recovered:>9}{worst:>16}")
        total = sum(s.cycles for s in self.stats.values())
        print(f"{'all faults':<34}{total:>7}{crashes:>8}"
              f"{sum(s.not_recovered for s in self.stats.values()):>9}")  # fmt: skip
        print(f"RSS KiB       {warm['rss_kib']:.0f} after warm-up -> {end['rss_kib']:.0f} at end "
              f"({growth['rss_growth_kib']:+.0f}), peak {peak['rss_kib']:.0f}")  # fmt: skip
        for k in ("fds", "tasks", "threads"):
            print(f"{k:<14}{warm[k]:.0f} -> {end[k]:.0f} (peak {peak[k]:.0f})")
        print(f"uplink frames {lost} lost / {counted} during up-time "
              f"({captured} captured, {len(received)} reached the room)")  # fmt: skip
        print(f"secret hits   {hits} ({len(set(secrets) | set(FIXED_SECRETS))} secret values; "
              f"log, STATUS, status "
              f"JSON, metrics scanned)")  # fmt: skip
        for e in examples:
            print("   ", e)
        print(f"exposure      {exposure}")
        sent = self.agent.metrics.total("frames_sent_total", link="videosdk")
        dropped = self.agent.metrics.total("frames_dropped_total", link="videosdk")
        reconnects = {k: self.agent.metrics.total("reconnects_total", link=k) for k in LINKS}
        print(f"counters      videosdk sent {sent:.0f}, dropped {dropped:.0f}; reconnects "
              f"videosdk {reconnects['videosdk']:.0f}, orgo {reconnects['orgo']:.0f}")  # fmt: skip
        rtc = {k: self.agent.metrics.total(k, link="fastrtc") for k in
               ("frames_sent_total", "frames_dropped_total", "refusals_total")}  # fmt: skip
        print(f"counters      fastrtc sent {rtc['frames_sent_total']:.0f}, dropped "
              f"{rtc['frames_dropped_total']:.0f}, refusals {rtc['refusals_total']:.0f} (app: "
              f"{self.child_report['fastrtc_refusals']}); reconnects fastrtc "
              f"{reconnects['fastrtc']:.0f}")  # fmt: skip
        mismatches = self.pbx_counters()
        over = {k: v for k, v in growth.items() if v > LIMITS[k]}
        failed = crashes or any(s.not_recovered for s in self.stats.values()) or lost or hits
        failed = failed or mismatches
        if rtc["refusals_total"] != self.child_report["fastrtc_refusals"]:
            print("fastrtc refusals counted != refusals the app sent")
            failed = True
        if self.args.json:
            Path(self.args.json).write_text(
                json.dumps(
                    {
                        "minutes": elapsed / 60,
                        "scenarios": {
                            k: {
                                "cycles": s.cycles,
                                "not_recovered": s.not_recovered,
                                "max_recovery_s": max(s.recoveries, default=None),
                            }
                            for k, s in self.stats.items()
                        },
                        "crashes": crashes,
                        "growth": growth,
                        "peak": peak,
                        "lost": lost,
                        "counted": counted,
                        "secret_hits": hits,
                        "counter_mismatches": mismatches,
                        "exposure": exposure,
                    },
                    indent=1,
                )
            )
        if over:
            print(f"growth over the limits {LIMITS}: {over}")
        print("RESULT", "FAILED" if failed or over else "ok")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return 1 if failed or over else 0


# === helpers =============================================================================

FIXED_SECRETS = (VSDK_API_KEY, VSDK_SECRET, ORGO_KEY, PBX_SECRET, PBX_WRONG, RTC_QUERY_TOKEN)


def _free_port() -> int:
    """A loopback port free right now (pbx.listen wants a number, not 0)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _FileHandler(logging.Handler):
    """Every record, unredacted, one line each, to a file (scanned at the end)."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self._f = path.open("a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("agent.sandbox"):
            return
        text = record.getMessage()
        if record.exc_info:
            text += " " + "".join(traceback.format_exception(*record.exc_info))
        extra = {k: v for k, v in vars(record).items() if k.isupper()}
        self._f.write(f"{record.levelname} {record.name} {text!r} {extra}\n")

    def close(self) -> None:
        self._f.close()
        super().close()


class _FileNotifier(Notifier):
    """STATUS= lines to a file instead of systemd."""

    def __init__(self, path: Path) -> None:
        super().__init__(env={})
        self.enabled = True
        self._path = path

    def _send(self, state: str) -> None:
        with self._path.open("a", encoding="utf-8") as f:
            f.write(state + "\n")


def _route_logs(handler: logging.Handler, level: str) -> None:
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("agent", "websockets", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(level)
    # the terminal gets warnings of the soak itself only
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.CRITICAL)
    root.addHandler(console)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _exposure() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return "n/a (no systemd-analyze)"
    unit = (REPO / "systemd" / "field-agent.service").read_text()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "field-agent.service"
        path.write_text(unit.replace("/opt/field-agent/bin/field-agent", sys.executable))
        r = subprocess.run(
            [analyze, "security", "--offline=true", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout + r.stderr)
    return m.group(1) if m else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="default 10")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="DEBUG", help="records scanned (default DEBUG)")
    parser.add_argument(
        "--healthy",
        type=float,
        nargs=2,
        default=(2.0, 6.0),
        metavar=("MIN", "MAX"),
        help="seconds of healthy streaming between faults (default 2 6)",
    )
    parser.add_argument("--production-timers", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--verbose", action="store_true", help="one line per fault")
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    parent, child_end = ctx.Pipe()
    proc = ctx.Process(target=child_main, args=(child_end, args.seed), name="soak-fakes")
    proc.start()
    try:
        urls = parent.recv()
        return asyncio.run(Soak(args, Child(parent), urls).run())
    finally:
        with contextlib.suppress(Exception):
            parent.send(("quit", ()))
        proc.join(5)
        if proc.is_alive():
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
