"""ALSA capture and playback through pyalsaaudio, behind the typed ports.

pyalsaaudio is untyped and reports everything as ``ALSAAudioError("<strerror>
[<device>]")``; this module is the only place that touches it. It opens mono
(or interleaved) S16_LE with 20 ms periods (``rate // 50`` frames) and a few
periods of buffer, recovers over- and underruns in place (pyalsaaudio already
re-prepares the stream and reports ``-EPIPE``; we count ``xruns_total{device=}``),
and maps failures to :class:`DeviceUnavailable` (cannot open, device gone) or
:class:`AudioError` (anything else).

A device that cannot do the asked rate or channel count gets the nearest ones from
alsa-lib (a ``hw:`` USB mic that is stereo-only, or 44.1/48 kHz only): the port's
``rate`` and ``channels`` then report what the device runs at (one warning), the
stream is reopened with 20 ms periods at that rate, and the engine downmixes and
resamples. A playback device must take the mixer's channel count.

A PCM that is not paced by a clock (ALSA's ``null``, the ``file`` plugin over it)
returns every read and write at once; left alone, the audio threads would spin a
core. :class:`_Pacer` notices (half a second of audio moved in under a quarter of
that), says so once (``capture device null is not paced by a clock (e.g. 'null'):
pacing it in software``), counts ``audio_unpaced_total{device=}`` and from then on
sleeps to real time.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import time
from collections.abc import Callable
from typing import Any

import alsaaudio
import numpy as np

from agent import resources
from agent.errors import AudioError, DeviceBusy, DeviceUnavailable
from agent.hw.alsalog import route_alsa_lib_errors
from agent.metrics import Metrics
from agent.pcm import Pcm, samples_per_frame

logger = logging.getLogger(__name__)

# alsa-lib's "ALSA lib pcm.c:...: Unknown PCM ..." lines go to the log (DEBUG, once each),
# not to the terminal on every retry: agent/hw/alsalog.py
route_alsa_lib_errors()

DEFAULT_PERIODS = 4  # 80 ms of device buffer at 20 ms periods
_MAX_DRAIN = 8  # reads per read_ready(): what a wakeup found, never a spin
_WAIT_MS = 100  # a capture read waits in poll() this long at a time

# strerror() texts that mean "the device is not there (any more)"
_GONE = tuple(
    os.strerror(e)
    for e in (errno.ENODEV, errno.ENXIO, errno.ENOENT, errno.EBADFD, errno.EIO, errno.ESTRPIPE)
)


_NO_FDS = tuple(os.strerror(e) for e in resources.FD_ERRNOS)


def _classify(exc: Exception, device: str, action: str) -> AudioError:
    text = str(exc)
    if text.startswith(os.strerror(errno.EINVAL)):  # the device exists but refuses the format
        return AudioError(f"{device}: {action} refused (format not supported?): {text}")
    if text.startswith(_NO_FDS):  # the process, not the device: it is not "missing"
        return AudioError(f"{device}: cannot {action}: out of file descriptors ({text})")
    if action == "open" and text.startswith(os.strerror(errno.EBUSY)):
        return DeviceBusy(f"{device}: cannot open, busy (held by another program?): {text}")
    if action == "open" or text.startswith(_GONE):
        return DeviceUnavailable(f"{device}: cannot {action}: {text}")
    return AudioError(f"{device}: {action} failed: {text}")


UNPACED_WINDOW_S = 0.5  # judge pacing over this much audio
UNPACED_RATIO = 4.0  # moved this many times faster than real time: not paced
_PACE_REBASE_S = 0.2  # behind real time by more than this (a stall): start over


class _Pacer:
    """Detects a PCM that moves audio faster than real time, then paces it by sleeping.

    ``moved(n)`` after each read or write of ``n`` frames; returns True the moment the
    device is found unpaced (the caller logs that once)."""

    def __init__(
        self,
        rate: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.unpaced = False
        self._clock = clock
        self._sleep = sleep
        self._t0: float | None = None
        self._frames = 0

    def moved(self, frames: int) -> bool:
        now = self._clock()
        if self._t0 is None:  # the first period: a real device blocked for it
            self._t0, self._frames = now, 0
            return False
        self._frames += frames
        audio_s = self._frames / self.rate
        if self.unpaced:
            ahead = self._t0 + audio_s - now
            if ahead > 0:
                self._sleep(ahead)
            elif ahead < -_PACE_REBASE_S:
                self._t0, self._frames = now, 0
            return False
        if audio_s < UNPACED_WINDOW_S:
            return False
        if now - self._t0 < audio_s / UNPACED_RATIO:
            self.unpaced = True
            self._t0, self._frames = now, 0
            return True
        self._t0, self._frames = now, 0  # paced: judge the next window afresh
        return False


class _AlsaPcm:
    """Shared open/close of one pyalsaaudio PCM."""

    _kind: int
    label: str

    def __init__(
        self,
        device: str,
        rate: int,
        channels: int,
        *,
        metrics: Metrics,
        periods: int,
    ) -> None:
        self.device = device
        self.name = device
        self.rate = rate
        self.requested_rate = rate
        self.channels = channels
        self.requested_channels = channels
        self.periods = periods
        self._metrics = metrics
        self._pcm: Any = None
        self._pacer = _Pacer(rate)
        self._told_unpaced = False
        self.xruns = 0

    _accepts_other_channels = False  # capture: the engine downmixes; playback: no
    _mode = alsaaudio.PCM_NORMAL  # capture: non-blocking, read through poll()

    @property
    def is_open(self) -> bool:
        return self._pcm is not None

    def _open_pcm(self, rate: int, channels: int) -> Any:
        try:
            return alsaaudio.PCM(
                type=self._kind,
                mode=self._mode,
                device=self.device,
                rate=rate,
                channels=channels,
                format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=samples_per_frame(rate),
                periods=self.periods,
            )
        except alsaaudio.ALSAAudioError as exc:
            if str(exc).startswith(_NO_FDS):  # retried by the device's backoff
                resources.exhausted(f"{self.label} open", self._metrics)
            raise _classify(exc, self.device, "open") from exc

    def open(self) -> None:
        if self._pcm is not None:
            return
        asked_rate, asked_channels = self.requested_rate, self.requested_channels
        pcm = self._open_pcm(asked_rate, asked_channels)
        info = pcm.info()
        actual_rate = int(info.get("rate", asked_rate))
        actual_channels = int(info.get("channels", asked_channels))
        if actual_channels != asked_channels and not self._accepts_other_channels:
            pcm.close()
            raise AudioError(
                f"{self.device}: gives {actual_channels} channels, asked for {asked_channels}"
            )
        if (actual_rate, actual_channels) != (asked_rate, asked_channels):
            doing = [
                what
                for what, needed in (
                    ("downmixing", actual_channels != asked_channels),
                    ("resampling", actual_rate != asked_rate),
                )
                if needed
            ]
            logger.warning(
                "%s %s: runs at %d Hz x%d, not the %d Hz x%d asked; %s",
                self.label, self.device, actual_rate, actual_channels, asked_rate,
                asked_channels, " and ".join(doing),
            )  # fmt: skip
            if actual_rate != asked_rate:
                # the periods were sized for the asked rate: 20 ms at the real one instead
                pcm.close()
                pcm = self._open_pcm(actual_rate, actual_channels)
                info = pcm.info()
                actual_rate = int(info.get("rate", actual_rate))
                actual_channels = int(info.get("channels", actual_channels))
        self.rate = actual_rate
        self.channels = actual_channels
        self._pacer = _Pacer(actual_rate)
        self._pcm = pcm
        logger.debug(
            "%s %s open: %d Hz x%d, period %s, buffer %s frames",
            self.label,
            self.device,
            actual_rate,
            actual_channels,
            info.get("period_size"),
            info.get("buffer_size"),
        )

    def _moved(self, frames: int) -> None:
        """Pace a PCM that is not paced by a clock (see :class:`_Pacer`)."""
        if self._pacer.moved(frames):
            self._metrics.inc("audio_unpaced_total", device=self.label)
            level = logging.DEBUG if self._told_unpaced else logging.WARNING
            self._told_unpaced = True
            logger.log(
                level,
                "%s device %s is not paced by a clock (e.g. 'null'): pacing it in software",
                "capture" if self._kind == alsaaudio.PCM_CAPTURE else "playback",
                self.device,
            )

    @property
    def unpaced(self) -> bool:
        """True once this device was found to move audio faster than real time."""
        return self._pacer.unpaced

    def close(self) -> None:
        pcm, self._pcm = self._pcm, None
        if pcm is not None:
            try:
                pcm.close()
            except alsaaudio.ALSAAudioError as exc:  # closing a vanished device
                logger.debug("%s %s: close: %s", self.label, self.device, exc)

    def _xrun(self, what: str) -> None:
        self.xruns += 1
        self._metrics.inc("xruns_total", device=self.label)
        logger.debug("%s %s: %s, recovered", self.label, self.device, what)

    def _require_open(self) -> Any:
        if self._pcm is None:
            raise AudioError(f"{self.device}: not open")
        return self._pcm


class AlsaSource(_AlsaPcm):
    """An ALSA capture PCM (``AudioSource``)."""

    _kind = alsaaudio.PCM_CAPTURE
    _accepts_other_channels = True  # a stereo-only mic is downmixed by the engine
    _mode = alsaaudio.PCM_NONBLOCK  # read() waits in poll(); the loop may poll it instead

    def __init__(
        self,
        device: str,
        rate: int,
        *,
        metrics: Metrics,
        channels: int = 1,
        periods: int = DEFAULT_PERIODS,
        label: str = "mic",
    ) -> None:
        super().__init__(device, rate, channels, metrics=metrics, periods=periods)
        self.label = label
        self._poll: list[tuple[int, int]] = []  # this open's poll descriptors
        self._poller: Any = None

    def close(self) -> None:
        self._poll, self._poller = [], None
        super().close()

    def poll_fds(self) -> list[int]:
        """The PCM's poll descriptors that signal captured audio (``PolledSource``)."""
        return [fd for fd, mask in self._descriptors() if mask & select.POLLIN]

    def _descriptors(self) -> list[tuple[int, int]]:
        if not self._poll:
            try:
                got = self._require_open().polldescriptors()
            except alsaaudio.ALSAAudioError as exc:
                raise _classify(exc, self.device, "read") from exc
            self._poll = [(int(fd), int(mask)) for fd, mask in got]
        return self._poll  # [] for a PCM without any: read() then waits in _WAIT_MS steps

    def read_ready(self) -> Pcm | None:
        """What has been captured so far (any length), else None (``PolledSource``;
        never blocks). Lets alsa-lib consume the wakeup first (``polldescriptors_revents``:
        a plugin's poll descriptor, pulse's for one, stays readable until drained)."""
        pcm = self._require_open()
        try:
            pcm.polldescriptors_revents([(fd, select.POLLIN) for fd, _ in self._descriptors()])
        except alsaaudio.ALSAAudioError as exc:
            raise _classify(exc, self.device, "read") from exc
        chunks: list[bytes] = []
        for _ in range(_MAX_DRAIN):
            data = self._read_some(pcm)
            if data is None:
                break
            chunks.append(data)
        if not chunks:
            return None
        return np.frombuffer(b"".join(chunks), dtype="<i2").astype(np.int16)

    def _read_some(self, pcm: Any) -> bytes | None:
        """One non-blocking read: the bytes captured, or None if there are none yet."""
        while True:
            try:
                length, data = pcm.read()
            except alsaaudio.ALSAAudioError as exc:
                raise _classify(exc, self.device, "read") from exc
            if length == -errno.EPIPE:
                self._xrun("overrun")
                continue
            if length <= 0 or not data:
                return None
            self._moved(length)
            return bytes(data)

    def read(self) -> Pcm:
        pcm = self._require_open()
        while True:
            data = self._read_some(pcm)
            if data is not None:
                return np.frombuffer(data, dtype="<i2").astype(np.int16)
            self._wait(pcm)  # nothing captured yet: sleep until the device says so

    def _wait(self, pcm: Any) -> None:
        if self._poller is None:
            self._poller = select.poll()
            for fd, mask in self._descriptors():
                self._poller.register(fd, mask)
        events = self._poller.poll(_WAIT_MS)
        if events:
            try:
                pcm.polldescriptors_revents([(fd, ev) for fd, ev in events])
            except alsaaudio.ALSAAudioError as exc:
                raise _classify(exc, self.device, "read") from exc


