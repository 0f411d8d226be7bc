"""`field-agent devices` and `field-agent selftest` as a user runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import PulseDevices, agent_cmd, subprocess_env

CFG = """
[device]
id = "dev_test"
[audio]
capture_device = "pacedmic"
playback_device = "paspk"
[gpio]
status_led = 27
talk_led = 22
{extra}
[videosdk]
enabled = false
"""


def selftest(
    tmp_path: Path, pulse: PulseDevices, extra: str = ""
) -> subprocess.CompletedProcess[str]:
    import numpy as np

    (0.3 * 32767 * np.sin(np.arange(8000 * 3) * 0.5)).astype("<i2").tofile(pulse.mic)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CFG.format(extra=extra))
    env = subprocess_env(**pulse.env(), GPIOZERO_PIN_FACTORY="mock")
    return subprocess.run(
        agent_cmd("selftest", "--config", str(cfg), "--seconds", "1", "--ptt-timeout", "0.5"),
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_selftest_passes_with_tone_meter_and_led_walk(tmp_path: Path, pulse: PulseDevices) -> None:
    r = selftest(tmp_path, pulse)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LED status_led (GPIO 27) on" in r.stdout and "LED talk_led (GPIO 22) on" in r.stdout
    assert "selftest: PASS" in r.stdout


def test_selftest_fails_clearly_without_a_ptt_press(tmp_path: Path, pulse: PulseDevices) -> None:
    r = selftest(tmp_path, pulse, extra="ptt_button = 17")
    assert r.returncode == 1
    assert "no PTT press seen" in r.stdout and "selftest: FAIL" in r.stdout


def test_devices_names_the_problem_on_a_machine_without_cards() -> None:
    r = subprocess.run(
        agent_cmd("devices"), capture_output=True, text=True, env=subprocess_env(), timeout=30
    )
    assert r.returncode == 0
    assert "Capture devices" in r.stdout and "Playback devices" in r.stdout
