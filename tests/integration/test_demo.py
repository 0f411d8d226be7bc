"""`field-agent demo`: the first command a newcomer runs must do the whole job."""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import agent_cmd, subprocess_env

pytestmark = pytest.mark.slow


def test_scripted_demo_summary(tmp_path: Path) -> None:
    out_wav = tmp_path / "speaker.wav"
    args = ("--log-level", "WARNING", "demo", "--duration", "10", "--speaker-out", str(out_wav))
    r = subprocess.run(
        agent_cmd(*args),
        capture_output=True, text=True, env=subprocess_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(
        r"(\d+) sessions, (\d+) reconnect\(s\), (\d+) frames sent, (\d+) voiced", r.stdout
    )
    assert m, r.stdout
    sessions, reconnects, sent, voiced = map(int, m.groups())
    assert reconnects == 1 and sessions == 2
    assert sent >= 350  # 50 frames/s while the room was up (about 8.5 of the 10 s)
    assert 145 <= voiced <= 155  # PTT held 3 s at 50 frames/s
    orgo = int(re.search(r"orgo: (\d+) frames received", r.stdout).group(1))
    assert orgo > 300
    with wave.open(str(out_wav)) as w:
        assert w.getframerate() == 48000
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert pcm.size > 48000 * 5 and np.abs(pcm).max() > 1000  # the speaker really played
