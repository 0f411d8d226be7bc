"""How a config key is checked: the per-key value checks the section dataclasses carry.

Each field of a section in :mod:`agent.config` carries :func:`doc` metadata: its
one-line documentation and, optionally, a :data:`Check` that returns ``None`` for a
good value or the reason it is refused. :func:`build_section` turns one TOML table
into a section: it converts each value to the field's type (:func:`convert`; ints
are accepted where floats are) and runs the field's check, reporting each problem
through ``bad(key, reason)`` and leaving a refused key at its default. Also here:
:func:`is_loopback_host`, which the config's cross-checks and the links share.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

# The hands-free processing library (the optional extra field-agent[handsfree]); the
# config checks that it loads when a key asks for it (agent.audio.handsfree uses it).
HANDSFREE_MODULE = "pywebrtc_audio"
HANDSFREE_DISTRIBUTION = "pywebrtc-audio"
HANDSFREE_INSTALL = "pip install 'field-agent[handsfree]' (or: pip install pywebrtc-audio)"

# A validator returns None when the value is fine, else the reason.
Check = Callable[[Any], str | None]


def doc(text: str, check: Check | None = None) -> Any:
    """A field's metadata: its documentation and the check its value must pass."""
    return {"doc": text, "check": check}


def in_range(lo: float, hi: float, unit: str = "") -> Check:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}{unit}, not {v!r}"

    return check


def one_of(*allowed: Any) -> Check:
    def check(v: Any) -> str | None:
        if v in allowed:
            return None
        return f"must be one of {', '.join(repr(a) for a in allowed)}, not {v!r}"

    return check


def rate_hz(v: int) -> str | None:
    return in_range(8000, 192000, " Hz")(v)


FRAMES_PER_S = 50  # agent.pcm: the audio engine works in 20 ms periods


def device_rate(v: int) -> str | None:
    """A device rate the audio engine can use: whole 20 ms periods (agent.audio.mixer
    refuses another output rate; the ALSA and simulated ports open rate/50-frame periods)."""
    if reason := rate_hz(v):
        return reason
    if v % FRAMES_PER_S:
        nearest = round(v / FRAMES_PER_S) * FRAMES_PER_S
        return (
            f"must be a multiple of {FRAMES_PER_S} Hz (the audio engine works in 20 ms "
            f"periods), not {v!r}; the nearest is {nearest}"
        )
    return None


def gpio_pin(v: int | None) -> str | None:
    return None if v is None else in_range(0, 27, " (BCM GPIO number)")(v)


def host_port(v: str, *, allow_empty: bool) -> str | None:
    if v == "" and allow_empty:
        return None
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"must be HOST:PORT (e.g. 127.0.0.1:9464), not {v!r}"
    if not host.isprintable() or " " in host or not host.isascii():
        return f"HOST must be an address or an ASCII host name, not {host!r}"
    return None


def url_with(*schemes: str, empty_ok: bool = False) -> Check:
    def check(v: str) -> str | None:
        if v == "" and empty_ok:
            return None
        try:
            parts = urlsplit(v.replace("{computer_id}", "x"))
        except ValueError:  # e.g. "http://[::1": an unclosed IPv6 bracket
            parts = urlsplit("")
        if parts.scheme not in schemes or not parts.netloc:
            return f"must be a {'/'.join(s + '://' for s in schemes)} URL, not {v!r}"
        return None

    return check


def abspath(v: str) -> str | None:
    if v == "":
        return None
    if not v.startswith("/"):
        return f"must be an absolute path, not {v!r}"
    if "\x00" in v or not _encodable(v):
        return f"not a usable path: {v!r}"
    return None


def _encodable(v: str) -> bool:
    try:
        os.fsencode(v)
    except UnicodeError:
        return False
    return True


def message_bytes(v: int) -> str | None:
    # in_range's %g would print 1 MiB as 1.04858e+06
    return None if 4096 <= v <= 1 << 20 else f"must be between 4096 and 1048576 bytes, not {v!r}"


def ca_bundle(v: str) -> str | None:
    """A readable PEM file of CA certificates (loaded once here to prove it)."""
    if v == "":
        return None
    if not os.path.isabs(v):
        return f"must be an absolute path, not {v!r}"
    import ssl

    try:
        ssl.create_default_context().load_verify_locations(cafile=v)
    except FileNotFoundError:
        return f"file {v} not found"
    except ssl.SSLError:
        return f"{v} holds no PEM CA certificate"
    except OSError as e:
        return f"cannot read {v}: {e.strerror or type(e).__name__}"
    except ValueError:  # a NUL in the path
        return f"not a usable path: {v!r}"
    return None


