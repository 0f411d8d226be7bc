"""One audio clock: the mic's reads feed the speaker (agent/audio/duplex.py), on simulated
devices paced in real time: a speaker whose clock runs fast or slow, a missing mic, and
the far end handed to the hands-free tap (the echo's reference)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from agent.audio.capture import Capture
from agent.audio.duplex import Duplex
from agent.audio.jitter import JitterPolicy
from agent.audio.mixer import Mixer
from agent.audio.playback import Playback
from agent.backoff import BackoffPolicy
from agent.hw.sim import ClockedSink, ToneSource
from agent.metrics import Metrics
from agent.pcm import Pcm, dbfs
from agent.status import StatusBoard
from tests.audio.signals import tone

FAST = BackoffPolicy(initial_s=0.01, factor=2.0, cap_s=0.05, jitter=0.0)


class WriterThreads(ClockedSink):
    """A clocked speaker that notes which thread wrote each period."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.writers: list[str] = []
        self.first_write_at = 0.0  # monotonic s: the speaker's clock runs from here

    def write(self, pcm: Pcm) -> None:
        self.first_write_at = self.first_write_at or time.monotonic()
        self.writers.append(threading.current_thread().name)
        super().write(pcm)


async def run_duplex(
    sink: ClockedSink, mic: ToneSource, seconds: float, *, tap: object = None
) -> tuple[Playback, Capture, int]:
    """Mic and speaker on one Duplex for ``seconds``; returns the parts and the frames."""
    metrics, status = Metrics(), StatusBoard()
    policy = JitterPolicy(reset_excess_ms=60_000, trim_window_ms=1e9, capacity_ms=60_000)
    mixer = Mixer(sink.rate, metrics=metrics, jitter=policy)  # holds the whole tone
    mixer.add_source("room", 8000).push(tone(8000, 1000, seconds + 2, dbfs=-20.0))
    duplex = Duplex()
    playback = Playback(
        sink, mixer, metrics=metrics, status=status, duplex=duplex,
        tap=tap,  # type: ignore[arg-type]
    )  # fmt: skip
    capture = Capture(mic, metrics=metrics, status=status, duplex=duplex, reopen_backoff=FAST)
    frames = 0
    play = asyncio.create_task(playback.run())
    try:
        async with asyncio.timeout(seconds), contextlib.aclosing(capture.frames()) as stream:
            async for _ in stream:
                frames += 1
    except TimeoutError:
        pass
    finally:
        play.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await play
    return playback, capture, frames


# 0.1 % is a common crystal; 5 % over 3 s is more than the speaker's 80 ms buffer can
# hide, so one write per tick (fast) or an unconditional write (slow) would fail here
@pytest.mark.parametrize("speed", [1.001, 0.999, 1.05, 0.95])
async def test_a_speaker_on_another_clock_is_fed_from_the_mics_reads_without_gaps(
    speed: float,
) -> None:
    sink = WriterThreads(48000, 1, speed=speed)
    mic = ToneSource(8000, paced=True)
    playback, _, frames = await run_duplex(sink, mic, 3.0)
    elapsed = time.monotonic() - sink.first_write_at  # not the start-up of a loaded machine
    assert frames >= 140  # the mic ran in real time
    # the speaker never ran dry and never got more than its buffer holds (one underrun
    # is allowed: a stall of this shared machine longer than the buffer)
    assert sink.underruns <= 1
    assert sink.overruns == 0
    # after the first periods (written by the speaker's own thread) the mic's thread did
    # it (until the very end: when the mic stops, the speaker's thread takes over again)
    assert sink.writers[-60:-10] == ["audio-capture"] * 50
    # it played what its own clock consumed: the drift went into the speaker, not a gap
    played = sink.frames_written - sink.frames_queued() if sink.is_open else sink.frames_written
    assert played == pytest.approx(elapsed * 48000 * speed, rel=0.03)
    assert playback.periods_written >= 140


async def test_without_a_mic_the_speaker_is_fed_by_its_own_thread() -> None:
    sink = WriterThreads(48000, 1)
    mic = ToneSource(8000, paced=True, name="usb-mic")
    mic.unplug()
    playback, _, frames = await run_duplex(sink, mic, 1.5)
    assert frames == 0
    assert sink.underruns <= 1  # one: a stall of this shared machine, not a gap per tick
    assert playback.periods_written >= 60
    assert set(sink.writers) == {"audio-playback"}


async def test_a_mic_coming_back_takes_over_the_speaker() -> None:
    sink = WriterThreads(48000, 1)
    mic = ToneSource(8000, paced=True, name="usb-mic")
    mic.unplug()
    asyncio.get_running_loop().call_later(0.8, mic.plug)
    _, _, frames = await run_duplex(sink, mic, 2.5)
    assert frames >= 50
    assert sink.underruns <= 1  # one: a stall of this shared machine, not a gap per tick
    assert sink.writers[0] == "audio-playback"
    assert sink.writers[-30:-10] == ["audio-capture"] * 20


class RecordingTap:
    """A hands-free tap (agent.audio.handsfree.FarEndTap's interface) that keeps what
    the speaker's writes handed it."""

    listening = True

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, Pcm, int, int, float | None]] = []

    def rendered(
        self, pcm: Pcm, rate: int, channels: int = 1, playout_delay_s: float | None = None
    ) -> None:
        now, thread = time.monotonic(), threading.current_thread().name
        self.calls.append((now, thread, pcm.copy(), rate, channels, playout_delay_s))


async def test_the_echo_reference_is_the_period_just_played_with_its_playout_delay() -> None:
    sink = ClockedSink(48000, 1)
    tap = RecordingTap()
    await run_duplex(sink, ToneSource(8000, paced=True), 2.0, tap=tap)
    ticked = [c for c in tap.calls if c[1] == "audio-capture"]  # the mic's ticks wrote these
    later = ticked[-40:]
    assert len(later) == 40
    for _t, _thread, pcm, rate, channels, delay_s in later:
        assert (rate, channels, pcm.size) == (48000, 1, 960)
        # the room's -20 dBFS tone, as the speaker got it (volume 1)
        assert dbfs(pcm) == pytest.approx(-20.0, abs=0.5)
        # what was queued in the device ahead of it: the delay the canceller is told
        assert delay_s is not None and 0.0 < delay_s <= sink.buffer_frames / 48000
    # one period per period of the mic's clock: the reference keeps up, no gaps
    span = later[-1][0] - later[0][0]
    assert span == pytest.approx(39 * 0.020, abs=0.2)
