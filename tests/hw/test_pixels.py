"""The APA102 pixel LEDs: the SPI frames decoded (start frame, brightness + BGR per LED,
end frame) into the colours and blinks a person would see, driven by the same status
board and controls as the GPIO LEDs; and a device without SPI goes on without them."""

from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import config
from agent.app import Agent, Hardware
from agent.config import PixelsConfig
from agent.controls import Controls, StateStore
from agent.errors import PixelsUnavailable
from agent.hw.pixels import (
    AMBER,
    DARK,
    GREEN,
    RED,
    MemoryBus,
    Pixel,
    PixelLeds,
    SpidevBus,
    decode,
    encode,
)
from agent.hw.pixels import (
    selftest as pixel_selftest,
)
from agent.hw.sim import RecordingSink, WavSource, write_wav
from agent.ptt import PttGate
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from agent.status import Led, LinkState, StatusBoard

CFG = PixelsConfig(enabled=True, brightness=0.25)  # 3 LEDs: status, talk, status
LEVEL = 8  # 0.25 of 31


class TimedBus(MemoryBus):
    """The simulated bus, with the time of each frame."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.times.append(time.monotonic())


def seen(bus: MemoryBus, frame: int = -1) -> list[tuple[int, int, int]]:
    """The colours a person sees (dark when the brightness field is 0)."""
    return [p.rgb if p.lit else DARK for p in decode(bus.frames[frame], 3)]


def test_a_frame_is_start_leds_as_brightness_blue_green_red_then_end() -> None:
    frame = encode([(255, 0, 0), (0, 0, 0), (1, 2, 3)], 8)
    assert frame == bytes(
        [0, 0, 0, 0,  0xE8, 0, 0, 255,  0xE0, 0, 0, 0,  0xE8, 3, 2, 1,  0, 0, 0, 0]
    )  # fmt: skip
    assert decode(frame, 3) == [Pixel(8, (255, 0, 0)), Pixel(0, DARK), Pixel(8, (1, 2, 3))]
    with pytest.raises(ValueError, match="start frame"):
        decode(b"\x01" + frame[1:], 3)
    with pytest.raises(ValueError, match="0b111"):
        decode(frame[:4] + b"\x08" + frame[5:], 3)
    long_chain = encode([GREEN] * 64, 31)  # 64 LEDs: 32 clock edges at least -> 4 bytes
    assert len(long_chain) == 4 + 64 * 4 + 4


async def test_the_status_and_talk_leds_in_colour() -> None:
    bus = MemoryBus()
    leds = PixelLeds(CFG, bus, loop=asyncio.get_running_loop())
    assert seen(bus) == [DARK, DARK, DARK]  # cleared at start
    leds.set_led("status_led", Led.ON)
    assert seen(bus) == [GREEN, DARK, GREEN]
    assert {p.brightness for p in decode(bus.frames[-1], 3) if p.lit} == {LEVEL}
    leds.set_led("talk_led", Led.ON)
    assert seen(bus) == [GREEN, RED, GREEN]
    writes = len(bus.frames)
    leds.set_led("talk_led", Led.ON)  # no change: no write
    assert len(bus.frames) == writes
    leds.close()
    assert seen(bus) == [DARK, DARK, DARK] and bus.closed


@pytest.mark.parametrize(
    ("key", "pattern", "colour", "half_s"),
    [
        ("status_led", Led.BLINK_4HZ, RED, 0.125),  # needs attention
        ("status_led", Led.BLINK_1HZ, AMBER, 0.5),  # connecting
        ("talk_led", Led.BLINK_4HZ, AMBER, 0.125),  # PTT held, nobody hears
        ("talk_led", Led.BLINK_FAST, RED, 0.05),  # emergency
    ],
)
async def test_blinks_alternate_at_their_rate(
    key: str, pattern: Led, colour: tuple[int, int, int], half_s: float
) -> None:
    bus = TimedBus()
    leds = PixelLeds(CFG, bus, loop=asyncio.get_running_loop())
    start = len(bus.frames)
    leds.set_led(key, pattern)
    await asyncio.sleep(half_s * 8.5)
    leds.close()
    frames = bus.frames[start:-1]  # without the final dark frame of close()
    index = 1 if key == "talk_led" else 0
    shown = [seen(bus, i)[index] for i in range(start, start + len(frames))]
    assert shown[0] == colour  # a blink starts lit, at once
    assert set(shown) == {colour, DARK}
    assert all(a != b for a, b in itertools.pairwise(shown))  # each write an edge
    assert len(frames) >= 6
    gaps = np.diff(bus.times[start : start + len(frames)])
    assert statistics.median(gaps) == pytest.approx(half_s, abs=0.03)


async def test_the_controls_drive_pixels_from_the_status_board(tmp_path: Path) -> None:
    bus = MemoryBus()
    leds = PixelLeds(CFG, bus, loop=asyncio.get_running_loop())
    status = StatusBoard()
    controls = Controls(status, store=StateStore(tmp_path), default_volume=0.8,
                        set_leds=leds.set_led)  # fmt: skip
    gate = PttGate("hold")
    controls.attach(gate, None)
    status.set_link("videosdk", LinkState.CONNECTING)
    assert leds.led_pattern("status_led") is Led.BLINK_1HZ and seen(bus)[0] == AMBER
    status.set_link("videosdk", LinkState.ATTENTION, "auth refused")
    assert seen(bus)[0] == RED  # attention: red (blinking)
    gate.press()
    controls.refresh_leds()
    assert seen(bus)[1] == AMBER  # PTT into a dead link
    status.set_link("videosdk", LinkState.UP, "room r")
    controls.refresh_leds()
    assert seen(bus) == [GREEN, RED, GREEN]  # up and transmitting
    leds.close()


def test_no_spi_device_is_one_clear_reason() -> None:
    with pytest.raises(PixelsUnavailable) as e:
        SpidevBus(6, 3, 8_000_000)  # no /dev/spidev6.3 on this machine (nor spidev, maybe)
    assert "pixel LEDs:" in str(e.value)
    assert "/dev/spidev6.3" in str(e.value) or "spidev module is not installed" in str(e.value)


async def agent_with_pixels(tmp_path: Path, fake: FakeVideoSDK, spi: Any) -> Agent:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "videosdk-token").write_text("sandbox-token\n")
    (creds / "videosdk-token").chmod(0o600)
    cfg = config.from_dict(
        {
            "device": {"id": "dev_px"},
            "videosdk": {"room_id": "room-px", "api_base": fake.api_base},
            "pixels": {"enabled": True, "spi_bus": 6, "spi_device": 3},
            "metrics": {"listen": ""},
        }
    )
    mic = write_wav(tmp_path / "mic.wav", np.zeros(8000, np.int16), 8000)
    hw = Hardware(
        mic=lambda _a, _m: WavSource(mic, 8000, loop=True, paced=True),
        speaker=lambda _a, _m: RecordingSink(48000, paced=True),
        spi=spi,
    )
    return Agent(cfg, credentials=Credentials(creds, env={}), hardware=hw, state=StateStore(None))


@pytest.mark.slow
async def test_the_agent_shows_its_link_on_the_pixels(tmp_path: Path) -> None:
    bus = MemoryBus()
    async with FakeVideoSDK() as fake:
        agent = await agent_with_pixels(tmp_path, fake, lambda _cfg: bus)
        task = asyncio.create_task(agent.run())
        await fake.wait_for(lambda: fake.active(), 10, "a session")
        await fake.wait_for(lambda: agent.status.led is Led.ON, 5, "status LED on")
        await asyncio.sleep(0.05)
        assert seen(bus) == [GREEN, DARK, GREEN]
        agent.stop()
        assert await asyncio.wait_for(task, 3) == 0
    assert seen(bus) == [DARK, DARK, DARK] and bus.closed  # dark after a clean stop


@pytest.mark.slow
async def test_without_an_spi_device_the_agent_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeVideoSDK() as fake:
        agent = await agent_with_pixels(tmp_path, fake, None)  # the real spidev bus
        task = asyncio.create_task(agent.run())
        await fake.wait_for(lambda: fake.active() and fake.frames, 10, "frames in the room")
        agent.stop()
        assert await asyncio.wait_for(task, 3) == 0
    lines = [r for r in caplog.records if "pixel LEDs" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert lines[0].getMessage().endswith("; the pixel LEDs are off, audio goes on")
    assert agent.status.devices["pixels"].state is LinkState.ATTENTION


async def test_selftest_walks_each_role_in_its_colour() -> None:
    bus, said = MemoryBus(), []
    ok, report = await pixel_selftest(CFG, said.append, bus=bus, on_s=0.01)
    assert ok and report == "pixels: 3 LEDs walked"
    assert said == ["pixels status_led (LED 0, 2) green", "pixels talk_led (LED 1) red"]
    shown = [seen(bus, i) for i in range(len(bus.frames))]
    assert [GREEN, DARK, GREEN] in shown and [DARK, RED, DARK] in shown
    assert shown[-1] == [DARK, DARK, DARK] and bus.closed
    ok, report = await pixel_selftest(PixelsConfig(enabled=True, spi_bus=6, spi_device=3))
    assert not ok and report.startswith("pixel LEDs: ")
