"""Every user error of the CLI is one clear line and a documented exit code, never a
traceback (agent/__main__.py's docstring and README's command table list the codes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from agent import config
from agent.hw.devices import other_pcm_notes
from tests.conftest import REPO, agent_cmd, subprocess_env


def cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a person runs it; an ``env`` value of "" removes that variable."""
    full = {k: v for k, v in subprocess_env(**env).items() if v != ""}
    return subprocess.run(
        agent_cmd(*args), capture_output=True, text=True, env=full, timeout=60, cwd=cwd
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def write_wav(path: Path, width: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 800 * width)
    return path


# --- demo: its files are checked before anything starts -------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "missing.wav", "No such file or directory"),
        (lambda d: (d / "notes.wav").write_text("hello") and d / "notes.wav", "not a WAV file"),
        (lambda d: write_wav(d / "8bit.wav", 1), "8-bit WAV, want 16-bit PCM"),
        (lambda d: d, "is a directory, give a 16-bit WAV file"),
    ],
    ids=["missing", "not-wav", "8-bit", "directory"],
)
def test_demo_mic_that_cannot_be_used_is_one_line_at_once(
    tmp_path: Path, make: object, reason: str
) -> None:
    mic = make(tmp_path)  # type: ignore[operator]
    t0 = time.monotonic()
    r = cli("demo", "--mic", str(mic), cwd=tmp_path)
    took = time.monotonic() - t0
    assert r.returncode == 2
    assert one_line(r) == f"field-agent demo: --mic {mic}: {reason}"
    assert "demo summary" not in r.stdout and took < 15  # it did not run the 10 s script


def test_demo_speaker_out_in_a_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "speaker.wav"
    r = cli("demo", "--speaker-out", str(out))
    assert r.returncode == 2
    assert one_line(r) == f"field-agent demo: --speaker-out {out}: no directory {out.parent}"


