"""The systemd unit: valid for systemd-analyze, hardened, and carrying the contract."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "systemd" / "field-agent.service"
analyze = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    analyze is None, reason="systemd-analyze not installed (apt install systemd)"
)


def unit_for_verify(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at an executable that exists on this machine
    (verify checks it); every other line is verified as shipped."""
    text = UNIT.read_text().replace("/opt/field-agent/bin/field-agent", sys.executable)
    out = tmp_path / "field-agent.service"
    out.write_text(text)
    return out


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    r = subprocess.run(
        [analyze, "verify", str(unit_for_verify(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    for warning in ("Unknown key", "Unknown lvalue", "Unknown section", "Failed to parse"):
        assert warning not in r.stderr, r.stderr


def test_security_exposure_at_most_2_5(tmp_path: Path) -> None:
    r = subprocess.run(
        [analyze, "security", "--offline=true", str(unit_for_verify(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5, m.group(0)


def test_unit_keeps_the_operational_contract() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "RestartPreventExitStatus=78",
        "Restart=on-failure",
        "User=field-agent",
        "SupplementaryGroups=audio gpio",
        "StateDirectory=field-agent",
        "DeviceAllow=char-116 rw",
        "LimitNOFILE=512",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    assert re.search(r"^LoadCredential=field-agent:/etc/field-agent/credentials$", text, re.M)
    assert re.search(r"^After=.*sound.target", text, re.M)


def test_unit_starts_without_a_network_and_without_a_synced_clock() -> None:
    """Nothing the unit waits for can hang on a device with no network (issue 17, item 13):
    not network-online.target (wait-online gives up after 2 min), not time-sync.target
    (systemd-time-wait-sync, if enabled, waits for NTP forever)."""
    text = UNIT.read_text()
    deps = " ".join(
        m.group(2) for m in re.finditer(r"^(After|Wants|Requires|BindsTo)=(.*)$", text, re.M)
    )
    assert "network-online.target" not in deps and "time-sync.target" not in deps, deps
    assert re.search(r"^After=.*network.target", text, re.M)
    assert re.search(r"^After=.*time-set.target", text, re.M)  # never waits for a network
