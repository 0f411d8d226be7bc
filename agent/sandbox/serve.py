"""The sandbox VideoSDK and Orgo servers as a standalone process, with a control API.

``python -m agent.sandbox.serve`` runs :class:`FakeVideoSDK` and :class:`FakeOrgo` on
fixed loopback ports, so an agent started by systemd can be pointed at them by its
config file (the VM tier does this inside the guest, see ``image/vm/``). A small JSON
control API on the same host lets a test see what the fakes saw and inject traffic::

    GET  /state                       links, sessions, frame counts, violations
    GET  /videosdk/frames?since=T     uplink frames received after time.monotonic() T
                                      (``{"frames": [{"t": ..., "pcm": base64}, ...]}``)
    POST /videosdk/room-audio         body ``{"pcm": base64}`` (PCM16 LE, 8 kHz mono):
                                      sent as room audio, paced at 20 ms per frame
    POST /videosdk/stop               the WebSocket server dies (connections reset)
    POST /videosdk/start              ... and comes back on the same port
    GET  /orgo/password               the computer's current password (a secret; the
                                      VM tier checks that it never reaches the journal)

Ports: ``--base-port P`` gives control P, VideoSDK REST P+1 and WebSocket P+2, Orgo
REST P+3 and WebSocket P+4. The accepted VideoSDK token and the Orgo API key are read
from files (``--videosdk-token-file``, ``--orgo-key-file``), the same files the agent
gets as credentials. Under systemd it sends READY=1 once every port listens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs

from agent.pcm import FRAME_MS
from agent.sandbox.orgo import FakeOrgo, tone
from agent.sandbox.rest import Reply, Request, RestServer
from agent.sandbox.videosdk import FakeVideoSDK
from agent.service import Notifier

logger = logging.getLogger("agent.sandbox.serve")  # also under python -m

T = TypeVar("T")
FRAME_BYTES_8K = 8000 * FRAME_MS // 1000 * 2  # one 20 ms frame of 8 kHz PCM16


def _read_secret(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


class Sandbox:
    """The two fakes plus the control API, on one event loop."""

    def __init__(
        self,
        *,
        base_port: int,
        videosdk_token: str,
        orgo_key: str,
        orgo_computer: str,
        orgo_tone_hz: float,
        orgo_tone_dbfs: float,
        keep_frames: int,
    ) -> None:
        self.videosdk = FakeVideoSDK(
            token=videosdk_token,
            keep_frames=keep_frames,
            rest_port=base_port + 1,
            ws_port=base_port + 2,
        )
        self.orgo = FakeOrgo(
            orgo_computer,
            orgo_key,
            generator=tone(orgo_tone_hz, orgo_tone_dbfs),
            rest_port=base_port + 3,
            ws_port=base_port + 4,
        )
        self.control = RestServer("127.0.0.1", base_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room_audio: set[asyncio.Task[None]] = set()
        self._vs_up = True
        self.control.route("GET", r"/state", lambda r: self._on_loop(self._state))
        self.control.route("GET", r"/videosdk/frames", self._frames)
        self.control.route("POST", r"/videosdk/room-audio", self._room_audio_request)
        self.control.route("POST", r"/videosdk/stop", lambda r: self._on_loop(self._vs_stop))
        self.control.route("POST", r"/videosdk/start", lambda r: self._on_loop(self._vs_start))
        self.control.route(
            "GET", r"/orgo/password", lambda r: Reply(200, {"password": self.orgo.password})
        )

    async def run(self, stop: asyncio.Event, notifier: Notifier) -> None:
        self._loop = asyncio.get_running_loop()
        async with self.videosdk, self.orgo:
            self.control.start()
            logger.info(
                "sandbox up: control %s, videosdk %s (ws %d), orgo %s (ws %s)",
                self.control.url,
                self.videosdk.api_base,
                self.videosdk.ws_port,
                self.orgo.api_base,
                self.orgo.audio_url,
            )
            notifier.ready()
            await stop.wait()
            notifier.stopping()
            await asyncio.to_thread(self.control.stop)

    # -- control API (handlers run on the REST thread; state is touched on the loop) --
    def _on_loop(self, fn: Callable[[], Coroutine[object, object, T]]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout=10)

    async def _state(self) -> Reply:
        vs, orgo = self.videosdk, self.orgo
        return Reply(
            200,
            {
                "now": time.monotonic(),
                "videosdk": {
                    "up": self._vs_up,
                    "sessions": len(vs.sessions),
                    "started": len(vs.started_sessions),
                    "active": len(vs.active()),
                    "auth_failures": list(vs.auth_failures),
                    "frames_total": vs.frames_total,
                    "violations": list(vs.violations)[-20:],
                },
                "orgo": {
                    "running": orgo.running,
                    "sessions": len(orgo.sessions),
                    "accepted": len(orgo.accepted()),
                    "password_fetches": orgo.password_fetches,
                },
            },
        )

    def _frames(self, req: Request) -> Reply:
        query = parse_qs(req.query)
        try:
            since = float(query.get("since", ["0"])[0])
        except ValueError:
            return Reply(400, {"error": "since must be a number"})

        async def collect() -> Reply:
            frames = [
                {"t": f.t, "pcm": base64.b64encode(f.pcm).decode("ascii")}
                for f in self.videosdk.frames
                if f.t >= since
            ]
            return Reply(200, {"now": time.monotonic(), "frames": frames})

        return self._on_loop(collect)

    def _room_audio_request(self, req: Request) -> Reply:
        try:
            pcm = base64.b64decode(req.json()["pcm"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return Reply(400, {"error": 'body must be {"pcm": base64 PCM16}'})

        async def start() -> Reply:
            sessions = len(self.videosdk.active())
            task = asyncio.create_task(self._send_paced(pcm), name="room-audio")
            self._room_audio.add(task)
            task.add_done_callback(self._room_audio.discard)
            return Reply(200, {"sessions": sessions, "frames": len(pcm) // FRAME_BYTES_8K})

        return self._on_loop(start)

    async def _send_paced(self, pcm: bytes) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i, at in enumerate(range(0, len(pcm), FRAME_BYTES_8K)):
            await asyncio.sleep(max(0.0, t0 + i * FRAME_MS / 1000 - loop.time()))
            await self.videosdk.send_room_audio(pcm[at : at + FRAME_BYTES_8K])

    async def _vs_stop(self) -> Reply:
        await self.videosdk.stop_ws(abrupt=True)
        self._vs_up = False
        logger.info("videosdk WebSocket server stopped")
        return Reply(200, {"up": False})

    async def _vs_start(self) -> Reply:
        await self.videosdk.start_ws()
        self._vs_up = True
        logger.info("videosdk WebSocket server started on port %d", self.videosdk.ws_port)
        return Reply(200, {"up": True})


DESCRIPTION = """\
Run the sandbox VideoSDK and Orgo servers: local fakes of the two services, on this
machine's loopback, so field-agent can run without accounts (README.md, "Try it without
accounts"), and tests and the VM tier can watch what it sends.

  python -m agent.sandbox.serve --credentials /tmp/sandbox-credentials
  field-agent run --config config/sandbox.toml --credentials /tmp/sandbox-credentials

