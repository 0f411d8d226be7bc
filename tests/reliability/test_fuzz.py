"""Fuzzing (hypothesis) of every decoder in agent/proto/ and of config loading.

Contract: whatever the input, a decoder returns a value or raises one of its
documented error types, within a second. A hang is caught by an interval timer
(SIGALRM), not by hypothesis' deadline, which only fires after the call returns.

Adding a decoder = one :class:`Decoder` entry in :data:`DECODERS`.
More examples: ``FIELD_AGENT_FUZZ_EXAMPLES=20000 pytest tests/reliability/test_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import signal
import string
import subprocess
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
from agent.links.pbx import PbxLink
from agent.metrics import Metrics
from agent.proto import fastrtc as rtc_proto
from agent.proto import orgo as orgo_proto
from agent.proto import videosdk as vsdk_proto
from agent.proto import yeastar
from agent.secrets import Credentials
from agent.status import StatusBoard
from tests.conftest import agent_cmd, subprocess_env
from tests.reliability.rigs import write_secret
from tests.support import RecordingMixer, wait_until

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
short_ids = st.one_of(st.sampled_from(["c1", "c2", "", "PJSIP/1009-0000005"]), st.text(max_size=8))
yeastar_frames = st.one_of(
    shaped(
        {
            "callid": st.one_of(st.sampled_from(["1755940023.7", "c2"]), st.text(max_size=300)),
            "callflow": st.sampled_from(["", "ivr", "queue", "conference", "weird"]),
            "audio": st.one_of(b64_pcm, st.text(max_size=30)),
            "number": st.one_of(st.sampled_from(["1009", "1010", ""]), st.text(max_size=300)),
            "status": st.sampled_from(["process", "end", "", "ringing"]),
            "channelid": short_ids,
        }
    ).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
)
rtc_frames = st.one_of(
    shaped(
        {
            "event": st.sampled_from(["media", "pong", "ping", "start", ""]),
            "media": shaped({"payload": st.one_of(b64_pcm, st.text(max_size=30))}),
            "type": st.sampled_from(
                ["log", "send_input", "stopword", "error", "warning", "fetch_output", ""]
            ),
            "data": json_values,
            "message": json_values,
            "status": st.sampled_from(["failed", "success", ""]),
            "meta": shaped(
                {
                    "error": st.one_of(st.just("concurrency_limit_reached"), json_values),
                    "limit": json_values,
                }
            ),
        }
    ).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
)


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


def feed_call(arg: tuple[int, list[str | bytes]]) -> None:
    """One PBX connection: any message sequence; the channel bookkeeping stays sound."""
    max_channels, messages = arg
    stream = yeastar.CallStream(max_channels=max_channels)
    open_keys: set[yeastar.ChannelKey] = set()
    for message in messages:
        before = dict(stream.channels)
        try:
            events = stream.receive(message)
        except yeastar.MalformedFrame:
            assert stream.channels == before, "a refused frame leaves the stream unchanged"
            continue
        for event in events:
            match event:
                case yeastar.ChannelOpened(key=key):
                    assert key not in open_keys
                    open_keys.add(key)
                case yeastar.ChannelAudio(key=key, pcm=pcm):
                    assert key in open_keys and pcm.size and pcm.dtype == np.int16
                case yeastar.ChannelEnded(key=key):
                    open_keys.remove(key)
        assert set(stream.channels) == open_keys
        assert len(open_keys) <= max_channels
    assert {e.key for e in stream.close()} == open_keys and not stream.channels


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
    Decoder("yeastar.parse_frame", yeastar.parse_frame, yeastar_frames, (yeastar.MalformedFrame,)),
    Decoder(
        "yeastar.CallStream",
        feed_call,
        st.tuples(st.integers(1, 4), st.lists(yeastar_frames, max_size=16)),
        (),  # the stream's own MalformedFrame is handled inside feed_call
    ),
    Decoder("fastrtc.decode", rtc_proto.decode, rtc_frames, (rtc_proto.MalformedMessage,)),
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


HOSTILE_TEXT = [
    "[" * 200_000,  # recursion
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    "A" * 3_000_000,
    '{"callid":"c","audio":"' + "A" * 2_000_000 + '"}',  # 1.5 MB of audio
    '{"event":"media","media":{"payload":"' + "A" * 2_000_000 + '"}}',
    '{"callid":' + json.dumps("c" * 100_000) + ',"audio":""}',
    '{"type":"log","data":' + json.dumps("x" * 100_000) + "}",
    '{"status":"failed","meta":{"error":' + "[" * 10_000 + "]" * 10_000 + "}}",
]


@pytest.mark.parametrize("message", [*HOSTILE_TEXT, b"\xff\xfe\x00", b"\x00" * 1_000_000])
def test_pbx_and_fastrtc_decoders_hostile_messages(message: str | bytes) -> None:
    stream = yeastar.CallStream()
    with no_hang(5.0):
        for decode in (stream.receive, rtc_proto.decode):
            try:
                decode(message)
            except ProtocolError as e:
                assert len(str(e)) < 300, "the error names the problem, not the message"
    assert not stream.channels or stream.frames_received == 1


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
            "relative/pbx.crt",
            "/etc/field-agent/pbx\x00.key",
            "/\udcff",
            "[::1]:8765",
            "a b:8765",
            "\u00fc:8765",
            "X-Pbx-Token",
            "Bad Header",
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


# --- the [pbx] keys: hostile values are config errors (exit 78), never an exception ------

PBX_ON = {"enabled": True, "listen": "127.0.0.1:8765"}


@pytest.mark.parametrize(
    ("pbx", "key", "reason"),
    [
        ({"tls_cert": "/etc/c.pem", "tls_key": "/etc/k\x00.pem"}, "tls_key", "not a usable path"),
        ({"tls_cert": "/\x00", "tls_key": "/etc/k.pem"}, "tls_cert", "not a usable path"),
        ({"tls_cert": "/etc/c.pem", "tls_key": "/\udcff\ud800"}, "tls_key", "not a usable path"),
        ({"tls_cert": "c.pem", "tls_key": "/etc/k.pem"}, "tls_cert", "absolute path"),
        ({"tls_cert": "/etc/c.pem", "tls_key": "~/k.pem"}, "tls_key", "absolute path"),
        ({"tls_cert": "/etc/c.pem", "tls_key": 7}, "tls_key", "must be a string"),
        ({"tls_cert": "/etc/c.pem"}, "tls_key", "both or neither"),
        ({"listen": "pbx host:8765"}, "listen", "ASCII host name"),
        ({"listen": "h\x00st:8765"}, "listen", "ASCII host name"),
        ({"listen": "\u00fcber:8765"}, "listen", "ASCII host name"),
        ({"listen": "[::1]:0"}, "listen", "HOST:PORT"),
        ({"secret_header": "Secret\r\nX-Injected: 1"}, "secret_header", "HTTP header name"),
        ({"max_message_bytes": 2**64}, "max_message_bytes", "between 4096 and 1048576"),
        ({"idle_timeout_s": float("nan")}, "idle_timeout_s", "between 1 and 3600"),
    ],
)
def test_hostile_pbx_values_are_one_problem_line_each(
    pbx: dict[str, Any], key: str, reason: str
) -> None:
    raw = {**BASE, "pbx": {**PBX_ON, **pbx}}
    with no_hang(), pytest.raises(ConfigError) as e:
        config.from_dict(raw, path="pbx.toml")
    assert len(e.value.problems) == 1, e.value.problems
    assert e.value.problems[0].startswith(f"pbx.toml: pbx.{key}: "), e.value.problems
    assert reason in e.value.problems[0], e.value.problems


def test_a_nul_in_a_pbx_tls_path_exits_78_with_one_line(tmp_path: Path) -> None:
    """The whole CLI: TOML's \\u0000 escape reaches the validator, not the link."""
    path = tmp_path / "agent.toml"
    path.write_text(
        '[device]\nid = "d"\n[videosdk]\nroom_id = "r"\n'
        '[pbx]\nenabled = true\nlisten = "127.0.0.1:8765"\n'
        'tls_cert = "/etc/field-agent/pbx.crt"\ntls_key = "/etc/field-agent/pbx\\u0000.key"\n'
    )
    out = subprocess.run(
        agent_cmd("check-config", "--config", str(path)),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=30,
    )
    assert out.returncode == 78, out
    assert out.stdout.strip().splitlines() == [
        f"{path}: pbx.tls_key: not a usable path: '/etc/field-agent/pbx\\x00.key'"
    ]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "tls",
    [
        {"tls_cert": "/nonexistent/pbx.crt", "tls_key": "/nonexistent/pbx.key"},
        {"tls_cert": "/", "tls_key": "/"},  # directories
        {"tls_cert": "/dev/null", "tls_key": "/dev/null"},  # empty
        {"tls_cert": "/etc/hostname", "tls_key": "/etc/hostname"},  # not PEM
    ],
    ids=["missing", "directory", "empty", "not-pem"],
)
async def test_accepted_but_unusable_pbx_tls_files_are_attention_not_a_crash(
    tls: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the config cannot know (the files may appear later) the link reports: the
    server does not start, ATTENTION names both keys, no exception escapes."""
    cfg = config.from_dict({**BASE, "pbx": {**PBX_ON, **tls}})  # accepted
    write_secret(tmp_path, "pbx-secret", "fuzz-pbx-secret-0123")
    status = StatusBoard()
    link = PbxLink(
        dataclasses.replace(cfg.pbx, listen="127.0.0.1:0"),
        Credentials(tmp_path, env={}),
        mixer=RecordingMixer(),
        status=status,
        metrics=Metrics(),
    )
    task = asyncio.create_task(link.run())
    try:
        await wait_until(lambda: "pbx" in status.links and status.links["pbx"].state.value
                         == "attention", 5.0, "attention")  # fmt: skip
        detail = status.links["pbx"].detail
        assert "pbx.tls_cert" in detail and "pbx.tls_key" in detail, detail
        assert link.port is None, "nothing listens"
        assert not task.done()
        assert not [r for r in caplog.records if r.exc_info or "unexpected" in r.getMessage()]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
