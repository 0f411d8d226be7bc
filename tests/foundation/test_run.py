"""`field-agent run` as systemd runs it: a subprocess with a recording NOTIFY_SOCKET,
real alsa-lib on PulseAudio-paced devices, SIGTERM, SIGHUP, exit codes."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from tests.conftest import NotifyRecorder, PulseDevices, agent_cmd, subprocess_env

AUDIO_ONLY = """
[device]
id = "dev_test"
[audio]
capture_device = "pacedmic"
playback_device = "paspk"
[ptt]
mode = "open"
[videosdk]
enabled = false
[metrics]
listen = ""
"""


def start(
    cfg: Path, pulse: PulseDevices, notify: NotifyRecorder, tmp_path: Path, **env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        agent_cmd("run", "--config", str(cfg), "--credentials", str(tmp_path)),
        env=subprocess_env(**pulse.env(), **notify.env(), **env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_run_notifies_ready_status_watchdog_and_stops_on_sigterm(
    tmp_path: Path, pulse: PulseDevices, notify_socket: NotifyRecorder
) -> None:
    # a loud 1 kHz tone on the mic, so the STATUS line's meter has something to show
    t = np.arange(8000 * 3) / 8000
    (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tofile(pulse.mic)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(AUDIO_ONLY)
    proc = start(cfg, pulse, notify_socket, tmp_path, WATCHDOG_USEC="1000000")
    try:
        notify_socket.wait_for("READY=1", timeout=20)
        status = notify_socket.wait_for("STATUS=", timeout=5)
        assert "ptt:" in status
        mark = len(notify_socket.lines())
        time.sleep(1.6)  # pings every 0.5 s while every loop makes progress
        assert notify_socket.lines()[mark:].count("WATCHDOG=1") >= 2
        assert any("mic -" in line for line in notify_socket.lines() if line.startswith("STATUS="))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=5)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "STOPPING=1" in notify_socket.lines()
    assert took < 2.0, f"stop took {took:.2f}s"


def test_sighup_with_bad_config_keeps_running_then_good_config_reloads(
    tmp_path: Path, pulse: PulseDevices, notify_socket: NotifyRecorder
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(AUDIO_ONLY)
    proc = start(cfg, pulse, notify_socket, tmp_path)
    try:
        notify_socket.wait_for("READY=1", timeout=20)
        cfg.write_text(AUDIO_ONLY.replace('mode = "open"', 'mode = "shout"'))
        mark = len(notify_socket.lines())
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("READY=1", timeout=10, after=mark)  # old config kept running
        assert proc.poll() is None
        cfg.write_text(AUDIO_ONLY.replace('mode = "open"', 'mode = "toggle"'))
        mark = len(notify_socket.lines())
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1", timeout=10, after=mark)
        notify_socket.wait_for("READY=1", timeout=10, after=mark)
        notify_socket.wait_for("STATUS=ptt: idle (toggle)", timeout=5, after=mark)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "reload refused, keeping the running config" in out and "ptt.mode: must be one of" in out


def test_bad_config_exits_78_naming_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[device]\nid = "d"\n[audio]\nvolume = 9\n')
    r = subprocess.run(agent_cmd("run", "--config", str(cfg)), capture_output=True, text=True,
                       env=subprocess_env(), timeout=30)  # fmt: skip
    assert r.returncode == 78
    assert f"{cfg}: audio.volume: must be between 0 and 1" in r.stderr


def sighup_caught(pid: int) -> bool:
    """Whether the process has a handler for SIGHUP (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & (1 << (signal.SIGHUP - 1)))


def test_sighups_during_start_up_never_kill_and_reload_once_ready(
    tmp_path: Path, pulse: PulseDevices, notify_socket: NotifyRecorder
) -> None:
    """SIGHUP's default action ends a process: from the first moment the agent can catch
    it (right after the interpreter starts), a SIGHUP every 20 ms during the whole
    start-up neither kills it nor keeps it from READY; it reloads once, when ready."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(AUDIO_ONLY)
    proc = start(cfg, pulse, notify_socket, tmp_path)
    sent = 0
    try:
        deadline = time.monotonic() + 20
        while "READY=1" not in notify_socket.lines():
            assert proc.poll() is None, f"killed after {sent} SIGHUP(s): {proc.communicate()[0]}"
            assert time.monotonic() < deadline, "no READY=1"
            if sighup_caught(proc.pid):
                proc.send_signal(signal.SIGHUP)
                sent += 1
            time.sleep(0.02)
        mark = notify_socket.lines().index("READY=1")
        notify_socket.wait_for("RELOADING=1", timeout=10, after=mark)
        notify_socket.wait_for("READY=1", timeout=10, after=mark + 1)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert sent >= 3, f"only {sent} SIGHUP(s) before READY: the start-up was not covered"
    assert proc.returncode == 0, out
    # caught before the event loop's handler existed (imports, config): remembered, then
    # handled once ready, as one reload
    assert "SIGHUP during start-up: reloading once ready" in out
    assert "reload: no change" in out


def test_status_shows_a_refused_reload_until_a_good_one(
    tmp_path: Path, pulse: PulseDevices, notify_socket: NotifyRecorder
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    good = AUDIO_ONLY.replace('listen = ""', f'listen = "127.0.0.1:{port}"')
    cfg = tmp_path / "agent.toml"
    cfg.write_text(good)

    def status() -> str:
        cmd = agent_cmd("status", "--url", f"http://127.0.0.1:{port}")
        r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    proc = start(cfg, pulse, notify_socket, tmp_path)
    try:
        notify_socket.wait_for("READY=1", timeout=20)
        assert "last error: -" in status()
        cfg.write_text(good.replace("[ptt]", "[ptt\n"))  # a half-written file
        mark = len(notify_socket.lines())
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("READY=1", timeout=10, after=mark)
        assert "last error: reload refused" in status()
        cfg.write_text(good.replace("[audio]", "[audio]\nvolume = 0.5"))
        mark = len(notify_socket.lines())
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("READY=1", timeout=10, after=mark)
        shown = status()
        assert "last error: -" in shown, shown
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "reload: audio.volume 0.8 -> 0.5" in out
