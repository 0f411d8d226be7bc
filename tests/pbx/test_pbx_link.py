"""The PBX link against the sandbox PBX client, over real WebSockets on loopback."""

from __future__ import annotations

import asyncio
import base64
import http
import json
import socket
import ssl
import wave
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode

from agent.audio.mixer import Mixer
from agent.audio.playback import Playback
from agent.hw.sim import RecordingSink
from agent.proto.yeastar import encode_frame
from agent.sandbox.pbx import PbxCall, PbxChannel, tone
from tests.support import RecordingMixer, wait_until

from .conftest import SECRET, Harness, TlsFiles, write_secret

OUT_RATE = 48000
PERIOD = OUT_RATE // 50
TONE_DBFS = -12.0


def tone_levels(pcm: np.ndarray, rate: int, freqs: tuple[float, ...]) -> list[float]:
    """Peak level (dBFS) of the sine at each of ``freqs`` in ``pcm`` (Hann-windowed FFT)."""
    x = pcm.astype(np.float64)
    window = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x * window)) * 2 / window.sum()
    levels = []
    for f in freqs:
        k = round(f * len(x) / rate)
        peak = spectrum[max(k - 2, 0) : k + 3].max()
        levels.append(float(20 * np.log10(max(peak, 1e-9) / 32767)))
    return levels


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (OUT_RATE, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)


async def refused_status(call: PbxCall) -> int:
    with pytest.raises(InvalidStatus) as e:
        await call.connect()
    return e.value.response.status_code


# --- audio ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("rate", [8000, 16000])
async def test_both_parties_tones_reach_the_speaker_file(
    harness: Harness, tmp_path: Path, rate: int
) -> None:
    mixer = Mixer(OUT_RATE, metrics=harness.metrics)
    mixer.volume = 1.0
    harness.mixer = mixer
    await harness.start(sample_rate=rate)
    wav = tmp_path / "speaker.wav"
    speaker = RecordingSink(OUT_RATE, 1, wav, paced=True)
    playback = asyncio.create_task(
        Playback(speaker, mixer, metrics=harness.metrics, status=harness.status).run()
    )
    try:
        async with harness.call() as call:  # 1009 says 440 Hz, 1010 says 660 Hz
            assert call.fragment_s == pytest.approx(0.08 if rate == 8000 else 0.04)
            await call.stream(1.6)
            assert harness.detail() == "1 call, 2 channels, from 1009"
            assert sorted(mixer.source_names) == ["pbx/1/1", "pbx/1/2"]
            await call.end()
        await wait_until(lambda: not mixer.source_names, 3, "both sources drained and removed")
    finally:
        playback.cancel()
        await asyncio.gather(playback, return_exceptions=True)
    played = read_wav(wav)  # the file the speaker wrote, closed by the playback's end
    periods = played[: played.size - played.size % PERIOD].reshape(-1, PERIOD)
    audible = [i for i, p in enumerate(periods) if np.any(p)]
    # 1.6 s of call is 80 periods; a stall of this loaded machine's event loop can
    # starve the jitter buffer for a few periods, a lost fragment stream cannot hide here
    assert len(audible) >= 60, f"only {len(audible)} periods of sound for 1.6 s of call"
    assert len(audible) <= 95, f"{len(audible)} periods of sound: the call played too long"
    # the last 0.5 s of the call: both parties at once, each at its pitch and level
    last = np.concatenate([periods[i] for i in audible[-25:]])
    l440, l660, l550 = tone_levels(last, OUT_RATE, (440.0, 660.0, 550.0))
    assert abs(l440 - TONE_DBFS) <= 1.5 and abs(l660 - TONE_DBFS) <= 1.5, (l440, l660)
    assert l550 < TONE_DBFS - 30, f"{l550:.1f} dBFS between the tones: not two clean sines"
    # every fragment of both channels, plus the two `end` frames
    assert harness.metric("frames_received_total") == 2 * round(1.6 / call.fragment_s) + 2
    assert harness.metric("malformed_total") == 0


async def test_both_channels_arrive_sample_exact_in_their_own_sources(harness: Harness) -> None:
    await harness.start()
    async with harness.call() as call:
        await call.stream(0.8, paced=False)
        await wait_until(lambda: len(harness.mixer.sources) == 2, 3, "two sources")
        await wait_until(
            lambda: all(s.pcm().size == 640 + 6400 for s in harness.mixer.sources),
            3,
            "a fragment of lead-in and 0.8 s each",
        )
    a, b = harness.mixer.sources
    assert [(a.name, a.rate, a.channels), (b.name, b.rate, b.channels)] == [
        ("pbx/1/1", 8000, 1),
        ("pbx/1/2", 8000, 1),
    ]
    # one fragment (80 ms) of silence first: slack for the first late fragment
    assert [c.size for c in a.chunks[:2]] == [640, 640] and not a.chunks[0].any()
    n = np.arange(6400)
    np.testing.assert_array_equal(
        a.pcm()[640:], np.round(32767 * 10 ** (-12 / 20) * np.sin(2 * np.pi * 440 * n / 8000))
    )
    np.testing.assert_array_equal(
        b.pcm()[640:], np.round(32767 * 10 ** (-12 / 20) * np.sin(2 * np.pi * 660 * n / 8000))
    )


