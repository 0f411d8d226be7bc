"""APA102 RGB LEDs over SPI (the ReSpeaker 2-Mic HAT's three), behind the LED interface
of :class:`agent.hw.gpio.GpioPanel`: ``set_led(key, pattern)``.

Each LED of the chain shows one of the two LED roles (``pixels.leds``: ``status_led``,
``talk_led`` or off) with the same patterns as the plain LEDs, in colour:

=================  =====================================  ==============================
pattern            status_led                             talk_led
=================  =====================================  ==============================
``ON``             green: every link up                   red: transmitting
``BLINK_1HZ``      amber, 1 Hz: connecting                amber, 1 Hz
``BLINK_4HZ``      red, 4 Hz: needs attention             amber, 4 Hz: PTT into no link
``BLINK_FAST``     red, 10 Hz                             red, 10 Hz: emergency
``OFF``            dark                                   dark
=================  =====================================  ==============================

The wire format (APA102 datasheet): a start frame of 32 zero bits; per LED one 32-bit
frame ``0b111`` + 5-bit global brightness, then blue, green, red (8 bits each); an end
frame of at least half a clock per LED (:func:`end_frame_bytes` zero bytes, at least 4).
:func:`encode` and :func:`decode` are pure; a frame is written only when it changes
(a blink is two writes per period).

The bus is one typed interface, :class:`SpiBus`: :class:`SpidevBus` on a device
(``spidev`` over the kernel's ``/dev/spidevB.D``; the extra ``field-agent[pixels]``)
and :class:`MemoryBus`, the simulated twin, which keeps every frame so tests can
decode what a person would see. No SPI device, or no ``spidev``:
:class:`~agent.errors.PixelsUnavailable` with a one-line reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.config import PixelsConfig
from agent.errors import PixelsUnavailable
from agent.status import Led, LedPatterns

logger = logging.getLogger(__name__)

Rgb = tuple[int, int, int]
DARK: Rgb = (0, 0, 0)
GREEN: Rgb = (0, 255, 0)
AMBER: Rgb = (255, 120, 0)
RED: Rgb = (255, 0, 0)
WHITE: Rgb = (255, 255, 255)

COLOURS: dict[str, dict[Led, Rgb]] = {
    "status_led": {Led.ON: GREEN, Led.BLINK_1HZ: AMBER, Led.BLINK_4HZ: RED, Led.BLINK_FAST: RED},
    "talk_led": {Led.ON: RED, Led.BLINK_1HZ: AMBER, Led.BLINK_4HZ: AMBER, Led.BLINK_FAST: RED},
}
MAX_BRIGHTNESS = 31  # the 5-bit global brightness field
START_FRAME = b"\x00\x00\x00\x00"


@dataclass(frozen=True, slots=True)
class Pixel:
    """One LED as a frame sets it."""

    brightness: int  # 0..31
    rgb: Rgb

    @property
    def lit(self) -> bool:
        return self.brightness > 0 and self.rgb != DARK


def end_frame_bytes(count: int) -> int:
    """Zero bytes after the LED frames: half a clock per LED, at least 32 bits."""
    return max(4, math.ceil(count / 16))


def brightness_level(fraction: float) -> int:
    """``pixels.brightness`` (0.0..1.0) as the 5-bit field (0..31)."""
    return max(0, min(MAX_BRIGHTNESS, round(fraction * MAX_BRIGHTNESS)))


def encode(colours: Sequence[Rgb], level: int) -> bytes:
    """One frame for the chain: every LED at ``level`` (0..31) with its colour."""
    out = bytearray(START_FRAME)
    for r, g, b in colours:
        lit = (r, g, b) != DARK
        out += bytes((0xE0 | (level if lit else 0), b, g, r))
    out += bytes(end_frame_bytes(len(colours)))
    return bytes(out)


def decode(frame: bytes, count: int) -> list[Pixel]:
    """The LEDs a frame sets; ValueError when it is not a well-formed APA102 frame."""
    want = len(START_FRAME) + 4 * count + end_frame_bytes(count)
    if len(frame) != want:
        raise ValueError(f"frame of {len(frame)} bytes, {want} expected for {count} LEDs")
    if frame[:4] != START_FRAME:
        raise ValueError("no start frame (32 zero bits)")
    pixels = []
    for i in range(count):
        head, b, g, r = frame[4 + 4 * i : 8 + 4 * i]
        if head & 0xE0 != 0xE0:
            raise ValueError(f"LED {i}: frame does not start with 0b111")
        pixels.append(Pixel(head & 0x1F, (r, g, b)))
    if any(frame[4 + 4 * count :]):
        raise ValueError("end frame is not zero")
    return pixels


class SpiBus(Protocol):
    """Where frames go: a real SPI device or the simulated twin."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class SpidevBus:
    """``/dev/spidevBUS.DEVICE`` through the ``spidev`` module (mode 0, ``speed_hz``)."""

    def __init__(self, bus: int, device: int, speed_hz: int) -> None:
        path = f"/dev/spidev{bus}.{device}"
        try:
            import spidev  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise PixelsUnavailable(
                "pixel LEDs: the spidev module is not installed "
                "(pip install spidev into the agent's venv)"
            ) from None
        dev: Any = spidev.SpiDev()
        try:
            dev.open(bus, device)
            dev.mode = 0
            dev.max_speed_hz = speed_hz
        except FileNotFoundError:
            dev.close()
            raise PixelsUnavailable(
                f"pixel LEDs: no SPI device {path} (enable SPI: dtparam=spi=on in "
                "/boot/firmware/config.txt; check pixels.spi_bus and pixels.spi_device)"
            ) from None
        except OSError as e:
            dev.close()
            raise PixelsUnavailable(
                f"pixel LEDs: cannot open {path}: {e.strerror or type(e).__name__}"
            ) from None
        self._dev = dev
        self.path = path

    def write(self, data: bytes) -> None:
        self._dev.writebytes2(data)

    def close(self) -> None:
        self._dev.close()


