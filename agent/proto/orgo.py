"""Orgo computer audio: the wire format, with no I/O (PROTOCOLS.md §2).

The audio WebSocket sends one text message ``{"type":"started", ...}`` announcing
the format, then binary messages of raw PCM16 (one or more 20 ms frames each),
plus ``pong`` and ``error`` text messages. The client sends ``ping`` and ``stop``.

:class:`OrgoStream` turns received messages into events::

    stream = OrgoStream(sample_rate=24000, channels=1)   # the format we asked for
    for event in stream.receive(message):                 # str or bytes
        match event:
            case Started(sample_rate=rate, channels=ch): ...
            case Audio(pcm=pcm): ...
            case Pong(): ...
            case ServerError(message=text): ...
            case Unknown(type=kind): ...

Binary messages need not end on a frame, a sample, or even a channel boundary:
the stream carries the incomplete tail over to the next message, so the audio
handed out is always whole interleaved sample frames of the current format.
Until ``started`` arrives, the asked-for format is assumed.

Everything here is pure: it imports neither asyncio, websockets nor httpx.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np

from agent.errors import ProtocolError
from agent.pcm import Pcm, samples_per_frame
from agent.proto.keepalive import Keepalive

logger = logging.getLogger(__name__)

MIN_RATE = 8000  # Hz; a `started` outside MIN_RATE..MAX_RATE is refused
MAX_RATE = 192000  # Hz
CHANNELS = (1, 2)
BYTES_PER_SAMPLE = 2  # PCM16
CLOSE_BAD_TOKEN = 4401  # close code: missing or invalid token [doc]
CLOSE_NOT_FOUND = 4404  # close code: computer not found or not running [doc]
CLOSE_SERVER_ERROR = 4500  # close code: server error [doc]


class MalformedMessage(ProtocolError):
    """A received message could not be accepted. ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


# --- events (server -> client) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """The server's statement of the stream format; the truth from here on."""

    sample_rate: int  # Hz
    channels: int  # 1 or 2


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to our ``ping``."""


@dataclass(frozen=True, slots=True)
class ServerError:
    """``{"type":"error"}``: the server could not start or keep up the stream."""

    message: str


@dataclass(frozen=True, slots=True, eq=False)
class Audio:
    """Whole interleaved PCM16 sample frames in the current format (int16, C order)."""

    pcm: Pcm


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed text message of a type this client does not know; ignore it."""

    type: str


Event = Started | Pong | ServerError | Audio | Unknown


# --- the decoder ------------------------------------------------------------------


class OrgoStream:
    """Stateful decoder for one audio connection.

    ``sample_rate``/``channels`` are what the client asked for; they hold until the
    server's ``started`` says otherwise.
    """

    def __init__(self, sample_rate: int, channels: int) -> None:
        _check_format(sample_rate, channels)
        self.sample_rate = sample_rate  # Hz, current format
        self.channels = channels
        self.started = False  # True once `started` arrived
        self.samples_received = 0  # samples per channel handed out in the current format
        self.frames_received = 0  # whole 20 ms frames handed out, over the stream's life
        self.dropped_bytes = 0  # incomplete tails discarded at a format change
        self._tail = b""  # bytes of an incomplete sample frame, carried to the next message

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because they do not yet make a whole sample frame."""
        return len(self._tail)

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms frame of the current format."""
        return samples_per_frame(self.sample_rate) * self.channels * BYTES_PER_SAMPLE

    def receive(self, message: str | bytes) -> list[Event]:
        """Decode one WebSocket message; raise :class:`MalformedMessage` on garbage.

        A bad message leaves the stream usable: the caller may count it and go on.
        """
        if isinstance(message, str):
            return [self._receive_text(message)]
        audio = self._receive_binary(bytes(message))
        return [] if audio is None else [audio]

    def _receive_binary(self, data: bytes) -> Audio | None:
        if self._tail:
            data = self._tail + data
        unit = self.channels * BYTES_PER_SAMPLE
        whole = len(data) - len(data) % unit
        self._tail = data[whole:]
        if whole == 0:
            return None
        pcm = np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)
        per_frame = samples_per_frame(self.sample_rate)
        before = self.samples_received // per_frame
        self.samples_received += whole // unit
        self.frames_received += self.samples_received // per_frame - before
        return Audio(pcm)

    def _receive_text(self, text: str) -> Event:
        try:
            msg = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            reason = f"text message is not JSON ({len(text)} chars)"
            raise MalformedMessage("text", reason) from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise MalformedMessage("text", "text message is not a JSON object with a string 'type'")
        match msg["type"]:
            case "started":
                rate, channels = msg.get("sample_rate"), msg.get("channels")
                if not (_is_int(rate) and _is_int(channels)):
                    raise MalformedMessage(
                        "started", f"'started' without integer sample_rate/channels: {_short(msg)}"
                    )
                _check_format(rate, channels)
                self._start(rate, channels)
                return Started(rate, channels)
            case "pong":
                return Pong()
            case "error":
                message = msg.get("message")
                return ServerError(message if isinstance(message, str) else _short(msg))
            case other:
                return Unknown(other)

    def _start(self, rate: int, channels: int) -> None:
        if self._tail:
            # Bytes of a sample frame that never completed: the old format is over.
            self.dropped_bytes += len(self._tail)
            self._tail = b""
        self.sample_rate, self.channels, self.started = rate, channels, True
        self.samples_received = 0


