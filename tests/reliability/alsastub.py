"""A stand-in for ``alsaaudio.PCM`` behind the real :mod:`agent.hw.alsa` ports.

The agent's own ALSA code (error classification, xrun recovery, reopening) runs
unchanged; only the C library's answers are scripted, per device name:

- ``unplug(name)`` / ``plug(name)``: opening fails and I/O on an open handle fails
  with "No such device" (ENODEV), as when a USB card is pulled;
- ``busy(name)``: opening fails with "Device or resource busy" (EBUSY); with
  ``exclusive=True`` a device already open elsewhere is busy too (a stuck handle);
- ``storm(name, p)``: each read/write returns -EPIPE (over/underrun) with probability p;
- ``native(name, rate, channels)``: the device runs only at that rate and channel
  count, whatever is asked (alsa-lib's ``set_*_near``, as a ``hw:`` USB mic does).

Reads are paced at the 20 ms period like a sound card; a playback handle drains a
four-period buffer in real time, tells its room (``avail()``) and blocks a write only
while the buffer is full, as alsa-lib does, so the speaker can be fed from the mic's
clock (agent/audio/duplex.py). There are no poll descriptors (``polldescriptors()`` is
empty): the mic is read by the capture thread. Captured audio is a 1 kHz tone at -20 dBFS.
"""

from __future__ import annotations

import errno
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import alsaaudio
import numpy as np

FRAME_S = 0.02


@dataclass
class DeviceState:
    plugged: bool = True
    busy: bool = False
    storm: float = 0.0  # probability of -EPIPE per period
    opens: int = 0  # successful opens
    refused: int = 0  # opens refused (gone or busy)
    open_handles: int = 0
    periods: int = 0  # periods read or written successfully
    xruns: int = 0  # -EPIPE returned
    energy: list[float] = field(default_factory=list)  # RMS of recent written periods
    native_rate: int | None = None  # the only rate it runs at (None: any)
    native_channels: int | None = None


class AlsaStub:
    def __init__(self, *, exclusive: bool = True, seed: int = 1) -> None:
        self.exclusive = exclusive
        self.devices: dict[str, DeviceState] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def dev(self, name: str) -> DeviceState:
        with self._lock:
            return self.devices.setdefault(name, DeviceState())

    def unplug(self, name: str) -> None:
        self.dev(name).plugged = False

    def plug(self, name: str) -> None:
        self.dev(name).plugged = True

    def busy(self, name: str, on: bool = True) -> None:
        self.dev(name).busy = on

    def storm(self, name: str, p: float) -> None:
        self.dev(name).storm = p

    def native(self, name: str, rate: int, channels: int) -> None:
        d = self.dev(name)
        d.native_rate, d.native_channels = rate, channels

    def xrun(self, name: str) -> bool:
        d = self.dev(name)
        with self._lock:
            hit = d.storm > 0 and self._rng.random() < d.storm
        if hit:
            d.xruns += 1
        return hit

    # -- what agent.hw.alsa calls ----------------------------------------------------
    def pcm(self, **kw: Any) -> StubPcm:
        name = kw["device"]
        d = self.dev(name)
        with self._lock:
            if not d.plugged:
                d.refused += 1
                raise alsaaudio.ALSAAudioError(f"No such device [{name}]")
            if d.busy or (self.exclusive and d.open_handles):
                d.refused += 1
                raise alsaaudio.ALSAAudioError(f"Device or resource busy [{name}]")
            d.opens += 1
            d.open_handles += 1
        return StubPcm(self, name, kw)


class StubPcm:
    def __init__(self, stub: AlsaStub, name: str, kw: dict[str, Any]) -> None:
        self.stub, self.name = stub, name
        d = stub.dev(name)
        self.rate = d.native_rate or int(kw["rate"])
        self.channels = d.native_channels or int(kw["channels"])
        self.capture = kw["type"] == alsaaudio.PCM_CAPTURE
        # alsa-lib keeps the period's duration near what was asked at the asked rate
        self.period = round(int(kw["periodsize"]) * self.rate / int(kw["rate"]))
        self._t0 = time.monotonic()
        self._n = 0
        self._phase = 0
        self._open = True
        self.buffer = self.period * 4
        self._queued = 0.0  # playback: frames in the device buffer at _t_drain
        self._t_drain: float | None = None  # None: stopped (not started, or ran dry)

    def info(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "channels": self.channels,
            "period_size": self.period,
            "buffer_size": self.period * 4,
        }

    def _pace(self) -> None:
        self._n += 1
        delay = self._t0 + self._n * self.period / self.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.2:
            self._t0, self._n = time.monotonic(), 0

    def _check(self) -> None:
        if not self._open:
            raise alsaaudio.ALSAAudioError(f"File descriptor in bad state [{self.name}]")
        if not self.stub.dev(self.name).plugged:
            raise alsaaudio.ALSAAudioError(f"No such device [{self.name}]")

    def polldescriptors(self) -> list[tuple[int, int]]:
        self._check()
        return []

    def _drain(self) -> float:
        """Playback: frames still queued now (the buffer plays out in real time)."""
        now = time.monotonic()
        if self._t_drain is not None:
            self._queued = max(0.0, self._queued - (now - self._t_drain) * self.rate)
            self._t_drain = now if self._queued > 0 else None
        return self._queued

    def avail(self) -> int:
        self._check()
        return self.buffer - math.ceil(self._drain())

    def read(self) -> tuple[int, bytes]:
        self._check()
        self._pace()
        if self.stub.xrun(self.name):
            return -errno.EPIPE, b""
        n = self.period * self.channels
        t = (self._phase + np.arange(self.period)) / self.rate
        self._phase += self.period
        tone = np.round(32768 * math.sqrt(2) * 0.1 * np.sin(2 * np.pi * 1000 * t))
        pcm = np.repeat(tone.astype("<i2"), self.channels)[:n]
        self.stub.dev(self.name).periods += 1
        return self.period, pcm.tobytes()

    def write(self, data: bytes) -> int:
        self._check()
        frames = len(data) // (2 * self.channels)
        room = self.buffer - self._drain()
        if frames > room:  # a full buffer blocks the writer until it has room
            time.sleep((frames - room) / self.rate)
            self._drain()
        if self._t_drain is None:
            self._t_drain = time.monotonic()
        self._queued = min(float(self.buffer), self._queued + frames)
        if self.stub.xrun(self.name):
            return -errno.EPIPE
        d = self.stub.dev(self.name)
        d.periods += 1
        samples = np.frombuffer(data, "<i2").astype(np.float64)
        d.energy = [*d.energy[-49:], float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0]
        return len(data) // (2 * self.channels)

    def close(self) -> None:
        if self._open:
            self._open = False
            d = self.stub.dev(self.name)
            with self.stub._lock:
                d.open_handles -= 1
