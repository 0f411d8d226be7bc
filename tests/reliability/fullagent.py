"""The whole agent (agent.app.Agent) against the VideoSDK and Orgo fakes on loopback,
with simulated paced audio devices and secrets in a credentials directory.

The config goes through :func:`agent.config.from_dict` (the real validation). Retry
delays are shortened with :func:`fast_backoff` so that fault stories take seconds,
not the production minutes; everything else is as shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.app import Agent, Hardware
from agent.controls import StateStore
from agent.hw.sim import RecordingSink, ToneSource
from agent.links.backoff import BackoffPolicy, Reconnector
from agent.sandbox.orgo import FakeOrgo, tone
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from agent.service import Notifier

Setup = Callable[[FakeVideoSDK, FakeOrgo], Awaitable[dict[str, dict[str, Any]]]]
FAST = BackoffPolicy(initial_s=0.05, cap_s=0.5, jitter=0.3, slow_s=0.5, healthy_after_s=60.0)
# Modules whose links build their own Reconnector (the lead adds pbx/fastrtc here).
LINK_MODULES = ("agent.links.videosdk", "agent.links.orgo")

VSDK_API_KEY = "fa-vsdk-apikey-3c1e9b7d5a2f"
VSDK_SECRET = "fa-vsdk-secret-8e4d2b6f0a9c1e3d5b7f9a2c4e6d8b0f"
ORGO_KEY = "sk_orgo_full_4b8d2f6a0c9e1b3d"


@contextlib.contextmanager
def fast_backoff(monkeypatch: pytest.MonkeyPatch, policy: BackoffPolicy = FAST) -> Iterator[None]:
    """Every link's Reconnector uses ``policy`` (the agent has no knob for it)."""
    for module in LINK_MODULES:
        monkeypatch.setattr(f"{module}.Reconnector", functools.partial(_reconnector, policy))
    yield


def _reconnector(
    policy: BackoffPolicy, *_policy: Any, clock: Callable[[], float] = time.monotonic, **_kw: Any
) -> Reconnector:
    return Reconnector(policy, clock=clock)


@dataclass
class FullAgent:
    agent: Agent
    task: asyncio.Task[int]
    vsdk: FakeVideoSDK
    orgo: FakeOrgo
    mic: Any
    speaker: Any
    creds: Path
    notify_lines: list[str] = field(default_factory=list)

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
        return sorted({v for v in values if v})

    async def stop(self) -> int:
        self.agent.stop()
        async with asyncio.timeout(5):
            return await self.task


def write_creds(directory: Path, *, jwt: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    files = {"orgo-api-key": ORGO_KEY}
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
) -> AsyncIterator[FullAgent]:
    """Start fakes and the agent (VideoSDK + Orgo, open mic); stop both on exit.

    ``setup(vsdk, orgo)`` runs once the fakes listen and returns more config overrides
    (e.g. URLs of proxies put in front of them)."""
    async with (
        FakeVideoSDK(token=None, jwt_secret=VSDK_SECRET, api_key=VSDK_API_KEY, echo=True,
                     keep_frames=500) as vsdk,
        FakeOrgo(api_key=ORGO_KEY, generator=tone(440.0, -12.0), **(orgo_kw or {})) as orgo,
    ):  # fmt: skip
        creds = write_creds(tmp_path / "credentials")
        raw: dict[str, dict[str, Any]] = {
            "device": {"id": "dev_full", "name": "Full agent"},
            "audio": {"capture_rate": 8000, "playback_rate": 48000},
            "ptt": {"mode": "open"},
            "videosdk": {"room_id": "room-full", "api_base": vsdk.api_base},
            "orgo": {
                "enabled": True,
                "computer_id": orgo.computer_id,
                "api_base": orgo.api_base,
                "audio_url": orgo.audio_url,
            },
            "metrics": {"listen": ""},
        }
        more = await setup(vsdk, orgo) if setup is not None else {}
        for section, values in [*(overrides or {}).items(), *more.items()]:
            raw.setdefault(section, {}).update(values)
        cfg = config.from_dict(raw, path="full-agent.toml")
        mic = mic or ToneSource(8000, 1000.0, -20.0, paced=True)
        speaker = speaker or RecordingSink(48000, paced=True, keep_s=10.0)
        agent = Agent(
            cfg,
            credentials=Credentials(creds, env={}),
            hardware=hardware or Hardware(mic=lambda _c, _m: mic, speaker=lambda _c, _m: speaker),
            state=StateStore(None),
            notifier=notifier or Notifier(env={}),
        )
        task = asyncio.create_task(agent.run(), name="full-agent")
        rig = FullAgent(agent, task, vsdk, orgo, mic, speaker, creds)
        try:
            if wait_up:
                await vsdk.wait_for(
                    lambda: rig.link_state("videosdk") == "up" and rig.link_state("orgo") == "up",
                    10.0,
                    "both links up",
                )
            yield rig
        finally:
            if not task.done():
                agent.stop()
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(5):
                        await task
