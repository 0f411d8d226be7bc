"""Credentials as people write them and as the service user meets them (issue 17, item 7).

The permission stories run the real CLI as an unprivileged user (uid 65534, as the
``field-agent`` user would be) against a real root-only directory: root reads anything,
so only another uid shows what the service sees.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import CredentialError
from agent.links.videosdk_auth import TokenSource
from agent.secrets import Credentials
from tests.conftest import REPO, agent_cmd, subprocess_env

VALUE = "tok-5e1f0a9c3b7d"
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@functools.cache
def _can_run_as_nobody() -> bool:
    """Root, setpriv, and an interpreter another uid may execute (not under a 0700 /root)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run([*AS_NOBODY, *agent_cmd("--version")], capture_output=True, timeout=30)
    return probe.returncode == 0


as_service_user = pytest.mark.skipif(
    "not _can_run_as_nobody()", reason="needs root, setpriv and a Python uid 65534 can run"
)


def write(d: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_bytes(data)
    os.chmod(p, mode)
    return p


@pytest.mark.parametrize(
    "data, stripped",
    [
        (b"\xef\xbb\xbf" + VALUE.encode() + b"\n", "a byte-order mark"),
        (VALUE.encode() + b"\r\n", "CR line ends"),
        (b"  " + VALUE.encode() + b"\t\n", "spaces or tabs"),
        (VALUE.encode() + b"\n\n\n", "extra newlines"),
        (b"\xef\xbb\xbf " + VALUE.encode() + b" \r\n\r\n", "a byte-order mark, CR line ends"),
    ],
)
def test_whitespace_crlf_and_bom_are_stripped_with_one_warning_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes, stripped: str
) -> None:
    path = write(tmp_path, "orgo-api-key", data)
    creds = Credentials(tmp_path, env={})
    with caplog.at_level(logging.WARNING, logger="agent"):
        assert creds.get("orgo-api-key").reveal() == VALUE
        assert creds.get("orgo-api-key").reveal() == VALUE  # read again: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and stripped in warnings[0]
    assert VALUE not in caplog.text


def test_a_file_written_with_echo_is_read_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "pbx-secret", VALUE.encode() + b"\n")
    write(tmp_path, "orgo-api-key", VALUE.encode())  # printf, no newline
    creds = Credentials(tmp_path, env={})
    with caplog.at_level(logging.WARNING, logger="agent"):
        assert creds.get("pbx-secret").reveal() == VALUE
        assert creds.get("orgo-api-key").reveal() == VALUE
    assert not caplog.records


def test_utf16_blank_and_huge_files_are_refused_by_name(tmp_path: Path) -> None:
    creds = Credentials(tmp_path, env={})
    write(tmp_path, "orgo-api-key", "\ufeff".encode("utf-16-le") + VALUE.encode("utf-16-le"))
    with pytest.raises(CredentialError, match="orgo-api-key is UTF-16 text: save it as UTF-8"):
        creds.get("orgo-api-key")
    write(tmp_path, "pbx-secret", b" \r\n\t\n")
    with pytest.raises(CredentialError, match="pbx-secret is empty"):
        creds.get("pbx-secret")
    write(tmp_path, "videosdk-token", b"x" * 100_000)
    with pytest.raises(CredentialError, match="larger than 64 KiB"):
        creds.get("videosdk-token")


def test_a_missing_credential_says_what_to_put_where(tmp_path: Path) -> None:
    plain = Credentials(tmp_path / "creds", env={})
    with pytest.raises(CredentialError) as e:
        TokenSource(plain).token()
    assert str(e.value) == (
        "no VideoSDK credential: put videosdk-token (or videosdk-api-key and videosdk-secret) "
        f"in {tmp_path / 'creds'}"
    )
    run = tmp_path / "run"
    run.mkdir()
    under_systemd = Credentials(tmp_path / "creds", env={"CREDENTIALS_DIRECTORY": str(run)})
    with pytest.raises(CredentialError) as e:
        under_systemd.get("orgo-api-key")
    assert str(e.value) == (
        f"no Orgo credential: put orgo-api-key in {tmp_path / 'creds'}, "
        "then systemctl restart field-agent"
    )


