"""Playout latency of the Orgo link: bytes arriving on the socket -> speaker write.

A fake Orgo computer on loopback streams a tone (paced at 20 ms per frame); the
real OrgoLink feeds the real Mixer (48 kHz); the real playback pipeline
(:class:`agent.audio.playback.Playback`) renders it and writes each period to a
simulated speaker paced at 20 ms per period (this machine has no sound card; the
write follows the render within microseconds, so render time is write time).
The mixer's jitter buffer records, for each rendered period, how long ago its
first sample arrived; this prints the median and p99 of those, per scenario:

- clean: one 20 ms frame per message, no jitter;
- clean, 1-3 frames per message (the server may batch frames);
- jitter: each message held back a random 0-30 ms (order kept), one frame per message.

Run: ``.venv/bin/python bench/orgo_latency.py [--seconds 10] [--jitter-ms 30]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from agent.audio.jitter import JitterPolicy
from agent.audio.mixer import Mixer
from agent.audio.playback import Playback
from agent.config import OrgoConfig
from agent.hw.sim import RecordingSink
from agent.links.orgo import OrgoLink
from agent.metrics import Metrics
from agent.sandbox.orgo import FakeOrgo, tone
from agent.secrets import Credentials
from agent.status import StatusBoard

OUT_RATE = 48000
WARMUP_S = 1.0


async def scenario(
    label: str, seconds: float, *, jitter_s: float, frames: tuple[int, int]
) -> dict[str, float | str]:
    metrics = Metrics()
    policy = replace(JitterPolicy(), latency_samples=int(seconds * 50) + 100)
    mixer = Mixer(OUT_RATE, metrics=metrics, jitter=policy)
    status = StatusBoard()
    speaker = RecordingSink(OUT_RATE, 1, paced=True, keep_s=1.0)
    playback = Playback(speaker, mixer, metrics=metrics, status=status)
    async with FakeOrgo(generator=tone(440.0, -12.0), frames_per_message=frames) as fake:
        fake.jitter_s = jitter_s
        with tempfile.TemporaryDirectory() as d:
            key = Path(d) / "orgo-api-key"
            key.write_text(fake.api_key)
            os.chmod(key, 0o600)
            cfg = OrgoConfig(
                enabled=True,
                computer_id=fake.computer_id,
                api_base=fake.api_base,
                audio_url=fake.audio_url,
            )
            async with httpx.AsyncClient() as http:
                link = OrgoLink(
                    cfg,
                    Credentials(Path(d), env={}),
                    mixer=mixer,
                    status=status,
                    metrics=metrics,
                    http=http,
                )
                tasks = [asyncio.create_task(playback.run()), asyncio.create_task(link.run())]
                await asyncio.sleep(seconds + WARMUP_S)
                lat = np.array(mixer.latencies("orgo")) * 1000.0
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    lat = lat[int(WARMUP_S * 50) :]
    return {
        "scenario": label,
        "periods": float(len(lat)),
        "median_ms": float(np.median(lat)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "underruns": metrics.total("audio_underruns_total"),
        "resets": metrics.total("jitter_resets_total"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per scenario")
    parser.add_argument("--jitter-ms", type=float, default=30.0, help="max injected delay")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [
        await scenario("clean, 1 frame/msg", args.seconds, jitter_s=0.0, frames=(1, 1)),
        await scenario("clean, 1-3 frames/msg", args.seconds, jitter_s=0.0, frames=(1, 3)),
        await scenario(
            f"jitter 0-{args.jitter_ms:g} ms, 1 frame/msg",
            args.seconds,
            jitter_s=args.jitter_ms / 1000,
            frames=(1, 1),
        ),
    ]
    print(f"{'scenario':34} {'periods':>7} {'median':>8} {'p99':>8} {'max':>8}", end="")
    print(f" {'underruns':>9} {'resets':>6}")
    for r in rows:
        print(
            f"{r['scenario']:34} {r['periods']:7.0f} {r['median_ms']:6.1f}ms {r['p99_ms']:6.1f}ms "
            f"{r['max_ms']:6.1f}ms {r['underruns']:9.0f} {r['resets']:6.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
