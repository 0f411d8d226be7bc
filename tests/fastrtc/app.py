"""A real FastRTC app on loopback: ``fastrtc.Stream`` (send-receive audio) with an echo
handler, mounted on a FastAPI app and served by uvicorn on 127.0.0.1:<random port> in
a thread of its own (its own event loop, so a test's loop and a subprocess agent see
a server that behaves like a separate one).

Nothing here is faked: the wire is fastrtc's own ``WebSocketHandler`` (mu-law codec,
``concurrency_limit`` refusal, ping/pong, stop). What the tests observe comes from
two places that leave fastrtc untouched:

- an ASGI wrapper that records every WebSocket message each connection receives
  (``start``/``media``/``ping``/``stop``, in order) and how it ended;
- the echo handler, which keeps the audio it received (at the handler's input rate)
  and gives tests its data channel to send app messages (``log``, ``send_input``...)
  exactly as fastrtc's own handlers do (``fastrtc.utils.create_message``).

fastrtc is big (gradio, librosa, aiortc...): it is imported by :func:`load_fastrtc`
only, so collecting the test modules stays cheap and ``-m 'not fastrtc'`` skips it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import pytest

_fastrtc: ModuleType | None = None


def load_fastrtc() -> ModuleType:
    """Import fastrtc (offline, quietly). Skips the test when it is not installed,
    except under CI, where a missing fastrtc must fail the run, not hide it."""
    global _fastrtc
    if _fastrtc is None:
        # gradio (a fastrtc dependency) must not phone home; the network is closed anyway.
        for key, value in {
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }.items():
            os.environ.setdefault(key, value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fastrtc imports audioop
            if os.environ.get("CI"):
                _fastrtc = importlib.import_module("fastrtc")
            else:
                _fastrtc = pytest.importorskip("fastrtc", reason="pip install -e '.[test]'")
    return _fastrtc


@dataclass
class Connection:
    """One WebSocket connection to ``/websocket/offer``, as the server saw it."""

    events: list[str] = field(default_factory=list)  # "start", "media", "ping", "stop", ...
    websocket_id: str = ""
    media_messages: int = 0
    first_media_at: float | None = None  # time.monotonic()
    closed: bool = False
    close_code: int | None = None  # the close code the *client* sent, if it sent one


class FastRTCApp:
    """``with FastRTCApp() as app: ... app.url ...`` — see the module docstring."""

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
        self.connections: list[Connection] = []
        self.handlers: dict[str, Any] = {}  # websocket_id -> its EchoHandler
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.port = port  # 0: a free one, chosen at start

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket/offer"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> FastRTCApp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        fastrtc = load_fastrtc()
        import uvicorn
        from fastapi import FastAPI

        api = FastAPI()
        handler = _echo_class(fastrtc)(self)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # gradio 6 notes
            stream = fastrtc.Stream(
                handler,
                modality="audio",
                mode="send-receive",
                concurrency_limit=self.concurrency_limit,
            )
        stream.mount(api)
        self.stream = stream
        # The first reply conversion imports librosa's resampler lazily (a second or more,
        # inside the server's event loop): warm it up as a running app would be.
        fastrtc.websocket.convert_to_mulaw(
            np.zeros(960, np.int16), self.input_rate, self.output_rate
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._record(api),
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fastrtc-app", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fastrtc app did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    # -- observation ---------------------------------------------------------------------
    def wait(self, pred: Callable[[], Any], within_s: float = 10.0, what: str = "") -> None:
        """Poll ``pred`` (from any thread) until true, else fail naming ``what``."""
        deadline = time.monotonic() + within_s
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within_s} s waiting for {what or pred}")
            time.sleep(0.01)

    async def await_(self, pred: Callable[[], Any], within_s: float = 10.0, what: str = "") -> None:
        """:meth:`wait` for async tests (polls without blocking the test's loop)."""
        deadline = time.monotonic() + within_s
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within_s} s waiting for {what or pred}")
            await asyncio.sleep(0.01)

    def started(self) -> list[Connection]:
        with self._lock:
            return [c for c in self.connections if "start" in c.events]

    def received(self, websocket_id: str) -> np.ndarray:
        """Audio the session's handler received, int16 at the input rate."""
        with self._lock:
            chunks = list(self.handlers[websocket_id].received)
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def send(self, websocket_id: str, message: dict[str, Any] | str) -> None:
        """Send one message to the session's client through its handler's data channel,
        as fastrtc's own handlers do (thread-safe)."""
        text = message if isinstance(message, str) else json.dumps(message)
        self.handlers[websocket_id].channel.send(text)

    def create_message(self, kind: str, data: Any) -> str:
        """fastrtc's own encoder of app messages (``{"type":..., "data":...}``)."""
        from fastrtc.utils import create_message

        text: str = create_message(kind, data)  # type: ignore[arg-type]
        return text

    # -- the ASGI recorder ---------------------------------------------------------------
    def _record(self, api: Any) -> Callable[..., Any]:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "websocket":
                await api(scope, receive, send)
                return
            conn = Connection()
            with self._lock:
                self.connections.append(conn)

            async def recording_receive() -> dict[str, Any]:
                message: dict[str, Any] = await receive()
                with self._lock:
                    if message["type"] == "websocket.receive" and message.get("text"):
                        try:
                            body = json.loads(message["text"])
                        except ValueError:
                            body = {}
                        event = str(body.get("event", "?"))
                        conn.events.append(event)
                        if event == "start":
                            conn.websocket_id = str(body.get("websocket_id", ""))
                        elif event == "media":
                            conn.media_messages += 1
                            if conn.first_media_at is None:
                                conn.first_media_at = time.monotonic()
                    elif message["type"] == "websocket.disconnect":
                        conn.closed = True
                        conn.close_code = message.get("code")
                return message

            try:
                await api(scope, recording_receive, send)
            finally:
                with self._lock:
                    conn.closed = True

        return app


def _echo_class(fastrtc: ModuleType) -> type:
    """fastrtc's echo example as an AsyncStreamHandler (defined once fastrtc is loaded)."""

    class EchoHandler(fastrtc.AsyncStreamHandler):  # type: ignore[misc, name-defined]
        """Emits what it received, as received (``(input_rate, samples)``): fastrtc's
        server converts it to the output rate and mu-law. Emits everything queued at
        once, so the server's 20 ms send pacing never lets a backlog build up."""

        def __init__(self, app: FastRTCApp) -> None:
            super().__init__(
                expected_layout="mono",
                input_sample_rate=app.input_rate,
                output_sample_rate=app.output_rate,
            )
            self.app = app
            self.queue: asyncio.Queue[tuple[int, np.ndarray]] = asyncio.Queue()
            self.received: list[np.ndarray] = []

        async def start_up(self) -> None:
            # fastrtc runs start_up in the context it set for this connection
            context = fastrtc.utils.current_context.get()
            with self.app._lock:
                self.app.handlers[context.webrtc_id] = self

        async def receive(self, frame: tuple[int, np.ndarray]) -> None:
            rate, samples = frame
            samples = np.asarray(samples, dtype=np.int16).reshape(-1)
            with self.app._lock:
                self.received.append(samples)
            self.queue.put_nowait((rate, samples))

        async def emit(self) -> tuple[int, np.ndarray]:
            rate, first = await self.queue.get()
            parts = [first]
            while not self.queue.empty():
                parts.append(self.queue.get_nowait()[1])
            return rate, np.concatenate(parts)

        def copy(self) -> EchoHandler:
            return EchoHandler(self.app)

    return EchoHandler
