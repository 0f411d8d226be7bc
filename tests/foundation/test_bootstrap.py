"""scripts/bootstrap names the Debian package that is missing before pip can fail with a
compiler error, and the README's install line installs every package it checks for."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO

BOOTSTRAP = REPO / "scripts" / "bootstrap"


def path_without(tmp_path: Path, *names: str) -> str:
    """A PATH directory with every program of /usr/bin and /bin except ``names``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/bin", "/bin"):
        for entry in os.scandir(d):
            base = entry.name
            if any(base == n or base.startswith(f"{n}-") for n in names):
                continue
            if "-linux-gnu-gcc" in base and "gcc" in names:  # x86_64-linux-gnu-gcc-12
                continue
            link = bin_dir / base
            if not link.exists():
                link.symlink_to(entry.path)
    return str(bin_dir)


def check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BOOTSTRAP), "--check"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


def test_with_everything_installed_the_check_passes() -> None:
    r = check()
    assert r.returncode == 0, r.stderr
    assert "build prerequisites present" in r.stdout


def test_no_compiler_is_one_line_naming_gcc(tmp_path: Path) -> None:
    r = check(PATH=path_without(tmp_path, "gcc", "cc", "c89", "c99"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("bootstrap: missing Debian packages for the build: gcc libc6-dev;")
    assert "apt-get install -y gcc libc6-dev" in lines[0]
    assert "Traceback" not in r.stderr and "error:" not in r.stderr


def test_missing_library_headers_name_their_dev_packages(tmp_path: Path) -> None:
    # pkg-config finds no .pc files: alsa-lib and libsystemd look uninstalled
    r = check(PKG_CONFIG_LIBDIR=str(tmp_path / "none"))
    assert r.returncode == 1
    assert "for the build: libasound2-dev libsystemd-dev;" in r.stderr


def test_no_pkg_config_is_named_too(tmp_path: Path) -> None:
    r = check(PATH=path_without(tmp_path, "pkg-config", "x86_64-pc-linux-gnu-pkg-config"))
    assert r.returncode == 1
    assert "for the build: pkg-config libasound2-dev libsystemd-dev;" in r.stderr


def test_the_hint_has_sudo_only_for_a_normal_user(tmp_path: Path) -> None:
    r = check(PKG_CONFIG_LIBDIR=str(tmp_path / "none"))
    hint = r.stderr.split("install them: ")[1]
    assert hint.startswith("apt-get" if os.getuid() == 0 else "sudo apt-get")


def test_the_readme_install_line_installs_what_bootstrap_checks_for() -> None:
    readme = (REPO / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "apt-get install -y" in ln)
    assert line.startswith("$(command -v sudo) sh -c 'apt-get update && apt-get install -y ")
    installed = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", line.split("install -y", 1)[1]))
    script = BOOTSTRAP.read_text()
    checked = set(re.findall(r"missing\+=\(([^)]*)\)", script))
    checked = {pkg for group in checked for pkg in group.split() if "$" not in pkg}
    assert checked and checked <= installed, checked - installed
