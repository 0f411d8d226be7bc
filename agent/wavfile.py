"""Reading a short sound file (a cue's WAV) into int16 samples: stdlib ``wave`` + numpy.

Shared by the config check (a WAV that cannot be read is a config error naming the
file) and the cue player (which reads the file again at play time: a file that
disappeared is one log line and the generated tone instead). Only PCM WAV is
accepted: 8, 16, 24 or 32-bit integer samples, 1 or 2 channels, 8000..192000 Hz, at
most :data:`MAX_SECONDS` long. A leaf module (no asyncio, no agent runtime).
"""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import SoundFileError
from agent.pcm import Pcm

MAX_SECONDS = 5.0  # a cue is a short sound; longer files are refused
MIN_RATE, MAX_RATE = 8000, 192000
MAX_BYTES = 8 * 1024 * 1024  # 5 s of 192 kHz stereo 32-bit is 7.7 MB


@dataclass(frozen=True)
class Clip:
    """Interleaved int16 samples at ``rate`` Hz with ``channels`` channels."""

    pcm: Pcm
    rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.pcm.size / self.channels / self.rate

    def mono(self) -> Pcm:
        if self.channels == 1:
            return self.pcm
        frames = self.pcm.reshape(-1, self.channels).astype(np.int32)
        mean: Pcm = (frames.sum(axis=1) // self.channels).astype(np.int16)
        return mean


def read_wav(path: str | os.PathLike[str]) -> Clip:
    """The samples of the WAV file ``path``; :class:`SoundFileError` saying why not."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise SoundFileError(f"{p} is not a regular file")
        if size > MAX_BYTES:
            raise SoundFileError(f"{p} is too large ({size} bytes; a cue is at most 5 s)")
        with wave.open(str(p), "rb") as w:
            channels, width, rate, frames = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            raw = w.readframes(frames)
    except SoundFileError:
        raise
    except FileNotFoundError:
        raise SoundFileError(f"file {p} not found") from None
    except PermissionError:
        raise SoundFileError(f"cannot read {p}: permission denied") from None
    except IsADirectoryError:
        raise SoundFileError(f"{p} is a directory, not a WAV file") from None
    except OSError as e:
        raise SoundFileError(f"cannot read {p}: {e.strerror or type(e).__name__}") from None
    except (wave.Error, EOFError) as e:
        raise SoundFileError(f"{p} is not a PCM WAV file ({e or type(e).__name__})") from None
    except ValueError:  # a NUL in the path
        raise SoundFileError(f"not a usable path: {str(p)!r}") from None
    if channels not in (1, 2):
        raise SoundFileError(f"{p}: {channels} channels (1 or 2 are played)")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise SoundFileError(f"{p}: {rate} Hz outside {MIN_RATE}..{MAX_RATE} Hz")
    if width not in (1, 2, 3, 4):
        raise SoundFileError(f"{p}: {8 * width}-bit samples (8, 16, 24 or 32-bit PCM)")
    whole = len(raw) // (width * channels) * width * channels
    if whole == 0:
        raise SoundFileError(f"{p} holds no audio")
    if whole / (width * channels) / rate > MAX_SECONDS:
        raise SoundFileError(f"{p} is longer than {MAX_SECONDS:g} s (a cue is a short sound)")
    return Clip(_to_int16(raw[:whole], width), rate, channels)


def _to_int16(raw: bytes, width: int) -> Pcm:
    if width == 1:  # unsigned 8-bit
        return ((np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.int16)
    if width == 3:  # the top two bytes of each little-endian 24-bit sample
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        return (b[:, 1].astype(np.uint16) | (b[:, 2].astype(np.uint16) << 8)).view(np.int16)
    return (np.frombuffer(raw, "<i4") >> 16).astype(np.int16)