async def test_end_then_close_removes_the_sources(harness: Harness) -> None:
    await harness.start()
    call = harness.call()
    await call.connect()
    await call.stream(0.16, paced=False)
    await wait_until(lambda: len(harness.mixer.live()) == 2, 3, "two live sources")
    await call.end()
    await wait_until(lambda: not harness.mixer.live(), 3, "sources removed after `end`")
    assert harness.detail().startswith("waiting for calls on ws://127.0.0.1:")
    await call.close()
    await wait_until(lambda: harness.metric("calls_ended_total", reason="closed") == 1, 3)
    assert harness.metrics.get("active_calls", link="pbx") == 0


async def test_close_without_end_ends_the_call(harness: Harness) -> None:
    await harness.start()
    async with harness.call() as call:
        await call.stream(0.16, paced=False)
        await wait_until(lambda: len(harness.mixer.live()) == 2, 3, "two live sources")
        assert harness.detail() == "1 call, 2 channels, from 1009"
    await wait_until(lambda: not harness.mixer.live(), 3, "sources removed after the close")
    assert harness.detail().startswith("waiting for calls")


async def test_status_counts_concurrent_calls(harness: Harness) -> None:
    await harness.start()
    first = harness.call()
    second = PbxCall(
        harness.url, [PbxChannel("PJSIP/1012-0000009", "1012", tone(300))], secret=SECRET
    )
    async with first, second:
        await first.stream(0.08, paced=False)
        await second.stream(0.08, paced=False)
        await wait_until(lambda: len(harness.mixer.live()) == 3, 3, "three sources")
        assert harness.detail() == "2 calls, 3 channels, from 1009, 1012"
        assert {s.name for s in harness.mixer.live()} == {"pbx/1/1", "pbx/1/2", "pbx/2/1"}
        assert harness.metrics.get("active_channels", link="pbx") == 3


# --- auth before the upgrade ----------------------------------------------------------


