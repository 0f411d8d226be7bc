"""The demo's channel keys: ] and [ press the channel buttons (mock pins), the session
moves to the next room of the demo's three, and the live view's link row shows it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from rich.console import Console

from agent.demo import CHANNEL_DOWN_PIN, CHANNEL_UP_PIN
from agent.demo.bench import DemoBench
from agent.demo.keys import PttKeys
from agent.demo.view import KEYS_HELP, DemoView, LogRing, capture_logs
from tests.support import wait_until


@pytest.fixture(autouse=True)
def _agent_info_logs() -> None:
    logging.getLogger("agent").setLevel(logging.INFO)


async def test_the_channel_keys_move_the_demo_to_the_next_room() -> None:
    ring = LogRing()
    with capture_logs(ring):
        async with DemoBench() as bench:
            ptt = PttKeys(asyncio.get_running_loop(), lambda _talk: None)
            view = DemoView(bench, ptt, ring)
            console = Console(width=100, record=True, color_system=None)
            await wait_until(lambda: bench.agent.status.led.value == "on", 10, "links up")
            bench.tap(CHANNEL_UP_PIN)  # the ] key
            await wait_until(
                lambda: any(s.room_id == "demo-room-2" for s in bench.fake_vs.active()),
                5,
                "a session in demo-room-2",
            )
            await wait_until(lambda: bench.agent.status.led.value == "on", 5, "up again")
            console.print(view.render())
            text = console.export_text()
            assert "● up (room demo-room-2)" in text
            assert "channel 2/3 Ops (demo-room-2) (button)" in text  # the log pane
            bench.tap(CHANNEL_DOWN_PIN)  # [ : back
            await asyncio.sleep(0.15)  # released, and past the debounce
            bench.tap(CHANNEL_DOWN_PIN)  # [ : before the first, the last
            await wait_until(
                lambda: any(s.room_id == "demo-room-3" for s in bench.fake_vs.active()),
                5,
                "a session in demo-room-3",
            )
    assert "[/]: channel" in KEYS_HELP
