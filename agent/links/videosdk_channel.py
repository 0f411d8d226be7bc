"""The VideoSDK link's side of channels (:mod:`agent.channels`): which room the next
session is created in, a switch as a clean restart, and a room VideoSDK refuses.

- Every session is created in :attr:`RoomSwitch.room_id`, read when it is created.
- A switch (a channel button, the ``room`` command) ends the session under way with
  its goodbye (``stop``, close 1000) and creates the next one in the new room at once:
  :meth:`agent.links.runner.Runner.restart`, not a failure with a backoff.
- A session request refused with a 4xx that is about the room (not 401/403, which are
  credentials, nor 429) while there is a last good room to go back to: one line (the
  runner's down line: ``room X refused by VideoSDK (HTTP 404); back in room Y``), the
  status's last error, ``rooms_refused_total``, and the next session in room Y.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from agent.channels import Channels
from agent.config import RoomConfig
from agent.errors import LinkError
from agent.links.runner import Runner
from agent.links.videosdk_auth import SessionError
from agent.metrics import Metrics
from agent.status import StatusBoard

logger = logging.getLogger("agent.links.videosdk.channel")

LINK = "videosdk"
T = TypeVar("T")


class RoomRefused(LinkError):
    """VideoSDK refused the room the device switched to; it is back in the last good one."""


def refuses_room(exc: SessionError) -> bool:
    """A session refusal that is about the room (unknown, closed), not the credentials."""
    return 400 <= exc.status < 500 and exc.status not in (401, 403, 429)


class RoomSwitch:
    """Which room the link's sessions are created in."""

    def __init__(
        self, channels: Channels, runner: Runner, metrics: Metrics, status: StatusBoard
    ) -> None:
        self.channels = channels
        self._runner = runner
        self._metrics = metrics
        self._status = status

    @property
    def room_id(self) -> str:
        return self.channels.room_id

    def attach(self) -> None:
        """While the link runs: a switch restarts its session."""
        self.channels.add_listener(self._switched)

    def detach(self) -> None:
        self.channels.remove_listener(self._switched)

    def _switched(self, room: RoomConfig) -> None:
        self._runner.restart(f"switching to room {room.id}")

    async def session(self, creating: Awaitable[T]) -> T:
        """Await the session request for :attr:`room_id`; a refusal of that room while a
        last good room exists raises :class:`RoomRefused` (and the device is back there)."""
        room = self.room_id
        try:
            created = await creating
        except SessionError as e:
            back = self.channels.refused(room) if refuses_room(e) else None
            if back is None:
                raise
            self._metrics.inc("rooms_refused_total", link=LINK)
            message = f"room {room} refused by VideoSDK (HTTP {e.status}); back in room {back.id}"
            self._status.set_error(f"{LINK}: {message}")
            raise RoomRefused(message) from None
        self.channels.accepted(room)
        return created
