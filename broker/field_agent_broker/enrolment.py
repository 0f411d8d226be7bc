"""The enrolment file: which devices may ask for sessions, for which rooms.

A JSON file, written by ``field-agent-broker enroll`` / ``revoke`` and read by every
replica (mount it read-only)::

    {"version": 1,
     "devices": {
       "dev_12": {"token_hash": "scrypt$16384$8$1$<salt b64>$<key b64>",
                  "rooms": ["abcd-efgh-ijkl"],      # or ["*"]: any room
                  "enabled": true,
                  "enrolled_at": "2026-12-01T22:10:00Z"}}}

Only a salted scrypt hash of each device token is stored; the token itself is printed
once by ``enroll``. Tokens are 256-bit random values, so the hash protects them even
with a stolen file; scrypt (not a bare digest) is belt and braces. :class:`EnrolmentStore`
re-reads the file when its mtime, size or inode changes (checked at most every
``check_interval_s``); a file that stops parsing is logged and the last good one kept.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ANY_ROOM = "*"
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1  # 16 MiB, ~45 ms on a 2-core x86_64 box
TOKEN_BYTES = 32
TOKEN_PREFIX = "fad_"  # "field-agent device": recognisable in a secret scanner


class EnrolmentError(ValueError):
    """The enrolment file or an argument is invalid. The message names the problem."""


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    token_hash: str
    rooms: tuple[str, ...]
    enabled: bool
    enrolled_at: str = ""

    def allows(self, room_id: str) -> bool:
        return ANY_ROOM in self.rooms or room_id in self.rooms


def new_token() -> str:
    """A fresh device token (printed once, never stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = _scrypt(token, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def _scrypt(token: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        token.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=128 * n * r * p + 2**20
    )


def verify_token(token: str, token_hash: str) -> bool:
    """Constant-time check of ``token`` against a stored ``scrypt$...`` hash."""
    try:
        scheme, n, r, p, salt64, key64 = token_hash.split("$")
        if scheme != "scrypt":
            return False
        salt, key = base64.b64decode(salt64, validate=True), base64.b64decode(key64, validate=True)
        n_, r_, p_ = int(n), int(r), int(p)
    except (ValueError, binascii.Error):
        return False
    if not (2 <= n_ <= 1 << 20 and 1 <= r_ <= 32 and 1 <= p_ <= 16):  # a hostile file: bounded
        return False
    return hmac.compare_digest(_scrypt(token, salt, n_, r_, p_), key)


def _check_device_id(device_id: str) -> str:
    if not DEVICE_ID.fullmatch(device_id):
        raise EnrolmentError(
            f"device id must be 1 to 128 of A-Z a-z 0-9 _ . : - (first a letter or digit), "
            f"not {device_id[:140]!r}"
        )
    return device_id


def parse(text: str, *, where: str = "enrolment file") -> dict[str, Device]:
    """Parse the file's text; raise EnrolmentError naming the first problem."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise EnrolmentError(f"{where}: not JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("devices", {}), dict):
        raise EnrolmentError(f"{where}: must be an object with a 'devices' object")
    out: dict[str, Device] = {}
    for device_id, entry in raw.get("devices", {}).items():
        try:
            _check_device_id(device_id)
        except EnrolmentError as e:
            raise EnrolmentError(f"{where}: {e}") from None
        if not isinstance(entry, dict):
            raise EnrolmentError(f"{where}: devices.{device_id}: must be an object")
        token_hash, rooms = entry.get("token_hash"), entry.get("rooms", [ANY_ROOM])
        enabled = entry.get("enabled", True)
        if not isinstance(token_hash, str) or not token_hash.startswith("scrypt$"):
            raise EnrolmentError(f"{where}: devices.{device_id}.token_hash: not a scrypt hash")
        if not isinstance(rooms, list) or not all(isinstance(r, str) and r for r in rooms):
            raise EnrolmentError(f"{where}: devices.{device_id}.rooms: must be a list of strings")
        if not isinstance(enabled, bool):
            raise EnrolmentError(f"{where}: devices.{device_id}.enabled: must be true or false")
        enrolled_at = entry.get("enrolled_at", "")
        out[device_id] = Device(
            device_id, token_hash, tuple(rooms), enabled, str(enrolled_at) if enrolled_at else ""
        )
    return out


def load(path: Path) -> dict[str, Device]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnrolmentError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EnrolmentError(f"{path}: cannot read ({type(e).__name__})") from None
    return parse(text, where=str(path))


def dump(devices: dict[str, Device]) -> str:
    body: dict[str, Any] = {
        "version": 1,
        "devices": {
            d.id: {
                "token_hash": d.token_hash,
                "rooms": list(d.rooms),
                "enabled": d.enabled,
                "enrolled_at": d.enrolled_at,
            }
            for d in sorted(devices.values(), key=lambda d: d.id)
        },
    }
    return json.dumps(body, indent=2) + "\n"


# --- editing (the CLI) ---------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the file, so two ``enroll`` runs never lose an entry."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file, fsync it, rename it over ``path``: a reader (or a power
    cut) sees the old file or the new one, never half of one. The file keeps its mode
    and group (the service's group reads it); a new one is 0640, in the directory's group."""
    try:
        st = path.stat()
        mode, gid = st.st_mode & 0o777, st.st_gid
    except FileNotFoundError:
        mode, gid = 0o640, path.parent.stat().st_gid
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(PermissionError):  # not root and not in that group
            os.chown(tmp, -1, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _edit(path: Path, change: Callable[[dict[str, Device]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        devices = load(path) if path.exists() else {}
        change(devices)
        _write_atomically(path, dump(devices))


def enroll(path: Path, device_id: str, rooms: tuple[str, ...] = (ANY_ROOM,)) -> str:
    """Enrol (or re-enrol, replacing its token) a device; return the new token."""
    _check_device_id(device_id)
    if not rooms or not all(rooms):
        raise EnrolmentError("rooms must be non-empty room ids, or '*' for any room")
    token = new_token()
    entry = Device(
        device_id,
        hash_token(token),
        tuple(dict.fromkeys(rooms)),
        True,
        dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )

    def change(devices: dict[str, Device]) -> None:
        devices[device_id] = entry

    _edit(path, change)
    return token


def revoke(path: Path, device_id: str) -> None:
    """Disable a device (its entry stays, so the refusal says "revoked")."""

    def change(devices: dict[str, Device]) -> None:
        if device_id not in devices:
            raise EnrolmentError(f"device {device_id!r} is not enrolled in {path}")
        d = devices[device_id]
        devices[device_id] = Device(d.id, d.token_hash, d.rooms, False, d.enrolled_at)

    _edit(path, change)


# --- the reader the app uses -----------------------------------------------------------


class EnrolmentStore:
    """The current devices, re-read when the file changes. Thread-safe, never raises
    after the first successful load (a bad new file keeps the last good one)."""

    def __init__(
        self,
        path: Path,
        *,
        check_interval_s: float = 1.0,
        on_reload: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._interval = check_interval_s
        self._on_reload = on_reload or (lambda _result: None)
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.devices = load(path)  # the first load must succeed: EnrolmentError otherwise
        self._checked = clock()
        self._verified: OrderedDict[bytes, None] = OrderedDict()  # see verify()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> dict[str, Device]:
        now = self._clock()
        if now - self._checked < self._interval:
            return self.devices
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp == self._stamp:
                return self.devices
            self._stamp = stamp
            try:
                self.devices = load(self.path)
            except EnrolmentError as e:
                logger.error(
                    "enrolment file not reloaded, keeping the last good one: %s",
                    e,
                    extra={"event": "enrolment_reload", "result": "refused"},
                )
                self._on_reload("refused")
            else:
                logger.info(
                    "enrolment file reloaded: %d devices",
                    len(self.devices),
                    extra={"event": "enrolment_reload", "result": "ok"},
                )
                self._on_reload("ok")
        return self.devices

    def verify(self, device: Device, token: str) -> bool:
        """scrypt check, with a bounded cache of recent successes (a reconnect storm of
        a whole fleet costs one scrypt per device, not one per request). The cache key
        is a digest of the stored hash and the token: a new token (re-enrolment) or a
        changed file misses it."""
        key = hashlib.sha256(f"{device.token_hash}\x00{token}".encode()).digest()
        with self._lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return True
        if not verify_token(token, device.token_hash):
            return False
        with self._lock:
            self._verified[key] = None
            while len(self._verified) > 4096:
                self._verified.popitem(last=False)
        return True
