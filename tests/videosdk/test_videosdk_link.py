"""The real VideoSDK link against the real loopback fake: what a user would notice."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.backoff import BackoffPolicy, Reconnector
from agent.config import VideoSDKConfig
from agent.pcm import UPLINK_SAMPLES
from agent.sandbox.videosdk import FakeVideoSDK
from agent.service import Heartbeat
from agent.status import LinkState
from tests.support import RecordedSource, RecordingMixer, wait_until

from .conftest import (
    API_KEY,
    ROOM,
    SECRET,
    TOKEN,
    Harness,
    assert_refs_single_use,
    write_creds,
)


def received_pcm(fake: FakeVideoSDK) -> np.ndarray:
    return np.frombuffer(b"".join(f.pcm for f in fake.frames), dtype="<i2")


# -- uplink and downlink audio ----------------------------------------------------------


async def test_uplink_frames_are_exact_pcm16_at_50_per_second(harness: Harness) -> None:
    harness.start()
    await harness.wait_up()
    assert harness.detail() == f"room {ROOM}"
    sent = await harness.feed(100)
    await harness.fake.wait_for(lambda: len(harness.fake.frames) >= 100, what="100 frames")

    frames = harness.fake.frames
    assert all(len(f.pcm) == 2 * UPLINK_SAMPLES == 320 for f in frames)
    np.testing.assert_array_equal(received_pcm(harness.fake), np.concatenate(sent))
    span = frames[-1].t - frames[0].t
    assert 45 <= (len(frames) - 1) / span <= 55, f"{len(frames)} frames in {span:.3f} s"
    assert harness.metric("frames_sent_total") == 100
    assert harness.fake.violations == []


async def test_room_audio_plays_through_one_mixer_source_per_connection(harness: Harness) -> None:
    harness.fake.echo = True
    harness.start()
    await harness.wait_up()
    sent = await harness.feed(10)
    mixer = harness.mixer
    assert isinstance(mixer, RecordingMixer)
    await wait_until(lambda: len(mixer.sources[0].pcm()) >= 10 * UPLINK_SAMPLES, what="room audio")
    assert [(s.name, s.rate, s.channels) for s in mixer.sources] == [("videosdk", 8000, 1)]
    np.testing.assert_array_equal(mixer.sources[0].pcm(), np.concatenate(sent))
    assert harness.metric("frames_received_total") == 10


async def test_with_the_real_mixer_room_audio_is_rendered(harness: Harness) -> None:
    from agent.audio.mixer import Mixer

    mixer = Mixer(8000, metrics=harness.metrics)
    harness.mixer = mixer
    harness.fake.echo = True
    harness.start()
    await harness.wait_up()
    sent = await harness.feed(25)
    await wait_until(lambda: harness.metric("frames_received_total") >= 25, what="room audio")
    assert mixer.source_names == ["videosdk"]
    rendered = np.concatenate([mixer.render() for _ in range(60)])
    assert np.abs(rendered).max() > 1000, "the speaker would hear the room"
    # what plays is a contiguous stretch of what the room sent (the echoed uplink), unaltered
    # (the jitter buffer may skip the start of a burst to keep latency down)
    played = rendered[int(np.flatnonzero(rendered)[0]) :][:UPLINK_SAMPLES]
    room = np.concatenate(sent)
    hits = [
        i
        for i in range(len(room) - len(played))
        if np.array_equal(room[i : i + len(played)], played)
    ]
    assert len(hits) == 1, "the speaker plays the room audio sample for sample"


# -- reconnects -------------------------------------------------------------------------


async def test_frames_spoken_before_the_first_call_are_not_counted_as_drops(
    harness: Harness,
) -> None:
    await harness.fake.stop_ws()  # the session is created, its socket cannot be reached yet
    harness.start()
    await harness.feed(10)
    await harness.fake.start_ws()
    await harness.wait_up()
    await harness.feed(10)
    await harness.fake.wait_for(lambda: len(harness.fake.started_sessions[0].frames) >= 10)
    # nothing was lost from a call: a healthy start shows no drops in the status
    assert harness.metric("frames_dropped_total") == 0


async def test_server_death_mid_stream_gives_a_new_session_and_resumed_media(
    harness: Harness,
) -> None:
    harness.start()
    await harness.wait_up()
    await harness.feed(10)
    await harness.fake.wait_for(lambda: len(harness.fake.frames) >= 10)

    await harness.fake.stop_ws()
    await harness.fake.wait_for(
        lambda: harness.state() in ("retry", "connecting"), what="link down"
    )
    await harness.feed(10)  # spoken into a dead link: dropped and counted, not queued
    await harness.fake.start_ws()
    await harness.wait_up(sessions=2)
    await harness.feed(10)
    await harness.fake.wait_for(lambda: len(harness.fake.started_sessions[1].frames) >= 10)

    first, second = harness.fake.started_sessions[:2]
    assert first.call_id != second.call_id and first.ref != second.ref
    assert len(first.frames) == 10
    assert harness.metric("frames_dropped_total", reason="link_down") >= 5
    assert harness.metric("reconnects_total") >= 1
    assert harness.metric("sessions_created_total") == len(harness.fake.sessions)
    mixer = harness.mixer
    assert isinstance(mixer, RecordingMixer)
    assert [s.removed for s in mixer.sources] == [True, False]  # one source per connection
    assert_refs_single_use(harness.fake)


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1008])
async def test_any_close_code_from_the_server_leads_to_a_new_session(
    harness: Harness, code: int
) -> None:
    harness.start()
    await harness.wait_up()
    await harness.fake.drop(code, "bye")
    await harness.wait_up(sessions=2)
    await harness.feed(3)
    await harness.fake.wait_for(lambda: len(harness.fake.started_sessions[1].frames) >= 3)
    assert_refs_single_use(harness.fake)


async def test_a_hung_server_is_detected_by_missed_pongs(harness: Harness) -> None:
    harness.start(ping_interval_s=0.2, ping_timeout_s=0.3)
    await harness.wait_up()
    harness.fake.freeze()
    t0 = time.monotonic()
    await harness.wait_up(sessions=2, within_s=5.0)
    assert time.monotonic() - t0 < 3.0
    assert_refs_single_use(harness.fake)


async def test_a_silent_server_is_dropped(harness: Harness) -> None:
    harness.fake.ping_interval_s = None  # new connections get no server pings
    await harness.fake.stop_ws(abrupt=False)
    await harness.fake.start_ws()
    harness.start(ping_interval_s=None, silence_s=0.5)
    await harness.wait_up()
    await harness.wait_up(sessions=2, within_s=4.0)
    dropped = harness.fake.started_sessions[0]
    assert dropped.client_close_code == 1011


async def test_a_quiet_healthy_call_keeps_its_heartbeat(harness: Harness) -> None:
    """No mic (no uplink frames) and a quiet room (no downlink messages): the call is
    healthy (pings answered), so its heartbeat must not stall. It did: the uplink pump's
    pause was undone by the join's beat, and nothing beat again, so the watchdog was
    withheld 30 s after the join and systemd restarted a device booted without its mic
    (VM tier, the mic appearing 30+ s after the join; same in either capture mode)."""
    harness.heartbeat = Heartbeat("videosdk", 2.5, time.monotonic)
    harness.start()
    await harness.wait_up()
    await asyncio.sleep(4.0)  # no harness.feed(): nothing on the uplink
    assert not harness.heartbeat.stalled(time.monotonic()), "the watchdog would be withheld"
    assert len(harness.fake.started_sessions) == 1


async def test_a_session_url_older_than_80_s_is_never_used(harness: Harness) -> None:
    offset = [0.0]

    def age_the_first_session(session: object) -> None:
        if len(harness.fake.sessions) == 1:
            offset[0] += 85.0  # the reply "took" 85 s to arrive

    harness.fake.on_session_created = age_the_first_session
    harness.start(clock=lambda: time.monotonic() + offset[0])
    await harness.wait_up()
    stale, used = harness.fake.sessions[:2]
    assert harness.fake.ref_presented[stale.ref] == 0
    assert harness.fake.ref_presented[used.ref] == 1
    assert harness.fake.started_sessions == [used]


async def test_a_slow_session_reply_is_abandoned_and_never_used(harness: Harness) -> None:
    harness.fake.rest_delay_s = 0.6
    harness.start(open_timeout_s=0.3)
    await harness.fake.wait_for(lambda: "timed out" in harness.detail(), what="a timeout")
    assert harness.state() == "retry"
    harness.fake.rest_delay_s = 0.0
    await harness.wait_up()
    slow = harness.fake.sessions[0]
    assert harness.fake.ref_presented[slow.ref] == 0  # its reply came too late to be trusted
    assert_refs_single_use(harness.fake)


async def test_backoff_starts_fast_and_grows_while_the_server_is_down(harness: Harness) -> None:
    policy = BackoffPolicy(initial_s=0.1, factor=2.0, cap_s=0.4, jitter=0.0, slow_s=5.0)
    harness.start(reconnector=Reconnector(policy))
    await harness.wait_up()
    await harness.fake.stop_ws()
    t0 = time.monotonic()
    await asyncio.sleep(1.5)
    attempts = [r for r in harness.fake.rest_requests if r.path.endswith("/sessions")]
    # 1 initial + attempts at ~0.1, 0.3, 0.7, 1.1, 1.5 s: no spinning, never a retry storm
    assert 3 <= len(attempts) - 1 <= 6
    part = harness.status.links["videosdk"]
    assert part.state in (LinkState.RETRY, LinkState.CONNECTING)
    assert "retry in" in harness.status.summary() or part.state is LinkState.CONNECTING
    await harness.fake.start_ws()
    await harness.wait_up(sessions=2)
    assert time.monotonic() - t0 < 3.0


# -- garbage from the server ------------------------------------------------------------


async def test_garbage_from_the_server_is_counted_and_survived(harness: Harness) -> None:
    harness.start()
    await harness.wait_up()
    fake = harness.fake
    for junk in [
        "not json",
        "[1,2,3]",
        '{"event":"media","payload":"@@@@"}',
        '{"event":"media","payload":"AAAA"}',
        '{"event":"message","topic":"CHAT","data":42}',
        b"\xff\xfe binary junk",
        '{"event":"recording-started"}',
        '{"event":"something-new","x":{}}',
    ]:
        await fake.send_raw(junk)
    await wait_until(lambda: harness.metric("unknown_events_total") == 2, what="unknown events")
    assert harness.metric("malformed_total", reason="not_json") == 1
    assert harness.metric("malformed_total", reason="bad_type") == 2
    assert harness.metric("malformed_total", reason="bad_base64") == 1
    assert harness.metric("malformed_total", reason="odd_length") == 1
    assert harness.metric("malformed_total", reason="not_utf8") == 1
    # still the same session, still streaming
    await harness.feed(5)
    await fake.wait_for(lambda: len(fake.frames) >= 5)
    assert harness.state() == "up" and len(fake.sessions) == 1


async def test_a_1_mb_frame_causes_a_counted_reconnect_not_a_crash(harness: Harness) -> None:
    harness.start()
    await harness.wait_up()
    await harness.fake.send_raw('{"event":"media","payload":"' + "A" * (1 << 20) + '"}')
    await harness.wait_up(sessions=2)
    assert harness.metric("malformed_total", reason="too_large") == 1
    assert harness.fake.started_sessions[0].client_close_code == 1009
    assert harness.task is not None and not harness.task.done()
    await harness.feed(3)
    await harness.fake.wait_for(lambda: len(harness.fake.started_sessions[1].frames) >= 3)


async def test_a_failing_mixer_is_survived_and_retried(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakyMixer(RecordingMixer):
        def add_source(self, name: str, rate: int, channels: int = 1) -> RecordedSource:
            if not self.sources and not getattr(self, "failed", False):
                self.failed = True
                raise RuntimeError("sound card vanished")
            return super().add_source(name, rate, channels)

    harness.mixer = FlakyMixer()
    harness.start()
    await harness.wait_up(sessions=2)
    assert any("unexpected error (RuntimeError)" in r.getMessage() for r in caplog.records)
    assert any("sound card vanished" in r.getMessage() for r in caplog.records)  # traceback kept
    assert_refs_single_use(harness.fake)


# -- credentials ------------------------------------------------------------------------


async def test_session_request_carries_the_device_and_a_raw_token(harness: Harness) -> None:
    harness.start(VideoSDKConfig(room_id=ROOM, region="us002"))
    await harness.wait_up()
    request = harness.fake.rest_requests[0]
    assert request.headers["authorization"] == TOKEN  # raw, no "Bearer"
    assert json.loads(request.body) == {
        "roomId": ROOM,
        "participant": {
            "id": "dev_12",
            "name": "Field Device 12",
            "metadata": {"deviceId": "dev_12"},
        },
        "region": "us002",
    }
    s = harness.fake.sessions[0]
    assert (s.participant_id, s.participant_name, s.metadata) == (
        "dev_12",
        "Field Device 12",
        {"deviceId": "dev_12"},
    )


async def test_refused_credentials_need_attention_and_retry_slowly(harness: Harness) -> None:
    harness.fake.accepted_tokens = {"some-other-token"}
    policy = BackoffPolicy(initial_s=0.05, slow_s=0.5, jitter=0.0)
    harness.start(reconnector=Reconnector(policy))
    await harness.wait_state("attention")
    assert "refused the credentials (HTTP 401)" in harness.detail()
    assert harness.status.led.value == "blink-4hz"
    await asyncio.sleep(1.2)
    assert 2 <= len(harness.fake.auth_failures) <= 4, "slow retry, never a spin"
    assert harness.fake.sessions == []
    harness.fake.accepted_tokens = {TOKEN}  # someone fixed the account
    await harness.wait_up(within_s=2.0)


async def test_missing_credentials_need_attention_without_a_request(
    fake: FakeVideoSDK, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    h = Harness(fake, write_creds(tmp_path / "empty"), http)
    h.start()
    try:
        await h.wait_state("attention")
        assert "videosdk-token" in h.detail() and "videosdk-api-key" in h.detail()
        assert fake.rest_requests == []
        assert "videosdk" in h.status.last_error
    finally:
        await h.stop()


async def test_a_minted_jwt_is_accepted(http: httpx.AsyncClient, tmp_path: Path) -> None:
    async with FakeVideoSDK(token=None, jwt_secret=SECRET, api_key=API_KEY) as fake:
        creds = write_creds(tmp_path / "c", videosdk_api_key=API_KEY, videosdk_secret=SECRET)
        h = Harness(fake, creds, http)
        h.start()
        try:
            await h.wait_up()
            assert fake.auth_failures == []
            sent = fake.rest_requests[0].headers["authorization"]
            assert sent.count(".") == 2 and not sent.startswith("Bearer")
        finally:
            await h.stop()


# -- stopping ---------------------------------------------------------------------------


async def test_cancellation_sends_stop_and_closes_1000_within_2_s(harness: Harness) -> None:
    harness.start()
    await harness.wait_up()
    await harness.feed(5)
    took = await harness.stop()
    assert took < 2.0
    fake = harness.fake
    await fake.wait_for(lambda: fake.sessions[0].ended_at is not None, what="session end")
    s = fake.sessions[0]
    assert s.stopped and s.event_names[-1] == "stop"
    assert s.client_close_code == 1000
    assert harness.state() == "stopped"


async def test_cancellation_while_the_server_is_hung_is_still_bounded(harness: Harness) -> None:
    harness.start()
    await harness.wait_up()
    harness.fake.freeze()
    assert await harness.stop() < 2.0


# -- messaging --------------------------------------------------------------------------


async def test_commands_reach_the_handler_and_chat_is_logged(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.links.videosdk")
    harness.start()
    await harness.wait_up()
    fake = harness.fake
    await fake.wait_for(lambda: fake.active()[0].subscriptions == {"CHAT", "DEVICE_CMD"})
    await fake.send_message("DEVICE_CMD", {"cmd": "volume", "value": 0.5}, sender_name="Ops")
    await fake.send_message("CHAT", "hello device", sender_name="Alice")
    await fake.send_message("OTHER", "not subscribed")
    await wait_until(lambda: harness.commands, what="a command")
    assert [json.loads(c.message) for c in harness.commands] == [{"cmd": "volume", "value": 0.5}]
    await wait_until(lambda: any("hello device" in r.getMessage() for r in caplog.records))
    chat = next(r for r in caplog.records if "hello device" in r.getMessage())
    assert "Alice" in chat.getMessage()
    assert (chat.LINK, chat.TOPIC, chat.ROOM_ID) == ("videosdk", "CHAT", ROOM)  # type: ignore[attr-defined]
    assert not any("not subscribed" in r.getMessage() for r in caplog.records)


async def test_publish_sends_and_refuses_locally(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    link = harness.start(VideoSDKConfig(room_id=ROOM, status_topic=""))
    assert link.publish("CHAT", "queued before the join")
    await harness.wait_up()
    assert link.publish("CHAT", {"hello": "room"})
    caplog.clear()
    assert not link.publish("CHAT", "x" * 9000)
    assert not link.publish("", "empty topic")
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 2
    fake = harness.fake
    await fake.wait_for(lambda: len(fake.published) >= 2)
    assert [(p.topic, p.data) for p in fake.published] == [
        ("CHAT", "queued before the join"),
        ("CHAT", {"hello": "room"}),
    ]
    assert fake.violations == []


async def test_status_is_published_on_change_and_coalesced(harness: Harness) -> None:
    harness.start()
    await harness.wait_up()
    fake = harness.fake

    def statuses() -> list[dict[str, object]]:
        return [p.data for p in fake.published if p.topic == "DEVICE_STATUS"]

    await fake.wait_for(lambda: statuses(), what="a status message")
    assert statuses()[-1]["links"] == {"videosdk": {"state": "up", "detail": f"room {ROOM}"}}
    before = len(statuses())
    t0 = time.monotonic()
    for i in range(20):  # a burst of significant changes
        harness.status.set_volume(i / 20, muted=False)
        await asyncio.sleep(0.01)
    await fake.wait_for(lambda: statuses()[-1]["volume"] == 0.95, what="the last volume")
    burst = len(statuses()) - before
    assert 1 <= burst <= 2 + (time.monotonic() - t0) / 0.25


# -- secrets ----------------------------------------------------------------------------


async def test_no_token_jwt_or_ref_in_any_log_record(
    http: httpx.AsyncClient, tmp_path: Path, debug_logs: pytest.LogCaptureFixture
) -> None:
    async with FakeVideoSDK(token=None, jwt_secret=SECRET, api_key=API_KEY) as fake:
        creds = write_creds(tmp_path / "c", videosdk_api_key=API_KEY, videosdk_secret=SECRET)
        h = Harness(fake, creds, http)
        h.start()
        try:
            await h.wait_up()
            await h.feed(3)
            await fake.send_raw("garbage")
            await fake.stop_ws()
            await fake.start_ws()
            await h.wait_up(sessions=2)
            fake.jwt_secret = "rotated-" + SECRET  # now refused: 401 path, logged
            await fake.drop(1011)
            await h.wait_state("attention")
        finally:
            await h.stop()
        secrets = {API_KEY, SECRET} | {s.ref for s in fake.sessions}
        secrets |= {r.headers["authorization"] for r in fake.rest_requests}
    ours = [r for r in debug_logs.records if not r.name.startswith("agent.sandbox")]
    assert any(r.name == "agent.links.videosdk.wire" for r in ours), (
        "wire debug lines were captured"
    )
    assert any("ref=***" in r.getMessage() for r in ours)
    assert any(getattr(r, "CALL_ID", None) for r in ours)
    texts = [r.getMessage() + (debug_logs.handler.format(r) if r.exc_info else "") for r in ours]
    texts.append(h.status.summary() + json.dumps(h.status.to_json()))
    for secret in secrets:
        for text in texts:
            assert secret not in text
