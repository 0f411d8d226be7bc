"""``[cues]``, ``[emergency]``, ``gpio.emergency_button``: bad values are one line each
``PATH: section.key: reason`` and exit 78, from the CLI as a person runs it."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from agent import config
from agent.hw.sim import write_wav
from tests.conftest import agent_cmd, subprocess_env
from tests.support import toml_text


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_cmd(*args), capture_output=True, text=True, env=subprocess_env(), timeout=60
    )


def write_float_wav(path: Path) -> Path:
    """A WAV of 32-bit floats (format 3): the stdlib cannot read it, nor can the agent."""
    data = np.zeros(800, "<f4").tobytes()
    fmt = (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    fmt += (32000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt
    body += b"data" + len(data).to_bytes(4, "little") + data
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    return path


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_cue_files_that_cannot_be_read_are_config_errors_naming_the_file(
    tmp_path: Path, command: str
) -> None:
    long = write_wav(tmp_path / "long.wav", np.zeros(6 * 8000, np.int16), 8000)
    text = tmp_path / "notes.wav"
    text.write_text("not a sound")
    floats = write_float_wav(tmp_path / "float.wav")
    with wave.open(str(tmp_path / "empty.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        toml_text(
            {
                "device": {"id": "d"},
                "videosdk": {"room_id": "r"},
                "cues": {
                    "talk_permit": str(tmp_path / "missing.wav"),
                    "refusal": str(text),
                    "roger": str(long),
                    "link_lost": str(floats),
                    "link_back": str(tmp_path / "empty.wav"),
                    "mute_on": str(tmp_path),
                    "mute_off": "beep.wav",
                    "volume": 2,
                },
                "emergency": {"hold_s": 0.1},
            }
        )
    )
    r = cli(command, "--config", str(cfg))
    assert r.returncode == 78
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    p = str(cfg)
    for line in (
        f"{p}: cues.talk_permit: file {tmp_path / 'missing.wav'} not found",
        f"{p}: cues.refusal: {text} is not a PCM WAV file (file does not start with RIFF id)",
        f"{p}: cues.roger: {long} is longer than 5 s (a cue is a short sound)",
        f"{p}: cues.link_lost: {floats} is not a PCM WAV file (unknown format: 3)",
        f"{p}: cues.link_back: {tmp_path / 'empty.wav'} holds no audio",
        f"{p}: cues.mute_on: {tmp_path} is not a regular file",
        f'{p}: cues.mute_off: must be "" (off), "tone", or the absolute path of a WAV file, '
        "not 'beep.wav'",
        f"{p}: cues.volume: must be between 0 and 1, not 2.0",
        f"{p}: emergency.hold_s: must be between 1 and 10 s, not 0.1",
    ):
        assert line in out, out


def test_an_emergency_button_needs_somewhere_to_send_the_alert(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        toml_text(
            {
                "device": {"id": "d"},
                "gpio": {"emergency_button": 16, "ptt_button": 16},
                "videosdk": {"room_id": "r", "alert_topic": ""},
            }
        )
    )
    r = cli("check-config", "--config", str(cfg))
    assert r.returncode == 78
    assert r.stdout.splitlines() == [
        f"{cfg}: gpio.emergency_button: an emergency alert needs videosdk.enabled = true and "
        "a videosdk.alert_topic",
        f"{cfg}: gpio.emergency_button: GPIO 16 is already used by gpio.ptt_button",
    ]


def test_good_wav_cues_of_every_sample_width_load(tmp_path: Path) -> None:
    paths = {}
    for width, name in ((1, "talk_permit"), (2, "refusal"), (3, "roger"), (4, "alarm")):
        path = tmp_path / f"{width}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2 if width == 2 else 1)
            w.setsampwidth(width)
            w.setframerate(44100)
            w.writeframes(b"\x01" * 4410 * width * (2 if width == 2 else 1))
        paths[name] = str(path)
    cfg = config.from_dict({"device": {"id": "d"}, "videosdk": {"room_id": "r"}, "cues": paths})
    assert cfg.cues.roger == paths["roger"]
