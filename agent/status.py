"""The agent's live state: what STATUS=, the LEDs, /status and the status topic show.

One :class:`StatusBoard` per agent, touched only from the event loop. Parts of
the agent report into it (``board.set_link("videosdk", LinkState.UP, "room x")``);
listeners are called on every *significant* change (link states, PTT, volume,
mute, errors; not the mic level, which moves every frame and is only sampled).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.secrets import RedactingFilter
from agent.service import escape


class LinkState(enum.Enum):
    """The state of one link or device, as a user would name it."""

    CONNECTING = "connecting"
    UP = "up"
    RETRY = "retry"  # down, next attempt scheduled (see ``retry_at``)
    ATTENTION = "attention"  # needs a person: auth refused, no credentials, device missing
    STOPPED = "stopped"


# Links that only bring audio in: their being up does not mean the mic is heard.
RECEIVE_ONLY_LINKS = frozenset({"orgo"})


class Led(enum.Enum):
    """What the status LED shows (README, "Operating the service")."""

    OFF = "off"
    BLINK_1HZ = "blink-1hz"  # connecting or reconnecting
    ON = "on"  # every enabled link up
    BLINK_4HZ = "blink-4hz"  # needs attention
    BLINK_FAST = "blink-fast"  # 10 Hz: emergency (the talk LED at its fastest)


# each blinking pattern's half period (s on = s off), for every LED driver
BLINK_HALF_S = {Led.BLINK_1HZ: 0.5, Led.BLINK_4HZ: 0.125, Led.BLINK_FAST: 0.05}


def led_lit(pattern: Led, since: float, now: float) -> bool:
    """Whether an LED showing ``pattern`` since ``since`` is lit at ``now`` (a blink
    starts lit)."""
    if pattern is Led.OFF:
        return False
    half = BLINK_HALF_S.get(pattern)
    return half is None or int((now - since) / half) % 2 == 0


def next_blink_edge(patterns: Iterable[tuple[Led, float]], now: float) -> float | None:
    """The next time after ``now`` that any of the (pattern, since) LEDs turns on or off;
    None if none blinks. LED drivers on the loop wake only then."""
    edges = [
        since + (int((now - since) / half) + 1) * half
        for pattern, since in patterns
        if (half := BLINK_HALF_S.get(pattern)) is not None
    ]
    return min(edges) if edges else None


class LedPatterns:
    """What a set of LEDs shows, driven from the asyncio loop with one timer.

    ``show(now)`` is the driver's write of every LED's state at loop time ``now`` (read
    it with :meth:`lit`); it returns False when the device is gone, and then nothing is
    shown again. It runs at each change and at each blink edge, never in between.
    """

    def __init__(self, loop: Any, show: Callable[[float], bool]) -> None:
        self._loop = loop
        self._show = show
        self.patterns: dict[str, tuple[Led, float]] = {}  # key -> (pattern, since)
        self._timer: Any = None  # asyncio.TimerHandle
        self.broken = False

    def set(self, key: str, pattern: Led) -> None:
        self.patterns[key] = (pattern, self._loop.time())
        self.update()

    def get(self, key: str) -> Led:
        entry = self.patterns.get(key)
        return entry[0] if entry is not None else Led.OFF

    def lit(self, key: str, now: float) -> bool:
        pattern, since = self.patterns.get(key, (Led.OFF, 0.0))
        return led_lit(pattern, since, now)

    def update(self) -> None:
        self.cancel()
        if self.broken:
            return
        now = self._loop.time()
        if not self._show(now):
            self.broken = True
            return
        edge = next_blink_edge(self.patterns.values(), now)
        if edge is not None:
            self._timer = self._loop.call_at(edge + 1e-4, self.update)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass
class PartStatus:
    state: LinkState
    detail: str = ""
    retry_at: float | None = None  # time.monotonic() of the next attempt

    def describe(self, now: float) -> str:
        if self.state is LinkState.RETRY and self.retry_at is not None:
            secs = max(0, math.ceil(self.retry_at - now))
            text = f"retry in {secs}s"
            return f"{self.detail}, {text}" if self.detail else text
        if self.state is LinkState.ATTENTION:
            return f"needs attention: {self.detail}" if self.detail else "needs attention"
        return f"{self.state.value} ({self.detail})" if self.detail else self.state.value


@dataclass
class StatusBoard:
    """Aggregated, user-facing state of the agent."""

    ptt_mode: str = "hold"
    clock: Callable[[], float] = time.monotonic
    links: dict[str, PartStatus] = field(default_factory=dict)
    devices: dict[str, PartStatus] = field(default_factory=dict)
    ptt_state: str = "idle"  # idle | talking
    volume: float = 0.8
    muted: bool = False
    mic_dbfs: float | None = None
    # hands-free processing, when it runs: {"erle_db", "gain_db", "cpu_percent"} (sampled)
    handsfree: dict[str, float | None] | None = None
    last_error: str = ""
    channel: Callable[[], dict[str, Any] | None] | None = None  # agent.channels: the room
    emergency: dict[str, Any] | None = None  # an active emergency (agent.emergency), or None
    emergency_at: float = 0.0  # its start, on ``clock``
    started_at: float = field(default_factory=time.monotonic)
    _listeners: list[Callable[[StatusBoard], None]] = field(default_factory=list, repr=False)

    # -- reporting -----------------------------------------------------------------
    def set_link(
        self, name: str, state: LinkState, detail: str = "", *, retry_in: float | None = None
    ) -> None:
        """Report the state of link ``name`` (videosdk, orgo, fastrtc, pbx)."""
        self._set(self.links, name, state, detail, retry_in)

    def set_device(
        self, name: str, state: LinkState, detail: str = "", *, retry_in: float | None = None
    ) -> None:
        """Report the state of a device (mic, speaker, gpio)."""
        self._set(self.devices, name, state, detail, retry_in)

    def remove_link(self, name: str) -> None:
        if self.links.pop(name, None) is not None:
            self._changed()

    def set_ptt(self, *, mode: str | None = None, state: str | None = None) -> None:
        new_mode = self.ptt_mode if mode is None else mode
        new_state = self.ptt_state if state is None else state
        if (new_mode, new_state) != (self.ptt_mode, self.ptt_state):
            self.ptt_mode, self.ptt_state = new_mode, new_state
            self._changed()

    def set_volume(self, volume: float, muted: bool) -> None:
        if (round(volume, 3), muted) != (round(self.volume, 3), self.muted):
            self.volume, self.muted = volume, muted
            self._changed()

    def set_error(self, message: str) -> None:
        """Remember the last user-relevant error (never a secret; control characters escaped)."""
        # in case a peer's words carried a secret, or line breaks and control characters
        message = escape(RedactingFilter.scrub(message))
        if message != self.last_error:
            self.last_error = message
            self._changed()

    def clear_error(self, prefix: str) -> None:
        """Forget the last error if it starts with ``prefix``: its cause is resolved (a
        good reload after a refused one, a part built after all)."""
        if self.last_error and self.last_error.startswith(prefix):
            self.last_error = ""
            self._changed()

    def set_emergency(self, doc: dict[str, Any] | None, *, started_at: float = 0.0) -> None:
        """An emergency started or changed (its description; ``started_at`` on ``clock``)
        or ended (None)."""
        if doc != self.emergency:
            self.emergency, self.emergency_at = doc, started_at
            self._changed()

    def set_mic_level(self, dbfs: float) -> None:
        """Sampled, not a significant change: does not call listeners."""
        self.mic_dbfs = dbfs

    def set_handsfree(
        self, erle_db: float | None, gain_db: float | None, cpu_percent: float
    ) -> None:
        """Hands-free figures (sampled, like the mic level: does not call listeners)."""
        self.handsfree = {
            "erle_db": None if erle_db is None else round(erle_db, 1),
            "gain_db": None if gain_db is None else round(gain_db, 1),
            "cpu_percent": round(cpu_percent, 2),
        }

    def add_listener(self, callback: Callable[[StatusBoard], None]) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[StatusBoard], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    # -- views -----------------------------------------------------------------------
    @property
    def led(self) -> Led:
        """Status LED pattern from the links and devices (see the README)."""
        parts = [*self.links.values(), *self.devices.values()]
        if any(p.state is LinkState.ATTENTION for p in parts):
            return Led.BLINK_4HZ
        active = [p for p in self.links.values() if p.state is not LinkState.STOPPED]
        if active and all(p.state is LinkState.UP for p in active):
            return Led.ON
        if not active and parts:
            return Led.ON if all(p.state is LinkState.UP for p in parts) else Led.BLINK_1HZ
        return Led.BLINK_1HZ

    @property
    def any_uplink_up(self) -> bool:
        """Whether the mic goes anywhere: a link that carries it is up (not Orgo's downlink)."""
        return any(
            p.state is LinkState.UP
            for name, p in self.links.items()
            if name not in RECEIVE_ONLY_LINKS
        )

    def summary(self) -> str:
        """The one-line STATUS, e.g. ``videosdk: up (room x) · ptt: idle · mic -32 dBFS``."""
        now = self.clock()
        items = [f"{name}: {p.describe(now)}" for name, p in self.links.items()]
        items += [
            f"{name}: {p.describe(now)}"
            for name, p in self.devices.items()
            if p.state is not LinkState.UP
        ]
        if self.emergency is not None:
            items.insert(0, "EMERGENCY")
        items.append(
            f"ptt: {self.ptt_state}" + ("" if self.ptt_mode == "hold" else f" ({self.ptt_mode})")
        )
        room = self.channel() if self.channel is not None else None
        if room is not None and room["count"] > 1:
            items.append(f"channel {room['number']} {room['name'] or room['id']}")
        if self.muted:
            items.append("muted")
        if self.mic_dbfs is not None:
            items.append(f"mic {max(self.mic_dbfs, -99.0):.0f} dBFS")
        return " · ".join(items)

    def to_json(self) -> dict[str, Any]:
        """The status document (``/status``, ``status_topic``)."""
        now = self.clock()

        def part(p: PartStatus) -> dict[str, Any]:
            d: dict[str, Any] = {"state": p.state.value, "detail": p.detail}
            if p.state is LinkState.RETRY and p.retry_at is not None:
                d["retry_in_s"] = round(max(0.0, p.retry_at - now), 1)
            return d

        return {
            "links": {n: part(p) for n, p in self.links.items()},
            "devices": {n: part(p) for n, p in self.devices.items()},
            "ptt": {"mode": self.ptt_mode, "state": self.ptt_state},
            "volume": round(self.volume, 3),
            "muted": self.muted,
            "mic_dbfs": None if self.mic_dbfs is None else round(self.mic_dbfs, 1),
            "handsfree": self.handsfree,
            "led": self.led.value,
            "uptime_s": round(now - self.started_at, 1),
            "last_error": self.last_error,
            "channel": self.channel() if self.channel is not None else None,
            "emergency": (
                None
                if self.emergency is None
                else {**self.emergency, "active_s": round(now - self.emergency_at, 1)}
            ),
        }

    # -- internals -----------------------------------------------------------------
    def _set(
        self,
        table: dict[str, PartStatus],
        name: str,
        state: LinkState,
        detail: str,
        retry_in: float | None,
    ) -> None:
        retry_at = None if retry_in is None else self.clock() + retry_in
        detail = escape(RedactingFilter.scrub(detail))  # server text: no control characters
        old = table.get(name)
        if old is not None and (old.state, old.detail, old.retry_at) == (state, detail, retry_at):
            return
        table[name] = PartStatus(state, detail, retry_at)
        self._changed()

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback(self)
