"""PTT press → talk-permit chirp heard, measured in the speaker's own recording.

    .venv/bin/python bench/cue_latency.py [--presses 30]

Runs the real Controls, PttGate, Mixer and Playback into a paced simulated speaker
(20 ms periods, like a sound card), with the PTT button on gpiozero's MockFactory and
the uplink reported up. Each press drives the pin low at a random phase of the
speaker's period; the latency is the position of the chirp's first sound in the
recording minus the speaker's playhead at the press, plus the period being played at
that moment (20 ms, the worst case). A real ALSA device adds its own buffer on top
(``aplay -v`` shows it; typically 2-3 periods).

Prints median, p90 and max (goal: ≤ 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def main(presses: int) -> None:
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from agent.status import LinkState
    from tests.controls.speaker import PTT, bench, bursts, ms

    pins = MockFactory(pin_class=MockPWMPin)
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cue-bench-") as work:
        async with bench(Path(work), pins) as b:
            b.link(LinkState.UP)
            await asyncio.sleep(0.2)
            for _ in range(presses):
                await asyncio.sleep(random.uniform(0.0, 0.02))
                at = b.position()
                pins.pin(PTT).drive_low()
                await asyncio.sleep(0.3)
                pins.pin(PTT).drive_high()
                await asyncio.sleep(0.25)  # the roger beep
                found = bursts(b.speaker.samples[at:])
                if not found:
                    raise SystemExit("no talk-permit chirp in the recording")
                latencies.append(ms(found[0][0]) + 20.0)
    print(f"talk permit heard after PTT press ({presses} presses, {platform.machine()}):")
    print(
        f"  median {statistics.median(latencies):.1f} ms, p90 {pct(latencies, 90):.1f} ms, "
        f"max {max(latencies):.1f} ms (goal <= 100 ms; speaker clock, + the device buffer)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=30)
    asyncio.run(main(parser.parse_args().presses))
