"""The real VideoSDK link through the real broker (uvicorn on loopback) to the fake VideoSDK."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trustme
from field_agent_broker.app import Account, Settings, create_app
from field_agent_broker.enrolment import revoke
from websockets.asyncio.client import connect as ws_connect

from agent.backoff import BackoffPolicy, Reconnector
from agent.config import DeviceConfig, SecurityConfig, VideoSDKConfig
from agent.links.tls import httpx_verify
from agent.sandbox.rest import Reply, Request, RestServer
from agent.sandbox.videosdk import FakeVideoSDK
from tests.videosdk.conftest import Harness, assert_refs_single_use, write_creds

from .conftest import API_KEY, ROOM, SECRET, Rig, broker_rig, enrol_fleet, serve


def device(
    rig: Rig,
    http: httpx.AsyncClient,
    tmp_path: Path,
    device_id: str = "dev_12",
    token: str | None = None,
    **creds: str,
) -> Harness:
    """A link configured for the broker, holding only its own device token."""
    files = creds or {"device_token": token or rig.tokens[device_id]}
    h = Harness(rig.fake, write_creds(tmp_path / f"creds-{device_id}", **files), http)
    h.cfg = VideoSDKConfig(room_id=ROOM, session_url=rig.sessions_url)
    h.device = DeviceConfig(id=device_id, name=f"Field Device {device_id}")
    return h


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


@contextlib.asynccontextmanager
async def running(h: Harness, **kw: Any) -> AsyncIterator[Harness]:
    h.start(**kw)
    try:
        yield h
    finally:
        if h.task is not None and not h.task.done():
            await h.stop()


async def test_audio_flows_through_a_broker_session(
    rig: Rig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with running(device(rig, http, tmp_path)) as h:
        await h.wait_up()
        sent = await h.feed(50)
        await rig.fake.wait_for(lambda: len(rig.fake.frames) >= 50, what="50 frames")
    received = np.frombuffer(b"".join(f.pcm for f in rig.fake.frames), dtype="<i2")
    np.testing.assert_array_equal(received, np.concatenate(sent))
    s = rig.fake.sessions[0]
    assert (s.room_id, s.participant_id, s.metadata) == (ROOM, "dev_12", {"deviceId": "dev_12"})
    # the device token went to the broker only; VideoSDK saw the account's JWT
    assert rig.tokens["dev_12"] not in rig.fake.rest_requests[0].headers["authorization"]
    assert rig.counter("created") == 1
    assert h.metric("sessions_created_total") == 1


async def test_reconnects_create_new_sessions_through_the_broker(
    rig: Rig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with running(device(rig, http, tmp_path)) as h:
        await h.wait_up()
        await h.feed(5)
        await rig.fake.stop_ws()  # the ingest server dies mid-stream
        await rig.fake.wait_for(lambda: h.state() in ("retry", "connecting"), what="link down")
        await rig.fake.start_ws()
        await h.wait_up(sessions=2)
        await h.feed(5)
        await rig.fake.wait_for(lambda: len(rig.fake.started_sessions[1].frames) >= 5)
        await rig.fake.drop(1011, "bye")
        await h.wait_up(sessions=3)
    assert rig.counter("created") == len(rig.fake.sessions) >= 3
    first, second, third = rig.fake.started_sessions[:3]
    assert len({first.ref, second.ref, third.ref}) == 3
    assert_refs_single_use(rig.fake)


async def test_a_revoked_device_goes_to_attention_within_one_attempt(
    rig: Rig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    policy = BackoffPolicy(initial_s=0.05, cap_s=0.3, slow_s=5.0, jitter=0.0)
    async with running(device(rig, http, tmp_path), reconnector=Reconnector(policy)) as h:
        await h.wait_up()
        revoke(rig.enrolment, "dev_12")
        await rig.fake.drop(1011, "maintenance")
        await h.wait_state("attention")
        assert rig.counter("revoked") == 1, "the first attempt after revocation"
        assert "not enrolled or revoked" in h.detail() and "HTTP 403: device revoked" in h.detail()
        assert h.status.led.value == "blink-4hz"
        await asyncio.sleep(0.5)
        assert rig.counter("revoked") == 1, "slow retry (5 s), never a spin"
    assert len(rig.fake.sessions) == 1


async def test_an_unenrolled_device_needs_attention_without_reaching_videosdk(
    rig: Rig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    h = device(rig, http, tmp_path, "dev_77", token="fad_" + "x" * 43)
    async with running(h):
        await h.wait_state("attention")
        assert "HTTP 401: device not enrolled" in h.detail()
    assert rig.fake.rest_requests == []


async def test_a_device_with_an_account_secret_next_to_its_token_is_refused(
    rig: Rig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    h = device(
        rig,
        http,
        tmp_path,
        device_token=rig.tokens["dev_12"],
        videosdk_secret="s" * 40,
        videosdk_api_key="k" * 12,
    )
    async with running(h):
        await h.wait_state("attention")
        assert "credentials mixed: found device-token, videosdk-api-key" in h.detail()
    assert rig.counter("created") == 0 and rig.fake.rest_requests == []


async def test_a_broker_429_is_honoured(
    tmp_path: Path, fake: FakeVideoSDK, http: httpx.AsyncClient
) -> None:
    async with broker_rig(tmp_path, fake, rate_burst=1, rate_per_s=0.5) as rig:
        h = device(rig, http, tmp_path)
        async with running(h):
            await h.wait_up()
            await fake.drop(1011, "bye")
            await rig.fake.wait_for(lambda: rig.counter("rate_limited") >= 1, what="a 429")
            t_refused = time.monotonic()
            await rig.fake.wait_for(lambda: h.state() == "retry", what="retry")
            assert "rate-limited (HTTP 429)" in h.detail()
            retry_in = h.status.to_json()["links"]["videosdk"].get("retry_in_s")
            await h.wait_up(sessions=2, within_s=5.0)
            waited = time.monotonic() - t_refused
    assert retry_in is not None and retry_in >= 1.0, retry_in
    assert rig.counter("rate_limited") == 1, "the device waited Retry-After (2 s), no spin"
    assert waited >= 1.5


@contextlib.asynccontextmanager
async def fake_broker(answer: Reply | Any) -> AsyncIterator[str]:
    server = RestServer()
    server.route("POST", r"/v1/sessions", answer if callable(answer) else (lambda _r: answer))
    server.start()
    try:
        yield server.url + "/v1/sessions"
    finally:
        await asyncio.to_thread(server.stop)


def harness_for(url: str, fake: FakeVideoSDK, http: httpx.AsyncClient, tmp_path: Path) -> Harness:
    h = Harness(fake, write_creds(tmp_path / "c", device_token="fad_" + "t" * 43), http)
    h.cfg = VideoSDKConfig(room_id=ROOM, session_url=url)
    return h


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, ["not", "the", "shape"]),
        Reply(200, {"data": {"wsUrl": "https://x", "callId": "c"}}),
        Reply(200, None),
    ],
)
async def test_a_broker_answering_garbage_is_retried(
    fake: FakeVideoSDK, http: httpx.AsyncClient, tmp_path: Path, reply: Reply
) -> None:
    async with fake_broker(reply) as url, running(harness_for(url, fake, http, tmp_path)) as h:
        await fake.wait_for(lambda: "bad session reply" in h.detail(), what="refusal")
        assert h.state() == "retry"


async def test_a_plaintext_ws_url_from_the_broker_is_refused_unconnected(
    fake: FakeVideoSDK, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    reply = Reply(200, {"data": {"wsUrl": "ws://192.0.2.10/videosdk?ref=vs_1", "callId": "c"}})
    connects: list[str] = []

    def recording_connect(url: str, **kw: Any) -> Any:
        connects.append(url)
        return ws_connect(url, **kw)

    async with fake_broker(reply) as url:
        h = harness_for(url, fake, http, tmp_path)
        async with running(h, connect=recording_connect):
            await h.wait_state("attention")
            assert "ws:// to 192.0.2.10 (not loopback) is refused" in h.detail()
    assert connects == []


async def test_a_hung_broker_is_bounded_by_open_timeout(
    fake: FakeVideoSDK, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    def hang(_r: Request) -> Reply:
        return Reply(200, {}, delay_s=3.0)

    async with fake_broker(hang) as url:
        h = harness_for(url, fake, http, tmp_path)
        async with running(h, open_timeout_s=0.3):
            t0 = time.monotonic()
            await fake.wait_for(lambda: "timed out" in h.detail(), 2.0, "a timeout")
            assert time.monotonic() - t0 < 1.5
            assert h.state() == "retry"


async def test_tls_to_the_broker_is_verified_with_security_ca_file(
    fake: FakeVideoSDK, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(cert_pem)
    cert.private_key_pem.write_to_path(key_pem)
    ca.cert_pem.write_to_path(ca_pem)
    enrolment = tmp_path / "devices.json"
    tokens = enrol_fleet(enrolment)
    app = create_app(
        Settings(enrolment=enrolment, api_base=fake.api_base),
        Account(api_key=API_KEY, secret=SECRET),
    )
    async with serve(app, ssl_certfile=str(cert_pem), ssl_keyfile=str(key_pem)) as base:
        url = base + "/v1/sessions"
        for ca_file, expect in (("", "retry"), (str(ca_pem), "up")):
            security = SecurityConfig(ca_file=ca_file)
            creds = write_creds(tmp_path / f"c{expect}", device_token=tokens["dev_12"])
            async with httpx.AsyncClient(verify=httpx_verify(security), trust_env=False) as http:
                h = Harness(fake, creds, http)
                h.cfg = VideoSDKConfig(room_id=ROOM, session_url=url)
                async with running(h, security=security):
                    await h.wait_state(expect)
                    if expect == "retry":  # the private CA is not trusted without ca_file
                        detail = h.detail()  # names the TLS problem and the fix
                        assert "session request failed: cannot connect to 127.0.0.1" in detail
                        assert "a private CA? set security.ca_file" in detail
    assert len(fake.started_sessions) == 1


async def test_a_broker_error_shows_its_reason_and_is_retried(
    rig: Rig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    rig.fake.jwt_secret = "someone-elses-secret-0123456789abcdef"  # the account is refused
    async with running(device(rig, http, tmp_path)) as h:
        await rig.fake.wait_for(lambda: "HTTP 502" in h.detail(), what="a 502")
        assert h.state() == "retry", "the broker's account is not the device's to fix"
        assert "VideoSDK refused the broker's account credentials (HTTP 401)" in h.detail()
        rig.fake.jwt_secret = SECRET
        await h.wait_up(within_s=5.0)
