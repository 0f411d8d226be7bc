"""The uplink frame and its distribution to links.

Every uplink carries 20 ms frames of 8 kHz mono PCM16 (160 samples), stamped
with the capture clock. :class:`Fanout` hands each frame to every subscribed
link through its own bounded queue; a link that falls behind loses its oldest
frames (counted), never the others' and never unbounded memory.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.metrics import Metrics

logger = logging.getLogger(__name__)

UPLINK_RATE = 8000  # Hz, fixed by the VideoSDK ingest
FRAME_MS = 20
FRAMES_PER_S = 1000 // FRAME_MS

Pcm = npt.NDArray[np.int16]


def samples_per_frame(rate: int) -> int:
    """Samples per channel in one 20 ms frame at ``rate`` Hz."""
    return rate * FRAME_MS // 1000


UPLINK_SAMPLES = samples_per_frame(UPLINK_RATE)  # 160


@dataclass(frozen=True, slots=True)
class Frame:
    """One 20 ms uplink frame."""

    pcm: Pcm  # mono int16, UPLINK_SAMPLES long
    seq: int  # capture frame counter, +1 per frame
    t_capture: float  # time.monotonic() when the frame left the capture device
    voiced: bool = True  # False when the PTT gate replaced it with silence

    @classmethod
    def silence(cls, seq: int, t_capture: float) -> Frame:
        return cls(np.zeros(UPLINK_SAMPLES, np.int16), seq, t_capture, voiced=False)


class PcmSink(Protocol):
    """Where a link delivers downlink audio: one mixer source (see agent.audio.mixer)."""

    def push(self, pcm: Pcm, t_arrival: float | None = None) -> None:
        """Queue interleaved int16 samples at the source's rate and channel count.

        ``t_arrival`` is time.monotonic() when the bytes arrived (for latency
        measurement); None means now.
        """
        ...


class SourceFactory(Protocol):
    """The mixer as links see it: sources come and go, each with its own format."""

    def add_source(self, name: str, rate: int, channels: int = 1) -> PcmSink:
        """Create (or re-create, with a new format) the source ``name``."""
        ...

    def remove_source(self, name: str) -> None:
        """Remove the source ``name``; unknown names are ignored."""
        ...


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
