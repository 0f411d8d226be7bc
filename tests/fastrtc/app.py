"""Start and watch a real FastRTC app (``server.py`` beside this file) on loopback.

The app runs in a process of its own, with the Python of ``.venv-fastrtc`` (fastrtc
cannot share the agent's environment: see ``requirements.txt``), so the agent under
test sees a separate server, as on a real network. The tests read what the app saw
through its ``/test/...`` routes (see ``server.py``).

Where that Python is: ``$FASTRTC_PYTHON``, else ``<repo>/.venv-fastrtc/bin/python``
(``scripts/bootstrap`` makes it). Without it the tests are skipped, except under CI,
where a missing server must fail the run, not hide it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SERVER = HERE / "server.py"
START_TIMEOUT_S = 60.0  # importing fastrtc (gradio, librosa...) takes seconds on a busy box


def fastrtc_python() -> Path:
    """The interpreter that has fastrtc; skips when there is none, fails where it is required
    (`.ci/run` sets FIELD_AGENT_REQUIRE_FASTRTC=1; a CI=... environment counts too)."""
    python = Path(os.environ.get("FASTRTC_PYTHON") or REPO / ".venv-fastrtc" / "bin" / "python")
    if not python.exists():
        why = f"no fastrtc environment at {python} (run scripts/bootstrap --fastrtc)"
        if os.environ.get("FIELD_AGENT_REQUIRE_FASTRTC") or os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return python


@dataclass(frozen=True)
class Connection:
    """One WebSocket connection to the app, as the app saw it."""

    path: str
    events: tuple[str, ...]  # what the client sent: "start", "ping", "media", "stop", ...
    websocket_id: str
    media_messages: int
    received_samples: int  # audio its handler received, at the input rate
    closed: bool
    close_code: int | None


class FastRTCApp:
    """``with FastRTCApp() as app: ... app.url ...``; see the module docstring."""

    def __init__(
        self,
        *,
        input_rate: int = 48000,
        output_rate: int = 24000,
        concurrency_limit: int = 1,
        port: int = 0,
    ) -> None:
        self.input_rate = input_rate
        self.output_rate = output_rate
        self.concurrency_limit = concurrency_limit
        self.port = port  # 0: a free one, chosen by the app at start
        self._proc: subprocess.Popen[str] | None = None
        self._http = httpx.Client(timeout=5.0)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket/offer"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> FastRTCApp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        python = fastrtc_python()
        self._proc = subprocess.Popen(
            [str(python), str(SERVER), "--port", str(self.port),
             "--input-rate", str(self.input_rate), "--output-rate", str(self.output_rate),
             "--concurrency-limit", str(self.concurrency_limit)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )  # fmt: skip
        assert self._proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:  # exited
                break
            lines.append(line)
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                self._drain()
                return
        self.stop()
        raise RuntimeError("the fastrtc app did not start:\n" + "".join(lines[-30:]))

    def _drain(self) -> None:
        """Keep reading the app's output (so it never blocks on a full pipe); keep the tail."""
        import threading

        self.output: list[str] = []

        def pump() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                self.output.append(line)
                del self.output[:-200]

        threading.Thread(target=pump, name="fastrtc-app-output", daemon=True).start()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._http.close()
        self._http = httpx.Client(timeout=5.0)

    # -- observation ---------------------------------------------------------------------
    def connections(self) -> list[Connection]:
        rows = self._http.get(f"{self.base}/test/connections").json()
        return [
            Connection(
                r["path"],
                tuple(r["events"]),
                r["websocket_id"],
                r["media_messages"],
                r["received_samples"],
                r["closed"],
                r["close_code"],
            )
            for r in rows
        ]

    def started(self) -> list[Connection]:
        return [c for c in self.connections() if "start" in c.events]

    def session(self, websocket_id: str) -> Connection:
        for c in self.connections():
            if c.websocket_id == websocket_id:
                return c
        raise AssertionError(f"the app saw no session {websocket_id!r}")

    def received(self, websocket_id: str) -> np.ndarray:
        """Audio the session's handler received, int16 at the input rate."""
        body = self._http.get(f"{self.base}/test/received/{websocket_id}").json()
        return np.frombuffer(base64.b64decode(body["pcm"]), dtype="<i2").astype(np.int16)

    def arrivals(self, websocket_id: str) -> list[tuple[int, float]]:
        """(first sample index, time.monotonic() of arrival) of each chunk the session's
        handler received: the app's clock is this machine's monotonic clock."""
        body = self._http.get(f"{self.base}/test/received/{websocket_id}").json()
        return [(int(i), float(t)) for i, t in body["chunks"]]

    def send(self, websocket_id: str, kind: str, data: Any) -> str:
        """Make the session's handler send ``create_message(kind, data)``; returns the text."""
        return self._post_send(websocket_id, {"type": kind, "data": data})

    def send_text(self, websocket_id: str, text: str | dict[str, Any]) -> str:
        """Make the session's handler send ``text`` verbatim (garbage, other shapes)."""
        raw = text if isinstance(text, str) else json.dumps(text)
        return self._post_send(websocket_id, {"text": raw})

    def _post_send(self, websocket_id: str, body: dict[str, Any]) -> str:
        r = self._http.post(f"{self.base}/test/send/{websocket_id}", json=body)
        r.raise_for_status()
        sent: str = r.json()["sent"]
        return sent

    def reset(self, within_s: float = 10.0) -> None:
        """Wait until no session is live (the seat is free), then forget the recordings."""
        self.wait(lambda: all(c.closed for c in self.connections()), within_s, "no live session")
        self._http.post(f"{self.base}/test/reset")

    def wait(self, pred: Callable[[], Any], within_s: float = 10.0, what: str = "") -> None:
        """Poll ``pred`` until true, else fail naming ``what``."""
        deadline = time.monotonic() + within_s
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within_s} s waiting for {what or pred}")
            time.sleep(0.05)

    async def await_(self, pred: Callable[[], Any], within_s: float = 10.0, what: str = "") -> None:
        """:meth:`wait` for async tests: ``pred`` (it may ask the app) runs in a thread,
        so the test's event loop (and the link in it) never blocks."""
        deadline = time.monotonic() + within_s
        while not await asyncio.to_thread(pred):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within_s} s waiting for {what or pred}")
            await asyncio.sleep(0.05)
