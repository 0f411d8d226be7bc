"""What a person touches and sees: buttons, LEDs, volume and mute, remote commands.

:class:`Controls` turns button events into PTT, mute and volume actions, drives the
status and talk LEDs from the :class:`StatusBoard`, keeps the volume across
restarts in the service's state directory, and executes the remote commands that
arrive on ``videosdk.command_topic``. Parsing a remote command is a pure function
(:func:`parse_command`); anything it does not accept is refused, never executed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.hw.gpio import ButtonEvent
from agent.proto.videosdk import TopicMessage
from agent.ptt import PttGate
from agent.status import Led, StatusBoard

logger = logging.getLogger(__name__)

VOLUME_STEP = 0.1
MAX_COMMAND_BYTES = 1024


class CommandError(ValueError):
    """A remote command that is refused; the message is published back."""


@dataclass(frozen=True)
class Command:
    cmd: str  # mute | unmute | volume | ptt | status
    value: Any = None


def parse_command(text: str) -> Command:
    """Validate one remote command (JSON text); raise CommandError with the reason."""
    if len(text.encode("utf-8", "replace")) > MAX_COMMAND_BYTES:
        raise CommandError(f"command too large (over {MAX_COMMAND_BYTES} bytes)")
    try:
        doc = json.loads(text)
    except ValueError:
        raise CommandError("command is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cmd"), str):
        raise CommandError('command must be an object with a string "cmd"')
    cmd, value = doc["cmd"], doc.get("value")
    match cmd:
        case "mute" | "unmute" | "status":
            return Command(cmd)
        case "volume":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise CommandError("volume needs a number value from 0.0 to 1.0")
            return Command(cmd, float(value))
        case "ptt":
            if value not in ("open", "hold"):
                raise CommandError('ptt needs value "open" or "hold"')
            return Command(cmd, value)
        case _:
            raise CommandError(f"unknown command {cmd[:40]!r}")


class StateStore:
    """Small persistent state (the volume) in ``$STATE_DIRECTORY/state.json``."""

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / "state.json" if directory else None

    @classmethod
    def from_env(cls) -> StateStore:
        d = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return cls(Path(d) if d else None)

    def load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError) as e:
            logger.warning("state file %s unreadable (%s); starting from the config", self.path, e)
            return {}

    def save(self, **values: Any) -> None:
        if self.path is None:
            return
        doc = self.load() | values
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            tmp.replace(self.path)
        except OSError as e:
            logger.warning("cannot save state to %s: %s", self.path, e)


class Controls:
    """Buttons → actions; status → LEDs; remote commands → actions or refusals."""

    def __init__(
        self,
        status: StatusBoard,
        *,
        store: StateStore,
        default_volume: float,
        publish: Callable[[dict[str, Any]], None] | None = None,
        set_leds: Callable[[str, Led], None] | None = None,
    ) -> None:
        self.status = status
        self.store = store
        self.publish = publish
        self.set_leds = set_leds
        self.gate: PttGate | None = None
        self.mixer: Any = None
        saved = store.load().get("volume")
        volume = saved if isinstance(saved, int | float) and 0 <= saved <= 1 else default_volume
        status.set_volume(float(volume), muted=False)
        status.add_listener(lambda _b: self.refresh_leds())

    def attach(self, gate: PttGate, mixer: Any) -> None:
        """A new generation's gate and mixer (after start or reload)."""
        self.gate, self.mixer = gate, mixer
        self._apply_volume()

    # -- buttons -------------------------------------------------------------------
    def on_button(self, key: str, event: ButtonEvent, t: float) -> None:
        if key == "ptt_button" and self.gate is not None:
            if event is ButtonEvent.PRESSED:
                self.gate.press()
            else:
                self.gate.release()
            self.refresh_leds()
        elif event is ButtonEvent.PRESSED:
            match key:
                case "mute_button":
                    self.set_muted(not self.status.muted)
                case "volume_up_button":
                    self.set_volume(self.status.volume + VOLUME_STEP)
                case "volume_down_button":
                    self.set_volume(self.status.volume - VOLUME_STEP)

    # -- actions -------------------------------------------------------------------
    def set_volume(self, volume: float) -> None:
        volume = round(min(1.0, max(0.0, volume)), 2)
        self.status.set_volume(volume, self.status.muted)
        self.store.save(volume=volume)
        self._apply_volume()
        logger.info("volume %d %%", round(volume * 100))

    def set_muted(self, muted: bool) -> None:
        self.status.set_volume(self.status.volume, muted)
        self._apply_volume()
        logger.info("speaker %s", "muted" if muted else "unmuted")

    def _apply_volume(self) -> None:
        if self.mixer is not None:
            self.mixer.volume = self.status.volume
            self.mixer.muted = self.status.muted

    # -- remote commands -----------------------------------------------------------
    def on_command(self, event: TopicMessage) -> None:
        """A message on the command topic (the whole event: sender and time included)."""
        text = event.message
        try:
            command = parse_command(text)
        except CommandError as e:
            logger.warning("remote command refused: %s", e, extra={"LINK": "videosdk"})
            self._reply({"error": str(e)})
            return
        logger.info("remote command %s", command.cmd, extra={"LINK": "videosdk"})
        match command:
            case Command(cmd="mute"):
                self.set_muted(True)
            case Command(cmd="unmute"):
                self.set_muted(False)
            case Command(cmd="volume", value=v):
                self.set_volume(v)
            case Command(cmd="ptt", value=mode):
                if self.gate is not None:
                    self.gate.set_mode(mode)
                self.status.set_ptt(mode=mode)
        self._reply({"ok": command.cmd, "status": self.status.to_json()})

    def _reply(self, doc: dict[str, Any]) -> None:
        if self.publish is not None:
            self.publish(doc)

    # -- LEDs ----------------------------------------------------------------------
    def refresh_leds(self) -> None:
        if self.set_leds is None:
            return
        self.set_leds("status_led", self.status.led)
        self.set_leds("talk_led", self.talk_led())

    def talk_led(self) -> Led:
        """On while transmitting; 4 Hz while PTT is held and no uplink is up."""
        gate = self.gate
        if gate is None:
            return Led.OFF
        if gate.held and not self.status.any_uplink_up:
            return Led.BLINK_4HZ
        return Led.ON if gate.transmitting and self.status.any_uplink_up else Led.OFF
