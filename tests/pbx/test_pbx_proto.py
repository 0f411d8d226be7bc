"""The Yeastar frame format and per-connection channel state, with plain strings (no I/O)."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ProtocolError
from agent.proto.yeastar import (
    FRAGMENT_BYTES,
    CallStream,
    ChannelAudio,
    ChannelEnded,
    ChannelKey,
    ChannelOpened,
    MalformedFrame,
    encode_frame,
    fragment_ms,
    parse_frame,
)

RAMP = (np.arange(640) * 37 % 65536 - 32768).astype(np.int16)  # one 1280-byte fragment
B64 = base64.b64encode(RAMP.astype("<i2").tobytes()).decode()
DOC = {  # the vendor's example frame, with real audio
    "callid": "1755940023.7",
    "callflow": "",
    "audio": B64,
    "number": "1009",
    "status": "process",
    "channelid": "PJSIP/1009-0000005",
}


def frame(**changes: Any) -> str:
    doc = {**DOC, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not _DROP})


_DROP = object()


def test_documented_frame_decodes_sample_exact() -> None:
    f = parse_frame(json.dumps(DOC))
    assert (f.callid, f.channelid, f.number, f.status, f.callflow) == (
        "1755940023.7",
        "PJSIP/1009-0000005",
        "1009",
        "process",
        "",
    )
    np.testing.assert_array_equal(f.pcm, RAMP)
    assert f.pcm.dtype == np.int16 and not f.ends


def test_fragment_durations_match_the_documented_cadence() -> None:
    assert FRAGMENT_BYTES == 1280
    assert fragment_ms(8000) == 80.0 and fragment_ms(16000) == 40.0


def test_encode_round_trips() -> None:
    text = encode_frame("c1", "PJSIP/1-1", RAMP, number="1", callflow="queue")
    f = parse_frame(text)
    assert (f.callid, f.channelid, f.number, f.callflow, f.status) == (
        "c1",
        "PJSIP/1-1",
        "1",
        "queue",
        "process",
    )
    np.testing.assert_array_equal(f.pcm, RAMP)


@pytest.mark.parametrize(
    ("message", "check"),
    [
        (frame(extra="x", timestamp=123, nested={"a": [1]}), "extra fields ignored"),
        (frame(callflow=_DROP, number=_DROP), "callflow and number missing"),
        (frame(status=_DROP), "status missing: process"),
        (frame(channelid=_DROP), "channelid missing: the call's one channel"),
        (frame(channelid=""), "channelid empty"),
        (frame(callflow="conference"), "a documented callflow"),
        (frame(callflow="something-new"), "an unknown callflow"),
        (frame(status="hold"), "an unknown status: audio"),
        (frame(audio="", status="process"), "an empty process frame"),
        (frame(status="end"), "audio on an end frame: played"),
        (frame(number=None), "null number is missing"),
    ],
)
def test_tolerated_variations(message: str, check: str) -> None:
    f = parse_frame(message)
    assert f.callid == "1755940023.7", check
    assert f.pcm.size in (0, RAMP.size), check


# Every bad input the link was tried with at the protocol level; the reason is the
# label of malformed_total{link="pbx",reason=} (see the issue note's table).
BAD: list[tuple[str | bytes, str]] = [
    (b'{"callid":"1"}', "binary"),
    (RAMP.tobytes(), "binary"),
    ("", "json"),
    ("not json at all", "json"),
    ('{"callid": "1", "audio": ', "json"),
    ("[" * 100_000, "json"),  # nesting bomb
    ("[1, 2, 3]", "json"),
    ('"a string"', "json"),
    ("null", "json"),
    (frame(callid=_DROP), "callid"),
    (frame(callid=""), "callid"),
    (frame(callid=1755940023.7), "callid"),
    (frame(callid=["x"]), "callid"),
    (frame(callid="x" * 300), "callid"),
    (frame(audio=_DROP), "audio"),
    (frame(audio=None), "audio"),
    (frame(audio=[1, 2]), "audio"),
    (frame(audio="not base64 !!"), "base64"),
    (frame(audio="QUJ"), "base64"),  # missing padding
    (frame(audio=base64.b64encode(b"\x01\x02\x03").decode()), "odd_length"),
    (frame(number=1009), "number"),
    (frame(channelid={"id": 1}), "channelid"),
    (frame(channelid="c" * 300), "channelid"),
    (frame(status=True), "status"),
    (frame(callflow=0), "callflow"),
]


@pytest.mark.parametrize(("message", "reason"), BAD, ids=[r for _, r in BAD])
def test_bad_frames_are_refused_with_a_reason(message: str | bytes, reason: str) -> None:
    with pytest.raises(MalformedFrame) as e:
        parse_frame(message)
    assert e.value.reason == reason
    assert isinstance(e.value, ProtocolError)
    assert len(str(e.value)) < 200  # a log line, never the message echoed back


def test_a_call_opens_plays_and_ends_each_channel() -> None:
    stream = CallStream()
    a, b = "PJSIP/1009-0000005", "PJSIP/1010-0000006"
    ka, kb = ChannelKey("1755940023.7", a), ChannelKey("1755940023.7", b)
    events = stream.receive(frame(channelid=a))
    assert isinstance(events[0], ChannelOpened) and events[0].key == ka
    assert events[0].number == "1009"
    assert isinstance(events[1], ChannelAudio) and events[1].key == ka
    events = stream.receive(frame(channelid=b, number="1010"))
    assert [type(e) for e in events] == [ChannelOpened, ChannelAudio]
    assert [type(e) for e in stream.receive(frame(channelid=a))] == [ChannelAudio]
    assert stream.callids == ["1755940023.7"] and stream.numbers() == ["1009", "1010"]
    assert stream.receive(frame(channelid=a, audio="", status="end")) == [ChannelEnded(ka)]
    assert list(stream.channels) == [kb]
    assert stream.close() == [ChannelEnded(kb)]
    assert stream.channels == {}
    assert stream.frames_received == 4 and stream.samples_received == 3 * RAMP.size


def test_audio_after_end_opens_the_channel_again() -> None:
    stream = CallStream()
    stream.receive(frame())
    stream.receive(frame(audio="", status="end"))
    events = stream.receive(frame())
    assert [type(e) for e in events] == [ChannelOpened, ChannelAudio]


def test_end_of_a_channel_never_heard_is_harmless() -> None:
    stream = CallStream()
    assert stream.receive(frame(audio="", status="end")) == []
    assert stream.channels == {}


def test_channels_beyond_the_limit_are_refused_others_play_on() -> None:
    stream = CallStream(max_channels=2)
    stream.receive(frame(channelid="a"))
    stream.receive(frame(channelid="b"))
    with pytest.raises(MalformedFrame) as e:
        stream.receive(frame(channelid="c"))
    assert e.value.reason == "too_many_channels"
    assert [type(x) for x in stream.receive(frame(channelid="a"))] == [ChannelAudio]
    stream.receive(frame(channelid="a", audio="", status="end"))
    assert [type(x) for x in stream.receive(frame(channelid="c"))] == [ChannelOpened, ChannelAudio]


def test_a_refused_frame_leaves_the_stream_unchanged() -> None:
    stream = CallStream()
    stream.receive(frame())
    before = (dict(stream.channels), stream.frames_received, stream.samples_received)
    for message, _reason in BAD:
        with pytest.raises(MalformedFrame):
            stream.receive(message)
    assert (dict(stream.channels), stream.frames_received, stream.samples_received) == before


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["callid", "audio", "status", "channelid", "number", "x"]),
                    inner,
                    max_size=6,
                )
            ),
            max_leaves=12,
        ).map(json.dumps),
    )
)
def test_anything_is_decoded_or_refused_with_malformed_frame(message: str | bytes) -> None:
    stream = CallStream()
    try:
        events = stream.receive(message)
    except MalformedFrame:
        return
    for event in events:
        if isinstance(event, ChannelAudio):
            assert event.pcm.dtype == np.int16 and event.pcm.size > 0
