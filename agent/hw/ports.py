"""Typed ports for audio hardware: what the engine needs from a mic and a speaker.

Implementations: :mod:`agent.hw.alsa` (pyalsaaudio, the real devices) and
:mod:`agent.hw.sim` (tone / WAV / silence sources, a recording sink) for the demo
and tests. Both are used through these Protocols only.

Errors: :class:`~agent.errors.DeviceUnavailable` when the device cannot be opened
or has vanished (USB card pulled); :class:`~agent.errors.AudioError` for any
other device failure. Over- and underruns are *not* errors: implementations
recover in place and count them (``xruns_total{device=}``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from agent.pcm import Pcm


class AudioSource(Protocol):
    """A capture device delivering mono or interleaved int16 at ``rate`` Hz."""

    rate: int  # Hz; may change at open() if the device only offers a nearby rate
    channels: int

    def open(self) -> None:
        """Open the device (idempotent). Raises DeviceUnavailable or AudioError."""
        ...

    def read(self) -> Pcm:
        """Block until one 20 ms period is captured; return it (interleaved int16).

        A device may return a slightly different length (short read); callers
        must accept any length.
        """
        ...

    def close(self) -> None:
        """Release the device (idempotent; safe after a failure)."""
        ...


class AudioSink(Protocol):
    """A playback device taking interleaved int16 at ``rate`` Hz."""

    rate: int
    channels: int

    def open(self) -> None:
        """Open the device (idempotent). Raises DeviceUnavailable or AudioError."""
        ...

    def write(self, pcm: Pcm) -> None:
        """Play ``pcm``, blocking while the device buffer is full."""
        ...

    def close(self) -> None:
        """Release the device (idempotent; safe after a failure)."""
        ...


@runtime_checkable
class PolledSource(AudioSource, Protocol):
    """A capture device an event loop can wait on (ALSA's poll descriptors)."""

    @property
    def unpaced(self) -> bool:
        """True once the device was found not to be paced by a clock (its reads sleep)."""
        ...

    def poll_fds(self) -> list[int]:
        """File descriptors that become readable when a period has been captured."""
        ...

    def read_ready(self) -> Pcm | None:
        """What has been captured so far, any length (never blocks), else None. Raises
        like :meth:`read`."""
        ...


@runtime_checkable
class PolledSink(AudioSink, Protocol):
    """A playback device that also says how much room it has, so that another clock
    (the mic's, :mod:`agent.audio.duplex`) can feed it without ever blocking."""

    buffer_frames: int  # the device buffer, frames per channel (valid once open)

    def frames_free(self) -> int:
        """Frames (per channel) that can be written now without blocking; negative when
        the device has underrun (a write recovers it)."""
        ...

    def frames_queued(self) -> int:
        """Frames written and not played yet (the playout delay, ALSA's ``delay()``)."""
        ...


def device_name(port: AudioSource | AudioSink) -> str:
    """A name for messages: the port's ``name`` attribute if it has one, else its class."""
    name = getattr(port, "name", None)
    return name if isinstance(name, str) and name else type(port).__name__
