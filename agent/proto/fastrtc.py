"""FastRTC WebSocket: the device as a voice client of a FastRTC app. No I/O.

Facts are in ``PROTOCOLS.md`` §3, checked against fastrtc 0.0.34's own source
(``fastrtc/websocket.py``, ``fastrtc/stream.py``, ``fastrtc/utils.create_message``).
The app mounts ``WS /websocket/offer``; every message is JSON text::

    C→S  {"event":"start","websocket_id":"<unique>"}       first, always
    C→S  {"event":"media","media":{"payload":"<base64 mu-law>"}}   at the handler's input rate
    C→S  {"event":"ping"} | {"event":"stop"}
    S→C  {"event":"media","media":{"payload":"<base64 mu-law>"}}   -> Media (output rate)
    S→C  {"event":"pong"}                                   -> Pong
    S→C  {"type":"send_input","data":[]}                    -> SendInput
    S→C  {"type":"log","data":"started_talking"|...}        -> Log
    S→C  {"type":"stopword","data":""}                      -> Stopword
    S→C  {"type":"error"|"warning","message":"..."}         -> Notice
    S→C  {"status":"failed","meta":{"error":..,"limit":..}} -> Refused (then the server closes)
    S→C  anything else well-formed                          -> Unknown (ignored)

The server neither resamples the input nor announces rates: the client must send
at the handler's ``input_sample_rate`` and play at its ``output_sample_rate``
(fastrtc's defaults: 48000 and 24000 Hz). Mu-law is G.711 (fastrtc uses
``audioop``, whose decoder :mod:`agent.audio.g711` matches exactly).

The server handles one connection's messages in order: a ``start`` that would
exceed the app's ``concurrency_limit`` is answered with the refusal and a close,
and a ``ping`` sent right after ``start`` is only answered once the session was
accepted. The link uses that first ``pong`` as "the app took us".

Malformed input raises :class:`MalformedMessage` (a :class:`~agent.errors.ProtocolError`)
whose ``reason`` is a short label for ``malformed_total{reason=...}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.audio.g711 import ulaw_decode, ulaw_encode
from agent.errors import ProtocolError
from agent.pcm import Pcm
from agent.proto.keepalive import Keepalive

logger = logging.getLogger(__name__)

PATH = "/websocket/offer"  # where Stream.mount() puts the endpoint [code]
CONCURRENCY_LIMIT_REACHED = "concurrency_limit_reached"  # refusal meta.error [code]
# `log` data sent by fastrtc's ReplyOnPause [code]
STARTED_TALKING = "started_talking"  # the app's VAD heard the user start
PAUSE_DETECTED = "pause_detected"  # the user paused: the app is about to answer
RESPONSE_STARTING = "response_starting"  # the app's reply audio begins
MAX_ID_CHARS = 128  # our own bound on websocket_id (the server sets none)


class MalformedMessage(ProtocolError):
    """A message from the server could not be understood. ``reason`` labels the metric."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


# --- events (server → client) ------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Media:
    """Reply audio, decoded from mu-law: mono int16 at the handler's output rate."""

    pcm: Pcm


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to our ``ping``; the first one also means the session was accepted."""


@dataclass(frozen=True, slots=True)
class SendInput:
    """The app asks for its extra inputs (posted by web clients to ``/input_hook``)."""

    data: Any


@dataclass(frozen=True, slots=True)
class Log:
    """A progress note of the app (``started_talking``, ``pause_detected``, ...)."""

    message: str


@dataclass(frozen=True, slots=True)
class Stopword:
    """The app heard its stop word (ReplyOnStopWords)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """``{"type":"error"|"warning","message":...}``: shown to the user of a web client."""

    level: str  # "error" or "warning"
    message: str


