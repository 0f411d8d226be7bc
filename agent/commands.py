"""Remote commands: parsing, signatures, replay protection, rate limits. No I/O here.

A remote command arrives as the text of a message on ``videosdk.command_topic``.
Two forms are understood:

- **unsigned**: ``{"cmd": "status"}`` — only ``status`` is executed in this form;
- **signed**: ``{"v": 1, "body": BODY, "sig": SIG}`` where ``BODY`` is itself JSON
  *text* (a string, signed byte for byte, so no canonical JSON is needed):
  ``{"cmd": "ptt", "value": "open", "device": "dev_12", "ts": 1767225600,
  "nonce": "k3J9..."}``, and ``SIG`` is the lower-case hex HMAC-SHA256, keyed
  with the ``command-key`` credential, of the canonical string::

      field-agent-command/1 \\n TOPIC \\n BODY

  (``TOPIC`` is the topic the message was published on). The body names the device
  (``device`` must be this device's ``device.id``), the issue time ``ts`` (integer Unix
  seconds on the *console's* clock) and a ``nonce`` (16..64 characters of
  ``[A-Za-z0-9_-]``). :func:`sign_command` produces exactly this.

Freshness (:class:`ReplayGuard`) never relies on the device's wall clock, which may
boot in 1970 or be hours off. A signed command is accepted only if

1. ``ts`` is within ``window_s`` of the *server's* timestamp on the message (VideoSDK
   stamps every message when it is published): an old signed command published again
   is refused;
2. ``ts`` is not older than ``window_s`` before the device's estimate of the present,
   which is the newest accepted ``ts`` plus the monotonic time elapsed since it was
   accepted (and, after a restart, the newest accepted ``ts`` persisted in the state
   file): a replay of pub/sub history older than the last accepted command is refused;
3. its nonce was not accepted before: the nonces of every command still inside the
   window are kept (at most ``cache_size``; when the cache overflows, everything up to
   the evicted command's ``ts`` is refused from then on, so eviction never reopens a
   replay).

:class:`TokenBucket` limits commands per sender.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import math
import re
import secrets
import time
import typing
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

PROTOCOL = "field-agent-command/1"
MAX_COMMAND_BYTES = 1024  # a signed command is ~300 bytes (the room allows 8 KB)
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
SIG_RE = re.compile(r"[0-9a-f]{64}")
MIN_KEY_CHARS = 16
CACHE_SIZE = 1024  # nonces remembered (accepted commands inside the window)
PERSISTED_NONCES = 64  # of which the newest are kept in the state file

# What each command may do, from least to most: who may send it.
OPEN_COMMANDS = frozenset({"status"})  # read-only: unsigned is fine
SPEAKER_COMMANDS = frozenset({"mute", "unmute", "volume"})  # needs a valid signature
MIC_COMMANDS = frozenset({"ptt"})  # needs a valid signature and commands.allow_mic_control
CHANNEL_COMMANDS = frozenset({"room"})  # needs a valid signature (videosdk.rooms)
ALERT_COMMANDS = frozenset({"emergency"})  # cancel only (it closes the mic): a signature
KNOWN_COMMANDS = (
    OPEN_COMMANDS | SPEAKER_COMMANDS | MIC_COMMANDS | CHANNEL_COMMANDS | ALERT_COMMANDS
)
PTT_VALUES = ("open", "hold")


class CommandError(ValueError):
    """A remote command that is refused. ``reason`` is the counter label, ``str()`` the
    message published back (never the payload)."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Command:
    cmd: str  # mute | unmute | volume | ptt | room | status | emergency
    value: Any = None


@dataclass(frozen=True)
class Envelope:
    """One parsed command: the command, and for a signed one what the signature covers."""

    command: Command
    signed: bool = False
    body: str = ""  # the exact signed text
    sig: str = ""
    device: str = ""
    ts: int = 0
    nonce: str = ""


