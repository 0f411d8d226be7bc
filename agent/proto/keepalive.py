"""The application-level ping schedule of the client links (Orgo, FastRTC), no I/O.

Both peers define their own ``ping``/``pong`` messages on top of WebSocket, and a link
must notice a peer that stopped answering even while the TCP connection looks alive.
:class:`Keepalive` is that schedule, driven by the caller's clock::

    ka = Keepalive(interval_s=30, timeout_s=10, now=now)
    ka.next_deadline()        # when to look again (the next ping, or the pong's deadline)
    if ka.poll(now): send(ping)   # raises NoPong once a pong is overdue
    ka.pong()                 # the peer answered
"""

from __future__ import annotations

from agent.errors import LinkError

IDLE_BEAT_S = 1.0  # longest wait on a quiet connection without a heartbeat


class NoPong(LinkError):
    """No `pong` arrived in time after a `ping`: the connection is dead."""


class Keepalive:
    def __init__(
        self, interval_s: float, timeout_s: float, now: float, *, awaiting_pong: bool = False
    ) -> None:
        """``awaiting_pong``: a ping already went out with the session's first message."""
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.next_ping = now + interval_s
        self.pong_due: float | None = now + timeout_s if awaiting_pong else None

    def next_deadline(self) -> float:
        return self.next_ping if self.pong_due is None else min(self.next_ping, self.pong_due)

    def poll(self, now: float) -> bool:
        """Raise NoPong if the pong is overdue; True when a ping is to be sent now (the
        schedule counts it as sent)."""
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


def wait_s(deadline: float, now: float) -> float:
    """How long to wait for a message: until ``deadline``, at most IDLE_BEAT_S (a quiet
    but healthy link still beats its heartbeat)."""
    return min(max(0.0, deadline - now), IDLE_BEAT_S)
