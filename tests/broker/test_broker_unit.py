"""The broker's systemd unit: valid for systemd-analyze and hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "broker" / "field-agent-broker.service"
analyze = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(analyze is None, reason="systemd-analyze not installed")


def unit_for_verify(tmp_path: Path) -> Path:
    text = UNIT.read_text().replace(
        "/opt/field-agent-broker/bin/field-agent-broker", sys.executable
    )
    out = tmp_path / "field-agent-broker.service"
    out.write_text(text)
    return out


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert analyze is not None
    r = subprocess.run(
        [analyze, "verify", str(unit_for_verify(tmp_path))], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    for warning in ("Unknown key", "Unknown lvalue", "Unknown section", "Failed to parse"):
        assert warning not in r.stderr, r.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    assert analyze is not None
    r = subprocess.run(
        [analyze, "security", "--offline=true", str(unit_for_verify(tmp_path))],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
