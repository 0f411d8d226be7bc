"""image/build checks its prerequisites before it starts and names what is missing in one
line (it used to exit 127 with no message when the venv was missing)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.foundation.test_bootstrap import path_without

BUILD = REPO / "image" / "build"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image/build runs as root")


def build(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUILD), *args, "--out", "/nonexistent/never-written"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


def test_no_venv_is_one_line_saying_run_bootstrap(tmp_path: Path) -> None:
    # the host programs are faked present: only the venv is missing
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for prog in ("mmdebstrap", "mkfs.ext4"):
        (bin_dir / prog).write_text("#!/bin/sh\nexit 99\n")
        (bin_dir / prog).chmod(0o755)
    python = tmp_path / "no-venv" / "bin" / "python"
    r = build(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(python))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"build: no Python 3.11 venv at {python} for the wheels: "
        "run scripts/bootstrap first (or set $PYTHON)"
    ]


def test_missing_host_programs_name_their_packages(tmp_path: Path) -> None:
    r = build(PATH=path_without(tmp_path, "mmdebstrap", "mkfs.ext4"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "build: missing host packages for an amd64 image: mmdebstrap e2fsprogs "
        "(apt-get install -y mmdebstrap e2fsprogs)"
    ]


def test_an_arm64_build_names_the_emulation_and_sd_card_tools(tmp_path: Path) -> None:
    hide = ("arch-test", "qemu-aarch64-static", "update-binfmts", "mkfs.vfat", "mcopy")
    r = build("--arch", "arm64", PATH=path_without(tmp_path, *hide))
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("build: missing host packages for an arm64 image: ")
    for pkg in ("arch-test", "qemu-user-static", "binfmt-support", "dosfstools", "mtools"):
        assert pkg in line
