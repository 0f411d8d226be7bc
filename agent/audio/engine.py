"""Capture and playback pipelines: blocking device I/O in threads, asyncio at the edges.

:class:`Capture` reads the mic in its own thread, converts to the uplink format
(mono, 8 kHz, gain with saturation, exactly 160-sample frames) and hands frames
to the event loop with ``loop.call_soon_threadsafe`` through a bounded queue
(oldest dropped and counted when the consumer falls behind).

:class:`Playback` runs ``sink.write(mixer.render())`` in its own thread; the
device paces it.

Both survive their device: when it cannot be opened or vanishes, the status
board shows ``ATTENTION`` for "mic"/"speaker", the thread waits (delays from
:class:`agent.backoff.Reconnector`) and reopens, and the status returns to
``UP``. The status board is only touched on the event loop; heartbeats are
called from the audio threads (they must be thread-safe, as
``agent.service.Heartbeat.beat`` is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import numpy as np

from agent.audio.mixer import Mixer
from agent.audio.resample import StreamResampler
from agent.backoff import BackoffPolicy, Reconnector
from agent.errors import AudioError, DeviceBusy, DeviceUnavailable
from agent.hw.ports import AudioSink, AudioSource, device_name
from agent.metrics import Metrics
from agent.pcm import UPLINK_RATE, UPLINK_SAMPLES, Frame, Pcm, dbfs, downmix, to_int16
from agent.status import LinkState, StatusBoard

logger = logging.getLogger(__name__)

SILENCE_ALARM_S = 10.0  # a mic delivering only exact zeros this long is reported
DEVICE_BACKOFF = BackoffPolicy(initial_s=0.5, factor=2.0, cap_s=10.0, jitter=0.2)
_WAIT_TICK_S = 0.5  # heartbeat interval while waiting to reopen
_STOP_TIMEOUT_S = 1.0  # how long a stopping pipeline waits for its thread


def _gain_factor(gain_db: float) -> float:
    return float(10.0 ** (gain_db / 20.0))


class _Loop:
    """Thread-side handle on the event loop: schedule calls, survive its closing."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        self.loop = loop
        self.stop = stop

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.stop.set()


