"""The emergency button: a long hold raises an alarm the room hears about until cancelled.

:class:`Emergency` is the state machine behind ``gpio.emergency_button``:

- **Trigger**: the button held down for ``emergency.hold_s`` (2 s) without a release.
  Every release restarts the count, so chatter (a bouncing or loose contact, a knock)
  never triggers; the press edges come debounced from :class:`agent.hw.gpio.GpioPanel`.
- **While active**: an alert is published on ``videosdk.alert_topic`` at once and every
  ``emergency.alert_every_s`` (10 s) until cancelled; while the link is down, the repeat
  that fell due goes out as soon as it is up again (repeats never pile up in the
  outbox). The mic is open for ``emergency.open_mic_s`` whatever the PTT mode
  (:meth:`agent.ptt.PttGate.force_open`), the talk LED blinks at its fastest, the
  alarm cue plays; ``field-agent status`` shows it (``emergency`` in the status
  document).
- **Cancel**: another hold of ``hold_s``, or a signed remote command
  ``{"cmd":"emergency","value":"cancel"}`` (authorized in :mod:`agent.controls` like
  every command). A last alert with ``"state": "cancelled"`` says who cancelled it.
- **Power cut**: the start of an emergency is written to the state file at once
  (fsynced) and removed at its cancel. An agent that starts and finds one there does
  *not* resume it (a restart must not open a mic on its own): it logs a warning,
  counts ``emergencies_interrupted_total`` and publishes one alert with
  ``"state": "interrupted"`` once the link is up, so the console learns the alarm ended
  without a cancel. A person who still needs help holds the button again.

Alert document (JSON on the topic)::

    {"alert": "emergency", "state": "active" | "cancelled" | "interrupted",
     "device": {"id": "dev_12", "name": "Field Device 12"}, "time": "<ISO, device clock>",
     "since": "<ISO, device clock>", "active_s": 12.0, "seq": 2, "by": "button"}

``time`` and ``since`` are the device's clock, which may be wrong (no RTC, no NTP yet);
``active_s`` is measured on the monotonic clock, and VideoSDK stamps every message with
its own time on arrival.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.config import Config
from agent.metrics import Metrics
from agent.state import StateStore
from agent.status import LinkState, StatusBoard

logger = logging.getLogger(__name__)

ALERT_LINK = "videosdk"  # the link that carries the alert topic


def iso(epoch_s: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``2026-01-01T00:00:00.000Z``)."""
    try:
        t = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    except (ValueError, OverflowError, OSError):  # a device clock out of datetime's range
        return f"@{epoch_s:.0f}"
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Emergency:
    """Hold to trigger, hold again (or an authorized command) to cancel; see the module."""

    def __init__(
        self,
        config: Callable[[], Config],
        *,
        status: StatusBoard,
        store: StateStore,
        publish: Callable[[dict[str, Any]], bool] | None,
        on_event: Callable[[str], None],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``publish``: puts an alert on the alert topic (False: no link to take it);
        ``on_event``: ``"triggered"``, ``"mic_closed"`` or ``"cancelled"``, for the
        controls to act on (gate, LEDs, cue)."""
        self._config = config
        self._status = status
        self._store = store
        self._publish = publish
        self._on_event = on_event
        self._metrics = metrics
        self._clock = clock
        self._wall = wall_clock
        self.active = False
        self.mic_open = False
        self.by = ""
        self._since = 0.0  # monotonic
        self._since_wall = 0.0
        self._seq = 0
        self._due: list[dict[str, Any]] = []  # alerts waiting for the link to be up
        self._pressed = False
        self._hold: asyncio.TimerHandle | None = None
        self._repeat: asyncio.TimerHandle | None = None
        self._mic_timer: asyncio.TimerHandle | None = None
        self._metrics.set("emergency_active", 0)
        self._recover(store.load().get("emergency"))

    # -- inputs ----------------------------------------------------------------------
    def button(self, pressed: bool, t: float) -> None:
        """An edge of the emergency button (monotonic time ``t``): a hold of ``hold_s``
        with no release in between triggers, or cancels an active emergency."""
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        self._pressed = pressed
        if pressed:
            hold_s = self._config().emergency.hold_s
            wait = max(0.0, hold_s - (self._clock() - t))
            self._hold = asyncio.get_running_loop().call_later(wait, self._held)

    def trigger(self, by: str) -> None:
        """Start an emergency (no-op when one is active)."""
        if self.active:
            return
        cfg = self._config()
        self.active, self.by, self._seq = True, by, 0
        self._since, self._since_wall = self._clock(), self._wall()
        self._metrics.inc("emergencies_total", by=by)
        self._metrics.set("emergency_active", 1)
        open_s = cfg.emergency.open_mic_s
        logger.warning(
            "EMERGENCY triggered by the %s; alerting on %s every %g s, mic open for %g s",
            by,
            cfg.videosdk.alert_topic or "(no alert topic)",
            cfg.emergency.alert_every_s,
            open_s,
        )
        self._store.save(emergency={"since": self._since_wall, "by": by})
        self._store.flush()  # now: a power cut in the next seconds must still know
        loop = asyncio.get_running_loop()
        if open_s > 0:
            self.mic_open = True
            self._mic_timer = loop.call_later(open_s, self._close_mic)
        self._show()
        self._on_event("triggered")
        self._send(self._alert("active"))
        self._repeat = loop.call_later(cfg.emergency.alert_every_s, self._again)

    def cancel(self, by: str, *, sender: str = "") -> bool:
        """End the emergency (``by``: ``button`` or ``remote``, with the command's
        ``sender``); False when none is active."""
        if not self.active:
            return False
        active_s = self._clock() - self._since
        last = self._alert("cancelled", by=by)
        if sender:
            last["sender"] = sender
        for timer in (self._repeat, self._mic_timer):
            if timer is not None:
                timer.cancel()
        self._repeat = self._mic_timer = None
        self.active = self.mic_open = False
        self._metrics.inc("emergency_cancels_total", by=by)
        self._metrics.set("emergency_active", 0)
        who = f"{by} command from {sender}" if sender else by
        logger.warning("emergency cancelled by the %s after %.0f s", who, active_s)
        self._store.save(emergency=None)
        self._store.flush()
        self._due = [d for d in self._due if d["state"] != "active"]  # stale repeats
        self._show()
        self._on_event("cancelled")
        self._send(last)
        return True

    def link_changed(self) -> None:
        """The status board changed: alerts that waited for the link go out once it is up."""
        if self._due and self._link_up():
            due, self._due = self._due, []
            for doc in due:
                self._send(doc)

    def close(self) -> None:
        """A clean stop: timers off (the state file keeps an active emergency: the next
        start reports it as interrupted)."""
        for timer in (self._hold, self._repeat, self._mic_timer):
            if timer is not None:
                timer.cancel()
        self._hold = self._repeat = self._mic_timer = None

    # -- internals -------------------------------------------------------------------
    def _held(self) -> None:
        self._hold = None
        if not self._pressed:
            return
        if self.active:
            self.cancel("button")
        else:
            self.trigger("button")

    def _again(self) -> None:
        self._repeat = None
        if not self.active:
            return
        doc = self._alert("active")
        if self._link_up():
            self._send(doc)
        else:  # only the newest repeat waits for the link
            self._due = [d for d in self._due if d["state"] != "active"] + [doc]
        every = self._config().emergency.alert_every_s
        self._repeat = asyncio.get_running_loop().call_later(every, self._again)

    def _close_mic(self) -> None:
        self._mic_timer = None
        if self.active and self.mic_open:
            self.mic_open = False
            logger.warning(
                "emergency: the open mic closes after %g s (alerts go on until cancelled)",
                self._config().emergency.open_mic_s,
            )
            self._show()
            self._on_event("mic_closed")

    def _alert(self, state: str, *, by: str | None = None) -> dict[str, Any]:
        self._seq += 1
        device = self._config().device
        return {
            "alert": "emergency",
            "state": state,
            "device": {"id": device.id, "name": device.name or device.id},
            "time": iso(self._wall()),
            "since": iso(self._since_wall),
            "active_s": round(self._clock() - self._since, 1),
            "seq": self._seq,
            "by": self.by if by is None else by,
        }

    def _send(self, doc: dict[str, Any]) -> None:
        if self._publish is not None and self._publish(doc):
            self._metrics.inc("emergency_alerts_total", state=doc["state"])
            logger.info("emergency alert %d (%s) published", doc["seq"], doc["state"], extra=_LOG)
            return
        # no link to take it now: sent once one is up (of the repeats, the newest only)
        if doc["state"] == "active":
            self._due = [d for d in self._due if d["state"] != "active"]
        self._due.append(doc)

    def _link_up(self) -> bool:
        part = self._status.links.get(ALERT_LINK)
        return part is not None and part.state is LinkState.UP

    def _show(self) -> None:
        if not self.active:
            self._status.set_emergency(None)
            return
        self._status.set_emergency(
            {"since": iso(self._since_wall), "by": self.by, "mic_open": self.mic_open},
            started_at=self._since,
        )

    def _recover(self, saved: Any) -> None:
        """An emergency in the state file: it was active when the agent stopped."""
        if not isinstance(saved, dict):
            return
        since = float(saved["since"])
        logger.warning(
            "an emergency (by the %s, since %s on the device clock) was active when the agent "
            "stopped (power cut?); it is not resumed: hold the emergency button again if needed",
            saved["by"],
            iso(since),
        )
        self._metrics.inc("emergencies_interrupted_total")
        self._since_wall, self.by = since, str(saved["by"])
        self._since = self._clock()
        doc = self._alert("interrupted")
        doc["active_s"] = None  # unknown: the agent was down
        self._due.append(doc)
        self._store.save(emergency=None)


_LOG = {"LINK": ALERT_LINK}
