"""Fixtures for the FastRTC link: a real fastrtc app on loopback, a link harness.

The app runs in its own process and environment (``.venv-fastrtc``); the codec tests
in this folder need neither.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pytest

from agent.backoff import BackoffPolicy, Reconnector
from agent.config import FastRTCConfig
from agent.links.fastrtc import FastRTCLink
from agent.metrics import Metrics
from agent.pcm import UPLINK_SAMPLES, Frame
from agent.service import Heartbeat
from agent.status import StatusBoard
from tests.fastrtc.app import FastRTCApp
from tests.support import LinkHarnessBase, RecordingMixer, wait_until

# Short timings so reconnect stories take a fraction of a second.
FAST = BackoffPolicy(initial_s=0.05, cap_s=0.2, slow_s=0.3, healthy_after_s=60.0)


def tone(freq_hz: float, seconds: float, rate: int = 8000, dbfs: float = -12.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (10 ** (dbfs / 20) * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    """The strongest frequency of ``pcm`` (Hann window, zero-padded to 1 Hz bins or finer)."""
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    n = max(len(x), rate)
    spectrum = np.abs(np.fft.rfft(x, n))
    return float(np.argmax(spectrum) * rate / n)


def rms_dbfs(pcm: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    return 20 * np.log10(max(rms, 1e-9) / 32767)


@dataclass
class Mic:
    """Feeds an uplink queue like the PTT-gated Fanout does: one 20 ms frame every 20 ms."""

    queue: asyncio.Queue[Frame] = field(default_factory=lambda: asyncio.Queue(25))
    sent: int = 0  # frames put
    task: asyncio.Task[None] | None = None

    def play(self, pcm: np.ndarray, *, then_silence: bool = True) -> None:
        self.task = asyncio.create_task(self._run(pcm, then_silence), name="test-mic")

    async def _run(self, pcm: np.ndarray, then_silence: bool) -> None:
        t0 = time.monotonic()
        frames = len(pcm) // UPLINK_SAMPLES
        i = 0
        while i < frames or then_silence:
            chunk = (
                pcm[i * UPLINK_SAMPLES : (i + 1) * UPLINK_SAMPLES]
                if i < frames
                else np.zeros(UPLINK_SAMPLES, np.int16)
            )
            frame = Frame(chunk, i, time.monotonic(), voiced=i < frames)
            if self.queue.full():
                self.queue.get_nowait()
            self.queue.put_nowait(frame)
            self.sent += 1
            i += 1
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class Harness(LinkHarnessBase):
    """A real FastRTCLink against a real fastrtc app, with a recording mixer."""

    link_name: ClassVar[str] = "fastrtc"

    app: FastRTCApp
    mixer: RecordingMixer = field(default_factory=RecordingMixer)
    metrics: Metrics = field(default_factory=Metrics)
    status: StatusBoard = field(default_factory=StatusBoard)
    mic: Mic = field(default_factory=Mic)
    heartbeat: Heartbeat = field(default_factory=lambda: Heartbeat("fastrtc", 10.0, time.monotonic))
    link: FastRTCLink | None = None
    task: asyncio.Task[None] | None = None

    def start(self, url: str | None = None, **kw: Any) -> FastRTCLink:
        cfg = FastRTCConfig(
            enabled=True,
            url=url or self.app.url,
            input_rate=self.app.input_rate,
            output_rate=self.app.output_rate,
        )
        kw.setdefault("reconnector", Reconnector(FAST))
        self.link = FastRTCLink(
            cfg,
            uplink=self.mic.queue,
            mixer=self.mixer,
            status=self.status,
            metrics=self.metrics,
            heartbeat=self.heartbeat,
            **kw,
        )
        self.task = asyncio.create_task(self.link.run(), name="fastrtc-under-test")
        return self.link

    def up(self) -> bool:
        return self.state() == "up"

    async def wait_up(self, within_s: float = 10.0) -> None:
        await wait_until(self.up, within_s, "the fastrtc link up")

    async def wait_until_played(self, samples: int, within_s: float = 10.0) -> None:
        """Wait until the first mixer source received ``samples`` samples."""
        await wait_until(
            lambda: bool(self.mixer.sources) and len(self.mixer.sources[0].pcm()) >= samples,
            within_s,
            f"{samples} samples played",
        )

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            await self.stop()
        await self.mic.stop()


@pytest.fixture(scope="session")
def shared_app() -> Iterator[FastRTCApp]:
    """One real fastrtc app for the whole run (starting one costs seconds: fastrtc's import)."""
    with FastRTCApp() as a:
        yield a


@pytest.fixture
def app(shared_app: FastRTCApp) -> FastRTCApp:
    """The shared app with its seat free and its recordings forgotten."""
    shared_app.reset()
    return shared_app


@pytest.fixture
async def harness(app: FastRTCApp) -> AsyncIterator[Harness]:
    h = Harness(app)
    try:
        yield h
    finally:
        await h.close()
