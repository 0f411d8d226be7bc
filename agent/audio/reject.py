"""Counting and rate-limited logging of audio that cannot be used.

Bad audio from a peer (odd byte counts, wrong dtype, NaN) must never raise into
the link that delivered it: it is dropped, counted in
``audio_rejected_total{source=,reason=}`` and logged at most once per
``interval_s`` for each (source, reason), with how many were dropped meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.metrics import Metrics

logger = logging.getLogger(__name__)


class Rejections:
    """Thread-safe: the asyncio thread and the audio threads both report here."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger = logger,
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def reject(self, source: str, reason: str, detail: str) -> None:
        """Count one rejected chunk from ``source``; log it unless logged recently."""
        self._metrics.inc("audio_rejected_total", source=source, reason=reason)
        key = (source, reason)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            self._log.warning(
                "audio from %s rejected (%s): %s (%d more since the last report)",
                source,
                reason,
                detail,
                suppressed,
            )
        else:
            self._log.warning("audio from %s rejected (%s): %s", source, reason, detail)
