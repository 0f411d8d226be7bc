"""VideoSDK custom WebSocket ingest: messages, session creation, JWT claims. No I/O.

Facts are in ``PROTOCOLS.md`` §1. Everything here is pure: the link
(:mod:`agent.links.videosdk`) moves the strings and bytes this module builds and
parses, so the codec is tested without sockets.

Wire frames are JSON text::

    C→S  {"event":"start"} | {"event":"stop"}
    C→S  {"event":"media","payload":"<base64 PCM16 8 kHz mono>"}
    C→S  {"event":"subscribe"|"unsubscribe","topic":"CHAT"}
    C→S  {"event":"message","topic":"CHAT","data":<string or JSON>}
    S→C  {"event":"media","payload":"..."}                      -> RoomAudio
    S→C  {"event":"message","topic":..,"data":{"message":..}}   -> TopicMessage
    S→C  participant-joined / participant-left / meeting-joined / meeting-left
    S→C  anything else                                          -> Unknown (ignored)

Malformed input raises :class:`MalformedMessage` (a :class:`~agent.errors.ProtocolError`)
whose ``reason`` is a short label for ``malformed_total{reason=...}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import MessageTooLarge, ProtocolError

logger = logging.getLogger(__name__)

MAX_TOPIC_CHARS = 128  # [doc] a non-empty string up to 128 characters
MAX_MESSAGE_BYTES = 8 * 1024  # [doc] "up to 8 KB (UTF-8) per message"; 8192 is a [guess]
SAMPLE_RATE = 8000  # Hz, PCM16 mono, both directions
SESSION_TTL_S = 90.0  # [doc] an unclaimed wsUrl expires this long after creation
MAX_SESSION_AGE_S = 80.0  # never connect with a wsUrl older than this
SESSIONS_PATH = "/v2/ingest/sessions"


class MalformedMessage(ProtocolError):
    """A frame from the server could not be understood. ``reason`` labels the metric."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


# --- events (server → client) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomAudio:
    """Room audio: PCM16 little-endian, 8 kHz mono (an even number of bytes)."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class TopicMessage:
    """A message another participant published on a topic we subscribed to.

    ``message`` is always a string (the server serialises JSON values; parse it if
    needed). ``raw`` is the frame's original text, for tolerant consumers.
    """

    topic: str
    message: str
    sender_id: str
    sender_name: str
    timestamp: str  # ISO 8601 as sent, e.g. "2026-06-27T14:41:00.000Z"
    id: str
    raw: str


@dataclass(frozen=True, slots=True)
class ParticipantJoined:
    """Shape seen only in the vendor's browser example [guess]: tolerant."""

    participant_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ParticipantLeft:
    participant_id: str
    name: str


@dataclass(frozen=True, slots=True)
class MeetingJoined:
    room_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class MeetingLeft:
    message: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event this agent does not know; ignored (counted) by the link."""

    event: str


Event = (
    RoomAudio
    | TopicMessage
    | ParticipantJoined
    | ParticipantLeft
    | MeetingJoined
    | MeetingLeft
    | Unknown
)


def decode(text: str | bytes) -> Event:
    """Parse one frame from the server; raise :class:`MalformedMessage` if malformed."""
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage("not_utf8", "binary frame that is not UTF-8") from None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise MalformedMessage("not_json", f"not JSON ({len(text)} chars)") from None
    if not isinstance(obj, dict):
        raise MalformedMessage("bad_type", f"frame is a {type(obj).__name__}, not an object")
    event = obj.get("event")
    if not isinstance(event, str):
        raise MalformedMessage("bad_type", "frame without a string 'event'")

    match event:
        case "media":
            return RoomAudio(_pcm(obj.get("payload")))
        case "message":
            return _topic_message(obj, text)
        case "participant-joined" | "participant-left":
            p = obj.get("participant")
            if p is None:
                p = {}
            if not isinstance(p, dict):
                raise MalformedMessage("bad_type", f"{event}: 'participant' is not an object")
            pid, name = _opt_str(p, "id", event), _opt_str(p, "name", event)
            return (
                ParticipantJoined(pid, name)
                if event == "participant-joined"
                else ParticipantLeft(pid, name)
            )
        case "meeting-joined":
            return MeetingJoined(_opt_str(obj, "roomId", event), _opt_str(obj, "sessionId", event))
        case "meeting-left":
            return MeetingLeft(_opt_str(obj, "message", event))
        case _:
            return Unknown(event)


def _pcm(payload: Any) -> bytes:
    if not isinstance(payload, str):
        raise MalformedMessage("bad_type", "media 'payload' is not a string")
    try:
        pcm = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage(
            "bad_base64", f"media payload is not base64 ({len(payload)} chars)"
        ) from None
    if len(pcm) % 2:
        raise MalformedMessage("odd_length", f"media payload of {len(pcm)} bytes is not PCM16")
    return pcm


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    """A field that may be absent or null (→ ""), but if present must be a string."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedMessage(
            "bad_type", f"{where}: {key!r} is a {type(value).__name__}, not a string"
        )
    return value


