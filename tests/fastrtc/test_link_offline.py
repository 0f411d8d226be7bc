"""FastRTCLink behaviour that needs no fastrtc server: the retry policy (pure) and a
hung peer (websockets' own server that accepts and never answers)."""

from __future__ import annotations

import itertools

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.backoff import BackoffPolicy, Reconnector
from agent.links.fastrtc import (
    REFUSAL_CAP_S,
    AppUnreachable,
    HandshakeRefused,
    NoPong,
    SessionRefused,
    decide,
    refusal_wait,
)
from agent.proto.fastrtc import Refused
from agent.status import LinkState
from tests.fastrtc.app import FastRTCApp
from tests.support import wait_until

from .conftest import Harness

BUSY = SessionRefused(Refused("concurrency_limit_reached", 1))


def test_concurrency_refusals_wait_10_s_then_longer_each_time() -> None:
    waits = [decide(BUSY, n).at_least_s for n in range(1, 8)]
    assert waits[:5] == [10.0, 20.0, 40.0, 80.0, REFUSAL_CAP_S]
    assert waits[-1] == REFUSAL_CAP_S and all(w >= 10.0 for w in waits)
    assert all(b >= a for a, b in itertools.pairwise(waits))
    down = decide(BUSY, 1)
    assert down.state is LinkState.RETRY
    assert down.detail == "app busy: concurrency limit reached (limit 1)"
    assert refusal_wait(3, base_s=0.5) == 2.0


def test_other_failures() -> None:
    other = SessionRefused(Refused("connection_closed"))
    assert decide(other, 1).detail == "app refused the session (connection_closed)"
    assert decide(other, 1).at_least_s == 10.0  # a refusal is never hammered either
    assert decide(HandshakeRefused(404)).state is LinkState.ATTENTION
    assert decide(HandshakeRefused(404)).slow
    assert decide(HandshakeRefused(502)).state is LinkState.RETRY
    assert decide(AppUnreachable("x")).detail == "app unreachable"
    assert decide(NoPong("x")).at_least_s == 0.0


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
