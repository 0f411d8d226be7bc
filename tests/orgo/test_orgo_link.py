"""The real OrgoLink against the real FakeOrgo on loopback, with a recording mixer."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from agent.sandbox.orgo import FakeOrgo
from agent.service import Heartbeat
from agent.status import LinkState
from tests.support import wait_until

from .conftest import Harness

pytestmark = pytest.mark.asyncio


def up(h: Harness) -> bool:
    return h.state() == "up"


@pytest.mark.parametrize("packing", ["frames", "ragged"])
async def test_audio_arrives_sample_exact_in_the_asked_format(
    harness: Harness, packing: str
) -> None:
    harness.fake.packing = packing  # type: ignore[assignment]
    harness.start()
    await harness.wait_samples(0, 24000 * 3 // 10)  # 300 ms
    src = harness.mixer.sources[0]
    assert (src.name, src.rate, src.channels) == ("orgo", 24000, 1)
    got, sent = src.pcm(), harness.fake.accepted()[0].sent_pcm()
    assert np.array_equal(got, sent[: len(got)])
    assert all(t is not None for t in src.arrivals)
    assert harness.metric("frames_received_total") >= 15
    assert harness.status.summary().startswith(f"orgo: up (computer {harness.fake.computer_id})")


async def test_started_in_48k_stereo_recreates_the_source_in_that_format(
    harness: Harness,
) -> None:
    harness.start()
    await harness.wait_samples(0, 2400)
    harness.fake.announce = (48000, 2)  # the computer now streams 48 kHz stereo
    await harness.fake.restart_computer()
    await harness.wait_samples(1, 48000 * 2 // 5)  # 200 ms of stereo
    assert harness.mixer.formats() == [("orgo", 24000, 1), ("orgo", 48000, 2)]
    assert harness.mixer.sources[0].removed and not harness.mixer.sources[1].removed
    session = harness.fake.accepted()[1]
    assert session.asked == (24000, 1) and session.format == (48000, 2)
    got = harness.mixer.sources[1].pcm()
    assert np.array_equal(got, session.sent_pcm()[: len(got)])
    # Left and right stay apart: the ramp differs on every interleaved sample.
    assert np.array_equal(got.reshape(-1, 2)[:, 0], session.sent_pcm()[: len(got)][0::2])


async def test_close_4401_refetches_the_password_once_and_reconnects(harness: Harness) -> None:
    harness.start()
    await harness.wait_samples(0, 2400)
    assert harness.fake.password_fetches == 1
    await harness.fake.expire_token()
    await harness.wait_samples(1, 2400)
    first, second = harness.fake.accepted()
    assert first.close_code == 4401
    assert second.token == harness.fake.password != first.token
    assert harness.fake.password_fetches == 2
    assert harness.metric("password_fetches_total") == 2
    assert harness.metric("reconnects_total") == 1
    assert up(harness)


async def test_stale_password_after_restart_costs_one_4401_and_one_refetch(
    harness: Harness,
) -> None:
    harness.start()
    await harness.wait_samples(0, 2400)
    await harness.fake.restart_computer(stale_fetches=1)  # the API lags behind the reboot
    await harness.wait_samples(1, 2400)
    refused = [s for s in harness.fake.sessions if not s.accepted]
    assert len(refused) == 1 and refused[0].close_code == 4401
    # one fetch to start, one after the restart (stale), one after the 4401
    assert harness.fake.password_fetches == 3
    assert up(harness)


async def test_stopped_computer_shows_offline_then_comes_back(harness: Harness) -> None:
    harness.start()
    await wait_until(lambda: up(harness), what="link up")
    await harness.fake.stop_computer()
    await wait_until(lambda: harness.detail() == "computer offline", what="offline")
    assert harness.state() == "retry"
    assert "orgo: computer offline, retry in" in harness.status.summary()
    assert not harness.mixer.live(), "no mixer source while the computer is off"
    await asyncio.sleep(0.3)  # several refused attempts
    attempts = len(harness.fake.sessions)
    await harness.fake.start_computer()
    await wait_until(lambda: up(harness), what="link up again")
    # Rejected tries never got a session. A password fetched just before the boot is
    # stale after it: that race costs one 4401 and one more fetch, nothing else.
    after = harness.fake.sessions[attempts:]
    assert after[-1].accepted and after[-1].token == harness.fake.password
    assert all(s.close_code == 4401 for s in after[:-1]) and len(after) <= 2
    assert harness.metric("reconnects_total") >= 2


async def test_refused_port_is_also_computer_offline(harness: Harness) -> None:
    harness.start()
    await wait_until(lambda: up(harness), what="link up")
    await harness.fake.stop_computer(refuse=True)
    await wait_until(lambda: harness.detail() == "computer offline", what="offline")
    await harness.fake.start_computer()
    await wait_until(lambda: up(harness), what="link up again")
    assert harness.metric("reconnects_total") >= 1


async def test_missing_pong_means_dead_link_and_a_reconnect(harness: Harness) -> None:
    harness.fake.answer_pings = False
    harness.start(ping_interval_s=0.1, pong_timeout_s=0.2)
    await wait_until(lambda: len(harness.fake.accepted()) >= 2, within_s=3, what="a reconnect")
    first = harness.fake.accepted()[0]
    assert '{"type":"ping"}' in first.received
    assert harness.metric("reconnects_total") >= 1
    harness.fake.answer_pings = True
    await wait_until(lambda: up(harness), what="link up")
    n = len(harness.fake.accepted())
    await asyncio.sleep(0.5)  # pongs flow now: five ping rounds, no reconnect
    assert len(harness.fake.accepted()) == n


async def test_bad_messages_are_survived_and_counted(harness: Harness) -> None:
    harness.fake.packing = "ragged"  # odd-sized binaries too
    harness.start()
    await harness.wait_samples(0, 2400)
    await harness.fake.inject_text("this is not json")
    await harness.fake.inject_text('{"type":"started","sample_rate":5,"channels":9}')
    await harness.fake.send_error("Failed to start audio capture")
    await harness.fake.inject_text('{"type":"hello"}')
    before = len(harness.mixer.sources[0].pcm())
    await harness.wait_samples(0, before + 4800)  # audio keeps coming, same connection
    assert len(harness.fake.sessions) == 1 and len(harness.mixer.sources) == 1
    got = harness.mixer.sources[0].pcm()
    assert np.array_equal(got, harness.fake.accepted()[0].sent_pcm()[: len(got)])
    assert harness.metric("malformed_total", reason="text") == 1
    assert harness.metric("malformed_total", reason="started") == 1
    assert harness.metric("malformed_total", reason="unaligned") >= 1
    assert harness.metric("server_errors_total") == 1
    assert harness.status.last_error == "orgo: Failed to start audio capture"
    assert up(harness)


async def test_cancel_sends_stop_and_closes_within_a_second(harness: Harness) -> None:
    harness.start()
    await harness.wait_samples(0, 2400)
    took = await harness.stop()
    assert took < 1.0
    session = harness.fake.accepted()[0]
    await wait_until(lambda: session.close_code is not None, what="server saw the close")
    assert session.got_stop and session.received[-1] == '{"type":"stop"}'
    assert session.close_code == 1000
    assert not harness.mixer.live()
    assert harness.status.links["orgo"].state is LinkState.STOPPED


async def test_desktop_api_token_is_preferred(harness: Harness) -> None:
    harness.fake.desktop_token = True
    harness.start()
    await wait_until(lambda: up(harness), what="link up")
    assert harness.fake.accepted()[0].token == harness.fake.desktop_api_token


@pytest.mark.parametrize(
    ("fault", "http_status"),
    [("wrong_key", 401), ("forbidden", 403), ("unknown_computer", 404)],
)
async def test_password_refusal_needs_attention_and_retries_slowly(
    harness: Harness, fault: str, http_status: int
) -> None:
    if fault == "wrong_key":
        harness.fake.api_key = "sk_orgo_some_other_key"
    elif fault == "forbidden":
        harness.fake.forbidden = True
    else:
        harness.fake.computer_id = "someone-elses-computer"
    harness.start()
    await wait_until(lambda: harness.state() == "attention", what="attention")
    part = harness.status.links["orgo"]
    assert harness.cfg.computer_id in part.detail and f"HTTP {http_status}" in part.detail
    assert harness.fake.api_key not in part.detail
    assert part.retry_at is not None and part.retry_at - time.monotonic() > 0.15  # slow_s 0.3
    assert harness.status.led.value == "blink-4hz"
    assert not harness.fake.sessions, "never connects without a password"


async def test_heartbeat_beats_while_streaming_and_pauses_in_backoff(harness: Harness) -> None:
    harness.start()
    await harness.wait_samples(0, 2400)
    assert not harness.heartbeat.paused
    assert time.monotonic() - harness.heartbeat.last < 0.1
    await harness.fake.stop_computer()
    await wait_until(lambda: harness.heartbeat.paused, what="paused heartbeat")


async def test_no_secret_in_any_log_record_status_or_error(
    harness: Harness, debug_logs: pytest.LogCaptureFixture
) -> None:
    fake: FakeOrgo = harness.fake
    harness.start()
    await harness.wait_samples(0, 2400)
    await fake.expire_token()  # 4401
    await harness.wait_samples(1, 2400)
    await fake.restart_computer()
    await harness.wait_samples(2, 2400)
    await fake.inject_text("garbage")
    real_key = fake.api_key
    fake.api_key = "sk_orgo_rotated_elsewhere"  # 401 from now on
    await fake.stop_computer()
    await wait_until(lambda: harness.state() == "attention", what="attention")
    await harness.stop()
    secrets = {real_key, *(s.token for s in fake.sessions if s.token)}
    assert len(secrets) >= 4
    texts = [r.getMessage() for r in debug_logs.records]
    texts += [r.exc_text or "" for r in debug_logs.records]
    texts += [harness.status.summary(), str(harness.status.to_json())]
    assert any("token=***" in t for t in texts), "the request line was logged, scrubbed"
    for secret in secrets:
        leaks = [t for t in texts if secret in t]
        assert not leaks, f"a secret leaked: {leaks[:3]}"


async def test_a_quiet_healthy_link_keeps_its_heartbeat(harness: Harness) -> None:
    harness.fake.silent = True  # nothing plays on the computer: no audio messages at all
    harness.heartbeat = Heartbeat("orgo", 1.2, time.monotonic)
    harness.start(ping_interval_s=30.0)
    await wait_until(lambda: len(harness.fake.accepted()) == 1, what="connected")
    await asyncio.sleep(1.6)
    assert not harness.heartbeat.stalled(time.monotonic()), "the watchdog would fire"
    assert len(harness.fake.sessions) == 1
