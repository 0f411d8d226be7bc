"""The fake VideoSDK enforces what the docs say (so the link tests mean something)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.links.videosdk_auth import mint_jwt
from agent.sandbox.videosdk import FakeVideoSDK
from tests.support import wait_until

from .conftest import API_KEY, ROOM, SECRET, TOKEN


async def create(
    http: httpx.AsyncClient, fake: FakeVideoSDK, auth: str | None = TOKEN, **body: Any
) -> httpx.Response:
    headers = {} if auth is None else {"Authorization": auth}
    payload = {"roomId": ROOM, **body}
    return await http.post(f"{fake.api_base}/v2/ingest/sessions", json=payload, headers=headers)


async def session_url(http: httpx.AsyncClient, fake: FakeVideoSDK, **body: Any) -> str:
    reply = await create(http, fake, **body)
    assert reply.status_code == 200, reply.text
    url: str = reply.json()["data"]["wsUrl"]
    return url


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(await ws.recv())
    return msg


async def test_session_creation_requires_a_valid_authorization(
    fake: FakeVideoSDK, http: httpx.AsyncClient
) -> None:
    assert (await create(http, fake, auth=None)).status_code == 401
    assert (await create(http, fake, auth="wrong")).status_code == 401
    raw = await create(http, fake, auth=TOKEN)
    bearer = await create(http, fake, auth=f"Bearer {TOKEN}")
    assert raw.status_code == bearer.status_code == 200
    data = raw.json()
    assert data["message"] == "Ingest session created"
    assert data["data"]["expiresIn"] == 90
    assert data["data"]["wsUrl"].startswith("ws://127.0.0.1:")
    assert "?ref=vs_" in data["data"]["wsUrl"]
    assert [s.auth_scheme for s in fake.sessions] == ["raw", "bearer"]
    assert (await create(http, fake, roomId="")).status_code == 400


async def test_jwts_are_verified_with_the_secret(http: httpx.AsyncClient) -> None:
    async with FakeVideoSDK(token=None, jwt_secret=SECRET, api_key=API_KEY) as fake:
        good = mint_jwt(API_KEY, SECRET, now=time.time())
        assert (await create(http, fake, auth=good)).status_code == 200
        forged = mint_jwt(API_KEY, "x" * 40, now=time.time())
        assert (await create(http, fake, auth=forged)).status_code == 401
        expired = mint_jwt(API_KEY, SECRET, now=time.time() - 600)
        assert (await create(http, fake, auth=expired)).status_code == 401
        no_role = jwt.encode(
            {"apikey": API_KEY, "permissions": ["allow_join"], "exp": int(time.time()) + 60},
            SECRET,
            algorithm="HS256",
        )
        assert (await create(http, fake, auth=no_role)).status_code == 403
        assert fake.auth_failures == [401, 401, 403]


async def test_ref_is_single_use_second_handshake_gets_403(
    fake: FakeVideoSDK, http: httpx.AsyncClient
) -> None:
    url = await session_url(http, fake)
    async with connect(url) as ws:
        await ws.send(json.dumps({"event": "start"}))
        assert (await recv_json(ws))["event"] == "meeting-joined"
    with pytest.raises(InvalidStatus) as info:
        async with connect(url):
            pass
    assert info.value.response.status_code == 403
    assert fake.handshake_refusals[-1][1:] == (403, "ref already used")
    with pytest.raises(InvalidStatus):
        async with connect(url.replace("ref=vs_", "ref=vs_0")):  # an altered ref
            pass


async def test_no_start_within_the_timeout_closes_1008(http: httpx.AsyncClient) -> None:
    async with FakeVideoSDK(token=TOKEN, start_timeout_s=0.3) as fake:
        url = await session_url(http, fake)
        async with connect(url) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "start timeout")


async def test_a_session_started_after_90_s_is_closed(http: httpx.AsyncClient) -> None:
    now = [1000.0]
    async with FakeVideoSDK(token=TOKEN, clock=lambda: now[0]) as fake:
        url = await session_url(http, fake)
        now[0] += 91
        async with connect(url) as ws:
            await ws.send(json.dumps({"event": "start"}))
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert fake.started_sessions == []


async def test_echo_and_topic_messages_between_two_participants(http: httpx.AsyncClient) -> None:
    async with FakeVideoSDK(token=TOKEN, echo=True, announce_join=False) as fake:
        a_url = await session_url(http, fake, participant={"id": "a", "name": "Alice"})
        b_url = await session_url(http, fake, participant={"id": "b", "name": "Bob"})
        async with connect(a_url) as a, connect(b_url) as b:
            for ws in (a, b):
                await ws.send(json.dumps({"event": "start"}))
                await ws.send(json.dumps({"event": "subscribe", "topic": "CHAT"}))
            await wait_until(lambda: all(s.subscriptions == {"CHAT"} for s in fake.sessions))
            await a.send(json.dumps({"event": "message", "topic": "CHAT", "data": {"hi": 1}}))
            got = await recv_json(b)
            assert got["event"] == "message" and got["topic"] == "CHAT"
            assert json.loads(got["data"]["message"]) == {"hi": 1}  # JSON values arrive serialised
            assert (got["data"]["senderId"], got["data"]["senderName"]) == ("a", "Alice")
            assert got["data"]["timestamp"].endswith("Z") and got["data"]["id"]

            pcm = bytes(range(160)) * 2
            await a.send(json.dumps({"event": "media", "payload": base64.b64encode(pcm).decode()}))
            echoed = await recv_json(a)  # the next thing A hears is its echo, not its own message
            assert echoed["event"] == "media" and base64.b64decode(echoed["payload"]) == pcm
        assert [p.topic for p in fake.published] == ["CHAT"]
        assert fake.frames[0].pcm == pcm
        assert fake.violations == []


async def test_server_can_die_and_come_back_on_the_same_port(
    fake: FakeVideoSDK, http: httpx.AsyncClient
) -> None:
    port = fake.ws_port
    url = await session_url(http, fake)
    async with connect(url) as ws:
        await ws.send(json.dumps({"event": "start"}))
        await wait_until(lambda: fake.active())
        await fake.stop_ws()
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    with pytest.raises(OSError):
        async with connect(await session_url(http, fake), open_timeout=1):
            pass
    await fake.start_ws()
    assert fake.ws_port == port
    async with connect(await session_url(http, fake)) as ws:
        await ws.send(json.dumps({"event": "start"}))
        assert (await recv_json(ws))["event"] == "meeting-joined"


async def test_stop_then_client_close_is_recorded(
    fake: FakeVideoSDK, http: httpx.AsyncClient
) -> None:
    async with connect(await session_url(http, fake)) as ws:
        await ws.send(json.dumps({"event": "start"}))
        await ws.send(json.dumps({"event": "stop"}))
        await ws.close(1000, "bye")
    await wait_until(lambda: fake.sessions[0].client_close_code is not None)
    s = fake.sessions[0]
    assert s.stopped and s.event_names == ["start", "stop"]
    assert s.client_close_code == 1000
