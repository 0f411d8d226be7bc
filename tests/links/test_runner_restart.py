"""Runner.restart: a link ends its own attempt on purpose (a channel switch). The next
attempt starts at once: no down line, no backoff step, no reconnect counted; a link
that was waiting out a backoff tries now."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.backoff import BackoffPolicy, Reconnector
from agent.errors import LinkError
from agent.links.runner import History, Outcome, Runner, retry
from agent.metrics import Metrics
from agent.status import LinkState, StatusBoard
from tests.support import wait_until

POLICY = BackoffPolicy(initial_s=30.0, cap_s=60.0, jitter=0.0)  # a wait no test sits out


def plain(exc: BaseException, history: History) -> Outcome:
    return retry(str(exc))


def state(link: Link) -> LinkState | None:
    part = link.status.links.get("demo")
    return None if part is None else part.state


class Link:
    """Attempts that come up and stay up until cancelled, or fail when told to."""

    def __init__(self, *, fail: bool = False) -> None:
        self.status, self.metrics = StatusBoard(), Metrics()
        self.fail = fail
        self.attempts = 0
        self.runner = Runner("demo", self.attempt, plain, status=self.status,
                             metrics=self.metrics,
                             reconnector=Reconnector(POLICY, rng=lambda: 0.0))  # fmt: skip

    async def attempt(self) -> None:
        self.attempts += 1
        if self.fail:
            raise LinkError("refused")
        self.runner.up(f"attempt {self.attempts}")
        await asyncio.Event().wait()


async def test_a_restart_is_the_next_attempt_at_once_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    link = Link()
    task = asyncio.create_task(link.runner.run())
    await wait_until(lambda: link.attempts == 1, 2, "first attempt")
    for n in (2, 3):
        link.runner.restart("switching to room r")
        await wait_until(lambda n=n: link.status.links["demo"].detail == f"attempt {n}", 2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert link.metrics.total("reconnects_total") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert caplog.text.count("demo: switching to room r") == 2
    assert link.runner.reconnector.next_delay() == 30.0  # the backoff never moved


async def test_a_restart_during_a_backoff_wait_tries_now() -> None:
    link = Link(fail=True)
    task = asyncio.create_task(link.runner.run())
    await wait_until(lambda: link.runner.attempts == 1 and state(link) is LinkState.RETRY, 2)
    link.fail = False
    link.runner.restart("switching to room r")  # instead of 30 s from now
    await wait_until(lambda: state(link) is LinkState.UP, 2, "up at once")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert link.attempts == 2
