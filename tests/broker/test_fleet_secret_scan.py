"""No credential in either process's logs: the broker (a real ``field-agent-broker serve``
subprocess, JSON lines on stderr, DEBUG) and the agent's link (every log record, DEBUG),
through sessions, reconnects, a wrong token, an account refusal and a revocation."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from field_agent_broker.enrolment import enroll, revoke

from agent.config import DeviceConfig, VideoSDKConfig
from agent.sandbox.videosdk import FakeVideoSDK
from tests.videosdk.conftest import Harness, write_creds

from .conftest import API_KEY, ROOM, SECRET

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def broker_process(tmp_path: Path, api_base: str, enrolment: Path) -> Iterator[tuple[str, Path]]:
    creds = tmp_path / "broker-creds"
    creds.mkdir()
    for name, value in (("videosdk-api-key", API_KEY), ("videosdk-secret", SECRET)):
        (creds / name).write_text(value + "\n")
        os.chmod(creds / name, 0o600)
    port = free_port()
    log = tmp_path / "broker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOSDK_", "CREDENTIALS_"))}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "field_agent_broker", "--enrolment", str(enrolment),
                "serve", "--listen", f"127.0.0.1:{port}", "--api-base", api_base,
                "--credentials", str(creds), "--log-level", "DEBUG", "--upstream-timeout", "2",
            ],
            stderr=err,
            stdout=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the broker did not start"
            time.sleep(0.05)
        yield url, log
    finally:
        proc.terminate()
        # uvicorn shuts down cleanly, then re-raises the SIGTERM it caught (systemd: success)
        assert proc.wait(10) in (0, -signal.SIGTERM), log.read_text()[-2000:]


async def test_no_credential_in_the_broker_s_or_the_agent_s_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    enrolment = tmp_path / "devices.json"
    tokens = {d: enroll(enrolment, d, (ROOM,)) for d in ("dev_12", "dev_13")}
    async with FakeVideoSDK(token=None, jwt_secret=SECRET, api_key=API_KEY) as fake:
        with broker_process(tmp_path, fake.api_base, enrolment) as (url, log):
            async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
                creds = write_creds(tmp_path / "dev", device_token=tokens["dev_12"])
                h = Harness(fake, creds, http)
                h.cfg = VideoSDKConfig(room_id=ROOM, session_url=url + "/v1/sessions")
                h.device = DeviceConfig(id="dev_12")
                h.start()
                try:
                    await h.wait_up()
                    await h.feed(3)
                    await fake.stop_ws()
                    await fake.start_ws()
                    await h.wait_up(sessions=2)
                    # another device's token, then the account refused by VideoSDK
                    wrong = await http.post(
                        url + "/v1/sessions",
                        json={"roomId": ROOM, "participant": {"metadata": {"deviceId": "dev_12"}}},
                        headers={"Authorization": f"Bearer {tokens['dev_13']}"},
                    )
                    fake.jwt_secret = "rotated-" + SECRET
                    await fake.drop(1011)
                    await fake.wait_for(lambda: fake.auth_failures, what="account refused")
                    fake.jwt_secret = SECRET
                    await h.wait_up(sessions=3, within_s=10)
                    revoke(enrolment, "dev_12")
                    await fake.drop(1011)
                    await h.wait_state("attention", within_s=10)
                    assert "not enrolled or revoked" in h.detail()
                finally:
                    await h.stop()
        assert wrong.status_code == 401
        jwts = {r.headers["authorization"] for r in fake.rest_requests}
        refs = {s.ref for s in fake.sessions}
    broker_lines = [json.loads(line) for line in log.read_text().splitlines()]
    events = [(r.get("event"), r.get("outcome")) for r in broker_lines]
    assert events.count(("session", "created")) == 3, events
    assert ("session", "bad_token") in events and ("session", "upstream_auth") in events
    assert ("session", "revoked") in events

    secrets = {API_KEY, SECRET, *tokens.values(), *jwts, *refs}
    secrets |= {seg for t in jwts for seg in t.split(".")[1:]}  # a JWT's payload, signature
    texts = [("broker", line) for line in log.read_text().splitlines()]
    texts += [
        (f"agent {r.name}", r.getMessage() + repr(r.__dict__))
        for r in caplog.records
        if not r.name.startswith("agent.sandbox")
    ]
    texts.append(("status", json.dumps(h.status.to_json())))
    assert len(texts) > 20
    assert [s for s in secrets if s in f"canary {SECRET}."], "the scan finds a planted secret"
    found = [f"{where}: {s[:6]}...: {t[:160]!r}" for s in secrets for where, t in texts if s in t]
    assert found == [], "\n".join(found[:10])
