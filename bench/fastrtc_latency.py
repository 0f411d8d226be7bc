"""Round trip mic -> FastRTC echo app -> speaker, on loopback.

    .venv/bin/python bench/fastrtc_latency.py [--runs 3] [--seconds 20] [--every-ms 500]

The whole agent (:class:`agent.app.Agent`, PTT open, only the FastRTC link) runs here
on simulated devices paced like a sound card (20 ms periods): the mic plays a 60 ms
1 kHz burst every ``--every-ms`` at -6 dBFS, silence between. The peer is a real
fastrtc 0.0.34 app (``tests/fastrtc/server.py``: ``Stream`` with an echo handler,
48 kHz in, 24 kHz out, under uvicorn) in its own process, from ``.venv-fastrtc``.

Times, all on this machine's monotonic clock (the app's too: same clock on Linux):

- a burst *starts* when its first sample would have entered a real mic: the start of
  its 20 ms capture period on the mic's own clock (so capture framing and any late
  read count as latency);
- it *reaches the app* when the handler's ``receive`` gets the chunk that holds it;
- it *leaves the speaker* when its first loud sample is written to the speaker
  (``write`` time + its offset in the period; the simulated speaker plays what it is
  given at once, so this is the render time).

Each run starts a fresh agent against the same app: within a run the clocks (mic
periods, the echo's 40 ms chunks, speaker periods, the jitter buffer's target) lock
into one phase, so the spread shows *between* runs; the figures pool every run.
Prints the median, p90, p99 and max of mic -> app, app -> speaker and mic -> speaker
over the bursts, the playout part of app -> speaker (arrival at the agent -> speaker,
as the mixer records it for every period), and the jitter buffer's state at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import config
from agent.app import Agent, Hardware
from agent.config import AudioConfig
from agent.controls import StateStore
from agent.metrics import Metrics
from agent.secrets import Credentials
from tests.fastrtc.app import FastRTCApp

MIC_RATE = 8000
SPK_RATE = 48000
PERIOD_S = 0.02
BURST_MS = 60
WARMUP_S = 3.0  # connect, fill the jitter buffer
LOUD = 2000  # threshold of a burst sample (the burst peaks near 16000, x0.8 volume)


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p))


class BurstMic:
    """A paced 8 kHz mic: a 1 kHz burst at the start of every ``every`` periods."""

    rate = MIC_RATE
    channels = 1
    name = "burst-mic"

    def __init__(self, every_periods: int, first_period: int) -> None:
        self.every = every_periods
        self.first = first_period
        self.onsets: list[float] = []  # monotonic time each burst's first sample "sounded"
        self._t0: float | None = None
        self._n = 0
        n = MIC_RATE * BURST_MS // 1000
        t = np.arange(n) / MIC_RATE
        self._burst = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)

    def open(self) -> None:
        self._t0, self._n = None, 0

    def close(self) -> None:
        pass

    def read(self) -> np.ndarray:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now - PERIOD_S  # the first period was captured just now
        n = self._n
        self._n += 1
        period_end = self._t0 + (n + 1) * PERIOD_S
        if period_end > now:
            time.sleep(period_end - now)
        per = MIC_RATE // 50
        out = np.zeros(per, np.int16)
        if n >= self.first:
            _, phase = divmod(n - self.first, self.every)
            start = phase * per
            if start < len(self._burst):
                chunk = self._burst[start : start + per]
                out[: len(chunk)] = chunk
                if phase == 0:
                    self.onsets.append(self._t0 + n * PERIOD_S)
        return out


class TimedSpeaker:
    """A paced 48 kHz speaker that keeps each period with the time it was written."""

    rate = SPK_RATE
    channels = 1
    name = "timed-speaker"

    def __init__(self) -> None:
        self.periods: list[tuple[float, np.ndarray]] = []
        self._lock = threading.Lock()
        self._t0: float | None = None
        self._n = 0

    def open(self) -> None:
        self._t0, self._n = None, 0

    def close(self) -> None:
        pass

    def write(self, pcm: np.ndarray) -> None:
        now = time.monotonic()
        with self._lock:
            self.periods.append((now, np.array(pcm, np.int16).reshape(-1)))
        if self._t0 is None:
            self._t0 = now
        self._n += 1
        due = self._t0 + self._n * PERIOD_S
        if due > now:
            time.sleep(due - now)

    def loud_times(self) -> np.ndarray:
        """Times at which a sample above LOUD left the speaker."""
        with self._lock:
            periods = list(self.periods)
        times = []
        for t_write, pcm in periods:
            idx = np.flatnonzero(np.abs(pcm) > LOUD)
            times.extend(t_write + idx / SPK_RATE)
        return np.array(times)


def first_after(times: np.ndarray, t: float, within_s: float) -> float | None:
    i = int(np.searchsorted(times, t))
    if i < len(times) and times[i] - t < within_s:
        return float(times[i])
    return None


@dataclass
class Run:
    up: list[float] = field(default_factory=list)  # ms per burst
    down: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    playout: list[float] = field(default_factory=list)  # ms per period
    missed: int = 0
    target_ms: float = float("nan")
    underruns: float = 0.0
    uplink_drops: float = 0.0


async def one_run(app: FastRTCApp, seconds: float, every: int) -> Run:
    """A fresh agent (fresh clock phases) against the running app; bursts measured."""
    mic = BurstMic(every, first_period=int(WARMUP_S / PERIOD_S))
    speaker = TimedSpeaker()
    metrics = Metrics()
    await asyncio.to_thread(app.reset)
    with tempfile.TemporaryDirectory() as creds:
        cfg = config.from_dict(
            {
                "device": {"id": "bench"},
                "ptt": {"mode": "open"},
                "videosdk": {"enabled": False},
                "fastrtc": {"enabled": True, "url": app.url},
                "metrics": {"listen": ""},
            }
        )

        def mic_factory(_a: AudioConfig, _m: Metrics) -> BurstMic:
            return mic

        def speaker_factory(_a: AudioConfig, _m: Metrics) -> TimedSpeaker:
            return speaker

        hw = Hardware(mic=mic_factory, speaker=speaker_factory)  # type: ignore[arg-type]
        agent = Agent(
            cfg,
            credentials=Credentials(Path(creds), env={}),
            hardware=hw,
            state=StateStore(None),
            metrics=metrics,
        )
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(WARMUP_S + seconds + 1.0)
        run = Run()
        assert agent.generation is not None and agent.generation.mixer is not None
        mixer = agent.generation.mixer
        source = mixer.source("fastrtc")
        run.target_ms = source.target_ms if source is not None else float("nan")
        run.playout = [x * 1000 for x in mixer.latencies("fastrtc")]  # arrival -> render
        run.underruns = metrics.total("audio_underruns_total")
        run.uplink_drops = metrics.total("frames_dropped_total", link="fastrtc")
        agent.stop()
        await asyncio.wait_for(task, 5)
    wid = (await asyncio.to_thread(app.started))[0].websocket_id
    heard = await asyncio.to_thread(app.received, wid)
    chunks = await asyncio.to_thread(app.arrivals, wid)

    # when each loud sample reached the app: the arrival time of the chunk holding it
    starts = np.array([i for i, _ in chunks])
    arrived = np.array([t for _, t in chunks])
    loud_idx = np.flatnonzero(np.abs(heard) > LOUD)
    app_times = arrived[np.searchsorted(starts, loud_idx, side="right") - 1]
    spk_times = speaker.loud_times()
    for onset in mic.onsets[:-1]:
        t_app = first_after(app_times, onset, 1.0)
        t_spk = first_after(spk_times, onset, 1.0)
        if t_app is None or t_spk is None:
            run.missed += 1
            continue
        run.up.append((t_app - onset) * 1000)
        run.down.append((t_spk - t_app) * 1000)
        run.total.append((t_spk - onset) * 1000)
    return run


async def bench(runs: int, seconds: float, every_ms: int) -> None:
    every = max(every_ms // 20, BURST_MS // 20 + 5)
    results = []
    with FastRTCApp() as app:
        for _ in range(runs):
            results.append(await one_run(app, seconds, every))

    def pooled(name: str) -> list[float]:
        return [x for r in results for x in getattr(r, name)]

    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{runs} runs x {seconds:g} s, one burst per {every * 20} ms: "
        f"{len(pooled('total'))} bursts measured, {sum(r.missed for r in results)} missed; "
        f"fastrtc 48 kHz in / 24 kHz out, speaker {SPK_RATE} Hz"
    )
    print(f"{'all runs':22}{'median':>8}{'p90':>8}{'p99':>8}{'max':>8}  ms")
    for label, name in (
        ("mic -> app", "up"),
        ("app -> speaker", "down"),
        ("  of which playout *", "playout"),
        ("mic -> speaker", "total"),
    ):
        xs = pooled(name)
        if xs:
            print(
                f"{label:22}"
                + "".join(f"{v:8.1f}" for v in (pct(xs, 50), pct(xs, 90), pct(xs, 99), max(xs)))
            )
    print("* reply bytes arriving at the agent -> speaker (the mixer's last 500 periods)")
    for i, r in enumerate(results, 1):
        median = pct(r.total, 50) if r.total else float("nan")
        print(
            f"run {i}: mic -> speaker median {median:.1f} ms; jitter target at the end "
            f"{r.target_ms:.0f} ms, underruns {r.underruns:.0f}, uplink drops {r.uplink_drops:.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh agents, one after another")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per run")
    parser.add_argument("--every-ms", type=int, default=500, help="one burst per this long")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(bench(args.runs, args.seconds, args.every_ms))


if __name__ == "__main__":
    main()
