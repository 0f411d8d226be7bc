"""Soak: the VideoSDK link streaming into the fake while its WebSocket server dies.

    .venv/bin/python bench/videosdk_soak.py [--duration 60] [--kills 5] [--down 1.0]
                                            [--healthy-after SECONDS]

The fake (:class:`agent.sandbox.videosdk.FakeVideoSDK`, echo on) runs in a child
process, so the RSS reported is the link's process alone: the link, a paced
producer feeding 20 ms frames at 50 fps (like the capture clock) and a real
:class:`agent.audio.mixer.Mixer` rendered every 20 ms with the echoed room audio.
Every ``duration / (kills + 1)`` seconds the fake's WebSocket server is killed
(connections reset), left down ``--down`` seconds, and restarted on the same port.
Reports sessions created and started, crashes, RSS, and the time from each restart
to the first media frame the fake receives after it (CLOCK_MONOTONIC is shared by
both processes). Exit status 1 if the link crashed, a restart did not lead to a new
session, or audio took longer than 1.5 s to resume.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from agent.audio.fanout import Fanout
from agent.audio.mixer import Mixer
from agent.backoff import BackoffPolicy, Reconnector
from agent.config import DeviceConfig, VideoSDKConfig
from agent.links.videosdk import VideoSDKLink
from agent.metrics import Metrics
from agent.pcm import UPLINK_SAMPLES, Frame
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from agent.status import StatusBoard

TOKEN = "soak-token-0123456789abcdef"
RESUME_GOAL_S = 1.5


def row(label: str, value: str) -> None:
    print(f"{label:<20}{value}")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- the fake, in its own process ---------------------------------------------------------


def fake_process(conn: Connection) -> None:
    asyncio.run(_serve_fake(conn))


async def _serve_fake(conn: Connection) -> None:
    async with FakeVideoSDK(token=TOKEN, echo=True, keep_frames=50) as fake:
        conn.send(fake.api_base)
        while True:
            cmd, arg = await asyncio.to_thread(conn.recv)
            match cmd:
                case "stop_ws":
                    await fake.stop_ws()
                    conn.send(None)
                case "start_ws":
                    await fake.start_ws()
                    conn.send(None)
                case "first_frame_after":  # (started sessions, first frame time >= arg)
                    later = [f.t for f in fake.frames if f.t >= arg]
                    conn.send((len(fake.started_sessions), min(later) if later else None))
                case "report":
                    conn.send(
                        {
                            "created": len(fake.sessions),
                            "started": len(fake.started_sessions),
                            "refs_reused": sum(1 for n in fake.ref_presented.values() if n > 1),
                            "frames": fake.frames_total,
                            "violations": len(fake.violations),
                        }
                    )
                case _:
                    conn.send(None)
                    return


class FakeHandle:
    """Talks to the fake's process over a pipe."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def call(self, cmd: str, arg: Any = None) -> Any:
        self._conn.send((cmd, arg))
        return await asyncio.to_thread(self._conn.recv)


# -- the device side -----------------------------------------------------------------------


async def produce(fanout: Fanout) -> None:
    """50 frames per second on an absolute schedule (no drift), a ramp per frame."""
    loop = asyncio.get_running_loop()
    t0, seq = loop.time(), 0
    ramp = np.arange(UPLINK_SAMPLES, dtype=np.int16)
    while True:
        fanout.publish(Frame(ramp + np.int16(seq % 100), seq, time.monotonic()))
        seq += 1
        await asyncio.sleep(max(0.0, t0 + seq * 0.02 - loop.time()))


async def render(mixer: Mixer) -> None:
    loop = asyncio.get_running_loop()
    t0, n = loop.time(), 0
    while True:
        mixer.render()
        n += 1
        await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))


