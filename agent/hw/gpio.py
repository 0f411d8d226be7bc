"""Buttons and LEDs over gpiozero, behind one typed class.

gpiozero is untyped and calls back on its own threads; :class:`GpioPanel` keeps
both facts inside: callers get typed methods, and every button event is handed
to the asyncio loop with ``call_soon_threadsafe``.

The simulated twin is gpiozero's own MockFactory (``gpio.pin_factory = "mock"`` or
``GPIOZERO_PIN_FACTORY=mock``): the same code path as on a Pi, with pins a test
or the demo can drive.

Debounce is done here, in software, because real buttons bounce and the mock
ignores ``bounce_time``: the first edge acts at once (no added latency), edges in
the next ``debounce_s`` are ignored, and when that window ends the pin is read
again so a press or release that happened inside it is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from agent.config import GpioConfig
from agent.errors import GpioUnavailable
from agent.status import BLINK_HALF_S, Led

logger = logging.getLogger(__name__)



class ButtonEvent(enum.Enum):
    PRESSED = "pressed"
    RELEASED = "released"


ButtonHandler = Callable[[str, ButtonEvent, float], None]  # (button key, event, monotonic time)


def pin_factory(name: str) -> Any:
    """A gpiozero pin factory by name ("" = gpiozero's default choice, returns None)."""
    if not name:
        return None
    ep = next((e for e in entry_points(group="gpiozero_pin_factories") if e.name == name), None)
    if ep is None:
        raise GpioUnavailable(f"gpiozero has no pin factory {name!r}")
    try:
        return ep.load()()
    except Exception as e:  # each factory fails its own way on a machine without its chip
        raise GpioUnavailable(
            f"pin factory {name!r} cannot start: {e.__class__.__name__}: {e}"
        ) from None


@dataclass
class _Debounced:
    pressed: bool = False
    last_edge: float = float("-inf")
    check: asyncio.TimerHandle | None = None


class GpioPanel:
    """The device's buttons (``gpio.*_button``) and LEDs (``gpio.*_led``)."""

    def __init__(
        self,
        cfg: GpioConfig,
        *,
        loop: asyncio.AbstractEventLoop,
        on_button: ButtonHandler,
        debounce_s: float = 0.02,
        factory: Any = None,
    ) -> None:
        from gpiozero import LED, Button

        self._loop = loop
        self._on_button = on_button
        self._debounce_s = debounce_s
        self._buttons: dict[str, Any] = {}
        self._leds: dict[str, Any] = {}
        self._led_state: dict[str, Led] = {}
        self._state: dict[str, _Debounced] = {}
        factory = factory if factory is not None else pin_factory(cfg.pin_factory)
        try:
            for key, pin in cfg.pins().items():
                if key.endswith("_button"):
                    b = Button(pin, pull_up=True, pin_factory=factory)
                    b.when_pressed = lambda _d=None, k=key: self._edge(k, True)
                    b.when_released = lambda _d=None, k=key: self._edge(k, False)
                    self._buttons[key] = b
                    self._state[key] = _Debounced()
                else:
                    self._leds[key] = LED(pin, pin_factory=factory)
                    self._led_state[key] = Led.OFF
        except GpioUnavailable:
            self.close()
            raise
        except Exception as e:  # gpiozero: BadPinFactory, PinInvalidPin, OSError on /dev/gpiochip*
            self.close()
            raise GpioUnavailable(f"GPIO unavailable: {e.__class__.__name__}: {e}") from None
        logger.info(
            "gpio: buttons %s, leds %s",
            sorted(self._buttons) or "none",
            sorted(self._leds) or "none",
        )

    # -- buttons -------------------------------------------------------------------
    def _edge(self, key: str, pressed: bool) -> None:
        """On a gpiozero thread: hand the edge to the loop with its time."""
        t = time.monotonic()
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self._on_edge, key, pressed, t)

    def _on_edge(self, key: str, pressed: bool, t: float) -> None:
        st = self._state[key]
        if t - st.last_edge < self._debounce_s or pressed == st.pressed:
            return  # a bounce inside the window, or no change
        st.last_edge, st.pressed = t, pressed
        self._on_button(key, ButtonEvent.PRESSED if pressed else ButtonEvent.RELEASED, t)
        if st.check is None:
            st.check = self._loop.call_later(self._debounce_s, self._settle, key)

    def _settle(self, key: str) -> None:
        """End of the debounce window: act on the pin's real state if it differs."""
        st = self._state[key]
        st.check = None
        button = self._buttons.get(key)
        if button is None:
            return
        actual = bool(button.is_pressed)
        if actual != st.pressed:
            st.last_edge = float("-inf")
            self._on_edge(key, actual, time.monotonic())

    def is_pressed(self, key: str) -> bool:
        return self._state[key].pressed if key in self._state else False

    # -- LEDs ----------------------------------------------------------------------
    @property
    def leds(self) -> frozenset[str]:
        return frozenset(self._leds)

    def set_led(self, key: str, pattern: Led) -> None:
        """Show ``pattern`` on LED ``key`` (no-op for an LED that is not configured)."""
        led = self._leds.get(key)
        if led is None or self._led_state.get(key) is pattern:
            return
        self._led_state[key] = pattern
        if pattern is Led.ON:
            led.on()
        elif pattern is Led.OFF:
            led.off()
        else:
            half = BLINK_HALF_S[pattern]
            led.blink(on_time=half, off_time=half, background=True)

    def led_pattern(self, key: str) -> Led:
        return self._led_state.get(key, Led.OFF)

    def close(self) -> None:
        """LEDs off, pins released."""
        for led in self._leds.values():
            try:
                led.off()
                led.close()
            except Exception:  # closing must not fail a shutdown
                logger.debug("closing an LED failed", exc_info=True)
        for b in self._buttons.values():
            try:
                b.close()
            except Exception:
                logger.debug("closing a button failed", exc_info=True)
        for st in self._state.values():
            if st.check is not None:
                st.check.cancel()
        self._leds.clear()
        self._buttons.clear()