class MemoryBus:
    """The simulated twin: every frame written, oldest first (the last ``keep``)."""

    def __init__(self, keep: int = 10_000) -> None:
        self.frames: list[bytes] = []
        self.keep = keep
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise OSError("bus closed")
        self.frames.append(bytes(data))
        del self.frames[: -self.keep]

    def close(self) -> None:
        self.closed = True


def open_bus(cfg: PixelsConfig) -> SpiBus:
    """The real bus of ``cfg``; :class:`PixelsUnavailable` with the reason."""
    return SpidevBus(cfg.spi_bus, cfg.spi_device, cfg.speed_hz)


class PixelLeds:
    """The chain of ``cfg.count`` LEDs, each showing its role's pattern in colour."""

    def __init__(self, cfg: PixelsConfig, bus: SpiBus, *, loop: asyncio.AbstractEventLoop) -> None:
        self.roles = tuple(cfg.leds) + ("",) * (cfg.count - len(cfg.leds))
        self.level = brightness_level(cfg.brightness)
        self._bus = bus
        self._leds = LedPatterns(loop, self._write)
        self._last: bytes | None = None
        self._leds.update()  # all dark: whatever the chain showed before is cleared
        logger.info(
            "pixels: %d APA102 LEDs (%s)",
            len(self.roles),
            ", ".join(r or "off" for r in self.roles),
        )

    @property
    def leds(self) -> frozenset[str]:
        return frozenset(r for r in self.roles if r)

    def set_led(self, key: str, pattern: Led) -> None:
        """Show ``pattern`` on the LEDs of role ``key`` (no-op for a role none shows)."""
        if key not in self.roles or self.led_pattern(key) is pattern:
            return
        self._leds.set(key, pattern)

    def led_pattern(self, key: str) -> Led:
        return self._leds.get(key)

    def colours(self, now: float) -> list[Rgb]:
        """What each LED shows at loop time ``now``."""
        return [self._colour(role, now) for role in self.roles]

    def _colour(self, role: str, now: float) -> Rgb:
        if not role or not self._leds.lit(role, now):
            return DARK
        return COLOURS.get(role, {}).get(self._leds.get(role), WHITE)

    def _write(self, now: float) -> bool:
        """Write the frame for ``now`` if it changed; False once the device is gone."""
        frame = encode(self.colours(now), self.level)
        if frame != self._last:
            try:
                self._bus.write(frame)
            except OSError as e:  # the device went away: say it once, stop driving it
                logger.error(
                    "pixels: writing to the LEDs failed (%s); they stay as they are",
                    e.strerror or e,
                )
                return False
            self._last = frame
        return True

    def close(self) -> None:
        """LEDs dark, bus released."""
        self._leds.cancel()
        self._leds.patterns.clear()
        if not self._leds.broken:
            try:
                self._bus.write(encode([DARK] * len(self.roles), 0))
            except OSError:
                logger.debug("pixels: the last write failed", exc_info=True)
        try:
            self._bus.close()
        except OSError:
            logger.debug("pixels: closing the bus failed", exc_info=True)


async def selftest(
    cfg: PixelsConfig, out: Any = print, *, bus: SpiBus | None = None, on_s: float = 0.5
) -> tuple[bool, str]:
    """``field-agent selftest``: each role's LEDs lit in its "on" colour for ``on_s``."""
    try:
        bus = bus or open_bus(cfg)
    except PixelsUnavailable as e:
        return False, str(e)
    leds = PixelLeds(cfg, bus, loop=asyncio.get_running_loop())
    names = {GREEN: "green", RED: "red"}
    try:
        for key in sorted(leds.leds):
            where = ", ".join(str(i) for i, r in enumerate(leds.roles) if r == key)
            out(f"pixels {key} (LED {where}) {names.get(COLOURS[key][Led.ON], 'on')}")
            leds.set_led(key, Led.ON)
            await asyncio.sleep(on_s)
            leds.set_led(key, Led.OFF)
    finally:
        leds.close()
    return True, f"pixels: {len(leds.roles)} LEDs walked"
