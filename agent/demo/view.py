"""The live terminal view of ``field-agent demo`` (drawn with rich).

Everything shown is read from the agent's own state, the way the device would
show it: link states from the :class:`~agent.status.StatusBoard`, counters and
gauges from :class:`~agent.metrics.Metrics`, the LEDs from the mock GPIO pins
(a dot is lit exactly when the pin is high, so blink patterns blink), the
speaker meter from what was last played. Log records go to a ring buffer
(:class:`LogRing`) shown at the bottom instead of scrolling the view away.

Rendered on the event loop (``render()``), never from another thread, since
the StatusBoard is only touched from the loop.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.demo import STATUS_LED, TALK_LED
from agent.secrets import RedactingFilter
from agent.status import Led, LinkState, StatusBoard

if TYPE_CHECKING:
    from agent.demo.bench import DemoBench
    from agent.demo.keys import PttKeys

FPS = 12.0  # redraws per second: enough to show a 4 Hz blink
VIEW_WIDTH = 100  # columns at most; a narrower terminal gets a narrower view
LOG_LINES = 8
STATE_WIDTH = 30
METER_CELLS = 30
METER_FLOOR_DBFS = -60.0
LINKS = ("videosdk", "orgo")  # the room link, the computer link
KEYS_HELP = (
    "hold space: talk · t: latch · m: mute · +/-: vol · [/]: channel · e: emergency (2 s)"
    " · k: kill room · q: quit"
)

_STATE_STYLE = {
    LinkState.UP: "green",
    LinkState.CONNECTING: "yellow",
    LinkState.RETRY: "yellow",
    LinkState.ATTENTION: "red",
    LinkState.STOPPED: "grey50",
}
_LED_TEXT = {
    Led.OFF: "off",
    Led.ON: "on",
    Led.BLINK_1HZ: "blink 1 Hz",
    Led.BLINK_4HZ: "blink 4 Hz",
    Led.BLINK_FAST: "blink 10 Hz",
}


class LogRing(logging.Handler):
    """Keeps the last formatted log lines (records arrive from any thread)."""

    def __init__(self, maxlen: int = 200) -> None:
        super().__init__()
        self.lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=maxlen)
        self.count = 0  # records ever kept
        self._mutex = threading.Lock()
        self.setFormatter(_ShortFormatter())
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._mutex:
            self.lines.append((record.levelno, line))
            self.count += 1

    def tail(self, n: int) -> list[tuple[int, str]]:
        """The last ``n`` (level, line) pairs."""
        with self._mutex:
            return list(self.lines)[-n:]

    def since(self, count: int, level: int = logging.NOTSET) -> list[str]:
        """Lines kept after the first ``count`` records (of those still in the ring)."""
        with self._mutex:
            new = list(self.lines)[max(0, len(self.lines) - (self.count - count)) :]
        return [line for levelno, line in new if levelno >= level]


class _ShortFormatter(logging.Formatter):
    """``12:00:01 WARNING links.videosdk: link down`` (no fields: the view is narrow)."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        name = record.name.removeprefix("agent.")
        line = f"{t} {record.levelname:<7} {name}: {record.getMessage()}"
        exc = record.exc_info[1] if record.exc_info else None
        return line if exc is None else f"{line} ({type(exc).__name__}: {exc})"


@contextlib.contextmanager
def capture_logs(ring: LogRing) -> Iterator[None]:
    """Send the agent's log records (and any library's warnings) to ``ring`` only."""
    agent_log, root = logging.getLogger("agent"), logging.getLogger()
    saved = list(agent_log.handlers), agent_log.propagate
    agent_log.handlers[:] = [ring]
    agent_log.propagate = False
    warnings = _WarningsTo(ring)
    root.addHandler(warnings)
    try:
        yield
    finally:
        root.removeHandler(warnings)
        agent_log.handlers[:], agent_log.propagate = saved


class _WarningsTo(logging.Handler):
    """Other libraries' warnings (websockets, asyncio...) into the same ring."""

    def __init__(self, ring: LogRing) -> None:
        super().__init__(logging.WARNING)
        self.ring = ring

    def emit(self, record: logging.LogRecord) -> None:
        self.ring.handle(record)


class Rates:
    """Per-second rates of counters, over about the last second."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._seen: dict[str, collections.deque[tuple[float, float]]] = {}

    def rate(self, key: str, value: float, now: float) -> float:
        seen = self._seen.setdefault(key, collections.deque())
        seen.append((now, value))
        while len(seen) > 2 and now - seen[1][0] >= self.window_s:
            seen.popleft()
        t0, v0 = seen[0]
        return (value - v0) / (now - t0) if now > t0 else 0.0


class LinkUps:
    """Counts each link's transitions to UP (reconnects = ups - 1), from the StatusBoard."""

    def __init__(self, board: StatusBoard) -> None:
        self.ups: collections.Counter[str] = collections.Counter()
        self._last: dict[str, LinkState] = {}
        board.add_listener(self._on_change)
        self._on_change(board)

    def _on_change(self, board: StatusBoard) -> None:
        for name, part in board.links.items():
            if part.state is LinkState.UP and self._last.get(name) is not LinkState.UP:
                self.ups[name] += 1
            self._last[name] = part.state

    def reconnects(self, name: str) -> int:
        return max(0, self.ups[name] - 1)


