"""Fixtures for the session broker: a real uvicorn on loopback in front of the fake VideoSDK."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from field_agent_broker.app import Account, Broker, Settings, create_app
from field_agent_broker.enrolment import enroll
from starlette.applications import Starlette

from agent.sandbox.videosdk import FakeVideoSDK

API_KEY = "broker-apikey-7f3a9c1e5b"
SECRET = "broker-secret-0123456789abcdef0123456789abcdef"  # ≥ 32 bytes for HS256
ROOM = "abcd-efgh-ijkl"
OTHER_ROOM = "zzzz-yyyy-xxxx"


def device_body(device_id: str = "dev_12", room: str = ROOM, **extra: Any) -> dict[str, Any]:
    """What the agent sends (agent.proto.videosdk.session_request)."""
    return {
        "roomId": room,
        "participant": {
            "id": device_id,
            "name": "Field Device",
            "metadata": {"deviceId": device_id},
        },
        **extra,
    }


class _InLoopServer(uvicorn.Server):
    """uvicorn in the test's event loop, leaving pytest's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: Starlette, **uvicorn_kw: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port) in this event loop; yield its
    base URL (https:// when ``ssl_certfile`` is given)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", **uvicorn_kw)
    server = _InLoopServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="broker-under-test")
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)  # uvicorn has no "started" event to wait on
        assert server.started, "uvicorn did not start"
        scheme = "https" if "ssl_certfile" in uvicorn_kw else "http"
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@dataclass
class Rig:
    url: str
    enrolment: Path
    broker: Broker
    fake: FakeVideoSDK
    tokens: dict[str, str] = field(default_factory=dict)
    http: httpx.AsyncClient | None = None

    @property
    def sessions_url(self) -> str:
        return self.url + "/v1/sessions"

    async def post(
        self, body: Any = None, *, device: str = "dev_12", token: str | None = None, **kw: Any
    ) -> httpx.Response:
        assert self.http is not None
        headers = kw.pop("headers", None)
        if headers is None:
            headers = {"Authorization": f"Bearer {token or self.tokens[device]}"}
        if body is None and "content" not in kw:
            body = device_body(device)
        if body is not None:
            kw["json"] = body
        return await self.http.post(self.sessions_url, headers=headers, **kw)

    def counter(self, outcome: str) -> float:
        value = self.broker.registry.get_sample_value(
            "field_agent_broker_session_requests_total", {"outcome": outcome}
        )
        return value or 0.0


def enrol_fleet(path: Path) -> dict[str, str]:
    return {
        "dev_12": enroll(path, "dev_12", (ROOM,)),
        "dev_13": enroll(path, "dev_13"),  # any room
    }


@contextlib.asynccontextmanager
async def broker_rig(tmp_path: Path, fake: FakeVideoSDK, **settings: Any) -> AsyncIterator[Rig]:
    enrolment = tmp_path / "devices.json"
    tokens = enrol_fleet(enrolment) if not enrolment.exists() else {}
    settings.setdefault("api_base", fake.api_base)
    settings.setdefault("enrolment_check_s", 0.0)
    app = create_app(
        Settings(enrolment=enrolment, **settings), Account(api_key=API_KEY, secret=SECRET)
    )
    async with serve(app) as url, httpx.AsyncClient(timeout=10, trust_env=False) as http:
        yield Rig(url, enrolment, app.state.broker, fake, tokens, http)


@pytest.fixture
async def fake() -> AsyncIterator[FakeVideoSDK]:
    async with FakeVideoSDK(token=None, jwt_secret=SECRET, api_key=API_KEY) as f:
        yield f


@pytest.fixture
async def rig(tmp_path: Path, fake: FakeVideoSDK) -> AsyncIterator[Rig]:
    async with broker_rig(tmp_path, fake) as r:
        yield r
