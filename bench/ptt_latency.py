"""Press-to-first-voiced-frame latency, measured through gpiozero's pin callbacks.

    .venv/bin/python bench/ptt_latency.py [--presses 40]

Runs the real agent (agent.app.Agent) on a paced simulated mic (20 ms periods,
like a sound card) with gpiozero's MockFactory, against the sandbox VideoSDK on
loopback. Each press drives the PTT pin low at a random phase of the 20 ms frame
clock; gpiozero calls the button callback, the agent hands it to the event loop,
and the gate opens from the next frame. Two latencies per press:

- press → gate: the first voiced frame published to the uplinks (the capture time
  of that frame minus the press time, floored at 0: a frame captured just before
  the press can still carry it when the press lands first);
- press → room: arrival of the first voiced frame at the fake VideoSDK server.

Prints median, p90, p99 and max of each (goal: press → first voiced frame ≤ 25 ms).
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


async def main(presses: int) -> None:
    async with whole_agent(
        gpio={"ptt_button": 17}, videosdk={"room_id": "bench-room"}, keep_frames=20000
    ) as rig:
        agent, fake = rig.agent, rig.fake
        gate_ms: list[float] = []
        room_ms: list[float] = []
        pin: Any = rig.pin(17)
        for _ in range(presses):
            await asyncio.sleep(0.2 + random.random() * 0.02)  # random phase of the frame clock
            n_before = fake.frames_total
            published: list[float] = []
            gen = agent.generation
            assert gen is not None
            original = gen.fanout.publish

            def spy(frame: Any, _orig: Any = original, _out: list[float] = published) -> None:
                if frame.voiced and not _out:
                    _out.append(frame.t_capture)
                _orig(frame)

            gen.fanout.publish = spy  # type: ignore[method-assign]
            t_press = time.monotonic()
            pin.drive_low()

            def first_voiced(start: int = n_before) -> float | None:
                # keep_frames is far above what a run sends: frames[i] is the i-th frame
                return next((f.t for f in list(fake.frames)[start:] if any(f.pcm)), None)

            await fake.wait_for(lambda: first_voiced() is not None, 2, "a voiced frame")
            t_room = first_voiced()
            assert t_room is not None
            gen.fanout.publish = original  # type: ignore[method-assign]
            gate_ms.append(max(0.0, published[0] - t_press) * 1000 if published else float("nan"))
            room_ms.append((t_room - t_press) * 1000)
            pin.drive_high()

    print(machine())
    print(f"presses: {presses} (random phase against the 20 ms frame clock)")
    print(f"{'':24}{'median':>8}{'p90':>8}{'p99':>8}{'max':>8}  ms")
    for name, xs in (("press -> gate (frame)", gate_ms), ("press -> room (arrival)", room_ms)):
        print(
            f"{name:24}"
            + "".join(
                f"{v:8.1f}" for v in (statistics.median(xs), pct(xs, 90), pct(xs, 99), max(xs))
            )
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presses", type=int, default=40)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(args.presses))
