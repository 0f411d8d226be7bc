"""Time the device can trust: the servers' clock, and steps of its own.

A field device has no real-time clock. Until NTP has synced (and without a network it
never does) its wall clock can be anything: 1970, the last shutdown, hours off. Two
things here keep that from locking a link out, with no I/O:

- :class:`ServerClock` learns the offset between the local wall clock and a server's
  from the HTTP ``Date`` header of every REST reply (RFC 9110; one-second resolution,
  which is plenty for a JWT that lives five minutes). :meth:`ServerClock.now` is the
  wall time to mint tokens with: the server's when the local clock is off by more
  than :data:`TRUST_LOCAL_WITHIN_S`, the local one otherwise (so a synced device
  behaves exactly as before).
- :class:`StepDetector` notices when the wall clock jumps against the monotonic one
  (NTP stepping it after boot, a person running ``date -s``): whatever was minted or
  decided with the old wall time is stale, and a link waiting out a slow credential
  backoff should retry now.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

TRUST_LOCAL_WITHIN_S = 30.0  # offsets below this are network delay and Date rounding
STEP_S = 2.0  # a wall-vs-monotonic jump larger than this is a clock step


def parse_http_date(value: str | None) -> float | None:
    """Epoch seconds of an HTTP ``Date`` header; None if absent or not a date."""
    if not value or len(value) > 64:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # RFC 9110 dates are GMT; a bare one is taken as such
        return None
    stamp = parsed.timestamp()
    return stamp if math.isfinite(stamp) and stamp > 0 else None


def describe_offset(offset_s: float) -> str:
    """``'3 h 2 min'``, ``'12 min'``, ``'45 s'``, ``'20602 days'``: the size of an offset."""
    s = abs(offset_s)
    if s >= 86400 * 2:
        amount = f"{s / 86400:.0f} days"
    elif s >= 3600 - 30:  # to the nearest minute: Date headers have 1 s resolution
        minutes = round(s / 60)
        amount = f"{minutes // 60} h {minutes % 60} min"
    elif s >= 60:
        amount = f"{s / 60:.0f} min"
    else:
        amount = f"{s:.0f} s"
    return amount


@dataclass(frozen=True, slots=True)
class Offset:
    """What one server's replies say about the local clock."""

    seconds: float  # server time - local wall time (positive: the local clock is behind)
    server: str  # who said so (a host name, for the log line)

    @property
    def large(self) -> bool:
        return abs(self.seconds) > TRUST_LOCAL_WITHIN_S

    def message(self) -> str:
        """``'clock is off by 3 h 2 min (behind api.videosdk.live; not synced?)'``"""
        way = "behind" if self.seconds > 0 else "ahead of"
        return f"clock is off by {describe_offset(self.seconds)} ({way} {self.server}; not synced?)"


class ServerClock:
    """Wall time corrected by the servers' ``Date`` headers when the local clock is off."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.offset: Offset | None = None

    def observe(self, date_header: str | None, server: str, *, sent_at: float) -> Offset | None:
        """Learn from one reply. ``sent_at``: local wall time when the request went out;
        the reply was dated somewhere between then and now, so the midpoint is used.
        Returns the new offset, or None if the header says nothing usable."""
        stamp = parse_http_date(date_header)
        if stamp is None:
            return None
        local = (sent_at + self._wall()) / 2
        # Date has 1 s resolution (truncated): the server's real time is in [stamp, stamp+1)
        self.offset = Offset(stamp + 0.5 - local, server)
        return self.offset

    def now(self) -> float:
        """The wall time to stamp credentials with."""
        off = self.offset
        if off is not None and off.large:
            return self._wall() + off.seconds
        return self._wall()


class StepDetector:
    """Tells when the wall clock stepped against the monotonic clock since last asked."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        step_s: float = STEP_S,
    ) -> None:
        self._wall, self._mono, self._step_s = wall, mono, step_s
        self._base = wall() - mono()

    def stepped(self) -> float:
        """The size of the step (seconds, signed) since the last call, or 0.0."""
        base = self._wall() - self._mono()
        jump = base - self._base
        self._base = base
        return jump if abs(jump) > self._step_s else 0.0
