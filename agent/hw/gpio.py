"""Buttons and LEDs, behind one typed class.

Two ways to drive the lines (``gpio.backend``):

- **chardev** (the default wherever gpiozero would use lgpio): the lines are requested
  from the kernel's GPIO character device (``/dev/gpiochipN``) with the maintained
  ``gpiod`` bindings of libgpiod v2, and served by the asyncio loop: the request's file
  descriptor is on the loop for the buttons' edge events (timestamped by the kernel),
  and a blinking LED is a loop timer at each of its edges. Nothing wakes while no button
  moves and no LED blinks. (lgpio, under gpiozero, runs two threads of its own from the
  moment a chip is open: an alert thread that polls every 0.5 ms as long as any button
  exists, and a transmit thread that wakes at least 50 times a second; plus gpiozero's
  hold thread per button: about 1100 wakeups a second on an idle device.)
- **gpiozero**: ``gpiozero.Button`` and ``LED`` on the pin factory (mock pins for the
  tests and the demo, or a board's other factories). gpiozero is untyped and calls back
  on its own threads; every edge is handed to the loop with ``call_soon_threadsafe``.

Either way the loop gets ``(key, pressed, monotonic time)`` and :class:`GpioPanel`
debounces it, so the callers see one typed event stream. Debounce is done here, in
software, because real buttons bounce and the mock ignores ``bounce_time``: the first
edge acts at once (no added latency), edges in the next ``debounce_s`` are ignored, and
when that window ends the pin is read again so a press or release that happened inside
it is not lost. The simulated twin is gpiozero's MockFactory (``gpio.pin_factory =
"mock"`` or ``GPIOZERO_PIN_FACTORY=mock``), with pins a test or the demo can drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import glob
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from agent.config import GpioConfig
from agent.errors import GpioUnavailable
from agent.status import BLINK_HALF_S, Led, LedPatterns

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


EdgeHandler = Callable[[str, bool, float], None]  # (button key, pressed, monotonic time)

# The Raspberry Pi's 40-pin header controllers, by gpiochip label: BCM numbers are their
# line offsets. Pi 0-3, Pi 4, Pi 5 (RP1; gpiochip4 on early Pi 5 kernels, gpiochip0 later).
HEADER_CHIP_LABELS = ("pinctrl-bcm2835", "pinctrl-bcm2711", "pinctrl-rp1")
CONSUMER = "field-agent"


def header_chip() -> str | None:
    """The gpiochip whose lines are the header's BCM numbers: the Pi's header controller
    by label, else ``/dev/gpiochip0`` (what gpiozero's lgpio factory opens); None without
    any chip (or without the ``gpiod`` package)."""
    try:
        import gpiod
    except ImportError:
        return None
    chips = sorted(glob.glob("/dev/gpiochip*"), key=lambda p: (len(p), p))
    for path in chips:
        try:
            if not gpiod.is_gpiochip_device(path):
                continue
            with gpiod.Chip(path) as chip:
                if chip.get_info().label in HEADER_CHIP_LABELS:
                    return path
        except OSError:  # a chip we may not open: not ours to judge here
            continue
    return "/dev/gpiochip0" if "/dev/gpiochip0" in chips else (chips[0] if chips else None)


def chardev_chip(cfg: GpioConfig) -> str | None:
    """The gpiochip to drive the lines through, or None for gpiozero.

    ``gpio.backend``: "gpiozero" never; "chardev" always (GpioUnavailable if it
    cannot: no ``gpiod``, no chip); "auto" when the pin factory would be lgpio
    (``gpio.pin_factory`` "" or "lgpio", and no other ``GPIOZERO_PIN_FACTORY`` or
    ``gpiozero.Device.pin_factory`` chosen before) and a chip is there.
    """
    mode = cfg.backend
    if mode == "gpiozero":
        return None
    if mode == "auto":
        chosen = cfg.pin_factory or os.environ.get("GPIOZERO_PIN_FACTORY", "")
        # a factory set by a program (the demo, tests) before us; gpiozero is not
        # imported for the chardev path (it costs ~9 MB of RSS), so only if it is loaded
        gz = sys.modules.get("gpiozero")
        preset = getattr(getattr(gz, "Device", None), "pin_factory", None)
        if chosen not in ("", "lgpio") or (
            not cfg.pin_factory and preset is not None and type(preset).__name__ != "LGPIOFactory"
        ):
            return None
    path = header_chip()
    if path is None and mode == "chardev":
        try:
            import gpiod  # noqa: F401
        except ImportError:
            raise GpioUnavailable(
                "gpio.backend = 'chardev' needs the gpiod package "
                "(pip install 'field-agent[gpio]')"
            ) from None
        raise GpioUnavailable("gpio.backend = 'chardev': no /dev/gpiochip* on this machine")
    return path


class ChardevLines:
    """The buttons and LEDs as one line request on a gpiochip, served by the loop.

    Buttons are inputs with the pull-up on and active-low (a button to ground reads
    "pressed" as active), edges both ways, timestamped by the kernel on CLOCK_MONOTONIC
    (``time.monotonic()``'s clock): the request's descriptor is on the loop, so nothing
    wakes while no button moves. LEDs are outputs, active-high, off at first; a blink is
    a loop timer at each of its edges (one timer for all LEDs), none while none blinks.
    """

    def __init__(
        self,
        path: str,
        buttons: dict[str, int],
        leds: dict[str, int],
        *,
        loop: asyncio.AbstractEventLoop,
        on_edge: EdgeHandler,
        on_lost: Callable[[], None],
    ) -> None:
        import gpiod
        from gpiod.line import Bias, Direction, Edge, Value

        self._value = {True: Value.ACTIVE, False: Value.INACTIVE}
        self._rising = gpiod.EdgeEvent.Type.RISING_EDGE
        self._loop = loop
        self._on_edge = on_edge
        self._on_lost = on_lost
        self._seqno: int | None = None  # the last edge event's (the request's numbering)
        self._keys = {offset: key for key, offset in buttons.items()}
        self._offsets = {**buttons, **leds}
        self.leds = frozenset(leds)
        self._lit: dict[str, bool] = dict.fromkeys(leds, False)
        self._leds = LedPatterns(loop, self._write)
        config: dict[Iterable[int | str] | int | str, gpiod.LineSettings | None] = {}
        if buttons:
            config[tuple(buttons.values())] = gpiod.LineSettings(
                direction=Direction.INPUT, edge_detection=Edge.BOTH, bias=Bias.PULL_UP,
                active_low=True,
            )  # fmt: skip
        if leds:
            config[tuple(leds.values())] = gpiod.LineSettings(
                direction=Direction.OUTPUT, output_value=Value.INACTIVE
            )
        try:
            self._request = gpiod.request_lines(path, consumer=CONSUMER, config=config)
        except (OSError, ValueError) as e:  # EBUSY: a line taken; EINVAL: no such line
            raise GpioUnavailable(
                f"{path}: cannot request lines {sorted(self._offsets.values())}: "
                f"{e.__class__.__name__}: {e}"
            ) from None
        self.path = path
        self._fd = self._request.fd
        if buttons:
            loop.add_reader(self._fd, self._read)

    # -- buttons -------------------------------------------------------------------
    def _read(self) -> None:
        try:
            events = self._request.read_edge_events()
        except OSError as e:  # the chip went away (an unbound driver, a hot-unplugged board)
            logger.error(
                "gpio: reading button edges from %s failed (%s); buttons are off", self.path, e
            )
            self._loop.remove_reader(self._fd)
            return
        lost = 0
        for ev in events:
            if self._seqno is not None:
                lost += max(0, ev.global_seqno - self._seqno - 1)
            self._seqno = ev.global_seqno
            key = self._keys.get(ev.line_offset)
            if key is not None:
                self._on_edge(key, ev.event_type == self._rising, ev.timestamp_ns / 1e9)
        if lost:
            # a flood (a chattering contact, noise on a line) overflowed the kernel's
            # event buffer, which drops the oldest: the lines are read again, so a
            # release among the lost edges cannot leave PTT held
            logger.warning(
                "gpio: the kernel dropped %d button edge(s) on %s (a flood); reading the "
                "buttons again", lost, self.path,
            )  # fmt: skip
            self._on_lost()

    def is_pressed(self, key: str) -> bool:
        return bool(self._request.get_value(self._offsets[key]) == self._value[True])

    # -- LEDs ----------------------------------------------------------------------
    def set_led(self, key: str, pattern: Led) -> None:
        self._leds.set(key, pattern)

    def _write(self, now: float) -> bool:
        """Set each LED line to what its pattern shows at ``now``; False once the chip
        is gone (said once; the LEDs stay as they are)."""
        for key in self._leds.patterns:
            lit = self._leds.lit(key, now)
            if lit == self._lit[key]:
                continue
            try:
                self._request.set_value(self._offsets[key], self._value[lit])
            except OSError as e:
                logger.error("gpio: setting LED %s on %s failed (%s); LEDs stay as they are",
                             key, self.path, e)  # fmt: skip
                return False
            self._lit[key] = lit
        return True

    def close(self) -> None:
        """LEDs off, lines released (they keep no state after the release)."""
        for key in self.leds:
            self._leds.patterns[key] = (Led.OFF, 0.0)
        with contextlib.suppress(Exception):  # closing must not fail a shutdown
            self._leds.update()
        self._leds.cancel()
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(Exception):
            self._request.release()


@dataclass
class _Debounced:
    pressed: bool = False
    last_edge: float = float("-inf")
    check: asyncio.Handle | None = None  # a settle scheduled (TimerHandle, or soon)


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
        self._loop = loop
        self._on_button = on_button
        self._debounce_s = debounce_s
        self._buttons: dict[str, Any] = {}
        self._leds: dict[str, Any] = {}
        self._led_state: dict[str, Led] = {}
        self._chardev: ChardevLines | None = None
        pins = cfg.pins()
        buttons = {k: pin for k, pin in pins.items() if k.endswith("_button")}
        leds = {k: pin for k, pin in pins.items() if not k.endswith("_button")}
        self._state: dict[str, _Debounced] = {key: _Debounced() for key in buttons}
        try:
            # a factory object handed in (tests, the demo) is gpiozero's by definition
            path = chardev_chip(cfg) if factory is None else None
            if path is not None:
                try:
                    self._chardev = ChardevLines(
                        path, buttons, leds, loop=loop, on_edge=self._on_edge,
                        on_lost=self._resync,
                    )
                except GpioUnavailable as e:
                    if cfg.backend == "chardev":
                        raise
                    logger.warning("gpio: %s; driving the lines through gpiozero", e)
            if self._chardev is None:
                from gpiozero import LED, Button

                factory = factory if factory is not None else pin_factory(cfg.pin_factory)
                for key, pin in buttons.items():
                    b = Button(pin, pull_up=True, pin_factory=factory)
                    b.when_pressed = lambda _d=None, k=key: self._edge(k, True)
                    b.when_released = lambda _d=None, k=key: self._edge(k, False)
                    self._buttons[key] = b
                for key, pin in leds.items():
                    self._leds[key] = LED(pin, pin_factory=factory)
            self._led_state = dict.fromkeys(leds, Led.OFF)
        except GpioUnavailable:
            self.close()
            raise
        except Exception as e:  # gpiozero: BadPinFactory, PinInvalidPin, OSError on /dev/gpiochip*
            self.close()
            raise GpioUnavailable(f"GPIO unavailable: {e.__class__.__name__}: {e}") from None
        logger.info(
            "gpio: buttons %s, leds %s (%s)",
            sorted(buttons) or "none",
            sorted(leds) or "none",
            f"the character device {self._chardev.path}" if self._chardev else "gpiozero",
        )

    @property
    def source(self) -> str:
        """What drives the lines: a gpiochip path, or "gpiozero"."""
        return self._chardev.path if self._chardev is not None else "gpiozero"

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
        if self._chardev is not None:
            try:
                actual = self._chardev.is_pressed(key)
            except OSError:
                return  # the chip is gone; _read has said so
        else:
            button = self._buttons.get(key)
            if button is None:
                return
            actual = bool(button.is_pressed)
        if actual != st.pressed:
            st.last_edge = float("-inf")
            self._on_edge(key, actual, time.monotonic())

    def _resync(self) -> None:
        """Edges were lost: read every button again (at once, or when its debounce
        window ends)."""
        for key, st in self._state.items():
            if st.check is None:
                st.check = self._loop.call_soon(self._settle, key)

    def is_pressed(self, key: str) -> bool:
        return self._state[key].pressed if key in self._state else False

    # -- LEDs ----------------------------------------------------------------------
    @property
    def leds(self) -> frozenset[str]:
        return frozenset(self._led_state)

    def set_led(self, key: str, pattern: Led) -> None:
        """Show ``pattern`` on LED ``key`` (no-op for an LED that is not configured)."""
        if key not in self._led_state or self._led_state[key] is pattern:
            return
        self._led_state[key] = pattern
        if self._chardev is not None:
            self._chardev.set_led(key, pattern)
            return
        led = self._leds[key]
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
        if self._chardev is not None:
            self._chardev.close()
            self._chardev = None
        for st in self._state.values():
            if st.check is not None:
                st.check.cancel()
        self._leds.clear()
        self._buttons.clear()
        self._led_state.clear()