def cue_sound(v: str) -> str | None:
    """A cue: "" (off), "tone" (generated), or the absolute path of a readable WAV file
    (read once here to prove it; the player reads it again at play time)."""
    if v in ("", "tone"):
        return None
    if not v.startswith("/"):
        return f'must be "" (off), "tone", or the absolute path of a WAV file, not {v!r}'
    from agent.errors import SoundFileError
    from agent.wavfile import read_wav

    try:
        read_wav(v)
    except SoundFileError as e:
        return str(e)
    return None


def topic_length(v: str) -> str | None:
    return None if len(v) <= 128 else f"must be at most 128 characters, not {len(v)}"


def sender_ids(v: tuple[str, ...]) -> str | None:
    for s in v:
        if not s or len(s) > 128 or not s.isprintable():
            return f"a sender id must be 1 to 128 printable characters, not {s!r}"
    return None


MAX_ROOMS = 99  # channels a device can step through (a channel cue beeps its number)


def tables(value: Any, cls: Any) -> tuple[Any, str | None]:
    """A list of tables of string keys, each one ``cls`` (e.g. ``videosdk.rooms``)."""
    if not isinstance(value, list):
        return None, f"must be a list of tables ([{{ ... }}, ...]), not {_tname(value)}"
    known = {f.name: f for f in dataclasses.fields(cls)}
    required = [n for n, f in known.items() if f.default is dataclasses.MISSING]
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            return None, f"[{i}] must be a table ({{ {', '.join(known)} }}), not {_tname(item)}"
        unknown = [k for k in item if k not in known]
        if unknown:
            return None, f"[{i}]: unknown key {unknown[0]!r} (known: {', '.join(known)})"
        missing = [k for k in required if k not in item]
        if missing:
            return None, f"[{i}]: {missing[0]} is required"
        for k, v in item.items():
            if not isinstance(v, str):
                return None, f"[{i}].{k} must be a string, not {_tname(v)}"
        out.append(cls(**item))
    return tuple(out), None


def rooms(v: tuple[Any, ...]) -> str | None:
    """``videosdk.rooms``: ids 1..128 printable characters without spaces, each once."""
    if len(v) > MAX_ROOMS:
        return f"at most {MAX_ROOMS} rooms, not {len(v)}"
    seen: set[str] = set()
    for i, room in enumerate(v):
        rid, name = room.id, room.name
        if not rid or len(rid) > 128 or not rid.isprintable() or " " in rid:
            return f"[{i}].id must be 1 to 128 printable characters without spaces, not {rid!r}"
        if rid in seen:
            return f"[{i}].id {rid!r} is listed twice"
        seen.add(rid)
        if len(name) > 64 or not name.isprintable():
            return f"[{i}].name must be at most 64 printable characters, not {name[:80]!r}"
    return None


def build_section(
    name: str, cls: type, table: dict[str, Any], bad: Callable[[str, str], None]
) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            bad(f"{name}.{key}", f"unknown key (known: {', '.join(known)})")
            continue
        converted, reason = convert(value, hints[key])
        if reason is None:
            check = known[key].metadata.get("check")
            reason = check(converted) if check else None
        if reason is not None:
            bad(f"{name}.{key}", reason)
        else:
            values[key] = converted
    return cls(**values)


def convert(value: Any, hint: Any) -> tuple[Any, str | None]:
    """Check ``value`` against a field's type; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return convert(value, options[0])
    if origin is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        return tables(value, typing.get_args(hint)[0])
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"must be a list of strings, not {_tname(value)}"
        return tuple(value), None
    if hint is bool:
        return (
            (value, None)
            if isinstance(value, bool)
            else (None, f"must be true or false, not {_tname(value)}")
        )
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        return None, f"must be an integer, not {_tname(value)}"
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), None
        return None, f"must be a number, not {_tname(value)}"
    if hint is str:
        return (
            (value, None)
            if isinstance(value, str)
            else (None, f"must be a string, not {_tname(value)}")
        )
    raise TypeError(f"unsupported config type {hint!r}")  # a programming error, not user input


def _tname(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def handsfree_library() -> str | None:
    """None when the hands-free library loads, else what to install (imports it: call
    only when a key asks for the processing)."""
    import importlib

    try:
        importlib.import_module(HANDSFREE_MODULE)
    except ImportError as exc:
        return f"needs {HANDSFREE_DISTRIBUTION}, which does not load ({exc}): {HANDSFREE_INSTALL}"
    return None
