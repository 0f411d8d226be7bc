"""``videosdk.rooms``, the channel buttons and ``[pixels]`` as a person edits them:
``check-config`` through the real CLI, exit 78 and one ``PATH: key: reason`` line each."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent import config
from agent.config import RoomConfig
from tests.conftest import agent_cmd, subprocess_env

HEAD = '[device]\nid = "d"\n'


def check(tmp_path: Path, body: str) -> tuple[int, list[str]]:
    p = tmp_path / "agent.toml"
    p.write_text(HEAD + body)
    r = subprocess.run(agent_cmd("check-config", "--config", str(p)), capture_output=True,
                       text=True, env=subprocess_env(), timeout=30)  # fmt: skip
    assert "Traceback" not in r.stdout + r.stderr
    return r.returncode, [line.removeprefix(f"{p}: ") for line in r.stdout.splitlines()]


def test_rooms_load_with_names_and_the_one_room_form_stays() -> None:
    cfg = config.from_dict(
        {"device": {"id": "d"},
         "videosdk": {"rooms": [{"id": "r-1", "name": "Ops"}, {"id": "r-2"}]}}
    )  # fmt: skip
    assert cfg.videosdk.channels() == (RoomConfig("r-1", "Ops"), RoomConfig("r-2"))
    one = config.from_dict({"device": {"id": "d"}, "videosdk": {"room_id": "solo"}})
    assert one.videosdk.channels() == (RoomConfig("solo"),)


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ('[videosdk]\nroom_id = "a"\nrooms = [{ id = "b" }]\n',
         "videosdk.rooms: set either videosdk.room_id (one room) or videosdk.rooms, not both"),
        ('[videosdk]\nrooms = [{ id = "a" }, { id = "a" }]\n',
         "videosdk.rooms: [1].id 'a' is listed twice"),
        ('[videosdk]\nrooms = [{ name = "Ops" }]\n', "videosdk.rooms: [0]: id is required"),
        ('[videosdk]\nrooms = [{ id = "a", colour = "red" }]\n',
         "videosdk.rooms: [0]: unknown key 'colour' (known: id, name)"),
        ('[videosdk]\nrooms = [{ id = 7 }]\n',
         "videosdk.rooms: [0].id must be a string, not an integer (7)"),
        ('[videosdk]\nrooms = ["a"]\n',
         "videosdk.rooms: [0] must be a table ({ id, name }), not a string ('a')"),
        ('[videosdk]\nrooms = [{ id = "a b" }]\n',
         "videosdk.rooms: [0].id must be 1 to 128 printable characters without spaces, "
         "not 'a b'"),
        ("[videosdk]\nrooms = []\n",
         "videosdk.room_id: required when videosdk.enabled = true (or videosdk.rooms)"),
        ('[videosdk]\nroom_id = "a"\n[gpio]\nptt_button = 17\nchannel_up_button = 17\n',
         "gpio.channel_up_button: GPIO 17 is already used by gpio.ptt_button"),
        ('[videosdk]\nroom_id = "a"\n[pixels]\nleds = ["status_led", "blue"]\n',
         "pixels.leds: each entry must be one of ['status_led', 'talk_led', ''], not 'blue'"),
        ('[videosdk]\nroom_id = "a"\n[pixels]\ncount = 1\n',
         "pixels.leds: lists 3 LEDs, pixels.count is 1"),
        ('[videosdk]\nroom_id = "a"\n[pixels]\nbrightness = 2\n',
         "pixels.brightness: must be between 0 and 1, not 2.0"),
    ],
)  # fmt: skip
def test_check_config_names_the_bad_key(tmp_path: Path, body: str, line: str) -> None:
    code, lines = check(tmp_path, body)
    assert code == 78
    assert lines == [line]
