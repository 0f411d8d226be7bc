"""A device that booted with a wrong clock (issue 17, item 5): the fake VideoSDK checks
JWT expiry against the real time, as VideoSDK does; the agent's wall clock is shifted.
No real-time clock, no NTP yet: the link must still get in, and say why it was refused."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest

from agent.sandbox.videosdk import FakeVideoSDK
from tests.support import wait_until
from tests.videosdk.conftest import Harness, write_creds

API_KEY = "vsdk-clock-apikey"
SECRET = "vsdk-clock-secret-0123456789abcdef"
HOURS_3 = 3 * 3600.0


@pytest.mark.parametrize("shift_s", [-HOURS_3, +HOURS_3, -20_000 * 86400.0])
async def test_a_wrong_boot_clock_is_named_and_the_servers_time_gets_the_link_in(
    http: httpx.AsyncClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    shift_s: float,
) -> None:
    """3 h behind (an old saved timestamp), 3 h ahead, and 1970 (no timestamp at all):
    the first JWT is refused (expired, or not yet valid), the reply's Date tells the
    offset, the next JWT carries the server's time: up within seconds, not 120 s."""
    async with FakeVideoSDK(token=None, jwt_secret=SECRET, api_key=API_KEY) as fake:
        creds = write_creds(tmp_path / "c", videosdk_api_key=API_KEY, videosdk_secret=SECRET)
        h = Harness(fake, creds, http)
        with caplog.at_level(logging.INFO, logger="agent.links"):
            t0 = time.monotonic()
            h.start(wall_clock=lambda: time.time() + shift_s)
            try:
                await h.wait_up(within_s=10.0)
                took = time.monotonic() - t0
            finally:
                await h.stop()
    said = [r.getMessage() for r in caplog.records]
    assert took < 5.0, took
    if shift_s > 0:  # a token from the future is accepted by PyJWT (no nbf): nothing to say
        return
    assert fake.auth_failures == [401]  # one refusal, then in
    clock_lines = [s for s in said if "clock is off by" in s]
    assert clock_lines and "not synced?" in clock_lines[0], said
    down = [s for s in said if s.startswith("videosdk down:")]
    assert down and "clock is off by" in down[0] and "HTTP 401" in down[0], said
    assert not any("needs attention" in s for s in said), said


async def test_refused_again_with_the_servers_time_needs_attention_and_says_the_clock(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A wrong secret on a device whose clock is also wrong: after the retry with the
    server's time is refused too, it is a person's job; the status says both."""
    async with FakeVideoSDK(token=None, jwt_secret=SECRET, api_key=API_KEY) as fake:
        creds = write_creds(tmp_path / "c", videosdk_api_key=API_KEY, videosdk_secret="wrong" * 8)
        h = Harness(fake, creds, http)
        h.start(wall_clock=lambda: time.time() - HOURS_3)
        try:
            await wait_until(lambda: h.state() == "attention", 10.0, "attention")
            detail = h.status.links["videosdk"].detail
        finally:
            await h.stop()
    assert len(fake.auth_failures) == 2
    assert "HTTP 401" in detail and "clock is off by 3 h" in detail