async def test_wrong_secret_gets_401_before_the_upgrade(
    harness: Harness, debug_logs: pytest.LogCaptureFixture
) -> None:
    await harness.start()
    near_miss = SECRET[:-1] + "X"
    assert await refused_status(harness.call(secret=near_miss)) == 401
    assert harness.metric("connections_refused_total", reason="bad_secret") == 1
    assert harness.metric("calls_total") == 0  # no WebSocket was ever opened
    refusals = [r for r in debug_logs.records if "refused a PBX connection" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelname == "WARNING"
    assert "from 127.0.0.1:" in refusals[0].getMessage()
    assert "wrong secret" in refusals[0].getMessage()
    ours = [r for r in debug_logs.records if not r.name.startswith("agent.sandbox")]
    texts = [r.getMessage() for r in ours]
    assert not any(SECRET in t or near_miss in t for t in texts)  # neither, even at DEBUG
    assert any("< Secret: ***" in t for t in texts)  # the library's header log, masked


async def test_missing_header_gets_401(
    harness: Harness, debug_logs: pytest.LogCaptureFixture
) -> None:
    await harness.start()
    assert await refused_status(harness.call(header=None)) == 401
    assert await refused_status(harness.call(header="X-Other")) == 401
    assert harness.metric("connections_refused_total", reason="no_secret") == 2
    lines = [r for r in debug_logs.records if "refused a PBX connection" in r.getMessage()]
    # the same refusal from the same address: one WARNING, then DEBUG (no log flood)
    assert [r.levelname for r in lines] == ["WARNING", "DEBUG"]
    assert "no 'Secret' header" in lines[0].getMessage()


async def test_header_name_is_configurable_and_case_insensitive(harness: Harness) -> None:
    await harness.start(secret_header="X-Pbx-Token")
    assert await refused_status(harness.call(header="Secret")) == 401
    async with harness.call(header="x-pbx-token") as call:
        await call.stream(0.08, paced=False)
        await wait_until(lambda: len(harness.mixer.live()) == 2, 3, "the call plays")


async def test_two_secret_headers_are_refused(harness: Harness) -> None:
    await harness.start()
    with pytest.raises(InvalidStatus) as e:
        await connect(harness.url, additional_headers=[("Secret", SECRET), ("Secret", SECRET)])
    assert e.value.response.status_code == 401


# --- limits ---------------------------------------------------------------------------


async def test_fifth_call_is_refused_with_limit_four(harness: Harness) -> None:
    await harness.start()
    assert harness.cfg.max_calls == 4
    calls = [harness.call(callid=f"c{i}") for i in range(4)]
    for c in calls:
        await c.connect()
    fifth = harness.call(callid="c4")
    assert await refused_status(fifth) == http.HTTPStatus.SERVICE_UNAVAILABLE
    assert harness.metric("connections_refused_total", reason="too_many_calls") == 1
    # the four go on playing
    for c in calls:
        await c.stream(0.08, paced=False)
    await wait_until(lambda: len(harness.mixer.live()) == 8, 3, "four calls, two channels each")
    assert harness.detail().startswith("4 calls, 8 channels")
    # one ends: the next call is accepted
    await calls[0].end()
    await calls[0].close()
    await wait_until(lambda: harness.metric("calls_ended_total") == 1, 3, "the first call ended")
    async with harness.call(callid="c5") as again:
        await again.stream(0.08, paced=False)
        await wait_until(lambda: len(harness.mixer.live()) == 8, 3, "the new call plays")
    for c in calls[1:]:
        await c.close()


async def test_oversized_message_closes_only_that_call(harness: Harness) -> None:
    await harness.start(max_message_bytes=8192)
    async with harness.call(callid="big") as big, harness.call(callid="good") as good:
        await good.stream(0.08, paced=False)
        huge = encode_frame("big", "PJSIP/1-1", np.zeros(8000, np.int16))  # ~21 KB
        await big.send_raw(huge)
        with pytest.raises(ConnectionClosed) as e:
            await asyncio.wait_for(big.ws.recv(), 3)  # type: ignore[union-attr]
        assert e.value.rcvd is not None and e.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
        await wait_until(lambda: harness.metric("calls_ended_total", reason="too_large") == 1, 3)
        await good.stream(0.08, paced=False)
        await wait_until(
            lambda: harness.received() == 4 * 640,
            3,
            "the other call still plays",
        )
    assert harness.state() == "up"


async def test_idle_call_is_closed(harness: Harness) -> None:
    await harness.start(idle_timeout_s=0.3)
    async with harness.call() as call:
        await call.stream(0.08, paced=False)
        await wait_until(lambda: len(harness.mixer.live()) == 2, 3, "the call plays")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(call.ws.recv(), 3)  # type: ignore[union-attr]
    await wait_until(lambda: harness.metric("calls_ended_total", reason="idle_timeout") == 1, 3)
    await wait_until(lambda: not harness.mixer.live(), 3, "its sources removed")


async def test_too_many_channels_in_one_call_are_refused(harness: Harness) -> None:
    await harness.start()
    async with harness.call() as call:
        for i in range(20):
            await call.send_raw(encode_frame(call.callid, f"PJSIP/{i}", np.ones(640, np.int16)))
        await wait_until(lambda: harness.metric("frames_received_total") == 16, 3)
        await wait_until(
            lambda: harness.metric("malformed_total", reason="too_many_channels") == 4, 3
        )
        assert len(harness.mixer.live()) == 16


# --- garbage ----------------------------------------------------------------------------


async def test_garbage_frames_are_counted_and_the_call_plays_on(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await harness.start()
    garbage: list[str | bytes] = [
        b"\x00\x01binary",
        "not json",
        "[1,2]",
        json.dumps({"audio": ""}),
        json.dumps({"callid": "x", "audio": "@@@"}),
        json.dumps({"callid": "x", "audio": base64.b64encode(b"abc").decode()}),
        json.dumps({"callid": "x", "audio": "", "number": 5}),
        "[" * 50_000,
        "not json either",  # a repeat: counted, logged at DEBUG
    ]
    async with harness.call() as call:
        await call.stream(0.08, paced=False)
        for g in garbage:
            await call.send_raw(g)
        await call.stream(0.08, paced=False)
        await wait_until(lambda: harness.metric("malformed_total") == len(garbage), 3)
        await wait_until(lambda: harness.received() == 4 * 640, 3, "audio goes on")
        assert harness.detail() == "1 call, 2 channels, from 1009"
    reasons = {
        r: harness.metric("malformed_total", reason=r)
        for r in ("binary", "json", "callid", "base64", "odd_length", "number")
    }
    assert reasons == {
        "binary": 1,
        "json": 4,
        "callid": 1,
        "base64": 1,
        "odd_length": 1,
        "number": 1,
    }
    warnings = [r for r in caplog.records if "ignored a frame" in r.getMessage()]
    assert sum(r.levelname == "WARNING" for r in warnings) == 6  # once per reason per call
    assert harness.state() == "up"


async def test_non_websocket_requests_and_raw_tcp_garbage(harness: Harness) -> None:
    await harness.start(max_calls=1)  # a failed handshake must not keep the only call slot
    assert harness.link is not None and harness.link.port is not None
    port = harness.link.port

    async def raw(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        try:
            async with asyncio.timeout(3):
                return await reader.read(4096)
        finally:
            writer.close()

    # a plain HTTP GET with the right secret: the library refuses the missing upgrade
    reply = await raw(f"GET / HTTP/1.1\r\nHost: x\r\nSecret: {SECRET}\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 426") or reply.startswith(b"HTTP/1.1 400")
    assert SECRET.encode() not in reply
    # a plain HTTP GET without it: 401
    assert (await raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 401")
    # bytes that are not HTTP at all: the connection is dropped
    assert not (await raw(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")).startswith(b"HTTP/1.1 101")
    # and the server still takes calls
    async with harness.call() as call:
        await call.stream(0.08, paced=False)
        await wait_until(lambda: len(harness.mixer.live()) == 2, 3, "a call after the garbage")


# --- lifecycle --------------------------------------------------------------------------


async def test_stopping_mid_call_closes_it_and_removes_the_sources(harness: Harness) -> None:
    await harness.start()
    async with harness.call() as call:
        await call.stream(0.08, paced=False)
        await wait_until(lambda: len(harness.mixer.live()) == 2, 3, "the call plays")
        took = await harness.stop()
        with pytest.raises(ConnectionClosed) as e:
            await asyncio.wait_for(call.ws.recv(), 3)  # type: ignore[union-attr]
    assert e.value.rcvd is not None and e.value.rcvd.code == CloseCode.GOING_AWAY
    assert took < 2.5, f"stop took {took:.2f} s"
    assert not harness.mixer.live()
    assert harness.state() == "stopped"


async def test_missing_secret_needs_attention_and_nothing_listens(tmp_path: Path) -> None:
    from agent.secrets import Credentials

    from .conftest import PbxConfig

    h = Harness(PbxConfig(enabled=True, listen="127.0.0.1:0"), Credentials(tmp_path, env={}))
    await h.start(until="attention")
    assert "pbx-secret" in h.detail()
    assert h.link is not None and h.link.port is None
    await h.stop()


async def test_port_in_use_is_retried_until_free(harness: Harness) -> None:
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        await harness.start(until="retry", listen=f"127.0.0.1:{port}")
        assert f"cannot listen on 127.0.0.1:{port}: address in use" in harness.detail()
    finally:
        blocker.close()
    await wait_until(lambda: harness.state() == "up", 5, "listening once the port is free")
    assert harness.metric("reconnects_total") >= 1


# --- wss:// -------------------------------------------------------------------------------


async def test_wss_call_plays_with_a_self_signed_certificate(
    harness: Harness, tls_files: TlsFiles
) -> None:
    harness.client_ssl = tls_files.client_context()
    await harness.start(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key))
    assert harness.url.startswith("wss://127.0.0.1:")
    async with harness.call() as call:
        await call.stream(0.16, paced=False)
        await wait_until(lambda: harness.received() == 4 * 640, 3, "audio")
    # the secret is checked on wss:// too
    assert await refused_status(harness.call(secret="wrong")) == 401
    # a client that does not trust the certificate cannot connect
    with pytest.raises(ssl.SSLCertVerificationError):
        await harness.call(ssl_context=ssl.create_default_context()).connect()
    # nor can plain ws:// (the server speaks TLS only)
    plain = harness.call(ssl_context=None)
    plain.url = harness.url.replace("wss://", "ws://")
    with pytest.raises(Exception):  # noqa: B017 - the handshake fails in the library's words
        await plain.connect()
    assert harness.state() == "up"


async def test_unusable_tls_files_need_attention(harness: Harness, tls_files: TlsFiles) -> None:
    tls_files.key.write_text("not a key\n")
    await harness.start(until="attention", tls_cert=str(tls_files.cert), tls_key=str(tls_files.key))
    assert "cannot load pbx.tls_cert" in harness.detail()


async def test_credential_is_read_at_each_start(tmp_path: Path, harness: Harness) -> None:
    """A rotated pbx-secret takes effect when the link (re)starts (SIGHUP reload)."""
    await harness.start()
    await harness.stop()
    harness.creds = write_secret(tmp_path / "creds", "rotated-secret-value")
    harness.mixer = RecordingMixer()
    await harness.start()
    assert await refused_status(harness.call()) == 401
    async with harness.call(secret="rotated-secret-value") as call:
        await call.stream(0.08, paced=False)
        await wait_until(lambda: len(harness.mixer.live()) == 2, 3, "the call plays")
