"""A real FastRTC app for the tests and the bench; runs in ``.venv-fastrtc``.

    .venv-fastrtc/bin/python tests/fastrtc/server.py [--port 0] [--input-rate 48000]
        [--output-rate 24000] [--concurrency-limit 1]

``fastrtc.Stream(EchoHandler(), modality="audio", mode="send-receive",
concurrency_limit=N).mount(app)`` on a FastAPI app, served by uvicorn on 127.0.0.1.
The handler is fastrtc's echo example as an AsyncStreamHandler: it emits what it
received (in chunks of >= 40 ms, see EchoHandler), at the rate received, and
fastrtc's server converts that to the output rate and mu-law. Prints ``READY <port>``
on stdout once it accepts connections.

Nothing of fastrtc is changed or faked. For the tests to see what happened, the
app has a few extra routes of its own (plain HTTP, beside fastrtc's):

- ``GET  /test/connections``: every ``/websocket/offer`` connection with the events
  its client sent, in order (an ASGI wrapper records them), and the audio its handler
  received so far (samples);
- ``GET  /test/received/{websocket_id}``: that audio, base64 int16 at the input rate,
  with the ``time.monotonic()`` at which each chunk arrived;
- ``POST /test/send/{websocket_id}``: ``{"type": t, "data": d}`` is sent through the
  handler's data channel as ``fastrtc.utils.create_message(t, d)``, as fastrtc's own
  handlers send ``log``/``send_input``/``stopword``; ``{"text": s}`` sends ``s`` verbatim;
- ``POST /test/reset``: forget the recordings (between tests).

This file imports only fastrtc and what it brings (numpy, fastapi, uvicorn): the
agent's environment cannot hold fastrtc (see requirements.txt beside this file).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import sys
import time
import warnings
from typing import Any

for _key, _value in {
    "GRADIO_ANALYTICS_ENABLED": "False",  # gradio must not phone home (no network anyway)
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}.items():
    os.environ.setdefault(_key, _value)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop; gradio 6 notices
    import fastrtc
    import fastrtc.websocket
    import numpy as np
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from fastrtc.utils import create_message, current_context


class Recorder:
    """What the tests may ask about, filled from the server's event loop."""

    def __init__(self) -> None:
        self.connections: list[dict[str, Any]] = []
        self.handlers: dict[str, EchoHandler] = {}

    def reset(self) -> None:
        self.connections = [c for c in self.connections if not c["closed"]]
        for c in self.connections:
            c["events"] = c["events"][-1:]
        live = {c["websocket_id"] for c in self.connections}
        self.handlers = {k: v for k, v in self.handlers.items() if k in live}

    def view(self) -> list[dict[str, Any]]:
        out = []
        for c in self.connections:
            handler = self.handlers.get(c["websocket_id"])
            received = sum(len(x) for x in handler.received) if handler else 0
            out.append({**c, "received_samples": received})
        return out


RECORDER = Recorder()
MIN_CHUNK_S = 0.04  # see EchoHandler


class EchoHandler(fastrtc.AsyncStreamHandler):  # type: ignore[misc]
    """Emits what it received, as received, in chunks of at least MIN_CHUNK_S.

    Why chunks: fastrtc 0.0.34's WebSocket sender (``websocket.py``, ``_emit_loop``)
    sleeps 20 ms after *every* message it sends, so a handler emitting one 20 ms frame
    at a time is sent slower than real time (measured here: a message every ~22 ms,
    1 s behind after 10 s). Real apps emit TTS in long chunks; an echo must too.
    """

    def __init__(self, input_rate: int, output_rate: int) -> None:
        super().__init__(
            expected_layout="mono",
            input_sample_rate=input_rate,
            output_sample_rate=output_rate,
        )
        self.queue: asyncio.Queue[tuple[int, np.ndarray]] = asyncio.Queue()
        self.received: list[np.ndarray] = []
        self.arrivals: list[float] = []  # time.monotonic() of each received chunk

    async def start_up(self) -> None:
        # fastrtc runs start_up in the context it set for this connection
        context = current_context.get()
        if context is not None:
            RECORDER.handlers[context.webrtc_id] = self

    async def receive(self, frame: tuple[int, np.ndarray]) -> None:
        rate, samples = frame
        samples = np.asarray(samples, dtype=np.int16).reshape(-1)
        self.received.append(samples)
        self.arrivals.append(time.monotonic())
        self.queue.put_nowait((rate, samples))

    async def emit(self) -> tuple[int, np.ndarray]:
        rate, first = await self.queue.get()
        parts = [first]
        have = len(first)
        while have < MIN_CHUNK_S * rate or not self.queue.empty():
            _, more = await self.queue.get()
            parts.append(more)
            have += len(more)
        return rate, np.concatenate(parts)

    def copy(self) -> EchoHandler:
        return EchoHandler(self.input_sample_rate, self.output_sample_rate)