class AlsaSink(_AlsaPcm):
    """An ALSA playback PCM (``AudioSink``)."""

    _kind = alsaaudio.PCM_PLAYBACK

    def __init__(
        self,
        device: str,
        rate: int,
        channels: int = 1,
        *,
        metrics: Metrics,
        periods: int = DEFAULT_PERIODS,
        label: str = "speaker",
        clocked: bool = False,
    ) -> None:
        super().__init__(device, rate, channels, metrics=metrics, periods=periods)
        self.label = label
        self.buffer_frames = periods * samples_per_frame(rate)
        # the caller knows the device runs on a clock: never judge it unpaced (a stream
        # that stalls and then takes a burst, as a new PulseAudio stream does, is not
        # paced in software, which underran it at every other period)
        self.clocked = clocked

    def _moved(self, frames: int) -> None:
        if not self.clocked:
            super()._moved(frames)

    def open(self) -> None:
        super().open()
        info = self._require_open().info()
        self.buffer_frames = int(
            info.get("buffer_size") or self.periods * samples_per_frame(self.rate)
        )

    def frames_free(self) -> int:
        """Room in the device buffer now (``PolledSink``); < 0 after an underrun."""
        try:
            return int(self._require_open().avail())
        except alsaaudio.ALSAAudioError as exc:
            raise _classify(exc, self.device, "write") from exc

    def frames_queued(self) -> int:
        """Frames waiting to be played (``PolledSink``): the buffer less its room."""
        return max(0, self.buffer_frames - max(0, self.frames_free()))

    def write(self, pcm: Pcm) -> None:
        handle = self._require_open()
        data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
        frame_bytes = 2 * self.channels
        if len(data) % frame_bytes:
            raise AudioError(f"{self.device}: {len(data)} bytes is not whole frames")
        retried = False
        while data:
            try:
                written = handle.write(data)
            except alsaaudio.ALSAAudioError as exc:
                raise _classify(exc, self.device, "write") from exc
            if written == -errno.EPIPE:
                self._xrun("underrun")
                if retried:  # the stream was re-prepared; give up on this period
                    return
                retried = True
                continue
            if written <= 0:
                continue
            self._moved(written)
            data = data[written * frame_bytes :]
