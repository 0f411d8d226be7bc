"""The VideoSDK ingest session rules, with no I/O (the link only moves their strings).

:class:`IngestSession` (in :mod:`agent.proto.videosdk`) says whether a ``wsUrl`` is
still fresh enough to use. :class:`RoomSession` holds what must be true of each
connection and across them::

    flow = RoomSession(topics, outbox_size=32, status_interval_s=0.25, silence_s=65)
    for text in flow.opening(now): send(text)         # `start` first, then one
                                                     # `subscribe` per topic
    event = flow.receive(raw, now)                   # decoded (MalformedMessage)
    flow.heard(now)                                  # any byte at all (pings too)
    note = flow.silent(now)                          # "server silent for 66 s" / None
    flow.queue(text) ; flow.status_changed()         # topic messages, status updates
    text = flow.next_message() ; flow.sent()         # the outbox, oldest first,
                                                     # removed only once sent
    text = flow.status_due(now, render)              # the latest status, at most one per
                                                     # interval (coalesced)
    flow.next_deadline(now)                          # when to look again

Messages queued while the link is down wait in the outbox (bounded) and go out at
the next connection, after ``start`` and the subscriptions.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

from agent.errors import ProtocolError
from agent.proto.videosdk import Event, check_topic, decode, encode_start, encode_subscribe


def valid_topics(wanted: Iterable[str]) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """The topics we may subscribe to (deduplicated, in order), and the refused ones
    with why."""
    topics: list[str] = []
    refused: list[tuple[str, str]] = []
    for topic in dict.fromkeys(wanted):
        try:
            topics.append(check_topic(topic))
        except ProtocolError as e:
            refused.append((topic[:140], str(e)))
    return tuple(topics), refused


class RoomSession:
    """One link's room protocol state: connection opening, liveness, outbox, status."""

    def __init__(
        self,
        topics: tuple[str, ...],
        *,
        outbox_size: int,
        status_interval_s: float,
        silence_s: float,
        publishes_status: bool,
    ) -> None:
        self.topics, self.outbox_size = topics, outbox_size
        self.status_interval_s, self.silence_s = status_interval_s, silence_s
        self._outbox: collections.deque[str] = collections.deque()
        self._status_dirty = publishes_status
        self._publishes_status = publishes_status
        self._status_sent_at = -1e18
        self._last_rx = 0.0

    # -- a connection ------------------------------------------------------------------
    def opening(self, now: float) -> list[str]:
        """What a new connection sends first: `start` (media may follow only after it),
        then a `subscribe` per topic."""
        self._last_rx = now
        return [encode_start(), *(encode_subscribe(t) for t in self.topics)]

    def heard(self, now: float) -> None:
        """The server sent something (a data frame, a ping, a pong)."""
        self._last_rx = max(self._last_rx, now)

    def receive(self, raw: str | bytes, now: float) -> Event:
        """One server frame, decoded; raises MalformedMessage."""
        self.heard(now)
        return decode(raw)

    def silent(self, now: float) -> str | None:
        """Why to drop the connection when the server has been silent too long."""
        quiet = now - self._last_rx
        return f"server silent for {quiet:.0f} s" if quiet > self.silence_s else None

    # -- messages ----------------------------------------------------------------------
    def queue(self, text: str) -> bool:
        """Keep an encoded topic message for sending; False when the outbox is full."""
        if len(self._outbox) >= self.outbox_size:
            return False
        self._outbox.append(text)
        return True

    @property
    def waiting(self) -> int:
        return len(self._outbox)

    def next_message(self) -> str | None:
        """The oldest unsent message (it stays queued until :meth:`sent`)."""
        return self._outbox[0] if self._outbox else None

    def sent(self) -> None:
        self._outbox.popleft()

    def status_changed(self) -> None:
        if self._publishes_status:
            self._status_dirty = True

    def status_wait(self, now: float) -> float | None:
        """None: no status to publish; else seconds until it may go (0: now)."""
        if not self._status_dirty:
            return None
        return max(0.0, self._status_sent_at + self.status_interval_s - now)

    def status_due(self, now: float, render: Callable[[], str | None]) -> str | None:
        """The status message to send now (coalesced: the latest state only), or None."""
        wait = self.status_wait(now)
        if wait is None or wait > 0:
            return None
        self._status_dirty = False
        text = render()
        if text is not None:
            self._status_sent_at = now
        return text

    def next_deadline(self, now: float) -> float:
        """The next moment something is due: the silence limit, or a coalesced status."""
        deadline = self._last_rx + self.silence_s
        wait = self.status_wait(now)
        return deadline if wait is None else min(deadline, now + wait)