def _topic_message(obj: Mapping[str, Any], text: str) -> TopicMessage:
    topic = obj.get("topic")
    if not isinstance(topic, str) or not topic:
        raise MalformedMessage("bad_type", "message without a string 'topic'")
    data = obj.get("data")
    if isinstance(data, str):  # tolerate a bare string where an object is documented
        return TopicMessage(topic, data, "", "", "", "", text)
    if not isinstance(data, dict):
        raise MalformedMessage("bad_type", "message 'data' is neither an object nor a string")
    message = data.get("message")
    if message is None:
        message = ""
    elif not isinstance(message, str):  # documented as serialised; be tolerant
        message = json.dumps(message, separators=(",", ":"))
    return TopicMessage(
        topic=topic,
        message=message,
        sender_id=_opt_str(data, "senderId", "message"),
        sender_name=_opt_str(data, "senderName", "message"),
        timestamp=_opt_str(data, "timestamp", "message"),
        id=_opt_str(data, "id", "message"),
        raw=text,
    )


# --- frames (client → server) ------------------------------------------------------


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def check_topic(topic: str) -> str:
    """Return ``topic`` if valid (1..128 characters), else raise ProtocolError."""
    if not isinstance(topic, str) or not 1 <= len(topic) <= MAX_TOPIC_CHARS:
        length = len(topic) if isinstance(topic, str) else type(topic).__name__
        raise ProtocolError(f"topic must be 1 to {MAX_TOPIC_CHARS} characters, not {length}")
    return topic


def encode_start() -> str:
    return _dumps({"event": "start"})


def encode_stop() -> str:
    return _dumps({"event": "stop"})


def encode_media(pcm: bytes) -> str:
    """One media frame from PCM16 LE bytes (320 bytes for 20 ms at 8 kHz)."""
    if len(pcm) % 2:
        raise ProtocolError(f"PCM16 needs an even number of bytes, not {len(pcm)}")
    return _dumps({"event": "media", "payload": base64.b64encode(pcm).decode("ascii")})


def encode_subscribe(topic: str) -> str:
    return _dumps({"event": "subscribe", "topic": check_topic(topic)})


def encode_unsubscribe(topic: str) -> str:
    return _dumps({"event": "unsubscribe", "topic": check_topic(topic)})


def message_payload_bytes(data: Any) -> int:
    """Size the 8 KB rule applies to: a string's UTF-8 bytes, else the JSON text's."""
    if isinstance(data, str):
        return len(data.encode("utf-8"))
    return len(_dumps_value(data).encode("utf-8"))


def _dumps_value(data: Any) -> str:
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"message data is not JSON-serialisable: {e}") from None


def encode_message(topic: str, data: Any) -> str:
    """A ``message`` frame; data is a string or any JSON value (≤ 8 KB UTF-8)."""
    check_topic(topic)
    size = message_payload_bytes(data)
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES} bytes")
    return _dumps({"event": "message", "topic": topic, "data": data})


# --- session creation (REST) -------------------------------------------------------


def session_request(
    room_id: str,
    *,
    participant_id: str,
    participant_name: str = "",
    device_id: str = "",
    region: str = "",
) -> dict[str, Any]:
    """Body of ``POST {api_base}/v2/ingest/sessions``."""
    if not room_id:
        raise ProtocolError("roomId is required")
    body: dict[str, Any] = {
        "roomId": room_id,
        "participant": {
            "id": participant_id,
            "name": participant_name or participant_id,
            "metadata": {"deviceId": device_id or participant_id},
        },
    }
    if region:
        body["region"] = region
    return body


@dataclass(frozen=True, slots=True)
class IngestSession:
    """A created session. ``created_at`` is the caller's clock when the reply arrived."""

    ws_url: str
    call_id: str
    expires_in_s: float
    created_at: float

    def max_age_s(self) -> float:
        """How long the wsUrl may still be used: 80 s, or less if the server says so."""
        return max(0.0, min(MAX_SESSION_AGE_S, self.expires_in_s - 10.0))

    def fresh(self, now: float) -> bool:
        """True while the single-use wsUrl is young enough to connect with."""
        return now - self.created_at < self.max_age_s()


def parse_session_response(body: Any, *, now: float) -> IngestSession:
    """Parse the 200 reply ``{"data": {"wsUrl", "callId", "expiresIn"}}``."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise ProtocolError("session reply without a 'data' object")
    data = body["data"]
    ws_url, call_id = data.get("wsUrl"), data.get("callId")
    if not isinstance(ws_url, str) or not ws_url.startswith(("wss://", "ws://")):
        raise ProtocolError("session reply without a ws:// or wss:// 'wsUrl'")
    if not isinstance(call_id, str):
        call_id = "" if call_id is None else str(call_id)
    expires = data.get("expiresIn", SESSION_TTL_S)
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
        raise ProtocolError("session reply with a bad 'expiresIn'")
    return IngestSession(ws_url, call_id, float(expires), now)


_REF = re.compile(r"(?i)(\bref=)[^&#\s'\"]+")


def redact_url(text: str) -> str:
    """Replace the value of every ``ref=`` query parameter in ``text`` by ``***``."""
    return _REF.sub(r"\1***", text)


# --- JWT (minting is in agent.links.videosdk_auth, with PyJWT) ---------------------


def jwt_claims(
    api_key: str,
    *,
    now: float,
    ttl_s: float = 300.0,
    room_id: str = "",
    participant_id: str = "",
) -> dict[str, Any]:
    """Payload of a server-side VideoSDK token: crawler role, allow_join, version 2."""
    claims: dict[str, Any] = {
        "apikey": api_key,
        "permissions": ["allow_join"],
        "version": 2,
        "roles": ["crawler"],
        "iat": int(now),
        "exp": int(now + ttl_s),
    }
    if room_id:
        claims["roomId"] = room_id
    if participant_id:
        claims["participantId"] = participant_id
    return claims