def _finish(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


class _Device:
    """Open / report / back off, shared by both pipelines (runs in the audio thread)."""

    def __init__(
        self,
        role: str,
        port: AudioSource | AudioSink,
        status: StatusBoard,
        policy: BackoffPolicy,
        heartbeat: Callable[[], None] | None,
        on_first_report: Callable[[], None] | None = None,
    ) -> None:
        self.role = role  # "mic" | "speaker"
        self.port = port
        self.status = status
        self.reconnector = Reconnector(policy)
        self.heartbeat = heartbeat
        self.down_since: float | None = None
        self.kind = "capture" if role == "mic" else "playback"
        self._first_report = on_first_report

    def _reported(self, loop: _Loop) -> None:
        if self._first_report is not None:
            loop.call(self._first_report)
            self._first_report = None

    def opened(self, loop: _Loop) -> None:
        self.reconnector.connected()
        if self.down_since is not None:
            logger.info(
                "%s device %s is back after %.1f s",
                self.kind,
                device_name(self.port),
                time.monotonic() - self.down_since,
            )
            self.down_since = None
        loop.call(self.status.set_device, self.role, LinkState.UP, device_name(self.port))
        self._reported(loop)

    def failed(self, loop: _Loop, exc: AudioError) -> float:
        """Report the failure; return the delay before the next attempt."""
        name = device_name(self.port)
        if isinstance(exc, DeviceBusy):
            detail = f"{self.kind} device busy: {name}"
        elif isinstance(exc, DeviceUnavailable):
            detail = f"{self.kind} device missing: {name}"
        else:
            detail = f"{self.kind} device error: {name}"
        delay = self.reconnector.next_delay()
        if self.down_since is None:
            self.down_since = time.monotonic()
            logger.warning("%s; retrying (%s)", detail, exc)
        else:
            logger.debug("%s: still failing (%s), next try in %.1f s", name, exc, delay)
        loop.call(self.status.set_device, self.role, LinkState.ATTENTION, detail)
        self._reported(loop)
        return delay

    def wait(
        self, stop: threading.Event, delay: float, tick: Callable[[], None] | None = None
    ) -> None:
        """Sleep ``delay`` (until stopped), beating the heartbeat; ``tick`` every 20 ms if given."""
        deadline = time.monotonic() + delay
        step = 0.02 if tick is not None else _WAIT_TICK_S
        last_beat = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            if self.heartbeat is not None and now - last_beat >= _WAIT_TICK_S:
                self.heartbeat()
                last_beat = now
            if tick is not None:
                tick()
            stop.wait(min(step, deadline - now))


class CaptureProcessor:
    """Device periods in, uplink frames out: the capture thread's work, with no I/O.

    Downmixes to mono, watches for exact digital silence, resamples to 8 kHz
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
    ) -> None:
        self.in_rate = in_rate
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
        else:
            self._zero_samples += pcm.size
            if self._zero_samples >= self._silence_limit and not self._silence_reported:
                self._silence_reported = True
                self.silence_alarm = True
        if self._resampler is not None:
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
    ) -> None:
        self.source = source
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

        def deliver(item: Frame | BaseException) -> None:
            if queue.full():
                queue.get_nowait()
                self._metrics.inc("capture_frames_dropped_total", reason="queue_full")
            queue.put_nowait(item)

        thread = threading.Thread(
            target=self._thread_main,
            args=(_Loop(loop, stop), deliver, done),
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
            if not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([done], timeout=_STOP_TIMEOUT_S)
            if done.done() and not done.cancelled():
                done.exception()  # a thread failure was raised through the queue already
            self._running = False

    # -- the capture thread ----------------------------------------------------------
    def _thread_main(
        self,
        loop: _Loop,
        deliver: Callable[[Frame | BaseException], None],
        done: asyncio.Future[None],
    ) -> None:
        error: BaseException | None = None
        try:
            self._capture(loop, deliver)
        except BaseException as exc:  # a bug, not a device failure: end the iteration with it
            logger.exception("capture thread failed")
            error = exc
            loop.call(deliver, exc)
        finally:
            with contextlib.suppress(AudioError):
                self.source.close()
            loop.call(_finish, done, error)

    def _capture(self, loop: _Loop, deliver: Callable[[Frame | BaseException], None]) -> None:
        device = _Device(
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
        self, loop: _Loop, deliver: Callable[[Frame | BaseException], None]
    ) -> None:
        source = self.source
        processor = CaptureProcessor(
            source.rate,
            source.channels,
            gain_db=self.gain_db,
            silence_alarm_s=self._silence_alarm_s,
            first_seq=self._seq + 1,
            metrics=self._metrics,
        )
        heartbeat = self._heartbeat
        level_every = self._level_every
        while not loop.stop.is_set():
            pcm = source.read()
            t_capture = time.monotonic()
            if heartbeat is not None:
                heartbeat()
            processor.gain_db = self.gain_db
            for frame in processor.process(pcm, t_capture):
                self._seq = frame.seq
                self._metrics.inc("frames_captured_total")
                loop.call(deliver, frame)
                if frame.seq % level_every == 0:
                    level = dbfs(frame.pcm)
                    self.level_dbfs = level
                    loop.call(self._status.set_mic_level, level)
            if processor.silence_alarm:
                processor.silence_alarm = False
                self._report_silence(loop)

    def _report_silence(self, loop: _Loop) -> None:
        logger.warning(
            "mic delivers silence: only exact zeros from %s for %.0f s (muted, unplugged?)",
            device_name(self.source),
            self._silence_alarm_s,
        )
        self._metrics.inc("mic_silence_alarms_total")
        loop.call(self._status.set_error, "mic delivers silence")


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
    ) -> None:
        self.sink = sink
        self.mixer = mixer
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
            args=(_Loop(loop, stop), done),
            name="audio-playback",
            daemon=True,
        )
        thread.start()
        try:
            await asyncio.shield(done)
        finally:
            stop.set()
            if not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([done], timeout=_STOP_TIMEOUT_S)

    def _thread_main(self, loop: _Loop, done: asyncio.Future[None]) -> None:
        error: BaseException | None = None
        try:
            self._play(loop)
        except BaseException as exc:
            logger.exception("playback thread failed")
            error = exc
        finally:
            with contextlib.suppress(AudioError):
                self.sink.close()
            loop.call(_finish, done, error)

    def _play(self, loop: _Loop) -> None:
        device = _Device(
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
        heartbeat = self._heartbeat
        while not stop.is_set():
            pcm = mixer.render()
            if resampler is not None:
                pcm = resampler.process(pcm)
            sink.write(pcm)
            self.periods_written += 1
            self._metrics.inc("playback_periods_total")
            if heartbeat is not None:
                heartbeat()
