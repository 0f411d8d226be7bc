"""Downlink socket reads coalesced to the audio tick (issue #18, an experiment).

Each network arrival (VideoSDK room audio, Orgo audio) is a wakeup of the event loop
of its own, about 100/s next to the mic's 50. A :class:`ReadGate` keeps the media
connections' transports paused between mic periods: after each mic read on the loop
(:meth:`ReadGate.tick`) it resumes them, so whatever arrived since the last period is
read in the same wakeup (epoll returns at once, no extra sleep), and pauses them again
two loop passes later (the pass that reads them, then the one that hands the messages
to the links). Control traffic (pings, pongs, close frames, EOF) waits at most one
period. When ticks stop (the mic closed, handed to its thread, or stalled for
:data:`STALE_S`) every transport is resumed and reads as before.

An arrival's stamp (:meth:`ReadGate.arrival`) is the time the transports were last
paused: the earliest the bytes could have come (the socket was drained then), so the
arrival -> write latency measured from it is an upper bound, not hidden by the wait.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Protocol

STALE_S = 0.1  # no tick for this long: every transport reads freely again


class Pausable(Protocol):
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_closing(self) -> bool: ...


class FlowControl(Protocol):
    paused: bool  # websockets' Assembler: paused for its own backpressure


class ReadGate:
    """One per event loop (:func:`gate_for`); every method runs on that loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transports: dict[Pausable, FlowControl | None] = {}
        self._paused = False
        self._paused_at = time.monotonic()
        self._window_start: float | None = None  # None: not coalescing
        self._stale: asyncio.TimerHandle | None = None
        self.ticks = 0

    def register(self, transport: Pausable, flow: FlowControl | None = None) -> None:
        self._transports[transport] = flow

    def unregister(self, transport: Pausable) -> None:
        self._transports.pop(transport, None)
        if not transport.is_closing():
            transport.resume_reading()  # a no-op unless paused

    def run_after_reads(self, step: Callable[[], None]) -> None:
        """A mic period is ready: read what arrived since the last one, let the links
        hand it to the mixer, then pause the transports and run ``step`` (the mic read
        and the speaker's tick), all in this wakeup. At once with no transport."""
        self.ticks += 1
        if self._stale is not None:
            self._stale.cancel()
        self._stale = self._loop.call_later(STALE_S, self.stop)
        if not self._transports:
            step()
            return
        self._window_start = self._paused_at
        self._resume()
        # pass 2 reads the sockets (websockets parses), pass 3 runs the links' tasks
        # (recv() returns, audio pushed to the mixer), pass 4 pauses and steps
        self._loop.call_soon(self._loop.call_soon, self._loop.call_soon, self._finish, step)

    def _finish(self, step: Callable[[], None]) -> None:
        self._pause()
        step()

    def stop(self) -> None:
        """No more ticks for now: every transport reads freely."""
        if self._stale is not None:
            self._stale.cancel()
            self._stale = None
        self._window_start = None
        self._resume()

    def arrival(self, now: float | None = None) -> float:
        """The arrival stamp of a message read now (see the module's doc): ``now``
        (default: ``time.monotonic()``) unless the reads are coalesced."""
        if self._window_start is not None:
            return self._window_start
        return time.monotonic() if now is None else now

    def _resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        for transport, flow in self._transports.items():
            if not transport.is_closing() and not (flow is not None and flow.paused):
                transport.resume_reading()

    def _pause(self) -> None:
        if self._window_start is None or self._paused:
            return
        self._paused = True
        self._paused_at = time.monotonic()
        for transport in self._transports:
            if not transport.is_closing():
                transport.pause_reading()


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReadGate] = (
    weakref.WeakKeyDictionary()
)


def gate_for(loop: asyncio.AbstractEventLoop) -> ReadGate:
    """The read gate of ``loop`` (made on first use)."""
    gate = _GATES.get(loop)
    if gate is None:
        gate = _GATES[loop] = ReadGate(loop)
    return gate
