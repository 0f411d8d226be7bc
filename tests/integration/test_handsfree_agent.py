"""The whole agent in hands-free: `field-agent run` against the sandbox servers, its
speaker playing into a PulseAudio null sink and its mic capturing that sink's monitor
(the acoustic loop of agent.sandbox.acoustic). The sandbox's Orgo computer plays a
tone to the speaker, which comes straight back into the mic: with `echo_cancel = "on"`
the fake room gets the mic with the tone cancelled, and `field-agent status` and
/metrics show the canceller's figures."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from agent.audio.handsfree import library_available
from agent.sandbox.pulse import PulseRig, PulseUnavailable
from tests.conftest import REPO, subprocess_env
from tests.observe.test_endpoints import free_port

pytestmark = pytest.mark.slow

VENV = REPO / ".venv" / "bin"


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _uplink_dbfs(base: int, frames: int) -> float:
    doc = _get(f"http://127.0.0.1:{base}/videosdk/frames?since=0")
    got = doc["frames"]
    assert isinstance(got, list) and len(got) >= frames
    pcm = np.frombuffer(b"".join(base64.b64decode(f["pcm"]) for f in got[-frames:]), "<i2")
    x = pcm.astype(np.float64)
    return float(10 * np.log10(max(np.mean(x * x), 1e-3) / 32768.0**2))


def _run_agent(tmp_path: Path, rig: PulseRig, echo_cancel: str) -> tuple[float, str, str]:
    """(uplink level over the last 2 s after 8 s, status output, /metrics text)."""
    base, metrics = free_port(), free_port()
    while any(free_port() == base + i for i in range(1, 5)):
        base = free_port()
    text = (REPO / "config" / "sandbox.toml").read_text()
    for i in range(1, 5):
        text = text.replace(f"127.0.0.1:700{i}", f"127.0.0.1:{base + i}")
    text = text.replace("127.0.0.1:9464", f"127.0.0.1:{metrics}")
    text = text.replace(
        'capture_device = "default"\nplayback_device = "default"',
        f'capture_device = "pamon"\ncapture_rate = 16000\nplayback_device = "paspk"\n'
        f'echo_cancel = "{echo_cancel}"',
    )
    assert 'echo_cancel = "' in text
    cfg = tmp_path / f"agent-{echo_cancel}.toml"
    cfg.write_text(text)
    creds = tmp_path / f"creds-{echo_cancel}"
    env = subprocess_env(**rig.env())
    log = tmp_path / f"serve-{echo_cancel}.log"
    server = subprocess.Popen(
        [str(VENV / "python"), "-m", "agent.sandbox.serve", "--credentials", str(creds),
         "--base-port", str(base)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    agent = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"http://127.0.0.1:{base}/state")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    f"serve did not start: {log.read_text()[-2000:]}"
                )
                time.sleep(0.2)
        agent = subprocess.Popen(
            [str(VENV / "field-agent"), "run", "--config", str(cfg), "--credentials", str(creds)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:  # 8 s of uplink after the Orgo tone started playing
            s = _get(f"http://127.0.0.1:{base}/state")
            videosdk, orgo = s["videosdk"], s["orgo"]
            assert isinstance(videosdk, dict) and isinstance(orgo, dict)
            if int(videosdk["frames_total"]) >= 500 and int(orgo["accepted"]) >= 1:
                break
            assert agent.poll() is None, agent.communicate()[0]
            assert time.monotonic() < deadline, f"no frames at the fake: {s}"
            time.sleep(0.5)
        level = _uplink_dbfs(base, 100)
        shown = subprocess.run(
            [str(VENV / "field-agent"), "status", "--config", str(cfg)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            exposition = r.read().decode()
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=20)
        assert agent.returncode == 0, out
        assert "Traceback" not in out
        return level, shown.stdout, exposition
    finally:
        for proc in (agent, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()


def test_the_agent_cancels_its_own_speaker_in_the_uplink(tmp_path: Path) -> None:
    if not PulseRig.available():
        pytest.skip("pulseaudio not installed (apt install pulseaudio libasound2-plugins)")
    if not library_available():
        reason = "pywebrtc-audio not installed (pip install 'field-agent[handsfree]')"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    rig = PulseRig(tmp_path / "pulse")
    try:
        rig.start()
    except PulseUnavailable as e:
        pytest.fail(str(e))
    try:
        off, status_off, metrics_off = _run_agent(tmp_path, rig, "off")
        on, status_on, metrics_on = _run_agent(tmp_path, rig, "on")
    finally:
        rig.stop()
    print(f"uplink with the speaker's tone: {off:.1f} dBFS without, {on:.1f} dBFS with")
    assert off > -40, f"the speaker's tone did not reach the mic ({off:.1f} dBFS)"
    assert off - on >= 25, f"uplink {off:.1f} dBFS without, {on:.1f} dBFS with cancellation"
    assert "hands-free:" not in status_off and "handsfree_erle_db" not in metrics_off
    assert "hands-free: echo" in status_on, status_on
    assert "field_agent_handsfree_erle_db " in metrics_on
    assert "field_agent_handsfree_cpu_ratio " in metrics_on
