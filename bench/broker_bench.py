"""Session broker throughput and latency: one replica against the sandbox VideoSDK.

Starts the fake VideoSDK (agent.sandbox.videosdk, JWT mode: the broker mints from an
API key + secret) in a process of its own and ``field-agent-broker serve`` as another
(one uvicorn process: one replica, INFO logs to a file as in production, rate limit
raised out of the way), enrols ``--devices`` devices, then ``--clients`` concurrent
clients send ``--requests`` session requests in total (round robin over the devices,
each with its own device token) and stop. Printed:

- requests/s, latency p50 / p90 / p99 / max, status codes;
- the first request of each device separately (the one scrypt check; later ones hit
  the verified-token cache);
- the same load sent straight to the fake (its own cost, for comparison);
- the broker process's CPU seconds, and its RSS idle and after the run.

The clients run in this process, on the same machine: the numbers are for the whole
loop on one box (clients, broker and fake share the cores), not the broker alone. The
fake (a stdlib threading HTTP server) is itself the slowest part: compare the two lines.

Run: ``.venv/bin/python bench/broker_bench.py [--requests 2000] [--clients 32] [--devices 50]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from field_agent_broker.enrolment import enroll

API_KEY = "bench-apikey-0123456789"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
ROOM = "abcd-efgh-ijkl"

# The fake VideoSDK in a process of its own (so the clients here do not share its GIL).
# Its stdlib server listens with a backlog of 5, which resets connections under 32
# clients, and writes headers and body in two sends, which Nagle + delayed ACK turn into
# 40 ms per reply: it gets a real server's backlog and TCP_NODELAY (this process only).
FAKE = f"""
import asyncio, socketserver, sys
from http.server import ThreadingHTTPServer
ThreadingHTTPServer.request_queue_size = 256
socketserver.StreamRequestHandler.disable_nagle_algorithm = True
from agent.sandbox.videosdk import FakeVideoSDK

async def main():
    async with FakeVideoSDK(token=None, jwt_secret={SECRET!r}, api_key={API_KEY!r}) as fake:
        print(fake.api_base, flush=True)
        await asyncio.to_thread(sys.stdin.read)
        print(len(fake.sessions), flush=True)

asyncio.run(main())
"""


def body(device_id: str) -> dict[str, object]:
    return {
        "roomId": ROOM,
        "participant": {"id": device_id, "name": device_id, "metadata": {"deviceId": device_id}},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS KiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return cpu, rss


async def load(
    url: str,
    devices: list[tuple[str, str]],
    total: int,
    clients: int,
    *,
    direct_auth: str | None = None,
) -> tuple[float, list[tuple[float, int, bool]]]:
    """Send ``total`` requests from ``clients`` workers; (seconds, [(latency, status, first)])."""
    results: list[tuple[float, int, bool]] = []
    counter = iter(range(total))
    seen: set[str] = set()

    async def worker(http: httpx.AsyncClient) -> None:
        for i in counter:
            device_id, token = devices[i % len(devices)]
            first = device_id not in seen
            seen.add(device_id)
            auth = direct_auth if direct_auth is not None else f"Bearer {token}"
            t0 = time.perf_counter()
            r = await http.post(url, json=body(device_id), headers={"Authorization": auth})
            results.append((time.perf_counter() - t0, r.status_code, first))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        return time.perf_counter() - t0, results


def report(label: str, seconds: float | None, results: list[tuple[float, int, bool]]) -> None:
    lat = sorted(r[0] * 1000 for r in results)

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))]

    codes = Counter(r[1] for r in results)
    rate = f"{len(results) / seconds:7.0f} req/s" if seconds else " " * 13
    print(
        f"{label:<28} {rate}   p50 {q(0.50):6.1f} ms   "
        f"p90 {q(0.90):6.1f} ms   p99 {q(0.99):6.1f} ms   max {lat[-1]:6.1f} ms   "
        f"status {dict(codes)}"
    )


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--devices", type=int, default=50)
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} "
        "(shared with other work)"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        enrolment = tmp / "devices.json"
        t0 = time.perf_counter()
        devices = [(f"dev_{i:04d}", enroll(enrolment, f"dev_{i:04d}")) for i in range(args.devices)]
        enrol_s = (time.perf_counter() - t0) / args.devices
        creds = tmp / "creds"
        creds.mkdir()
        (creds / "videosdk-api-key").write_text(API_KEY)
        (creds / "videosdk-secret").write_text(SECRET)
        fake_proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the clock runs)
            [sys.executable, "-c", FAKE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert fake_proc.stdout is not None and fake_proc.stdin is not None
        api_base = fake_proc.stdout.readline().strip()
        try:
            port = free_port()
            log = (tmp / "broker.log").open("wb")
            proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the clock runs)
                [
                    sys.executable, "-m", "field_agent_broker", "--enrolment", str(enrolment),
                    "serve", "--listen", f"127.0.0.1:{port}", "--api-base", api_base,
                    "--credentials", str(creds), "--rate-burst", "1000000",
                    "--rate-per-minute", "1000000",
                ],
                stderr=log,
                env={k: v for k, v in os.environ.items() if not k.startswith("VIDEOSDK_")},
            )  # fmt: skip
            try:
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(trust_env=False) as http:
                    for _ in range(300):
                        try:
                            if (await http.get(base + "/healthz")).status_code == 200:
                                break
                        except httpx.HTTPError:
                            await asyncio.sleep(0.05)
                    else:
                        print("broker did not start:", (tmp / "broker.log").read_text())
                        return 1
                cpu0, rss_idle = proc_stats(proc.pid)
                print(
                    f"{args.requests} requests, {args.clients} concurrent clients, "
                    f"{args.devices} devices; enrol: {enrol_s * 1000:.0f} ms per device (scrypt)"
                )
                direct = await load(
                    api_base + "/v2/ingest/sessions",
                    devices,
                    args.requests,
                    args.clients,
                    direct_auth=jwt_for_fake(),
                )
                report("fake VideoSDK alone", *direct)
                seconds, results = await load(
                    base + "/v1/sessions", devices, args.requests, args.clients
                )
                report("through the broker", seconds, results)
                warm = [r for r in results if not r[2]]
                report("  repeat devices only", None, warm)
                cold = sorted(r[0] * 1000 for r in results if r[2])
                print(
                    f"  first request per device (scrypt): median {statistics.median(cold):.1f} ms"
                    f" of {len(cold)}; later ones use the verified-token cache"
                )
                cpu1, rss_after = proc_stats(proc.pid)
                print(
                    f"broker process: {cpu1 - cpu0:.1f} CPU s for {len(results)} requests "
                    f"({(cpu1 - cpu0) / len(results) * 1000:.2f} ms each); RSS idle "
                    f"{rss_idle / 1024:.1f} MiB, after {rss_after / 1024:.1f} MiB"
                )
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
                log.close()
        finally:
            fake_proc.stdin.close()  # the fake prints how many sessions it created, then exits
            print(f"sessions created at the fake: {fake_proc.stdout.read().strip()}")
            fake_proc.wait(10)
    return 0


def jwt_for_fake() -> str:
    import jwt

    now = time.time()
    claims = {
        "apikey": API_KEY,
        "permissions": ["allow_join"],
        "version": 2,
        "roles": ["crawler"],
        "iat": int(now),
        "exp": int(now + 600),
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
