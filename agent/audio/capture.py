"""The capture pipeline: the mic read once per period, uplink frames on the event loop.

:class:`Capture` opens the mic in its own thread (which also reopens it with backoff,
see :mod:`agent.audio.device`). A mic with poll descriptors
(:class:`~agent.hw.ports.PolledSource`, every ALSA device) is then read by the event
loop itself (``loop.add_reader``: one wakeup per period, no thread handoff) while the
thread waits; any other mic (the simulated ones, an ALSA device not paced by a clock)
is read by the thread, which hands each read's frames and the mic level to the loop
in one ``loop.call_soon_threadsafe``. Each read is converted to the uplink format
(mono, 8 kHz, gain with saturation, exactly 160-sample frames; the conversion itself
is :class:`CaptureProcessor`, which does no I/O) and queued in a bounded queue (oldest
dropped and counted when the consumer falls behind). Given a
:class:`~agent.audio.duplex.Duplex`, each read also ticks the speaker (the mic's clock
drives both); the speaker's periods, with their playout delay, go to the hands-free
tap (:class:`~agent.audio.handsfree.FarEndTap`) as they are written, and the mic's
hands-free stage (echo cancellation, noise suppression, gain; built only when
``[audio]`` asks for it) runs on each read before frames are cut, so the far end it
cancels is the period just played, from the same tick.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

import numpy as np

from agent.audio.device import (
    DEVICE_BACKOFF,
    STOP_TIMEOUT_S,
    DeviceRetry,
    ThreadLoop,
    name_for_the_kernel,
    settle,
)
from agent.audio.duplex import Duplex
from agent.audio.resample import StreamResampler
from agent.backoff import BackoffPolicy
from agent.errors import AudioError
from agent.hw.ports import AudioSource, PolledSource, device_name
from agent.metrics import Metrics
from agent.pcm import UPLINK_RATE, UPLINK_SAMPLES, Frame, Pcm, dbfs, downmix, to_int16
from agent.status import StatusBoard

if TYPE_CHECKING:  # the hands-free stage is built (and its library loaded) only when asked
    from agent.audio.handsfree import HandsFreeStage

logger = logging.getLogger(__name__)

SILENCE_ALARM_S = 10.0  # a mic delivering only exact zeros this long is reported
_HANDBACK_WAIT_S = 0.5  # how often the device's thread checks for a stop meanwhile
_MAX_EMPTY_WAKEUPS = 50  # more in a row: the descriptor does not mean "audio captured"


def _gain_factor(gain_db: float) -> float:
    return float(10.0 ** (gain_db / 20.0))


class CaptureProcessor:
    """Device periods in, uplink frames out: the work of each mic read, with no I/O.

    Downmixes to mono, watches for exact digital silence and for one non-zero read
    repeated bit for bit (a stuck driver), resamples to 8 kHz
    (streaming, when the device rate differs), cuts exactly-160-sample frames,
    applies the gain with saturation and numbers the frames. Any input length is
    accepted (short reads happen); frames carry the capture time of the read
    that completed them.
    """

    def __init__(
        self,
        in_rate: int,
        channels: int = 1,
        *,
        gain_db: float = 0.0,
        silence_alarm_s: float = SILENCE_ALARM_S,
        first_seq: int = 1,
        metrics: Metrics | None = None,
        stage: HandsFreeStage | None = None,
    ) -> None:
        self.in_rate = in_rate
        self.stage = stage  # hands-free: mono at in_rate -> processed 8 kHz, before the gate
        self.channels = channels
        self.gain_db = gain_db
        self._metrics = metrics
        self._resampler = StreamResampler(in_rate, UPLINK_RATE) if in_rate != UPLINK_RATE else None
        self._pending = np.zeros(0, np.int16)
        self._next_seq = first_seq
        self._zero_samples = 0
        self._silence_limit = int(silence_alarm_s * in_rate)
        self._silence_reported = False
        self.silence_alarm = False  # set once per stretch of exact zeros >= silence_alarm_s
        # a driver stuck on one buffer returns the same non-zero period again and again
        self._last: Pcm | None = None
        self._repeat_samples = 0
        self._repeat_reported = False
        self.stuck_alarm = False  # set once per stretch of one repeating read >= silence_alarm_s

    def process(self, pcm: Pcm, t_capture: float) -> list[Frame]:
        """One device read (interleaved, any length) -> zero or more uplink frames."""
        if pcm.dtype != np.int16:
            if self._metrics is not None:
                self._metrics.inc("audio_rejected_total", source="mic", reason="dtype")
            pcm = to_int16(pcm)
        pcm = downmix(pcm.reshape(-1), self.channels)
        # a mic that sends exact zeros is unplugged, muted in the mixer, or broken
        if pcm.any():
            self._zero_samples = 0
            self._silence_reported = False
            # No real microphone repeats a period bit for bit (there is always noise); a
            # digital test tone whose cycle divides the read length does, and is
            # reported the same way after as long.
            last, self._last = self._last, pcm
            if last is not None and last.size == pcm.size and np.array_equal(last, pcm):
                self._repeat_samples += pcm.size
                if self._repeat_samples >= self._silence_limit and not self._repeat_reported:
                    self._repeat_reported = True
                    self.stuck_alarm = True
            else:
                self._repeat_samples = 0
                self._repeat_reported = False
        else:
            self._last = None
            self._repeat_samples = 0
            self._repeat_reported = False
            self._zero_samples += pcm.size
            if self._zero_samples >= self._silence_limit and not self._silence_reported:
                self._silence_reported = True
                self.silence_alarm = True
        if self.stage is not None:
            pcm = self.stage.process(pcm)
        elif self._resampler is not None:
            pcm = self._resampler.process(pcm)
        pending = pcm if self._pending.size == 0 else np.concatenate((self._pending, pcm))
        frames: list[Frame] = []
        gain_db = self.gain_db
        while pending.size >= UPLINK_SAMPLES:
            chunk, pending = pending[:UPLINK_SAMPLES], pending[UPLINK_SAMPLES:]
            if gain_db != 0.0:
                chunk = to_int16(chunk.astype(np.float32) * np.float32(_gain_factor(gain_db)))
            else:
                chunk = chunk.copy()  # frames own their samples
            frames.append(Frame(chunk, self._next_seq, t_capture))
            self._next_seq += 1
        self._pending = pending
        return frames


class Capture:
    """The mic as an async iterator of uplink :class:`Frame`s."""

    def __init__(
        self,
        source: AudioSource,
        *,
        metrics: Metrics,
        status: StatusBoard,
        gain_db: float = 0.0,
        reopen_backoff: BackoffPolicy = DEVICE_BACKOFF,
        heartbeat: Callable[[], None] | None = None,
        queue_frames: int = 25,
        level_every: int = 5,
        silence_alarm_s: float = SILENCE_ALARM_S,
        duplex: Duplex | None = None,
        handsfree: Callable[[int], HandsFreeStage | None] | None = None,
        on_loop: bool = True,
    ) -> None:
        self.source = source
        self.duplex = duplex
        # hands-free: builds the processing stage for the mic's rate at each open
        self.handsfree = handsfree
        # a mic with poll descriptors (ALSA) is read by the event loop itself: no thread
        # wakeup and no handoff per period (the thread only opens and reopens it)
        self.on_loop = on_loop
        self._release_loop: Callable[[], None] | None = None
        self.gain_db = gain_db
        self.level_dbfs: float | None = None  # latest mic level, sampled every level_every frames
        self._metrics = metrics
        self._status = status
        self._policy = reopen_backoff
        self._heartbeat = heartbeat
        self._queue_frames = queue_frames
        self._level_every = max(1, level_every)
        self._silence_alarm_s = silence_alarm_s
        self._seq = 0  # last frame number handed out; continues across reopens
        self._running = False
        # called once (on the event loop) after the first open attempt, opened or failed
        self.on_ready: Callable[[], None] | None = None

    async def frames(self) -> AsyncGenerator[Frame, None]:
        """Yield 20 ms, 160-sample, 8 kHz mono frames until the consumer stops iterating.

        Closing the generator stops the capture thread, which closes the device.
        A plain ``break`` only closes it when it is garbage-collected, so iterate
        under ``contextlib.aclosing``::

            async with contextlib.aclosing(capture.frames()) as frames:
                async for frame in frames:
                    ...
        """
        if self._running:
            raise RuntimeError("Capture.frames() is already being iterated")
        self._running = True
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Frame | BaseException] = asyncio.Queue(self._queue_frames)
        stop = threading.Event()
        done: asyncio.Future[None] = loop.create_future()

        def deliver(items: list[Frame] | BaseException, level: float | None = None) -> None:
            # one call per read: its frames, and the mic level when it was sampled
            if level is not None:
                self._status.set_mic_level(level)
            for item in items if isinstance(items, list) else (items,):
                if queue.full():
                    queue.get_nowait()
                    self._metrics.inc("capture_frames_dropped_total", reason="queue_full")
                queue.put_nowait(item)

        thread = threading.Thread(
            target=self._thread_main,
            args=(ThreadLoop(loop, stop), deliver, done),
            name="audio-capture",
            daemon=True,
        )
        thread.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            if self._release_loop is not None:  # the loop stops reading before the close
                self._release_loop()
            if not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([done], timeout=STOP_TIMEOUT_S)
            if done.done() and not done.cancelled():
                done.exception()  # a thread failure was raised through the queue already
            self._running = False

    # -- the capture thread ----------------------------------------------------------
    def _thread_main(
        self,
        loop: ThreadLoop,
        deliver: Callable[[list[Frame] | BaseException, float | None], None],
        done: asyncio.Future[None],
    ) -> None:
        name_for_the_kernel()
        error: BaseException | None = None
        try:
            self._capture(loop, deliver)
        except BaseException as exc:  # a bug, not a device failure: end the iteration with it
            logger.exception("capture thread failed")
            error = exc
            loop.call(deliver, exc, None)
        finally:
            with contextlib.suppress(AudioError):
                self.source.close()
            loop.call(settle, done, error)

    def _capture(
        self, loop: ThreadLoop, deliver: Callable[[list[Frame] | BaseException, float | None], None]
    ) -> None:
        device = DeviceRetry(
            "mic", self.source, self._status, self._policy, self._heartbeat, self.on_ready
        )
        stop = loop.stop
        while not stop.is_set():
            try:
                self.source.open()
            except AudioError as exc:
                device.wait(stop, device.failed(loop, exc))
                continue
            device.opened(loop)
            try:
                self._read_until_stopped(loop, deliver)
            except AudioError as exc:
                self.source.close()
                device.wait(stop, device.failed(loop, exc))
            else:
                self.source.close()

    def _read_until_stopped(
        self, loop: ThreadLoop, deliver: Callable[[list[Frame] | BaseException, float | None], None]
    ) -> None:
        try:
            self._read_loop(loop, deliver)
        finally:
            if self.duplex is not None:
                self.duplex.capture_stopped()  # the speaker's own thread takes over

    def _read_loop(
        self, loop: ThreadLoop, deliver: Callable[[list[Frame] | BaseException, float | None], None]
    ) -> None:
        source = self.source
        processor = CaptureProcessor(
            source.rate,
            source.channels,
            gain_db=self.gain_db,
            silence_alarm_s=self._silence_alarm_s,
            first_seq=self._seq + 1,
            metrics=self._metrics,
            stage=self.handsfree(source.rate) if self.handsfree is not None else None,
        )
        # the loop reads the mic when its poll descriptor says a period is there; this
        # thread keeps the device (reopening, backoff) and waits until it comes back.
        # False: not paced by a clock (ALSA's null: its reads sleep, which the loop must
        # not), or its poll descriptors never woke the loop: this thread reads it
        if (
            self.on_loop
            and isinstance(source, PolledSource)
            and (self._read_on_loop(loop, source, processor, deliver) or loop.stop.is_set())
        ):
            return
        while not loop.stop.is_set():
            pcm = source.read()
            self._step(processor, pcm, time.monotonic(), loop, deliver, on_loop=False)

    def _step(
        self,
        processor: CaptureProcessor,
        pcm: Pcm,
        t_capture: float,
        loop: ThreadLoop,
        deliver: Callable[[list[Frame] | BaseException, float | None], None],
        *,
        on_loop: bool,
    ) -> None:
        """One mic read: the speaker's tick, the frames, the level, the alarms."""
        if self._heartbeat is not None:
            self._heartbeat()
        processor.gain_db = self.gain_db
        duplex = self.duplex
        if duplex is not None:
            # the speaker first, from the same wakeup: the loop, woken below, then
            # runs while this thread waits for the next read (no fight for the GIL),
            # and the hands-free stage's reference (the tap) has the period just played
            duplex.tick(t_capture)
        frames = processor.process(pcm, t_capture)
        level: float | None = None
        stage = processor.stage
        for frame in frames:
            if frame.seq % self._level_every == 0:
                level = dbfs(frame.pcm)
                self.level_dbfs = level
            if stage is not None and frame.seq % 50 == 0:  # once a second
                hf = stage.publish(self._metrics)  # ERLE, gain, CPU
                figures = (hf.erle_db, hf.gain_db, hf.cpu_percent)
                if on_loop:
                    self._status.set_handsfree(*figures)
                else:
                    loop.call(self._status.set_handsfree, *figures)
        if frames:
            self._seq = frames[-1].seq
            self._metrics.inc("frames_captured_total", len(frames))
            if on_loop:
                deliver(frames, level)
            else:
                loop.call(deliver, frames, level)  # one wakeup of the loop for the read
        if processor.silence_alarm:
            processor.silence_alarm = False
            self._report_silence(loop)
        if processor.stuck_alarm:
            processor.stuck_alarm = False
            self._report_stuck(loop, pcm.size // max(1, self.source.channels))

    def _read_on_loop(
        self,
        loop: ThreadLoop,
        source: PolledSource,
        processor: CaptureProcessor,
        deliver: Callable[[list[Frame] | BaseException, float | None], None],
    ) -> bool:
        """Read the open mic from the event loop (``add_reader`` on its poll descriptors)
        until it fails (raised here), the capture stops (True), or it turns out unpaced,
        its descriptors do not wake the loop within :data:`_HANDBACK_WAIT_S`, or they
        keep waking it with nothing to read (False: the caller reads it in this thread)."""
        back = threading.Event()
        ended: list[BaseException] = []
        fds: list[int] = []
        reads = [0]
        empty = [0]  # wakeups in a row that found nothing to read

        def ready() -> None:  # on the loop: a period (or more) has been captured
            try:
                pcm = source.read_ready()  # all it has: one step, one tick per wakeup
                if pcm is None:
                    empty[0] += 1
                    if empty[0] > _MAX_EMPTY_WAKEUPS:  # a descriptor that stays readable
                        logger.debug("%s: woken with nothing to read; read in a thread", source)
                        release()
                    return
                empty[0] = 0
                reads[0] += 1
                self._step(processor, pcm, time.monotonic(), loop, deliver, on_loop=True)
                if source.unpaced:
                    release()
                    return
            except BaseException as exc:  # a device failure, or a bug: the thread decides
                ended.append(exc)
                release()

        def release() -> None:  # on the loop: stop reading, give the device back
            for fd in fds:
                loop.loop.remove_reader(fd)
            fds.clear()
            self._release_loop = None
            back.set()

        def start() -> None:  # on the loop
            if back.is_set():
                return
            for fd in polled:
                try:
                    loop.loop.add_reader(fd, ready)
                except OSError as e:  # not pollable (EPERM: a plain file, ALSA's null)
                    logger.debug("%s: poll descriptor %d: %s; read in a thread", source, fd, e)
                    release()
                    return
                fds.append(fd)
            self._release_loop = release

        # the first read here: it starts the stream (a prepared capture PCM's poll
        # descriptor does not wait for audio, there is none coming until started)
        self._step(processor, source.read(), time.monotonic(), loop, deliver, on_loop=False)
        if source.unpaced:
            return False
        polled = source.poll_fds()
        if not polled:  # nothing the loop could wait on
            return False
        loop.call(start)
        seen = 0
        while not back.is_set() and not loop.stop.is_set():
            back.wait(_HANDBACK_WAIT_S)
            if reads[0] == seen and not back.is_set():  # no period in all that time
                logger.debug("%s: its poll descriptors do not wake the loop", source)
                break
            seen = reads[0]
        if not back.is_set():  # stopping (frames() released the reader on the loop
            loop.call(release)  # already, or the loop is gone), or stalled: release it
            back.wait(_HANDBACK_WAIT_S)  # before the device is read here or closed
        if ended:
            raise ended[0]
        # not stopping: it turned out unpaced, or its descriptor never (or always) woke us
        return loop.stop.is_set()

    def _report_silence(self, loop: ThreadLoop) -> None:
        logger.warning(
            "mic delivers silence: only exact zeros from %s for %.0f s (muted, unplugged?)",
            device_name(self.source),
            self._silence_alarm_s,
        )
        self._metrics.inc("mic_silence_alarms_total")
        loop.call(self._status.set_error, "mic delivers silence")

    def _report_stuck(self, loop: ThreadLoop, period: int) -> None:
        logger.warning(
            "mic delivers one repeating buffer: the same %d samples from %s again and again "
            "for %.0f s (sound driver stuck? unplug and replug the card)",
            period,
            device_name(self.source),
            self._silence_alarm_s,
        )
        self._metrics.inc("mic_stuck_alarms_total")
        loop.call(self._status.set_error, "mic delivers one repeating buffer")
