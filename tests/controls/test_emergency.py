"""The emergency button over MockFactory pins: a 2 s hold raises it (chatter never does),
alerts repeat until a hold or a signed command cancels it, the mic opens whatever the
PTT mode, the talk LED blinks fast, the alarm is heard; a power cut is reported."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.controls import StateStore
from agent.observe.statuscmd import format_status
from agent.status import Led, LinkState
from tests.controls.speaker import EMERGENCY, TALK_LED, bench, make_config, notes

FAST = {"emergency": {"alert_every_s": 2.0}}


async def test_a_2_s_hold_raises_the_alarm_and_another_cancels_it(
    tmp_path: Path, gpio_mock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent.emergency")
    async with bench(tmp_path, gpio_mock, make_config(**FAST)) as b:
        b.link(LinkState.UP)
        at = b.position()
        gpio_mock.pin(EMERGENCY).drive_low()
        await asyncio.sleep(1.8)
        assert not b.controls.emergency.active  # not yet: 2 s
        await asyncio.sleep(0.35)
        assert b.controls.emergency.active
        gpio_mock.pin(EMERGENCY).drive_high()
        assert b.gate.transmitting and b.status.ptt_state == "talking"  # hold mode, no PTT
        assert b.panel.led_pattern("talk_led") is Led.BLINK_FAST
        doc = b.status.to_json()["emergency"]
        assert doc["by"] == "button" and doc["mic_open"] is True and doc["active_s"] >= 0
        assert b.status.summary().startswith("EMERGENCY · videosdk: up")
        shown = format_status(b.status.to_json()).splitlines()  # field-agent status
        assert (
            shown[1]
            == f"EMERGENCY since {doc['since']} ({doc['active_s']:.0f} s, by button, mic open)"
        )
        assert b.metrics.get("emergencies_total", by="button") == 1
        assert b.metrics.get("emergency_active") == 1
        await asyncio.sleep(2.2)  # one repeat
        alarm = b.speaker.samples[at:]
        gpio_mock.pin(EMERGENCY).drive_low()
        await asyncio.sleep(2.15)
        gpio_mock.pin(EMERGENCY).drive_high()
        assert not b.controls.emergency.active
        assert not b.gate.transmitting and b.status.to_json()["emergency"] is None
        assert b.panel.led_pattern("talk_led") is Led.OFF
        assert gpio_mock.pin(TALK_LED).state == 0
    # at once, every 2 s (at 2 and 4 s; the cancel came at 4.35 s), and the cancel
    assert [(a["state"], a["seq"], a["by"]) for a in b.alerts] == [
        ("active", 1, "button"),
        ("active", 2, "button"),
        ("active", 3, "button"),
        ("cancelled", 4, "button"),
    ]
    first = b.alerts[0]
    assert first["alert"] == "emergency"
    assert first["device"] == {"id": "dev_cue", "name": "Cue Bench"}
    assert first["time"].endswith("Z") and first["since"] <= first["time"]
    assert b.alerts[1]["active_s"] == pytest.approx(2.0, abs=0.3)
    assert notes(alarm) == pytest.approx([960, 770] * 3, abs=15)  # the alarm cue
    assert b.metrics.get("emergency_cancels_total", by="button") == 1
    assert b.metrics.get("emergency_active") == 0
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert logged[0].startswith("EMERGENCY triggered by the button; alerting on DEVICE_ALERT")
    assert logged[-1].startswith("emergency cancelled by the button after 4 s")


async def test_chatter_and_short_presses_never_trigger(tmp_path: Path, gpio_mock: Any) -> None:
    async with bench(tmp_path, gpio_mock) as b:
        b.link(LinkState.UP)
        pin = gpio_mock.pin(EMERGENCY)
        for _ in range(25):  # a loose contact: 3.5 s of 120 ms closed, 20 ms open
            pin.drive_low()
            await asyncio.sleep(0.12)
            pin.drive_high()
            await asyncio.sleep(0.02)
        await b.hold(EMERGENCY, 1.8)  # a long press, not long enough
        await asyncio.sleep(0.5)
        assert not b.controls.emergency.active
    assert b.alerts == [] and b.metrics.total("emergencies_total") == 0
    assert "alarm" not in b.cues.played


async def test_a_signed_remote_cancel_works_an_unsigned_one_does_not(
    tmp_path: Path, gpio_mock: Any
) -> None:
    async with bench(tmp_path, gpio_mock, mode="vox") as b:
        b.link(LinkState.UP)
        await b.hold(EMERGENCY, 2.1)
        assert b.controls.emergency.active and b.gate.transmitting  # vox, silent room: open
        b.command('{"cmd":"emergency","value":"cancel"}', sender="stranger")
        assert b.controls.emergency.active
        assert b.replies[-1]["reason"] == "unsigned"
        b.command(b.signed("emergency", "trigger"))
        assert b.replies[-1]["error"] == 'emergency needs value "cancel"'
        b.command(b.signed("emergency", "cancel"))
        assert not b.controls.emergency.active and not b.gate.transmitting
        assert b.replies[-1]["ok"] == "emergency"
        assert b.replies[-1]["status"]["emergency"] is None
    last = b.alerts[-1]
    assert (last["state"], last["by"], last["sender"]) == ("cancelled", "remote", "console-1")
    assert b.metrics.get("emergency_cancels_total", by="remote") == 1
    assert b.metrics.get("commands_refused_total", reason="unsigned") == 1


async def test_the_open_mic_closes_after_open_mic_s_while_alerts_go_on(
    tmp_path: Path, gpio_mock: Any
) -> None:
    cfg = make_config(emergency={"open_mic_s": 1.0, "alert_every_s": 2.0})
    async with bench(tmp_path, gpio_mock, cfg) as b:
        b.link(LinkState.UP)
        await b.hold(EMERGENCY, 2.1)
        assert b.gate.transmitting
        await asyncio.sleep(1.1)
        assert b.controls.emergency.active and not b.gate.transmitting
        assert b.status.to_json()["emergency"]["mic_open"] is False
        assert b.panel.led_pattern("talk_led") is Led.BLINK_FAST  # still an emergency
        await b.hold(17, 0.3)  # PTT works as before
        assert b.controls.emergency.active
        await asyncio.sleep(0.8)
    assert [a["state"] for a in b.alerts] == ["active", "active"]


async def test_alerts_wait_for_the_link_and_do_not_pile_up(tmp_path: Path, gpio_mock: Any) -> None:
    async with bench(tmp_path, gpio_mock, make_config(**FAST)) as b:
        b.link(LinkState.RETRY)
        b.link_takes_alerts = False  # no link object: the first alert waits too
        await b.hold(EMERGENCY, 2.1)
        await asyncio.sleep(4.3)  # two repeats fall due while the link is down
        assert b.alerts == []
        b.link_takes_alerts = True
        b.link(LinkState.UP)
    # one alert, the newest: it carries the start and how long it has been going on
    assert [(a["state"], a["seq"]) for a in b.alerts] == [("active", 3)]
    assert b.alerts[0]["active_s"] == pytest.approx(4.0, abs=0.5)
    assert b.alerts[0]["since"] < b.alerts[0]["time"]


async def test_a_power_cut_during_an_emergency_is_reported_not_resumed(
    tmp_path: Path, gpio_mock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with bench(tmp_path, gpio_mock) as b:
        b.link(LinkState.UP)
        await b.hold(EMERGENCY, 2.1)
        assert b.controls.emergency.active
        # the power goes: what is on the card is what the next start finds
        saved = (tmp_path / "state.json").read_text()
    assert '"emergency":{"since":' in saved
    (tmp_path / "state.json").write_text(saved)
    caplog.set_level(logging.WARNING, "agent.emergency")
    async with bench(tmp_path, gpio_mock, store=StateStore(tmp_path)) as again:
        assert not again.controls.emergency.active and not again.gate.transmitting
        assert again.status.to_json()["emergency"] is None
        assert again.metrics.get("emergencies_interrupted_total") == 1
        again.link(LinkState.UP)  # the console learns the alarm ended without a cancel
        assert [a["state"] for a in again.alerts] == ["interrupted"]
        assert again.alerts[0]["by"] == "button" and again.alerts[0]["active_s"] is None
        await asyncio.sleep(0.1)
    (line,) = [r.getMessage() for r in caplog.records if "not resumed" in r.getMessage()]
    assert "was active when the agent stopped (power cut?)" in line
    assert '"emergency":null' in (tmp_path / "state.json").read_text()
