"""uvloop against asyncio's default loop, side by side in one run: CPU and RSS.

    PYTHON=/path/to/venv-with-uvloop/bin/python
    $PYTHON bench/uvloop_bench.py [--seconds 20]

Four processes run at the same time for ``--seconds`` (after 2 s of warm-up), two per
event loop (``asyncio``: the default selector loop; ``uvloop``):

- ``timer``: an empty 20 ms timer (the floor any 20 ms device pays for its wakeups);
- ``ws``: the agent's network pattern: a 50 Hz timer that sends one 320-byte binary
  frame (20 ms of 8 kHz PCM16) over a WebSocket (``websockets`` >= 16, the library the
  links use) to a loopback echo server, and receives the echo (room audio coming
  back), so one send and one receive per period.

The echo server runs in this process (default loop) and is the same for both. Printed
per process: CPU ms per second of wall time (``/proc/<pid>/stat``, all threads), RSS
after the run (MB), and for ``ws`` the frames echoed; then uvloop / asyncio ratios.
uvloop is not a dependency of the agent; install it in a scratch venv to run this.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FRAME = b"\x00\x01" * 160  # 320 bytes: 20 ms of 8 kHz PCM16


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- a child: one loop, one role; prints a JSON line when done ------------------------------
async def timer_role(seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    period = 0.02
    t_next = loop.time()
    end = t_next + seconds
    ticks = 0
    while t_next < end:
        t_next += period
        await asyncio.sleep(max(0.0, t_next - loop.time()))
        ticks += 1
    return {"ticks": ticks}


async def ws_role(seconds: float, url: str) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    received = 0
    async with connect(url, compression=None, max_size=2**16) as ws:

        async def receive() -> None:
            nonlocal received
            async for _ in ws:
                received += 1

        async with asyncio.TaskGroup() as tg:
            rx = tg.create_task(receive(), name="bench-ws-receive")
            period = 0.02
            t_next = loop.time()
            end = t_next + seconds
            while t_next < end:
                t_next += period
                await asyncio.sleep(max(0.0, t_next - loop.time()))
                await ws.send(FRAME)
            await asyncio.sleep(0.1)
            rx.cancel()
    return {"received": received}


def child(loop_kind: str, role: str, seconds: float, url: str) -> None:
    if loop_kind == "uvloop":
        import uvloop

        run = uvloop.run
    else:
        run = asyncio.run
    coro = timer_role(seconds) if role == "timer" else ws_role(seconds, url)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    out = run(coro)
    out["rss_mb"] = rss_mb(os.getpid())
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


# -- the orchestrator -----------------------------------------------------------------------
async def orchestrate(seconds: float, warmup: float) -> int:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for msg in ws:
            await ws.send(msg)

    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        procs: dict[str, subprocess.Popen[str]] = {}
        for kind in ("asyncio", "uvloop"):
            for role in ("timer", "ws"):
                procs[f"{role}-{kind}"] = subprocess.Popen(  # noqa: ASYNC220 (at start only)
                    [sys.executable, __file__, "--child", kind, role, str(seconds + warmup), url],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
        for p in procs.values():
            assert p.stdout is not None
            await asyncio.to_thread(p.stdout.readline)
        await asyncio.sleep(warmup)
        c0 = {n: cpu_s(p.pid) for n, p in procs.items()}
        t0 = time.monotonic()
        await asyncio.sleep(seconds - 0.5)
        c1 = {n: cpu_s(p.pid) for n, p in procs.items()}
        wall = time.monotonic() - t0
        results: dict[str, dict[str, Any]] = {}
        for n, p in procs.items():
            assert p.stdout is not None
            line = await asyncio.to_thread(p.stdout.readline)
            results[n] = json.loads(line) if line else {}
            p.wait(10)
    cpu = {n: (c1[n] - c0[n]) * 1000 / wall for n in procs}
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}; {wall:.1f} s measured, all four at once")  # fmt: skip
    print(f"{'':22s} {'asyncio':>9s} {'uvloop':>9s} {'uvloop/asyncio':>15s}")
    for role, label in (("timer", "empty 20 ms timer"), ("ws", "50 Hz WebSocket echo")):
        a, u = cpu[f"{role}-asyncio"], cpu[f"{role}-uvloop"]
        print(f"{label + ' CPU ms/s':22s} {a:9.2f} {u:9.2f} {u / a:14.2f}x")
    for role in ("timer", "ws"):
        a, u = results[f"{role}-asyncio"]["rss_mb"], results[f"{role}-uvloop"]["rss_mb"]
        print(f"{role + ' RSS (MB)':22s} {a:9.1f} {u:9.1f} {u - a:+14.1f} MB")
    a_net = cpu["ws-asyncio"] - cpu["timer-asyncio"]
    u_net = cpu["ws-uvloop"] - cpu["timer-uvloop"]
    print(f"{'ws minus timer ms/s':22s} {a_net:9.2f} {u_net:9.2f} {u_net / a_net:14.2f}x")
    print(f"frames echoed: asyncio {results['ws-asyncio']['received']}, "
          f"uvloop {results['ws-uvloop']['received']}")  # fmt: skip
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds (20)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (2)")
    args = ap.parse_args()
    return asyncio.run(orchestrate(args.seconds, args.warmup))


if __name__ == "__main__":
    sys.exit(main())
