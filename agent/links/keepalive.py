"""The application-level ping schedule shared by the client links (Orgo, FastRTC).

Both peers define their own ``ping``/``pong`` messages on top of WebSocket, and a link
must notice a peer that stopped answering even while the TCP connection looks alive.
:class:`AppPing` is that schedule, with no I/O: the link waits for a message for at
most :meth:`AppPing.wait_s`, calls :meth:`AppPing.due` when the wait times out (it
raises :class:`NoPong` once a pong is overdue, and says when to send the next ping),
and :meth:`AppPing.pong` when the peer answered.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.errors import LinkError

IDLE_BEAT_S = 1.0  # longest wait on a quiet connection without a heartbeat


class NoPong(LinkError):
    """No `pong` arrived in time after a `ping`: the connection is dead."""


class AppPing:
    def __init__(
        self,
        clock: Callable[[], float],
        interval_s: float,
        timeout_s: float,
        *,
        awaiting_pong: bool = False,
    ) -> None:
        """``awaiting_pong``: a ping already went out with the session's first message."""
        self._clock = clock
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        now = clock()
        self.next_ping = now + interval_s
        self.pong_due: float | None = now + timeout_s if awaiting_pong else None

    def wait_s(self) -> float:
        """How long to wait for a message: until the next deadline, at most IDLE_BEAT_S
        (a quiet but healthy link still beats its heartbeat)."""
        wake = self.next_ping if self.pong_due is None else min(self.next_ping, self.pong_due)
        return min(max(0.0, wake - self._clock()), IDLE_BEAT_S)

    def due(self) -> bool:
        """After a wait timed out: raise NoPong if the pong is overdue; True when a ping
        is to be sent now (the schedule already counts it as sent)."""
        now = self._clock()
        if self.pong_due is not None and now >= self.pong_due:
            raise NoPong(f"no pong within {self.timeout_s:g} s")
        if now < self.next_ping:
            return False
        if self.pong_due is None:
            self.pong_due = now + self.timeout_s
        self.next_ping = now + self.interval_s
        return True

    def pong(self) -> None:
        self.pong_due = None
