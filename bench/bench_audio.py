"""CPU cost of the audio pipeline, in milliseconds of CPU per second of audio.

Run: ``.venv/bin/python bench/bench_audio.py [--seconds 20] [--runs 7]``

Measures ``time.process_time()`` (CPU of this process, all threads) around the
same code the agent runs, with the device I/O taken out:

- capture: 48 kHz mono periods through :class:`CaptureProcessor` (the capture
  thread's work: silence check, 48k->8k stream resampling, 160-sample frames,
  gain) plus the level meter every 5th frame;
- mixing: three sources (8 kHz mono, 24 kHz mono, 48 kHz stereo), each pushed one
  20 ms chunk per period (validation, channel conversion, resampling, jitter
  buffer), and one :meth:`Mixer.render` per period to 48 kHz mono.

Prints the median of ``--runs`` runs for each, and their sum (the goal on the
development machine is <= 5 ms of CPU per second of audio).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.audio.capture import CaptureProcessor
from agent.audio.mixer import Mixer
from agent.hw.sim import ToneSource
from agent.metrics import Metrics
from agent.pcm import dbfs, samples_per_frame


def _periods(rate: int, freq: float, seconds: float, channels: int = 1) -> list[np.ndarray]:
    tone = ToneSource(rate, freq, -20.0, channels=channels)
    tone.open()
    return [tone.read() for _ in range(int(seconds * 50))]


def bench_capture(seconds: float) -> float:
    """CPU ms per second of audio: 48 kHz capture periods to 8 kHz uplink frames."""
    periods = _periods(48000, 1000.0, seconds)
    processor = CaptureProcessor(48000, gain_db=3.0)
    frames = 0
    start = time.process_time()
    for pcm in periods:
        for frame in processor.process(pcm, 0.0):
            frames += 1
            if frame.seq % 5 == 0:  # the mic level, as Capture samples it
                dbfs(frame.pcm)
    elapsed = time.process_time() - start
    assert frames >= len(periods) - 2
    return elapsed * 1000.0 / seconds


def bench_mixing(seconds: float) -> float:
    """CPU ms per second of audio: 3 sources pushed and mixed to 48 kHz mono."""
    mixer = Mixer(48000, metrics=Metrics())
    feeds = [
        (mixer.add_source("room", 8000, 1), _periods(8000, 440.0, seconds)),
        (mixer.add_source("orgo", 24000, 1), _periods(24000, 660.0, seconds)),
        (mixer.add_source("music", 48000, 2), _periods(48000, 880.0, seconds, 2)),
    ]
    period = samples_per_frame(48000)
    start = time.process_time()
    for i in range(len(feeds[0][1])):
        for source, chunks in feeds:
            source.push(chunks[i])
        out = mixer.render()
        assert out.size == period
    return (time.process_time() - start) * 1000.0 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per run")
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement")
    args = parser.parse_args()
    bench_capture(1.0)  # warm up (imports, allocator, soxr tables)
    bench_mixing(1.0)
    capture = statistics.median(bench_capture(args.seconds) for _ in range(args.runs))
    mixing = statistics.median(bench_mixing(args.seconds) for _ in range(args.runs))
    print(f"audio pipeline CPU per second of audio (median of {args.runs} x {args.seconds:g} s):")
    print(f"  capture + resample 48k->8k mono        {capture:6.2f} ms/s")
    print(f"  mix 3 sources (8k, 24k, 48k st) -> 48k {mixing:6.2f} ms/s")
    print(f"  total                                  {capture + mixing:6.2f} ms/s  (goal <= 5)")


if __name__ == "__main__":
    main()
