"""What cuts a link's wait short or ends its connection from outside: a network change
(agent.netwatch feeds Runner.network_changed) and a step of the wall clock during a
slow wait. Real asyncio timing, no sockets; the waits are seconds long so a test that
passes cannot have waited them out."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from agent.backoff import BackoffPolicy, Reconnector
from agent.clock import StepDetector
from agent.errors import AuthRefused
from agent.links.runner import History, Outcome, Runner, attention, retry
from agent.metrics import Metrics
from agent.status import LinkState, StatusBoard

POLICY = BackoffPolicy(initial_s=30.0, factor=2.0, cap_s=60.0, jitter=0.0, slow_s=120.0)


def decide(exc: BaseException, history: History) -> Outcome:
    if isinstance(exc, AuthRefused):
        return attention("credentials refused")
    return retry(str(exc) or type(exc).__name__)


class Link:
    """An attempt that connects (``up``) and then holds the connection until cancelled,
    or fails at once with ``fail``."""

    def __init__(self, remote: str) -> None:
        self.status = StatusBoard()
        self.attempts = 0
        self.fail: BaseException | None = None
        self.runner = Runner(
            "demo",
            self._attempt,
            decide,
            status=self.status,
            metrics=Metrics(),
            reconnector=Reconnector(POLICY, rng=lambda: 0.0),
        )
        self.runner.remote = remote

    async def _attempt(self) -> None:
        self.attempts += 1
        if self.fail is not None:
            raise self.fail
        self.runner.up("connected")
        await asyncio.Event().wait()

    def state(self) -> tuple[str, str]:
        link = self.status.links.get("demo")
        return ("", "") if link is None else (link.state.value, link.detail)


async def until(check: object, within_s: float = 2.0) -> None:
    end = time.monotonic() + within_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_a_lost_route_ends_the_connection_at_once_and_a_new_one_retries_now(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = Link("api.videosdk.live")
    task = asyncio.create_task(link.runner.run())
    await until(lambda: link.state() == ("up", "connected"))
    with caplog.at_level(logging.INFO, logger="agent.links.demo"):
        link.runner.network_changed(False, lost=("wlan0",))
        await until(lambda: link.state()[0] == "retry")  # not after a keepalive timeout
        assert link.state()[1] == "no network (default route via wlan0 gone)"
        t0 = time.monotonic()
        link.runner.network_changed(True)  # the route is back: no 30 s backoff wait
        await until(lambda: link.attempts == 2 and link.state()[0] == "up")
        assert time.monotonic() - t0 < 1.0
    said = [r.getMessage() for r in caplog.records]
    assert "demo down: no network (default route via wlan0 gone); retry in 30 s" in said
    assert "demo: network back, retrying now" in said
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert link.state()[0] == "stopped"


async def test_a_route_moving_to_another_interface_reconnects_through_it() -> None:
    link = Link("api.videosdk.live")
    task = asyncio.create_task(link.runner.run())
    await until(lambda: link.state()[0] == "up")
    link.runner.network_changed(True, lost=("wlan0",))  # wlan0 gone, wwan0 carries it now
    await until(lambda: link.attempts == 2 and link.state()[0] == "up")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_loopback_links_and_servers_do_not_care_about_the_default_route() -> None:
    for remote in ("127.0.0.1", "localhost", ""):
        link = Link(remote)
        task = asyncio.create_task(link.runner.run())
        await until(lambda link=link: link.state()[0] == "up")
        link.runner.network_changed(False, lost=("eth0",))
        await asyncio.sleep(0.1)
        assert link.state() == ("up", "connected") and link.attempts == 1, remote
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancelling_the_runner_is_not_mistaken_for_a_network_change() -> None:
    link = Link("api.videosdk.live")
    task = asyncio.create_task(link.runner.run())
    await until(lambda: link.state()[0] == "up")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert link.attempts == 1


async def test_a_clock_step_ends_a_slow_wait_for_refused_credentials(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device that booted with a wrong clock had its JWT refused (120 s wait); NTP then
    steps the clock: the link tries again within a check interval, not 2 minutes later."""
    monkeypatch.setattr("agent.links.runner.CLOCK_CHECK_S", 0.05)
    wall = [time.time() - 3 * 3600]
    link = Link("api.videosdk.live")
    link.runner.steps = StepDetector(wall=lambda: wall[0], mono=time.monotonic)
    link.fail = AuthRefused("VideoSDK refused the credentials (HTTP 401)")
    task = asyncio.create_task(link.runner.run())
    with caplog.at_level(logging.INFO, logger="agent.links.demo"):
        await until(lambda: link.state()[0] == LinkState.ATTENTION.value)
        await asyncio.sleep(0.2)
        assert link.attempts == 1  # waiting its 120 s
        link.fail = None
        wall[0] += 3 * 3600  # timesyncd got an answer
        await until(lambda: link.state()[0] == "up")
    assert any("the clock stepped by +10800 s; retrying now" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
