"""Yeastar P-Series "WebSocket Audio Streaming": the wire format, with no I/O (PROTOCOLS.md §4).

The PBX is the WebSocket *client*; it opens one connection per call and sends JSON
text frames, both parties of the call interleaved and told apart by ``channelid``::

    {"callid":"1755940023.7","callflow":"","audio":"<base64 PCM16>","number":"1009",
     "status":"process","channelid":"PJSIP/1009-0000005"}

Each channel ends with the same shape, ``"audio":""`` and ``"status":"end"``; then
the PBX closes. The audio is little-endian PCM16 mono at the rate set on the PBX
(8000 or 16000 Hz; not on the wire, so it is configured). There is no start event
and there are no timestamps.

:class:`CallStream` turns the messages of one connection into events::

    stream = CallStream()
    for event in stream.receive(message):            # str or bytes
        match event:
            case ChannelOpened(key=key, number=number): ...
            case ChannelAudio(key=key, pcm=pcm): ...
            case ChannelEnded(key=key): ...

Tolerated: extra fields (ignored); a missing ``callflow``, ``number`` or ``status``
(``status`` defaults to ``"process"``); a missing or empty ``channelid`` (the call's
one anonymous channel: the conference format is undocumented); unknown ``status`` and
``callflow`` values (treated as audio); audio on an ``end`` frame (played); audio
for a channel after its ``end`` (the channel opens again). Refused with
:class:`MalformedFrame` (a short ``reason`` for a metric label), the stream staying
usable: binary messages, text that is not a JSON object, a missing or non-string
``callid``, a missing or non-string ``audio``, a field of the wrong type, audio that
is not base64 or not a whole number of 16-bit samples, and a channel beyond
``max_channels`` in one call.

Everything here is pure: it imports neither asyncio nor websockets.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.errors import ProtocolError
from agent.pcm import Pcm

SAMPLE_RATES = (8000, 16000)  # Hz, the PBX's choices [doc]
BYTES_PER_SAMPLE = 2  # PCM16
FRAGMENT_BYTES = 1280  # PCM bytes per frame: 80 ms at 8 kHz, 40 ms at 16 kHz [guess]
CALLFLOWS = ("", "ivr", "queue", "ringgroup", "cfd", "conference", "multicast_paging")  # [doc]
STATUS_PROCESS = "process"
STATUS_END = "end"
MAX_CHANNELS = 16  # channels one call may open; a conference has a few parties, not dozens
MAX_ID_CHARS = 256  # longest callid / channelid / number kept (longer: refused)

_OPTIONAL_STRINGS = ("callflow", "number", "status", "channelid")


class MalformedFrame(ProtocolError):
    """A received message could not be accepted. ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def fragment_ms(sample_rate: int) -> float:
    """Duration of one documented 1280-byte fragment at ``sample_rate`` Hz."""
    return FRAGMENT_BYTES / BYTES_PER_SAMPLE / sample_rate * 1000


# --- one frame ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One decoded message."""

    callid: str
    channelid: str  # "" when the PBX sent none
    number: str  # the party's number, "" when absent
    status: str  # "process", "end", or whatever else the PBX sent
    callflow: str
    pcm: Pcm  # int16 samples (possibly none)

    @property
    def ends(self) -> bool:
        return self.status == STATUS_END


def parse_frame(message: str | bytes) -> Frame:
    """Decode one WebSocket message; raise :class:`MalformedFrame` if it cannot be used."""
    if not isinstance(message, str):
        raise MalformedFrame("binary", f"binary message of {len(message)} bytes (want JSON text)")
    try:
        msg = json.loads(message)
    except (json.JSONDecodeError, RecursionError):
        raise MalformedFrame("json", f"text message is not JSON ({len(message)} chars)") from None
    if not isinstance(msg, dict):
        raise MalformedFrame("json", f"JSON {type(msg).__name__}, not an object")
    callid = msg.get("callid")
    if not isinstance(callid, str) or not callid:
        raise MalformedFrame("callid", f"no string 'callid' ({_describe(callid)})")
    if len(callid) > MAX_ID_CHARS:
        raise MalformedFrame("callid", f"'callid' of {len(callid)} characters")
    audio = msg.get("audio")
    if not isinstance(audio, str):
        raise MalformedFrame("audio", f"no string 'audio' ({_describe(audio)})")
    meta: dict[str, str] = {}
    for key in _OPTIONAL_STRINGS:
        value = msg.get(key)
        if value is None:
            value = ""
        elif not isinstance(value, str):
            raise MalformedFrame(key, f"'{key}' is {_describe(value)}, not a string")
        elif len(value) > MAX_ID_CHARS:
            raise MalformedFrame(key, f"'{key}' of {len(value)} characters")
        meta[key] = value
    return Frame(
        callid=callid,
        channelid=meta["channelid"],
        number=meta["number"],
        status=meta["status"] or STATUS_PROCESS,
        callflow=meta["callflow"],
        pcm=decode_audio(audio),
    )