def build(input_rate: int, output_rate: int, concurrency_limit: int) -> Any:
    api = FastAPI()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stream = fastrtc.Stream(
            EchoHandler(input_rate, output_rate),
            modality="audio",
            mode="send-receive",
            concurrency_limit=concurrency_limit,
        )
    stream.mount(api)
    # The first reply conversion imports librosa's resampler lazily (a second or more,
    # inside the server's event loop): warm it up, as a running app would be.
    fastrtc.websocket.convert_to_mulaw(np.zeros(960, np.int16), input_rate, output_rate)

    @api.get("/test/connections")
    async def connections() -> JSONResponse:
        return JSONResponse(RECORDER.view())

    @api.get("/test/received/{websocket_id}")
    async def received(websocket_id: str) -> JSONResponse:
        handler = RECORDER.handlers.get(websocket_id)
        chunks = list(handler.received) if handler else []
        pcm = np.concatenate(chunks) if chunks else np.zeros(0)
        data = base64.b64encode(pcm.astype("<i2").tobytes()).decode("ascii")
        # where each chunk starts in pcm, and when it arrived (time.monotonic(): on Linux
        # the same clock in every process, so a bench can compare it with its own)
        starts = np.cumsum([0] + [len(c) for c in chunks[:-1]]).tolist() if chunks else []
        arrivals = list(handler.arrivals[: len(chunks)]) if handler else []
        return JSONResponse(
            {"rate": input_rate, "pcm": data, "chunks": list(zip(starts, arrivals, strict=True))}
        )

    @api.post("/test/send/{websocket_id}")
    async def send(websocket_id: str, request: Request) -> JSONResponse:
        body = await request.json()
        handler = RECORDER.handlers.get(websocket_id)
        if handler is None or handler.channel is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        text = body["text"] if "text" in body else create_message(body["type"], body["data"])
        handler.channel.send(text)
        return JSONResponse({"sent": text})

    @api.post("/test/reset")
    async def reset() -> JSONResponse:
        RECORDER.reset()
        return JSONResponse({"live": len(RECORDER.connections)})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await api(scope, receive, send)
            return
        conn: dict[str, Any] = {
            "path": scope.get("path", ""),
            "events": [],
            "websocket_id": "",
            "media_messages": 0,
            "closed": False,
            "close_code": None,
            "opened_at": time.monotonic(),
        }
        RECORDER.connections.append(conn)

        async def recording_receive() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] == "websocket.receive" and message.get("text"):
                try:
                    body = json.loads(message["text"])
                except ValueError:
                    body = {}
                event = str(body.get("event", "?")) if isinstance(body, dict) else "?"
                conn["events"].append(event)
                if event == "start":
                    conn["websocket_id"] = str(body.get("websocket_id", ""))
                elif event == "media":
                    conn["media_messages"] += 1
            elif message["type"] == "websocket.disconnect":
                conn["close_code"] = message.get("code")
            return message

        try:
            await api(scope, recording_receive, send)
        finally:
            conn["closed"] = True

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--input-rate", type=int, default=48000)
    parser.add_argument("--output-rate", type=int, default=24000)
    parser.add_argument("--concurrency-limit", type=int, default=1)
    args = parser.parse_args()
    app = build(args.input_rate, args.output_rate, args.concurrency_limit)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", ws="websockets-sansio",
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.01)
        print(f"READY {sock.getsockname()[1]}", flush=True)
        await task

    asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