def test_a_16_bit_wav_of_another_rate_is_accepted(tmp_path: Path) -> None:
    """The check refuses only what the demo's mic cannot play (it resamples)."""
    from agent.__main__ import _demo_files_problem

    with wave.open(str(tmp_path / "mic.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"\0\1" * 44100)
    assert _demo_files_problem(tmp_path / "mic.wav", tmp_path / "out.wav") is None


# --- status: no config file is not a config error --------------------------------------


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_status_without_a_config_file_asks_the_default_address(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "agent.toml"
    if kind == "directory":
        path.mkdir()
    r = cli("status", FIELD_AGENT_CONFIG=str(path))
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    why = "no such file or directory" if kind == "missing" else "is a directory"
    assert lines[0] == (
        f"field-agent status: cannot read {path} ({why}); asking the default 127.0.0.1:9464"
    )
    if r.returncode == 1:  # (an agent of someone else's may listen there on a shared box)
        assert lines[1].startswith("field-agent status: agent not reachable: http://127.0.0.1:9464")
    else:
        assert r.returncode == 0 and "videosdk" in r.stdout
    assert r.returncode != 78


# --- check-config: the shipped placeholders --------------------------------------------


def test_check_config_warns_about_the_shipped_example_values(tmp_path: Path) -> None:
    r = cli("check-config", "--config", str(REPO / "config" / "agent.toml"),
            "--credentials", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    path = REPO / "config" / "agent.toml"
    for example in ('device.id = "dev_12"', 'videosdk.room_id = "abcd-efgh-ijkl"'):
        assert f"{path}: warning: {example} is the example value: edit it" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == f"{path}: OK"


def test_edited_values_get_no_example_warning(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[device]\nid = "kiosk_3"\n[videosdk]\nroom_id = "real-room-0001"\n')
    r = cli("check-config", "--config", str(cfg), "--credentials", str(tmp_path))
    assert r.returncode == 0 and "example value" not in r.stdout


def test_the_example_values_are_the_ones_config_agent_toml_ships() -> None:
    shipped = config.load(REPO / "config" / "agent.toml")
    found = config.example_values(shipped)
    assert len(found) == len(config.EXAMPLE_VALUES), found
    # and the documented example file has nothing else that looks like a placeholder
    assert shipped.device.id == "dev_12" and shipped.videosdk.room_id == "abcd-efgh-ijkl"


def test_a_config_path_that_is_a_directory_is_one_line_and_78(tmp_path: Path) -> None:
    r = cli("selftest", "--config", str(tmp_path))
    assert r.returncode == 78
    assert "Traceback" not in r.stderr + r.stdout
    assert f"{tmp_path}: cannot read: IsADirectoryError" in r.stdout


# --- selftest and devices without a sound card or a Pi ---------------------------------

NO_CARD = """
[device]
id = "dev_test"
[audio]
capture_device = "nosuchmic"
playback_device = "nosuchspk"
[gpio]
status_led = 27
talk_led = 22
[videosdk]
enabled = false
"""


def test_selftest_without_sound_card_or_gpio_prints_no_library_chatter(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(NO_CARD)
    r = cli("selftest", "--config", str(cfg), "--seconds", "0.2", GPIOZERO_PIN_FACTORY="")
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    assert "ALSA lib" not in out  # alsa-lib's own lines: in the log at DEBUG only
    assert "PinFactoryFallback" not in out and "warnings.warn" not in out
    assert "speaker nosuchspk: FAILED: nosuchspk: cannot open" in r.stdout
    gpio = [line for line in r.stdout.splitlines() if line.startswith("gpio:")]
    assert len(gpio) == 1 and "--log-level DEBUG says why" in gpio[0], r.stdout
    assert r.stdout.strip().splitlines()[-1] == "selftest: FAIL"


def test_selftest_at_debug_logs_alsa_lib_and_gpiozero_once(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(NO_CARD)
    r = cli("--log-level", "DEBUG", "selftest", "--config", str(cfg), "--seconds", "0.2",
            GPIOZERO_PIN_FACTORY="")  # fmt: skip
    alsa = [line for line in r.stderr.splitlines() if "alsa-lib pcm.c:" in line]
    # the speaker and the mic fail at the same place: one line for both
    assert len(alsa) == 1 and "Unknown PCM" in alsa[0], r.stderr
    assert "ALSA lib" not in r.stderr
    assert sum("gpiozero: Falling back from" in line for line in r.stderr.splitlines()) >= 1


def test_devices_marks_null_and_the_sound_servers(tmp_path: Path) -> None:
    conf = tmp_path / "asound.conf"
    conf.write_text("pcm.!default { type hw card 7 }\n")
    r = cli("devices", ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{conf}")
    assert r.returncode == 0 and "Traceback" not in r.stderr and "ALSA lib" not in r.stderr
    capture = r.stdout.split("Capture devices")[1].split("Playback devices")[0]
    assert "null       not a real device: it spins a core" in capture
    assert "default    ALSA's default: there is no sound card behind it now" in capture
    assert "null," not in capture  # not offered among the plugin names either


def test_default_is_marked_when_a_stable_card_name_exists() -> None:
    marked, plugins = other_pcm_notes(
        ["null", "default", "pulse", "speexrate"], capture=True, have_cards=True
    )
    notes = dict(marked)
    assert "use the stable CARD= name above" in notes["default"]
    assert notes["pulse"].startswith("a sound server's device")
    assert plugins == ["speexrate"]


def test_exit_codes_are_documented_where_the_code_is() -> None:
    import agent.__main__ as cli_module

    doc = cli_module.__doc__ or ""
    readme = (REPO / "README.md").read_text()
    for code in (1, 2, 77, 78, 130):
        assert re.search(rf"\b{code}\s[(a-z]", doc), code
        assert f"| {code} |" in readme or f"`{code}`" in readme, code
    assert os.EX_NOPERM == cli_module.EX_NOPERM and os.EX_CONFIG == cli_module.EX_CONFIG


def test_sandbox_serve_help_reads_as_a_manual() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "agent.sandbox.serve", "--help"],
        capture_output=True, text=True, env=subprocess_env(), timeout=30,
    )  # fmt: skip
    assert r.returncode == 0
    assert "``" not in r.stdout and ":class:" not in r.stdout  # no docstring markup
    assert "field-agent run --config config/sandbox.toml" in r.stdout  # how to use it
    # the control API as a table, one route a line (not reflowed into a paragraph)
    for route in ("GET  /state", "POST /videosdk/stop", "GET  /orgo/password"):
        assert any(line.strip().startswith(route) for line in r.stdout.splitlines()), route


def test_sandbox_serve_without_credentials_is_a_usage_error() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "agent.sandbox.serve"],
        capture_output=True, text=True, env=subprocess_env(), timeout=30,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "give --credentials DIR, or both --videosdk-token-file and --orgo-key-file" in r.stderr
