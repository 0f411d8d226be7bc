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
garbage frames; and the field faults (issue 17): strangers flood the command topic
with unsigned, forged-signature and malformed commands (``ptt hold``, ``mute``, ...),
a valid signed command is replayed (at once, or the run's first one much later), ~200
slowloris connections hold the /status endpoint, the config file is hand-broken
(garbage, truncated, a bad value, gone) and reloaded, then restored and reloaded, and
``state.json`` is corrupted under the running agent. Reported:

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
- the field faults' own checks: no stranger's or replayed command executes (PTT mode,
  volume and mute unchanged; the mic runs open and allow_mic_control is on, so a
  ``ptt hold`` that got through would also lose uplink frames), every one is refused
  and counted, a flood costs at most a fixed number of journal lines (counted after
  the agent's own RateLimitFilter); /status answers after a flood and the agent shed
  the connections over its cap; a refused reload and the good reload after it restart
  no link (same VideoSDK session, no reconnects) and leave no "reload refused" error;
  a corrupt state.json reads as defaults and the next save replaces it atomically
  (valid JSON, no temp file left);
- the unit's ``systemd-analyze security --offline=true`` exposure (if available).

Timers: backoff as shipped except ``slow_s`` = 5 s (a refused credential is retried
after 5 s, not 2 min) and keepalive 5 s / 3 s (VideoSDK), ping 5 s / pong 2 s (Orgo,
FastRTC) instead of 20/15, 30/10 and 20/10, so a half-open connection costs ~10 s, not
~40 s; a busy FastRTC app is retried after 2 s (doubling), not 10 s; the PBX idle
timeout is 5 s, not 30 s; ``--production-timers`` keeps everything as shipped. Exit
status 1 on a crash, a fault not recovered within 90 s, a lost frame during up-time,
a secret hit, a PBX or FastRTC counter that does not match what the PBX side / the
app saw, a failed field-fault check, or growth beyond the limits printed.

CI short mode: ``.venv/bin/python bench/soak.py --minutes 5``.
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
from agent.commands import sign_command  # noqa: E402
from agent.controls import StateStore  # noqa: E402
from agent.hw.sim import RecordingSink, ToneSource  # noqa: E402
from agent.links.registry import LinkPolicies  # noqa: E402
from agent.pcm import Pcm  # noqa: E402
from agent.sandbox.faultproxy import FaultProxy, Resolver  # noqa: E402
from agent.secrets import Credentials  # noqa: E402
from agent.service import Notifier, RateLimitFilter  # noqa: E402

HOST = "agent-soak.invalid"  # RFC 6761: only our Resolver shim makes it resolve
VSDK_API_KEY = "soak-vsdk-apikey-6f1d3b8a2c"
VSDK_SECRET = "soak-vsdk-secret-2a9e7c5b3d1f8e6a4c2b0d9f7e5a3c1b"
ORGO_KEY = "sk_orgo_soak_9c7e5a3b1d2f4e6a"
PBX_SECRET = "soak-pbx-secret-3f8a6c1e9b2d"
PBX_WRONG = "soak-pbx-secret-3f8a6c1e9b2e"  # a misconfigured PBX: a near miss
RTC_QUERY_TOKEN = "soak-rtc-sign-8b4e2a6c0d1f"  # a token in the FastRTC app's URL query
COMMAND_KEY = "soak-command-key-5e3c1a9f7d2b4e6a"  # the operator console's (command-key)
FORGED_KEY = "soak-stranger-guess-0000000000000"  # a stranger's guess: wrong signatures
COMMAND_TOPIC = "DEVICE_CMD"
DEVICE_ID = "dev_soak"
FLOOD_MESSAGES = 120  # forged/unsigned commands per flood, from FLOOD_SENDERS strangers
FLOOD_SENDERS = 6
FLOOD_SECONDS = 3.0  # the flood is paced over this long
FLOOD_LOG_LINES = 40  # journal lines (after the agent's rate limit) one flood may cause
STATUS_FLOOD = 200  # slowloris connections to /status
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
                case "vsdk_publish":  # ([(message, sender_id), ...],): how many delivered
                    result = 0
                    for message, sender in args[0]:
                        result += await vsdk.send_message(
                            COMMAND_TOPIC, message, sender_id=sender, sender_name=sender
                        )
                case "vsdk_sessions":
                    result = len(vsdk.sessions)
                case "status_flood":  # (port, connections, hold_s)
                    result = await status_flood(*args)
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


async def status_flood(port: int, n: int, hold_s: float) -> dict[str, Any]:
    """``n`` slowloris connections to the agent's /status endpoint, held ``hold_s``
    (a header byte every 0.5 s, the request never finished); then one real GET."""
    closed = 0
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one() -> None:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2.0):
                conns.append(await asyncio.open_connection("127.0.0.1", port))

    await asyncio.gather(*(one() for _ in range(n)))
    opened = len(conns)
    for _, w in conns:
        with contextlib.suppress(OSError):
            w.write(b"GET /status HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
    answers = [asyncio.ensure_future(r.read(4096)) for r, _ in conns]  # a reply, b"", a reset
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        for answer, (_, w) in zip(answers, conns, strict=True):
            if not answer.done() and not w.is_closing():
                with contextlib.suppress(OSError):
                    w.write(b"a")
        await asyncio.sleep(0.5)
    for answer, (_, w) in zip(answers, conns, strict=True):
        closed += answer.done()  # the agent answered or closed it (busy, evicted, timeout)
        answer.cancel()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await answer
        w.close()
    await asyncio.sleep(0.2)
    status, body = 0, b""
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(5.0):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /status HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            raw = await r.read()
            w.close()
            head, _, body = raw.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    ok_json = False
    with contextlib.suppress(ValueError):
        ok_json = isinstance(json.loads(body), dict)
    return {"opened": opened, "closed_by_agent": closed, "status": status, "json": ok_json}


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
        self.metrics_port = _free_port()
        self.journal = _JournalLines()
        self.checks: dict[str, list[str]] = defaultdict(list)  # per new kind: failures
        self.notes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.first_signed: str | None = None  # an old valid command, replayed later
        self.volume_step = 0

    # -- setup ------------------------------------------------------------------------
    def build_agent(self) -> Agent:
        creds = self.tmp / "credentials"
        creds.mkdir()
        for name, value in (
            ("videosdk-api-key", VSDK_API_KEY),
            ("videosdk-secret", VSDK_SECRET),
            ("orgo-api-key", ORGO_KEY),
            ("pbx-secret", PBX_SECRET),
            ("command-key", COMMAND_KEY),
        ):
            (creds / name).write_text(value + "\n")
            os.chmod(creds / name, 0o600)
        self.config_doc = {
                "device": {"id": DEVICE_ID, "name": "Soak"},
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
                "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
                # the fault proxies are reached by a name under .invalid (so DNS can fail)
                "security": {"allow_insecure": True},
                # the riskiest setting: a signed ptt command may change what the mic sends
                "commands": {"allow_mic_control": True, "window_s": 60.0},
        }  # fmt: skip
        self.config_file = self.tmp / "agent.toml"
        self.config_text = _toml(self.config_doc)
        self.config_file.write_text(self.config_text)
        cfg = config.load(self.config_file)
        self.state_dir = self.tmp / "state"
        self.state_dir.mkdir()
        self.mic = NumberedMic()
        self.speaker = RecordingSink(48000, paced=True, keep_s=1.0)
        self.notify_log = self.tmp / "status-lines.txt"
        return Agent(
            cfg,
            credentials=Credentials(creds, env={}),
            hardware=Hardware(mic=lambda _c, _m: self.mic, speaker=lambda _c, _m: self.speaker),
            state=StateStore(self.state_dir),
            notifier=_FileNotifier(self.notify_log),
            reload_config=lambda: config.load(self.config_file),
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
            case "command_flood":
                await self.command_flood()
                rec.t_clear = time.monotonic()
            case "command_replay":
                await self.command_replay()
                rec.t_clear = time.monotonic()
            case "status_flood":
                await self.status_flood()
                rec.t_clear = time.monotonic()
            case "reload_refused":
                await self.reload_refused()
                rec.t_clear = time.monotonic()
            case "state_corrupt":
                await self.state_corrupt()
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
        "pbx_401_storm", "pbx_storm", "pbx_slowloris", "pbx_garbage", "command_flood",
        "command_replay", "status_flood", "reload_refused", "state_corrupt",
    )  # fmt: skip

    # -- the field faults (issue 17): strangers, floods, broken files ---------------------
    def fail(self, kind: str, why: str) -> None:
        self.checks[kind].append(why)
        print(f"  {kind}: {why}", flush=True)

    def refused(self) -> float:
        return self.agent.metrics.total("commands_refused_total")

    def accepted(self) -> float:
        return self.agent.metrics.total("commands_accepted_total")

    def controls_state(self) -> tuple[str, float, bool]:
        st = self.agent.status
        return st.ptt_mode, st.volume, st.muted

    def signed(self, cmd: str, value: Any = None, *, key: str = COMMAND_KEY,
               device: str = DEVICE_ID, ts: int | None = None) -> str:  # fmt: skip
        return sign_command(key, topic=COMMAND_TOPIC, device=device, cmd=cmd, value=value, ts=ts)

    async def until(self, cond: Any, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while not cond():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def videosdk_went_down(self, since: float) -> bool:
        return any(t >= since and n == "videosdk" and st != "up" for t, n, st in self.transitions)

    async def command_flood(self) -> None:
        """Strangers flood the command topic with unsigned, forged (wrong key), other
        device's and stale commands that would close the mic or mute the speaker: none
        executes, each is refused and counted, the journal stays within its budget."""
        kind = "command_flood"
        await self.healthy(("videosdk",), 30.0)
        rng, now = self.rng, int(time.time())
        forms = [
            lambda: '{"cmd":"ptt","value":"hold"}',
            lambda: '{"cmd":"mute"}',
            lambda: json.dumps({"cmd": "volume", "value": 0.05}),
            lambda: self.signed("ptt", "hold", key=FORGED_KEY),
            lambda: self.signed("mute", key=FORGED_KEY),
            lambda: self.signed("ptt", "hold", device="dev_other", key=FORGED_KEY),
            lambda: self.signed("volume", 0.0, key=FORGED_KEY, ts=now - 86400),
            lambda: '{"v":1,"body":"{}","sig":"' + "0" * 64 + '"}',
            lambda: "not json \u0000\n FAKE LOG LINE",
        ]
        batch = [(rng.choice(forms)(), f"stranger-{rng.randrange(FLOOD_SENDERS)}")
                 for _ in range(FLOOD_MESSAGES)]  # fmt: skip
        before, refused0, accepted0 = self.controls_state(), self.refused(), self.accepted()
        t0 = time.monotonic()
        delivered, chunk = 0, 20
        for i in range(0, len(batch), chunk):
            delivered += await self.child.call("vsdk_publish", batch[i : i + chunk])
            await asyncio.sleep(FLOOD_SECONDS * chunk / len(batch))
        await self.until(lambda: self.refused() - refused0 >= delivered, 10.0)
        t1 = time.monotonic()
        await asyncio.sleep(1.0)  # late lines count too
        lines = self.journal.between(t0, t1 + 1.0)
        rate = lines / (t1 + 1.0 - t0)
        n = self.notes[kind]
        n["messages"] += delivered
        n["refused"] += self.refused() - refused0
        n["accepted"] += self.accepted() - accepted0
        n["max_log_lines_per_s"] = max(n["max_log_lines_per_s"], rate)
        n["max_log_lines"] = max(n["max_log_lines"], lines)
        if self.accepted() != accepted0:
            self.fail(kind, f"{self.accepted() - accepted0:.0f} stranger commands executed")
        if self.controls_state() != before:
            self.fail(kind, f"controls changed: {before} -> {self.controls_state()}")
        if self.refused() - refused0 != delivered and not self.videosdk_went_down(t0):
            self.fail(kind, f"{delivered} delivered, {self.refused() - refused0:.0f} refused")
        if lines > FLOOD_LOG_LINES:
            top = self.journal.templates(t0, t1 + 1.0)
            self.fail(kind, f"{lines} journal lines in {t1 + 1 - t0:.1f} s ({rate:.1f}/s): {top}")

    async def command_replay(self) -> None:
        """A valid signed ``ptt open`` from the console is executed once; the same text
        published again (just now, or the run's first one, long after) is refused."""
        kind = "command_replay"
        await self.healthy(("videosdk",), 30.0)
        fresh = self.signed("ptt", "open")
        old = self.first_signed or fresh
        if self.first_signed is None:
            self.first_signed = fresh
        before, refused0, accepted0 = self.controls_state(), self.refused(), self.accepted()
        t0 = time.monotonic()
        got = await self.child.call("vsdk_publish", [(fresh, "console")])
        if not await self.until(lambda: self.accepted() - accepted0 >= got, 5.0):
            self.fail(kind, "the console's valid signed command was not executed")
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        replay = self.rng.choice([fresh, old])
        accepted1 = self.accepted()
        again = await self.child.call("vsdk_publish", [(replay, "stranger-replay")])
        ok = await self.until(lambda: self.refused() - refused0 >= again, 5.0)
        n = self.notes[kind]
        n["replays"] += again
        n["refused"] += self.refused() - refused0
        for reason in ("replayed", "stale"):
            n[reason] = self.agent.metrics.total("commands_refused_total", reason=reason)
        if self.accepted() != accepted1:
            self.fail(kind, "a replayed command was executed")
        if not ok and not self.videosdk_went_down(t0):
            self.fail(kind, "a replayed command was not refused")
        if self.controls_state() != before:
            self.fail(kind, f"controls changed: {before} -> {self.controls_state()}")

    async def status_flood(self) -> None:
        """~200 slowloris connections to /status for a few seconds: the uplink flows (the
        lost-frames check), the agent sheds them, /status answers afterwards."""
        kind = "status_flood"
        m = self.agent.metrics
        shed0 = m.total("http_connections_refused_total")
        hold = self.rng.uniform(2.0, 6.0)
        got = await self.child.call("status_flood", self.metrics_port, STATUS_FLOOD, hold)
        n = self.notes[kind]
        n["connections"] += got["opened"]
        n["closed_by_agent"] += got["closed_by_agent"]
        n["shed"] += m.total("http_connections_refused_total") - shed0
        if got["status"] != 200 or not got["json"]:
            self.fail(kind, f"/status after the flood: HTTP {got['status']}, json {got['json']}")
        if got["opened"] > 16 and got["closed_by_agent"] == 0:
            self.fail(kind, f"{got['opened']} connections held, none shed")

    async def reload_refused(self) -> None:
        """A hand-edit gone wrong (garbage, truncated, a bad value, the file gone), then a
        reload: refused, nothing restarts (the VideoSDK session stays); the good file
        back and a reload: applied as "unchanged", still nothing restarts."""
        kind = "reload_refused"
        await self.healthy(LINKS, 30.0)
        m, rng = self.agent.metrics, self.rng
        how = rng.choice(["garbage", "truncated", "bad_value", "missing"])
        sessions0 = await self.child.call("vsdk_sessions")
        refused0 = m.total("reloads_total", result="refused")
        good0 = m.total("reloads_total", result="unchanged")
        t0 = time.monotonic()
        match how:
            case "garbage":
                self.config_file.write_bytes(bytes(rng.randrange(256) for _ in range(600)))
            case "truncated":
                self.config_file.write_text(self.config_text[: rng.randrange(20, 400)])
            case "bad_value":
                self.config_file.write_text(
                    self.config_text.replace("window_s = 60.0", "window_s = 1")
                )
            case "missing":
                self.config_file.unlink()
        self.agent.reload()
        if not await self.until(lambda: m.total("reloads_total", result="refused") > refused0,
                                15.0):  # fmt: skip
            self.fail(kind, f"a {how} config was not refused")
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        self.config_file.write_text(self.config_text)
        self.agent.reload()
        if not await self.until(lambda: m.total("reloads_total", result="unchanged") > good0,
                                15.0):  # fmt: skip
            self.fail(kind, "the good config back was not reloaded as unchanged")
        await asyncio.sleep(0.5)
        self.notes[kind][how] += 1
        sessions = await self.child.call("vsdk_sessions")
        if not self.videosdk_went_down(t0) and sessions != sessions0:
            self.fail(kind, f"{how}: the VideoSDK session changed ({sessions0} -> {sessions})")
        restarted = [k for k in self.journal.templates(t0, time.monotonic())
                     if k.startswith("agent.generation: reload: restarted")]  # fmt: skip
        stopped = [n for t, n, st in self.transitions if t >= t0 and st == "stopped"]
        if restarted or stopped:
            self.fail(kind, f"{how}: parts restarted ({restarted or stopped})")
        if self.agent.status.last_error.startswith("reload refused"):
            self.fail(kind, f"status still says {self.agent.status.last_error!r}")

    async def state_corrupt(self) -> None:
        """state.json turned to garbage (a power cut, a worn card): a fresh read gives
        the defaults, the running agent goes on, and its next save (a signed volume
        command) replaces the file atomically: valid JSON, no temp file left."""
        kind = "state_corrupt"
        await self.healthy(("videosdk",), 30.0)
        rng = self.rng
        path = self.state_dir / "state.json"
        junk = rng.choice([b"", b"{", b'{"volume": true}', b"\x00" * 512, b"[" * 100_000,
                           bytes(rng.randrange(256) for _ in range(300))])  # fmt: skip
        path.write_bytes(junk)
        try:
            fresh = StateStore(self.state_dir).load()
        except Exception as e:  # what a restart would meet
            self.fail(kind, f"reading a corrupt state.json raised {type(e).__name__}")
            fresh = {}
        if "volume" in fresh and not isinstance(fresh["volume"], float | int):
            self.fail(kind, f"a corrupt state.json gave volume {fresh['volume']!r}")
        self.volume_step += 1
        volume = (0.6, 0.7)[self.volume_step % 2]
        accepted0 = self.accepted()
        got = await self.child.call("vsdk_publish", [(self.signed("volume", volume), "console")])
        if not await self.until(lambda: self.accepted() - accepted0 >= got, 5.0):
            self.fail(kind, "the console's volume command was not executed")

        def saved() -> bool:
            try:
                return json.loads(path.read_bytes()).get("volume") == volume
            except (OSError, ValueError, AttributeError):
                return False

        ok = await self.until(saved, 15.0)  # writes are coalesced (5 s)
        self.notes[kind]["corrupted"] += 1
        if got and not ok:
            self.fail(kind, f"state.json not rewritten with volume {volume}")
        leftovers = [p.name for p in self.state_dir.iterdir() if p.name != "state.json"]
        if leftovers:
            self.fail(kind, f"left behind in the state directory: {leftovers}")

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
        logging.getLogger().addHandler(self.journal)
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
            logging.getLogger().removeHandler(self.journal)
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

    def field_checks(self) -> list[str]:
        """Print what the field faults (issue 17) saw; return their failed checks."""
        m, n = self.agent.metrics, self.notes
        fl, rp, sf = n["command_flood"], n["command_replay"], n["status_flood"]
        reasons = {labels.get("reason", "?"): int(v)
                   for labels, v in m.snapshot().get("commands_refused_total", [])}  # fmt: skip
        cycles = {k: self.stats[k].cycles for k in ("command_flood", "command_replay",
                                                   "status_flood")}  # fmt: skip
        print(f"commands      {cycles['command_flood']} floods: {fl['messages']:.0f} stranger "
              f"messages, "
              f"{fl['refused']:.0f} refused, {fl['accepted']:.0f} executed, journal at most "
              f"{fl['max_log_lines']:.0f} lines a flood (limit {FLOOD_LOG_LINES}), "
              f"{fl['max_log_lines_per_s']:.1f} lines/s; "
              f"{cycles['command_replay']} replays: {rp['replays']:.0f} replayed, "
              f"{rp['refused']:.0f} refused "
              f"(replayed {rp['replayed']:.0f}, stale {rp['stale']:.0f} in all); "
              f"accepted {self.accepted():.0f}, refused {self.refused():.0f} "
              f"{reasons}")  # fmt: skip
        print(f"status flood  {cycles['status_flood']} floods: {sf['connections']:.0f} "
              f"slowloris connections held, "
              f"{sf['closed_by_agent']:.0f} closed by the agent, "
              f"{sf['shed']:.0f} counted shed; /status answered after each: "
              f"{'yes' if not self.checks['status_flood'] else 'NO'}")  # fmt: skip
        rl, sc = n["reload_refused"], n["state_corrupt"]
        print(f"reloads       refused {m.total('reloads_total', result='refused'):.0f} "
              f"({', '.join(f'{k} {v:.0f}' for k, v in sorted(rl.items())) or 'none'}), "
              f"unchanged {m.total('reloads_total', result='unchanged'):.0f}, applied "
              f"{m.total('reloads_total', result='applied'):.0f}; state.json corrupted "
              f"{sc['corrupted']:.0f} times, rewritten each time: "
              f"{'yes' if not self.checks['state_corrupt'] else 'NO'}")  # fmt: skip
        out = [f"{kind}: {why}" for kind, whys in sorted(self.checks.items()) for why in whys]
        for line in out:
            print("   check failed:", line)
        return out

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
        field_failures = self.field_checks()
        over = {k: v for k, v in growth.items() if v > LIMITS[k]}
        failed = crashes or any(s.not_recovered for s in self.stats.values()) or lost or hits
        failed = failed or mismatches or field_failures
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
                        "field_checks": {k: dict(v) for k, v in self.notes.items()},
                        "field_failures": field_failures,
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

FIXED_SECRETS = (VSDK_API_KEY, VSDK_SECRET, ORGO_KEY, PBX_SECRET, PBX_WRONG, RTC_QUERY_TOKEN,
                 COMMAND_KEY)  # fmt: skip


def _toml(doc: dict[str, dict[str, Any]]) -> str:
    """The soak's config as a TOML file (sections of scalars; enough for it)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in section.items()) + "\n"
        for name, section in doc.items()
    )


class _JournalLines(logging.Handler):
    """When each ``agent`` record at INFO or above would reach the journal (after the
    agent's own :class:`RateLimitFilter`, as :func:`agent.service.setup_logging` sets it)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(RateLimitFilter())
        self.times = array.array("d")
        self.names: list[str] = []  # logger: template, one per time

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if not record.name.startswith("agent.") or record.name.startswith("agent.sandbox"):
            return False
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        self.times.append(time.monotonic())
        self.names.append(f"{record.name}: {str(record.msg)[:40]}")

    def between(self, a: float, b: float) -> int:
        return sum(1 for t in self.times if a <= t <= b)

    def templates(self, a: float, b: float) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for t, name in zip(self.times, self.names, strict=True):
            if a <= t <= b:
                out[name] += 1
        return dict(out)


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
