"""The devices of ``field-agent demo``: its test voice, its metered speaker, the real-audio check.

:func:`voice_like` is the simulated mic's signal (written to a WAV file the mic
plays), :class:`MeteredSink` wraps the speaker so the live view can show the level
last played, :func:`rms_dbfs` is the summary's level of the whole recording, and
:func:`check_real_audio` proves an ALSA mic and speaker are there before
``--real-audio`` starts anything.
"""

from __future__ import annotations

import math

import numpy as np

from agent import config
from agent.errors import AudioError
from agent.hw.ports import AudioSink, AudioSource, device_name
from agent.metrics import Metrics
from agent.pcm import SILENCE_DBFS, Pcm, dbfs


def voice_like(rate: int, seconds: float = 4.0) -> np.ndarray:
    """A test 'voice': a 300-900 Hz warble, loud enough to see on a meter."""
    t = np.arange(int(rate * seconds)) / rate
    f = 600 + 300 * np.sin(2 * math.pi * 0.5 * t)
    phase = 2 * math.pi * np.cumsum(f) / rate
    return (0.3 * 32767 * np.sin(phase)).astype(np.int16)


def rms_dbfs(pcm: np.ndarray) -> float:
    """The RMS level of a whole recording in dBFS (-inf for silence or nothing)."""
    if pcm.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


class MeteredSink:
    """A speaker that remembers the level of the last period it played (the view's meter)."""

    def __init__(self, sink: AudioSink) -> None:
        self.sink = sink
        self.name = device_name(sink)
        self.dbfs = SILENCE_DBFS

    @property
    def rate(self) -> int:
        return self.sink.rate

    @rate.setter
    def rate(self, value: int) -> None:
        self.sink.rate = value

    @property
    def channels(self) -> int:
        return self.sink.channels

    @channels.setter
    def channels(self, value: int) -> None:
        self.sink.channels = value

    def open(self) -> None:
        self.sink.open()

    def write(self, pcm: Pcm) -> None:
        self.dbfs = dbfs(pcm)
        self.sink.write(pcm)

    def close(self) -> None:
        self.dbfs = SILENCE_DBFS
        self.sink.close()


def check_real_audio(audio: config.AudioConfig) -> None:
    """Open and close the ALSA mic and speaker once; raise AudioError saying which is missing.

    Done before anything starts, so ``--real-audio`` on a machine without a sound
    card fails at once with one clear line instead of a retrying agent.
    """
    from agent.hw.alsa import AlsaSink, AlsaSource

    metrics = Metrics()
    ports: list[tuple[str, AudioSource | AudioSink]] = [
        ("mic", AlsaSource(audio.capture_device, audio.capture_rate, metrics=metrics)),
        ("speaker", AlsaSink(audio.playback_device, audio.playback_rate, metrics=metrics)),
    ]
    for role, port in ports:
        try:
            port.open()
        except AudioError as e:
            raise AudioError(
                f"--real-audio: no usable ALSA {role} ({e}). `field-agent devices` lists the "
                "sound cards; without --real-audio the demo uses a simulated mic and speaker"
            ) from None
        finally:
            port.close()
