"""``python -m agent.sandbox.serve``: the sandbox servers the VM tier runs inside the guest.

Host tier (fast): the process is started as the guest's unit starts it, and its control
API is driven the way ``image/vm/checks.py`` drives it, against a client speaking the
VideoSDK ingest protocol.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import REPO

TOKEN = "serve-test-token-0123"
ORGO_KEY = "sk_orgo_serve_test_4567"


def _free_base_port() -> int:
    """A base port P with P..P+4 free on 127.0.0.1."""
    for _ in range(50):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for port in range(base, base + 5):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no 5 free consecutive ports")


class Serve:
    def __init__(self, base: int) -> None:
        self.base = base
        self.http = httpx.Client(timeout=10)

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"http://127.0.0.1:{self.base}{path}"
        r = self.http.get(url) if body is None else self.http.post(url, json=body)
        r.raise_for_status()
        return r.json()

    def session(self) -> str:
        """A VideoSDK ingest session as the agent makes one: the ws URL."""
        r = self.http.post(
            f"http://127.0.0.1:{self.base + 1}/v2/ingest/sessions",
            headers={"Authorization": TOKEN},
            json={"roomId": "room-1", "participant": {"id": "dev_1", "name": "Dev"}},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["data"]["wsUrl"])


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "key").write_text(ORGO_KEY + "\n")
    base = _free_base_port()
    args = ["--base-port", str(base), "--videosdk-token-file", str(tmp_path / "token")]
    args += ["--orgo-key-file", str(tmp_path / "key")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.sandbox.serve", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    s = Serve(base)
    deadline = time.monotonic() + 20
    while True:
        try:
            s.control("/state")
            break
        except httpx.HTTPError:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the sandbox did not come up in 20 s"
            time.sleep(0.1)
    yield s
    proc.terminate()
    out = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0, out
    assert TOKEN not in out and ORGO_KEY not in out, out


def test_uplink_frames_come_back_exactly_through_the_control_api(serve: Serve) -> None:
    t0 = time.monotonic()
    pcm = [np.full(160, i * 100, dtype="<i2").tobytes() for i in range(5)]
    with connect(serve.session()) as ws:
        ws.send(json.dumps({"event": "start"}))
        for p in pcm:
            ws.send(json.dumps({"event": "media", "payload": base64.b64encode(p).decode()}))
        deadline = time.monotonic() + 5
        while len(serve.control(f"/videosdk/frames?since={t0}")["frames"]) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        state = serve.control("/state")
    frames = serve.control(f"/videosdk/frames?since={t0}")["frames"]
    assert [base64.b64decode(f["pcm"]) for f in frames] == pcm
    assert all(t0 <= f["t"] <= time.monotonic() for f in frames)  # the guest-wide clock
    assert state["videosdk"]["active"] == 1 and state["videosdk"]["auth_failures"] == []
    assert serve.control(f"/videosdk/frames?since={time.monotonic()}")["frames"] == []


def test_room_audio_is_sent_in_20_ms_frames_paced(serve: Serve) -> None:
    pcm = np.arange(1600, dtype="<i2").tobytes()  # 0.2 s at 8 kHz: ten frames
    with connect(serve.session()) as ws:
        ws.send(json.dumps({"event": "start"}))
        assert json.loads(ws.recv(timeout=5))["event"] == "meeting-joined"
        reply = serve.control("/videosdk/room-audio", {"pcm": base64.b64encode(pcm).decode()})
        got, times = b"", []
        while len(got) < len(pcm):
            event = json.loads(ws.recv(timeout=5))
            assert event["event"] == "media"
            got += base64.b64decode(event["payload"])
            times.append(time.monotonic())
    assert reply == {"sessions": 1, "frames": 10}
    assert got == pcm
    assert len(times) == 10
    assert times[-1] - times[0] >= 0.09  # paced (0.18 s nominal), not one burst


def test_stop_and_start_the_videosdk_server(serve: Serve) -> None:
    with connect(serve.session()) as ws:
        ws.send(json.dumps({"event": "start"}))
        ws.recv(timeout=5)
        assert serve.control("/videosdk/stop", {}) == {"up": False}
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    with pytest.raises(OSError):  # the port is closed: connection refused
        connect(serve.session(), open_timeout=5)
    assert serve.control("/state")["videosdk"]["up"] is False
    assert serve.control("/videosdk/start", {}) == {"up": True}
    with connect(serve.session()) as ws:
        ws.send(json.dumps({"event": "start"}))
        assert json.loads(ws.recv(timeout=5))["event"] == "meeting-joined"


def test_wrong_token_is_refused_and_orgo_password_is_served(serve: Serve) -> None:
    r = serve.http.post(
        f"http://127.0.0.1:{serve.base + 1}/v2/ingest/sessions",
        headers={"Authorization": "wrong"},
        json={"roomId": "room-1"},
    )
    assert r.status_code == 401
    assert serve.control("/state")["videosdk"]["auth_failures"] == [401]
    password = serve.control("/orgo/password")["password"]
    r = serve.http.get(
        f"http://127.0.0.1:{serve.base + 3}/api/computers/a3bb189e-8bf9-3888-9912-ace4e6543002"
        "/vnc-password",
        headers={"Authorization": f"Bearer {ORGO_KEY}"},
    )
    assert r.json() == {"password": password}
    with pytest.raises(InvalidStatus):  # a bad ref never gets a WebSocket
        connect(f"ws://127.0.0.1:{serve.base + 2}/videosdk?ref=nope", open_timeout=5)
