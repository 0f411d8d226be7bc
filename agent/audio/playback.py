"""The playback pipeline: ``sink.write(mixer.render())`` in its own thread, paced by the device.

:class:`Playback` feeds the speaker one period per device period until
cancelled, resampling when the device settled on another rate, and survives its
device (see :mod:`agent.audio.device`); while there is no speaker it keeps the
mixer's sources moving by rendering and discarding.

Given a :class:`~agent.audio.duplex.Duplex` and a speaker that tells its room
(:class:`~agent.hw.ports.PolledSink`, every ALSA device), the writes happen in the
mic's reader (the event loop for an ALSA mic, else the capture thread), right after
each mic read (one wakeup per period for both), and this
thread only stands by: it writes itself (blocking, paced by the speaker) while no mic
is being read, and it reports and reopens the speaker when a write fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.audio.device import (
    DEVICE_BACKOFF,
    STOP_TIMEOUT_S,
    DeviceRetry,
    ThreadLoop,
    name_for_the_kernel,
    settle,
)
from agent.audio.duplex import Duplex, FarEndPeriod
from agent.audio.mixer import Mixer
from agent.audio.resample import StreamResampler
from agent.backoff import BackoffPolicy
from agent.errors import AudioError
from agent.hw.ports import AudioSink, PolledSink, device_name
from agent.metrics import Metrics
from agent.pcm import Pcm, samples_per_frame
from agent.status import StatusBoard

if TYPE_CHECKING:
    from agent.audio.handsfree import FarEndTap

logger = logging.getLogger(__name__)

JUDGE_PERIODS = 30  # written by this thread after each open (0.6 s: the pacer's window)
MAX_WRITES_PER_TICK = 2  # a tick tops the speaker up: one period, two when its clock is fast


class Playback:
    """Feeds the speaker from the mixer, one period per device period, until cancelled."""

    def __init__(
        self,
        sink: AudioSink,
        mixer: Mixer,
        *,
        metrics: Metrics,
        status: StatusBoard,
        heartbeat: Callable[[], None] | None = None,
        reopen_backoff: BackoffPolicy = DEVICE_BACKOFF,
        duplex: Duplex | None = None,
        tap: FarEndTap | None = None,
    ) -> None:
        self.sink = sink
        self.tap = tap  # hands-free: gets each period as written (the echo's reference)
        self.mixer = mixer
        self.duplex = duplex
        self.periods_written = 0
        self._metrics = metrics
        self._status = status
        self._heartbeat = heartbeat
        self._policy = reopen_backoff
        # called once (on the event loop) after the first open attempt, opened or failed
        self.on_ready: Callable[[], None] | None = None

    async def run(self) -> None:
        """Play until cancelled; on cancellation the thread stops and closes the device."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        done: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._thread_main,
            args=(ThreadLoop(loop, stop), done),
            name="audio-playback",
            daemon=True,
        )
        thread.start()
        try:
            await asyncio.shield(done)
        finally:
            stop.set()
            if self.duplex is not None:
                self.duplex.wake()
            if not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([done], timeout=STOP_TIMEOUT_S)

    def _thread_main(self, loop: ThreadLoop, done: asyncio.Future[None]) -> None:
        name_for_the_kernel()
        error: BaseException | None = None
        try:
            self._play(loop)
        except BaseException as exc:
            logger.exception("playback thread failed")
            error = exc
        finally:
            with contextlib.suppress(AudioError):
                self.sink.close()
            loop.call(settle, done, error)

    def _play(self, loop: ThreadLoop) -> None:
        device = DeviceRetry(
            "speaker", self.sink, self._status, self._policy, self._heartbeat, self.on_ready
        )
        stop = loop.stop

        def discard() -> None:  # keep the sources' buffers moving while there is no speaker
            self.mixer.render()

        while not stop.is_set():
            try:
                self.sink.open()
            except AudioError as exc:
                device.wait(stop, device.failed(loop, exc), tick=discard)
                continue
            device.opened(loop)
            try:
                self._write_until_stopped(stop)
            except AudioError as exc:
                self.sink.close()
                device.wait(stop, device.failed(loop, exc), tick=discard)
            else:
                self.sink.close()

    def _write_until_stopped(self, stop: threading.Event) -> None:
        sink, mixer = self.sink, self.mixer
        if sink.channels != mixer.channels:
            raise AudioError(
                f"{device_name(sink)}: {sink.channels} channels, the mixer makes {mixer.channels}"
            )
        resampler = None
        if sink.rate != mixer.out_rate:  # the device settled on another rate
            resampler = StreamResampler(mixer.out_rate, sink.rate, mixer.channels)
        if self.duplex is not None and isinstance(sink, PolledSink):
            self._write_duplex(stop, sink, self.duplex, resampler)
        heartbeat = self._heartbeat
        while not stop.is_set():
            pcm = mixer.render()
            if resampler is not None:
                pcm = resampler.process(pcm)
            sink.write(pcm)
            if self.tap is not None:  # this path writes blocking: no delay to give
                self.tap.rendered(pcm, sink.rate, sink.channels, None)
            self.periods_written += 1
            self._metrics.inc("playback_periods_total")
            if heartbeat is not None:
                heartbeat()

    def _write_duplex(
        self,
        stop: threading.Event,
        sink: PolledSink,
        duplex: Duplex,
        resampler: StreamResampler | None,
    ) -> None:
        """Let the mic reader's ticks write; write ourselves only while none come.

        Returns when the speaker turns out not to be paced by a clock (ALSA's ``null``:
        its writes sleep, which must not hold up the mic): the caller writes it itself.
        """
        mixer, metrics, heartbeat = self.mixer, self._metrics, self._heartbeat
        period = samples_per_frame(sink.rate)
        failure: list[BaseException] = []  # met in a tick, raised here
        handed_back: list[bool] = []  # the speaker is not paced: this thread writes it

        def write_one(queued: int) -> None:
            """Render and write one period; ``queued``: frames in the device before it."""
            pcm: Pcm = mixer.render()
            if resampler is not None:
                pcm = resampler.process(pcm)
            sink.write(pcm)
            now = time.monotonic()
            delay_s = queued / sink.rate
            duplex.far_end.publish(FarEndPeriod(pcm, sink.rate, sink.channels, delay_s, now))
            if self.tap is not None:  # the echo's reference, with the device's playout delay
                self.tap.rendered(pcm, sink.rate, sink.channels, delay_s)
            self.periods_written += 1
            metrics.inc("playback_periods_total")

        def service() -> None:  # where the mic is read, right after the read
            if failure or handed_back:
                return
            try:
                if getattr(sink, "unpaced", False):
                    handed_back.append(True)
                    duplex.wake()
                    return
                # one look at the device per tick (with the pulse plugin every call
                # takes libpulse's lock): its room says how many periods go in
                free = sink.frames_free()
                count = (
                    MAX_WRITES_PER_TICK if free < 0 else min(free // period, MAX_WRITES_PER_TICK)
                )
                queued = sink.buffer_frames - max(free, 0)
                for _ in range(count):
                    write_one(queued)
                    queued += period
            except BaseException as exc:  # the playback thread reports it and reopens
                failure.append(exc)
                duplex.wake()
                return
            if heartbeat is not None:
                heartbeat()

        # the first periods are written here, so that a speaker not paced by a clock is
        # found out (agent.hw.alsa's pacer) before the mic's thread ever writes it
        judge_until = self.periods_written + JUDGE_PERIODS
        attached = False
        try:
            while not stop.is_set() and not handed_back:
                if failure:
                    raise failure[0]
                if not attached and self.periods_written >= judge_until:
                    if getattr(sink, "unpaced", False):
                        return
                    duplex.attach(service)
                    attached = True
                if attached and duplex.driven():
                    duplex.stand_by(stop)
                    if heartbeat is not None:
                        heartbeat()
                    continue
                # no mic ticking: the speaker's clock paces us (sleep until it has room)
                free = sink.frames_free()
                if 0 <= free < period:
                    stop.wait((period - free) / sink.rate)
                    continue
                with duplex.holding():
                    write_one(sink.frames_queued())
                if heartbeat is not None:
                    heartbeat()
        finally:
            duplex.detach()
