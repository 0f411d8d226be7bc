"""Credentials: where they are read from, and that their values never show."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent.errors import CredentialError
from agent.secrets import Credentials, RedactingFilter, Secret
from agent.service import setup_logging

VALUE = "tok-3f9a8c7e1d2b"


def write(d: Path, name: str, text: str, mode: int = 0o600) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_reads_credentials_dir_and_strips_one_newline(tmp_path: Path) -> None:
    write(tmp_path, "videosdk-token", VALUE + "\n")
    s = Credentials(tmp_path, env={}).get("videosdk-token")
    assert s.reveal() == VALUE


def test_systemd_credentials_directory_wins(tmp_path: Path) -> None:
    write(tmp_path / "etc", "orgo-api-key", "from-etc-dir")
    write(
        tmp_path / "run", "field-agent_orgo-api-key", "from-systemd\n"
    )  # LoadCredential=field-agent:DIR
    creds = Credentials(tmp_path / "etc", env={"CREDENTIALS_DIRECTORY": str(tmp_path / "run")})
    assert creds.get("orgo-api-key").reveal() == "from-systemd"


def test_missing_and_empty_name_the_file_not_the_value(tmp_path: Path) -> None:
    creds = Credentials(tmp_path, env={})
    with pytest.raises(CredentialError, match="pbx-secret"):
        creds.get("pbx-secret")
    assert creds.optional("pbx-secret") is None
    write(tmp_path, "pbx-secret", "\n")
    with pytest.raises(CredentialError, match="is empty"):
        creds.get("pbx-secret")


def test_world_readable_file_warns_naming_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = write(tmp_path, "videosdk-secret", VALUE, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="agent"):
        Credentials(tmp_path, env={}).get("videosdk-secret")
    assert str(p) in caplog.text and "chmod 600" in caplog.text
    assert VALUE not in caplog.text


def test_secret_never_formats_as_itself() -> None:
    s = Secret("videosdk-token", VALUE)
    for shown in (
        str(s),
        repr(s),
        f"{s}",
        "%s" % s,  # noqa: UP031
        "{}".format(s),  # noqa: UP032
        str([s]),
        str({"k": s}),
    ):
        assert VALUE not in shown
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(s)


def test_no_secret_value_reaches_any_log_record_or_exception_text(tmp_path: Path) -> None:
    """Even a careless log call that formats the raw value is scrubbed by the handler."""
    import io

    write(tmp_path, "videosdk-token", VALUE)
    secret = Credentials(tmp_path, env={}).get("videosdk-token")
    out = io.StringIO()
    handler = setup_logging("DEBUG", journal=False, stream=out)
    log = logging.getLogger("agent.test")
    try:
        log.info("token is %s", secret)  # a Secret: prints ***
        log.info("raw value leaked: %s", secret.reveal())  # a bug: scrubbed by the filter
        try:
            raise RuntimeError(f"auth failed for {secret.reveal()}")
        except RuntimeError:
            log.exception("request failed")
        text = out.getvalue()
        assert VALUE not in text
        assert text.count("***") >= 3
    finally:
        logging.getLogger("agent").removeHandler(handler)
    assert RedactingFilter.scrub(f"x{VALUE}y") == "x***y"
