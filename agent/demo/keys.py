"""The keyboard as the demo's hardware: keys read one at a time from the terminal.

:class:`Keyboard` puts the terminal in cbreak mode (keys arrive at once, no echo;
Ctrl-C still sends SIGINT), reads stdin with the event loop's ``add_reader`` and
calls one callback per key. Leaving it restores the terminal exactly as it was,
whatever ended the block (``q``, an exception, a signal handled by the caller).

Terminals send no key-up events, only the auto-repeat of a held key, so "hold
space to talk" is inferred (:class:`PttKeys`): the first space presses PTT and
holds it for :data:`FIRST_HOLD_S`, longer than the usual 250-660 ms before a
held key starts repeating; every repeat (every 30-50 ms) keeps it held; PTT is
released :data:`REPEAT_HOLD_S` after the last repeat. ``t`` latches PTT on and
off, for terminals (or people) without key repeat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import termios
import tty
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

FIRST_HOLD_S = 0.75  # first press: wait this long for the key repeat to start
REPEAT_HOLD_S = 0.4  # then: released this long after the last repeat


class Keyboard:
    """``with Keyboard(loop, {"q": quit, ...}):`` calls ``keys[ch]()`` for each key typed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        keys: Mapping[str, Callable[[], object]],
        *,
        fd: int | None = None,
    ) -> None:
        self._loop = loop
        self._keys = keys
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._saved: list[Any] | None = None

    def __enter__(self) -> Keyboard:
        self._saved = termios.tcgetattr(self._fd)
        try:
            tty.setcbreak(self._fd, termios.TCSANOW)
            self._loop.add_reader(self._fd, self._on_readable)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._loop.remove_reader(self._fd)
        self._restore()

    def _restore(self) -> None:
        if self._saved is not None:
            # TCSAFLUSH: keys typed but not read (a held space) do not spill into the shell
            termios.tcsetattr(self._fd, termios.TCSAFLUSH, self._saved)
            self._saved = None

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 256)
        except OSError as e:  # the terminal went away (hangup): nothing more to read
            logger.warning("keyboard: %s", e)
            self._loop.remove_reader(self._fd)
            return
        if not data:
            self._loop.remove_reader(self._fd)
            return
        for ch in data.decode("utf-8", "replace"):
            action = self._keys.get(ch) or self._keys.get(ch.lower())
            if action is not None:
                action()


class PttKeys:
    """PTT from keys: held while space repeats, or latched with ``t``.

    ``on_change(True)`` when PTT goes down, ``on_change(False)`` when it comes up.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[bool], None],
        *,
        first_hold_s: float = FIRST_HOLD_S,
        repeat_hold_s: float = REPEAT_HOLD_S,
    ) -> None:
        self._loop = loop
        self._on_change = on_change
        self.first_hold_s = first_hold_s
        self.repeat_hold_s = repeat_hold_s
        self.held = False  # space is (taken to be) held down
        self.latched = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def talking(self) -> bool:
        return self.held or self.latched

    def hold(self) -> None:
        """One space: a press, or a repeat of a held space."""
        was = self.talking
        delay = self.repeat_hold_s if self.held else self.first_hold_s
        self.held = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._let_go)
        self._changed(was)

    def toggle_latch(self) -> None:
        was = self.talking
        self.latched = not self.latched
        self._changed(was)

    def close(self) -> None:
        """Release everything (quitting)."""
        was = self.talking
        if self._timer is not None:
            self._timer.cancel()
        self.held = self.latched = False
        self._changed(was)

    def _let_go(self) -> None:
        was = self.talking
        self._timer = None
        self.held = False
        self._changed(was)

    def _changed(self, was: bool) -> None:
        if self.talking != was:
            self._on_change(self.talking)
