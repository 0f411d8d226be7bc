"""Config loading: every key and default of config/agent.toml, every class of mistake reported."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from agent import config, config_checks
from agent.errors import ConfigError
from tests.conftest import REPO, agent_cmd, subprocess_env

SHIPPED = REPO / "config" / "agent.toml"


def problems_of(text: str, tmp_path: Path) -> list[str]:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    for line in e.value.problems:
        assert line.startswith(f"{p}: "), line
    return e.value.problems


def test_shipped_config_loads_and_documents_every_key() -> None:
    cfg = config.load(SHIPPED)
    assert cfg.device.id == "dev_12"
    text = SHIPPED.read_text()
    for key, _default, doc in config.describe_keys():
        section, name = key.split(".")
        assert re.search(rf"^{name} = ", text, re.M), f"{key} missing from config/agent.toml"
        assert doc, f"{key} has no docstring"
    # every value in the shipped file equals the dataclass default, except the documented
    # example values (device identity, room, the generic board's pins)
    examples = {"device.id", "device.name", "videosdk.room_id"} | {
        f"gpio.{k}" for k in cfg.gpio.pins()
    }
    for key, default, _doc in config.describe_keys():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key not in examples:
            assert value == default, f"{key}: shipped {value!r} != default {default!r}"


def test_defaults_match_design() -> None:
    cfg = config.from_dict({"device": {"id": "d"}, "videosdk": {"room_id": "r"}})
    assert cfg.audio.capture_rate == 8000 and cfg.audio.playback_rate == 48000
    assert cfg.audio.volume == 0.8 and cfg.ptt.mode == "hold" and cfg.ptt.idle == "silence"
    assert cfg.ptt.vox_threshold_dbfs == -40.0 and cfg.ptt.vox_hangover_ms == 600
    assert cfg.videosdk.enabled and cfg.videosdk.topics == ("CHAT",)
    assert cfg.videosdk.api_base == "https://api.videosdk.live"
    assert not cfg.orgo.enabled and cfg.orgo.audio_url == "wss://{computer_id}.orgo.dev/audio"
    assert cfg.orgo.sample_rate == 24000 and cfg.orgo.channels == 1
    assert cfg.fastrtc.input_rate == 48000 and cfg.fastrtc.output_rate == 24000
    assert cfg.pbx.listen == "0.0.0.0:8765" and cfg.pbx.secret_header == "Secret"
    assert cfg.metrics.listen == "127.0.0.1:9464" and not cfg.security.allow_insecure
    assert cfg.gpio.pins() == {}  # a missing key disables that control
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.audio.volume = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ('[device]\nid="d"\n[bogus]\nx=1', "bogus", "unknown section"),
        ('[device]\nid="d"\ncolour="red"', "device.colour", "unknown key"),
        ('[device]\nid="d"\n[audio]\nvolume="loud"', "audio.volume", "must be a number"),
        ('[device]\nid="d"\n[audio]\nvolume=1.5', "audio.volume", "between 0 and 1"),
        ('[device]\nid="d"\n[audio]\ncapture_rate=44.1', "audio.capture_rate", "integer"),
        ('[device]\nid="d"\n[audio]\nplayback_rate=4000', "audio.playback_rate", "between 8000"),
        ('[device]\nid="d"\n[gpio]\nptt_button=28', "gpio.ptt_button", "between 0 and 27"),
        (
            '[device]\nid="d"\n[gpio]\nptt_button=17\ntalk_led=17',
            "gpio.talk_led",
            "already used by gpio.ptt_button",
        ),
        ('[device]\nid="d"\n[ptt]\nmode="push"', "ptt.mode", "must be one of"),
        ('[device]\nid="d"\n[gpio]\nbackend="poll"', "gpio.backend", "one of"),
        (
            '[device]\nid="d"\n[gpio]\nbackend="chardev"\npin_factory="mock"',
            "gpio.backend",
            "pin_factory 'mock' has none",
        ),
        ('[device]\nid="d"\n[videosdk]\nenabled=true', "videosdk.room_id", "required when"),
        ("[videosdk]\nenabled=false", "device.id", "required"),
        (
            '[device]\nid="d"\n[videosdk]\nenabled=false\n[orgo]\nenabled=true',
            "orgo.computer_id",
            "required when",
        ),
        ('[device]\nid="d"\n[videosdk]\nenabled="yes"', "videosdk.enabled", "true or false"),
        (
            '[device]\nid="d"\n[videosdk]\nroom_id="r"\ntopics="CHAT"',
            "videosdk.topics",
            "list of strings",
        ),
        (
            '[device]\nid="d"\n[videosdk]\nroom_id="r"\ntopics=[""]',
            "videosdk.topics[0]",
            "1 to 128",
        ),
        ('[device]\nid="d"\n[pbx]\nsample_rate=44100', "pbx.sample_rate", "one of 8000, 16000"),
        ('[device]\nid="d"\n[pbx]\nlisten="8765"', "pbx.listen", "HOST:PORT"),
        (
            '[device]\nid="d"\n[videosdk]\nenabled=false\n[fastrtc]\nenabled=true\nurl="ws://10.0.0.9:7860/x"',
            "fastrtc.url",
            "non-loopback",
        ),
        (
            '[device]\nid="d"\n[videosdk]\nroom_id="r"\napi_base="ftp://x"',
            "videosdk.api_base",
            "URL",
        ),
    ],
)
def test_each_mistake_names_key_and_reason(
    tmp_path: Path, toml: str, key: str, reason: str
) -> None:
    problems = problems_of(toml, tmp_path)
    assert any(f": {key}: " in p and reason in p for p in problems), problems


def test_insecure_allowed_to_loopback_and_when_asked(tmp_path: Path) -> None:
    base = '[device]\nid="d"\n[videosdk]\nroom_id="r"\napi_base="http://{host}:8080"\n'
    p = tmp_path / "a.toml"
    p.write_text(base.format(host="127.0.0.1"))
    assert config.load(p).videosdk.api_base.startswith("http://127.0.0.1")
    p.write_text(base.format(host="example.org") + "[security]\nallow_insecure=true\n")
    assert config.load(p).security.allow_insecure


def test_all_problems_reported_not_just_first(tmp_path: Path) -> None:
    problems = problems_of('[audio]\nvolume=3\nmic_gain_db=99\n[ptt]\nmode="x"\n', tmp_path)
    keys = {p.split(": ")[1] for p in problems}
    assert {
        "audio.volume",
        "audio.mic_gain_db",
        "ptt.mode",
        "device.id",
        "videosdk.room_id",
    } <= keys


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nid=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_check_config_cli_five_mistakes_five_lines(tmp_path: Path) -> None:
    p = tmp_path / "five.toml"
    p.write_text(
        '[device]\nid = "d"\n'
        "[audio]\nvolume = 2.0\n"  # 1 out of range
        'capture_rate = "fast"\n'  # 2 wrong type
        '[ptt]\nmode = "shout"\n'  # 3 not a mode
        "[gpio]\nptt_button = 17\ntalk_led = 17\n"  # 4 pin used twice
        '[videosdk]\nenabled = true\nroom = "x"\n'  # 5 unknown key (and 6: room_id missing)
    )
    out = subprocess.run(
        agent_cmd("check-config", "--config", str(p)),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=30,
    )
    assert out.returncode == 78
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 6, lines
    for key in (
        "audio.volume",
        "audio.capture_rate",
        "ptt.mode",
        "gpio.talk_led",
        "videosdk.room",
        "videosdk.room_id",
    ):
        assert any(line.startswith(f"{p}: {key}: ") for line in lines), (key, lines)


def test_check_config_cli_accepts_shipped_file(tmp_path: Path) -> None:
    out = subprocess.run(
        agent_cmd("check-config", "--config", str(SHIPPED), "--credentials", str(tmp_path)),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(f"{SHIPPED}: OK")
    assert "credential videosdk-token or videosdk-api-key not found" in out.stdout


def test_config_path_from_environment(tmp_path: Path) -> None:
    assert config.default_path({}) == Path("/etc/field-agent/agent.toml")
    assert (
        config.default_path({"FIELD_AGENT_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"
    )


@pytest.mark.parametrize(
    "profile", sorted((REPO / "hardware").glob("*.toml")), ids=lambda p: p.stem
)
def test_board_profiles_are_valid_config(tmp_path: Path, profile: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text('[device]\nid = "d"\n[videosdk]\nroom_id = "r"\n' + profile.read_text())
    cfg = config.load(p)
    assert cfg.gpio.ptt_button == 17  # both boards: PTT on GPIO 17
    assert cfg.audio.capture_device.startswith("plughw:CARD=")


# --- the audio engine's rules, checked before anything is built ---------------------------


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("audio.playback_rate", 44101, "must be a multiple of 50 Hz"),
        ("audio.capture_rate", 22051, "must be a multiple of 50 Hz"),
        ("audio.playback_rate", 4000, "must be between 8000 and 192000 Hz"),
        ("audio.capture_rate", 384000, "must be between 8000 and 192000 Hz"),
        ("orgo.sample_rate", 22050, "must be one of 8000, 16000, 24000, 44100, 48000"),
        ("orgo.channels", 6, "must be one of 1, 2"),
        ("pbx.sample_rate", 44100, "must be one of 8000, 16000"),
        ("ptt.mode", "always", "must be one of 'hold', 'toggle', 'open', 'vox'"),
        ("ptt.vox_hangover_ms", -1, "must be between 0 and 10000 ms"),
        ("ptt.duck_while_talking_db", 1e400, "must be between 0 and 60 dB"),
    ],
)
def test_check_config_refuses_what_the_engine_would_refuse(
    tmp_path: Path, key: str, value: object, reason: str
) -> None:
    """Through the real CLI: exit 78, exactly the one line, no traceback (before, e.g.
    playback_rate = 44101 passed and the generation then crashed building the mixer)."""
    section, name = key.split(".")
    p = tmp_path / "agent.toml"
    literal = "inf" if value == 1e400 else repr(value).replace("'", '"')
    head = '[device]\nid = "d"\n[videosdk]\nenabled = false\n'
    p.write_text(f"{head}[{section}]\n{name} = {literal}\n")
    r = subprocess.run(agent_cmd("check-config", "--config", str(p)), capture_output=True,
                       text=True, env=subprocess_env(), timeout=30)  # fmt: skip
    assert r.returncode == 78, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{p}: {key}: {reason}"), lines
    assert "Traceback" not in r.stdout + r.stderr


def test_every_rate_and_format_the_config_passes_the_engine_builds() -> None:
    """The config's rules and the engine's agree: each allowed value builds for real."""
    from agent.audio.level import Vad
    from agent.audio.mixer import MAX_CHANNELS, MAX_RATE, MIN_RATE, Mixer
    from agent.metrics import Metrics
    from agent.pcm import FRAMES_PER_S
    from agent.ptt import MODES

    assert config_checks.FRAMES_PER_S == FRAMES_PER_S
    for rate in (8000, 11025 - 25, 22050, 44100, 48000, 96000, 192000):
        assert config_checks.device_rate(rate) is None
        Mixer(rate, metrics=Metrics())  # would raise for a rate the engine refuses
    mode_check = dataclasses.fields(config.PttConfig)[0].metadata["check"]
    assert all(mode_check(m) is None for m in MODES) and mode_check("x") is not None
    for f in dataclasses.fields(config.OrgoConfig):
        if f.name == "sample_rate":
            assert all(MIN_RATE <= r <= MAX_RATE for r in (8000, 16000, 24000, 44100, 48000))
        if f.name == "channels":
            assert all(f.metadata["check"](c) is None for c in (1, 2)) and MAX_CHANNELS >= 2
    Vad(-40.0, 0)  # the smallest hangover the config allows
