"""Level meter (dBFS) and an energy voice-activity detector with hangover (VOX).

dBFS here is the RMS level relative to a full-scale *square* wave: a full-scale
sine reads -3.01 dBFS, a sine with peak 3277 about -23 dBFS. Digital silence
reads :data:`~agent.pcm.SILENCE_DBFS` (a finite floor, so it can go into JSON and math).
"""

from __future__ import annotations

import logging
import math

from agent.pcm import SILENCE_DBFS, UPLINK_RATE, Pcm, dbfs

logger = logging.getLogger(__name__)


class Vad:
    """Energy VAD: voiced while the level is at or above ``threshold_dbfs``, and for
    ``hangover_ms`` of audio after it last was (so pauses between words do not
    chop the transmission).

    Time is counted in audio (chunk length / ``rate``), not wall clock, so the
    behaviour is the same for paced and unpaced sources.
    """

    def __init__(self, threshold_dbfs: float, hangover_ms: float, *, rate: int = UPLINK_RATE):
        if hangover_ms < 0:
            raise ValueError(f"hangover_ms must be >= 0, got {hangover_ms}")
        self.threshold_dbfs = threshold_dbfs
        self.hangover_ms = hangover_ms
        self.rate = rate
        self._since_voice_ms = math.inf
        self.active = False
        self.level_dbfs = SILENCE_DBFS

    def update(self, pcm: Pcm) -> bool:
        """Feed one chunk; True while voice (or its hangover) is present."""
        self.level_dbfs = dbfs(pcm)
        if self.level_dbfs >= self.threshold_dbfs:
            self._since_voice_ms = 0.0
            self.active = True
        else:
            self._since_voice_ms += 1000.0 * pcm.size / self.rate
            self.active = self._since_voice_ms <= self.hangover_ms
        return self.active

    def reset(self) -> None:
        self._since_voice_ms = math.inf
        self.active = False
