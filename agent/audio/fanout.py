"""Distribution of uplink frames to the links.

:class:`Fanout` hands each captured (PTT-gated) frame to every subscribed link
through its own bounded queue; a link that falls behind loses its oldest frames
(counted), never the others' and never unbounded memory.
"""

from __future__ import annotations

import asyncio

from agent.metrics import Metrics
from agent.pcm import Frame


class Fanout:
    """Broadcast frames to per-link bounded queues, dropping the oldest when full."""

    def __init__(self, metrics: Metrics, *, maxsize: int = 25) -> None:
        self._metrics = metrics
        self._maxsize = maxsize
        self._queues: dict[str, asyncio.Queue[Frame]] = {}

    def subscribe(self, name: str) -> asyncio.Queue[Frame]:
        """A fresh queue for link ``name`` (replacing an earlier one)."""
        q: asyncio.Queue[Frame] = asyncio.Queue(self._maxsize)
        self._queues[name] = q
        return q

    def unsubscribe(self, name: str) -> None:
        self._queues.pop(name, None)

    def publish(self, frame: Frame) -> None:
        """Offer ``frame`` to every subscriber (event-loop thread only)."""
        for name, q in self._queues.items():
            if q.full():
                q.get_nowait()
                self._metrics.inc("frames_dropped_total", link=name, reason="queue_full")
            q.put_nowait(frame)
