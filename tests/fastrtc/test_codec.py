"""The FastRTC codec (agent.proto.fastrtc) on messages captured from a real fastrtc
0.0.34 server (``captured.jsonl``, made by ``capture_frames.py``), and on what fastrtc's
server does with our messages (it decodes mu-law with ``audioop.ulaw2lin``).
No server and no fastrtc needed."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ProtocolError
from agent.proto.fastrtc import (
    Log,
    MalformedMessage,
    Media,
    Notice,
    Pong,
    Refused,
    SendInput,
    Stopword,
    Unknown,
    decode,
    encode_media,
    encode_ping,
    encode_start,
    encode_stop,
    new_websocket_id,
)

from .conftest import peak_hz, rms_dbfs, tone

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    # what fastrtc's server uses for mu-law (stdlib up to 3.12, then the audioop-lts package)
    audioop = pytest.importorskip("audioop")

CAPTURED = [
    json.loads(line)
    for line in (Path(__file__).with_name("captured.jsonl")).read_text().splitlines()
]


def captured(what: str) -> list[str]:
    return [row["text"] for row in CAPTURED if row["what"] == what]


def test_captured_server_messages_decode_to_their_events() -> None:
    assert decode(captured("pong")[0]) == Pong()
    assert [decode(t) for t in captured("log")] == [
        Log("started_talking"),
        Log("pause_detected"),
        Log("response_starting"),
    ]
    assert decode(captured("send_input")[0]) == SendInput([])
    assert decode(captured("stopword")[0]) == Stopword()
    refusal = decode(captured("refusal")[0])
    assert refusal == Refused("concurrency_limit_reached", 1) and isinstance(refusal, Refused)
    assert refusal.busy


def test_captured_echo_is_the_sent_tone_at_24_khz() -> None:
    # 200 ms of 440 Hz at -12 dBFS went up at 48 kHz; fastrtc sent it back at 24 kHz.
    events = [decode(t) for t in captured("media")]
    assert all(isinstance(e, Media) for e in events)
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, Media)])
    assert [len(e.pcm) for e in events if isinstance(e, Media)] == [480] * 10  # 20 ms each
    assert pcm.dtype == np.int16 and len(pcm) == 4800
    assert peak_hz(pcm, 24000) == pytest.approx(440.0, abs=3.0)
    assert rms_dbfs(pcm) == pytest.approx(-15.0, abs=1.0)  # a sine's RMS is 3 dB below peak


def test_media_decoding_matches_fastrtcs_own_mulaw() -> None:
    for text in captured("media"):
        payload = base64.b64decode(json.loads(text)["media"]["payload"])
        ours = decode(text)
        assert isinstance(ours, Media)
        theirs = np.frombuffer(audioop.ulaw2lin(payload, 2), dtype=np.int16)
        np.testing.assert_array_equal(ours.pcm, theirs)


def test_our_media_is_what_fastrtcs_server_decodes() -> None:
    pcm = tone(440.0, 0.02, rate=48000)
    msg = json.loads(encode_media(pcm))
    assert set(msg) == {"event", "media"} and msg["event"] == "media"
    payload = base64.b64decode(msg["media"]["payload"], validate=True)
    assert len(payload) == 960  # one byte per sample: 20 ms at 48 kHz
    heard = np.frombuffer(audioop.ulaw2lin(payload, 2), dtype=np.int16)  # as fastrtc does
    step = np.maximum(np.abs(pcm.astype(np.int32)) // 16, 8)  # mu-law step <= 1/16 of |x|
    assert np.all(np.abs(heard.astype(np.int32) - pcm) <= step)


def test_client_messages() -> None:
    assert json.loads(encode_start("abc")) == {"event": "start", "websocket_id": "abc"}
    assert json.loads(encode_ping()) == {"event": "ping"}
    assert json.loads(encode_stop()) == {"event": "stop"}
    ids = {new_websocket_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 for i in ids)
    for bad in ("", "x" * 129):
        with pytest.raises(ProtocolError):
            encode_start(bad)
    with pytest.raises(ProtocolError):
        encode_media(np.zeros((2, 80), np.int16))
    with pytest.raises(ProtocolError):
        encode_media(np.zeros(160, np.float32))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\x00\x01", "binary"),
        ("not json", "not_json"),
        ("[1, 2]", "bad_type"),
        ('{"hello": 1}', "bad_type"),
        ('{"event": "media"}', "bad_type"),
        ('{"event": "media", "media": {"payload": 7}}', "bad_type"),
        ('{"event": "media", "media": {"payload": "@@@"}}', "bad_base64"),
        ('{"type": "log", "data": {"x": 1}}', "bad_type"),
        ('{"status": "failed", "meta": []}', "bad_type"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(message: str | bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode(message)
    assert info.value.reason == reason


def test_tolerated_and_unknown_messages() -> None:
    empty = decode('{"event": "media", "media": {"payload": ""}}')
    assert isinstance(empty, Media) and empty.pcm.size == 0
    assert decode('{"type": "fetch_output", "data": []}') == Unknown("type:fetch_output")
    assert decode('{"event": "clear"}') == Unknown("event:clear")
    assert decode('{"status": "ok"}') == Unknown("status:ok")
    assert decode('{"status": "failed"}') == Refused("", None)
    assert decode('{"status": "failed", "meta": {"error": 3, "limit": true}}') == Refused("3")
    assert decode('{"type": "error", "message": "boom"}') == Notice("error", "boom")
    assert decode('{"type": "warning", "data": "careful"}') == Notice("warning", "careful")
    assert decode('{"type": "log"}') == Log("")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["event", "type", "status", "media", "meta", "data", "message"])


EVENTS = (Media, Pong, SendInput, Log, Stopword, Notice, Refused, Unknown)


def decoded_or_refused(message: str | bytes) -> object:
    """The event ``decode`` made of ``message``, or the MalformedMessage it raised; any
    other exception propagates (and fails the test)."""
    try:
        return decode(message)
    except MalformedMessage as e:
        return e


def clean(outcome: object) -> bool:
    """What an app's server sends is one of the documented events, or MalformedMessage
    with a reason (which the link counts and logs)."""
    if isinstance(outcome, MalformedMessage):
        return bool(outcome.reason)
    return isinstance(outcome, EVENTS)


@given(st.dictionaries(keys, json_values, max_size=4) | json_values)
def test_any_json_decodes_or_is_refused_cleanly(value: object) -> None:
    outcome = decoded_or_refused(json.dumps(value))
    assert clean(outcome), outcome


@given(st.text() | st.binary())
def test_any_text_decodes_or_is_refused_cleanly(message: str | bytes) -> None:
    outcome = decoded_or_refused(message)
    assert clean(outcome), outcome
