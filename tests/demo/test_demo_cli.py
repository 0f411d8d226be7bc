"""`field-agent demo` options: --real-audio on a machine with and without sound devices,
and the option mistakes a person can make."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from agent.__main__ import main
from tests.conftest import PulseDevices, agent_cmd, subprocess_env


def demo(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_cmd("demo", *args),
        capture_output=True, text=True, env=subprocess_env(**env), timeout=timeout,
    )  # fmt: skip


def alsa_env(conf: Path, text: str) -> dict[str, str]:
    conf.write_text(text)
    return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{conf}"}


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("--real-audio", "--mic", "x.wav"), "--real-audio uses the ALSA mic and speaker"),
        (("--real-audio", "--speaker-out", "x.wav"), "--real-audio uses the ALSA mic and speaker"),
        (("--duration", "0"), "--duration must be more than 0 seconds"),
        (("--duration", "soon"), "invalid float value: 'soon'"),
    ],
)
def test_option_mistakes_are_usage_errors(
    args: tuple[str, ...], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["demo", *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert code == 2 and why in err, err
    assert "demo summary" not in out


def test_real_audio_without_a_sound_card_says_so_at_once(tmp_path: Path) -> None:
    env = alsa_env(tmp_path / "nocard.conf", "pcm.!default { type hw card 7 }\n")
    t0 = time.monotonic()
    r = demo("--real-audio", **env)
    assert r.returncode == 1, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]  # (alsa-lib may print its own lines first)
    assert "Traceback" not in r.stderr and "ready" not in r.stderr  # no crash, no agent started
    assert last.startswith("field-agent demo: --real-audio: no usable ALSA mic (")
    assert "`field-agent devices` lists the sound cards" in last
    assert time.monotonic() - t0 < 20 and "demo summary" not in r.stdout


@pytest.mark.slow
def test_real_audio_uses_the_alsa_default_mic_and_speaker(
    tmp_path: Path, pulse: PulseDevices
) -> None:
    """ALSA's default device routed to a paced PulseAudio mic (reading a file) and sink."""
    t = np.arange(8000 * 8) / 8000
    (0.3 * 32767 * np.sin(2 * np.pi * 500 * t)).astype("<i2").tofile(pulse.mic)
    default = 'pcm.!default { type asym playback.pcm "paspk" capture.pcm "pacedmic" }\n'
    conf = tmp_path / "default.conf"
    conf.write_text(default)
    env = pulse.env()
    env["ALSA_CONFIG_PATH"] += f":{conf}"
    r = demo("--real-audio", "--duration", "4", timeout=90, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"(\d+) voiced \(PTT held ([\d.]+) s\)", r.stdout)
    assert m, r.stdout
    voiced, held = int(m.group(1)), float(m.group(2))
    assert held == pytest.approx(2.0, abs=0.3)  # scripted: pressed at 2 s, run ends at 4 s
    assert abs(voiced - 50 * held) <= 5, r.stdout  # the file's tone, through the real mic path
    assert "speaker: (ALSA default)" in r.stdout
