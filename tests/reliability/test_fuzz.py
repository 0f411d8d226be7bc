"""Fuzzing (hypothesis) of every decoder in agent/proto/ and of config loading.

Contract: whatever the input, a decoder returns a value or raises one of its
documented error types, within a second. A hang is caught by an interval timer
(SIGALRM), not by hypothesis' deadline, which only fires after the call returns.

Adding a decoder (PBX, FastRTC, ...) = one :class:`Decoder` entry in :data:`DECODERS`.
More examples: ``FIELD_AGENT_FUZZ_EXAMPLES=20000 pytest tests/reliability/test_fuzz.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent import config
from agent.errors import ConfigError, ProtocolError
from agent.proto import orgo as orgo_proto
from agent.proto import videosdk as vsdk_proto

EXAMPLES = int(os.environ.get("FIELD_AGENT_FUZZ_EXAMPLES", "150"))
HANG_S = 1.0
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # load-dependent; hangs are caught by no_hang() instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float = HANG_S) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- input strategies -------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


def shaped(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects that look like real messages: known keys with valid or odd values."""
    optional = {k: st.one_of(v, json_values) for k, v in keys.items()}
    return st.fixed_dictionaries({}, optional=optional)


b64_pcm = st.binary(max_size=700).map(lambda b: base64.b64encode(b).decode())
vsdk_frames = st.one_of(
    shaped(
        {
            "event": st.sampled_from(
                [
                    "media",
                    "message",
                    "participant-joined",
                    "participant-left",
                    "meeting-joined",
                    "meeting-left",
                    "error",
                    "",
                ]
            ),
            "payload": st.one_of(b64_pcm, st.text(max_size=30)),
            "topic": st.text(max_size=140),
            "data": shaped(
                {k: st.text(max_size=20) for k in ("message", "senderId", "senderName", "id")}
            ),
            "participant": shaped({"id": st.text(max_size=10), "name": st.text(max_size=10)}),
            "roomId": st.text(max_size=10),
            "sessionId": st.text(max_size=10),
            "message": st.text(max_size=10),
        }
    ).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
)
session_bodies = st.one_of(
    shaped(
        {
            "data": shaped(
                {
                    "wsUrl": st.sampled_from(["wss://x/y?ref=1", "ws://127.0.0.1:1/v", "http://x"]),
                    "callId": st.text(max_size=10),
                    "expiresIn": st.one_of(st.integers(-5, 200), st.floats()),
                }
            )
        }
    ),
    json_values,
)
orgo_text = st.one_of(
    shaped(
        {
            "type": st.sampled_from(["started", "pong", "error", "ping", "weird"]),
            "sample_rate": st.one_of(st.sampled_from([8000, 24000, 48000]), st.integers()),
            "channels": st.one_of(st.integers(0, 3), st.booleans()),
            "message": st.text(max_size=20),
        }
    ).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=100),
)
orgo_messages = st.lists(st.one_of(orgo_text, st.binary(max_size=2000)), max_size=12)


# --- the decoders -------------------------------------------------------------------------


def feed_orgo(arg: tuple[tuple[int, int], list[str | bytes]]) -> None:
    (rate, channels), messages = arg
    stream = orgo_proto.OrgoStream(rate, channels)  # a bad format: MalformedMessage
    for message in messages:
        try:
            events = stream.receive(message)
        except orgo_proto.MalformedMessage:
            continue  # documented: the stream stays usable
        for event in events:
            if isinstance(event, orgo_proto.Audio):
                assert event.pcm.dtype == np.int16
                assert event.pcm.size % stream.channels == 0, "audio holds whole sample frames"
        assert stream.pending_bytes < stream.channels * 2


@dataclass(frozen=True)
class Decoder:
    name: str
    feed: Callable[[Any], object]
    inputs: st.SearchStrategy[Any]
    errors: tuple[type[BaseException], ...]  # what its docstring promises


DECODERS = [
    Decoder("videosdk.decode", vsdk_proto.decode, vsdk_frames, (vsdk_proto.MalformedMessage,)),
    Decoder(
        "videosdk.parse_session_response",
        lambda body: vsdk_proto.parse_session_response(body, now=0.0),
        session_bodies,
        (ProtocolError,),
    ),
    Decoder(
        "orgo.OrgoStream",
        feed_orgo,
        st.tuples(
            st.one_of(
                st.sampled_from([(24000, 1), (48000, 2), (8000, 1)]),
                st.tuples(st.integers(-1, 200000), st.integers(-1, 3)),
            ),
            orgo_messages,
        ),
        (orgo_proto.MalformedMessage,),
    ),
    Decoder(
        "orgo.parse_password",
        orgo_proto.parse_password,
        st.one_of(shaped({"password": json_values, "desktop_api_token": json_values}), json_values),
        (orgo_proto.MalformedMessage,),
    ),
]


