"""Fixtures for the Orgo link: the sandbox fake, a recording mixer, a link harness."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent.audio.frames import Pcm
from agent.config import OrgoConfig
from agent.links.backoff import BackoffPolicy, Reconnector
from agent.links.orgo import OrgoLink
from agent.metrics import Metrics
from agent.sandbox.orgo import FakeOrgo, ramp
from agent.secrets import Credentials
from agent.service import Heartbeat
from agent.status import StatusBoard

# Short timings so reconnect stories take a fraction of a second.
FAST = BackoffPolicy(initial_s=0.05, cap_s=0.2, slow_s=0.3, healthy_after_s=60.0)


@dataclass
class RecordedSource:
    """One add_source() call: the format asked for and everything pushed into it."""

    name: str
    rate: int
    channels: int
    chunks: list[Pcm] = field(default_factory=list)
    arrivals: list[float | None] = field(default_factory=list)
    removed: bool = False

    def push(self, pcm: Pcm, t_arrival: float | None = None) -> None:
        assert pcm.dtype == np.int16
        assert len(pcm) % self.channels == 0, "a push must hold whole sample frames"
        self.chunks.append(pcm.copy())
        self.arrivals.append(t_arrival)

    def pcm(self) -> Pcm:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


@dataclass
class RecordingMixer:
    """A SourceFactory that keeps every source it made, in order."""

    sources: list[RecordedSource] = field(default_factory=list)

    def add_source(self, name: str, rate: int, channels: int = 1) -> RecordedSource:
        for s in self.sources:
            if s.name == name:
                s.removed = True
        src = RecordedSource(name, rate, channels)
        self.sources.append(src)
        return src

    def remove_source(self, name: str) -> None:
        for s in self.sources:
            if s.name == name:
                s.removed = True

    def formats(self) -> list[tuple[str, int, int]]:
        return [(s.name, s.rate, s.channels) for s in self.sources]

    def live(self) -> list[RecordedSource]:
        return [s for s in self.sources if not s.removed]


async def wait_until(pred: Callable[[], Any], within_s: float = 5.0, what: str = "") -> None:
    """Poll ``pred`` until true; fail with ``what`` after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what or pred}")
        await asyncio.sleep(0.01)


@dataclass
class Harness:
    """A real OrgoLink against a real FakeOrgo, with a recording mixer."""

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

    async def stop(self) -> float:
        """Cancel the link; return how long it took to finish."""
        assert self.task is not None
        t0 = time.monotonic()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return time.monotonic() - t0

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.total(name, link="orgo", **labels)

    def state(self) -> str:
        part = self.status.links.get("orgo")
        return "" if part is None else part.state.value

    def detail(self) -> str:
        part = self.status.links.get("orgo")
        return "" if part is None else part.detail

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


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog
