"""Channels as a person uses them: the channel buttons through gpiozero's MockFactory
pins (wrapping around), the signed ``room`` command, the current channel across a
restart (the real state file), and a saved room that left the config."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.channels import Channels
from agent.commands import sign_command
from agent.config import GpioConfig, RoomConfig
from agent.controls import Controls, StateStore
from agent.hw.gpio import GpioPanel
from agent.metrics import Metrics
from agent.observe.statuscmd import format_status
from agent.proto.videosdk import TopicMessage
from agent.secrets import Credentials
from agent.status import StatusBoard

KEY = "0123456789abcdef0123456789abcdef"
DEVICE = "dev_ch"
ROOMS = (RoomConfig("room-ops", "Ops"), RoomConfig("room-med", "Medics"), RoomConfig("room-c"))
CFG = config.from_dict(
    {
        "device": {"id": DEVICE},
        "videosdk": {"rooms": [{"id": r.id, "name": r.name} for r in ROOMS]},
        "gpio": {"channel_up_button": 20, "channel_down_button": 21},
    }
)
UP, DOWN = 20, 21


def event(text: str, sender: str = "console") -> TopicMessage:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return TopicMessage("DEVICE_CMD", text, sender, "Console", now, "m-1", "")


def room_command(room: str) -> TopicMessage:
    return event(sign_command(KEY, topic="DEVICE_CMD", device=DEVICE, cmd="room", value=room))


class Rig:
    def __init__(self, state_dir: Path, creds: Path) -> None:
        self.replies: list[dict[str, Any]] = []
        self.changes: list[tuple[int, RoomConfig]] = []
        self.metrics = Metrics()
        self.store = StateStore(state_dir)
        self.status = StatusBoard()
        self.controls = Controls(
            self.status,
            store=self.store,
            default_volume=0.8,
            publish=self.replies.append,
            config=lambda: CFG,
            credentials=Credentials(creds, env={}),
            metrics=self.metrics,
        )
        self.channels = Channels(
            CFG.videosdk.channels(),
            store=self.store,
            on_channel_changed=lambda n, room: self.changes.append((n, room)),
        )
        self.controls.channels = self.channels
        self.status.channel = self.channels.to_json
        self.controls.load_key()


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    d = tmp_path / "creds"
    d.mkdir()
    (d / "command-key").write_text(KEY + "\n")
    (d / "command-key").chmod(0o600)
    return d


async def tap(factory: Any, pin: int) -> None:
    factory.pin(pin).drive_low()
    await asyncio.sleep(0.03)
    factory.pin(pin).drive_high()
    await asyncio.sleep(0.03)


async def test_channel_buttons_step_and_wrap_and_the_hook_hears_each(
    gpio_mock: Any, tmp_path: Path, creds: Path
) -> None:
    rig = Rig(tmp_path / "state", creds)
    (tmp_path / "state").mkdir()
    panel = GpioPanel(
        GpioConfig(channel_up_button=UP, channel_down_button=DOWN),
        loop=asyncio.get_running_loop(),
        on_button=rig.controls.on_button,
        factory=gpio_mock,
    )
    try:
        await tap(gpio_mock, UP)
        assert rig.channels.current == ROOMS[1]
        await tap(gpio_mock, UP)
        await tap(gpio_mock, UP)  # past the last: back to the first
        assert rig.channels.current == ROOMS[0]
        await tap(gpio_mock, DOWN)  # before the first: the last
        assert rig.channels.current == ROOMS[2]
    finally:
        panel.close()
    assert [n for n, _ in rig.changes] == [2, 3, 1, 3]  # the cue beeps the channel number
    assert rig.changes[0][1] == ROOMS[1]
    doc = rig.status.to_json()["channel"]
    assert doc == {"number": 3, "count": 3, "id": "room-c", "name": ""}


def test_the_channel_survives_a_restart(tmp_path: Path, creds: Path) -> None:
    rig = Rig(tmp_path, creds)
    rig.channels.step(+1)
    rig.store.flush()
    assert json.loads((tmp_path / "state.json").read_text())["channel"] == "room-med"
    again = Rig(tmp_path, creds)  # a new process reading the same state directory
    assert again.channels.current == ROOMS[1] and again.changes == []


def test_a_saved_room_no_longer_configured_falls_back_to_the_first(
    tmp_path: Path, creds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"volume": 0.5, "channel": "room-gone"}))
    rig = Rig(tmp_path, creds)
    assert rig.channels.current == ROOMS[0]
    lines = [r.getMessage() for r in caplog.records if "room-gone" in r.getMessage()]
    assert lines == ["channel: room room-gone is no longer in videosdk.rooms; channel 1/3 Ops "
                     "(room-ops) instead"]  # fmt: skip
    assert rig.status.volume == 0.5  # the rest of the state file is kept


def test_a_damaged_channel_in_the_state_file_is_one_warning(
    tmp_path: Path, creds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"channel": ["x"] * 3}))
    rig = Rig(tmp_path, creds)
    assert rig.channels.current == ROOMS[0]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "channel must be a room id" in warned[0].getMessage()


def test_the_signed_room_command_switches_and_others_are_refused(
    tmp_path: Path, creds: Path
) -> None:
    rig = Rig(tmp_path, creds)
    rig.controls.on_command(room_command("room-c"))
    assert rig.replies[-1]["ok"] == "room"
    assert rig.replies[-1]["status"]["channel"]["id"] == "room-c"
    assert rig.channels.current == ROOMS[2] and rig.changes == [(3, ROOMS[2])]

    rig.controls.on_command(event('{"cmd":"room","value":"room-ops"}', sender="stranger"))
    assert rig.replies[-1]["reason"] == "unsigned"
    rig.controls.on_command(room_command("room-nowhere"))
    assert rig.replies[-1]["reason"] == "unknown_room"
    assert "room-nowhere" in rig.replies[-1]["error"]
    rig.controls.on_command(event(sign_command(KEY, topic="DEVICE_CMD", device=DEVICE,
                                               cmd="room", value=5)))  # fmt: skip
    assert rig.replies[-1]["reason"] == "malformed"
    assert rig.channels.current == ROOMS[2]  # none of those moved it
    assert rig.metrics.get("commands_refused_total", reason="unknown_room") == 1


def test_status_shows_the_channel_by_name_and_id(tmp_path: Path, creds: Path) -> None:
    rig = Rig(tmp_path, creds)
    rig.channels.step(+1)
    doc = {**rig.status.to_json(), "version": "test"}
    text = format_status(json.loads(json.dumps(doc)))
    assert "channel 2/3: Medics (room-med)" in text.splitlines()
    assert "channel 2 Medics" in rig.status.summary()


def test_one_room_has_no_channel_to_step_to(tmp_path: Path) -> None:
    channels = Channels((RoomConfig("only"),), store=StateStore(tmp_path))
    assert channels.step(+1) is False and channels.room_id == "only"
    assert not (tmp_path / "state.json").exists()  # nothing to remember


def test_a_reload_keeps_the_current_channel_while_it_is_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.reload import config_changes, show_value

    channels = Channels(ROOMS, store=StateStore(tmp_path))
    channels.select_id("room-med")
    new = (RoomConfig("room-new", "New"), *ROOMS)  # a room added in front
    channels.configure(new)
    assert channels.current == ROOMS[1] and channels.number == 3
    channels.configure((RoomConfig("room-new", "New"), ROOMS[0]))  # room-med removed
    assert channels.current == RoomConfig("room-new", "New")
    assert "room room-med is no longer in videosdk.rooms" in caplog.text
    old_cfg = config.from_dict({"device": {"id": "d"}, "videosdk": {"rooms": [{"id": "a"}]}})
    new_cfg = config.from_dict(
        {"device": {"id": "d"}, "videosdk": {"rooms": [{"id": "a"}, {"id": "b", "name": "B"}]}}
    )
    (key, _, value), = config_changes(old_cfg, new_cfg)
    assert (key, show_value(value)) == (
        "videosdk.rooms", '[{ id = "a", name = "" }, { id = "b", name = "B" }]'
    )