def meter(dbfs: float | None, style: str) -> Text:
    """A level bar from -60 to 0 dBFS, with the number."""
    level = METER_FLOOR_DBFS if dbfs is None else max(METER_FLOOR_DBFS, min(0.0, dbfs))
    filled = round(METER_CELLS * (level - METER_FLOOR_DBFS) / -METER_FLOOR_DBFS)
    text = Text("█" * filled, style=style)
    text.append("░" * (METER_CELLS - filled), style="grey23")
    text.append(" --- dBFS" if dbfs is None or dbfs <= -99 else f" {dbfs:4.0f} dBFS")
    return text


def led(lit: bool, pattern: Led, colour: str) -> Text:
    text = Text("●", style=f"bold {colour}" if lit else "grey30")
    text.append(f" {_LED_TEXT[pattern]}")
    return text


class DemoView:
    """``render()`` draws the bench as it is now."""

    fps = FPS

    def __init__(self, bench: DemoBench, ptt: PttKeys, logs: LogRing) -> None:
        self.bench = bench
        self.ptt = ptt
        self.logs = logs
        self.rates = Rates()
        self.ups = LinkUps(bench.agent.status)

    def render(self) -> RenderableType:

        b, now = self.bench, time.monotonic()
        status, metrics = b.agent.status, b.agent.metrics
        links = Table(box=None, padding=(0, 2, 0, 0), expand=False)
        links.add_column("link", no_wrap=True)
        links.add_column("state", no_wrap=True, overflow="ellipsis", max_width=STATE_WIDTH)
        for col in ("in/s", "out/s", "jitter", "reconnects"):
            links.add_column(col, justify="right", no_wrap=True)
        for name in LINKS:
            part = status.links.get(name)
            state = (
                Text("● ", style=_STATE_STYLE[part.state]) + Text(part.describe(now))
                if part is not None
                else Text("-")
            )
            fr_in = self.rates.rate(
                f"in-{name}", metrics.get("frames_received_total", link=name), now
            )
            fr_out = (
                f"{self.rates.rate('out', metrics.get('frames_sent_total', link=name), now):.0f}"
                if name == "videosdk"
                else "-"
            )
            depth = metrics.get("jitter_depth_ms", source=name)
            tries = int(metrics.get("reconnects_total", link=name))
            links.add_row(
                name, state, f"{fr_in:.0f}", fr_out, f"{depth:.0f} ms",
                f"{self.ups.reconnects(name)} ({tries} tries)",
            )  # fmt: skip

        leds = Text("LEDs     status ")
        leds += led(b.led_lit(STATUS_LED), status.led, "green")
        leds += Text("    talk ")
        leds += led(b.led_lit(TALK_LED), b.agent.controls.talk_led(), "red")

        ptt = Text("PTT      ")
        if status.ptt_state == "talking":
            how = (
                "latched with t" if self.ptt.latched
                else "space held" if self.ptt.held
                else "emergency: mic open" if status.emergency is not None
                else "space held"
            )  # fmt: skip
            ptt.append(" TALKING ", style="bold white on red")
            ptt.append(f" ({how})")
        else:
            ptt.append("idle", style="bold")
            ptt.append(" (hold space to talk)", style="grey50")
        ptt.append(f"    volume {round(status.volume * 100)} %")
        if status.muted:
            ptt.append("  MUTED", style="bold yellow")
        if status.emergency is not None:
            ptt.append("  EMERGENCY", style="bold white on red")

        room = Text("room     ")
        voiced = b.fake_vs.voiced_total
        room.append(f"hears {self.rates.rate('voiced', voiced, now):.0f} voiced fr/s", style="bold")
        room.append(f" · {voiced} voiced frames so far (echoed back)")

        levels = Text("mic      ") + meter(status.mic_dbfs, "green")
        speaker = b.speaker
        levels += Text("\nspeaker  ") + meter(None if speaker is None else speaker.dbfs, "cyan")

        problems = [
            f"{name}: {part.describe(now)}"
            for name, part in status.devices.items()
            if part.state is not LinkState.UP
        ]
        lines: list[RenderableType] = [links, Text(""), leds, ptt, room, levels]
        if problems:
            lines.append(Text("devices  " + " · ".join(problems), style="red"))
        lines.append(Text("log", style="bold"))
        tail = self.logs.tail(LOG_LINES)
        for levelno, line in tail:
            style = "red" if levelno >= logging.ERROR else "yellow" * (levelno >= logging.WARNING)
            lines.append(Text(line, style=style, no_wrap=True, overflow="ellipsis"))
        lines.extend(Text("") for _ in range(LOG_LINES - len(tail)))
        lines.append(Text(KEYS_HELP, style="bold cyan", no_wrap=True, overflow="ellipsis"))
        where = str(b.speaker_path) if b.speaker_path else "ALSA default"
        return Panel(
            Group(*lines),
            title=f"field-agent demo · {b.elapsed():5.1f} s",
            subtitle=f"speaker → {where}",
            width=VIEW_WIDTH,
        )
