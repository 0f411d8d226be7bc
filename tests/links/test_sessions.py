"""The per-vendor session state machines in agent.proto (no I/O, no event loop): what a
connection sends first, when it is up, when it pings, when it is dead."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.proto import fastrtc, orgo
from agent.proto.keepalive import Keepalive, NoPong, wait_s
from agent.proto.videosdk import RoomAudio, encode_message
from agent.proto.videosdk_session import RoomSession, valid_topics


def events(texts: list[str]) -> list[str]:
    return [json.loads(t).get("event") or json.loads(t).get("type") for t in texts]


def test_keepalive_pings_on_schedule_and_gives_up_without_a_pong() -> None:
    ka = Keepalive(interval_s=30.0, timeout_s=10.0, now=0.0)
    assert ka.next_deadline() == 30.0 and not ka.poll(29.9)
    assert ka.poll(30.0)  # ping now; its pong is due at 40
    assert ka.next_deadline() == 40.0
    ka.pong()
    assert not ka.poll(45.0) and ka.poll(60.0)
    with pytest.raises(NoPong):
        ka.poll(70.0)
    assert wait_s(100.0, 0.0) == 1.0 and wait_s(0.2, 0.0) == 0.2  # the heartbeat's bound


def test_orgo_session_pings_and_a_pong_settles_it() -> None:
    s = orgo.OrgoSession(24000, 1, ping_interval_s=5.0, pong_timeout_s=2.0, now=0.0)
    assert s.outgoing(1.0) == []
    assert events(s.outgoing(5.0)) == ["ping"]
    started = s.receive('{"type":"started","sample_rate":48000,"channels":2}', 5.5)
    assert started == [orgo.Started(48000, 2)] and s.stream.sample_rate == 48000
    s.receive('{"type":"pong"}', 6.0)
    assert s.outgoing(6.9) == []  # no NoPong: answered
    assert events(s.outgoing(10.0)) == ["ping"]
    with pytest.raises(NoPong):
        s.outgoing(12.0)


def test_fastrtc_session_starts_then_pings_and_is_accepted_once() -> None:
    s = fastrtc.FastRTCSession("dev-1", ping_interval_s=20.0, pong_timeout_s=10.0, now=0.0)
    first = [json.loads(t) for t in s.opening()]
    assert first == [{"event": "start", "websocket_id": "dev-1"}, {"event": "ping"}]
    assert not s.accepted
    s.receive('{"type":"log","data":"started_talking"}', 1.0)
    assert not s.accepted  # a note is not an acceptance
    s.receive('{"event":"pong"}', 1.1)
    assert s.accepted and s.just_accepted
    s.receive('{"event":"pong"}', 1.2)
    assert s.accepted and not s.just_accepted  # once
    assert events(s.outgoing(20.0)) == ["ping"]
    with pytest.raises(NoPong):  # ... unanswered
        s.outgoing(30.0)


def test_fastrtc_media_before_the_pong_is_an_acceptance_too() -> None:
    s = fastrtc.FastRTCSession("dev-2", ping_interval_s=20.0, pong_timeout_s=10.0, now=0.0)
    s.receive(fastrtc.encode_media(np.zeros(80, np.int16)), 0.5)
    assert s.just_accepted
    with pytest.raises(NoPong):  # the ping sent with `start` still wants its pong
        s.outgoing(10.0)


def test_room_session_opens_in_order_and_keeps_messages_until_sent() -> None:
    topics, refused = valid_topics(["chat", "cmd", "chat", "bad topic\n" * 20])
    assert topics == ("chat", "cmd") and len(refused) == 1
    room = RoomSession(topics, outbox_size=2, status_interval_s=0.25, silence_s=65.0,
                       publishes_status=True)  # fmt: skip
    assert room.queue(encode_message("chat", "one")) and room.queue(encode_message("chat", "2"))
    assert not room.queue(encode_message("chat", "three"))  # bounded while down
    assert events(room.opening(0.0)) == ["start", "subscribe", "subscribe"]
    text = room.next_message()
    assert text is not None and room.next_message() == text  # kept until sent
    room.sent()
    assert room.waiting == 1
    # status: coalesced to one per interval
    assert room.status_due(0.0, lambda: "s1") == "s1"
    room.status_changed()
    room.status_changed()
    assert room.status_wait(0.1) == pytest.approx(0.15)
    assert room.status_due(0.1, lambda: "s2") is None
    assert room.status_due(0.3, lambda: "s3") == "s3"
    assert room.status_wait(0.3) is None
    # liveness: any byte counts, silence drops
    assert isinstance(room.receive('{"event":"media","payload":""}', 10.0), RoomAudio)
    room.heard(60.0)
    assert room.silent(120.0) is None
    assert room.silent(126.0) == "server silent for 66 s"
    assert room.next_deadline(126.0) == 125.0
