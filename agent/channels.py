"""Channels: which VideoSDK room of ``videosdk.rooms`` the device is in. No I/O here
but the state file.

:class:`Channels` is the one place that knows the current channel. The channel
buttons (``gpio.channel_up_button`` / ``channel_down_button``, wrapping around) and the
signed remote command ``{"cmd": "room", "value": "<id>"}`` select one; the VideoSDK link
reads :attr:`Channels.current` for each session it creates and is told of every switch
(:meth:`Channels.add_listener`) so it ends its session and creates one in the new room
at once (a restart, not a failure). The current channel is kept in the state file
(``channel``: the room id) and restored at start; a saved room that is no longer in the
config falls back to the first, with one log line.

A room that VideoSDK refuses (:meth:`Channels.refused`) puts the device back in the
last room it was accepted in, if there is one.

``on_channel_changed(number, room)`` is called after every switch by a person or a
command (not at start, not when a refusal puts the device back): ``number`` is the
1-based channel number (the channel cue beeps it), ``room`` the :class:`RoomConfig`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from agent.config import RoomConfig
from agent.state import StateStore

logger = logging.getLogger(__name__)

STATE_KEY = "channel"

Listener = Callable[[RoomConfig], None]


class UnknownRoom(ValueError):
    """A room id that is not one of the configured channels."""


class Channels:
    """The configured rooms and the one the device is in."""

    def __init__(
        self,
        rooms: Sequence[RoomConfig],
        *,
        store: StateStore | None = None,
        on_channel_changed: Callable[[int, RoomConfig], None] | None = None,
    ) -> None:
        self.store = store
        self.on_channel_changed = on_channel_changed
        self._listeners: list[Listener] = []
        self.rooms: tuple[RoomConfig, ...] = ()
        self.index = 0
        self.good: str | None = None  # the last room VideoSDK accepted (this run)
        self.configure(rooms)

    @classmethod
    def single(cls, room_id: str) -> Channels:
        """One room, nothing saved: a link built without the agent's channels."""
        return cls((RoomConfig(room_id),) if room_id else ())

    # -- what is selected --------------------------------------------------------------
    @property
    def current(self) -> RoomConfig | None:
        return self.rooms[self.index] if self.rooms else None

    @property
    def room_id(self) -> str:
        """The current room's id ("" when there is no room at all)."""
        return self.rooms[self.index].id if self.rooms else ""

    @property
    def number(self) -> int:
        """The 1-based channel number (0 when there is no room)."""
        return self.index + 1 if self.rooms else 0

    def describe(self) -> str:
        """``channel 2/3 Ops (room-id)``, for log lines and the status summary."""
        room = self.current
        if room is None:
            return "no channel"
        name = f"{room.name} ({room.id})" if room.name else room.id
        return f"channel {self.number}/{len(self.rooms)} {name}"

    def to_json(self) -> dict[str, Any] | None:
        """The ``channel`` entry of the status document."""
        room = self.current
        if room is None:
            return None
        return {"number": self.number, "count": len(self.rooms), "id": room.id, "name": room.name}

    # -- configuration -------------------------------------------------------------------
    def configure(self, rooms: Sequence[RoomConfig]) -> None:
        """The configured rooms (at start and after a reload): the current room stays if
        it is still listed, else the saved one, else the first."""
        keep = self.room_id or self._saved()
        self.rooms = tuple(rooms)
        ids = [r.id for r in self.rooms]
        if keep and keep in ids:
            self.index = ids.index(keep)
            return
        self.index = 0
        if keep and self.rooms:
            logger.warning(
                "channel: room %s is no longer in videosdk.rooms; %s instead",
                keep,
                self.describe(),
            )
            self._save()

    def _saved(self) -> str:
        if self.store is None:
            return ""
        value = self.store.load().get(STATE_KEY, "")
        return value if isinstance(value, str) else ""

    def _save(self) -> None:
        if self.store is not None and len(self.rooms) > 1:
            self.store.save(**{STATE_KEY: self.room_id})

    # -- switching -----------------------------------------------------------------------
    def add_listener(self, callback: Listener) -> None:
        """``callback(room)`` after every switch (the link restarts its session)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def step(self, delta: int, *, why: str = "button") -> bool:
        """The next (``+1``) or previous (``-1``) channel, wrapping around; False when
        there is only one."""
        if len(self.rooms) < 2:
            logger.info("channel: only one room configured (videosdk.rooms); staying")
            return False
        self.select((self.index + delta) % len(self.rooms), why=why)
        return True

    def select_id(self, room_id: str, *, why: str = "command") -> None:
        """Switch to the channel of ``room_id``; :class:`UnknownRoom` when not listed."""
        ids = [r.id for r in self.rooms]
        if room_id not in ids:
            raise UnknownRoom(f"room {room_id[:64]!r} is not one of videosdk.rooms")
        self.select(ids.index(room_id), why=why)

    def select(self, index: int, *, why: str = "") -> None:
        """Switch to channel ``index`` (0-based); the same channel again is no switch."""
        if not 0 <= index < len(self.rooms) or index == self.index:
            return
        self.index = index
        room = self.rooms[index]
        logger.info("%s%s", self.describe(), f" ({why})" if why else "")
        self._save()
        self._notify(room)
        if self.on_channel_changed is not None:
            try:
                self.on_channel_changed(self.number, room)
            except Exception:  # a cue that fails must not stop the switch
                logger.exception("channel: the channel-change hook failed")

    def _notify(self, room: RoomConfig) -> None:
        for callback in list(self._listeners):
            callback(room)

    # -- what VideoSDK said ------------------------------------------------------------
    def accepted(self, room_id: str) -> None:
        """VideoSDK created a session in ``room_id``: the last good room."""
        self.good = room_id

    def refused(self, room_id: str) -> RoomConfig | None:
        """VideoSDK refused ``room_id``: back to the last good room and return it (the
        link creates its next session there), or None when there is none to go back to."""
        ids = [r.id for r in self.rooms]
        if self.good is None or self.good == room_id or self.good not in ids:
            return None
        if self.room_id == room_id:  # not switched away meanwhile
            self.index = ids.index(self.good)
            self._save()
        return self.current
