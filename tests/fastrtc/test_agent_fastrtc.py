"""`field-agent run` as systemd runs it, talking to a real fastrtc app on loopback:
real alsa-lib on PulseAudio-paced file-plugin devices (the mic reads a file, the
speaker writes one), a recording NOTIFY_SOCKET, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import NotifyRecorder, PulseDevices, agent_cmd, subprocess_env
from tests.fastrtc.app import FastRTCApp

from .conftest import peak_hz, rms_dbfs, tone

pytestmark = [pytest.mark.fastrtc, pytest.mark.slow]

CONFIG = """
[device]
id = "dev_fastrtc"
[audio]
capture_device = "pacedmic"
playback_device = "pacedspk"
volume = 1.0
[ptt]
mode = "open"
[videosdk]
enabled = false
[fastrtc]
enabled = true
url = "{url}"
[metrics]
listen = ""
"""


def test_mic_tone_comes_back_from_fastrtc_to_the_speaker_file(
    tmp_path: Path, pulse: PulseDevices, notify_socket: NotifyRecorder, app: FastRTCApp
) -> None:
    spk = tmp_path / "spk.raw"
    with pulse.conf.open("a") as conf:  # a paced speaker that also writes what it plays
        conf.write(f'pcm.pacedspk {{ type file slave.pcm "paspk" file "{spk}" format "raw" }}\n')
    tone(700.0, 4.0, rate=8000, dbfs=-12.0).astype("<i2").tofile(pulse.mic)  # then zeros
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG.format(url=app.url))
    proc = subprocess.Popen(
        agent_cmd("run", "--config", str(cfg), "--credentials", str(tmp_path)),
        env=subprocess_env(**pulse.env(), **notify_socket.env()),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        notify_socket.wait_for("READY=1", timeout=30)
        notify_socket.wait_for("STATUS=fastrtc: up (app 127.0.0.1", timeout=15)
        app.wait(app.started, 5, "a session")
        wid = app.started()[0].websocket_id
        app.wait(lambda: app.session(wid).received_samples >= 48000 * 2, 15, "2 s of mic")
        # ~0.9 s pulse start-up stall, then the echo plays into spk.raw
        app.wait(lambda: spk.exists() and spk.stat().st_size >= 48000 * 2 * 3, 20, "3 s played")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        took = time.monotonic() - t0
        app.wait(lambda: app.session(wid).closed, 5, "the app saw the close")
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert took < 2.0, f"stop took {took:.2f} s"
    conn = app.session(wid)
    assert conn.events[0] == "start" and conn.events[-1] == "stop"
    # The app heard the mic: 700 Hz, resampled by the agent to 48 kHz (the app does not).
    heard = app.received(wid)
    start = int(np.argmax(np.abs(heard) > 1000))
    assert peak_hz(heard[start + 4800 : start + 52800], 48000) == pytest.approx(700.0, abs=2.0)
    # The speaker played the echo: 700 Hz at 48 kHz, at the mic's level (volume 1.0).
    played = np.fromfile(spk, dtype="<i2")
    voiced = np.flatnonzero(np.abs(played) > 1000)
    assert voiced.size > 48000, "less than a second of echo reached the speaker"
    echo = played[voiced[0] + 4800 : voiced[0] + 52800]
    assert peak_hz(echo, 48000) == pytest.approx(700.0, abs=2.0)
    assert rms_dbfs(echo) == pytest.approx(-15.0, abs=1.5)
