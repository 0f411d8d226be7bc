"""FastRTCLink behaviour that needs no fastrtc server: the retry policy (pure) and a
hung peer (websockets' own server that accepts and never answers)."""

from __future__ import annotations

import itertools

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.backoff import BackoffPolicy, Reconnector
from agent.errors import HttpRefused, Unreachable
from agent.links.fastrtc import (
    REFUSAL_CAP_S,
    NoPong,
    SessionRefused,
    decide,
    refusal_wait,
)
from agent.links.runner import Delay, History
from agent.proto.fastrtc import Refused
from agent.status import LinkState
from tests.fastrtc.app import FastRTCApp
from tests.support import wait_until

from .conftest import Harness

BUSY = SessionRefused(Refused("concurrency_limit_reached", 1))


def test_concurrency_refusals_wait_10_s_then_longer_each_time() -> None:
    waits = [decide(BUSY, History(refusals=n - 1)).at_least_s for n in range(1, 8)]
    assert waits[:5] == [10.0, 20.0, 40.0, 80.0, REFUSAL_CAP_S]
    assert waits[-1] == REFUSAL_CAP_S and all(w >= 10.0 for w in waits)
    assert all(b >= a for a, b in itertools.pairwise(waits))
    down = decide(BUSY, History())
    assert down.state is LinkState.RETRY and down.refusal
    assert down.message == "app busy: concurrency limit reached (limit 1)"
    assert refusal_wait(3, base_s=0.5) == 2.0


def test_other_failures() -> None:
    other = SessionRefused(Refused("connection_closed"))
    first = History()
    assert decide(other, first).message == "app refused the session (connection_closed)"
    assert decide(other, first).at_least_s == 10.0  # a refusal is never hammered either
    assert decide(HttpRefused("app", 404), first).state is LinkState.ATTENTION
    assert decide(HttpRefused("app", 404), first).delay is Delay.SLOW
    assert decide(HttpRefused("app", 502), first).state is LinkState.RETRY
    down = decide(Unreachable("127.0.0.1:9", "connection refused"), first)
    assert down.message == "app unreachable"
    assert down.cause == "cannot connect to 127.0.0.1:9: connection refused"  # for the log
    assert decide(NoPong("x"), first).at_least_s == 0.0


@pytest.mark.asyncio
async def test_a_hung_app_is_dropped_when_no_pong_comes() -> None:
    async def mute(ws: ServerConnection) -> None:
        async for _ in ws:  # reads everything, answers nothing
            pass

    async with serve(mute, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        h = Harness(FastRTCApp())  # never started: only its rates are used
        try:
            h.start(
                url=f"ws://127.0.0.1:{port}/websocket/offer",
                pong_timeout_s=0.3,
                reconnector=Reconnector(BackoffPolicy(initial_s=5.0)),
            )
            await wait_until(lambda: h.detail() == "no pong, reconnecting", 5, "no pong")
            assert h.state() == "retry" and not h.mixer.live()
            assert h.metric("frames_sent_total") == 0  # never accepted: the mic stays home
        finally:
            await h.close()
