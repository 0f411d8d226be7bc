"""What the VideoSDK link does with each frame the room sends (no I/O of its own).

Room audio goes to the mixer source; a message on the command topic goes, whole
(:class:`~agent.proto.videosdk.TopicMessage`: sender and time included), to the
agent's ``on_command``; other topic messages, participants and meeting events are
logged. Malformed frames and unknown events are counted, and logged at most once per
kind per 10 s with the number held back.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import numpy as np

from agent.metrics import Metrics
from agent.pcm import PcmSink
from agent.proto.videosdk import (
    MalformedMessage,
    MeetingJoined,
    MeetingLeft,
    ParticipantJoined,
    ParticipantLeft,
    RoomAudio,
    TopicMessage,
    Unknown,
)

# A child of the link's logger: what it logs is the link's, and filtered with it.
logger = logging.getLogger("agent.links.videosdk.room")

LINK = "videosdk"


class Limiter:
    """At most one log line per key per ``interval_s``; counts what it held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def allow(self, key: str) -> int | None:
        """None to stay silent, else the number of lines held back since the last one."""
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self._interval_s:
            self._held[key] += 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class RoomEvents:
    """Plays, hands over and logs the room's events."""

    def __init__(
        self,
        metrics: Metrics,
        limiter: Limiter,
        command_topic: str,
        on_command: Callable[[TopicMessage], None] | None,
    ) -> None:
        self._metrics = metrics
        self._limiter = limiter
        self._command_topic = command_topic
        self._on_command = on_command

    def malformed(self, e: MalformedMessage, extra: dict[str, str]) -> None:
        self._metrics.inc("malformed_total", link=LINK, reason=e.reason)
        held = self._limiter.allow("malformed:" + e.reason)
        if held is not None:
            logger.warning(
                "videosdk: ignored a malformed server frame (%s; %d more not logged)",
                e,
                held,
                extra=extra,
            )

    def dispatch(self, event: object, sink: PcmSink, extra: dict[str, str]) -> None:
        match event:
            case RoomAudio(pcm=pcm):
                self._metrics.inc("frames_received_total", link=LINK)
                if pcm:
                    sink.push(np.frombuffer(pcm, dtype="<i2").astype(np.int16), time.monotonic())
            case TopicMessage(topic=topic) if topic == self._command_topic:
                self.command(event, extra)
            case TopicMessage(topic=topic, message=message, sender_name=name, sender_id=sender):
                logger.info(
                    "videosdk [%s] %s: %s",
                    topic,
                    name or sender or "?",
                    _clip(message),
                    extra={**extra, "TOPIC": topic, "SENDER": name or sender},
                )
            case ParticipantJoined(participant_id=pid, name=name):
                logger.info(
                    "videosdk: %s joined the room", name or pid or "a participant", extra=extra
                )
            case ParticipantLeft(participant_id=pid, name=name):
                logger.info(
                    "videosdk: %s left the room", name or pid or "a participant", extra=extra
                )
            case MeetingJoined(session_id=sid):
                logger.info("videosdk: joined the meeting (session %s)", sid or "?", extra=extra)
            case MeetingLeft(message=message):
                logger.info(
                    "videosdk: left the meeting (%s)", _clip(message) or "no reason", extra=extra
                )
            case Unknown(event=name):
                self._metrics.inc("unknown_events_total", link=LINK)
                held = self._limiter.allow("unknown")
                if held is not None:
                    logger.debug(
                        "videosdk: ignored unknown event %r (%d more not logged)",
                        name[:64],
                        held,
                        extra=extra,
                    )

    def command(self, event: TopicMessage, extra: dict[str, str]) -> None:
        sender = event.sender_name or event.sender_id
        logger.info(
            "videosdk: command from %s: %s",
            sender or "?",
            _clip(event.message),
            extra={**extra, "TOPIC": event.topic, "SENDER": sender},
        )
        if self._on_command is None:
            return
        try:
            self._on_command(event)
        except Exception:  # a bad command must not take the link down
            logger.exception("videosdk: the command handler failed", extra=extra)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
