"""Channel-switch time: a press of the channel button to the first mic frame in the new
room, through the whole agent.

    .venv/bin/python bench/channel_switch.py [--switches 30]

Runs the real agent (agent.app.Agent) with three channels (``videosdk.rooms``) on a
paced simulated mic (20 ms periods) and gpiozero's MockFactory, against the sandbox
VideoSDK on loopback. Each switch drives the channel-up pin low (gpiozero's callback,
the event loop, :mod:`agent.channels`, the link's restart: ``stop`` and close 1000 in
the old room, a new session created over REST, its WebSocket opened, ``start``) and
measures press -> the session in the new room created (REST) and press -> the first
media frame arriving there. Prints median, p90 and max of each (issue 21: within 1.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import time
from typing import Any

from rig import machine, pct, whole_agent

ROOMS = ("bench-a", "bench-b", "bench-c")
UP_PIN = 23


async def main(switches: int) -> None:
    created: list[tuple[float, str]] = []
    async with whole_agent(
        gpio={"channel_up_button": UP_PIN}, videosdk={"rooms": [{"id": r} for r in ROOMS]}
    ) as rig:
        agent, fake = rig.agent, rig.fake
        fake.on_session_created = lambda s: created.append((time.monotonic(), s.room_id))
        session_ms: list[float] = []
        frame_ms: list[float] = []
        pin: Any = rig.pin(UP_PIN)
        for i in range(switches):
            await asyncio.sleep(0.3 + random.random() * 0.02)  # random phase of the frame clock
            room = ROOMS[(i + 1) % len(ROOMS)]
            sessions = len(fake.sessions)
            t_press = time.monotonic()
            pin.drive_low()

            def first_frame(n: int = sessions, r: str = room) -> float | None:
                new = [s for s in fake.sessions[n:] if s.room_id == r and s.frames]
                return new[0].frames[0].t if new else None

            await fake.wait_for(lambda: first_frame() is not None, 5, f"a frame in {room}")
            t_frame = first_frame()
            assert t_frame is not None
            t_created = next(t for t, r in created if r == room and t >= t_press)
            session_ms.append((t_created - t_press) * 1000)
            frame_ms.append((t_frame - t_press) * 1000)
            pin.drive_high()
        reconnects = agent.metrics.get("reconnects_total", link="videosdk")

    print(machine())
    print(f"switches: {switches} over {len(ROOMS)} rooms; reconnects counted: {reconnects:.0f}")
    print(f"{'':30}{'median':>8}{'p90':>8}{'max':>8}  ms")
    for name, xs in (("press -> session created", session_ms),
                     ("press -> first frame in room", frame_ms)):  # fmt: skip
        print(f"{name:30}" + "".join(f"{v:8.1f}" for v in (statistics.median(xs), pct(xs, 90),
                                                            max(xs))))  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--switches", type=int, default=30)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(args.switches))