@pytest.fixture
def public(tmp_path: Path) -> Iterator[Path]:
    """A directory the service user can reach (pytest's tmp_path is under a 0700 dir)."""
    d = Path(tempfile.mkdtemp(prefix="fa-creds-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _root_only_dir(tmp_path: Path) -> Path:
    """/etc/field-agent/credentials as provision.sh makes it (root, 0700), with a file."""
    d = tmp_path / "credentials"
    write(d, "videosdk-token", VALUE.encode() + b"\n")
    os.chmod(d, 0o700)
    return d


def _config(tmp_path: Path) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(
        '[device]\nid = "d1"\n[videosdk]\nroom_id = "room-1"\napi_base = "http://127.0.0.1:9"\n'
        '[audio]\ncapture_device = "null"\nplayback_device = "null"\n[metrics]\nlisten = ""\n'
    )
    os.chmod(p, 0o644)
    return p


@as_service_user
def test_check_config_as_a_user_says_the_credentials_are_root_only(public: Path) -> None:
    tmp_path = public
    creds = _root_only_dir(tmp_path)
    r = subprocess.run(
        [*AS_NOBODY, *agent_cmd("check-config", "--config", str(_config(tmp_path)),
                                "--credentials", str(creds))],
        capture_output=True, text=True, env=subprocess_env(), timeout=30, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert (
        f"credentials: cannot check videosdk-token or videosdk-api-key and videosdk-secret: "
        f"{creds} is root-only: run with sudo to check credentials"
    ) in r.stdout
    assert r.stdout.strip().endswith(": OK")
    # with sudo (root here), the same file is read and checked
    r = subprocess.run(
        agent_cmd("check-config", "--config", str(_config(tmp_path)), "--credentials", str(creds)),
        capture_output=True, text=True, env=subprocess_env(), timeout=30,
    )  # fmt: skip
    assert f"credentials: videosdk-token: ok ({creds / 'videosdk-token'})" in r.stdout
    assert VALUE not in r.stdout + r.stderr


@as_service_user
@pytest.mark.parametrize("systemd", [False, True], ids=["by-hand", "under-systemd"])
def test_the_service_user_sees_a_credential_problem_not_permission_denied(
    public: Path, systemd: bool
) -> None:
    """`field-agent run` as the service user, with the root-only directory and (under
    systemd) an empty $CREDENTIALS_DIRECTORY: the link needs attention for a credential,
    and no "Permission denied" connection error is shown."""
    tmp_path = public
    creds = _root_only_dir(tmp_path)
    (creds / "videosdk-token").unlink()
    extra = {}
    if systemd:
        run = tmp_path / "run-credentials"
        run.mkdir(mode=0o755)
        extra["CREDENTIALS_DIRECTORY"] = str(run)
    proc = subprocess.Popen(
        [*AS_NOBODY, *agent_cmd("run", "--config", str(_config(tmp_path)),
                                "--credentials", str(creds))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=subprocess_env(HOME=str(tmp_path), **extra), cwd=REPO,
    )  # fmt: skip
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=15)[0]
    assert proc.returncode == 0, out
    assert "Permission denied" not in out and "cannot connect" not in out, out
    if systemd:
        want = (
            f"videosdk needs attention: no VideoSDK credential: put videosdk-token (or "
            f"videosdk-api-key and videosdk-secret) in {creds}, then systemctl restart field-agent"
        )
    else:
        want = (
            "videosdk needs attention: no VideoSDK credential: cannot read credentials "
            f"directory {creds}: root-only (run under systemd, with sudo, or with "
            "--credentials DIR)"
        )
    assert want in out, out
