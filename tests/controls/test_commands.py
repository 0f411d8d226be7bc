"""agent.commands: the pure side of remote commands (parse, signature, replay, buckets)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.commands import (
    PROTOCOL,
    CommandError,
    ReplayGuard,
    TokenBucket,
    canonical,
    parse,
    server_time,
    sign_command,
    signature_ok,
)

KEY = b"k" * 32
TOPIC = "DEVICE_CMD"
NONCE = "n" * 22


def signed(**kw: object) -> str:
    args: dict[str, object] = {"topic": TOPIC, "device": "dev_1", "cmd": "ptt", "value": "open"}
    args.update(kw)
    return sign_command(KEY, **args)  # type: ignore[arg-type]


def test_canonical_string_is_protocol_topic_body() -> None:
    assert canonical("T", '{"a":1}') == f'{PROTOCOL}\nT\n{{"a":1}}'.encode()


def test_a_signed_command_round_trips_and_binds_topic_and_key() -> None:
    text = signed(ts=1_700_000_000, nonce=NONCE)
    env = parse(text)
    assert env.signed and env.command.cmd == "ptt" and env.command.value == "open"
    assert (env.device, env.ts, env.nonce) == ("dev_1", 1_700_000_000, NONCE)
    assert signature_ok(KEY, TOPIC, env)
    assert not signature_ok(KEY, "OTHER_TOPIC", env)  # a command cannot be moved to a topic
    assert not signature_ok(b"x" * 32, TOPIC, env)


@given(
    cmd=st.sampled_from(["ptt", "volume", "mute", "status"]),
    field=st.sampled_from(["cmd", "value", "device", "ts", "nonce"]),
)
@settings(max_examples=60, deadline=None)
def test_any_edit_of_the_body_breaks_the_signature(cmd: str, field: str) -> None:
    value = {"ptt": "hold", "volume": 0.5}.get(cmd)
    doc = json.loads(signed(cmd=cmd, value=value, ts=1_700_000_000, nonce=NONCE))
    body = json.loads(doc["body"])
    body[field] = {"cmd": "unmute", "value": "open", "device": "dev_2", "ts": 1, "nonce": "m" * 20}[
        field
    ]
    if body[field] == json.loads(doc["body"])[field]:
        return
    doc["body"] = json.dumps(body)
    try:
        env = parse(json.dumps(doc))
    except CommandError:
        return  # the edit made it invalid: refused too
    assert not signature_ok(KEY, TOPIC, env)


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_parse_never_raises_anything_but_command_error(text: str) -> None:
    try:
        parse(text)
    except CommandError as e:
        assert e.reason in {"malformed", "unknown", "too_large"}
        assert len(str(e)) < 120  # a reason, never the payload


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
        max_leaves=20,
    )
)
@settings(max_examples=300, deadline=None)
def test_any_json_in_a_signed_envelope_is_parsed_or_refused(doc: object) -> None:
    """Whatever a room participant sends: a known command, or CommandError with a reason
    (never another exception, which would reach the link's handler as a bug)."""
    for text in (json.dumps(doc), json.dumps({"v": 1, "body": json.dumps(doc), "sig": "a" * 64})):
        try:
            envelope = parse(text)
        except CommandError as e:
            assert str(e), "a refusal always says why"
            continue
        assert envelope.command.cmd in ("mute", "unmute", "volume", "ptt", "status")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"v":1,"body":"{}","sig":"zz"}', "sig"),
        ('{"v":2,"body":"{}","sig":"' + "a" * 64 + '"}', '"v": 1'),
        ('{"v":1,"body":"{\\"cmd\\":\\"mute\\"}","sig":"' + "a" * 64 + '"}', '"device"'),
        ("[" * 100_000, "too large"),
        ('{"cmd":"volume","value":NaN}', "volume needs"),
        ('{"cmd":"volume","value":true}', "volume needs"),
    ],
)
def test_malformed_envelopes_name_the_problem(text: str, reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        parse(text)


def test_deeply_nested_json_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(CommandError):
        parse("[" * 900 + "]" * 900)


def test_server_time_parses_vendor_timestamps() -> None:
    assert server_time("2026-06-27T14:41:00.000Z") == pytest.approx(1782571260.0)
    assert server_time("") is None and server_time("yesterday") is None
    assert server_time("x" * 100) is None


# -- replay guard --------------------------------------------------------------------
T0 = 1_800_000_000


def test_fresh_commands_pass_and_a_replay_is_refused() -> None:
    g = ReplayGuard(60)
    assert g.check(T0, NONCE, server_ts=T0 + 1, now=100.0) is None
    g.accept(T0, NONCE, now=100.0)
    assert g.check(T0, NONCE, server_ts=T0 + 5, now=105.0) == (
        "replayed: this command was already accepted"
    )
    assert g.check(T0 + 5, "o" * 20, server_ts=T0 + 5, now=105.0) is None


def test_republished_old_command_is_refused_by_the_server_timestamp() -> None:
    g = ReplayGuard(60)
    why = g.check(T0, NONCE, server_ts=T0 + 3 * 3600, now=0.0)
    assert why is not None and why.startswith("stale") and "3 h before" in why


def test_history_older_than_the_window_before_the_last_accepted_is_refused() -> None:
    """History replayed on subscribe: consistent server timestamps, but older than what
    was already accepted (the device's own clock is never asked)."""
    g = ReplayGuard(60)
    g.accept(T0, NONCE, now=1000.0)
    old = T0 - 3600
    assert g.check(old, "o" * 20, server_ts=old, now=1000.5) is not None
    # and the estimate of the present moves on with the monotonic clock
    assert g.check(T0 + 10, "p" * 20, server_ts=None, now=1100.0) is not None  # 100 s later
    assert g.check(T0 + 95, "p" * 20, server_ts=None, now=1100.0) is None


def test_restart_keeps_high_water_and_nonces() -> None:
    g = ReplayGuard(60)
    g.accept(T0, NONCE, now=5.0)
    snap = json.loads(json.dumps(g.snapshot()))  # through the state file's JSON
    again = ReplayGuard(60)
    assert again.restore(snap)
    assert again.check(T0, NONCE, server_ts=T0, now=0.0) is not None  # the nonce is known
    assert again.check(T0 - 3600, "o" * 20, server_ts=T0 - 3600, now=0.0) is not None
    assert again.check(T0 + 1, "o" * 20, server_ts=T0 + 1, now=0.0) is None


@pytest.mark.parametrize(
    "doc",
    [None, [], {"high_water": "x", "nonces": []}, {"high_water": 1.0, "nonces": [["short", 1]]},
     {"high_water": float("nan"), "nonces": []}, {"high_water": 1, "nonces": [[NONCE, True]]}],
)  # fmt: skip
def test_malformed_snapshots_are_refused_whole(doc: object) -> None:
    g = ReplayGuard(60)
    assert not g.restore(doc)
    assert g.check(T0, NONCE, server_ts=T0, now=0.0) is None


@given(
    st.lists(
        st.tuples(st.integers(0, 200), st.sampled_from([f"nonce-{i:012d}" for i in range(40)])),
        min_size=1,
        max_size=200,
    ),
    st.integers(2, 16),
)
@settings(max_examples=200, deadline=None)
def test_no_command_is_ever_accepted_twice_whatever_the_cache_size(
    commands: list[tuple[int, str]], cache_size: int
) -> None:
    """A replay is the same signed body: the same (ts, nonce)."""
    g = ReplayGuard(60, cache_size=cache_size)
    accepted: set[tuple[int, str]] = set()
    for i, (dt_s, nonce) in enumerate(commands):
        ts = T0 + dt_s
        now = float(i)
        if g.check(ts, nonce, server_ts=ts, now=now) is None:
            assert (ts, nonce) not in accepted, "a replay was accepted"
            accepted.add((ts, nonce))
            g.accept(ts, nonce, now=now)
        assert len(g) <= cache_size


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    b = TokenBucket(2.0, 5)
    assert sum(b.allow("a", 0.0) for _ in range(100)) == 5
    assert b.allow("b", 0.0)  # senders are separate
    assert sum(b.allow("a", 1.0) for _ in range(10)) == 2  # 1 s later: 2 more
    for i in range(1000):
        b.allow(f"s{i}", 2.0)
    assert len(b) <= b.max_keys
