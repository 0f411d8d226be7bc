"""Credentials: read from files, never shown.

Each secret is a file: ``$CREDENTIALS_DIRECTORY/<name>`` or ``field-agent_<name>`` there
(systemd ``LoadCredential=field-agent:<dir>`` loads a whole directory under that prefix),
else ``<credentials dir>/<name>`` (``--credentials DIR``, default
``/etc/field-agent/credentials``). One trailing newline is stripped.

A :class:`Secret` prints as ``***`` everywhere (str, repr, f-strings, logging);
only :meth:`Secret.reveal` gives the value, at the one place it goes on the wire.
Every value read is also registered with :class:`RedactingFilter`, which scrubs
it from any log record that might still carry it.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

from agent.errors import CredentialError

logger = logging.getLogger(__name__)

DEFAULT_DIR = Path("/etc/field-agent/credentials")
NAMES = (
    "device-token",
    "videosdk-token",
    "videosdk-api-key",
    "videosdk-secret",
    "orgo-api-key",
    "pbx-secret",
    "command-key",
)
MASK = "***"
CREDENTIAL_ID = "field-agent"  # LoadCredential=field-agent:/etc/field-agent/credentials


class Secret:
    """A secret value that never formats as itself."""

    __slots__ = ("_value", "name")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def reveal(self) -> str:
        """The value, for the one place it is sent. Never log the result."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name!r}, {MASK})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str:  # refuse pickling: it would carry the value
        raise TypeError("secrets cannot be pickled")


class RedactingFilter(logging.Filter):
    """Replace every known secret value in a record's final message with ``***``."""

    _values: set[str] = set()
    _lock = threading.Lock()

    @classmethod
    def register(cls, value: str) -> None:
        if len(value) >= 4:  # shorter values would mangle ordinary text
            with cls._lock:
                cls._values.add(value)

    @classmethod
    def scrub(cls, text: str) -> str:
        with cls._lock:
            values = sorted(cls._values, key=len, reverse=True)
        for v in values:
            if v in text:
                text = text.replace(v, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._values:
            return True
        message = record.getMessage()
        clean = self.scrub(message)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


class Credentials:
    """Where secrets are read from, and the reading of them."""

    def __init__(self, directory: Path | None = None, env: Mapping[str, str] = os.environ) -> None:
        systemd_dir = env.get("CREDENTIALS_DIRECTORY")
        self.dirs = [Path(systemd_dir)] if systemd_dir else []
        self.dirs.append(directory or DEFAULT_DIR)
        self._warned: set[Path] = set()

    def path_of(self, name: str) -> Path | None:
        for d in self.dirs:
            # systemd loads a credentials *directory* as "<id>_<file>" (see the unit file)
            for candidate in (d / name, d / f"{CREDENTIAL_ID}_{name}"):
                if candidate.is_file():
                    return candidate
        return None

    def has(self, name: str) -> bool:
        return self.path_of(name) is not None

    def get(self, name: str) -> Secret:
        """Read secret ``name``; raise CredentialError naming the file (never the value)."""
        path = self.path_of(name)
        if path is None:
            where = " or ".join(str(d / name) for d in self.dirs)
            raise CredentialError(f"credential {name!r} not found (looked for {where})")
        try:
            st = path.stat()
            data = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CredentialError(
                f"credential file {path} unreadable: {e.__class__.__name__}"
            ) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and path not in self._warned:
            self._warned.add(path)
            logger.warning(
                "credential file %s is readable by group or others (mode %o); chmod 600 it",
                path,
                stat.S_IMODE(st.st_mode),
            )
        value = data[:-1] if data.endswith("\n") else data
        value = value[:-1] if value.endswith("\r") else value
        if not value:
            raise CredentialError(f"credential file {path} is empty")
        RedactingFilter.register(value)
        return Secret(name, value)

    def optional(self, name: str) -> Secret | None:
        """Like :meth:`get` but None when the file does not exist."""
        return self.get(name) if self.has(name) else None
