"""The whole agent (agent.app.Agent) against the fakes on loopback: VideoSDK, Orgo, a
FastRTC app (:mod:`agent.sandbox.fastrtc`) and the PBX server (called by the sandbox
PBX, :meth:`FullAgent.pbx_call`), with simulated paced audio devices and secrets in a
credentials directory. ``links`` picks which of the four are enabled.

The config is written to ``agent.toml`` in the test's directory and loaded by
:func:`agent.config.load` (the real validation); ``agent.reload()`` reads that file
again, so a test edits it as a person would (:meth:`FullAgent.write_config`). Retry
delays are shortened with ``policies=FAST_LINKS`` (``Agent(link_policies=...)``) so
that fault stories take seconds, not the production minutes; everything else is as
shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import config
from agent.app import Agent, Hardware
from agent.backoff import BackoffPolicy
from agent.controls import StateStore
from agent.hw.sim import RecordingSink, ToneSource
from agent.links.registry import LinkPolicies
from agent.sandbox.fastrtc import FakeFastRTC
from agent.sandbox.orgo import FakeOrgo, tone
from agent.sandbox.pbx import PbxCall, two_party_call
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from agent.service import Notifier
from tests.support import toml_text

Setup = Callable[[FakeVideoSDK, FakeOrgo, FakeFastRTC], Awaitable[dict[str, dict[str, Any]]]]
FAST = BackoffPolicy(initial_s=0.05, cap_s=0.5, jitter=0.3, slow_s=0.5, healthy_after_s=60.0)
# Every link's reconnects at FAST; a busy FastRTC app is retried after FAST.slow_s
# (doubling), not 10 s. Passed to the agent as ``Agent(link_policies=...)``.
FAST_LINKS = LinkPolicies(backoff=FAST, refusal_wait_s=FAST.slow_s)
ALL_LINKS = ("videosdk", "orgo", "pbx", "fastrtc")

VSDK_API_KEY = "fa-vsdk-apikey-3c1e9b7d5a2f"
VSDK_SECRET = "fa-vsdk-secret-8e4d2b6f0a9c1e3d5b7f9a2c4e6d8b0f"
ORGO_KEY = "sk_orgo_full_4b8d2f6a0c9e1b3d"
PBX_SECRET = "fa-pbx-secret-7d3b1f9e5a2c8064"
COMMAND_KEY = "fa-command-key-2b4d6f8a0c1e3a5c7e9b"
PBX_WRONG = "fa-pbx-secret-7d3b1f9e5a2c8065"  # what a misconfigured PBX sends: a near miss
# A FastRTC app's URL may carry a token in its query (a signed or private app): not a
# credential file, but it must stay out of sight like one.
RTC_QUERY_TOKEN = "fa-rtc-sign-5e0a2c4b6d8f1a3c"


@dataclass
class FullAgent:
    agent: Agent
    task: asyncio.Task[int]
    vsdk: FakeVideoSDK
    orgo: FakeOrgo
    mic: Any
    speaker: Any
    creds: Path
    rtc: FakeFastRTC
    pbx_url: str  # the agent's PBX server
    links: tuple[str, ...] = ALL_LINKS
    notify_lines: list[str] = field(default_factory=list)
    config_path: Path = Path("agent.toml")
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)  # what config_path holds

    def write_config(self, changes: dict[str, dict[str, Any]] | None = None) -> None:
        """Rewrite the config file with ``changes`` merged in (read on the next reload)."""
        for section, values in (changes or {}).items():
            self.raw.setdefault(section, {}).update(values)
        self.config_path.write_text(toml_text(self.raw))

    def link_state(self, name: str) -> str:
        part = self.agent.status.links.get(name)
        return "" if part is None else part.state.value

    def device_state(self, name: str) -> str:
        part = self.agent.status.devices.get(name)
        return "" if part is None else part.state.value

    def secrets(self) -> list[str]:
        """Every secret value the run involved: files, minted JWTs, passwords, refs."""
        values = [p.read_text().strip() for p in self.creds.iterdir()]
        for req in self.vsdk.rest_requests:
            auth = req.headers.get("authorization", "")
            values.append(auth.removeprefix("Bearer ").strip())
        values += [s.ref for s in self.vsdk.sessions]
        values += [s.token for s in self.orgo.sessions if s.token]
        values += [self.orgo.password, self.orgo.desktop_api_token]
        values += [PBX_WRONG, RTC_QUERY_TOKEN]
        return sorted({v for v in values if v})

    def all_up(self) -> bool:
        return all(self.link_state(name) == "up" for name in self.links)

    def pbx_call(self, secret: str = PBX_SECRET) -> PbxCall:
        """The sandbox PBX's two-party call to the agent (8 kHz)."""
        return two_party_call(self.pbx_url, secret=secret, sample_rate=8000)

    async def stop(self) -> int:
        self.agent.stop()
        async with asyncio.timeout(5):
            return await self.task


