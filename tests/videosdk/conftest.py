"""Fixtures for the VideoSDK link: the loopback fake, a recording mixer, a link harness."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest

from agent.audio.fanout import Fanout
from agent.backoff import BackoffPolicy, Reconnector
from agent.config import DeviceConfig, VideoSDKConfig
from agent.links.videosdk import VideoSDKLink
from agent.metrics import Metrics
from agent.pcm import UPLINK_SAMPLES, Frame, Pcm, SourceFactory
from agent.proto.videosdk import TopicMessage
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from agent.service import Heartbeat
from agent.status import StatusBoard
from tests.support import LinkHarnessBase, RecordingMixer, wait_until

TOKEN = "vsdk-test-token-0123456789abcdef"
API_KEY = "apikey-0123456789"
SECRET = "secret-0123456789abcdef0123456789abcdef"  # ≥ 32 bytes: no PyJWT key warning
ROOM = "abcd-efgh-ijkl"

# Short timings so reconnect stories take a fraction of a second.
FAST = BackoffPolicy(initial_s=0.05, cap_s=0.3, slow_s=0.5, healthy_after_s=60.0)


def frame_samples(seq: int) -> Pcm:
    """160 distinct-looking samples for frame ``seq`` (full int16 range, reproducible)."""
    return np.random.default_rng(seq).integers(-32768, 32767, UPLINK_SAMPLES, dtype=np.int16)


@dataclass
class Harness(LinkHarnessBase):
    """A real VideoSDKLink against a real FakeVideoSDK, fed like the capture clock feeds it."""

    link_name: ClassVar[str] = "videosdk"

    fake: FakeVideoSDK
    creds: Credentials
    http: httpx.AsyncClient
    cfg: VideoSDKConfig = field(default_factory=lambda: VideoSDKConfig(room_id=ROOM))
    device: DeviceConfig = field(
        default_factory=lambda: DeviceConfig(id="dev_12", name="Field Device 12")
    )
    mixer: SourceFactory = field(default_factory=RecordingMixer)
    metrics: Metrics = field(default_factory=Metrics)
    status: StatusBoard = field(default_factory=StatusBoard)
    heartbeat: Heartbeat = field(
        default_factory=lambda: Heartbeat("videosdk", 10.0, time.monotonic)
    )
    commands: list[TopicMessage] = field(default_factory=list)
    link: VideoSDKLink | None = None
    task: asyncio.Task[None] | None = None
    fanout: Fanout | None = None
    uplink: asyncio.Queue[Frame] | None = None
    seq: int = 0

    def start(self, cfg: VideoSDKConfig | None = None, **kw: Any) -> VideoSDKLink:
        if cfg is not None:
            self.cfg = cfg
        self.cfg = VideoSDKConfig(**{**self.cfg.__dict__, "api_base": self.fake.api_base})
        kw.setdefault("reconnector", Reconnector(FAST))
        kw.setdefault("ping_interval_s", 1.0)
        kw.setdefault("ping_timeout_s", 1.0)
        self.fanout = Fanout(self.metrics)
        self.uplink = self.fanout.subscribe("videosdk")
        self.link = VideoSDKLink(
            self.cfg,
            self.device,
            self.creds,
            uplink=self.uplink,
            mixer=self.mixer,
            status=self.status,
            metrics=self.metrics,
            http=self.http,
            heartbeat=self.heartbeat,
            on_command=self.commands.append,
            **kw,
        )
        self.task = asyncio.create_task(self.link.run(), name="videosdk-under-test")
        return self.link

    async def feed(self, frames: int, period_s: float = 0.02) -> list[Pcm]:
        """Publish ``frames`` frames paced like the capture clock; return their samples."""
        assert self.fanout is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = []
        for i in range(frames):
            pcm = frame_samples(self.seq)
            self.fanout.publish(Frame(pcm, self.seq, time.monotonic()))
            self.seq += 1
            sent.append(pcm)
            await asyncio.sleep(max(0.0, t0 + (i + 1) * period_s - loop.time()))
        return sent

    async def wait_state(self, state: str, within_s: float = 5.0) -> None:
        await wait_until(lambda: self.state() == state, within_s, f"videosdk state {state!r}")

    async def wait_up(self, sessions: int = 1, within_s: float = 5.0) -> None:
        """Wait until the fake saw ``sessions`` started sessions and the link says up."""
        await wait_until(
            lambda: len(self.fake.started_sessions) >= sessions and self.state() == "up",
            within_s,
            f"{sessions} started session(s) and state up",
        )


def write_creds(directory: Path, **files: str) -> Credentials:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        path = directory / name.replace("_", "-")
        path.write_text(value + "\n", encoding="utf-8")
        os.chmod(path, 0o600)
    return Credentials(directory, env={})


def assert_refs_single_use(fake: FakeVideoSDK) -> None:
    """No ref was ever presented twice, and every presented ref was one the fake issued."""
    issued = {s.ref for s in fake.sessions}
    assert fake.ref_presented, "no ref was presented at all"
    assert max(fake.ref_presented.values()) == 1, fake.ref_presented
    assert set(fake.ref_presented) <= issued
    assert fake.handshake_refusals == []


@pytest.fixture
async def fake() -> AsyncIterator[FakeVideoSDK]:
    async with FakeVideoSDK(token=TOKEN) as f:
        yield f


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


@pytest.fixture
async def harness(
    fake: FakeVideoSDK, http: httpx.AsyncClient, tmp_path: Path
) -> AsyncIterator[Harness]:
    h = Harness(fake, write_creds(tmp_path / "creds", videosdk_token=TOKEN), http)
    try:
        yield h
    finally:
        if h.task is not None and not h.task.done():
            await h.stop()
