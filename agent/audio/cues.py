"""Sound cues: short tones (or WAV files) on the speaker, through the mixer as their own source.

People who carry push-to-talk devices listen rather than look: a talk-permit chirp
when they may speak, a refusal when nobody would hear them, a roger beep, chimes
when the link drops and comes back, a tick per volume step, N beeps for channel N,
an alarm for an emergency. :class:`Cues` plays them::

    cues = Cues(lambda: cfg.cues, metrics=metrics)
    cues.attach(mixer)                 # each generation's mixer
    end = cues.play("talk_permit")     # monotonic time the cue has played out, or None
    cues.play_channel(3)               # three short beeps

Each cue is ``cues.<name>`` in the config: ``""`` (off), ``"tone"`` (generated here,
:data:`TONES`), or the path of a WAV file. A WAV is read again at each play (cached
by its inode, size and mtime): a file that vanished or broke since the config was
checked is one log line (per cue, until it works again), a count in
``cue_file_errors_total{cue=...}``, and the tone instead.

Playing: a cue is pushed into a fresh mixer source ``"cues"`` (a new jitter buffer
each time, so a quick series of cues never grows its target, and a cue never waits
behind another: a new cue cuts the one playing). A cue longer than :data:`CHUNK_S`
is pushed in chunks, each :data:`LEAD_S` before the previous one runs out, so the
mixer's jitter buffer never holds enough to trim or reset it. Cues pass through the
mixer's gain like any source: they follow the speaker volume (``cues.volume`` scales
them further) and are silent while the speaker is muted.

Cues go to the speaker only; nothing here reaches an uplink. (The roger beep can be
sent to the room too: :meth:`Cues.uplink` gives its 8 kHz samples, which
:class:`agent.ptt.PttGate` sends after PTT up.)
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from agent.errors import SoundFileError
from agent.metrics import Metrics
from agent.pcm import UPLINK_RATE, Pcm, PcmSink, to_int16
from agent.wavfile import Clip, read_wav

if TYPE_CHECKING:
    from agent.config import CuesConfig

logger = logging.getLogger(__name__)

SOURCE = "cues"  # the mixer source name (metrics label source="cues")
CUES = (
    "talk_permit",
    "refusal",
    "roger",
    "link_lost",
    "link_back",
    "mute_on",
    "mute_off",
    "volume_step",
    "channel",
    "alarm",
)
TONE_PEAK = 0.9  # of full scale, at cues.volume = 1.0
FADE_S = 0.005  # raised-cosine ramps: no clicks at note edges
PAD_S = 0.04  # silence after every cue: a short cue starts at once (no partial prebuffer)
CHUNK_S = 0.5  # a longer cue is pushed this much at a time
LEAD_S = 0.1  # each next chunk goes in this long before the previous one runs out
OUTPUT_DELAY_S = 0.06  # render period + jitter prebuffer: when a pushed cue is heard
ECHO_S = 0.05  # after a cue has played out, the mic may still hear it this long
FAILURE_LOG_S = 10.0  # a cue that fails to play: one log line per 10 s
MAX_CHANNEL_BEEPS = 9  # channel 10 and up: one long beep per ten, then short ones
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Note:
    """One tone of a cue: ``hz`` for ``ms`` milliseconds, then ``gap_ms`` of silence."""

    hz: float
    ms: float
    gap_ms: float = 0.0


TONES: dict[str, tuple[Note, ...]] = {
    "talk_permit": (Note(1200, 50), Note(1800, 70)),  # rising chirp: go ahead
    "refusal": (Note(480, 120, 40), Note(360, 180)),  # low and falling: nobody hears you
    "roger": (Note(2400, 90),),  # short and high: over
    "link_lost": (Note(880, 110), Note(660, 110), Note(440, 200)),  # falling
    "link_back": (Note(440, 90), Note(660, 90), Note(880, 150)),  # rising
    "mute_on": (Note(700, 70, 30), Note(500, 90)),
    "mute_off": (Note(500, 70, 30), Note(700, 90)),
    "volume_step": (Note(1000, 40),),  # a tick, at the new volume
    "channel": (Note(1100, 70, 110),),  # one beep; played N times for channel N
    "alarm": (Note(960, 250), Note(770, 250)) * 3,  # hi-lo, 1.5 s
}
CHANNEL_TEN = Note(1100, 300, 150)  # one per ten, before the short beeps


def tone_seconds(name: str) -> float:
    """How long the generated tone of cue ``name`` sounds."""
    return sum(n.ms + n.gap_ms for n in TONES[name]) / 1000


# How long after PTT down the uplink is ducked (agent.ptt.DUCK_DB) while the generated
# talk-permit chirp plays (output delay + the chirp + its echo): 0.23 s, 11-12 frames
TALK_PERMIT_QUIET_S = OUTPUT_DELAY_S + tone_seconds("talk_permit") + ECHO_S


class CueMixer(Protocol):
    """What cues need of the mixer (agent.audio.mixer.Mixer): its rate and sources."""

    @property
    def out_rate(self) -> int: ...
    def add_source(self, name: str, rate: int, channels: int = 1) -> PcmSink: ...
    def remove_source(self, name: str) -> None: ...


def synthesize(notes: tuple[Note, ...], rate: int) -> Floats:
    """The notes as float samples at ``rate`` Hz, peak 1.0, with click-free edges."""
    parts: list[Floats] = []
    fade = max(1, int(FADE_S * rate))
    for note in notes:
        n = max(2 * fade, int(note.ms * rate / 1000))
        t = np.arange(n, dtype=np.float64) / rate
        wave = np.sin(2 * math.pi * note.hz * t)
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, fade))
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
        parts.append(wave.astype(np.float32))
        if note.gap_ms:
            parts.append(np.zeros(int(note.gap_ms * rate / 1000), np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def channel_notes(n: int) -> tuple[Note, ...]:
    """The beeps for channel ``n``: ``n`` short ones up to 9; from 10, one long beep per
    ten, then the short ones (12 = long, short, short)."""
    n = max(1, int(n))
    if n <= MAX_CHANNEL_BEEPS:
        return TONES["channel"] * n
    tens, units = divmod(min(n, 99), 10)
    return (CHANNEL_TEN,) * tens + TONES["channel"] * units


def _resample(x: Floats, rate_in: int, rate_out: int, channels: int) -> Floats:
    if rate_in == rate_out:
        return x
    import soxr

    shaped = x.reshape(-1, channels) if channels > 1 else x
    out = soxr.resample(shaped, rate_in, rate_out)
    return np.asarray(out, np.float32).reshape(-1)


class Cues:
    """Plays the configured cues into the attached mixer (event loop only)."""

    def __init__(
        self,
        config: Callable[[], CuesConfig],
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``config``: the running ``[cues]`` (read at each play: a reload applies)."""
        self._config = config
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._mixer: CueMixer | None = None
        self._tones: dict[tuple[str, int], Floats] = {}
        self._files: dict[str, tuple[tuple[int, int, int], Clip]] = {}
        self._file_failing: dict[str, str] = {}  # cue -> path whose failure was logged
        self._timers: list[asyncio.TimerHandle] = []
        self.playing: str | None = None  # the cue playing now
        self.ends_at = -math.inf  # monotonic time the last cue has played out
        self.played: list[str] = []  # names of the cues played (newest last, bounded)
        self._failure_logged = -math.inf

    def attach(self, mixer: CueMixer | None) -> None:
        """A generation's mixer (None: no speaker, cues are skipped)."""
        self.stop()
        self._mixer = mixer

    # -- playing ---------------------------------------------------------------------
    def play(self, name: str) -> float | None:
        """Play cue ``name``; the monotonic time it will have played out, or None when
        nothing plays (cues off, this cue off, no mixer)."""
        if name not in CUES:
            raise ValueError(f"unknown cue {name!r}")
        return self._guarded(name, None)

    def play_channel(self, n: int) -> float | None:
        """Announce channel ``n`` (1-based): ``n`` short beeps (see :func:`channel_notes`),
        or ``cues.channel``'s WAV played ``n`` times (at most 9). Returns as :meth:`play`."""
        return self._guarded("channel", max(1, int(n)))

    def stop(self) -> None:
        """Cut the cue playing now."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._mixer is not None and self.playing is not None:
            self._mixer.remove_source(SOURCE)
        self.playing = None

    def uplink(self, name: str) -> Pcm | None:
        """Cue ``name`` as 8 kHz mono int16 for an uplink (None when it is off)."""
        cfg = self._config()
        value = getattr(cfg, name, "")
        if not cfg.enabled or not value:
            return None
        mono, _ = self._samples(name, value, UPLINK_RATE, mono=True)
        return to_int16(mono * np.float32(32767.0 * cfg.volume))

    # -- internals -------------------------------------------------------------------
    def _guarded(self, name: str, repeat: int | None) -> float | None:
        """Render and start a cue; a failure is a counted, rate-limited log line, never an
        exception into the caller (a button, a status change, a link)."""
        try:
            rendered = self._render(name, repeat)
            return None if rendered is None else self._start(name, *rendered)
        except Exception as e:
            self._metrics.inc("cue_failures_total", cue=name)
            now = self._clock()
            if now - self._failure_logged >= FAILURE_LOG_S:
                self._failure_logged = now
                logger.warning("cue %s not played: %s: %s", name, type(e).__name__, e)
            logger.debug("cue %s failed", name, exc_info=True)
            return None

    def _render(self, name: str, repeat: int | None) -> tuple[Floats, int, int] | None:
        """(samples scaled to int16 range, rate, channels) for the cue, or None."""
        cfg = self._config()
        mixer = self._mixer
        value = getattr(cfg, name, "")
        if not cfg.enabled or not value or mixer is None:
            return None
        rate = mixer.out_rate
        if repeat is not None and value == "tone":
            samples, channels = synthesize(channel_notes(repeat), rate), 1
        else:
            samples, channels = self._samples(name, value, rate, mono=False)
            if repeat is not None:
                samples = np.tile(samples, min(repeat, MAX_CHANNEL_BEEPS))
        pad = np.zeros(int(PAD_S * rate) * channels, np.float32)
        scaled = np.concatenate([samples, pad]) * np.float32(32767.0 * cfg.volume)
        return scaled, rate, channels

    def _samples(self, name: str, value: str, rate: int, *, mono: bool) -> tuple[Floats, int]:
        """The cue's float samples (peak ~1.0) at ``rate`` and their channel count; the
        tone if its file fails."""
        if value != "tone":
            clip = self._clip(name, value)
            if clip is not None:
                pcm = clip.mono() if mono else clip.pcm
                channels = 1 if mono else clip.channels
                floats = pcm.astype(np.float32) / np.float32(32768.0)
                return _resample(floats, clip.rate, rate, channels), channels
        key = (name, rate)
        tone = self._tones.get(key)
        if tone is None:
            tone = self._tones[key] = synthesize(TONES[name], rate) * np.float32(TONE_PEAK)
        return tone, 1

    def _clip(self, name: str, path: str) -> Clip | None:
        """The WAV of cue ``name``, re-read when the file changed; None (logged once,
        counted each time) when it cannot be used now."""
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._files.get(name)
            if cached is not None and cached[0] == stamp:
                clip = cached[1]
            else:
                clip = read_wav(path)
                self._files[name] = (stamp, clip)
        except (OSError, SoundFileError) as e:
            reason = str(e) if isinstance(e, SoundFileError) else f"cannot read {path}: {e}"
            if isinstance(e, FileNotFoundError):
                reason = f"file {path} not found"
            self._metrics.inc("cue_file_errors_total", cue=name)
            if self._file_failing.get(name) != path:
                self._file_failing[name] = path
                logger.warning("cue %s: %s; playing the tone instead", name, reason)
            return None
        if self._file_failing.pop(name, None) is not None:
            logger.info("cue %s: %s is readable again", name, path)
        return clip

    def _start(self, name: str, samples: Floats, rate: int, channels: int) -> float:
        mixer = self._mixer
        assert mixer is not None
        self.stop()  # a new cue cuts the one playing
        source = mixer.add_source(SOURCE, rate, channels)
        now = self._clock()
        seconds = samples.size / channels / rate
        sounding = seconds - PAD_S  # the pad is silence: the cue has played out before it
        chunk = int(CHUNK_S * rate) * channels
        source.push(to_int16(samples[:chunk]), now)
        loop = asyncio.get_running_loop()
        for start in range(chunk, samples.size, chunk):
            delay = start / channels / rate - LEAD_S
            piece = to_int16(samples[start : start + chunk])
            self._timers.append(loop.call_later(delay, source.push, piece))
        self._timers.append(loop.call_later(seconds + OUTPUT_DELAY_S, self._finished, name))
        self.playing = name
        self.ends_at = now + OUTPUT_DELAY_S + sounding
        self.played = [*self.played[-31:], name]
        self._metrics.inc("cues_played_total", cue=name)
        logger.debug("cue %s: %.0f ms", name, seconds * 1000)
        return self.ends_at

    def _finished(self, name: str) -> None:
        if self.playing == name:
            self._timers.clear()
            if self._mixer is not None:
                self._mixer.remove_source(SOURCE)
            self.playing = None
