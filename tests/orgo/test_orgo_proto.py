"""The Orgo wire format, driven with plain bytes and strings (no I/O)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ProtocolError
from agent.proto.orgo import (
    Audio,
    OrgoStream,
    Pong,
    ServerError,
    Started,
    Unknown,
    audio_url,
    encode_ping,
    encode_stop,
    parse_password,
    redact_url,
)
from agent.sandbox.orgo import ramp


def feed(stream: OrgoStream, messages: list[str | bytes]) -> np.ndarray:
    out = []
    for m in messages:
        for event in stream.receive(m):
            if isinstance(event, Audio):
                assert len(event.pcm) % stream.channels == 0
                out.append(event.pcm)
    return np.concatenate(out) if out else np.zeros(0, np.int16)


def cut(data: bytes, sizes: list[int]) -> list[str | bytes]:
    pieces: list[str | bytes] = []
    i = 0
    for n in sizes:
        if i >= len(data):
            break
        pieces.append(data[i : i + n])
        i += n
    if i < len(data):
        pieces.append(data[i:])
    return pieces


@settings(max_examples=60, deadline=None)
@given(
    channels=st.sampled_from([1, 2]),
    rate=st.sampled_from([24000, 48000]),
    sizes=st.lists(st.integers(1, 6000), min_size=1, max_size=40),
)
def test_ragged_binaries_reassemble_sample_exact(
    channels: int, rate: int, sizes: list[int]
) -> None:
    sent = ramp()(0, rate // 5, rate, channels)  # 200 ms, every value distinct
    stream = OrgoStream(rate, channels)
    got = feed(stream, [json.dumps({"type": "started", "sample_rate": rate, "channels": channels})])
    got = feed(stream, cut(sent.astype("<i2").tobytes(), sizes))
    assert np.array_equal(got, sent)
    assert stream.pending_bytes == 0
    assert stream.frames_received == 10


def test_multi_frame_messages_count_each_20ms_frame() -> None:
    stream = OrgoStream(24000, 1)
    one = ramp()(0, 480, 24000, 1).tobytes()  # 960 bytes = one frame
    feed(stream, [one * 3, one, one * 2])
    assert stream.frames_received == 6


def test_audio_before_started_uses_the_asked_format() -> None:
    stream = OrgoStream(48000, 2)
    events = stream.receive(b"\x01\x00\x02\x00\x03\x00")  # 1.5 stereo sample frames
    assert len(events) == 1 and isinstance(events[0], Audio)
    assert events[0].pcm.tolist() == [1, 2]
    assert stream.pending_bytes == 2


def test_started_switches_format_and_drops_an_incomplete_sample() -> None:
    stream = OrgoStream(24000, 1)
    stream.receive(b"\x01")
    events = stream.receive('{"type":"started","sample_rate":48000,"channels":2}')
    assert events == [Started(48000, 2)]
    assert (stream.sample_rate, stream.channels, stream.frame_bytes) == (48000, 2, 3840)
    assert stream.dropped_bytes == 1 and stream.pending_bytes == 0
    assert feed(stream, [b"\x05\x00\x06\x00"]).tolist() == [5, 6]


@pytest.mark.parametrize(
    "message",
    [
        {"type": "started", "sample_rate": 7999, "channels": 1},
        {"type": "started", "sample_rate": 192001, "channels": 1},
        {"type": "started", "sample_rate": 48000, "channels": 0},
        {"type": "started", "sample_rate": 48000, "channels": 6},
        {"type": "started", "sample_rate": "48000", "channels": 1},
        {"type": "started", "sample_rate": True, "channels": 1},
        {"type": "started", "channels": 1},
    ],
)
def test_absurd_started_is_refused_and_the_format_kept(message: dict[str, object]) -> None:
    stream = OrgoStream(24000, 1)
    with pytest.raises(ProtocolError):
        stream.receive(json.dumps(message))
    assert (stream.sample_rate, stream.channels) == (24000, 1)


@pytest.mark.parametrize(
    "text", ["garbage", "{", "[1, 2]", '"pong"', '{"kind":"pong"}', '{"type": 5}', ""]
)
def test_text_garbage_raises_protocol_error(text: str) -> None:
    stream = OrgoStream(24000, 1)
    with pytest.raises(ProtocolError):
        stream.receive(text)
    assert feed(stream, [b"\x07\x00"]).tolist() == [7]  # the stream still works


def test_control_messages() -> None:
    stream = OrgoStream(24000, 1)
    assert stream.receive('{"type":"pong"}') == [Pong()]
    assert stream.receive('{"type":"error","message":"Failed to start audio capture"}') == [
        ServerError("Failed to start audio capture")
    ]
    assert stream.receive('{"type":"volume","level":3}') == [Unknown("volume")]


def test_client_messages_are_the_documented_json() -> None:
    assert json.loads(encode_ping()) == {"type": "ping"}
    assert json.loads(encode_stop()) == {"type": "stop"}


def test_password_prefers_desktop_api_token() -> None:
    assert parse_password({"password": "p1", "desktop_api_token": "d1"}) == "d1"
    assert parse_password({"password": "p1", "desktop_api_token": ""}) == "p1"
    assert parse_password({"password": "p1"}) == "p1"


@pytest.mark.parametrize("body", [{}, {"password": None}, {"password": 5}, [], "p1", None])
def test_password_response_without_a_token_raises(body: object) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_password(body)
    assert "p1" not in str(info.value)


def test_url_carries_an_encoded_token_and_the_shown_url_does_not() -> None:
    token = "a&b=c d/é"
    url = audio_url(
        "wss://{computer_id}.orgo.dev/audio", "abc", token=token, sample_rate=48000, channels=2
    )
    parts = urlsplit(url)
    assert parts.netloc == "abc.orgo.dev"
    assert parse_qs(parts.query) == {"token": [token], "sample_rate": ["48000"], "channels": ["2"]}
    assert redact_url(url) == "wss://abc.orgo.dev/audio"


def test_url_template_with_its_own_query_keeps_it() -> None:
    url = audio_url(
        "ws://127.0.0.1:9/{computer_id}/audio?v=2", "c", token="t", sample_rate=24000, channels=1
    )
    assert parse_qs(urlsplit(url).query) == {
        "v": ["2"],
        "token": ["t"],
        "sample_rate": ["24000"],
        "channels": ["1"],
    }
