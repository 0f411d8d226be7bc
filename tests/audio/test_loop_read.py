"""A mic read by the event loop (agent/audio/capture.py, ``PolledSource``) whose poll
descriptor misbehaves: the capture falls back to reading it in its thread, without
spinning a core and without losing the stream. The working case (a PulseAudio-paced
ALSA mic) is in test_engine.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time

from agent.audio.capture import Capture
from agent.hw.sim import ToneSource
from agent.metrics import Metrics
from agent.pcm import Pcm
from agent.status import StatusBoard


class PipeMic(ToneSource):
    """A paced tone whose "poll descriptor" is a pipe: readable forever, or never."""

    unpaced = False

    def __init__(self, *, readable: bool) -> None:
        super().__init__(8000, paced=True, name="pipe-mic")
        self._r, self._w = os.pipe()
        if readable:
            os.write(self._w, b"x")  # never drained: the loop is woken again and again
        self.empty_wakeups = 0

    def poll_fds(self) -> list[int]:
        return [self._r]

    def read_ready(self) -> Pcm | None:
        self.empty_wakeups += 1
        return None

    def release(self) -> None:
        os.close(self._r)
        os.close(self._w)


async def frames_for(mic: PipeMic, seconds: float) -> list[float]:
    capture = Capture(mic, metrics=Metrics(), status=StatusBoard())
    arrivals: list[float] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds), contextlib.aclosing(capture.frames()) as stream:
            async for _ in stream:
                arrivals.append(time.monotonic())
    mic.release()
    return arrivals


async def test_a_descriptor_that_stays_readable_does_not_spin_the_loop() -> None:
    mic = PipeMic(readable=True)
    cpu0 = time.process_time()
    arrivals = await frames_for(mic, 2.0)
    cpu = time.process_time() - cpu0
    # the loop gave up on it after a few wakeups; the thread reads it at its pace
    assert mic.empty_wakeups <= 51
    assert len(arrivals) >= 80
    assert cpu < 1.0  # a spinning loop would burn the whole 2 s


async def test_a_descriptor_that_never_wakes_the_loop_is_read_in_the_thread() -> None:
    mic = PipeMic(readable=False)
    arrivals = await frames_for(mic, 2.0)
    assert mic.empty_wakeups == 0
    # the first read, then half a second with nothing, then the thread reads on
    assert len(arrivals) >= 50
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < 1.0