def write_creds(directory: Path, *, jwt: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    files = {"orgo-api-key": ORGO_KEY, "pbx-secret": PBX_SECRET, "command-key": COMMAND_KEY}
    if jwt:
        files |= {"videosdk-api-key": VSDK_API_KEY, "videosdk-secret": VSDK_SECRET}
    else:
        files["videosdk-token"] = "fa-vsdk-token-0d2e4f6a8b1c3e5f"
    for name, value in files.items():
        (directory / name).write_text(value + "\n")
        os.chmod(directory / name, 0o600)
    return directory


@contextlib.asynccontextmanager
async def full_agent(
    tmp_path: Path,
    *,
    mic: Any = None,
    speaker: Any = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    notifier: Notifier | None = None,
    wait_up: bool = True,
    orgo_kw: dict[str, Any] | None = None,
    setup: Setup | None = None,
    hardware: Hardware | None = None,
    links: tuple[str, ...] = ALL_LINKS,
    policies: LinkPolicies | None = None,
) -> AsyncIterator[FullAgent]:
    """Start fakes and the agent (``links`` enabled, open mic); stop both on exit.

    ``setup(vsdk, orgo, rtc)`` runs once the fakes listen and returns more config
    overrides (e.g. URLs of proxies put in front of them)."""
    async with (
        FakeVideoSDK(token=None, jwt_secret=VSDK_SECRET, api_key=VSDK_API_KEY, echo=True,
                     keep_frames=500) as vsdk,
        FakeOrgo(api_key=ORGO_KEY, generator=tone(440.0, -12.0), **(orgo_kw or {})) as orgo,
        FakeFastRTC() as rtc,
    ):  # fmt: skip
        creds = write_creds(tmp_path / "credentials")
        pbx_port = _free_port()
        raw: dict[str, dict[str, Any]] = {
            "device": {"id": "dev_full", "name": "Full agent"},
            "audio": {"capture_rate": 8000, "playback_rate": 48000},
            "ptt": {"mode": "open"},
            "videosdk": {"room_id": "room-full", "api_base": vsdk.api_base},
            "orgo": {
                "enabled": "orgo" in links,
                "computer_id": orgo.computer_id,
                "api_base": orgo.api_base,
                "audio_url": orgo.audio_url,
            },
            "fastrtc": {
                "enabled": "fastrtc" in links,
                "url": f"{rtc.url}?token={RTC_QUERY_TOKEN}",
                "input_rate": rtc.input_rate,
                "output_rate": rtc.output_rate,
            },
            "pbx": {"enabled": "pbx" in links, "listen": f"127.0.0.1:{pbx_port}"},
            "metrics": {"listen": ""},
        }
        if "videosdk" not in links:
            raw["videosdk"]["enabled"] = False
        more = await setup(vsdk, orgo, rtc) if setup is not None else {}
        for section, values in [*(overrides or {}).items(), *more.items()]:
            raw.setdefault(section, {}).update(values)
        config_path = tmp_path / "agent.toml"
        config_path.write_text(toml_text(raw))
        cfg = config.load(config_path)
        mic = mic or ToneSource(8000, 1000.0, -20.0, paced=True)
        speaker = speaker or RecordingSink(48000, paced=True, keep_s=10.0)
        agent = Agent(
            cfg,
            credentials=Credentials(creds, env={}),
            hardware=hardware or Hardware(mic=lambda _c, _m: mic, speaker=lambda _c, _m: speaker),
            state=StateStore(None),
            notifier=notifier or Notifier(env={}),
            reload_config=lambda: config.load(config_path),
            link_policies=policies,
        )
        task = asyncio.create_task(agent.run(), name="full-agent")
        rig = FullAgent(
            agent, task, vsdk, orgo, mic, speaker, creds, rtc, f"ws://127.0.0.1:{pbx_port}", links,
            config_path=config_path, raw=raw,
        )  # fmt: skip
        try:
            if wait_up:
                await vsdk.wait_for(rig.all_up, 10.0, f"links {', '.join(links)} up")
            yield rig
        finally:
            if not task.done():
                agent.stop()
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(5):
                        await task


def _free_port() -> int:
    """A loopback port free right now (pbx.listen wants a number, not 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
