"""Adaptive playout (jitter) buffer for one downlink source.

A plain class with no locks, no clocks and no asyncio (like aiortc's
``jitterbuffer.py``): the mixer owns one per source, feeds it audio already
converted to the output rate and channel count, and pulls exactly one period per
render. Time is counted in rendered periods, so tests drive it deterministically.
Samples are kept as float32 (int16-scaled): the mixer sums in float and
saturates once, when it converts the mix to int16.

Policy:

- **Prebuffer**: after starting or running dry, output resumes once the buffered
  audio reaches ``target`` (or when no new audio came for ``tail_periods``
  renders, so the tail of an utterance is played, never held back to go stale).
- **Underrun**: running dry while playing is an underrun if audio comes back
  within ``late_ms`` (it was late, not finished): the target grows by ``grow_ms``
  up to ``max_target_ms``. A source that simply stopped plays silence and leaves
  the target alone.
- **Catch-up**: when output resumes after an underrun with more than
  ``target + 1 period`` buffered (the late packets arrived as a burst), the oldest
  surplus is dropped: it is late already.
- **Reset**: when the audio already buffered as a chunk arrives exceeds ``target``
  by more than ``reset_excess_ms`` (the sender's clock runs fast, or it bursts),
  drop the oldest audio down to ``target``. The arriving chunk itself is not
  counted, so a sender of large chunks is not mistaken for drift.
- **Stall**: the same drop, when the chunks that piled up arrived over at least
  ``stall_ms`` with no render in between, is the renderer's doing, not the sender's
  (a speaker that is starting, stalled or missing): it is counted as a stall, not a
  reset, so that a jitter reset keeps meaning "the network or the sender". A burst
  from the network arrives within a period, between two renders, and stays a reset.
- **Trim**: if the buffer (measured before each pull) never fell below
  ``target + 1 period`` during a whole ``trim_window_ms``, the surplus is unused
  latency and is dropped.
- **Shrink**: after ``shrink_after_ms`` without an underrun the target steps down
  by ``shrink_step_ms``, never below ``min_target_ms``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.pcm import FRAME_MS, samples_per_frame

logger = logging.getLogger(__name__)

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class JitterPolicy:
    """Tuning of :class:`JitterBuffer`; every duration in milliseconds."""

    min_target_ms: float = 40.0  # the starting target, and the floor it shrinks back to
    max_target_ms: float = 300.0  # the target never grows beyond this
    grow_ms: float = 20.0  # target increase per underrun
    shrink_step_ms: float = 10.0  # target decrease per quiet interval
    shrink_after_ms: float = 10_000.0  # underrun-free audio before each decrease
    reset_excess_ms: float = 150.0  # buffered beyond target + this -> reset to target
    trim_window_ms: float = 2_000.0  # surplus unused this long is dropped
    late_ms: float = 500.0  # audio returning within this after running dry = underrun
    stall_ms: float = 100.0  # pushes this far apart with no render between: a stall
    tail_periods: int = 2  # renders without new audio before a partial prebuffer plays
    capacity_ms: float = 2_000.0  # hard limit of buffered audio
    latency_samples: int = 500  # arrival->render latencies kept


class JitterBuffer:
    """Ring buffer of interleaved (int16-scaled float32) samples at one rate and channel count."""

    def __init__(self, rate: int, channels: int = 1, policy: JitterPolicy | None = None) -> None:
        self.rate = rate
        self.channels = channels
        self.policy = p = policy or JitterPolicy()
        self.period = samples_per_frame(rate)  # samples per channel per render
        self._ms = rate / 1000.0  # samples per channel per millisecond
        self.capacity = max(int(p.capacity_ms * self._ms), 4 * self.period)
        self._ring = np.zeros(self.capacity * channels, np.float32)
        self._read = 0  # absolute sample indices (per channel)
        self._write = 0
        self.target = self._samples(p.min_target_ms)
        self.playing = False
        self._renders = 0
        self._periods_since_push = 0
        self._dry_since: int | None = None  # render count when the buffer ran dry
        self._render_mark = 0  # the render count at the first push since a render
        self._unrendered_since: float | None = None  # that push's arrival time
        self._late = False  # the audio now buffered came back after an underrun
        self._since_underrun = 0  # renders since the last underrun (for shrinking)
        self._window_min: int | None = None  # lowest depth seen in this trim window
        self._window_renders = 0
        self._arrivals: deque[tuple[int, float]] = deque()  # (write index after, t_arrival)
        self._latencies: deque[float] = deque(maxlen=p.latency_samples)
        # event counters, read by the mixer
        self.underruns = 0
        self.resets = 0
        self.stalls = 0  # resets while nothing rendered (see "Stall")
        self.dropped = 0  # samples per channel dropped (catch-up, reset, trim, overflow)
        self.latency_count = 0  # latencies recorded so far (the deque keeps the last ones)
        self.periods_played = 0  # renders that took audio from this buffer

    # -- views ---------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Buffered samples per channel."""
        return self._write - self._read

    @property
    def depth_ms(self) -> float:
        return self.depth / self._ms

    @property
    def target_ms(self) -> float:
        return self.target / self._ms

    def latencies(self) -> list[float]:
        """Recent arrival->render latencies in seconds (oldest first)."""
        return list(self._latencies)

    # -- input ---------------------------------------------------------------------
    def push(self, samples: npt.NDArray[np.float32 | np.int16], t_arrival: float) -> None:
        """Append interleaved samples (``len % channels == 0``) that arrived at ``t_arrival``."""
        n = samples.size // self.channels
        if n == 0:
            return
        p = self.policy
        if self._dry_since is not None:
            if self._renders - self._dry_since <= p.late_ms / FRAME_MS:
                self._underrun()
            self._dry_since = None
        if self._unrendered_since is None or self._renders != self._render_mark:
            self._render_mark, self._unrendered_since = self._renders, t_arrival
        if self.depth > self.target + self._samples(p.reset_excess_ms):
            self._drop(self.depth - self.target)
            if (t_arrival - self._unrendered_since) * 1000.0 >= p.stall_ms:
                self.stalls += 1
            else:
                self.resets += 1
        if n > self.capacity:  # keep the newest part only
            samples = samples[-self.capacity * self.channels :]
            self._drop(self.depth + n - self.capacity)
            n = self.capacity
        elif self.depth + n > self.capacity:
            self._drop(self.depth + n - self.capacity)
        start = (self._write % self.capacity) * self.channels
        end = start + n * self.channels
        if end <= self._ring.size:
            self._ring[start:end] = samples
        else:
            first = self._ring.size - start
            self._ring[start:] = samples[:first]
            self._ring[: end - self._ring.size] = samples[first:]
        self._write += n
        self._arrivals.append((self._write, t_arrival))
        self._periods_since_push = 0

    # -- output --------------------------------------------------------------------
    def pull(self, now: float) -> Floats | None:
        """One period of audio for the render at ``now``; None while silent.

        A partial period (the end of the audio) is padded with zeros.
        """
        out = np.zeros(self.period * self.channels, np.float32)
        return out if self.pull_into(out, now) else None

    def pull_into(self, acc: Floats, now: float) -> bool:
        """Add one period for the render at ``now`` into ``acc``; False while silent."""
        self._renders += 1
        self._periods_since_push += 1
        self._since_underrun += 1
        self._maybe_shrink()
        depth = self.depth
        if not self.playing:
            if depth == 0:
                return False
            ready = depth >= self.target or self._periods_since_push > self.policy.tail_periods
            if not ready:
                return False
            self.playing = True
            self._window_min, self._window_renders = None, 0
            if self._late and depth > self.target + self.period:  # late burst: catch up
                self._drop(depth - self.target)
                depth = self.depth
            self._late = False
        else:
            self._track_surplus(depth)
            depth = self.depth
        if depth == 0:
            self._run_dry()
            return False
        n = min(depth, self.period)
        self._add_out(acc, n)
        self.periods_played += 1
        self._record_latency(now)
        self._read += n
        if n < self.period:
            self._run_dry()
        return True

    # -- internals -----------------------------------------------------------------
    def _samples(self, ms: float) -> int:
        return round(ms * self._ms)

    def _add_out(self, acc: Floats, n: int) -> None:
        start = (self._read % self.capacity) * self.channels
        end = start + n * self.channels
        ring = self._ring
        if end <= ring.size:
            if n == self.period:
                np.add(acc, ring[start:end], out=acc)
            else:
                np.add(acc[: end - start], ring[start:end], out=acc[: end - start])
        else:
            first = ring.size - start
            np.add(acc[:first], ring[start:], out=acc[:first])
            rest = end - ring.size
            np.add(acc[first : first + rest], ring[:rest], out=acc[first : first + rest])

    def _record_latency(self, now: float) -> None:
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= self._read:
            arrivals.popleft()
        if arrivals:
            self._latencies.append(now - arrivals[0][1])
            self.latency_count += 1

    def _drop(self, n: int) -> None:
        n = min(n, self.depth)
        if n > 0:
            self._read += n
            self.dropped += n
            while self._arrivals and self._arrivals[0][0] <= self._read:
                self._arrivals.popleft()

    def _run_dry(self) -> None:
        self.playing = False
        self._dry_since = self._renders

    def _underrun(self) -> None:
        self.underruns += 1
        self._late = True
        self._since_underrun = 0
        self.target = min(self.target + self._samples(self.policy.grow_ms), self._max_target)

    @property
    def _max_target(self) -> int:
        return self._samples(self.policy.max_target_ms)

    def _maybe_shrink(self) -> None:
        p = self.policy
        if self._since_underrun * FRAME_MS >= p.shrink_after_ms:
            self._since_underrun = 0
            floor = self._samples(p.min_target_ms)
            self.target = max(floor, self.target - self._samples(p.shrink_step_ms))

    def _track_surplus(self, depth: int) -> None:
        """Drop latency the link has not needed for a whole trim window."""
        self._window_min = depth if self._window_min is None else min(self._window_min, depth)
        self._window_renders += 1
        if self._window_renders * FRAME_MS < self.policy.trim_window_ms:
            return
        surplus = self._window_min - self.target
        self._window_min, self._window_renders = None, 0
        if surplus >= self.period:
            self._drop(surplus)