class OrgoSession:
    """One audio connection's rules, sans-I/O: the stream (format, audio: OrgoStream)
    and the keepalive (`ping` every interval, its `pong` due within the timeout)::

        session = OrgoSession(24000, 1, ping_interval_s=30, pong_timeout_s=10, now=now)
        events = session.receive(message, now)     # a `pong` settles the keepalive
        for text in session.outgoing(now): send(text)  # pings; raises NoPong
        session.next_deadline(now)                 # when to call outgoing() again
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        *,
        ping_interval_s: float,
        pong_timeout_s: float,
        now: float,
    ) -> None:
        self.stream = OrgoStream(sample_rate, channels)
        self.keepalive = Keepalive(ping_interval_s, pong_timeout_s, now)

    def receive(self, message: str | bytes, now: float) -> list[Event]:
        events = self.stream.receive(message)
        if any(isinstance(e, Pong) for e in events):
            self.keepalive.pong()
        return events

    def outgoing(self, now: float) -> list[str]:
        return [encode_ping()] if self.keepalive.poll(now) else []

    def next_deadline(self, now: float) -> float:
        return self.keepalive.next_deadline()


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_format(rate: int, channels: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise MalformedMessage("started", f"sample rate {rate} Hz outside {MIN_RATE}..{MAX_RATE}")
    if channels not in CHANNELS:
        raise MalformedMessage("started", f"{channels} channels; only 1 or 2 are possible")


def _short(msg: Any, limit: int = 120) -> str:
    text = json.dumps(msg)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- client -> server -------------------------------------------------------------


def encode_ping() -> str:
    """The keep-alive message (every 30 s advised)."""
    return '{"type":"ping"}'


def encode_stop() -> str:
    """Ask the server to stop capturing; sent before a clean close."""
    return '{"type":"stop"}'


# --- REST and URL helpers ---------------------------------------------------------


def parse_password(body: Any) -> str:
    """The token from a ``vnc-password`` response body (parsed JSON).

    ``desktop_api_token`` is preferred when present (newer computers), else
    ``password``. Raises :class:`MalformedMessage` when neither is a non-empty
    string; the message never contains the body (it holds secrets).
    """
    if isinstance(body, dict):
        for key in ("desktop_api_token", "password"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
        keys = ", ".join(sorted(str(k) for k in body)) or "none"
        raise MalformedMessage("password", f"password response has no usable token (keys: {keys})")
    kind = type(body).__name__
    raise MalformedMessage("password", f"password response is not a JSON object ({kind})")


def audio_url(
    template: str, computer_id: str, *, token: str, sample_rate: int, channels: int
) -> str:
    """The WebSocket URL: ``template`` with ``{computer_id}`` filled in, plus the query.

    The result carries the token: never log it, log :func:`redact_url` instead.
    """
    url = template.replace("{computer_id}", computer_id)
    parts = urlsplit(url)
    query = urlencode({"token": token, "sample_rate": sample_rate, "channels": channels})
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def redact_url(url: str) -> str:
    """``url`` without its query string (where the token lives), for logs and status."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
