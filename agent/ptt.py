"""The push-to-talk gate: decides, frame by frame, whether the mic is transmitted.

Pure logic, no I/O and no clock of its own: button edges come in as method calls
(from gpiozero's threads via the event loop, or remote commands), the VAD verdict
comes with each frame, and the decision applies from the next frame boundary.

Modes (``ptt.mode``): ``hold`` transmits while pressed, ``toggle`` flips on each
press, ``open`` always transmits, ``vox`` transmits while the VAD hears speech
(the VAD's hangover keeps it open across short pauses).

Besides the mode: :meth:`PttGate.force_open` transmits whatever the mode (an
emergency, agent.emergency); :meth:`PttGate.duck_until` attenuates the frames
captured before a time (the speaker's talk-permit chirp must not reach the room
through the mic; ducked, not silenced, so a word spoken at once is not lost and the
press-to-first-frame latency stays one frame); :meth:`PttGate.send_after` queues
samples (the roger beep, when ``cues.roger_to_room``) that go out in place of the idle
frames after PTT up.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import numpy as np

from agent.pcm import UPLINK_SAMPLES, Frame, Pcm

logger = logging.getLogger(__name__)

MODES = ("hold", "toggle", "open", "vox")
DUCK_DB = 40.0  # how far duck_until attenuates: a chirp heard at -20 dBFS goes out at -60


class PttGate:
    """Gate uplink frames according to the PTT mode and button state."""

    def __init__(
        self,
        mode: str = "hold",
        *,
        idle: str = "silence",
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown PTT mode {mode!r}")
        self.mode = mode
        self.idle = idle  # "silence": send silence frames while idle; "none": send nothing
        self.held = False  # the PTT button is down right now
        self._toggled = False
        self._vox = False
        self.transmitting = mode == "open"
        self._on_change = on_change
        self.presses = 0
        self.forced = False  # transmitting whatever the mode (an emergency)
        self._duck_until = -math.inf  # frames captured before this are attenuated
        self._duck_gain = 1.0
        self._tail: deque[Pcm] = deque()  # frames to send after the gate closed

    # -- inputs --------------------------------------------------------------------
    def press(self) -> None:
        self.presses += 1
        self.held = True
        self._tail.clear()  # a new talk: an unsent roger beep is dropped
        if self.mode == "toggle":
            self._toggled = not self._toggled
        self._update()

    def release(self) -> None:
        self.held = False
        self._update()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown PTT mode {mode!r}")
        self.mode = mode
        self._toggled = False
        self._update()

    def force_open(self, on: bool) -> None:
        """Transmit whatever the mode and button (True), or go back to them (False)."""
        self.forced = on
        self._update()

    def duck_until(self, t: float, db: float = DUCK_DB) -> None:
        """Attenuate by ``db`` the frames captured before ``t`` (monotonic seconds)."""
        self._duck_until = max(self._duck_until, t)
        self._duck_gain = 10.0 ** (-abs(db) / 20.0)

    def send_after(self, pcm: Pcm) -> None:
        """Send these 8 kHz samples in place of the next idle frames (one frame per
        frame captured), padded with silence to whole frames."""
        n = -(-pcm.size // UPLINK_SAMPLES) * UPLINK_SAMPLES
        padded = np.zeros(n, np.int16)
        padded[: pcm.size] = pcm
        self._tail.extend(padded[i : i + UPLINK_SAMPLES] for i in range(0, n, UPLINK_SAMPLES))

    # -- per frame -----------------------------------------------------------------
    def gate(self, frame: Frame, *, speech: bool = False) -> Frame | None:
        """The frame to send for ``frame``: itself, silence, or None (send nothing)."""
        if self.mode == "vox" and speech != self._vox:
            self._vox = speech
            self._update()
        if self.transmitting:
            if frame.t_capture < self._duck_until:
                ducked = np.rint(frame.pcm * np.float32(self._duck_gain)).astype(np.int16)
                return Frame(ducked, frame.seq, frame.t_capture)
            return frame
        if self._tail:
            return Frame(self._tail.popleft(), frame.seq, frame.t_capture)
        if self.idle == "none":
            return None
        return Frame.silence(frame.seq, frame.t_capture)

    # -- internals -----------------------------------------------------------------
    def _update(self) -> None:
        now = (
            self.forced
            or {
                "hold": self.held,
                "toggle": self._toggled,
                "open": True,
                "vox": self._vox,
            }[self.mode]
        )
        if now != self.transmitting:
            self.transmitting = now
            if self._on_change:
                self._on_change(now)
