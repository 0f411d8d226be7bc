"""One audio clock: the mic's read paces the speaker too, one wakeup per period for both.

Without it each audio pipeline has a thread woken by its own device, and both
wake every 20 ms, out of phase. With a :class:`Duplex` shared by
:class:`~agent.audio.capture.Capture` and :class:`~agent.audio.playback.Playback`,
and a speaker that says how much room it has (:class:`~agent.hw.ports.PolledSink`,
as ALSA's ``avail()``), the mic's reader (the event loop for an ALSA mic, else the
capture thread), right after each mic read, renders the
mixer and writes the speaker while it has room for a whole period (:meth:`Duplex.tick`);
the playback thread sleeps. When the two are different cards their clocks drift
apart: a speaker running fast gets two periods in some ticks, a slow one none in some,
and the jitter buffers in front of the mixer absorb the difference (the speaker's
buffer stays as full as a blocking writer keeps it).

The playback thread takes over (blocking writes, paced by the speaker) whenever no
capture is ticking: no mic, a mic that is being reopened, a mic read that stalls
(no tick for :data:`STALE_S`). It hands back at the next tick. A speaker failure met
in a tick is handed to the playback thread, which reports it and reopens
the speaker as before (:mod:`agent.audio.device`).

The echo canceller's inputs (issue #20) come from here: :class:`FarEnd` holds the
period last written to the speaker, after volume, mute and ducking, with the audio
queued in the device ahead of it (the playout delay, ALSA's ``delay()``); the capture
reader passes :meth:`FarEnd.latest` to :meth:`CaptureProcessor.process
<agent.audio.capture.CaptureProcessor.process>` with every mic read.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.pcm import Pcm

STALE_S = 0.1  # no tick for this long: the playback thread drives the speaker itself
WAIT_S = 0.25  # how often the idle playback thread checks that ticks still come


@dataclass(frozen=True, slots=True)
class FarEndPeriod:
    """One period as it went to the speaker: what the mic will hear back as echo."""

    pcm: Pcm  # interleaved int16 at ``rate``, after volume / mute / ducking
    rate: int  # Hz, the speaker's
    channels: int
    playout_delay_s: float  # audio queued in the device ahead of this period when written
    t_written: float  # time.monotonic() of the write

    @property
    def t_played(self) -> float:
        """When the period's first sample reaches the speaker (monotonic, estimated)."""
        return self.t_written + self.playout_delay_s


class FarEnd:
    """The latest period written to the speaker (thread-safe: one reference swap)."""

    def __init__(self) -> None:
        self._latest: FarEndPeriod | None = None

    def publish(self, period: FarEndPeriod) -> None:
        self._latest = period

    def latest(self) -> FarEndPeriod | None:
        """The period last written, or None before the first (or with no speaker)."""
        return self._latest

    def clear(self) -> None:
        self._latest = None


class Duplex:
    """The mic reader's tick drives the speaker; the playback thread stands by."""

    def __init__(self, *, stale_s: float = STALE_S) -> None:
        self.far_end = FarEnd()
        self.stale_s = stale_s
        self.ticks = 0
        self._lock = threading.Lock()  # held while the speaker is written (either thread)
        self._service: Callable[[], None] | None = None
        self._last_tick = -math.inf
        self._changed = threading.Event()  # wakes the standing-by playback thread

    # -- the mic's reader (the event loop, or the capture thread) ---------------------
    def tick(self, now: float | None = None) -> None:
        """One mic period has been read: write the speaker if it has room (no blocking)."""
        self._last_tick = time.monotonic() if now is None else now
        self.ticks += 1
        service = self._service
        if service is None or not self._lock.acquire(blocking=False):
            return  # no speaker attached, or the playback thread is writing itself
        try:
            service()
        finally:
            self._lock.release()

    def capture_stopped(self) -> None:
        """No more ticks for now (the mic closed): the playback thread takes over at once."""
        self._last_tick = -math.inf
        self._changed.set()

    # -- the playback thread ---------------------------------------------------------
    def driven(self, now: float | None = None) -> bool:
        """True while ticks come (the mic's reader drives an attached speaker)."""
        now = time.monotonic() if now is None else now
        return now - self._last_tick < self.stale_s

    def attach(self, service: Callable[[], None]) -> None:
        """From now on each tick calls ``service`` (write while there is room)."""
        self._service = service

    def detach(self) -> None:
        with self._lock:  # a tick running the service finishes first
            self._service = None
        self.far_end.clear()

    def stand_by(self, stop: threading.Event) -> None:
        """Sleep until woken (a failure, the capture stopping, ``wake``) or :data:`WAIT_S`."""
        if not stop.is_set():
            self._changed.wait(WAIT_S)
        self._changed.clear()

    def wake(self) -> None:
        """Wake the standing-by playback thread (to stop, or to handle a failure)."""
        self._changed.set()

    def holding(self) -> threading.Lock:
        """The lock the playback thread holds while it writes the speaker itself."""
        return self._lock
