"""systemd integration: logging (journald or terminal), sd_notify, the watchdog.

- :func:`setup_logging`: under systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` set)
  records go to journald through ``systemd.journal.JournalHandler``, with the
  record's upper-case extras as journal fields (``LINK=``, ``CALL_ID=``,
  ``ROOM_ID=``); on a terminal, one readable line per record. On both, three filters
  run in order: :class:`RateLimitFilter` (a repeated event is one line per interval,
  then "(N more suppressed)"), :class:`~agent.secrets.RedactingFilter` (secrets) and
  :class:`EscapingFilter` (control characters and line breaks from the network are
  shown escaped, in the message and every field: no remote text can forge a line).
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
from collections import OrderedDict
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


# --- logging ----------------------------------------------------------------------


def under_systemd(env: Mapping[str, str] = os.environ) -> bool:
    """True when started by systemd (its stdout/stderr is the journal, or a unit invoked us)."""
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` with every non-printable character escaped: line breaks (also U+2028,
    U+0085), other control characters, bidi overrides and other format characters."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable():
            out.append(c)
        elif c in _ESCAPES:
            out.append(_ESCAPES[c])
        else:
            o = ord(c)
            out.append(
                f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"
            )
    return "".join(out)


class EscapingFilter(logging.Filter):
    """Escape the formatted message and every upper-case field (journal fields) of a
    record, once, for every handler. A traceback (a bug of ours, not remote text) is
    kept as it is, but the exception's own message is escaped on the terminal line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = escape(message), None
        for key, value in list(record.__dict__.items()):
            if key.isupper() and key not in _STD_ATTRS:
                text = value if isinstance(value, str) else str(value)
                if not text.isprintable() or not isinstance(value, str):
                    setattr(record, key, escape(text))
        return True


class RateLimitFilter(logging.Filter):
    """At most ``burst`` records per (logger, message template) per ``interval_s``.

    The record that hits the limit still goes out, marked "(more like this suppressed
    for 10 s)"; the first one after a suppressed stretch says "(N more suppressed)".
    Keyed by the template, not the formatted text, so a flood of commands from many
    senders is one key. Keys are bounded (least recently used forgotten).
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        burst: int = 10,
        *,
        max_keys: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [window start, records in window, suppressed in the window]
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        with self._lock:
            state = self._seen.pop(key, None)
            held = 0
            if state is None or now - state[0] >= self.interval_s:
                held = int(state[2]) if state is not None else 0
                state = [now, 0.0, 0.0]
            self._seen[key] = state
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            state[1] += 1
            count = state[1]
            if count > self.burst + 1:
                state[2] += 1
                self.suppressed_total += 1
                return False
        note = ""
        if held:
            note = f" ({held} more suppressed)"
        if count == self.burst + 1:
            note += f" (more like this suppressed for {self.interval_s:g} s)"
        if note:
            record.msg, record.args = record.getMessage() + note, None
        return True


class TerminalFormatter(logging.Formatter):
    """``12:00:01.234 WARNING videosdk: session refused [LINK=videosdk]`` — one line a record."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        name = record.name.removeprefix("agent.")
        fields = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STD_ATTRS and k.isupper()
        )
        line = f"{t}.{int(record.msecs):03d} {record.levelname:<7} {name}: {record.getMessage()}"
        if fields:
            line += f" [{fields}]"
        if record.exc_info:
            # one line: the exception's type and message, not a traceback
            exc = record.exc_info[1]
            line += f" ({type(exc).__name__}: {escape(str(exc))})" if exc is not None else ""
        elif record.exc_text:
            # the exception line(s) after the last indented frame line of the traceback
            lines = record.exc_text.rstrip().splitlines()
            last_frame = max((i for i, t in enumerate(lines) if t[:1].isspace()), default=-1)
            line += " (" + escape("\n".join(lines[last_frame + 1 :]) or lines[-1]) + ")"
        return line


def setup_logging(
    level: str | int = "INFO",
    *,
    journal: bool | None = None,
    stream: TextIO | None = None,
    env: Mapping[str, str] = os.environ,
) -> logging.Handler:
    """Route the ``agent`` loggers to journald or the terminal; return the handler."""
    if journal is None:
        journal = under_systemd(env)
    handler: logging.Handler
    if journal:
        from systemd.journal import JournalHandler  # imported here: only under systemd

        handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(TerminalFormatter())
    handler.addFilter(RateLimitFilter())  # first: it keys on the unformatted template
    handler.addFilter(RedactingFilter())
    handler.addFilter(EscapingFilter())  # last: the final text is what is escaped
    root = logging.getLogger("agent")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    root.propagate = False
    # websockets and httpx log at DEBUG with URLs that may carry tokens: keep them at WARNING.
    for noisy in ("websockets", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


# --- sd_notify ---------------------------------------------------------------------


class Notifier:
    """sd_notify(3) through systemd-python; every method is a no-op outside systemd."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._last_status: str | None = None

    def _send(self, state: str) -> None:
        if self.enabled:
            from systemd.daemon import notify

            notify(state)

    def ready(self) -> None:
        self._send("READY=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 for Type=notify-reload
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def status(self, line: str) -> None:
        """Send STATUS= only when the line changed."""
        if line != self._last_status:
            self._last_status = line
            self._send("STATUS=" + line.replace("\n", " "))


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None if not asked for."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.01)
    except ValueError:
        return None


async def run_watchdog(
    notifier: Notifier,
    heartbeats: Heartbeats,
    interval_s: float,
    *,
    on_stall: Callable[[list[str]], Any] | None = None,
) -> None:
    """Ping systemd every ``interval_s`` while no heartbeat has stalled (until cancelled).

    The loop itself runs on the event loop, so a blocked loop also stops the pings.
    A stall is logged once when it starts and once when it ends.
    """
    reported: list[str] = []
    while True:
        stalled = heartbeats.stalled()
        if not stalled:
            if reported:
                logger.warning("watchdog: %s making progress again", ", ".join(reported))
                reported = []
            notifier.watchdog()
        elif stalled != reported:
            reported = stalled
            logger.error(
                "watchdog: no progress from %s; withholding WATCHDOG=1", ", ".join(stalled)
            )
            if on_stall:
                on_stall(stalled)
        await asyncio.sleep(interval_s)
