"""ALSA capture and playback through pyalsaaudio, behind the typed ports.

pyalsaaudio is untyped and reports everything as ``ALSAAudioError("<strerror>
[<device>]")``; this module is the only place that touches it. It opens mono
(or interleaved) S16_LE with 20 ms periods (``rate // 50`` frames) and a few
periods of buffer, recovers over- and underruns in place (pyalsaaudio already
re-prepares the stream and reports ``-EPIPE``; we count ``xruns_total{device=}``),
and maps failures to :class:`DeviceUnavailable` (cannot open, device gone) or
:class:`AudioError` (anything else).

A device that cannot do the asked rate gets the nearest one from alsa-lib; the
port's ``rate`` then reports the real rate (a warning is logged), and the engine
resamples from it.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import alsaaudio
import numpy as np

from agent.errors import AudioError, DeviceBusy, DeviceUnavailable
from agent.hw.alsalog import route_alsa_lib_errors
from agent.metrics import Metrics
from agent.pcm import Pcm, samples_per_frame

logger = logging.getLogger(__name__)

# alsa-lib's "ALSA lib pcm.c:...: Unknown PCM ..." lines go to the log (DEBUG, once each),
# not to the terminal on every retry: agent/hw/alsalog.py
route_alsa_lib_errors()

DEFAULT_PERIODS = 4  # 80 ms of device buffer at 20 ms periods

# strerror() texts that mean "the device is not there (any more)"
_GONE = tuple(
    os.strerror(e)
    for e in (errno.ENODEV, errno.ENXIO, errno.ENOENT, errno.EBADFD, errno.EIO, errno.ESTRPIPE)
)


def _classify(exc: Exception, device: str, action: str) -> AudioError:
    text = str(exc)
    if text.startswith(os.strerror(errno.EINVAL)):  # the device exists but refuses the format
        return AudioError(f"{device}: {action} refused (format not supported?): {text}")
    if action == "open" and text.startswith(os.strerror(errno.EBUSY)):
        return DeviceBusy(f"{device}: cannot open, busy (held by another program?): {text}")
    if action == "open" or text.startswith(_GONE):
        return DeviceUnavailable(f"{device}: cannot {action}: {text}")
    return AudioError(f"{device}: {action} failed: {text}")


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
        self.periods = periods
        self._metrics = metrics
        self._pcm: Any = None
        self.xruns = 0

    @property
    def is_open(self) -> bool:
        return self._pcm is not None

    def open(self) -> None:
        if self._pcm is not None:
            return
        try:
            pcm = alsaaudio.PCM(
                type=self._kind,
                mode=alsaaudio.PCM_NORMAL,
                device=self.device,
                rate=self.requested_rate,
                channels=self.channels,
                format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=samples_per_frame(self.requested_rate),
                periods=self.periods,
            )
        except alsaaudio.ALSAAudioError as exc:
            raise _classify(exc, self.device, "open") from exc
        info = pcm.info()
        actual_rate = int(info.get("rate", self.requested_rate))
        actual_channels = int(info.get("channels", self.channels))
        if actual_channels != self.channels:
            pcm.close()
            raise AudioError(
                f"{self.device}: gives {actual_channels} channels, asked for {self.channels}"
            )
        if actual_rate != self.requested_rate:
            logger.warning(
                "%s %s: runs at %d Hz, not the %d Hz asked; resampling",
                self.label,
                self.device,
                actual_rate,
                self.requested_rate,
            )
        self.rate = actual_rate
        self._pcm = pcm
        logger.debug(
            "%s %s open: %d Hz x%d, period %s, buffer %s frames",
            self.label,
            self.device,
            actual_rate,
            self.channels,
            info.get("period_size"),
            info.get("buffer_size"),
        )

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

    def read(self) -> Pcm:
        pcm = self._require_open()
        while True:
            try:
                length, data = pcm.read()
            except alsaaudio.ALSAAudioError as exc:
                raise _classify(exc, self.device, "read") from exc
            if length == -errno.EPIPE:
                self._xrun("overrun")
                continue
            if length <= 0 or not data:
                continue
            return np.frombuffer(data, dtype="<i2").astype(np.int16)


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
    ) -> None:
        super().__init__(device, rate, channels, metrics=metrics, periods=periods)
        self.label = label

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
            data = data[written * frame_bytes :]
