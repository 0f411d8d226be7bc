"""The sans-I/O VideoSDK codec: exact wire shapes, round trips, every malformed class."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from agent.errors import MessageTooLarge, ProtocolError
from agent.links.videosdk_auth import mint_jwt
from agent.proto import videosdk as vp

PCM = bytes(range(256)) + bytes(64)  # 320 bytes: one 20 ms frame


def test_control_frames_have_the_documented_shapes() -> None:
    assert json.loads(vp.encode_start()) == {"event": "start"}
    assert json.loads(vp.encode_stop()) == {"event": "stop"}
    assert json.loads(vp.encode_subscribe("CHAT")) == {"event": "subscribe", "topic": "CHAT"}
    assert json.loads(vp.encode_unsubscribe("CHAT")) == {"event": "unsubscribe", "topic": "CHAT"}


def test_media_frame_is_base64_pcm16_and_round_trips_as_room_audio() -> None:
    text = vp.encode_media(PCM)
    obj = json.loads(text)
    assert obj["event"] == "media"
    assert len(obj["payload"]) == 428  # "roughly 428 base64 characters" for 320 bytes
    assert base64.b64decode(obj["payload"]) == PCM
    # the server's room audio has the same shape: decoding our own frame gives the bytes back
    assert vp.decode(text) == vp.RoomAudio(PCM)


def test_odd_length_media_is_refused_before_sending() -> None:
    with pytest.raises(ProtocolError):
        vp.encode_media(b"\x00\x01\x02")


def test_message_frames_carry_strings_or_json_values() -> None:
    assert json.loads(vp.encode_message("CHAT", "Hello everyone")) == {
        "event": "message",
        "topic": "CHAT",
        "data": "Hello everyone",
    }
    sent = json.loads(vp.encode_message("DEVICE_STATUS", {"volume": 0.5, "muted": False}))
    assert sent["data"] == {"volume": 0.5, "muted": False}


def test_topic_must_be_1_to_128_characters() -> None:
    assert json.loads(vp.encode_subscribe("T" * 128))["topic"] == "T" * 128
    for bad in ("", "T" * 129):
        with pytest.raises(ProtocolError):
            vp.encode_subscribe(bad)
        with pytest.raises(ProtocolError):
            vp.encode_message(bad, "x")


def test_message_payload_limit_is_8_kb_of_utf8() -> None:
    vp.encode_message("CHAT", "a" * 8192)
    with pytest.raises(MessageTooLarge):
        vp.encode_message("CHAT", "a" * 8193)
    # bytes, not characters: 2731 three-byte characters are 8193 bytes
    with pytest.raises(MessageTooLarge):
        vp.encode_message("CHAT", "€" * 2731)
    with pytest.raises(MessageTooLarge):
        vp.encode_message("CHAT", {"blob": "x" * 8200})
    with pytest.raises(ProtocolError):
        vp.encode_message("CHAT", {"nan": float("nan")})


def test_topic_message_decodes_the_documented_shape() -> None:
    text = json.dumps(
        {
            "event": "message",
            "topic": "CHAT",
            "data": {
                "message": "Hello everyone",
                "senderId": "participant-uuid",
                "senderName": "Alice",
                "timestamp": "2026-06-27T14:41:00.000Z",
                "id": "msg-uuid",
            },
        }
    )
    assert vp.decode(text) == vp.TopicMessage(
        topic="CHAT",
        message="Hello everyone",
        sender_id="participant-uuid",
        sender_name="Alice",
        timestamp="2026-06-27T14:41:00.000Z",
        id="msg-uuid",
        raw=text,
    )


def test_topic_message_is_tolerant_where_the_docs_are_vague() -> None:
    bare = vp.decode('{"event":"message","topic":"CHAT","data":"hi"}')
    assert isinstance(bare, vp.TopicMessage) and bare.message == "hi" and bare.sender_name == ""
    jsonish = vp.decode('{"event":"message","topic":"CMD","data":{"message":{"cmd":"mute"}}}')
    assert isinstance(jsonish, vp.TopicMessage)
    assert json.loads(jsonish.message) == {"cmd": "mute"}


def test_room_events_decode() -> None:
    assert vp.decode(
        '{"event":"participant-joined","participant":{"id":"p1","name":"Bob","metadata":{}}}'
    ) == vp.ParticipantJoined("p1", "Bob")
    assert vp.decode(
        '{"event":"participant-left","participant":{"id":"p1"}}'
    ) == vp.ParticipantLeft("p1", "")
    assert vp.decode('{"event":"meeting-joined","roomId":"r","sessionId":"s"}') == vp.MeetingJoined(
        "r", "s"
    )
    assert vp.decode('{"event":"meeting-left","message":"bye"}') == vp.MeetingLeft("bye")
    assert vp.decode('{"event":"recording-started","x":1}') == vp.Unknown("recording-started")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json at all", "not_json"),
        ("{", "not_json"),
        ("[1, 2]", "bad_type"),
        ('"media"', "bad_type"),
        ('{"payload": "AAAA"}', "bad_type"),
        ('{"event": 7}', "bad_type"),
        ('{"event":"media","payload":12}', "bad_type"),
        ('{"event":"media"}', "bad_type"),
        ('{"event":"media","payload":"@@@not-base64@@@"}', "bad_base64"),
        ('{"event":"media","payload":"AAA"}', "bad_base64"),
        ('{"event":"media","payload":"AAAA"}', "odd_length"),  # 3 bytes
        ('{"event":"message","data":{"message":"x"}}', "bad_type"),
        ('{"event":"message","topic":"","data":{"message":"x"}}', "bad_type"),
        ('{"event":"message","topic":"CHAT","data":42}', "bad_type"),
        ('{"event":"message","topic":"CHAT","data":{"message":"x","senderName":5}}', "bad_type"),
        ('{"event":"participant-joined","participant":"bob"}', "bad_type"),
        ('{"event":"meeting-joined","roomId":["r"]}', "bad_type"),
        (b"\xff\xfe\x00", "not_utf8"),
    ],
)
def test_malformed_frames_raise_protocol_errors_with_a_reason(
    frame: str | bytes, reason: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        vp.decode(frame)
    assert isinstance(info.value, vp.MalformedMessage)
    assert info.value.reason == reason


def test_binary_utf8_json_is_accepted() -> None:
    assert vp.decode(b'{"event":"meeting-left","message":"x"}') == vp.MeetingLeft("x")


def test_session_request_body() -> None:
    body = vp.session_request(
        "abcd-efgh-ijkl",
        participant_id="dev_12",
        participant_name="Field Device 12",
        device_id="dev_12",
    )
    assert body == {
        "roomId": "abcd-efgh-ijkl",
        "participant": {
            "id": "dev_12",
            "name": "Field Device 12",
            "metadata": {"deviceId": "dev_12"},
        },
    }
    with_region = vp.session_request("r", participant_id="dev_12", region="us002")
    assert with_region["region"] == "us002"
    assert with_region["participant"]["name"] == "dev_12"  # name defaults to the id
    with pytest.raises(ProtocolError):
        vp.session_request("", participant_id="dev_12")


def test_session_reply_parses_and_ages() -> None:
    reply = {
        "message": "Ingest session created",
        "data": {
            "wsUrl": "wss://ingest.videosdk.live/videosdk?ref=vs_k9d8j2m4x7p1w5v3r6u0",
            "callId": "550e8400-e29b-41d4-a716-446655440000",
            "expiresIn": 90,
        },
    }
    s = vp.parse_session_response(reply, now=1000.0)
    assert s.ws_url.endswith("ref=vs_k9d8j2m4x7p1w5v3r6u0")
    assert s.call_id == "550e8400-e29b-41d4-a716-446655440000"
    assert s.fresh(1079.0) and not s.fresh(1080.0)  # never older than 80 s
    short = vp.parse_session_response({"data": {**reply["data"], "expiresIn": 30}}, now=0.0)
    assert short.fresh(19.0) and not short.fresh(20.0)  # 10 s margin on a shorter expiry


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"message": "x"},
        {"data": {"callId": "c", "expiresIn": 90}},
        {"data": {"wsUrl": "https://not-a-websocket", "callId": "c"}},
        {"data": {"wsUrl": "wss://h/v?ref=1", "callId": "c", "expiresIn": "soon"}},
        {"data": {"wsUrl": "wss://h/v?ref=1", "callId": "c", "expiresIn": 0}},
    ],
)
def test_bad_session_replies_are_protocol_errors(body: object) -> None:
    with pytest.raises(ProtocolError):
        vp.parse_session_response(body, now=0.0)


def test_ref_is_redacted_from_urls_and_text() -> None:
    url = "wss://ingest.videosdk.live/videosdk?ref=vs_secret123&x=1"
    assert vp.redact_url(url) == "wss://ingest.videosdk.live/videosdk?ref=***&x=1"
    assert "vs_secret123" not in vp.redact_url(f"> GET /videosdk?ref=vs_secret123 HTTP/1.1 {url}")


def test_jwt_claims_and_minting_follow_the_docs() -> None:
    claims = vp.jwt_claims("KEY", now=1_700_000_000, ttl_s=300)
    assert claims["apikey"] == "KEY"
    assert claims["permissions"] == ["allow_join"]
    assert claims["version"] == 2
    assert claims["roles"] == ["crawler"]
    assert claims["exp"] == 1_700_000_300
    token = mint_jwt("KEY", "s" * 32, now=1_700_000_000, ttl_s=300)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    decoded = jwt.decode(token, "s" * 32, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded == claims
