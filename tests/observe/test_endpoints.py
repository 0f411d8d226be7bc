"""/metrics, /status and ``field-agent status`` against a running agent.

The slow test runs ``field-agent run`` as systemd would (a subprocess, real alsa-lib
on PulseAudio-paced devices) streaming into the fake VideoSDK on loopback; the fast
ones run the agent in-process on simulated devices."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import config
from agent.app import Agent, Hardware
from agent.controls import StateStore
from agent.hw.sim import RecordingSink, ToneSource
from agent.observe.statuscmd import format_status
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from tests.conftest import PulseDevices, agent_cmd, subprocess_env
from tests.support import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *agent_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


AGENT_TOML = """
[device]
id = "dev_obs"
[audio]
capture_device = "pacedmic"
playback_device = "paspk"
[ptt]
mode = "open"
[videosdk]
room_id = "room-obs"
api_base = "{api_base}"
[metrics]
listen = "127.0.0.1:{port}"
"""


@pytest.mark.slow
async def test_metrics_status_and_status_command_against_field_agent_run(
    tmp_path: Path, pulse: PulseDevices
) -> None:
    t = np.arange(8000 * 10) / 8000
    (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tofile(pulse.mic)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "videosdk-token").write_text("sandbox-token\n")
    (creds / "videosdk-token").chmod(0o600)
    port = free_port()
    async with FakeVideoSDK(echo=True) as fake:
        cfg = tmp_path / "agent.toml"
        cfg.write_text(AGENT_TOML.format(api_base=fake.api_base, port=port))
        env = subprocess_env(**pulse.env())
        agent = await asyncio.create_subprocess_exec(
            *agent_cmd("run", "--config", str(cfg), "--credentials", str(creds)),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=5) as http:

                async def status() -> dict[str, Any] | None:
                    try:
                        return (await http.get(base + "/status")).json()  # type: ignore[no-any-return]
                    except httpx.TransportError:
                        return None

                doc: dict[str, Any] | None = None

                async def streaming() -> bool:
                    nonlocal doc
                    doc = await status()
                    return bool(doc and doc["links"]["videosdk"]["frames_sent"] >= 50)

                deadline = asyncio.get_running_loop().time() + 30
                while not await streaming():
                    assert agent.returncode is None, "the agent exited"
                    assert asyncio.get_running_loop().time() < deadline, doc
                    await asyncio.sleep(0.2)
                assert doc is not None
                assert doc["links"]["videosdk"]["state"] == "up"
                assert doc["summary"].startswith("videosdk: up (room room-obs)")
                assert doc["devices"]["mic"]["state"] == "up"
                assert doc["links"]["videosdk"]["uplink_latency_ms"]["n"] > 0

                reply = await http.get(base + "/metrics")
                assert reply.status_code == 200
                assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
                m = scrape(reply.text)
                assert m[("field_agent_frames_sent_total", (("link", "videosdk"),))] >= 50
                assert m[("field_agent_frames_captured_total", ())] >= 50
                assert m[("field_agent_playback_periods_total", ())] > 0
                assert m[("field_agent_frames_received_total", (("link", "videosdk"),))] > 0
                assert m[("field_agent_link_up", (("link", "videosdk"),))] == 1
                assert m[("field_agent_device_up", (("device", "speaker"),))] == 1
                assert 10e6 < m[("process_resident_memory_bytes", ())] < 500e6
                assert m[("process_cpu_seconds_total", ())] > 0
                # Prometheus may ask for OpenMetrics
                om = await http.get(
                    base + "/metrics", headers={"Accept": "application/openmetrics-text"}
                )
                assert om.headers["content-type"].startswith("application/openmetrics-text")
                assert om.text.rstrip().endswith("# EOF")
                assert (await http.get(base + "/nothing")).status_code == 404

            rc, out, err = await run_cli("status", "--config", str(cfg), env=env)
            assert rc == 0, err
            assert out.startswith("field-agent 0.1.0 · up ")
            link_row = next(line for line in out.splitlines() if line.startswith("videosdk"))
            assert " up " in link_row and link_row.endswith("room room-obs")
            assert "mic" in out and "last error: -" in out
            rc, out, _ = await run_cli("status", "--url", f"127.0.0.1:{port}", env=env)
            assert rc == 0 and "videosdk" in out
        finally:
            if agent.returncode is None:
                agent.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(agent.communicate(), 10)
        assert agent.returncode == 0, stderr.decode()[-2000:]
        rc, out, err = await run_cli("status", "--config", str(cfg), env=env)
        assert (rc, out) == (1, "")
        assert "agent not reachable" in err and f"127.0.0.1:{port}/status" in err


def sim_agent(tmp_path: Path, listen: str, pins: Any = None) -> Agent:
    cfg = config.from_dict(
        {
            "device": {"id": "dev_obs"},
            "ptt": {"mode": "hold"},
            "gpio": {"ptt_button": 17} if pins is not None else {},
            "videosdk": {"enabled": False},
            "metrics": {"listen": listen},
        }
    )
    hw = Hardware(
        mic=lambda _a, _m: ToneSource(8000, 440.0, -20.0, paced=True),
        speaker=lambda _a, _m: RecordingSink(48000, paced=True, keep_s=1.0),
        pin_factory=pins,
    )
    return Agent(
        cfg, credentials=Credentials(tmp_path, env={}), hardware=hw, state=StateStore(None)
    )


async def test_ptt_presses_are_counted_and_scraped(tmp_path: Path, gpio_mock: Any) -> None:
    port = free_port()
    agent = sim_agent(tmp_path, f"127.0.0.1:{port}", gpio_mock)
    task = asyncio.create_task(agent.run())
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def answers() -> bool:
                try:
                    return (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
                except httpx.TransportError:
                    return False

            deadline = asyncio.get_running_loop().time() + 10
            while not await answers():
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            for _ in range(3):
                gpio_mock.pin(17).drive_low()
                await wait_until(lambda: agent.status.ptt_state == "talking", 2, "talking")
                gpio_mock.pin(17).drive_high()
                await wait_until(lambda: agent.status.ptt_state == "idle", 2, "idle")
            m = scrape((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
        assert m[("field_agent_button_presses_total", (("button", "ptt_button"),))] == 3
        assert m[("field_agent_frames_captured_total", ())] > 0
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 5) == 0


async def test_a_busy_port_is_an_error_line_not_a_dead_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        agent = sim_agent(tmp_path, f"127.0.0.1:{port}")
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: agent.status.last_error, 5, "an error on the board")
        assert agent.status.last_error == f"metrics: cannot listen on 127.0.0.1:{port}"
        await wait_until(lambda: agent.metrics.total("frames_captured_total") > 10, 5, "audio")
        assert not task.done()
        agent.stop()
        assert await asyncio.wait_for(task, 5) == 0
    lines = [r.getMessage() for r in caplog.records if "cannot serve /metrics" in r.getMessage()]
    assert len(lines) == 1


def test_status_command_exit_1_when_nobody_listens(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    port = free_port()
    # videosdk.room_id is missing: the file fails check-config, but status still knows
    # where the running agent listens
    cfg.write_text(f'[device]\nid = "d"\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    r = subprocess.run(
        agent_cmd("status", "--config", str(cfg)), capture_output=True, text=True,
        env=subprocess_env(), timeout=20,
    )  # fmt: skip
    assert r.returncode == 1 and r.stdout == ""
    assert "has problems (see field-agent check-config)" in r.stderr
    assert f"agent not reachable: http://127.0.0.1:{port}/status" in r.stderr


def test_status_command_with_metrics_off(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[device]\nid = "d"\n[metrics]\nlisten = ""\n')
    r = subprocess.run(
        agent_cmd("status", "--config", str(cfg)), capture_output=True, text=True,
        env=subprocess_env(), timeout=20,
    )  # fmt: skip
    assert r.returncode == 1
    assert "metrics.listen is off" in r.stderr


def test_status_command_refuses_a_stranger_on_the_port(tmp_path: Path) -> None:
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--url",
             f"http://127.0.0.1:{server.server_port}/"],
            capture_output=True, text=True, env=subprocess_env(), timeout=20, cwd=tmp_path,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert r.returncode == 1
    assert "HTTP 404" in r.stderr


def test_format_status_shows_links_sources_devices_and_the_last_error() -> None:
    doc = {
        "version": "0.1.0",
        "uptime_s": 3725.0,
        "led": "blink-1hz",
        "ptt": {"mode": "hold", "state": "idle"},
        "volume": 0.8,
        "muted": False,
        "mic_dbfs": -31.6,
        "links": {
            "videosdk": {
                "state": "up", "detail": "room r", "frames_sent": 1200, "frames_received": 1190,
                "frames_dropped": 2, "reconnects": 1, "malformed": 0,
                "uplink_latency_ms": {"p50": 0.3, "p99": 1.24, "n": 1200},
            },
            "orgo": {
                "state": "retry", "detail": "cannot connect (Connection refused)",
                "retry_in_s": 4.2, "frames_sent": 0, "frames_received": 0,
                "frames_dropped": 0, "reconnects": 3, "malformed": 5,
            },
        },
        "sources": {
            "videosdk": {"depth_ms": 40, "target_ms": 40, "frames_played": 1180,
                         "underruns": 1, "resets": 0,
                         "playout_latency_ms": {"p50": 38.0, "p99": 61.5, "n": 500}},
        },
        "devices": {"mic": {"state": "up", "detail": "pacedmic"},
                    "speaker": {"state": "attention", "detail": "playback device missing"}},
        "audio": {"frames_captured": 1210, "capture_drops": 0, "xruns": {"speaker": 2}},
        "process": {"rss_bytes": 41.5e6, "cpu_seconds": 12.3},
        "thermal_c": {"cpu-thermal": 51.2},
        "throttled": {"raw": "0x50005", "under_voltage_now": True},
        "last_error": "orgo: cannot connect",
    }  # fmt: skip
    text = format_status(doc)
    lines = text.splitlines()
    assert lines[0] == (
        "field-agent 0.1.0 · up 1h02m · led blink-1hz · ptt idle (hold) · volume 0.80"
        " · mic -32 dBFS"
    )
    videosdk = next(line for line in lines if line.startswith("videosdk "))
    assert videosdk.split()[:7] == ["videosdk", "up", "1200", "1190", "2", "1", "0"]
    assert "1.2 ms" in videosdk and videosdk.endswith("room r")
    orgo = next(line for line in lines if line.startswith("orgo "))
    assert orgo.endswith("cannot connect (Connection refused), retry in 4s")
    assert any(line.startswith("videosdk") and "61.5 ms" in line for line in lines)
    assert any(line.startswith("speaker") and "attention" in line for line in lines)
    assert "rss 41.5 MB" in text and "cpu-thermal 51.2 °C" in text
    assert "throttled 0x50005 (under_voltage_now)" in text and "2 xruns" in text
    assert lines[-1] == "last error: orgo: cannot connect"