def parse_payload(doc: Any) -> Command:
    """Validate ``{"cmd": ..., "value": ...}``; raise CommandError with the reason."""
    if not isinstance(doc, dict) or not isinstance(doc.get("cmd"), str):
        raise CommandError('command must be an object with a string "cmd"')
    cmd, value = doc["cmd"], doc.get("value")
    match cmd:
        case "mute" | "unmute" | "status":
            return Command(cmd)
        case "volume":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0 <= value <= 1
            ):
                raise CommandError("volume needs a number value from 0.0 to 1.0")
            return Command(cmd, float(value))
        case "ptt":
            if value not in PTT_VALUES:
                raise CommandError('ptt needs value "open" or "hold"')
            return Command(cmd, value)
        case "room":
            if (
                not isinstance(value, str)
                or not 0 < len(value) <= 128
                or not value.isprintable()
                or " " in value
            ):
                raise CommandError("room needs a room id value (one of videosdk.rooms)")
            return Command(cmd, value)
        case "emergency":
            if value != "cancel":  # an emergency is raised on the device, never remotely
                raise CommandError('emergency needs value "cancel"')
            return Command(cmd, value)
        case _:
            raise CommandError(f"unknown command {cmd[:40]!r}", "unknown")


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise CommandError(f"{what} is not JSON") from None


def parse(text: str) -> Envelope:
    """Parse one command message (either form); raise CommandError with the reason."""
    if len(text.encode("utf-8", "replace")) > MAX_COMMAND_BYTES:
        raise CommandError(f"command too large (over {MAX_COMMAND_BYTES} bytes)", "too_large")
    doc = _loads(text, "command")
    if not isinstance(doc, dict):
        raise CommandError('command must be an object with a string "cmd"')
    if "sig" not in doc and "body" not in doc:
        return Envelope(parse_payload(doc))
    if doc.get("v") != 1 or not isinstance(doc.get("body"), str):
        raise CommandError('signed command needs "v": 1 and a string "body"')
    sig = doc.get("sig")
    if not isinstance(sig, str) or not SIG_RE.fullmatch(sig):
        raise CommandError('signed command needs "sig": 64 lower-case hex digits')
    body = doc["body"]
    inner = _loads(body, "command body")
    command = parse_payload(inner)
    device, ts, nonce = inner.get("device"), inner.get("ts"), inner.get("nonce")
    if not isinstance(device, str) or not device:
        raise CommandError('signed command body needs a string "device"')
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**40:
        raise CommandError('signed command body needs "ts": integer Unix seconds')
    if not isinstance(nonce, str) or not NONCE_RE.fullmatch(nonce):
        raise CommandError('signed command body needs "nonce": 16 to 64 of [A-Za-z0-9_-]')
    return Envelope(command, True, body, sig, device, ts, nonce)


def canonical(topic: str, body: str) -> bytes:
    """The bytes the signature covers."""
    return f"{PROTOCOL}\n{topic}\n{body}".encode()


def signature(key: bytes, topic: str, body: str) -> str:
    return hmac.new(key, canonical(topic, body), hashlib.sha256).hexdigest()


def signature_ok(key: bytes, topic: str, envelope: Envelope) -> bool:
    return hmac.compare_digest(signature(key, topic, envelope.body), envelope.sig)


def sign_command(
    key: str | bytes,
    *,
    topic: str,
    device: str,
    cmd: str,
    value: Any = None,
    ts: int | None = None,
    nonce: str | None = None,
) -> str:
    """The message text of a signed command, as an operator console would publish it."""
    k = key.encode() if isinstance(key, str) else key
    body = json.dumps(
        {
            "cmd": cmd,
            "value": value,
            "device": device,
            "ts": int(time.time()) if ts is None else ts,
            "nonce": nonce or secrets.token_urlsafe(16),
        },
        separators=(",", ":"),
    )
    return json.dumps({"v": 1, "body": body, "sig": signature(k, topic, body)})


def server_time(timestamp: str) -> float | None:
    """Epoch seconds of a message's server timestamp (ISO 8601), None if unusable."""
    if not timestamp or len(timestamp) > 40:
        return None
    try:
        t = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


