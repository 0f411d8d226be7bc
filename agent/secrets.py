"""Credentials: read from files, never shown.

Each secret is a file: ``$CREDENTIALS_DIRECTORY/<name>`` or ``field-agent_<name>`` there
(systemd ``LoadCredential=field-agent:<dir>`` loads a whole directory under that prefix),
else ``<credentials dir>/<name>`` (``--credentials DIR``, default
``/etc/field-agent/credentials``).

Values are read as people write them: one trailing newline is expected (``echo``
writes it) and stripped silently; anything else around the value (spaces, tabs,
CR/LF from a Windows editor, more newlines, a UTF-8 byte-order mark) is stripped
too, with one warning naming the file (never the value). A file that is not UTF-8
(e.g. saved as UTF-16), larger than :data:`MAX_BYTES` or empty is refused.

A credential that cannot be found reads as one, with what to do
(``no VideoSDK credential: put videosdk-token in /etc/field-agent/credentials``):
under systemd the service reads the copy ``LoadCredential=`` took at start (the
root-only directory itself is not readable by the service user, which is normal
there); outside systemd, a root-only directory is named as such. Errors never
carry the OS error's traceback nor any value.

A :class:`Secret` prints as ``***`` everywhere (str, repr, f-strings, logging);
only :meth:`Secret.reveal` gives the value, at the one place it goes on the wire.
Every value read is also registered with :class:`RedactingFilter`, which scrubs
it from any log record that might still carry it.
"""

from __future__ import annotations

import errno
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
MAX_BYTES = 64 * 1024  # a token, key or password; anything bigger is not one
_LABELS = {"videosdk": "VideoSDK", "orgo": "Orgo", "pbx": "PBX"}
_BOM = "\ufeff"


def label(name: str) -> str:
    """``videosdk-token`` -> ``VideoSDK``: the service a credential belongs to."""
    prefix = name.split("-", 1)[0]
    return _LABELS.get(prefix, prefix)


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


def denied(directory: Path) -> str:
    """Why this process may not look into ``directory``: ``root-only`` (the shipped
    setup: root, 0700) or ``not readable by uid N``."""
    try:
        if directory.stat().st_uid == 0:
            return "root-only"
    except OSError:
        pass
    return f"not readable by uid {os.getuid()}"


class Credentials:
    """Where secrets are read from, and the reading of them."""

    def __init__(self, directory: Path | None = None, env: Mapping[str, str] = os.environ) -> None:
        systemd_dir = env.get("CREDENTIALS_DIRECTORY")
        self.systemd_dir = Path(systemd_dir) if systemd_dir else None
        self.directory = directory or DEFAULT_DIR  # where people put the files
        self.dirs = [self.systemd_dir] if self.systemd_dir else []
        self.dirs.append(self.directory)
        self._warned: set[tuple[Path, str]] = set()
        self.denied: set[Path] = set()  # directories this process may not look into

    def path_of(self, name: str) -> Path | None:
        """The file holding ``name``, or None; never raises (an unreadable directory
        is remembered in :attr:`denied` and explained by :meth:`not_found`)."""
        for d in self.dirs:
            # systemd loads a credentials *directory* as "<id>_<file>" (see the unit file)
            for candidate in (d / name, d / f"{CREDENTIAL_ID}_{name}"):
                try:
                    if stat.S_ISREG(candidate.stat().st_mode):
                        return candidate
                except PermissionError:
                    self.denied.add(d)
                    break
                except OSError:  # ENOENT, ENOTDIR, ELOOP, ...: not there
                    continue
        return None

    def has(self, name: str) -> bool:
        return self.path_of(name) is not None

    def not_found(self, name: str, *alternatives: str) -> CredentialError:
        """The error for a missing credential: what to put where, and why it is not seen.

        ``alternatives`` are other ways to provide it (``"videosdk-api-key and
        videosdk-secret"``)."""
        what = name + "".join(f" (or {alt})" for alt in alternatives)
        message = f"no {label(name)} credential: put {what} in {self.directory}"
        if self.systemd_dir is not None:
            # under systemd the service sees the copy LoadCredential= made at start
            message += ", then systemctl restart field-agent"
        elif self.directory in self.denied:
            message = (
                f"no {label(name)} credential: cannot read credentials directory "
                f"{self.directory}: {denied(self.directory)} (run under systemd, "
                "with sudo, or with --credentials DIR)"
            )
        return CredentialError(message)

    def _warn_once(self, path: Path, kind: str, message: str, *args: object) -> None:
        if (path, kind) not in self._warned:
            self._warned.add((path, kind))
            logger.warning(message, *args)

    def get(self, name: str) -> Secret:
        """Read secret ``name``; raise CredentialError naming the file (never the value)."""
        path = self.path_of(name)
        if path is None:
            raise self.not_found(name)
        try:
            st = path.stat()
            with path.open("rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else type(e).__name__
            if e.errno in (errno.EACCES, errno.EPERM):
                reason += " (the file is root-only: run with sudo, or let systemd load it)"
            raise CredentialError(f"cannot read credential file {path}: {reason}") from None
        if len(raw) > MAX_BYTES:
            raise CredentialError(
                f"credential file {path} is larger than {MAX_BYTES // 1024} KiB: not a credential"
            )
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise CredentialError(f"credential file {path} is UTF-16 text: save it as UTF-8")
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CredentialError(f"credential file {path} is not UTF-8 text") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            self._warn_once(
                path, "mode",
                "credential file %s is readable by group or others (mode %o); chmod 600 it",
                path, stat.S_IMODE(st.st_mode),
            )  # fmt: skip
        value = data.removeprefix(_BOM).strip()  # str.strip(): whitespace, CR, LF
        if not value:
            raise CredentialError(f"credential file {path} is empty")
        if data not in (value, value + "\n"):  # more than the one newline echo writes
            text = data.removeprefix(_BOM)
            found = [
                what
                for what, present in (
                    ("a byte-order mark", text != data),
                    ("CR line ends", "\r" in text),
                    ("extra newlines", text.count("\n") > 1 or text.startswith("\n")),
                    ("spaces or tabs", any(c in " \t" for c in text.replace(value, ""))),
                )
                if present
            ]
            self._warn_once(
                path, "stripped",
                "credential file %s: stripped %s around the value (check how it was saved)",
                path, ", ".join(found) or "whitespace",
            )  # fmt: skip
        RedactingFilter.register(value)
        return Secret(name, value)

    def optional(self, name: str) -> Secret | None:
        """Like :meth:`get` but None when the file does not exist."""
        return self.get(name) if self.has(name) else None
