"""The plumbing both audio pipelines share: a device thread's view of the event loop and its device.

:mod:`agent.audio.capture` and :mod:`agent.audio.playback` each run blocking
device I/O in a thread of their own. This module holds what those threads have
in common: :class:`ThreadLoop` (schedule calls onto the event loop, stop when it
is closed), :func:`settle` (complete the future the pipeline awaits) and
:class:`DeviceRetry` (open / report / back off). When a device cannot be opened
or vanishes, the status board shows ``ATTENTION`` for "mic"/"speaker", the
thread waits (delays from :class:`agent.backoff.Reconnector`) and reopens, and
the status returns to ``UP``. The status board is only touched on the event
loop; heartbeats are called from the audio threads (they must be thread-safe, as
``agent.service.Heartbeat.beat`` is).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.backoff import BackoffPolicy, Reconnector
from agent.errors import AudioError, DeviceBusy, DeviceUnavailable
from agent.hw.ports import AudioSink, AudioSource, device_name
from agent.status import LinkState, StatusBoard

logger = logging.getLogger(__name__)

DEVICE_BACKOFF = BackoffPolicy(initial_s=0.5, factor=2.0, cap_s=10.0, jitter=0.2)
STOP_TIMEOUT_S = 1.0  # how long a stopping pipeline waits for its thread
_WAIT_TICK_S = 0.5  # heartbeat interval while waiting to reopen


class ThreadLoop:
    """Thread-side handle on the event loop: schedule calls, survive its closing."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        self.loop = loop
        self.stop = stop

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.stop.set()


def name_for_the_kernel() -> None:
    """Give the calling thread its Python name in the kernel too, so ``top -H``,
    ``ps -L`` and ``/proc/PID/task/TID/comm`` tell the audio threads apart (Python 3.11
    leaves every thread named after the process). Written to the thread's own ``comm``
    (15 bytes at most), no ctypes; where /proc refuses it, the name stays as it was."""
    name = threading.current_thread().name.encode("ascii", "replace")[:15]
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as comm:
            comm.write(name)
    except OSError as exc:
        logger.debug("thread name %r not set: %s", name, exc)


def settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    """Complete the future a pipeline awaits (on the event loop), once."""
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


class DeviceRetry:
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

    def _reported(self, loop: ThreadLoop) -> None:
        if self._first_report is not None:
            loop.call(self._first_report)
            self._first_report = None

    def opened(self, loop: ThreadLoop) -> None:
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

    def failed(self, loop: ThreadLoop, exc: AudioError) -> float:
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