@dataclass(frozen=True, slots=True)
class Refused:
    """``{"status":"failed","meta":{...}}``: the app will not take this session."""

    error: str  # e.g. "concurrency_limit_reached"; "" when the server gave none
    limit: int | None = None  # the app's concurrency limit, when given

    @property
    def busy(self) -> bool:
        return self.error == CONCURRENCY_LIMIT_REACHED


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed message this client does not know; ignored (counted) by the link."""

    kind: str


Event = Media | Pong | SendInput | Log | Stopword | Notice | Refused | Unknown


def decode(message: str | bytes) -> Event:
    """Parse one message from the server; raise :class:`MalformedMessage` if malformed."""
    if not isinstance(message, str):
        raise MalformedMessage("binary", f"binary message of {len(message)} bytes")
    try:
        obj = json.loads(message)
    except (json.JSONDecodeError, RecursionError):
        raise MalformedMessage("not_json", f"not JSON ({len(message)} chars)") from None
    if not isinstance(obj, dict):
        raise MalformedMessage("bad_type", f"message is a {type(obj).__name__}, not an object")
    if "status" in obj:
        return _status(obj)
    event, kind = obj.get("event"), obj.get("type")
    if isinstance(event, str):
        match event:
            case "media":
                return Media(_media(obj.get("media")))
            case "pong":
                return Pong()
            case _:
                return Unknown(f"event:{event[:64]}")
    if isinstance(kind, str):
        match kind:
            case "send_input":
                return SendInput(obj.get("data"))
            case "log":
                return Log(_text(obj.get("data"), "log 'data'"))
            case "stopword":
                return Stopword()
            case "error" | "warning":
                return Notice(kind, _text(obj.get("message", obj.get("data")), f"{kind} text"))
            case _:
                return Unknown(f"type:{kind[:64]}")
    raise MalformedMessage("bad_type", "message without a string 'event', 'type' or 'status'")


def _status(obj: Mapping[str, Any]) -> Event:
    status = obj.get("status")
    if status != "failed":
        return Unknown(f"status:{str(status)[:64]}")
    meta = obj.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise MalformedMessage("bad_type", "refusal 'meta' is not an object")
    error, limit = meta.get("error", ""), meta.get("limit")
    if not isinstance(error, str):
        error = json.dumps(error)[:64]
    if isinstance(limit, bool) or not isinstance(limit, int):
        limit = None
    return Refused(error[:128], limit)


def _media(media: Any) -> Pcm:
    if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
        raise MalformedMessage("bad_type", "media without a string media.payload")
    payload: str = media["payload"]
    try:
        ulaw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage(
            "bad_base64", f"media payload is not base64 ({len(payload)} chars)"
        ) from None
    return ulaw_decode(ulaw)


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedMessage("bad_type", f"{what} is a {type(value).__name__}, not a string")
    return value


# --- client → server ----------------------------------------------------------------


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def new_websocket_id() -> str:
    """A fresh session id. Unique per connection: fastrtc cleans up *by id* when a
    connection ends, so a refused connection reusing a live id would end that session."""
    return uuid.uuid4().hex


def encode_start(websocket_id: str) -> str:
    """The first message of every connection."""
    if not isinstance(websocket_id, str) or not 1 <= len(websocket_id) <= MAX_ID_CHARS:
        raise ProtocolError(f"websocket_id must be 1 to {MAX_ID_CHARS} characters")
    return _dumps({"event": "start", "websocket_id": websocket_id})


def encode_media(pcm: Pcm) -> str:
    """One media message from mono int16 samples (already at the handler's input rate)."""
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1:
        raise ProtocolError("media wants a 1-D int16 array of mono samples")
    payload = base64.b64encode(ulaw_encode(pcm)).decode("ascii")
    return _dumps({"event": "media", "media": {"payload": payload}})


def encode_ping() -> str:
    return _dumps({"event": "ping"})


def encode_stop() -> str:
    """Ends the session; the server closes the connection after it."""
    return _dumps({"event": "stop"})


class FastRTCSession:
    """One connection's rules, sans-I/O: `start` then a `ping` first; the app took us
    at its first `pong` (or media: an app that streams has taken us all the same); a
    `ping` every interval, each `pong` due within the timeout::

        session = FastRTCSession(new_websocket_id(), ping_interval_s=20, pong_timeout_s=10,
                                 now=now)
        for text in session.opening(): send(text)
        event = session.receive(message, now)        # decoded; MalformedMessage
        if session.just_accepted: ...                # once, at acceptance
        for text in session.outgoing(now): send(text)   # pings; raises NoPong
        session.next_deadline(now)
    """

    def __init__(
        self, websocket_id: str, *, ping_interval_s: float, pong_timeout_s: float, now: float
    ) -> None:
        self.websocket_id = websocket_id
        # the ping sent with `start` is outstanding from the first moment
        self.keepalive = Keepalive(ping_interval_s, pong_timeout_s, now, awaiting_pong=True)
        self.accepted = False
        self.just_accepted = False  # the last receive() was the acceptance

    def opening(self) -> list[str]:
        """`start`, then the `ping` whose `pong` means "accepted" (the app answers in
        order: a refused start gets the refusal and a close instead)."""
        return [encode_start(self.websocket_id), encode_ping()]

    def receive(self, message: str | bytes, now: float) -> Event:
        self.just_accepted = False
        event = decode(message)
        if isinstance(event, Pong):
            self.keepalive.pong()
        if isinstance(event, Pong | Media) and not self.accepted:
            self.accepted = self.just_accepted = True
        return event

    def outgoing(self, now: float) -> list[str]:
        return [encode_ping()] if self.keepalive.poll(now) else []

    def next_deadline(self, now: float) -> float:
        return self.keepalive.next_deadline()
