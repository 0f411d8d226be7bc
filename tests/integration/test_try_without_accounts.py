"""README's "Try it without accounts": the sandbox servers and `field-agent run` with the
shipped config/sandbox.toml, as the section's commands run them; the fake room gets the
mic's frames and `field-agent status` shows the links up.

The section's commands are read from README.md. The ports are the one thing changed
(free ones instead of 7000-7004 and 9464, which another run may hold on a shared
machine); ALSA's default device is a paced PulseAudio mic and speaker (TESTBED.md)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, PulseDevices, subprocess_env
from tests.observe.test_endpoints import free_port

pytestmark = pytest.mark.slow


def section_commands() -> list[list[str]]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Try it without accounts", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line and not line.startswith("#")]


def state(port: int) -> dict[str, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_the_readme_sandbox_commands_stream_the_mic_to_the_fake_room(
    tmp_path: Path, pulse: PulseDevices
) -> None:
    serve, run, status, _ = section_commands()
    assert serve[:3] == [".venv/bin/python", "-m", "agent.sandbox.serve"]
    assert run[:4] == [".venv/bin/field-agent", "run", "--config", "config/sandbox.toml"]
    creds = tmp_path / "sandbox-credentials"
    serve = [a.replace("/tmp/sandbox-credentials", str(creds)) for a in serve]
    run = [a.replace("/tmp/sandbox-credentials", str(creds)) for a in run]

    base, metrics = free_port(), free_port()
    while any(free_port() == base + i for i in range(1, 5)):  # (best effort: P+1..P+4 free)
        base = free_port()
    text = (REPO / "config" / "sandbox.toml").read_text()
    for i in range(1, 5):
        text = text.replace(f"127.0.0.1:700{i}", f"127.0.0.1:{base + i}")
    text = text.replace("127.0.0.1:9464", f"127.0.0.1:{metrics}")
    cfg = tmp_path / "sandbox.toml"
    cfg.write_text(text)
    run = [str(cfg) if a == "config/sandbox.toml" else a for a in run]
    status = [str(cfg) if a == "config/sandbox.toml" else a for a in status]

    t = np.arange(8000 * 20) / 8000  # the mic: a 500 Hz tone
    (0.3 * 32767 * np.sin(2 * np.pi * 500 * t)).astype("<i2").tofile(pulse.mic)
    default = tmp_path / "default.conf"
    default.write_text('pcm.!default { type asym playback.pcm "paspk" capture.pcm "pacedmic" }\n')
    env = subprocess_env(**pulse.env())
    env["ALSA_CONFIG_PATH"] += f":{default}"
    venv = REPO / ".venv" / "bin"

    def local(cmd: list[str]) -> list[str]:
        return [str(venv / Path(cmd[0]).name), *cmd[1:]]

    server = subprocess.Popen(
        [*local(serve), "--base-port", str(base)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    agent = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                state(base)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        for name in ("videosdk-token", "orgo-api-key"):
            assert (creds / name).stat().st_mode & 0o777 == 0o600
        agent = subprocess.Popen(
            local(run), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 40
        while True:
            s = state(base)
            if int(s["videosdk"]["frames_total"]) >= 150 and int(s["orgo"]["accepted"]) >= 1:
                break
            assert agent.poll() is None, agent.communicate()[0]
            assert time.monotonic() < deadline, f"no frames at the fake: {s}"
            time.sleep(0.5)
        assert s["videosdk"]["auth_failures"] == []
        with urllib.request.urlopen(
            f"http://127.0.0.1:{base}/videosdk/frames?since=0", timeout=10
        ) as r:
            frames = json.loads(r.read())["frames"]
        import base64

        pcm = np.frombuffer(b"".join(base64.b64decode(f["pcm"]) for f in frames[-50:]), "<i2")
        assert np.abs(pcm).max() > 3000  # the mic's tone, not silence ("open" PTT)
        shown = subprocess.run(
            local(status), cwd=REPO, env=env, capture_output=True, text=True, timeout=20
        )
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"videosdk\s+up", shown.stdout) and re.search(r"orgo\s+up", shown.stdout)
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=20)
        assert agent.returncode == 0, out
        assert "Traceback" not in out and "ALSA lib" not in out
    finally:
        for proc in (agent, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        if server.stdout is not None:
            server.stdout.close()
