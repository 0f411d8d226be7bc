"""What a person touches and sees: buttons, LEDs, volume and mute, remote commands.

:class:`Controls` turns button events into PTT, mute and volume actions, drives the
status and talk LEDs from the :class:`StatusBoard`, keeps the volume across
restarts in the service's state directory (:mod:`agent.state`), and executes the
remote commands that arrive on ``videosdk.command_topic`` once they pass
:mod:`agent.commands` (rate limit, sender allow-list, signature, replay window,
opt-in): anything else is refused, answered on the status topic, counted
(``commands_refused_total{reason=...}``) and logged (rate-limited), never executed.
It also plays the sound cues (:mod:`agent.audio.cues`: talk permit or refusal at PTT
down, roger at PTT up, link lost and back, mute, volume) and holds the emergency
state machine (:mod:`agent.emergency`, ``gpio.emergency_button``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.audio.cues import ECHO_S, Cues
from agent.channels import Channels
from agent.commands import (
    MIC_COMMANDS,
    MIN_KEY_CHARS,
    OPEN_COMMANDS,
    Command,
    CommandError,
    ReplayGuard,
    TokenBucket,
    parse,
    server_time,
    signature_ok,
)
from agent.config import Config
from agent.emergency import Emergency
from agent.errors import CredentialError
from agent.hw.gpio import ButtonEvent
from agent.metrics import Metrics
from agent.ptt import PttGate
from agent.secrets import Credentials
from agent.state import StateStore
from agent.status import Led, StatusBoard

__all__ = ["Command", "CommandError", "Controls", "StateStore", "parse_command"]

logger = logging.getLogger(__name__)

VOLUME_STEP = 0.1
SWITCH_QUIET_S = 2.0  # after a channel switch, the uplink going down is the switch itself
KEY_NAME = "command-key"
GLOBAL_SENDER = "*"  # every sender together: GLOBAL_FACTOR times one sender's budget
GLOBAL_FACTOR = 4
DROP_REPORT_S = 10.0  # rate-limit drops: one reply and one log line per sender and interval


class CommandEvent(Protocol):
    """What the link hands over: a topic message (agent.proto.videosdk.TopicMessage)."""

    @property
    def topic(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def sender_id(self) -> str: ...
    @property
    def sender_name(self) -> str: ...
    @property
    def timestamp(self) -> str: ...
    @property
    def id(self) -> str: ...


def parse_command(text: str) -> Command:
    """Validate one remote command (JSON text, either form); raise CommandError."""
    return parse(text).command


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
        config: Callable[[], Config] | None = None,
        credentials: Credentials | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        cues: Cues | None = None,
        alert: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """``cues``: the sound cue player (None: no cues); ``alert``: publishes an
        emergency alert on ``videosdk.alert_topic`` (False: no link to take it);
        ``config``: the running config (read at each command, so a reload applies);
        ``credentials``: where ``command-key`` is read (at start and each generation);
        ``clock``: monotonic seconds; ``wall_clock``: the device's clock, used only to
        say how far off it is, never to judge a command."""
        self.status = status
        self.store = store
        self.publish = publish
        self.set_leds = set_leds
        self.gate: PttGate | None = None
        self.mixer: Any = None
        self.channels: Channels | None = None  # set by the agent: channel buttons, "room"
        self._config = config or Config
        self._credentials = credentials
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._wall_clock = wall_clock
        self._key: bytes | None = None
        self._clock_noted = False
        cfg = self._config().commands
        self._bucket_cfg = (cfg.rate_per_s, cfg.burst)
        self._buckets = TokenBucket(cfg.rate_per_s, cfg.burst)
        self._global = TokenBucket(cfg.rate_per_s * GLOBAL_FACTOR, cfg.burst * GLOBAL_FACTOR)
        self._dropped: dict[str, int] = {}
        self._drop_reported: dict[str, float] = {}
        self.replay = ReplayGuard(cfg.window_s)
        saved = store.load()
        if "commands" in saved:  # validated by the store
            self.replay.restore(saved["commands"])
        volume = saved.get("volume", default_volume)
        status.set_volume(float(volume), muted=False)
        status.add_listener(lambda _b: self.refresh_leds())
        self.cues = cues
        self._talk_cue: str | None = None  # the cue of the talk going on (permit / refusal)
        self._uplink_was_up = False
        self._link_lost = False  # link_lost played: link_back is due when one is up again
        self._switch_until = 0.0  # a channel switch takes the uplink down on purpose: no chime
        self.emergency = Emergency(
            self._config,
            status=status,
            store=store,
            publish=alert,
            on_event=self._on_emergency,
            metrics=self.metrics,
            clock=clock,
            wall_clock=wall_clock,
        )
        status.add_listener(self._on_status)

    def attach(self, gate: PttGate, mixer: Any) -> None:
        """A new generation's gate and mixer (after start or reload); reads command-key."""
        self.gate, self.mixer = gate, mixer
        self._apply_volume()
        self.load_key()
        if self.cues is not None:
            self.cues.attach(mixer if hasattr(mixer, "add_source") else None)
        if self.emergency.mic_open:
            gate.force_open(True)

    def close(self) -> None:
        """A clean stop: write what is pending."""
        self.emergency.close()
        if self.cues is not None:
            self.cues.stop()
        self.store.flush()

    def load_key(self) -> None:
        """(Re)read the command-key credential (at start and at every good reload)."""
        if self._credentials is None:
            return
        try:
            secret = self._credentials.optional(KEY_NAME)
        except CredentialError as e:
            logger.warning("%s; signed remote commands are refused", e)
            self._key = None
            return
        except OSError as e:  # e.g. a root-only credentials directory
            logger.warning(
                "cannot look for credential %s (%s); signed remote commands are refused",
                KEY_NAME,
                e.strerror or type(e).__name__,
            )
            self._key = None
            return
        if secret is None:
            self._key = None
            return
        value = secret.reveal().strip()
        if len(value) < MIN_KEY_CHARS:
            logger.warning(
                "credential %s is shorter than %d characters; signed remote commands are "
                "refused (make one with: openssl rand -hex 32)",
                KEY_NAME,
                MIN_KEY_CHARS,
            )
            self._key = None
            return
        self._key = value.encode()

    # -- buttons -------------------------------------------------------------------
    def on_button(self, key: str, event: ButtonEvent, t: float) -> None:
        if key == "ptt_button" and self.gate is not None:
            was = self.gate.transmitting
            if event is ButtonEvent.PRESSED:
                self.gate.press()
            else:
                self.gate.release()
            if self.gate.transmitting != was:
                self._talk_changed(self.gate.transmitting)
            self.refresh_leds()
        elif key == "emergency_button":
            self.emergency.button(event is ButtonEvent.PRESSED, t)
        elif event is ButtonEvent.PRESSED:
            match key:
                case "mute_button":
                    self.set_muted(not self.status.muted)
                case "volume_up_button":
                    self.set_volume(self.status.volume + VOLUME_STEP)
                    self.play_cue("volume_step")
                case "volume_down_button":
                    self.set_volume(self.status.volume - VOLUME_STEP)
                    self.play_cue("volume_step")
                case "channel_up_button" if self.channels is not None:
                    self.channels.step(+1)
                case "channel_down_button" if self.channels is not None:
                    self.channels.step(-1)

    # -- cues ----------------------------------------------------------------------
    def play_cue(self, name: str) -> float | None:
        """Play cue ``name`` (agent.audio.cues.CUES); when it plays out, or None."""
        return None if self.cues is None else self.cues.play(name)

    def play_cue_channel(self, number: int) -> float | None:
        """Announce channel ``number`` (1-based: N short beeps), after a switch. The
        session's restart in the new room is not a lost link: the uplink going down within
        SWITCH_QUIET_S of the switch plays no link chime (a refused room sends the device
        back to the last good one, see agent.channels)."""
        self._switch_until = self._clock() + SWITCH_QUIET_S
        return None if self.cues is None else self.cues.play_channel(number)

    def _talk_changed(self, transmitting: bool) -> None:
        """PTT started a talk (permit, or refusal when no uplink is up) or ended one
        (roger, after a permitted talk)."""
        gate = self.gate
        assert gate is not None
        if transmitting:
            self._talk_cue = "talk_permit" if self.status.any_uplink_up else "refusal"
            end = self.play_cue(self._talk_cue)
            if end is not None:  # the room must not hear the chirp through the mic
                gate.duck_until(end + ECHO_S)
            return
        permitted, self._talk_cue = self._talk_cue == "talk_permit", None
        if not permitted or self.play_cue("roger") is None or self.cues is None:
            return
        if self._config().cues.roger_to_room and (pcm := self.cues.uplink("roger")) is not None:
            gate.send_after(pcm)

    def _on_status(self, board: StatusBoard) -> None:
        """Link cues on the uplinks' changes; alerts that waited for the link."""
        up = board.any_uplink_up
        if up != self._uplink_was_up:
            self._uplink_was_up = up
            if up:
                self._switch_until = 0.0
            if not up and self._clock() < self._switch_until:
                logger.debug("uplink down for the channel switch: no link chime")
            elif not up:
                self._link_lost = True
                self.play_cue("link_lost")
            elif self._link_lost:
                self._link_lost = False
                self.play_cue("link_back")
        self.emergency.link_changed()

    def _on_emergency(self, event: str) -> None:
        gate = self.gate
        if event == "triggered":
            if gate is not None and self.emergency.mic_open:
                gate.force_open(True)
            self.play_cue("alarm")
        elif gate is not None:  # mic_closed, cancelled
            gate.force_open(False)
        self.refresh_leds()

    # -- actions -------------------------------------------------------------------
    def set_volume(self, volume: float) -> None:
        volume = round(min(1.0, max(0.0, volume)), 2)
        self.status.set_volume(volume, self.status.muted)
        self.store.save(volume=volume)
        self._apply_volume()
        logger.info("volume %d %%", round(volume * 100))

    def set_muted(self, muted: bool) -> None:
        self.status.set_volume(self.status.volume, muted)
        if muted:  # the mute-on cue plays out before the speaker mutes
            self._apply_volume_at(self.play_cue("mute_on"))
        else:
            self._apply_volume()
            self.play_cue("mute_off")
        logger.info("speaker %s", "muted" if muted else "unmuted")

    def _apply_volume_at(self, t: float | None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if t is None or loop is None:
            self._apply_volume()
        else:
            loop.call_later(max(0.0, t - self._clock()), self._apply_volume)

    def _apply_volume(self) -> None:
        if self.mixer is not None:
            self.mixer.volume = self.status.volume
            self.mixer.muted = self.status.muted

    # -- remote commands -----------------------------------------------------------
    def on_command(self, event: CommandEvent) -> None:
        """One message from the command topic: execute it, or refuse and say why."""
        sender = event.sender_id or event.sender_name or "?"
        now = self._clock()
        if not self._admit(sender, now, event):
            return
        try:
            command = self._authorize(event, now)
        except CommandError as e:
            self._refuse(e, sender, event)
            return
        if command.cmd == "room" and not self._has_room(command.value):
            self._refuse(CommandError(f"room {command.value!r} is not one of videosdk.rooms",
                                      "unknown_room"), sender, event)  # fmt: skip
            return
        logger.info("remote command %s from %s", command.cmd, sender, extra=_extra(event))
        self.metrics.inc("commands_accepted_total", cmd=command.cmd)
        match command:
            case Command(cmd="mute"):
                self.set_muted(True)
            case Command(cmd="unmute"):
                self.set_muted(False)
            case Command(cmd="volume", value=v):
                self.set_volume(v)
                self.play_cue("volume_step")
            case Command(cmd="emergency"):
                self.emergency.cancel("remote", sender=sender[:128])
            case Command(cmd="ptt", value=mode):
                if self.gate is not None:
                    self.gate.set_mode(mode)
                self.status.set_ptt(mode=mode)
            case Command(cmd="room", value=room) if self.channels is not None:
                self.channels.select_id(room, why=f"remote command from {sender}")
        self._reply({"ok": command.cmd, "id": event.id[:64], "status": self.status.to_json()})

    def _has_room(self, room: str) -> bool:
        return self.channels is not None and any(r.id == room for r in self.channels.rooms)

    def _admit(self, sender: str, now: float, event: CommandEvent) -> bool:
        """The per-sender and overall token buckets; drops are counted, reported once
        per interval."""
        cfg = self._config().commands
        if (cfg.rate_per_s, cfg.burst) != self._bucket_cfg:  # a reload changed the rate
            self._bucket_cfg = (cfg.rate_per_s, cfg.burst)
            self._buckets = TokenBucket(cfg.rate_per_s, cfg.burst)
            self._global = TokenBucket(cfg.rate_per_s * GLOBAL_FACTOR, cfg.burst * GLOBAL_FACTOR)
        if self._buckets.allow(sender, now) and self._global.allow(GLOBAL_SENDER, now):
            return True
        self.metrics.inc("commands_refused_total", reason="rate_limited")
        if len(self._dropped) > 1024 and sender not in self._dropped:
            self._dropped.clear()  # bounded: counts of silent senders are forgotten
        self._dropped[sender] = self._dropped.get(sender, 0) + 1
        if now - self._drop_reported.get(sender, -1e9) >= DROP_REPORT_S:
            if len(self._drop_reported) > 256:
                self._drop_reported.clear()
            self._drop_reported[sender] = now
            count = self._dropped.pop(sender)
            logger.warning(
                "remote commands from %s over the rate limit (%g/s, burst %d): %d dropped",
                sender,
                cfg.rate_per_s,
                cfg.burst,
                count,
                extra=_extra(event),
            )
            self._reply({"error": "rate limited", "reason": "rate_limited", "dropped": count})
        return False

    def _authorize(self, event: CommandEvent, now: float) -> Command:
        cfg = self._config()
        allowed = cfg.commands.allowed_senders
        if allowed and event.sender_id not in allowed:
            raise CommandError("sender not allowed", "sender_not_allowed")
        envelope = parse(event.message)
        command = envelope.command
        if not envelope.signed:
            if command.cmd in OPEN_COMMANDS:
                return command
            raise CommandError("unsigned command refused", "unsigned")
        if self._key is None:
            raise CommandError("signed command refused: no command-key on this device", "no_key")
        if not signature_ok(self._key, event.topic, envelope):
            raise CommandError("bad signature", "bad_signature")
        if envelope.device != cfg.device.id:
            raise CommandError("command is for another device", "wrong_device")
        self.replay.window_s = cfg.commands.window_s
        why = self.replay.check(
            envelope.ts, envelope.nonce, server_ts=server_time(event.timestamp), now=now
        )
        if why is not None:
            reason, _, detail = why.partition(": ")
            raise CommandError(f"{reason} command refused: {detail}", reason)
        # signed and fresh: remembered even if the policy refuses it below, so that a
        # later opt-in cannot make a replay of it work
        self.replay.accept(envelope.ts, envelope.nonce, now=now)
        self.store.save(commands=self.replay.snapshot())
        self._note_clock(envelope.ts)
        if command.cmd in MIC_COMMANDS and not cfg.commands.allow_mic_control:
            raise CommandError(
                "mic control is off on this device (commands.allow_mic_control)",
                "mic_control_off",
            )
        return command

    def _note_clock(self, ts: int) -> None:
        off = self._wall_clock() - ts
        if abs(off) > 600 and not self._clock_noted:
            self._clock_noted = True
            logger.warning(
                "this device's clock is off by %d min against the command's issuer "
                "(not synced?); commands are judged by their own times, not this clock",
                round(off / 60),
            )

    def _refuse(self, e: CommandError, sender: str, event: CommandEvent) -> None:
        self.metrics.inc("commands_refused_total", reason=e.reason)
        logger.warning("remote command from %s refused: %s", sender, e, extra=_extra(event))
        self._reply({"error": str(e), "reason": e.reason, "id": event.id[:64]})

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
        """On while transmitting; 10 Hz (the fastest) during an emergency; 4 Hz while PTT
        is held and no uplink is up."""
        if self.emergency.active:
            return Led.BLINK_FAST
        gate = self.gate
        if gate is None:
            return Led.OFF
        if gate.held and not self.status.any_uplink_up:
            return Led.BLINK_4HZ
        return Led.ON if gate.transmitting and self.status.any_uplink_up else Led.OFF


def _extra(event: CommandEvent) -> dict[str, str]:
    return {"LINK": "videosdk", "TOPIC": event.topic[:128], "SENDER": event.sender_id[:128]}
