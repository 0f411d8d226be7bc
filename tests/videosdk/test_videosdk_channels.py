"""Channels over the real link and the sandbox VideoSDK: a switch ends the session with
its goodbye and streams from a new session in the new room; a room VideoSDK refuses puts
the device back in the last good room, said once and counted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from agent.channels import Channels
from agent.config import RoomConfig
from tests.support import wait_until
from tests.videosdk.conftest import Harness

ROOMS = (RoomConfig("room-ops", "Ops"), RoomConfig("room-med", "Medics"), RoomConfig("room-c"))
SWITCH_BUDGET_S = 1.5  # issue 21: a switch streams in the new room within 1.5 s


@contextlib.asynccontextmanager
async def talking(harness: Harness) -> AsyncIterator[None]:
    """The capture clock feeding frames all along (as a device does)."""

    async def feed() -> None:
        while True:
            await harness.feed(5)

    task = asyncio.create_task(feed(), name="feed")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def in_room(harness: Harness, room: str) -> list[object]:
    return [s for s in harness.fake.started_sessions if s.room_id == room]


async def test_a_switch_streams_from_a_new_session_in_the_new_room(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    channels = Channels(ROOMS)
    harness.start(channels=channels)
    async with talking(harness):
        await harness.wait_up()
        old = harness.fake.started_sessions[0]
        assert old.room_id == "room-ops"
        await wait_until(lambda: len(old.frames) > 5, 3.0, "frames in the first room")
        reconnects = harness.metrics.get("reconnects_total", link="videosdk")
        caplog.clear()

        t0 = time.monotonic()
        channels.step(+1)
        await wait_until(
            lambda: any(s.frames for s in in_room(harness, "room-med")),  # type: ignore[attr-defined]
            5.0,
            "frames in room-med",
        )
        new = in_room(harness, "room-med")[0]
        first = new.frames[0].t  # type: ignore[attr-defined]
        took = first - t0
        print(f"channel switch: first frame in the new room {took * 1000:.0f} ms after the press")
        assert took < SWITCH_BUDGET_S, f"switch took {took:.2f} s"

        # the old session said goodbye (stop, close 1000) and got no frame after the switch
        await wait_until(lambda: old.ended_at is not None, 2.0, "old session ended")
        assert old.stopped and old.client_close_code == 1000
        assert all(f.t <= new.frames[0].t for f in old.frames)  # type: ignore[attr-defined]
        assert new.participant_id == "dev_12" and new.call_id != old.call_id
    await harness.wait_state("up")
    assert harness.status.links["videosdk"].detail == "room room-med"
    # a switch is not a failure: no down line, no reconnect counted, no backoff
    assert harness.metrics.get("reconnects_total", link="videosdk") == reconnects
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "videosdk: switching to room room-med" in caplog.text


async def test_wrapping_down_from_the_first_channel_lands_on_the_last(harness: Harness) -> None:
    channels = Channels(ROOMS)
    harness.start(channels=channels)
    await harness.wait_up()
    channels.step(-1)
    await wait_until(lambda: in_room(harness, "room-c"), 3.0, "a session in room-c")
    await harness.wait_state("up")
    assert channels.number == 3 and channels.current == ROOMS[2]


async def test_a_refused_room_returns_to_the_last_good_one(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    harness.fake.refused_rooms.add("room-med")
    channels = Channels(ROOMS)
    harness.start(channels=channels)
    await harness.wait_up()
    caplog.clear()
    channels.step(+1)
    await wait_until(lambda: len(in_room(harness, "room-ops")) == 2, 5.0, "back in room-ops")
    await harness.wait_state("up")
    assert channels.current == ROOMS[0]
    assert harness.metrics.get("rooms_refused_total", link="videosdk") == 1
    said = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(said) == 1, said
    assert "room room-med refused by VideoSDK (HTTP 404); back in room room-ops" in said[0]
    assert "room-med" in harness.status.last_error
    assert in_room(harness, "room-med") == []  # never streamed there


async def test_a_refused_room_with_no_good_room_to_go_back_to_needs_attention(
    harness: Harness,
) -> None:
    harness.fake.refused_rooms.add("room-ops")
    harness.start(channels=Channels(ROOMS))
    await harness.wait_state("attention")
    assert "check videosdk.room_id" in harness.status.links["videosdk"].detail
    assert harness.metrics.get("rooms_refused_total", link="videosdk") == 0
