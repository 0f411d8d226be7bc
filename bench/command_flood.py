"""Command flood: what a room participant sending 1000 commands/s costs the device.

    .venv/bin/python bench/command_flood.py [--rate 1000] [--seconds 5] [--senders 20]
                                            [--kind unsigned-volume|signed-volume|unsigned-ptt]

The real agent (``agent.app.Agent``, simulated paced mic and speaker) joins the fake
VideoSDK on loopback; the fake then publishes ``--rate`` commands per second on the
command topic, round-robin from ``--senders`` participants, for ``--seconds``.
Logging is the agent's own terminal handler (``agent.service.setup_logging``, the same
filters as the journal handler) into a counter. Prints: log lines per second (mean and
the worst 1 s), state-file renames per second (every ``os.replace`` onto
``state.json``), commands accepted and refused, and the uplink frames per second the
fake received during the flood (50 is full rate).

Runs against older trees too (``PYTHONPATH=/tmp/old``: then only unsigned kinds).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.environ["PYTHONPATH"].split(":")[0])

import agent.controls
from agent import config
from agent.app import Agent, Hardware
from agent.controls import StateStore
from agent.hw.sim import RecordingSink, WavSource, write_wav
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from agent.service import setup_logging

NEW = hasattr(agent.controls, "KEY_NAME")  # False on a tree from before signed commands
if NEW:
    from agent.commands import sign_command

KEY = "bench-command-key-0123456789abcdef"
DEVICE = "dev_flood"


class LineCounter(io.TextIOBase):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def write(self, s: str) -> int:
        now = time.monotonic()
        self.stamps.extend(now for _ in range(s.count("\n")))
        return len(s)


renames: list[float] = []
_replace = os.replace


def counting_replace(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
    _replace(src, dst, *a, **kw)
    if str(dst).endswith("state.json"):
        renames.append(time.monotonic())


def command(kind: str, i: int) -> str:
    if kind == "unsigned-volume":
        return json.dumps({"cmd": "volume", "value": round((i % 100) / 100, 2)})
    if kind == "unsigned-ptt":
        return '{"cmd":"ptt","value":"open"}'
    return sign_command(
        KEY, topic="DEVICE_CMD", device=DEVICE, cmd="volume", value=round((i % 100) / 100, 2)
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    os.replace = counting_replace  # type: ignore[assignment]
    tmp = Path(tempfile.mkdtemp(prefix="flood-"))
    creds = tmp / "creds"
    creds.mkdir()
    for name, value in (("videosdk-token", "sandbox-token"), ("command-key", KEY)):
        (creds / name).write_text(value + "\n")
        (creds / name).chmod(0o600)
    (tmp / "state").mkdir()
    lines = LineCounter()
    setup_logging("INFO", journal=False, stream=lines, env={})
    mic = write_wav(tmp / "mic.wav", (np.arange(8000 * 60) % 3000 + 1).astype(np.int16), 8000)
    speaker = RecordingSink(48000, paced=True)
    hw = Hardware(
        mic=lambda _a, _m: WavSource(mic, 8000, loop=True, paced=True),
        speaker=lambda _a, _m: speaker,
    )
    async with FakeVideoSDK() as fake:
        raw: dict[str, Any] = {
            "device": {"id": DEVICE},
            "ptt": {"mode": "open"},
            "videosdk": {"room_id": "room-flood", "api_base": fake.api_base},
            "metrics": {"listen": ""},
        }
        if NEW:
            raw["commands"] = {"rate_per_s": args.command_rate, "burst": args.command_burst}
        cfg = config.from_dict(raw)
        agent = Agent(
            cfg,
            credentials=Credentials(creds, env={}),
            hardware=hw,
            state=StateStore(tmp / "state"),
        )
        task = asyncio.create_task(agent.run())
        await fake.wait_for(lambda: fake.started_sessions, 10, "a session")
        session = fake.started_sessions[0]
        await fake.wait_for(lambda: "DEVICE_CMD" in session.subscriptions, 5, "subscribed")
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        frames0 = len(session.frames)
        lines0, renames0 = len(lines.stamps), len(renames)
        sent, tick = 0, 0.01
        while (now := time.monotonic()) - t0 < args.seconds:
            due = int((now - t0) * args.rate)
            while sent < due:
                sender = f"peer-{sent % args.senders}"
                await fake.send_message(
                    "DEVICE_CMD", command(args.kind, sent), sender_id=sender, sender_name=sender
                )
                sent += 1
            await asyncio.sleep(tick)
        t1 = time.monotonic()
        took = t1 - t0
        frames = len(session.frames) - frames0
        await asyncio.sleep(0.3)
        agent.stop()
        await asyncio.wait_for(task, 5)
    window = [s for s in lines.stamps[lines0:] if t0 <= s <= t1]
    per_second = [sum(1 for s in window if t0 + k <= s < t0 + k + 1) for k in range(int(took))]
    m = agent.metrics
    return {
        "tree": str(Path(config.__file__).parents[1]),
        "kind": args.kind,
        "commands_sent": sent,
        "commands_per_s": round(sent / took),
        "log_lines_per_s": round(len(window) / took, 1),
        "log_lines_worst_1s": max(per_second, default=0),
        "state_renames_per_s": round(len([r for r in renames[renames0:] if r <= t1]) / took, 1),
        "state_renames_total": len(renames),
        "accepted": m.total("commands_accepted_total"),
        "refused": {
            dict(labels).get("reason", "?"): v
            for labels, v in m.snapshot().get("commands_refused_total", [])
        },
        "uplink_fps_during_flood": round(frames / took, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=int, default=1000, help="commands per second")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--senders", type=int, default=20)
    p.add_argument("--command-rate", type=float, default=2.0, help="commands.rate_per_s")
    p.add_argument("--command-burst", type=int, default=10, help="commands.burst")
    p.add_argument(
        "--kind",
        default="unsigned-volume",
        choices=["unsigned-volume", "signed-volume", "unsigned-ptt"],
    )
    args = p.parse_args()
    if args.kind == "signed-volume" and not NEW:
        p.error("signed commands need the new tree")
    result = asyncio.run(run(args))
    for k, v in result.items():
        print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
