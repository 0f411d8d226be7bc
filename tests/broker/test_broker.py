"""The session broker over real HTTP (uvicorn on loopback) against the fake VideoSDK."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from field_agent_broker.app import Account, jwt_claims
from field_agent_broker.enrolment import EnrolmentError, enroll, load, revoke

from agent.proto import videosdk as proto
from agent.sandbox.rest import Reply, RestServer
from agent.sandbox.videosdk import FakeVideoSDK

from .conftest import API_KEY, OTHER_ROOM, ROOM, SECRET, Rig, broker_rig, device_body

BROKER_CLI = [sys.executable, "-m", "field_agent_broker"]


# -- the good path ----------------------------------------------------------------------


async def test_an_enrolled_device_gets_videosdk_s_reply_unchanged(rig: Rig) -> None:
    r = await rig.post(device_body("dev_12", region="us002"))
    assert r.status_code == 200, r.text
    fake = rig.fake
    assert len(fake.sessions) == 1
    s = fake.sessions[0]
    assert (s.room_id, s.participant_id, s.metadata, s.region) == (
        ROOM,
        "dev_12",
        {"deviceId": "dev_12"},
        "us002",
    )
    # the very body VideoSDK sent, which the agent's own parser accepts
    assert r.json() == {
        "message": "Ingest session created",
        "data": {"wsUrl": r.json()["data"]["wsUrl"], "callId": s.call_id, "expiresIn": 90},
    }
    session = proto.parse_session_response(r.json(), now=0.0)
    assert session.ws_url.endswith(f"ref={s.ref}")
    # VideoSDK got a crawler JWT minted from the account, raw (no "Bearer"), not the device's
    sent = fake.rest_requests[0].headers["authorization"]
    claims = jwt.decode(sent, SECRET, algorithms=["HS256"])
    assert claims["apikey"] == API_KEY and claims["roles"] == ["crawler"]
    assert rig.tokens["dev_12"] not in sent
    assert rig.counter("created") == 1


def test_the_broker_mints_the_same_claims_as_the_agent() -> None:
    assert jwt_claims(API_KEY, now=1000.0, ttl_s=300.0) == proto.jwt_claims(
        API_KEY, now=1000.0, ttl_s=300.0
    )
    assert repr(Account(api_key=API_KEY, secret=SECRET)) == "Account(***)"


async def test_a_provided_account_token_is_used_as_is(tmp_path: Path) -> None:
    async with FakeVideoSDK(token="account-token-0123456789") as fake:
        enrolment = tmp_path / "devices.json"
        token = enroll(enrolment, "dev_12")
        from field_agent_broker.app import Settings, create_app

        from .conftest import serve

        app = create_app(
            Settings(enrolment=enrolment, api_base=fake.api_base),
            Account(token="account-token-0123456789"),
        )
        async with serve(app) as url, httpx.AsyncClient(trust_env=False) as http:
            r = await http.post(
                url + "/v1/sessions",
                json=device_body(),
                headers={"Authorization": f"Bearer {token}"},
            )
        assert r.status_code == 200, r.text
        assert fake.rest_requests[0].headers["authorization"] == "account-token-0123456789"


# -- bad input ------------------------------------------------------------------------


async def test_an_unknown_device_is_401(rig: Rig) -> None:
    r = await rig.post(device_body("dev_99"), token=rig.tokens["dev_12"])
    assert (r.status_code, r.json()) == (401, {"error": "device not enrolled"})
    assert rig.fake.rest_requests == []


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Basic dXNlcjpwYXNz", "fad_raw-token-without-scheme"]
)
async def test_no_bearer_token_is_401(rig: Rig, header: str) -> None:
    r = await rig.post(headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and "missing device token" in r.json()["error"]


async def test_another_device_s_token_is_401(rig: Rig) -> None:
    r = await rig.post(device_body("dev_12"), token=rig.tokens["dev_13"])
    assert (r.status_code, r.json()) == (401, {"error": "bad device token"})
    assert rig.fake.rest_requests == []


async def test_a_revoked_device_is_403_from_the_next_request(rig: Rig) -> None:
    assert (await rig.post()).status_code == 200
    revoke(rig.enrolment, "dev_12")  # the file changes under the running broker
    r = await rig.post()
    assert (r.status_code, r.json()) == (403, {"error": "device revoked"})
    assert (await rig.post(device="dev_13")).status_code == 200, "other devices unaffected"
    assert len(rig.fake.sessions) == 2
    assert rig.counter("revoked") == 1


async def test_a_room_not_allowed_is_403_with_the_reason(rig: Rig) -> None:
    r = await rig.post(device_body("dev_12", room=OTHER_ROOM))
    assert r.status_code == 403
    assert r.json() == {"error": f"room {OTHER_ROOM!r} is not allowed for this device"}
    assert (await rig.post(device_body("dev_13", room=OTHER_ROOM), device="dev_13")).is_success
    assert [s.room_id for s in rig.fake.sessions] == [OTHER_ROOM]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"participant": {"metadata": {"deviceId": "dev_12"}}}', "roomId"),
        (json.dumps({"roomId": ROOM}).encode(), "participant must be an object"),
        (
            json.dumps({"roomId": ROOM, "participant": {"metadata": {"deviceId": 12}}}).encode(),
            "deviceId must be a non-empty string",
        ),
        (
            json.dumps(
                {
                    "roomId": ROOM,
                    "participant": {"id": "dev_13", "metadata": {"deviceId": "dev_12"}},
                }
            ).encode(),
            "participant.id must be the device id",
        ),
        (json.dumps(device_body(region=7)).encode(), "region must be a string"),
        (b"[" * 100_00, "body larger than"),  # deeply nested: refused by size first
    ],
)
async def test_a_malformed_body_is_400_with_the_reason(
    rig: Rig, content: bytes, reason: str
) -> None:
    r = await rig.post(
        content=content,
        headers={
            "Authorization": f"Bearer {rig.tokens['dev_12']}",
            "Content-Type": "application/json",
        },
    )
    assert r.status_code in (400, 413)
    assert reason in r.json()["error"]
    assert rig.fake.rest_requests == []


async def test_an_oversize_body_is_413_declared_or_streamed(rig: Rig) -> None:
    big = json.dumps(device_body(pad="x" * 20_000)).encode()
    r = await rig.post(content=big, headers={"Authorization": f"Bearer {rig.tokens['dev_12']}"})
    assert (r.status_code, r.json()) == (413, {"error": "body larger than 8192 bytes"})

    async def trickle() -> object:  # chunked: no Content-Length to go by
        for _ in range(100):
            yield b" " * 1024

    r = await rig.post(
        content=trickle(), headers={"Authorization": f"Bearer {rig.tokens['dev_12']}"}
    )
    assert r.status_code == 413
    assert rig.counter("too_large") == 2


async def test_a_flood_from_one_device_is_429_with_retry_after(rig: Rig) -> None:
    answers = [await rig.post() for _ in range(8)]
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * 5 + [429] * 3, statuses  # burst 5, then 1 per 5 s
    refused = answers[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 5
    assert "too many session requests" in refused.json()["error"]
    assert (await rig.post(device="dev_13")).status_code == 200, "only that device is limited"
    assert len(rig.fake.sessions) == 6


async def test_a_flood_with_wrong_tokens_costs_no_scrypt_after_the_burst(rig: Rig) -> None:
    t0 = time.perf_counter()
    statuses = [(await rig.post(token="fad_wrong")).status_code for _ in range(30)]
    assert statuses == [401] * 5 + [429] * 25
    assert time.perf_counter() - t0 < 10  # 5 scrypt checks, not 30 (generous bound)


async def test_videosdk_down_is_502_with_a_reason(tmp_path: Path, fake: FakeVideoSDK) -> None:
    with socket.socket() as sock:  # bound, then closed: nothing listens on its port
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with broker_rig(tmp_path, fake, api_base=dead_url) as rig:
        r = await rig.post()
    assert r.status_code == 502
    assert r.json() == {"error": "VideoSDK unreachable (ConnectError)"}


async def test_videosdk_slow_is_bounded_504(tmp_path: Path, fake: FakeVideoSDK) -> None:
    fake.rest_delay_s = 3.0
    async with broker_rig(tmp_path, fake, upstream_timeout_s=0.5) as rig:
        t0 = time.monotonic()
        r = await rig.post()
        took = time.monotonic() - t0
    assert r.status_code == 504
    assert r.json() == {"error": "VideoSDK did not answer within 0.5 s"}
    assert took < 2.5


@pytest.mark.parametrize(
    ("status", "expect", "error"),
    [
        (500, 502, "VideoSDK error (HTTP 500)"),
        (503, 502, "VideoSDK error (HTTP 503)"),
        (400, 400, "VideoSDK refused the request (HTTP 400): forced by the test"),
    ],
)
async def test_videosdk_errors_are_mapped(rig: Rig, status: int, expect: int, error: str) -> None:
    rig.fake.rest_status = status
    r = await rig.post()
    assert (r.status_code, r.json()) == (expect, {"error": error})


async def test_videosdk_refusing_the_account_is_502_not_the_device_s_fault(rig: Rig) -> None:
    rig.fake.jwt_secret = "someone-elses-secret-0123456789abcdef"
    r = await rig.post()
    assert r.status_code == 502
    assert r.json() == {"error": "VideoSDK refused the broker's account credentials (HTTP 401)"}


async def test_videosdk_garbage_is_502(tmp_path: Path, fake: FakeVideoSDK) -> None:
    garbage = RestServer()
    garbage.route("POST", r"/v2/ingest/sessions", lambda _r: Reply(200, {"data": "nope"}))
    garbage.start()
    try:
        async with broker_rig(tmp_path, fake, api_base=garbage.url) as rig:
            r = await rig.post()
    finally:
        await asyncio.to_thread(garbage.stop)
    assert (r.status_code, r.json()) == (502, {"error": "VideoSDK sent a malformed reply"})


# -- the enrolment file -----------------------------------------------------------------


async def test_a_broken_enrolment_file_keeps_the_last_good_one(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.enrolment.write_text('{"devices": ')  # a bad edit (or half a copy)
    r = await rig.post()
    assert r.status_code == 200, "the last good file still answers"
    assert any("not reloaded" in rec.getMessage() for rec in caplog.records)
    value = rig.broker.registry.get_sample_value(
        "field_agent_broker_enrolment_reloads_total", {"result": "refused"}
    )
    assert value == 1
    token = enroll(rig.enrolment.with_name("fresh.json"), "dev_14")
    os.replace(rig.enrolment.with_name("fresh.json"), rig.enrolment)  # fixed: only dev_14 now
    assert (await rig.post(device_body("dev_14"), token=token)).status_code == 200
    assert (await rig.post()).status_code == 401


def test_enroll_stores_only_a_salted_hash_and_revoke_keeps_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    out = subprocess.run(
        [*BROKER_CLI, "--enrolment", str(path), "enroll", "dev_12", "--rooms", ROOM, OTHER_ROOM],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("fad_") and len(token) >= 40
    assert "shown once" in out.stderr
    text = path.read_text()
    assert token not in text and token[4:] not in text
    device = load(path)["dev_12"]
    assert device.rooms == (ROOM, OTHER_ROOM) and device.enabled
    again = enroll(path, "dev_13")
    assert load(path)["dev_13"].token_hash != device.token_hash and again != token
    assert path.stat().st_mode & 0o777 == 0o640

    out = subprocess.run(
        [*BROKER_CLI, "--enrolment", str(path), "revoke", "dev_12"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert not load(path)["dev_12"].enabled
    listed = subprocess.run(
        [*BROKER_CLI, "--enrolment", str(path), "list"], capture_output=True, text=True
    ).stdout
    assert "dev_12\trevoked" in listed and "dev_13\tenabled\t*" in listed
    assert token not in listed
    out = subprocess.run(
        [*BROKER_CLI, "--enrolment", str(path), "revoke", "dev_99"], capture_output=True, text=True
    )
    assert out.returncode == 1 and "not enrolled" in out.stderr
    with pytest.raises(EnrolmentError, match="device id"):
        enroll(path, "../etc")


def test_serve_refuses_missing_or_mixed_account_credentials(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    enroll(path, "dev_12")
    creds = tmp_path / "creds"
    creds.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOSDK_", "CREDENTIALS_"))}

    def serve() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *BROKER_CLI,
                "--enrolment",
                str(path),
                "serve",
                "--credentials",
                str(creds),
                "--listen",
                "127.0.0.1:1",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )

    out = serve()
    assert out.returncode == 78 and "need videosdk-token, or videosdk-api-key" in out.stderr
    (creds / "videosdk-token").write_text("tok-0123456789\n")
    (creds / "videosdk-secret").write_text(SECRET + "\n")
    out = serve()
    assert out.returncode == 78 and "keep exactly one kind" in out.stderr
    assert SECRET not in out.stderr and "tok-0123456789" not in out.stderr


# -- operations -------------------------------------------------------------------------


async def test_healthz_and_metrics(rig: Rig) -> None:
    assert rig.http is not None
    await rig.post()
    await rig.post(device_body("dev_99"))
    h = await rig.http.get(rig.url + "/healthz")
    assert (h.status_code, h.json()) == (200, {"status": "ok", "devices": 2})
    m = (await rig.http.get(rig.url + "/metrics")).text
    assert 'field_agent_broker_session_requests_total{outcome="created"} 1.0' in m
    assert 'field_agent_broker_session_requests_total{outcome="unknown_device"} 1.0' in m
    assert "field_agent_broker_enrolled_devices 2.0" in m
    assert "field_agent_broker_upstream_seconds_count 1.0" in m


async def test_no_credential_in_any_response_or_log_record(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [await rig.post(), await rig.post(device_body("dev_99"))]
    answers.append(await rig.post(token="fad_wrong-" + rig.tokens["dev_12"][4:20]))
    answers.append(await rig.post(device_body("dev_12", room=OTHER_ROOM)))
    rig.fake.jwt_secret = "rotated-" + SECRET  # the account is refused: 502, logged
    answers.append(await rig.post(device="dev_13"))
    rig.fake.rest_status = 500
    rig.fake.jwt_secret = SECRET
    answers.append(await rig.post(device="dev_13"))
    revoke(rig.enrolment, "dev_13")
    answers.append(await rig.post(device="dev_13"))
    assert [a.status_code for a in answers] == [200, 401, 401, 403, 502, 502, 403]

    jwts = {r.headers["authorization"] for r in rig.fake.rest_requests}
    secrets = {API_KEY, SECRET, *rig.tokens.values(), *jwts}
    secrets |= {seg for t in jwts for seg in t.split(".")[1:]}  # payload, signature
    ours = [r for r in caplog.records if not r.name.startswith("agent.sandbox")]
    assert len(ours) >= 7
    texts = [r.getMessage() + repr(r.__dict__) for r in ours]
    texts += [a.text + repr(dict(a.headers)) for a in answers]
    texts.append((await rig.http.get(rig.url + "/metrics")).text)  # type: ignore[union-attr]
    found = [(s[:6], t[:120]) for s in secrets for t in texts if s in t]
    assert found == []


async def test_a_trickling_body_is_cut_off(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    import field_agent_broker.app as app_module

    monkeypatch.setattr(app_module, "BODY_TIMEOUT_S", 0.3)

    async def trickle() -> object:
        yield b'{"roomId": '
        await asyncio.sleep(2.0)
        yield b'"x"}'

    r = await rig.post(
        content=trickle(), headers={"Authorization": f"Bearer {rig.tokens['dev_12']}"}
    )
    # (the whole body would have been a 400: the cut-off, not the content, answered)
    assert (r.status_code, r.json()) == (408, {"error": "body not sent within 0.3 s"})
