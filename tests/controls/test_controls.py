"""Buttons, LEDs, volume and remote commands over gpiozero's MockFactory."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.commands import sign_command
from agent.config import GpioConfig
from agent.controls import CommandError, Controls, StateStore, parse_command
from agent.hw.gpio import GpioPanel
from agent.proto.videosdk import TopicMessage
from agent.ptt import PttGate
from agent.secrets import Credentials
from agent.status import Led, LinkState, StatusBoard

CFG = GpioConfig(
    ptt_button=17,
    mute_button=5,
    volume_up_button=6,
    volume_down_button=13,
    status_led=27,
    talk_led=22,
)


KEY = "0123456789abcdef0123456789abcdef"
DEVICE = "dev_ctl"
SIGNED_CFG = config.from_dict(
    {
        "device": {"id": DEVICE},
        "videosdk": {"room_id": "r"},
        "commands": {"allow_mic_control": True, "burst": 50},
    }
)


def event(text: str, sender: str = "peer-1", topic: str = "DEVICE_CMD") -> TopicMessage:
    """A command as the room delivers it, stamped now by the "server"."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return TopicMessage(topic, text, sender, sender.title(), now, "msg-1", "")


def signed(cmd: str, value: Any = None) -> TopicMessage:
    return event(sign_command(KEY, topic="DEVICE_CMD", device=DEVICE, cmd=cmd, value=value))


class FakeMixer:
    volume = 1.0
    muted = False


async def settle(s: float = 0.05) -> None:
    await asyncio.sleep(s)


@pytest.fixture
async def rig(gpio_mock: Any, tmp_path: Path):
    status = StatusBoard()
    replies: list[dict[str, Any]] = []
    panel_box: list[GpioPanel] = []
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "command-key").write_text(KEY + "\n")
    (creds / "command-key").chmod(0o600)
    controls = Controls(
        status,
        store=StateStore(tmp_path),
        default_volume=0.8,
        publish=replies.append,
        set_leds=lambda k, p: panel_box[0].set_led(k, p) if panel_box else None,
        config=lambda: SIGNED_CFG,
        credentials=Credentials(creds, env={}),
    )
    gate = PttGate("hold", on_change=lambda tx: status.set_ptt(state="talking" if tx else "idle"))
    mixer = FakeMixer()
    controls.attach(gate, mixer)
    panel = GpioPanel(
        CFG, loop=asyncio.get_running_loop(), on_button=controls.on_button, factory=gpio_mock
    )
    panel_box.append(panel)
    yield status, controls, gate, mixer, panel, gpio_mock, replies
    panel.close()


async def test_ptt_press_and_release_through_pin_callbacks(rig) -> None:
    status, _controls, gate, _m, _p, factory, _r = rig
    pin = factory.pin(17)
    pin.drive_low()  # pressed (pull-up button)
    await settle()
    assert gate.transmitting and status.ptt_state == "talking"
    pin.drive_high()
    await settle()
    assert not gate.transmitting and status.ptt_state == "idle"


def bounce(pin: Any, levels: tuple[int, ...]) -> None:
    """Edges 2 ms apart, timed by the thread, not the event loop (whose sleeps may take
    20 ms on a loaded machine: the bounce would no longer be one)."""
    for level in levels:
        pin.drive_low() if level == 0 else pin.drive_high()
        time.sleep(0.002)


async def test_bouncing_press_counts_once(rig) -> None:
    _s, _c, gate, _m, _p, factory, _r = rig
    pin = factory.pin(17)
    bounce(pin, (0, 1, 0, 1, 0))  # 5 edges within ~10 ms, ending pressed
    await settle(0.06)
    assert gate.presses == 1 and gate.transmitting
    pin.drive_high()
    bounce(pin, (0, 1, 0, 1))  # release bounce ending released
    await settle(0.06)
    assert not gate.transmitting


async def test_mute_and_volume_buttons_persist_volume(rig, tmp_path: Path) -> None:
    status, _c, _g, mixer, _p, factory, _r = rig
    for pin_no in (13, 13, 13):  # three steps down from 0.8
        factory.pin(pin_no).drive_low()
        await settle(0.03)
        factory.pin(pin_no).drive_high()
        await settle(0.03)
    assert status.volume == pytest.approx(0.5) and mixer.volume == pytest.approx(0.5)
    factory.pin(5).drive_low()
    await settle(0.03)
    assert status.muted and mixer.muted
    _c.store.flush()  # writes are coalesced (at most one per interval): write the last one now
    assert json.loads((tmp_path / "state.json").read_text())["volume"] == pytest.approx(0.5)
    # a restart reads the persisted volume, not the config default
    again = Controls(StatusBoard(), store=StateStore(tmp_path), default_volume=0.8)
    assert again.status.volume == pytest.approx(0.5)


async def test_status_led_follows_link_states(rig) -> None:
    status, _c, _g, _m, panel, factory, _r = rig
    history = []
    for state in (
        LinkState.CONNECTING,
        LinkState.UP,
        LinkState.RETRY,
        LinkState.ATTENTION,
        LinkState.UP,
    ):
        status.set_link("videosdk", state, retry_in=2.0 if state is LinkState.RETRY else None)
        history.append(panel.led_pattern("status_led"))
    assert history == [Led.BLINK_1HZ, Led.ON, Led.BLINK_1HZ, Led.BLINK_4HZ, Led.ON]
    assert factory.pin(27).state == 1  # solid on: the pin itself is high
    # blinking really toggles the pin at 4 Hz
    status.set_link("videosdk", LinkState.ATTENTION, "token refused")
    await asyncio.sleep(0.6)
    changes = [s for _t, s in factory.pin(27).states[-8:]]
    assert 0 in changes and 1 in changes
    panel.close()
    assert factory.pin(27).state == 0  # LEDs go off on stop