def decode_audio(text: str) -> Pcm:
    """Base64 PCM16 (little-endian) to int16 samples; "" gives none."""
    if not text:
        return np.zeros(0, np.int16)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedFrame("base64", f"'audio' is not base64 ({len(text)} chars)") from None
    if len(raw) % BYTES_PER_SAMPLE:
        raise MalformedFrame("odd_length", f"'audio' of {len(raw)} bytes: not whole samples")
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def encode_frame(
    callid: str,
    channelid: str,
    pcm: Pcm | bytes,
    *,
    number: str = "",
    status: str = STATUS_PROCESS,
    callflow: str = "",
) -> str:
    """One message as the PBX sends it (the sandbox PBX and tests use this)."""
    raw = pcm if isinstance(pcm, bytes) else np.asarray(pcm, "<i2").tobytes()
    return json.dumps(
        {
            "callid": callid,
            "callflow": callflow,
            "audio": base64.b64encode(raw).decode("ascii"),
            "number": number,
            "status": status,
            "channelid": channelid,
        },
        separators=(",", ":"),
    )


def _describe(value: Any) -> str:
    if value is None:
        return "missing"
    return f"a JSON {type(value).__name__}"


# --- one connection -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelKey:
    """One party of one call."""

    callid: str
    channelid: str

    def __str__(self) -> str:
        return f"{self.callid}/{self.channelid or '-'}"


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """The first frame of a channel (no start event exists: its first audio opens it)."""

    key: ChannelKey
    number: str
    callflow: str


@dataclass(frozen=True, slots=True, eq=False)
class ChannelAudio:
    """Samples of one channel, in arrival order; never empty."""

    key: ChannelKey
    pcm: Pcm


@dataclass(frozen=True, slots=True)
class ChannelEnded:
    """The channel's ``end`` frame."""

    key: ChannelKey


Event = ChannelOpened | ChannelAudio | ChannelEnded


@dataclass
class Channel:
    """What the stream knows of one open channel."""

    number: str
    callflow: str
    samples: int = 0  # received so far


@dataclass
class CallStream:
    """Stateful decoder for one connection: which channels are open, and their audio."""

    max_channels: int = MAX_CHANNELS
    channels: dict[ChannelKey, Channel] = field(default_factory=dict)  # open, in order
    frames_received: int = 0  # accepted messages
    samples_received: int = 0

    def receive(self, message: str | bytes) -> list[Event]:
        """Decode one message; raise :class:`MalformedFrame` on garbage (state unchanged)."""
        frame = parse_frame(message)
        key = ChannelKey(frame.callid, frame.channelid)
        events: list[Event] = []
        channel = self.channels.get(key)
        if channel is None:
            if frame.ends and frame.pcm.size == 0:
                # An `end` for a channel never heard (or already ended): nothing to do.
                self.frames_received += 1
                return []
            if len(self.channels) >= self.max_channels:
                raise MalformedFrame(
                    "too_many_channels",
                    f"channel {key} would be channel {len(self.channels) + 1} of this "
                    f"connection (at most {self.max_channels})",
                )
            channel = self.channels[key] = Channel(frame.number, frame.callflow)
            events.append(ChannelOpened(key, frame.number, frame.callflow))
        elif frame.number and not channel.number:
            channel.number = frame.number
        self.frames_received += 1
        if frame.pcm.size:
            channel.samples += frame.pcm.size
            self.samples_received += frame.pcm.size
            events.append(ChannelAudio(key, frame.pcm))
        if frame.ends:
            del self.channels[key]
            events.append(ChannelEnded(key))
        return events

    def close(self) -> list[ChannelEnded]:
        """The connection closed: every channel still open ends."""
        ended = [ChannelEnded(key) for key in self.channels]
        self.channels.clear()
        return ended

    @property
    def callids(self) -> list[str]:
        """The calls with an open channel, in order of first audio."""
        return list(dict.fromkeys(key.callid for key in self.channels))

    def numbers(self) -> list[str]:
        """The open channels' numbers, in order, without blanks or repeats."""
        return list(dict.fromkeys(c.number for c in self.channels.values() if c.number))
