"""The real FastRTCLink against a real fastrtc app (Stream + echo handler, uvicorn) on
loopback, with a recording mixer and a paced uplink queue."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from agent.status import LinkState, StatusBoard
from tests.fastrtc.app import FastRTCApp
from tests.support import wait_until

from .conftest import Harness, peak_hz, rms_dbfs, tone

pytestmark = [pytest.mark.fastrtc, pytest.mark.asyncio]


async def test_tone_goes_up_at_the_input_rate_and_comes_back_at_the_output_rate(
    harness: Harness, app: FastRTCApp
) -> None:
    harness.start()
    await harness.wait_up()
    harness.mic.play(tone(440.0, 1.0))
    await app.await_(lambda: len(app.handlers) == 1, what="a handler")
    wid = harness.link.websocket_id if harness.link else ""
    # the server got 1 s of 440 Hz at 48 kHz (it does not resample: we did)
    await app.await_(lambda: len(app.received(wid)) >= 48000, what="1 s of audio at the server")
    heard = app.received(wid)[:48000]
    assert peak_hz(heard[4800:43200], 48000) == pytest.approx(440.0, abs=2.0)
    assert rms_dbfs(heard[4800:43200]) == pytest.approx(-15.0, abs=1.0)  # -12 dBFS peak sine
    # ... and echoed it back: the mixer source plays 24 kHz mono, the same tone
    await harness.wait_until_played(24000)
    src = harness.mixer.sources[0]
    assert (src.name, src.rate, src.channels) == ("fastrtc", 24000, 1)
    back = src.pcm()
    start = int(np.argmax(np.abs(back) > 1000))  # the echo starts after some silence
    assert peak_hz(back[start + 2400 : start + 21600], 24000) == pytest.approx(440.0, abs=2.0)
    assert rms_dbfs(back[start + 2400 : start + 21600]) == pytest.approx(-15.0, abs=1.0)
    assert all(t is not None for t in src.arrivals)
    # wire: start first, with a unique id; then ping (answered), then media
    conn = app.started()[0]
    assert conn.events[:2] == ["start", "ping"] and conn.websocket_id == wid and len(wid) == 32
    assert harness.metric("frames_sent_total") >= 50
    assert harness.metric("frames_received_total") >= 5
    assert harness.status.summary().startswith(f"fastrtc: up (app 127.0.0.1:{app.port})")


async def test_second_device_is_refused_and_waits_at_least_10_s(
    harness: Harness, app: FastRTCApp
) -> None:
    harness.start()
    await harness.wait_up()
    harness.mic.play(tone(440.0, 0.2))
    first = harness.link.websocket_id if harness.link else ""
    second = Harness(app)
    try:
        second.start()  # the default refusal wait: 10 s
        await wait_until(lambda: second.state() == "retry", 10, "the second link refused")
        part = second.status.links["fastrtc"]
        assert part.detail == "app busy: concurrency limit reached (limit 1)"
        assert part.retry_at is not None and part.retry_at - time.monotonic() > 9.0
        assert "retry in 1" in second.status.summary()  # "retry in 10 s" .. "retry in 12 s"
        assert second.metric("refusals_total", reason="concurrency_limit_reached") == 1
        assert not second.mixer.live() and second.metric("frames_sent_total") == 0
        await asyncio.sleep(1.0)
        assert len(app.connections) == 2, "no second attempt within the wait"
        # the refused session did not disturb the first one (its id is its own)
        assert app.connections[1].websocket_id not in ("", first)
        n = len(app.received(first))
        await app.await_(lambda: len(app.received(first)) > n + 4800, what="first still streams")
        assert harness.up()
    finally:
        await second.close()


@pytest.mark.slow
async def test_refusal_waits_grow_and_the_seat_is_taken_once_free(
    harness: Harness, app: FastRTCApp
) -> None:
    harness.start()
    await harness.wait_up()
    waits: list[float] = []
    status = StatusBoard()

    def on_change(board: StatusBoard) -> None:
        part = board.links.get("fastrtc")
        if part and part.state is LinkState.RETRY and part.retry_at is not None:
            wait = round(part.retry_at - time.monotonic(), 2)
            if not waits or abs(wait - waits[-1]) > 0.05:
                waits.append(wait)

    status.add_listener(on_change)
    second = Harness(app, status=status)
    try:
        second.start(refusal_wait_s=0.3, rng=lambda: 0.0)
        await wait_until(lambda: len(waits) >= 3, 10, "three refusals")
        assert waits[0] >= 0.29 and waits[1] >= 0.59 and waits[2] >= 1.19, waits
        await harness.stop()  # the first device leaves: the seat frees
        await second.wait_up(within_s=10)
        assert second.metric("refusals_total", reason="concurrency_limit_reached") >= 3
    finally:
        await second.close()


async def test_app_events_reach_the_journal_and_the_status(
    harness: Harness, app: FastRTCApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.links.fastrtc")
    harness.start()
    await harness.wait_up()
    wid = harness.link.websocket_id if harness.link else ""
    await app.await_(lambda: wid in app.handlers, what="the handler")
    who = f"app 127.0.0.1:{app.port}"

    app.send(wid, app.create_message("log", "started_talking"))
    await wait_until(lambda: harness.detail() == f"{who}, hearing you", what="hearing you")
    app.send(wid, app.create_message("log", "pause_detected"))
    await wait_until(lambda: harness.detail() == f"{who}, thinking", what="thinking")
    app.send(wid, app.create_message("log", "response_starting"))
    await wait_until(lambda: harness.detail() == f"{who}, assistant talking", what="talking")
    assert "fastrtc: up (app 127.0.0.1" in harness.status.summary()
    assert "assistant talking)" in harness.status.summary()
    # no reply audio follows: after a quiet second the status is plain again
    await wait_until(lambda: harness.detail() == who, 5, "the reply over")

    for _ in range(2):
        app.send(wid, app.create_message("send_input", []))
    app.send(wid, app.create_message("stopword", ""))
    app.send(wid, {"type": "error", "message": "model overloaded"})
    app.send(wid, "this is not json")
    app.send(wid, {"type": "fetch_output", "data": []})  # known to fastrtc, not to us
    await wait_until(lambda: harness.metric("unknown_events_total") == 1, what="unknown counted")

    assert harness.metric("app_events_total", event="send_input") == 2
    asks = [r for r in caplog.records if "send_input" in r.getMessage()]
    assert len(asks) == 1 and asks[0].levelno == logging.WARNING  # once per session
    assert harness.metric("app_events_total", event="stopword") == 1
    assert any("stop word" in r.getMessage() for r in caplog.records)
    assert harness.status.last_error == "fastrtc: model overloaded"
    assert harness.metric("malformed_total", reason="not_json") == 1
    progress = ("started_talking", "pause_detected", "response_starting")
    notes = [getattr(r, "APP_EVENT", "") for r in caplog.records]
    assert [n for n in notes if n in progress] == list(progress)
    assert all(getattr(r, "LINK", "") == "fastrtc" for r in caplog.records)
    assert harness.up() and len(app.connections) == 1  # none of it broke the session


async def test_cancel_sends_stop_and_the_app_closes_the_session(
    harness: Harness, app: FastRTCApp
) -> None:
    harness.start()
    await harness.wait_up()
    harness.mic.play(tone(440.0, 0.3))
    await app.await_(lambda: app.connections[0].media_messages >= 5, what="media")
    took = await harness.stop()
    assert took < 1.0
    conn = app.connections[0]
    await app.await_(lambda: conn.closed, what="the server saw the close")
    assert conn.events[-1] == "stop"
    assert not harness.mixer.live()
    assert harness.status.links["fastrtc"].state is LinkState.STOPPED
    # the app freed its seat: a new device is taken at once
    other = Harness(app)
    try:
        other.start()
        await other.wait_up()
    finally:
        await other.close()


async def test_app_restart_reconnects_quickly_with_a_new_id(harness: Harness) -> None:
    with FastRTCApp() as first:
        harness.start(url=first.url)
        await harness.wait_up()
        old_id = harness.link.websocket_id if harness.link else ""
        port = first.port
    await wait_until(lambda: not harness.up(), 5, "the link down")
    assert harness.state() in ("retry", "connecting")
    assert not harness.mixer.live()
    with FastRTCApp(port=port) as second:
        await harness.wait_up(within_s=5)
        assert second.started()[0].websocket_id != old_id
        assert harness.metric("reconnects_total") >= 1


async def test_wrong_path_needs_attention(harness: Harness, app: FastRTCApp) -> None:
    harness.start(url=f"ws://127.0.0.1:{app.port}/not-fastrtc")
    await wait_until(lambda: harness.state() == "attention", 5, "attention")
    detail = harness.detail()
    assert "HTTP 403" in detail and "fastrtc.url" in detail and "/websocket/offer" in detail
    assert harness.status.led.value == "blink-4hz"
