"""alsa-lib's own error messages into the agent's log instead of the terminal.

alsa-lib prints lines like ``ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM
nosuchmic`` straight to file descriptor 2 whenever an open fails, before pyalsaaudio
raises the exception that already carries the reason: on every retry of a missing
device, and in ``field-agent selftest`` and ``devices``. pyalsaaudio has no hook for
them; alsa-lib has ``snd_lib_error_set_handler()``, installed here through ctypes. The
handler logs each distinct message once, at DEBUG, on ``agent.hw.alsalog`` (repeats
are counted, not logged).

Why not redirect fd 2 around each open instead: fd 2 is process-wide, and the capture
and playback threads open devices while other threads log; a redirect would swallow
their lines (or a fatal error's trace) for the window. The handler changes nothing but
alsa-lib's own messages.

alsa-lib's handler type is variadic (``..., const char *fmt, ...)``) and ctypes cannot
read the arguments after ``fmt``; the C calling conventions of x86-64 and AArch64 pass
the fixed arguments of a variadic call where a plain call has them, so a handler that
declares only those is called correctly. The logged text is therefore the format with
its ``%s`` unfilled (``Unknown PCM %s``) plus the error's text; the device's name is in
the exception the caller reports anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from typing import Any

logger = logging.getLogger(__name__)

_HANDLER_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)

_lock = threading.Lock()
_seen: dict[tuple[bytes, int, bytes, bytes], int] = {}
_installed: Any = None  # the ctypes callback: alive as long as alsa-lib may call it


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def _on_alsa_error(
    file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None
) -> None:
    try:
        key = (file or b"", line, function or b"", fmt or b"")
        with _lock:
            count = _seen.get(key, 0)
            _seen[key] = count + 1
        if count == 0:
            reason = f" ({os.strerror(-err if err < 0 else err)})" if err else ""
            logger.debug(
                "alsa-lib %s:%d (%s): %s%s",
                _text(file), line, _text(function), _text(fmt).strip(), reason,
            )  # fmt: skip
    except Exception:  # an exception must never propagate into C: drop the message
        return


def message_counts() -> dict[str, int]:
    """How often each alsa-lib message came (``file:line (function): format``)."""
    with _lock:
        return {
            f"{_text(f)}:{n} ({_text(fn)}): {_text(fmt)}": c for (f, n, fn, fmt), c in _seen.items()
        }


def route_alsa_lib_errors() -> bool:
    """Install the handler (once per process); False when alsa-lib cannot be found."""
    global _installed
    if _installed is not None:
        return True
    name = ctypes.util.find_library("asound") or "libasound.so.2"
    try:
        lib = ctypes.CDLL(name)  # the copy pyalsaaudio loaded: same soname, same handle
        setter = lib.snd_lib_error_set_handler
    except (OSError, AttributeError) as exc:
        logger.debug("alsa-lib messages stay on stderr: %s", exc)
        return False
    setter.argtypes = [_HANDLER_TYPE]
    setter.restype = ctypes.c_int
    callback = _HANDLER_TYPE(_on_alsa_error)
    if setter(callback) != 0:
        return False
    _installed = callback
    return True
