"""Fixtures for the Orgo link: the sandbox fake, a recording mixer, a link harness."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from agent.backoff import BackoffPolicy, Reconnector
from agent.config import OrgoConfig
from agent.links.orgo import OrgoLink
from agent.metrics import Metrics
from agent.sandbox.orgo import FakeOrgo, ramp
from agent.secrets import Credentials
from agent.service import Heartbeat
from agent.status import StatusBoard
from tests.support import LinkHarnessBase, RecordingMixer, wait_until

# Short timings so reconnect stories take a fraction of a second.
FAST = BackoffPolicy(initial_s=0.05, cap_s=0.2, slow_s=0.3, healthy_after_s=60.0)


@dataclass
class Harness(LinkHarnessBase):
    """A real OrgoLink against a real FakeOrgo, with a recording mixer."""

    link_name: ClassVar[str] = "orgo"

    fake: FakeOrgo
    cfg: OrgoConfig
    creds: Credentials
    http: httpx.AsyncClient
    mixer: RecordingMixer = field(default_factory=RecordingMixer)
    metrics: Metrics = field(default_factory=Metrics)
    status: StatusBoard = field(default_factory=StatusBoard)
    heartbeat: Heartbeat = field(default_factory=lambda: Heartbeat("orgo", 10.0, time.monotonic))
    link: OrgoLink | None = None
    task: asyncio.Task[None] | None = None

    def start(self, **kw: Any) -> OrgoLink:
        kw.setdefault("reconnector", Reconnector(FAST))
        kw.setdefault("ping_interval_s", 0.2)
        kw.setdefault("pong_timeout_s", 1.0)  # roomy: CI machines stall
        self.link = OrgoLink(
            self.cfg,
            self.creds,
            mixer=self.mixer,
            status=self.status,
            metrics=self.metrics,
            http=self.http,
            heartbeat=self.heartbeat,
            **kw,
        )
        self.task = asyncio.create_task(self.link.run(), name="orgo-under-test")
        return self.link

    async def wait_samples(self, source: int, count: int, within_s: float = 5.0) -> None:
        """Wait until the ``source``-th mixer source received ``count`` int16 values."""
        await wait_until(
            lambda: (
                len(self.mixer.sources) > source
                and sum(len(c) for c in self.mixer.sources[source].chunks) >= count
            ),
            within_s,
            f"{count} samples in source #{source}",
        )


def write_key(directory: Path, value: str) -> Credentials:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "orgo-api-key"
    path.write_text(value + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return Credentials(directory, env={})


@pytest.fixture
async def fake() -> AsyncIterator[FakeOrgo]:
    async with FakeOrgo(generator=ramp()) as f:
        yield f


@pytest.fixture
async def harness(fake: FakeOrgo, tmp_path: Path) -> AsyncIterator[Harness]:
    cfg = OrgoConfig(
        enabled=True,
        computer_id=fake.computer_id,
        api_base=fake.api_base,
        audio_url=fake.audio_url,
        sample_rate=24000,
        channels=1,
    )
    async with httpx.AsyncClient() as http:
        h = Harness(fake, cfg, write_key(tmp_path / "creds", fake.api_key), http)
        try:
            yield h
        finally:
            if h.task is not None and not h.task.done():
                await h.stop()