The fake VideoSDK accepts the token in CREDENTIALS/videosdk-token and the fake Orgo the
key in CREDENTIALS/orgo-api-key (the agent reads the same files); both are made with
random values when missing. The Orgo computer plays a tone.
"""

EPILOG = """\
ports (from --base-port P, default 7000):
  P      control API (below)        P+1  VideoSDK REST    P+2  VideoSDK WebSocket
  P+3    Orgo REST                  P+4  Orgo WebSocket (audio)

control API (JSON, http://127.0.0.1:P):
  GET  /state                 links, sessions, frame counts, violations
  GET  /videosdk/frames?since=T
                              uplink frames received after time.monotonic() T
  POST /videosdk/room-audio   {"pcm": base64 PCM16 LE, 8 kHz mono}: sent as room audio
  POST /videosdk/stop         the VideoSDK WebSocket server dies (connections reset)
  POST /videosdk/start        ... and comes back on the same port
  GET  /orgo/password         the computer's current password

e.g.  python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:7000/state").read().decode())'

Under systemd (Type=notify) it sends READY=1 once every port listens; SIGTERM or
Ctrl-C stops it.
"""


def _credential(path: Path) -> str:
    """A credential file's value; a missing one is made (random value, mode 0600)."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"sandbox-{path.name}-{secrets.token_hex(8)}\n")
        logger.info("made %s (a random value)", path)
    return _read_secret(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m agent.sandbox.serve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--base-port", type=int, default=7000, metavar="P",
        help="the control API's port; the fakes take P+1 to P+4 (default 7000)",
    )  # fmt: skip
    p.add_argument(
        "--credentials", type=Path, metavar="DIR",
        help="directory with videosdk-token and orgo-api-key (made when missing)",
    )  # fmt: skip
    p.add_argument(
        "--videosdk-token-file", type=Path, metavar="FILE",
        help="the token the fake VideoSDK accepts (instead of --credentials)",
    )  # fmt: skip
    p.add_argument(
        "--orgo-key-file", type=Path, metavar="FILE",
        help="the API key the fake Orgo accepts (instead of --credentials)",
    )  # fmt: skip
    p.add_argument(
        "--orgo-computer", default="a3bb189e-8bf9-3888-9912-ace4e6543002", metavar="ID",
        help="the Orgo computer's id (default: the one config/sandbox.toml names)",
    )  # fmt: skip
    p.add_argument(
        "--orgo-tone-hz", type=float, default=440.0, metavar="HZ",
        help="the computer's tone (default 440)",
    )  # fmt: skip
    p.add_argument(
        "--orgo-tone-dbfs", type=float, default=-24.0, metavar="DBFS",
        help="its level (default -24)",
    )  # fmt: skip
    p.add_argument(
        "--keep-frames", type=int, default=30000, metavar="N",
        help="uplink frames remembered for /videosdk/frames (default 30000, 10 min)",
    )  # fmt: skip
    args = p.parse_args(argv)
    files = (args.videosdk_token_file, args.orgo_key_file)
    if args.credentials is None and None in files:
        p.error("give --credentials DIR, or both --videosdk-token-file and --orgo-key-file")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("websockets", "agent.sandbox.videosdk.wire", "agent.sandbox.orgo.ws"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    creds: Path | None = args.credentials
    token_file = args.videosdk_token_file or (creds / "videosdk-token" if creds else None)
    key_file = args.orgo_key_file or (creds / "orgo-api-key" if creds else None)
    assert token_file is not None and key_file is not None
    try:
        token, key = _credential(token_file), _credential(key_file)
    except OSError as e:
        p.exit(1, f"python -m agent.sandbox.serve: {e.filename}: {e.strerror}\n")
    sandbox = Sandbox(
        base_port=args.base_port,
        videosdk_token=token,
        orgo_key=key,
        orgo_computer=args.orgo_computer,
        orgo_tone_hz=args.orgo_tone_hz,
        orgo_tone_dbfs=args.orgo_tone_dbfs,
        keep_frames=args.keep_frames,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await sandbox.run(stop, Notifier())

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
