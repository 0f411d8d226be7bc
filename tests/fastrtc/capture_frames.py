"""Capture real server messages from fastrtc for the codec tests (run once, by hand).

    .venv/bin/python tests/fastrtc/capture_frames.py   # rewrites tests/fastrtc/captured.jsonl

Starts the real fastrtc app of ``server.py`` (needs ``.venv-fastrtc``; echo handler, 48 kHz in,
24 kHz out, concurrency limit 1), connects with a bare websockets client, sends
``start`` + ``ping`` and 200 ms of a 440 Hz tone (-12 dBFS, 48 kHz, mu-law), and
records what the server sends: the pong, the echoed media, the app messages its
handler sends with fastrtc's own ``create_message`` (log, send_input, stopword),
and the refusal a second client gets. One JSON object per line:
``{"what": <label>, "text": <the server's message, verbatim>}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.audio.g711 import ulaw_encode
from tests.fastrtc.app import FastRTCApp

OUT = Path(__file__).with_name("captured.jsonl")
WID = "capture-0001"


async def capture(app: FastRTCApp) -> list[dict[str, str]]:
    from websockets.asyncio.client import connect

    rows: list[dict[str, str]] = []
    t = np.arange(48000 // 5) / 48000
    tone = (10 ** (-12 / 20) * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    async with connect(app.url) as ws:
        await ws.send(json.dumps({"event": "start", "websocket_id": WID}))
        await ws.send(json.dumps({"event": "ping"}))
        rows.append({"what": "pong", "text": str(await ws.recv())})
        for i in range(10):
            payload = base64.b64encode(ulaw_encode(tone[i * 960 : (i + 1) * 960])).decode()
            await ws.send(json.dumps({"event": "media", "media": {"payload": payload}}))
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 5
        echoed = 0
        while echoed < 24000 // 5 and time.monotonic() < deadline:
            text = str(await ws.recv())
            rows.append({"what": "media", "text": text})
            echoed += len(base64.b64decode(json.loads(text)["media"]["payload"]))
        for kind, data in [
            ("log", "started_talking"),
            ("log", "pause_detected"),
            ("log", "response_starting"),
            ("send_input", []),
            ("stopword", ""),
        ]:
            await asyncio.to_thread(app.send, WID, kind, data)
            rows.append({"what": kind, "text": str(await ws.recv())})
        async with connect(app.url) as second:
            await second.send(json.dumps({"event": "start", "websocket_id": "capture-0002"}))
            await second.send(json.dumps({"event": "ping"}))
            rows.append({"what": "refusal", "text": str(await second.recv())})
        await ws.send(json.dumps({"event": "stop"}))
    return rows


def main() -> None:
    with FastRTCApp() as app:
        rows = asyncio.run(capture(app))
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} messages -> {OUT}")


if __name__ == "__main__":
    main()