@pytest.mark.parametrize("decoder", DECODERS, ids=[d.name for d in DECODERS])
def test_decoders_raise_only_their_documented_errors(decoder: Decoder) -> None:
    @FUZZ
    @given(decoder.inputs)
    def check(data: Any) -> None:
        with no_hang(), contextlib.suppress(*decoder.errors):
            decoder.feed(data)

    check()


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 200_000,  # recursion
        '{"event":"media","payload":"' + "A" * 2_000_000 + '"}',  # 1.5 MB of audio
        '{"event":"media","payload":"' + "A" * 5 + '"}',  # not base64
        '{"event":"message","topic":"x","data":{"message":' + "[" * 50_000 + "]" * 50_000 + "}}",
        b"\xff\xfe\x00",
        '{"event":' + json.dumps("e" * 100_000) + "}",
    ],
    ids=["deep-nesting", "huge-media", "bad-base64", "deep-message", "not-utf8", "long-event"],
)
def test_videosdk_decode_hostile_frames(frame: str | bytes) -> None:
    with no_hang(5.0):
        try:
            event = vsdk_proto.decode(frame)
        except vsdk_proto.MalformedMessage as e:
            assert len(str(e)) < 300, "the error names the problem, not the frame"
        else:
            assert event is not None


def test_orgo_stream_hostile_messages() -> None:
    stream = orgo_proto.OrgoStream(24000, 1)
    with no_hang(5.0):
        for message in ("[" * 200_000, b"\x01" * 3_000_001, '{"type":' + "[" * 10_000 + "}"):
            with contextlib.suppress(orgo_proto.MalformedMessage):
                stream.receive(message)
    assert stream.pending_bytes == 1  # an odd byte carried over, never a half sample handed out


# --- config loading -------------------------------------------------------------------------

BASE = {"device": {"id": "dev_1"}, "videosdk": {"room_id": "room-1"}}
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),  # TOML has nan and inf
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "/",
            "/etc/hostname",
            "/\x00",
            "http://[::1",
            "https://[zz]/",
            "ws://x:99999",
            "0.0.0.0:0",
            "127.0.0.1:9464",
            "wss://{computer_id}.orgo.dev/audio",
            "\ud800",
        ]
    ),
)
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3))
KEYS = {name: [f.name for f in fields(cls)] for name, cls in config.SECTIONS.items()}


@st.composite
def config_dicts(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 6))):
        section = draw(st.sampled_from([*config.SECTIONS, "bogus"]))
        key = draw(st.sampled_from([*KEYS.get(section, []), "bogus_key"]))
        value = draw(st.one_of(toml_values, st.dictionaries(st.text(max_size=5), toml_scalars)))
        if draw(st.booleans()):
            raw.setdefault(section, {})
            if isinstance(raw[section], dict):
                raw[section][key] = value
        else:
            raw[section] = value
    return raw


def test_config_from_dict_reports_or_accepts_never_crashes() -> None:
    @FUZZ
    @given(config_dicts())
    def check(raw: dict[str, Any]) -> None:
        with no_hang():
            try:
                cfg = config.from_dict(raw, path="fuzz.toml")
            except ConfigError as e:
                assert e.problems and all(p.startswith("fuzz.toml: ") for p in e.problems)
            else:
                assert cfg.device.id

    check()


toml_texts = st.one_of(
    st.text(alphabet=string.printable + "[]=\"'{}ü\x00", max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
)


def test_config_load_of_any_text_is_a_config_error_or_a_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"

    @FUZZ
    @example('[device]\nid = "d"\n[videosdk]\nroom_id = "r"\n[security]\nca_file = "/\\u0000"\n')
    @example("[device]\nid = 'd'\n[videosdk]\nroom_id = 'r'\napi_base = 'http://[::1'\n")
    @given(toml_texts)
    def check(text: str) -> None:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        with no_hang():
            try:
                config.load(path)
            except ConfigError as e:
                assert e.problems

    check()
