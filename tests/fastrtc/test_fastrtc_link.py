"""The real FastRTCLink against a real fastrtc app (Stream + echo handler under uvicorn,
in its own process) on loopback, with a recording mixer and a paced uplink queue."""

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


def session_id(h: Harness) -> str:
    assert h.link is not None
    return h.link.websocket_id


async def test_tone_goes_up_at_the_input_rate_and_comes_back_at_the_output_rate(
    harness: Harness, app: FastRTCApp
) -> None:
    harness.start()
    await harness.wait_up()
    harness.mic.play(tone(440.0, 1.0))
    wid = session_id(harness)
    # the app got 1 s of 440 Hz at 48 kHz (it does not resample: the link did)
    await app.await_(lambda: app.session(wid).received_samples >= 48000, what="1 s at the app")
    await harness.wait_until_played(24000)
    heard = app.received(wid)
    start = int(np.argmax(np.abs(heard) > 1000))
    assert peak_hz(heard[start + 4800 : start + 43200], 48000) == pytest.approx(440.0, abs=2.0)
    assert rms_dbfs(heard[start + 4800 : start + 43200]) == pytest.approx(-15.0, abs=1.0)
    # ... and echoed it back: the mixer source plays 24 kHz mono, the same tone
    src = harness.mixer.sources[0]
    assert (src.name, src.rate, src.channels) == ("fastrtc", 24000, 1)
    back = src.pcm()
    start = int(np.argmax(np.abs(back) > 1000))  # the echo starts after some silence
    assert peak_hz(back[start + 2400 : start + 21600], 24000) == pytest.approx(440.0, abs=2.0)
    assert rms_dbfs(back[start + 2400 : start + 21600]) == pytest.approx(-15.0, abs=1.0)
    assert all(t is not None for t in src.arrivals)
    # wire: start first, with a unique id; then ping (answered), then media
    conn = app.session(wid)
    assert conn.events[:2] == ("start", "ping") and len(wid) == 32
    assert harness.metric("frames_sent_total") >= 50
    assert harness.metric("frames_received_total") >= 5
    assert harness.status.summary().startswith(f"fastrtc: up (app 127.0.0.1:{app.port})")


async def test_second_device_is_refused_and_waits_at_least_10_s(
    harness: Harness, app: FastRTCApp
) -> None:
    harness.start()
    await harness.wait_up()
    harness.mic.play(tone(440.0, 0.2))
    first = session_id(harness)
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
        conns = await asyncio.to_thread(app.started)
        assert len(conns) == 2, "no second attempt within the wait"
        # the refused session did not disturb the first one (its id is its own)
        assert conns[1].websocket_id not in ("", first) and conns[1].closed
        n = conns[0].received_samples
        await app.await_(
            lambda: app.session(first).received_samples > n + 4800, what="the first streams on"
        )
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
            waits.append(round(part.retry_at - time.monotonic(), 2))

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
    wid = session_id(harness)
    who = f"app 127.0.0.1:{app.port}"

    def say(kind: str, data: object) -> None:
        app.send(wid, kind, data)

    await asyncio.to_thread(say, "log", "started_talking")
    await wait_until(lambda: harness.detail() == f"{who}, hearing you", what="hearing you")
    await asyncio.to_thread(say, "log", "pause_detected")
    await wait_until(lambda: harness.detail() == f"{who}, thinking", what="thinking")
    await asyncio.to_thread(say, "log", "response_starting")
    await wait_until(lambda: harness.detail() == f"{who}, assistant talking", what="talking")
    assert "fastrtc: up (app 127.0.0.1" in harness.status.summary()
    assert "assistant talking)" in harness.status.summary()
    # no reply audio follows: after a quiet second the status is plain again
    await wait_until(lambda: harness.detail() == who, 5, "the reply over")

    def more() -> None:
        for _ in range(2):
            app.send(wid, "send_input", [])
        app.send(wid, "stopword", "")
        app.send_text(wid, {"type": "error", "message": "model overloaded"})
        app.send_text(wid, "this is not json")
        app.send(wid, "fetch_output", [])  # a fastrtc message kind this client ignores

    await asyncio.to_thread(more)
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
    conns = await asyncio.to_thread(app.started)
    assert harness.up() and len(conns) == 1  # none of it broke the session


async def test_assistant_talking_lasts_as_long_as_the_reply_is_heard(
    harness: Harness, app: FastRTCApp
) -> None:
    harness.start()
    await harness.wait_up()
    wid = session_id(harness)
    talking = f"app 127.0.0.1:{app.port}, assistant talking"
    harness.mic.play(tone(440.0, 2.5))  # the echo app "replies" with the tone
    await asyncio.to_thread(app.send, wid, "log", "response_starting")
    await wait_until(lambda: harness.detail() == talking, what="talking")
    await asyncio.sleep(1.5)  # longer than the quiet timeout, but the reply is still audible
    assert harness.detail() == talking
    await wait_until(lambda: harness.detail() != talking, 5, "the reply over")
    assert harness.detail() == f"app 127.0.0.1:{app.port}"
    # it ended because the audible echo ended, while (silent) media still streams
    n = len(harness.mixer.sources[0].pcm())
    await harness.wait_until_played(n + 2400)
    assert harness.detail() == f"app 127.0.0.1:{app.port}"


async def test_cancel_sends_stop_and_the_app_frees_the_seat(
    harness: Harness, app: FastRTCApp
) -> None:
    harness.start()
    await harness.wait_up()
    harness.mic.play(tone(440.0, 0.3))
    wid = session_id(harness)
    await app.await_(lambda: app.session(wid).media_messages >= 5, what="media")
    took = await harness.stop()
    assert took < 1.0
    await app.await_(lambda: app.session(wid).closed, what="the app saw the close")
    conn = await asyncio.to_thread(app.session, wid)
    assert conn.events[-1] == "stop"
    assert not harness.mixer.live()
    assert harness.status.links["fastrtc"].state is LinkState.STOPPED
    other = Harness(app)  # the seat is free: a new device is taken at once
    try:
        other.start()
        await other.wait_up()
    finally:
        await other.close()


async def test_wrong_path_needs_attention(harness: Harness, app: FastRTCApp) -> None:
    harness.start(url=f"ws://127.0.0.1:{app.port}/not-fastrtc")
    await wait_until(lambda: harness.state() == "attention", 5, "attention")
    detail = harness.detail()
    assert "HTTP 403" in detail and "fastrtc.url" in detail and "/websocket/offer" in detail
    assert harness.status.led.value == "blink-4hz"


@pytest.mark.slow
async def test_app_restart_reconnects_quickly_with_a_new_id(harness: Harness) -> None:
    first = await asyncio.to_thread(FastRTCApp().__enter__)
    try:
        harness.start(url=first.url)
        await harness.wait_up()
        old_id = session_id(harness)
        port = first.port
    finally:
        await asyncio.to_thread(first.stop)
    await wait_until(lambda: not harness.up(), 5, "the link down")
    assert harness.state() in ("retry", "connecting")
    assert not harness.mixer.live()
    second = await asyncio.to_thread(FastRTCApp(port=port).__enter__)
    try:
        await harness.wait_up(within_s=5)
        assert session_id(harness) != old_id
        conns = await asyncio.to_thread(second.started)
        assert conns[0].websocket_id == session_id(harness)
        assert harness.metric("reconnects_total") >= 1
    finally:
        await asyncio.to_thread(second.stop)