async def test_talk_led_on_while_transmitting_and_fast_blink_into_dead_link(rig) -> None:
    status, _controls, _g, _m, panel, factory, _r = rig
    status.set_link("videosdk", LinkState.RETRY, retry_in=5)
    factory.pin(17).drive_low()
    await settle()
    assert panel.led_pattern("talk_led") is Led.BLINK_4HZ  # talking into a dead link
    status.set_link("videosdk", LinkState.UP, "room r")
    assert panel.led_pattern("talk_led") is Led.ON
    factory.pin(17).drive_high()
    await settle()
    assert panel.led_pattern("talk_led") is Led.OFF


async def test_talk_led_blinks_into_a_dead_room_while_orgo_plays(rig) -> None:
    """Orgo only brings audio in: with it up and the room down, nobody hears the mic."""
    status, _controls, _g, _m, panel, factory, _r = rig
    status.set_link("orgo", LinkState.UP, "computer c")
    status.set_link("videosdk", LinkState.RETRY, retry_in=5)
    factory.pin(17).drive_low()
    await settle()
    assert panel.led_pattern("talk_led") is Led.BLINK_4HZ
    factory.pin(17).drive_high()
    await settle()


async def test_remote_commands_change_state_and_bad_ones_are_refused(rig) -> None:
    status, controls, gate, mixer, _p, _f, replies = rig
    controls.on_command(signed("volume", 0.25))
    controls.on_command(signed("mute"))
    controls.on_command(signed("ptt", "open"))
    assert mixer.volume == 0.25 and mixer.muted and gate.mode == "open" and gate.transmitting
    assert status.ptt_mode == "open"
    assert [r.get("ok") for r in replies] == ["volume", "mute", "ptt"]
    replies.clear()
    for bad in (
        '{"cmd":"reboot"}',
        '{"cmd":"volume","value":7}',
        '{"cmd":"volume","value":"loud"}',
        "not json",
        '["cmd"]',
        '{"cmd":"ptt","value":"vox"}',
        '{"cmd":"mute","pad":"' + "x" * 2000 + '"}',
    ):
        controls.on_command(event(bad))
    assert len(replies) == 7 and all("error" in r for r in replies)
    assert mixer.volume == 0.25 and gate.mode == "open"  # nothing executed
    controls.on_command(event('{"cmd":"status"}'))
    assert replies[-1]["status"]["volume"] == 0.25


def test_parse_command_reasons() -> None:
    with pytest.raises(CommandError, match="unknown command 'reboot'"):
        parse_command('{"cmd":"reboot"}')
    with pytest.raises(CommandError, match="too large"):
        parse_command("x" * 5000)
    assert parse_command('{"cmd":"volume","value":1}').value == 1.0


async def test_gpio_unavailable_is_a_clear_error(gpio_mock: Any) -> None:
    from agent.errors import GpioUnavailable
    from agent.hw.gpio import pin_factory

    with pytest.raises(GpioUnavailable, match="no pin factory 'gpiochip9'"):
        pin_factory("gpiochip9")
    with pytest.raises(GpioUnavailable, match="cannot start"):
        pin_factory("lgpio")  # this machine has no /dev/gpiochip*


async def test_buttons_read_from_the_chardev_only_where_a_chip_is(
    gpio_mock: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where buttons are read (gpio.backend) on this machine, which has no
    /dev/gpiochip*: 'auto' and 'gpiozero' read them through gpiozero (the mock here) and
    say so; 'chardev' is a clear GpioUnavailable, which the agent logs and goes on
    without buttons. The chardev path itself runs in the VM tier on gpio-sim (check 2)."""
    import glob

    from agent.errors import GpioUnavailable
    from agent.hw.gpio import chardev_chip

    assert not glob.glob("/dev/gpiochip*"), "this test is for a machine without a gpiochip"
    loop = asyncio.get_running_loop()
    events: list[tuple[str, str]] = []

    def on_button(key: str, ev: Any, _t: float) -> None:
        events.append((key, ev.value))

    for mode, factory in (("auto", ""), ("auto", "lgpio"), ("gpiozero", "")):
        cfg = GpioConfig(ptt_button=17, backend=mode, pin_factory=factory)
        assert chardev_chip(cfg) is None, (mode, factory)
    # 'auto' with a mock chosen by the program: gpiozero, whatever the chip situation
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    assert chardev_chip(GpioConfig(ptt_button=17)) is None
    caplog.set_level("INFO", logger="agent.hw.gpio")
    panel = GpioPanel(GpioConfig(ptt_button=17, talk_led=22), loop=loop, on_button=on_button)
    try:
        assert panel.source == "gpiozero"
        assert "(gpiozero)" in caplog.text
        gpio_mock.pin(17).drive_low()
        await settle()
        assert events == [("ptt_button", "pressed")]
    finally:
        panel.close()
    with pytest.raises(GpioUnavailable, match="'chardev': no /dev/gpiochip"):
        GpioPanel(GpioConfig(ptt_button=17, backend="chardev"), loop=loop, on_button=on_button)


def _command(text: str) -> TopicMessage:
    """A command-topic message as the VideoSDK link hands it over."""
    raw = json.dumps({"event": "message", "topic": "commands", "message": text})
    return TopicMessage("commands", text, "op-1", "Operator", "2026-06-27T14:41:00.000Z", "m1", raw)
