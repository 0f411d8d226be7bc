"""PBX calls through the real server, mixer and paced playback: latency, underruns, CPU.

The sandbox PBX (:mod:`agent.sandbox.pbx`) pushes two-party calls (440 Hz + 660 Hz)
over loopback with the documented cadence (1280 PCM bytes per channel every 80 ms
at 8 kHz, 40 ms at 16 kHz); the real PbxLink feeds the real Mixer (48 kHz); the real
playback pipeline writes each period to a simulated speaker paced at 20 ms. Printed
per scenario: arrival -> playout latency of every rendered period of every channel
(median, p99, max, after a 1 s warm-up), jitter-buffer underruns and resets, and the
process CPU per second of wall time (the fake PBX's encoding included: an upper
bound for the agent's share). Then the decoder alone: microseconds per frame.

Run: ``.venv/bin/python bench/pbx_calls.py [--seconds 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from agent.audio.jitter import JitterPolicy
from agent.audio.mixer import Mixer
from agent.audio.playback import Playback
from agent.config import PbxConfig
from agent.hw.sim import RecordingSink
from agent.links.pbx import PbxLink
from agent.metrics import Metrics
from agent.proto.yeastar import CallStream, encode_frame
from agent.sandbox.pbx import two_party_call
from agent.secrets import Credentials
from agent.status import StatusBoard

OUT_RATE = 48000
WARMUP_S = 1.0
SECRET = "bench-pbx-secret"


async def scenario(seconds: float, *, rate: int, calls: int) -> dict[str, float | str]:
    metrics = Metrics()
    policy = replace(JitterPolicy(), latency_samples=int((seconds + WARMUP_S) * 50) + 100)
    mixer = Mixer(OUT_RATE, metrics=metrics, jitter=policy)
    status = StatusBoard()
    speaker = RecordingSink(OUT_RATE, 1, paced=True, keep_s=1.0)
    playback = Playback(speaker, mixer, metrics=metrics, status=status)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pbx-secret"
        path.write_text(SECRET)
        os.chmod(path, 0o600)
        cfg = PbxConfig(enabled=True, listen="127.0.0.1:0", sample_rate=rate, max_calls=calls)
        link = PbxLink(
            cfg, Credentials(Path(d), env={}), mixer=mixer, status=status, metrics=metrics
        )
        tasks = [asyncio.create_task(playback.run()), asyncio.create_task(link.run())]
        while link.port is None:  # noqa: ASYNC110 - polling a plain attribute, briefly
            await asyncio.sleep(0.01)
        pbx = [
            two_party_call(link.url, secret=SECRET, sample_rate=rate, callid=f"bench.{i}")
            for i in range(calls)
        ]
        for call in pbx:
            await call.connect()
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.gather(*(call.stream(seconds + WARMUP_S) for call in pbx))
        cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
        names = list(mixer.source_names)
        lat = np.concatenate(
            [np.array(mixer.latencies(n)[int(WARMUP_S * 50) :]) * 1000.0 for n in names]
        )
        for call in pbx:
            await call.end()
            await call.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "scenario": f"{calls} call(s) x 2 ch, {rate // 1000} kHz",
        "periods": float(len(lat)),
        "median_ms": float(np.median(lat)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "underruns": metrics.total("audio_underruns_total"),
        "resets": metrics.total("jitter_resets_total"),
        "cpu_pct": 100.0 * cpu,
    }


def decode_cost(n: int = 20000) -> float:
    """Microseconds to decode one 1280-byte frame (parse, base64, channel state)."""
    pcm = (np.arange(640) % 200 - 100).astype(np.int16)
    messages = [encode_frame("1755940023.7", f"PJSIP/100{i % 2}-5", pcm) for i in range(n)]
    stream = CallStream()
    t0 = time.perf_counter()
    for m in messages:
        stream.receive(m)
    return (time.perf_counter() - t0) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per scenario")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [
        await scenario(args.seconds, rate=8000, calls=1),
        await scenario(args.seconds, rate=16000, calls=1),
        await scenario(args.seconds, rate=16000, calls=4),
    ]
    print(f"{'scenario':26} {'periods':>7} {'median':>8} {'p99':>8} {'max':>8}", end="")
    print(f" {'underruns':>9} {'resets':>6} {'cpu':>6}")
    for r in rows:
        print(
            f"{r['scenario']:26} {r['periods']:7.0f} {r['median_ms']:6.1f}ms {r['p99_ms']:6.1f}ms "
            f"{r['max_ms']:6.1f}ms {r['underruns']:9.0f} {r['resets']:6.0f} {r['cpu_pct']:5.1f}%"
        )
    print(f"decode: {decode_cost():.1f} us per 1280-byte frame")


if __name__ == "__main__":
    asyncio.run(main())