class ReplayGuard:
    """Freshness of signed commands from their times and nonces, never the wall clock.

    ``now`` arguments are monotonic seconds (``time.monotonic()``).
    """

    def __init__(self, window_s: float, *, cache_size: int = CACHE_SIZE) -> None:
        self.window_s = window_s
        self.cache_size = cache_size
        self._anchor: tuple[float, float] | None = None  # (newest ts, monotonic then)
        self._high_water = 0.0  # newest accepted ts, also across restarts
        self._evicted = -math.inf  # commands at or before this ts are refused
        self._nonces: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        """Nonces remembered."""
        return len(self._nonces)

    def estimate(self, now: float) -> float | None:
        """The present on the consoles' clock, from accepted commands (None: none yet)."""
        if self._anchor is None:
            return None
        ts, then = self._anchor
        return ts + max(0.0, now - then)

    def check(self, ts: int, nonce: str, *, server_ts: float | None, now: float) -> str | None:
        """None when fresh, else the reason (``stale`` / ``replayed``) and why."""
        w = self.window_s
        if server_ts is not None and abs(ts - server_ts) > w:
            return f"stale: issued {_ago(server_ts - ts)} the server's time of the message"
        present = self.estimate(now)
        floor = max(self._high_water, present or 0.0) - w
        if ts < floor or ts <= self._evicted:
            return "stale: older than the commands already accepted"
        if present is not None and ts > present + w and server_ts is None:
            return "stale: issued in the future of the commands already accepted"
        if nonce in self._nonces:
            return "replayed: this command was already accepted"
        return None

    def accept(self, ts: int, nonce: str, *, now: float) -> None:
        present = self.estimate(now)
        newest = max(float(ts), present if present is not None else -math.inf)
        self._anchor = (newest, now)
        self._high_water = max(self._high_water, float(ts))
        self._nonces[nonce] = ts
        floor = newest - self.window_s
        for n, t in list(self._nonces.items()):  # forget what the floor refuses anyway
            if t < floor:
                del self._nonces[n]
        while len(self._nonces) > self.cache_size:
            oldest = min(self._nonces, key=self._nonces.__getitem__)
            self._evicted = max(self._evicted, float(self._nonces.pop(oldest)))

    def snapshot(self) -> dict[str, Any]:
        """What survives a restart (for the state file): the high-water mark and the
        newest nonces; if not all fit, the floor rises to the oldest one kept."""
        items = sorted(self._nonces.items(), key=lambda kv: kv[1])[-PERSISTED_NONCES:]
        floor = self._evicted
        if len(self._nonces) > len(items) and items:
            floor = max(floor, float(items[0][1]))
        doc: dict[str, Any] = {"high_water": self._high_water, "nonces": [list(i) for i in items]}
        if math.isfinite(floor):
            doc["evicted"] = floor
        return doc

    def restore(self, doc: Any) -> bool:
        """Take a :meth:`snapshot` back; False (and nothing taken) when it is malformed."""
        if not isinstance(doc, dict):
            return False
        hw, nonces, ev = doc.get("high_water"), doc.get("nonces"), doc.get("evicted")
        if not _finite(hw) or not isinstance(nonces, list) or (ev is not None and not _finite(ev)):
            return False
        parsed: list[tuple[str, int]] = []
        for item in nonces[:PERSISTED_NONCES]:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], str)
                or not NONCE_RE.fullmatch(item[0])
                or isinstance(item[1], bool)
                or not isinstance(item[1], int)
            ):
                return False
            parsed.append((item[0], item[1]))
        self._high_water = max(self._high_water, float(typing.cast(float, hw)))
        if ev is not None:
            self._evicted = max(self._evicted, float(ev))
        for n, t in parsed:
            self._nonces[n] = t
        return True


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _ago(seconds: float) -> str:
    s = abs(seconds)
    text = f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.0f} h"
    return f"{text} {'before' if seconds >= 0 else 'after'}"


class TokenBucket:
    """Per-key token buckets (``rate_per_s`` refill, ``burst`` capacity), bounded in keys."""

    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 256) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, t

    def __len__(self) -> int:
        """Senders tracked."""
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate_per_s)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok
