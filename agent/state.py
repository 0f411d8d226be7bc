"""Small persistent state in ``$STATE_DIRECTORY/state.json``: survives power cuts.

- **Reading** is capped (:data:`MAX_BYTES`), and any content that is not what the agent
  wrote (garbage, empty, truncated, deeply nested, huge, wrong types, NaN, a directory,
  a FIFO, no permission) gives *one* warning naming the file; the agent then starts
  from the config. Keys are validated one by one: a bad ``volume`` does not lose the
  rest.
- **Writing** is atomic and coalesced: at most one write per ``interval_s`` (a burst of
  volume presses or remote commands is one write), the last values always written
  (timer, and :meth:`StateStore.flush` on a clean stop). Each write goes to a temp file
  in the same directory, is fsynced, renamed over ``state.json``, and the directory is
  fsynced: after a power cut the file is the old or the new one, never a mix. A failed
  write removes its temp file; temp files left by a crash mid-write are removed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.commands import ReplayGuard

logger = logging.getLogger(__name__)

FILENAME = "state.json"
MAX_BYTES = 64 * 1024
WRITE_INTERVAL_S = 5.0


def _volume(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return f"must be a number, not {_short(v)}"
    return None if 0 <= v <= 1 else f"must be between 0 and 1, not {_short(v)}"


def _replay(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be an object, not {_short(v)}"
    return None if ReplayGuard(60.0).restore(v) else "is malformed"


def _channel(v: Any) -> str | None:
    if not isinstance(v, str) or not v or len(v) > 128 or not v.isprintable():
        return f"must be a room id, not {_short(v)}"
    return None


def _emergency(v: Any) -> str | None:
    """An emergency active when the agent stopped: ``{"since": epoch s, "by": "..."}``,
    or null (none)."""
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) != {"since", "by"}:
        return f"must be an object with since and by, not {_short(v)}"
    since, by = v["since"], v["by"]
    if isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(since):
        return f"since must be a number, not {_short(since)}"
    if not isinstance(by, str) or len(by) > 200:
        return "by must be a short string"
    return None


# key -> validator (None when fine, else the reason). Unknown keys are dropped.
SCHEMA: dict[str, Callable[[Any], str | None]] = {
    "volume": _volume,
    "commands": _replay,
    "channel": _channel,
    "emergency": _emergency,
}


def _short(v: Any) -> str:
    text = (
        json.dumps(v) if isinstance(v, bool | int | float | str | type(None)) else type(v).__name__
    )
    return text if len(text) <= 40 else text[:40] + "…"


class StateStore:
    """The state file of one agent (``directory`` None: nothing is kept)."""

    def __init__(
        self,
        directory: Path | None,
        *,
        interval_s: float = WRITE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = directory / FILENAME if directory else None
        self.interval_s = interval_s
        self._clock = clock
        self._doc: dict[str, Any] | None = None
        self._dirty = False
        self._last_write = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self.writes = 0  # files renamed into place (for tests and benchmarks)

    @classmethod
    def from_env(cls) -> StateStore:
        d = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return cls(Path(d) if d else None)

    # -- reading ---------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """The saved values (validated, read once); {} when none are usable."""
        if self._doc is None:
            self._remove_stale_temp_files()
            self._doc = self._read()
        return dict(self._doc)

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            text = self._read_capped(self.path)
        except FileNotFoundError:
            return {}
        except _Unusable as e:
            self._warn(str(e))
            return {}
        except OSError as e:
            self._warn(f"unreadable: {e.strerror or type(e).__name__}")
            return {}
        try:
            doc = json.loads(text)
        except RecursionError:
            self._warn("nested too deeply")
            return {}
        except ValueError:
            self._warn("not valid JSON (truncated or damaged)" if text.strip() else "empty")
            return {}
        if not isinstance(doc, dict):
            self._warn(f"not a JSON object but {type(doc).__name__}")
            return {}
        good: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in doc.items():
            check = SCHEMA.get(key)
            if check is None:
                continue
            reason = check(value)
            if reason is None:
                good[key] = value
            else:
                problems.append(f"{key} {reason}")
        if problems:
            self._warn("; ".join(problems), partly=True)
        return good

    @staticmethod
    def _read_capped(path: Path) -> str:
        # O_NONBLOCK: a FIFO put there must not hang the start
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise _Unusable("a directory, not a file")
            if not stat.S_ISREG(st.st_mode):
                raise _Unusable("not a regular file")
            if st.st_size > MAX_BYTES:
                raise _Unusable(f"too large ({st.st_size} bytes, at most {MAX_BYTES})")
            data = os.read(fd, MAX_BYTES + 1)
        except IsADirectoryError:
            raise _Unusable("a directory, not a file") from None
        finally:
            os.close(fd)
        if len(data) > MAX_BYTES:
            raise _Unusable(f"too large (over {MAX_BYTES} bytes)")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unusable("not UTF-8 text") from None

    def _warn(self, reason: str, *, partly: bool = False) -> None:
        what = "values ignored" if partly else "ignored"
        logger.warning(
            "state file %s %s (%s); using the config defaults for them",
            self.path,
            what,
            reason,
        )

    def _remove_stale_temp_files(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            for tmp in self.path.parent.glob(f".{FILENAME}.*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
            old = self.path.with_suffix(".tmp")  # the name older versions used
            if old.is_file():
                old.unlink()

    # -- writing ---------------------------------------------------------------------
    def save(self, **values: Any) -> None:
        """Remember ``values``; written now, or coalesced into one write ``interval_s``
        after the last one."""
        if self.path is None:
            return
        doc = self.load() | values
        if doc == self._doc and not self._dirty:
            return
        self._doc, self._dirty = doc, True
        if self._timer is not None:
            return  # a write is already scheduled: it will carry these values
        wait = self._last_write + self.interval_s - self._clock()
        if wait <= 0:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool, a test): write at once
            self.flush()
            return
        self._timer = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Write pending values now (also on a clean stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._dirty or self.path is None or self._doc is None:
            return
        self._dirty = False
        self._last_write = self._clock()
        self._write(self.path, json.dumps(self._doc, separators=(",", ":")).encode())

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self.writes += 1
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            logger.warning("cannot save state to %s: %s", path, e.strerror or type(e).__name__)


class _Unusable(Exception):
    """The state file exists but is not a file the agent wrote."""
