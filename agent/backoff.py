"""Reconnect policy shared by every link.

Two pieces, as in python-websockets: a pure :func:`backoff` generator of delays
(exponential, with jitter, capped) and a small :class:`Reconnector` that owns one
generator per link, resets it after a healthy connection, and switches to a slow
fixed cadence for failures a retry cannot fix quickly (auth refused).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_s: float = 0.2  # first retry (before jitter); < 0.5 s after a drop
    factor: float = 2.0
    cap_s: float = 30.0  # longest delay for ordinary failures
    jitter: float = 0.3  # each delay is scaled by a random factor in [1 - jitter, 1]
    # A connection that carried traffic this long resets the sequence. Not a minute: a
    # server restarted every few seconds must still see us back within ~0.5 s, while a
    # link that drops right after connecting (flapping) still backs off.
    healthy_after_s: float = 5.0
    slow_s: float = 120.0  # delay after a refusal a retry cannot fix (auth)


def backoff(policy: BackoffPolicy, rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Yield delays: initial, initial*factor, ... capped, each with downward jitter."""
    delay = policy.initial_s
    while True:
        yield delay * (1.0 - policy.jitter * rng())
        delay = min(delay * policy.factor, policy.cap_s)


class Reconnector:
    """Decides how long a link waits before its next attempt."""

    def __init__(
        self,
        policy: BackoffPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy or BackoffPolicy()
        self._clock = clock
        self._rng = rng
        self._delays = backoff(self.policy, rng)
        self._up_since: float | None = None
        self.attempts = 0

    def connected(self) -> None:
        """Call when a connection is up and healthy."""
        self._up_since = self._clock()

    def reset(self) -> None:
        """Start the sequence again (conditions changed: the network came back)."""
        self._delays = backoff(self.policy, self._rng)
        self._up_since = None

    def next_delay(self, *, slow: bool = False, at_least_s: float = 0.0) -> float:
        """Delay before the next attempt after a failure or a drop.

        ``slow``: the failure needs a person (auth refused): wait ``slow_s``.
        ``at_least_s``: a floor the peer asked for (e.g. a concurrency refusal).
        """
        if (
            self._up_since is not None
            and self._clock() - self._up_since >= self.policy.healthy_after_s
        ):
            self._delays = backoff(self.policy, self._rng)
        self._up_since = None
        self.attempts += 1
        delay = next(self._delays)
        if slow:
            delay = max(delay, self.policy.slow_s * (1.0 - self.policy.jitter * self._rng()))
        return max(delay, at_least_s)
