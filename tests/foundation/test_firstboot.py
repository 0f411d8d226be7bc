"""image/firstboot/field-agent-firstboot: the owner's files on the card's boot partition are
moved into place at boot (secrets root-only, then removed from the partition), a bad
agent.toml is refused, and every step is logged on the card and in the journal.

The script runs for real with its targets under a temporary root
($FIELD_AGENT_FIRSTBOOT_ROOT) and the agent's real `field-agent check-config`; the VM
tier runs the installed unit at boot (image/vm/checks.py check 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "image" / "firstboot" / "field-agent-firstboot"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs root-owned files")


def agent_bin(tmp_path: Path) -> Path:
    """`field-agent` as the image has it, from this checkout's interpreter."""
    exe = tmp_path / "field-agent"
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m agent \"$@\"\n")
    exe.chmod(0o755)
    return exe


def firstboot(tmp_path: Path, boot: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "FIELD_AGENT_FIRSTBOOT_DIR": str(boot),
        "FIELD_AGENT_FIRSTBOOT_ROOT": str(tmp_path / "root"),
        "FIELD_AGENT_BIN": str(agent_bin(tmp_path)),
    }
    return subprocess.run(
        [str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120
    )


GOOD = (REPO / "image" / "vm" / "agent.toml").read_text()


def test_everything_is_moved_into_place_and_off_the_boot_partition(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    (boot / "field-agent-credentials").mkdir(parents=True)
    (boot / "agent.toml").write_text(GOOD)
    # Notepad: CRLF and a .txt on the name; macOS: a resource fork next to it
    (boot / "field-agent-credentials" / "videosdk-token.txt").write_bytes(b"tok-abc\r\n")
    (boot / "field-agent-credentials" / "orgo-api-key").write_text("sk_orgo\n")
    (boot / "field-agent-credentials" / "._orgo-api-key").write_bytes(b"\0\5\26\7")
    (boot / "wpa_supplicant.conf").write_bytes(
        b"ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev\r\n"
        b'network={\r\n  ssid="shop"\r\n  psk="secret-psk"\r\n}\r\n'
    )
    (boot / "authorized_keys").write_text("ssh-ed25519 AAAAC3Nza owner@laptop\n")
    root = tmp_path / "root"
    (root / "etc" / "field-agent").mkdir(parents=True)
    (root / "etc" / "field-agent" / "agent.toml").write_text("# the image's\n")

    r = firstboot(tmp_path, boot)
    assert r.returncode == 0, r.stdout + r.stderr
    creds = root / "etc" / "field-agent" / "credentials"
    assert (creds / "videosdk-token").read_bytes() == b"tok-abc\n"
    assert (creds / "orgo-api-key").read_text() == "sk_orgo\n"
    for f in creds.iterdir():
        st = f.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, 0), f
    assert creds.stat().st_mode & 0o777 == 0o700
    etc = root / "etc" / "field-agent"
    assert (etc / "agent.toml").read_text() == GOOD
    assert (etc / "agent.toml.previous").read_text() == "# the image's\n"
    wpa = root / "etc" / "wpa_supplicant" / "wpa_supplicant-wlan0.conf"
    assert wpa.stat().st_mode & 0o777 == 0o600
    text = wpa.read_text()
    assert "\r" not in text and "GROUP" not in text and 'psk="secret-psk"' in text
    keys = root / "root" / ".ssh" / "authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAAC3Nza owner@laptop\n"
    # the boot partition keeps only the log
    assert sorted(p.name for p in boot.iterdir()) == ["field-agent-setup.log"]
    log = (boot / "field-agent-setup.log").read_text()
    assert "set up from" in log and "2 credential(s), agent.toml, Wi-Fi, 1 ssh key(s)" in log
    assert "tok-abc" not in log + r.stdout and "secret-psk" not in log + r.stdout
    assert r.stdout.splitlines()[-1].endswith("2 credential(s), agent.toml, Wi-Fi, 1 ssh key(s)")


def test_a_bad_agent_toml_is_refused_and_the_reason_is_on_the_card(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "agent.toml").write_text(GOOD.replace("volume = 1.0", "volume = 2.0"))
    r = firstboot(tmp_path, boot)
    assert r.returncode == 1
    assert not (tmp_path / "root" / "etc" / "field-agent" / "agent.toml").exists()
    assert (boot / "agent.toml.rejected").exists() and not (boot / "agent.toml").exists()
    log = (boot / "field-agent-setup.log").read_text()
    assert "agent.toml: rejected (renamed agent.toml.rejected), the current config stays" in log
    assert "audio.volume: must be between 0 and 1" in log


def test_a_second_boot_adds_no_duplicate_key_and_nothing_is_logged_twice(
    tmp_path: Path,
) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    key = "ssh-ed25519 AAAAC3Nza owner@laptop"
    (boot / "authorized_keys").write_text(key + "\n")
    assert firstboot(tmp_path, boot).returncode == 0
    (boot / "authorized_keys").write_text(f"# again\n{key}\n")
    r = firstboot(tmp_path, boot)
    assert "0 new ssh key(s)" in r.stdout
    assert (tmp_path / "root" / "root" / ".ssh" / "authorized_keys").read_text() == key + "\n"
    r = firstboot(tmp_path, boot)
    assert r.returncode == 0
    assert r.stdout.strip() == f"field-agent-firstboot: nothing to set up in {boot}"


def test_a_credential_with_an_odd_name_is_left_and_said(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    (boot / "field-agent-credentials").mkdir(parents=True)
    (boot / "field-agent-credentials" / "My Token").write_text("x\n")
    r = firstboot(tmp_path, boot)
    assert r.returncode == 1
    assert "credentials: My Token: skipped: a credential's name is like videosdk-token" in r.stdout
