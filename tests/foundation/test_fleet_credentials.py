"""videosdk.session_url and the one-credential-set rule: config checks and check-config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent import config
from agent.errors import ConfigError, CredentialError
from agent.links.videosdk_auth import (
    CredentialConflict,
    Mode,
    credential_mode,
)
from tests.conftest import agent_cmd, subprocess_env

# a device id and room that are not the shipped examples (check-config warns about those)
BASE = '[device]\nid = "dev_fleet_7"\n[videosdk]\nroom_id = "room-fleet"\n'


@pytest.mark.parametrize(
    ("url", "allow_insecure", "problem"),
    [
        ("https://broker.example/v1/sessions", False, None),
        ("http://127.0.0.1:8080/v1/sessions", False, None),
        ("http://broker.lan/v1/sessions", False, "http:// to a non-loopback host is refused"),
        ("http://broker.lan/v1/sessions", True, None),
        ("wss://broker.example/v1/sessions", False, "must be a https:///http:// URL"),
        ("broker.example", False, "must be a https:///http:// URL"),
    ],
)
def test_session_url_is_validated_like_the_other_urls(
    url: str, allow_insecure: bool, problem: str | None
) -> None:
    raw = {
        "device": {"id": "dev_12"},
        "videosdk": {"room_id": "r", "session_url": url},
        "security": {"allow_insecure": allow_insecure},
    }
    if problem is None:
        assert config.from_dict(raw).videosdk.session_url == url
        return
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw, path="a.toml")
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith("a.toml: videosdk.session_url: ")
    assert problem in e.value.problems[0]


@pytest.mark.parametrize(
    ("present", "session_url", "mode"),
    [
        ({"device-token"}, "https://b/v1/sessions", Mode.BROKER),
        ({"videosdk-token"}, "", Mode.TOKEN),
        ({"videosdk-api-key", "videosdk-secret"}, "", Mode.KEYS),
        ({"device-token", "orgo-api-key", "pbx-secret"}, "https://b", Mode.BROKER),
    ],
)
def test_exactly_one_credential_set_is_accepted(
    present: set[str], session_url: str, mode: Mode
) -> None:
    assert credential_mode(present, session_url) is mode


@pytest.mark.parametrize(
    ("present", "session_url", "message"),
    [
        ({"device-token", "videosdk-token"}, "https://b", "mixed: found device-token, videosdk-t"),
        ({"device-token", "videosdk-secret"}, "https://b", "mixed"),
        ({"videosdk-token", "videosdk-api-key", "videosdk-secret"}, "", "mixed"),
        ({"videosdk-token"}, "https://b", "session_url is set (a session broker)"),
        ({"device-token"}, "", "'device-token' is for a session broker"),
    ],
)
def test_a_mix_is_a_conflict(present: set[str], session_url: str, message: str) -> None:
    with pytest.raises(CredentialConflict, match=message.replace("(", r"\(").replace(")", r"\)")):
        credential_mode(present, session_url)


def test_missing_or_half_sets_are_credential_errors_not_conflicts() -> None:
    with pytest.raises(CredentialError, match="needs the credential 'device-token'") as e:
        credential_mode(set(), "https://b")
    assert not isinstance(e.value, CredentialConflict)
    with pytest.raises(CredentialError, match="'videosdk-secret' is missing"):
        credential_mode({"videosdk-api-key"}, "")


def check_config(tmp_path: Path, toml: str, **files: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(toml)
    creds = tmp_path / "creds"
    creds.mkdir(exist_ok=True)
    for name, value in files.items():
        (creds / name).write_text(value + "\n")
        os.chmod(creds / name, 0o600)
    env = {k: v for k, v in subprocess_env().items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run(
        agent_cmd("check-config", "--config", str(cfg), "--credentials", str(creds)),
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


BROKER = BASE + 'session_url = "https://broker.example/v1/sessions"\n'


@pytest.mark.parametrize(
    ("toml", "files", "says"),
    [
        (BROKER, {"device-token": "fad_" + "d" * 43}, "session broker (videosdk.session_url"),
        (BASE, {"videosdk-token": "t" * 20}, "VideoSDK token (videosdk-token)"),
        (
            BASE,
            {"videosdk-api-key": "k" * 12, "videosdk-secret": "s" * 40},
            "VideoSDK API key + secret",
        ),
    ],
)
def test_check_config_says_which_credentials_it_found(
    tmp_path: Path, toml: str, files: dict[str, str], says: str
) -> None:
    out = check_config(tmp_path, toml, **files)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"videosdk credentials: {says}" in out.stdout
    for value in files.values():
        assert value not in out.stdout + out.stderr


def test_check_config_refuses_a_mix_with_exit_78_and_one_line(tmp_path: Path) -> None:
    out = check_config(
        tmp_path, BROKER, **{"device-token": "fad_" + "d" * 43, "videosdk-secret": "s" * 40}
    )
    assert out.returncode == 78
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"{tmp_path / 'agent.toml'}: videosdk.session_url: credentials mixed"
    )
    assert "s" * 40 not in out.stdout and "d" * 43 not in out.stdout


def test_check_config_warns_when_the_device_token_is_missing(tmp_path: Path) -> None:
    out = check_config(tmp_path, BROKER)
    assert out.returncode == 0
    assert "warning: credential device-token not found" in out.stdout
