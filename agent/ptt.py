"""The push-to-talk gate: decides, frame by frame, whether the mic is transmitted.

Pure logic, no I/O and no clock of its own: button edges come in as method calls
(from gpiozero's threads via the event loop, or remote commands), the VAD verdict
comes with each frame, and the decision applies from the next frame boundary.

Modes (``ptt.mode``): ``hold`` transmits while pressed, ``toggle`` flips on each
press, ``open`` always transmits, ``vox`` transmits while the VAD hears speech
(the VAD's hangover keeps it open across short pauses).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.pcm import Frame

logger = logging.getLogger(__name__)

MODES = ("hold", "toggle", "open", "vox")


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

    # -- inputs --------------------------------------------------------------------
    def press(self) -> None:
        self.presses += 1
        self.held = True
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

    # -- per frame -----------------------------------------------------------------
    def gate(self, frame: Frame, *, speech: bool = False) -> Frame | None:
        """The frame to send for ``frame``: itself, silence, or None (send nothing)."""
        if self.mode == "vox" and speech != self._vox:
            self._vox = speech
            self._update()
        if self.transmitting:
            return frame
        if self.idle == "none":
            return None
        return Frame.silence(frame.seq, frame.t_capture)

    # -- internals -----------------------------------------------------------------
    def _update(self) -> None:
        now = {
            "hold": self.held,
            "toggle": self._toggled,
            "open": True,
            "vox": self._vox,
        }[self.mode]
        if now != self.transmitting:
            self.transmitting = now
            if self._on_change:
                self._on_change(now)
