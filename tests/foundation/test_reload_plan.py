"""agent.reload: what a reload stops and starts, decided with no I/O (the whole agent
carrying a plan out is tested in tests/integration/test_agent_reload.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agent import config
from agent.reload import config_changes, plan

BASE = config.from_dict(
    {
        "device": {"id": "dev_1"},
        "videosdk": {"room_id": "room-a"},
        "orgo": {"enabled": True, "computer_id": "c1"},
        "pbx": {"enabled": True, "listen": "127.0.0.1:8765"},
    }
)
RUNNING = {"capture", "playback", "link-videosdk", "link-orgo", "link-pbx"}
ALL_LINKS = ["link-videosdk", "link-orgo", "link-pbx"]


def edit(**sections: dict[str, Any]) -> config.Config:
    return dataclasses.replace(
        BASE,
        **{name: dataclasses.replace(getattr(BASE, name), **kv) for name, kv in sections.items()},
    )


@pytest.mark.parametrize(
    ("new", "stop", "start", "new_mixer"),
    [
        (edit(audio={"volume": 0.3}), [], [], False),
        (edit(audio={"mic_gain_db": 6.0}, ptt={"mode": "vox", "vox_hangover_ms": 900}), [], [],
         False),
        (edit(audio={"capture_device": "plughw:CARD=Mic,DEV=0"}), ["capture"], ["capture"], False),
        (edit(audio={"capture_rate": 16000}), ["capture"], ["capture"], False),
        (edit(audio={"playback_device": "hw:1"}), ["playback"], ["playback"], False),
        (edit(audio={"playback_rate": 44100}), ["playback", *ALL_LINKS],
         ["playback", *ALL_LINKS], True),
        (edit(videosdk={"room_id": "room-b"}), ["link-videosdk"], ["link-videosdk"], False),
        (edit(device={"name": "Kiosk 2"}), ["link-videosdk"], ["link-videosdk"], False),
        (edit(orgo={"sample_rate": 48000}), ["link-orgo"], ["link-orgo"], False),
        (edit(videosdk={"enabled": False}), ["link-videosdk"], [], False),
        (edit(fastrtc={"enabled": True, "url": "ws://127.0.0.1:7860/websocket/offer"}), [],
         ["link-fastrtc"], False),
        (edit(security={"allow_insecure": True}), ALL_LINKS, ALL_LINKS, False),
        (edit(metrics={"listen": "127.0.0.1:9999"}), [], [], False),
        (edit(gpio={"ptt_button": 17}), [], [], False),
        (BASE, [], [], False),
    ],
)  # fmt: skip
def test_each_change_restarts_only_what_it_belongs_to(
    new: config.Config, stop: list[str], start: list[str], new_mixer: bool
) -> None:
    p = plan(BASE, new, running=RUNNING)
    assert sorted(p.stop) == sorted(stop)
    assert sorted(p.start) == sorted(start)
    assert p.new_mixer is new_mixer


def test_failed_parts_are_built_again_and_rotated_credentials_restart_their_link() -> None:
    p = plan(BASE, BASE, running=RUNNING - {"capture"}, failed={"capture"}, rotated={"pbx"})
    assert p.stop == ("link-pbx",) and sorted(p.start) == ["capture", "link-pbx"]
    assert p.changes == ()


def test_changes_are_listed_key_by_key_in_file_order() -> None:
    new = edit(audio={"volume": 0.5}, videosdk={"enabled": False, "topics": ("CHAT", "OPS")})
    assert config_changes(BASE, new) == [
        ("audio.volume", 0.8, 0.5),
        ("videosdk.enabled", True, False),
        ("videosdk.topics", ("CHAT",), ("CHAT", "OPS")),
    ]
