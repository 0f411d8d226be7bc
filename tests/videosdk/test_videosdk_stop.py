"""Stopping is always clean, also when the stop is itself interrupted: the agent's
TaskGroup cancels a link a second time when another part fails during shutdown, and
that second cancellation must not cut the goodbye (``stop``, then close 1000) short."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from agent.sandbox.videosdk import FakeVideoSDK
from tests.support import wait_until

from .conftest import TOKEN, Harness, write_creds

RUNS = 20


async def test_a_second_cancellation_never_loses_the_stop_frame(harness: Harness) -> None:
    failures = []
    for run in range(RUNS):
        harness.start()
        await harness.wait_up(sessions=run + 1)
        await harness.feed(3)
        assert harness.task is not None
        harness.task.cancel()  # SIGTERM
        for _ in range(run % 4):  # the goodbye gets under way (0..3 loop turns)
            await asyncio.sleep(0)
        harness.task.cancel()  # and the TaskGroup aborts it again
        await asyncio.gather(harness.task, return_exceptions=True)
        session = harness.fake.started_sessions[-1]
        await wait_until(lambda s=session: s.client_close_code is not None, 3.0, "closed")
        if not session.stopped or session.client_close_code != 1000:
            failures.append((run, session.stopped, session.client_close_code))
        assert harness.state() == "stopped"
    assert not failures, failures


class _ThreadedFake:
    """A FakeVideoSDK on its own event loop in its own thread: it can be made busy (not
    reading its sockets) while the agent's loop goes on, as a loaded server or a
    descheduled process is."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = FakeVideoSDK(token=TOKEN)
        self._call(self.fake.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def busy(self, seconds: float) -> None:
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def close(self) -> None:
        self._call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def test_a_busy_server_still_gets_stop_and_close_1000(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The closing handshake cannot finish within the 1 s bound while the server is
    busy: the link then closes its socket with a FIN after the frames it wrote (never
    a reset: a reset makes the server's kernel throw away the unread `stop`)."""
    server = _ThreadedFake()
    h = Harness(server.fake, write_creds(tmp_path / "creds", videosdk_token=TOKEN), http)
    try:
        h.start()
        await h.wait_up()
        await h.feed(5)
        server.busy(1.6)  # longer than the link's STOP_TIMEOUT_S
        await asyncio.sleep(0.05)
        took = await h.stop()
        assert took < 1.5, took  # the agent's own stop stays bounded
        session = server.fake.started_sessions[-1]
        await wait_until(lambda: session.client_close_code is not None, 5.0, "closed")
        assert session.stopped and session.event_names[-1] == "stop"
        assert session.client_close_code == 1000
    finally:
        server.close()
