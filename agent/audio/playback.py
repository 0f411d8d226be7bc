"""The playback pipeline: ``sink.write(mixer.render())`` in its own thread, paced by the device.

:class:`Playback` feeds the speaker one period per device period until
cancelled, resampling when the device settled on another rate, and survives its
device (see :mod:`agent.audio.device`); while there is no speaker it keeps the
mixer's sources moving by rendering and discarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.audio.device import DEVICE_BACKOFF, STOP_TIMEOUT_S, DeviceRetry, ThreadLoop, settle
from agent.audio.mixer import Mixer
from agent.audio.resample import StreamResampler
from agent.backoff import BackoffPolicy
from agent.errors import AudioError
from agent.hw.ports import AudioSink, device_name
from agent.metrics import Metrics
from agent.status import StatusBoard

if TYPE_CHECKING:
    from agent.audio.handsfree import FarEndTap

logger = logging.getLogger(__name__)


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
        tap: FarEndTap | None = None,
    ) -> None:
        self.sink = sink
        self.tap = tap  # hands-free: gets each period as written (the echo's reference)
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
            args=(ThreadLoop(loop, stop), done),
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
                    await asyncio.wait([done], timeout=STOP_TIMEOUT_S)

    def _thread_main(self, loop: ThreadLoop, done: asyncio.Future[None]) -> None:
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
        heartbeat = self._heartbeat
        while not stop.is_set():
            pcm = mixer.render()
            if resampler is not None:
                pcm = resampler.process(pcm)
            sink.write(pcm)
            if self.tap is not None:  # playout delay: the core's to give (issue 18)
                self.tap.rendered(pcm, sink.rate, sink.channels, None)
            self.periods_written += 1
            self._metrics.inc("playback_periods_total")
            if heartbeat is not None:
                heartbeat()
