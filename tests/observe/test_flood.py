"""No resource runs out into a crash (issue 17, item 2).

- The metrics/status endpoint under a flood of half-open connections and slowloris from
  loopback, while the whole agent streams to the fake VideoSDK: the uplink stays at real
  time and /status answers again once the flood is over.
- Out of file descriptors (the real CLI under a low RLIMIT_NOFILE): accept() and
  sd_notify fail with EMFILE; each is logged once, counted, and the agent goes on.
- sd_notify to a socket that is gone never ends the agent.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from agent.observe.server import MAX_CONNECTIONS, REQUEST_TIMEOUT_S
from tests.conftest import REPO, agent_cmd, subprocess_env
from tests.reliability.fullagent import FAST_LINKS, full_agent

pytestmark = pytest.mark.slow
OPEN_FOR_S = 15.0  # the flood opens connections for at most this long


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Flood(threading.Thread):
    """500 half-open connections (connect, send nothing) in one burst, and slowloris
    connections (a request one byte every 0.5 s) re-opened whenever dropped."""

    def __init__(self, port: int, half_open: int = 500, slowloris: int = 2 * MAX_CONNECTIONS):
        super().__init__(name="flood", daemon=True)
        self.port, self.half_open, self.slowloris = port, half_open, slowloris
        self.stop = threading.Event()
        self.opened = 0
        self.dropped = 0
        self.socks: list[socket.socket] = []
        self.deadline = float("inf")  # set at start: no new connection after OPEN_FOR_S

    def _connect(self) -> socket.socket | None:
        if self.stop.is_set() or time.monotonic() > self.deadline:
            return None  # bounded: a full accept backlog must not stretch the burst for ever
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return None
        self.opened += 1
        return s

    def run(self) -> None:
        self.deadline = time.monotonic() + OPEN_FOR_S
        slow: list[tuple[socket.socket, int]] = []
        for _ in range(self.slowloris):
            if (s := self._connect()) is not None:
                slow.append((s, 0))
        for _ in range(self.half_open):
            if (s := self._connect()) is not None:
                self.socks.append(s)
        request = b"GET /status HTTP/1.1\r\nHost: agent\r\nX-Slow: " + b"a" * 200
        while not self.stop.wait(0.5):
            kept = []
            for s, sent in slow:
                try:
                    s.send(request[sent : sent + 1] or b"a")
                    kept.append((s, sent + 1))
                except OSError:  # dropped by the server: come back
                    self.dropped += 1
                    s.close()
                    if (n := self._connect()) is not None:
                        kept.append((n, 0))
            slow = kept
        for s, _ in slow:
            s.close()
        for s in self.socks:
            s.close()


def _status_probe(url: str, results: list[tuple[float, float | None]], stop: threading.Event):
    """GET /status again and again; (start, latency or None when refused/timed out)."""
    with httpx.Client(timeout=REQUEST_TIMEOUT_S + 2) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                client.get(url, headers={"Connection": "close"}).raise_for_status()
                results.append((t0, time.monotonic() - t0))
            except httpx.HTTPError:
                results.append((t0, None))
                time.sleep(0.1)
            time.sleep(0.2)


async def test_a_flood_on_the_status_endpoint_never_starves_the_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/status"
    async with full_agent(
        tmp_path,
        policies=FAST_LINKS,
        links=("videosdk",),
        overrides={"metrics": {"listen": f"127.0.0.1:{port}"}},
    ) as rig:
        async with httpx.AsyncClient() as client:  # the endpoint is up
            for _ in range(50):
                try:
                    (await client.get(url)).raise_for_status()
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
        f0, t0 = rig.vsdk.frames_total, time.monotonic()
        await asyncio.sleep(2.0)
        fps_before = (rig.vsdk.frames_total - f0) / (time.monotonic() - t0)

        flood = Flood(port)  # (the whole flood is bounded: see Flood and OPEN_FOR_S)
        probes: list[tuple[float, float | None]] = []
        probe_stop = threading.Event()
        probe = threading.Thread(target=_status_probe, args=(url, probes, probe_stop))
        flood.start()
        await asyncio.sleep(0.5)
        probe.start()
        f0, t0 = rig.vsdk.frames_total, time.monotonic()
        await asyncio.sleep(8.0)  # past REQUEST_TIMEOUT_S: slowloris dropped, re-opened
        fps_during = (rig.vsdk.frames_total - f0) / (time.monotonic() - t0)
        flood.stop.set()
        probe_stop.set()
        await asyncio.to_thread(flood.join, 10)
        await asyncio.to_thread(probe.join, 10)

        t_after = time.monotonic()
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(url)
        after_s = time.monotonic() - t_after
        assert not rig.task.done(), "the agent ended"
        assert rig.link_state("videosdk") == "up"
        refused = rig.agent.metrics.total("http_connections_refused_total", reason="busy")
        evicted = rig.agent.metrics.total("http_connections_refused_total", reason="evicted")
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    answered = [lat for _, lat in probes if lat is not None]
    print(
        f"\nflood: {flood.opened} connections opened ({flood.dropped} slowloris dropped by the "
        f"server and re-opened), {refused:.0f} refused at accept, {evicted:.0f} evicted; "
        f"uplink {fps_before:.1f} fps before, {fps_during:.1f} fps during; "
        f"/status during: {len(answered)} of {len(probes)} probes answered"
        + (f", median {sorted(answered)[len(answered) // 2] * 1000:.0f} ms" if answered else "")
        + f"; after: {after_s * 1000:.0f} ms; test process max RSS {rss_mib:.0f} MiB"
    )
    assert r.status_code == 200 and r.json()["links"]["videosdk"]["state"] == "up"
    assert fps_during >= 50 * 0.8, fps_during
    assert refused + evicted >= 400, "the flood was not refused"
    assert len(answered) >= len(probes) / 2, "a flood of idle connections locked /status out"
    assert flood.dropped >= MAX_CONNECTIONS, "slowloris connections were never dropped"
    assert after_s < 2.0


def _run_agent(
    tmp_path: Path, *, nofile: int | None = None, notify_socket: str | None = None
) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nid = "d1"\n[videosdk]\nenabled = false\n'
        '[audio]\ncapture_device = "null"\nplayback_device = "null"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    extra = {"HOME": str(tmp_path)}
    if notify_socket is not None:
        extra |= {"NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        agent_cmd("run", "--config", str(cfg), "--credentials", str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=subprocess_env(**extra), cwd=REPO, preexec_fn=limit,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/status"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url, timeout=2).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the agent did not serve /status: " + proc.communicate()[0])
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=15)[0]
    assert proc.returncode == 0, out
    return out


def test_out_of_file_descriptors_is_logged_once_counted_and_survived(tmp_path: Path) -> None:
    """RLIMIT_NOFILE a few above what the agent holds: connections to /status take the
    rest, so accept() and sd_notify's socket() meet EMFILE for seconds."""
    notify = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.setblocking(False)
    proc, url = _run_agent(tmp_path, nofile=24, notify_socket=str(notify))
    held: list[socket.socket] = []
    try:
        used = len(os.listdir(f"/proc/{proc.pid}/fd"))
        for _ in range(MAX_CONNECTIONS):  # each takes an fd until REQUEST_TIMEOUT_S
            s = socket.create_connection(("127.0.0.1", int(url.split(":")[2].split("/")[0])))
            held.append(s)
        time.sleep(3.0)  # accept() retried each second, WATCHDOG=1 every 0.1 s: all EMFILE
        for s in held:
            s.close()
        held.clear()
        time.sleep(REQUEST_TIMEOUT_S)  # the accepted ones time out, descriptors come back
        doc = httpx.get(url, timeout=5).json()
        assert proc.poll() is None, "the agent ended"
        text = httpx.get(url.replace("/status", "/metrics"), timeout=5).text
    finally:
        for s in held:
            s.close()
        out = _stop(proc)
        listener.close()
    print(f"\nagent fds before the flood: {used} of 24")
    lines = [ln for ln in out.splitlines() if "out of file descriptors" in ln]
    assert any("(accept; LimitNOFILE=24" in ln for ln in lines), out
    assert any("(sd_notify; LimitNOFILE=24" in ln for ln in lines), out
    assert len(lines) <= 3, lines  # once per place (and the device reopen, if it met it)
    assert "Traceback" not in out and "socket.accept() out of system resource" not in out, out
    assert 'resource_exhausted_total{resource="fds",where="accept"}' in text, text[:2000]
    assert doc["audio"]["frames_captured"] > 0


def test_a_notify_socket_that_is_gone_never_ends_the_agent(tmp_path: Path) -> None:
    proc, url = _run_agent(tmp_path, notify_socket=str(tmp_path / "gone" / "notify"))
    time.sleep(2.0)  # READY=1, STATUS=, WATCHDOG=1 every 0.1 s: all fail
    assert proc.poll() is None
    httpx.get(url, timeout=5).raise_for_status()
    out = _stop(proc)
    failed = [ln for ln in out.splitlines() if "sd_notify" in ln]
    assert len(failed) == 1, failed
    assert "failed (No such file or directory): going on" in failed[0], failed
