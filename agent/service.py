"""systemd integration: logging (journald or terminal), sd_notify, the watchdog.

- :func:`setup_logging`: under systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` set)
  records go to journald through ``systemd.journal.JournalHandler``, with the
  record's upper-case extras as journal fields (``LINK=``, ``CALL_ID=``,
  ``ROOM_ID=``); on a terminal, one readable line per record.
- :class:`Notifier`: ``READY=1``, ``STATUS=``, ``STOPPING=1``, ``RELOADING=1``,
  ``WATCHDOG=1`` through ``systemd.daemon.notify``; no-ops without ``NOTIFY_SOCKET``.
- :class:`Heartbeats`: every long-running task and thread beats; the watchdog
  pings systemd only while all of them make progress, so one stalled task stops
  the pings and systemd restarts the agent (``Result=watchdog``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from agent.secrets import RedactingFilter

logger = logging.getLogger(__name__)

SYSLOG_IDENTIFIER = "field-agent"


# --- heartbeats -------------------------------------------------------------------


class Heartbeat:
    """One task's or thread's proof of progress. ``beat()`` is thread-safe and cheap."""

    __slots__ = ("_clock", "last", "name", "paused", "timeout_s")

    def __init__(self, name: str, timeout_s: float, clock: Callable[[], float]) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._clock = clock
        self.last = clock()
        self.paused = False

    def beat(self) -> None:
        """I made progress."""
        self.last = self._clock()
        self.paused = False

    def pause(self) -> None:
        """I wait on purpose (backoff, idle link): ignore me until my next beat."""
        self.paused = True

    def stalled(self, now: float) -> bool:
        return not self.paused and now - self.last > self.timeout_s


class Heartbeats:
    """Registry of heartbeats; healthy when none has stalled."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, Heartbeat] = {}
        self._lock = threading.Lock()

    def register(self, name: str, timeout_s: float = 10.0) -> Heartbeat:
        hb = Heartbeat(name, timeout_s, self._clock)
        with self._lock:
            self._beats[name] = hb
        return hb

    def unregister(self, name: str) -> None:
        with self._lock:
            self._beats.pop(name, None)

    def stalled(self) -> list[str]:
        """Names of the heartbeats that have not beaten within their timeout."""
        now = self._clock()
        with self._lock:
            return sorted(n for n, hb in self._beats.items() if hb.stalled(now))
