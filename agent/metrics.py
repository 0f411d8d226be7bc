"""Counters and gauges shared by every part of the agent.

A deliberately small, thread-safe registry: the audio threads, gpiozero's
threads and the event loop all count into it. Exposition (Prometheus text on
``metrics.listen``) is built on top of :meth:`Metrics.snapshot`.

Names follow Prometheus conventions: ``*_total`` for counters, plain names for
gauges. Labels are keyword arguments::

    metrics.inc("frames_dropped_total", link="videosdk", reason="link_down")
    metrics.set("jitter_depth_ms", 40.0, source="orgo")

Observations (latencies) go into rolling windows of the last ``WINDOW`` values per
series, exported as Prometheus summaries (median and p99 of the window, with a
running count and sum)::

    metrics.observe("uplink_latency_seconds", 0.0004, link="videosdk")
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

LabelKey = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, LabelKey]

WINDOW = 3000  # observations kept per series (60 s of 20 ms frames)


@dataclass
class Window:
    """A rolling window of observations plus running totals (a Prometheus summary)."""

    values: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    count: int = 0  # every observation ever made
    sum: float = 0.0


def _key(name: str, labels: Mapping[str, str]) -> SeriesKey:
    return name, tuple(sorted(labels.items()))


class Metrics:
    """A registry of monotonically increasing counters and settable gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[SeriesKey, float] = {}
        self._gauges: dict[SeriesKey, float] = {}
        self._windows: dict[SeriesKey, Window] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to the counter ``name`` with ``labels``."""
        key = _key(name, labels)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set the gauge ``name`` with ``labels`` to ``value``."""
        with self._lock:
            self._gauges[_key(name, labels)] = value

    def get(self, name: str, **labels: str) -> float:
        """The current value of one series (0 when never touched)."""
        key = _key(name, labels)
        with self._lock:
            return self._counters.get(key, self._gauges.get(key, 0))

    def total(self, name: str, **labels: str) -> float:
        """Sum of every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        with self._lock:
            return sum(
                v
                for (n, lk), v in (*self._counters.items(), *self._gauges.items())
                if n == name and want <= set(lk)
            )

    def snapshot(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every series, grouped by name: ``{name: [(labels, value), ...]}``."""
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        with self._lock:
            for (name, lk), v in sorted((*self._counters.items(), *self._gauges.items())):
                out.setdefault(name, []).append((dict(lk), v))
        return out

    def counter_names(self) -> frozenset[str]:
        with self._lock:
            return frozenset(n for n, _ in self._counters)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (e.g. a latency in seconds) of ``name`` with ``labels``."""
        key = _key(name, labels)
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = Window()
            window.values.append(value)
            window.count += 1
            window.sum += value

    def windows(self) -> dict[str, list[tuple[dict[str, str], Window]]]:
        """Every observed series, grouped by name; each Window is a copy."""
        out: dict[str, list[tuple[dict[str, str], Window]]] = {}
        with self._lock:
            for (name, lk), w in sorted(self._windows.items(), key=lambda kv: kv[0]):
                copy = Window(deque(w.values, maxlen=w.values.maxlen), w.count, w.sum)
                out.setdefault(name, []).append((dict(lk), copy))
        return out


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (NaN for an empty one)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]
