"""Orgo's documented close codes besides 4401 (PROTOCOLS.md §2: 1000, 1001, 4401, 4404,
4500): a computer that is gone or stopped (4404) needs a person and is retried slowly;
a server error (4500) is retried at once."""

from __future__ import annotations

import logging
import time

import pytest

from agent.status import LinkState
from tests.support import wait_until

from .conftest import Harness


def up(h: Harness) -> bool:
    return h.state() == "up"


async def test_close_4404_asks_for_attention_and_retries_slowly(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.start()
    await wait_until(lambda: up(harness), what="link up")
    connects = len(harness.fake.sessions)
    await harness.fake.close_streams(4404, "computer not found")
    await wait_until(lambda: harness.state() == "attention", what="attention")
    part = harness.status.links["orgo"]
    assert part.detail == (
        f"computer {harness.cfg.computer_id} not found or not running (close 4404): "
        "start it in Orgo"
    )
    # the slow cadence: 0.21-0.3 s (a normal first retry: at most 0.05 s)
    assert part.retry_at is not None and part.retry_at - time.monotonic() > 0.12
    lines = [r for r in caplog.records if "needs attention" in r.getMessage()]
    assert lines and lines[0].levelno == logging.ERROR
    assert "orgo needs attention: computer" in lines[0].getMessage()
    assert harness.status.last_error.startswith("orgo: computer")
    await wait_until(lambda: up(harness), what="up again after the slow retry")
    assert len(harness.fake.sessions) == connects + 1  # one retry, not a spin


async def test_close_4500_is_retried_at_once(harness: Harness) -> None:
    harness.start()
    await wait_until(lambda: up(harness), what="link up")
    await harness.fake.close_streams(4500, "internal error")
    await wait_until(lambda: harness.metric("reconnects_total") >= 1, what="a reconnect")
    await wait_until(lambda: up(harness), what="up again")
    assert harness.status.links["orgo"].state is LinkState.UP
    assert harness.metric("reconnects_total") == 1