async def soak(
    fake: FakeHandle, api_base: str, duration_s: float, kills: int, down_s: float, healthy_s: float
) -> int:
    metrics, status = Metrics(), StatusBoard()
    mixer = Mixer(8000, metrics=metrics)
    fanout = Fanout(metrics)
    uplink = fanout.subscribe("videosdk")
    resumes: list[float] = []
    rss: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "videosdk-token").write_text(TOKEN)
        (Path(tmp) / "videosdk-token").chmod(0o600)
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            link = VideoSDKLink(
                VideoSDKConfig(room_id="soak-room-0001", api_base=api_base),
                DeviceConfig(id="dev_soak"),
                Credentials(Path(tmp), env={}),
                uplink=uplink,
                mixer=mixer,
                status=status,
                metrics=metrics,
                http=http,
                reconnector=Reconnector(BackoffPolicy(healthy_after_s=healthy_s)),
            )
            t_start = time.monotonic()
            async with asyncio.TaskGroup() as tg:
                link_task = tg.create_task(link.run(), name="videosdk")
                helpers = [
                    tg.create_task(produce(fanout), name="producer"),
                    tg.create_task(render(mixer), name="render"),
                ]
                period = duration_s / (kills + 1)
                await asyncio.sleep(period / 2)
                rss.append(rss_kib())
                for k in range(1, kills + 1):
                    await asyncio.sleep(max(0.0, t_start + k * period - time.monotonic()))
                    started_before, _ = await fake.call("first_frame_after", 0.0)
                    await fake.call("stop_ws")
                    await asyncio.sleep(down_s)
                    t_restart = time.monotonic()
                    await fake.call("start_ws")
                    resumed = float("inf")
                    while time.monotonic() - t_restart < 15.0:
                        started, first = await fake.call("first_frame_after", t_restart)
                        if started > started_before and first is not None:
                            resumed = first - t_restart
                            break
                        await asyncio.sleep(0.01)
                    resumes.append(resumed)
                    rss.append(rss_kib())
                    print(f"  restart {k}: audio resumed after {resumed:.3f} s", flush=True)
                await asyncio.sleep(max(0.0, t_start + duration_s - time.monotonic()))
                rss.append(rss_kib())
                crashed = link_task.done()
                link_task.cancel()
                for task in helpers:
                    task.cancel()
            elapsed = time.monotonic() - t_start

    report = await fake.call("report")
    row("duration", f"{elapsed:.1f} s, {kills} kills, {down_s:.1f} s down each")
    row("backoff", f"BackoffPolicy(healthy_after_s={healthy_s:g}), other fields default")
    row("sessions created", f"{report['created']} (REST; includes tries while WS was down)")
    row("sessions started", f"{report['started']} (1 initial + {report['started'] - 1} new)")
    row("crashes", str(int(crashed)))
    row("refs reused", str(report["refs_reused"]))
    row("frames sent", f"{metrics.total('frames_sent_total', link='videosdk'):.0f}")
    row("frames at fake", f"{report['frames']} ({report['violations']} protocol violations)")
    row("frames dropped", f"{metrics.total('frames_dropped_total', link='videosdk'):.0f}")
    row("room audio frames", f"{metrics.total('frames_received_total', link='videosdk'):.0f}")
    row("RSS (KiB)", " -> ".join(map(str, rss)) + f" ({rss[-1] - rss[0]:+d} KiB)")
    row("resumed after (s)", ", ".join(f"{r:.3f}" for r in resumes) + f"; max {max(resumes):.3f}")
    ok = not crashed and report["started"] - 1 == kills and max(resumes) <= RESUME_GOAL_S
    print("RESULT", "ok" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--kills", type=int, default=5, help="server restarts (default 5)")
    parser.add_argument("--down", type=float, default=1.0, help="seconds down per kill (default 1)")
    parser.add_argument(
        "--healthy-after",
        type=float,
        default=BackoffPolicy().healthy_after_s,
        help="seconds up before the backoff sequence resets (default: BackoffPolicy's)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=fake_process, args=(child,), name="fake-videosdk", daemon=True)
    proc.start()
    try:
        api_base = parent.recv()
        handle = FakeHandle(parent)
        return asyncio.run(
            soak(handle, api_base, args.duration, args.kills, args.down, args.healthy_after)
        )
    finally:
        parent.send(("quit", None))
        proc.join(5)


if __name__ == "__main__":
    sys.exit(main())
