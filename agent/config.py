"""Configuration: one frozen dataclass per TOML section, loaded and validated.

Every key and default is part of the external contract; ``config/agent.toml``
documents each one. Every rule the audio engine has at build time is checked here
too (device rates in whole 20 ms periods, the formats the mixer accepts), so a
config that passes ``check-config`` never fails to build (docs/architecture.md).
Loading reports *every* problem, one line each, as
``PATH: section.key: reason``, and raises :class:`~agent.errors.ConfigError`
(the CLI turns that into exit code 78, EX_CONFIG). Per-key checks: :mod:`agent.config_checks`;
the cross-key rules (required when enabled, a pin used twice, cleartext) are here.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.config_checks import (
    abspath,
    build_section,
    ca_bundle,
    cue_sound,
    device_rate,
    doc,
    gpio_pin,
    handsfree_library,
    host_port,
    in_range,
    is_loopback_host,
    message_bytes,
    one_of,
    rate_hz,
    rooms,
    sender_ids,
    topic_length,
    url_with,
)
from agent.errors import ConfigError

DEFAULT_PATH = Path("/etc/field-agent/agent.toml")
CONFIG_ENV = "FIELD_AGENT_CONFIG"

# --- sections ---------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceConfig:
    id: str = field(default="", metadata=doc("Participant id and metadata.deviceId. Required."))
    name: str = field(default="", metadata=doc("Display name in the room; defaults to the id."))


@dataclass(frozen=True)
class AudioConfig:
    capture_device: str = field(default="default", metadata=doc("ALSA capture PCM."))
    capture_rate: int = field(
        default=8000, metadata=doc("Hz asked of the mic (a multiple of 50).", device_rate)
    )
    playback_device: str = field(default="default", metadata=doc("ALSA playback PCM."))
    playback_rate: int = field(
        default=48000, metadata=doc("Hz of the speaker (a multiple of 50).", device_rate)
    )
    volume: float = field(default=0.8, metadata=doc("Speaker volume 0.0..1.0.", in_range(0, 1)))
    mic_gain_db: float = field(
        default=0.0, metadata=doc("Mic gain in dB, saturating.", in_range(-40, 40, " dB"))
    )
    echo_cancel: str = field(
        default="off",
        metadata=doc(
            "Echo cancellation: auto (on in ptt.mode open/vox), on, off.",
            one_of("auto", "on", "off"),
        ),
    )
    noise_suppression: int = field(
        default=0, metadata=doc("Noise suppression 0..3 (0 off).", in_range(0, 3))
    )
    auto_gain: bool = field(default=False, metadata=doc("Automatic gain on the uplink."))

    @property
    def handsfree_asked(self) -> bool:
        """A key asks for the hands-free processing (echo_cancel "auto" only may)."""
        return self.echo_cancel == "on" or self.noise_suppression > 0 or self.auto_gain


@dataclass(frozen=True)
class PttConfig:
    mode: str = field(
        default="hold", metadata=doc("PTT mode.", one_of("hold", "toggle", "open", "vox"))
    )
    idle: str = field(
        default="silence", metadata=doc("Uplink while not talking.", one_of("silence", "none"))
    )
    vox_threshold_dbfs: float = field(
        default=-40.0, metadata=doc("VOX opens above this level.", in_range(-100, 0, " dBFS"))
    )
    vox_hangover_ms: int = field(
        default=600,
        metadata=doc("VOX stays open this long after speech.", in_range(0, 10000, " ms")),
    )
    duck_while_talking_db: float = field(
        default=0.0, metadata=doc("Speaker attenuation while transmitting.", in_range(0, 60, " dB"))
    )


@dataclass(frozen=True)
class GpioConfig:
    ptt_button: int | None = field(
        default=None, metadata=doc("BCM pin of the PTT button.", gpio_pin)
    )
    mute_button: int | None = field(
        default=None, metadata=doc("BCM pin of the mute button.", gpio_pin)
    )
    volume_up_button: int | None = field(
        default=None, metadata=doc("BCM pin, volume +10 %.", gpio_pin)
    )
    volume_down_button: int | None = field(
        default=None, metadata=doc("BCM pin, volume -10 %.", gpio_pin)
    )
    status_led: int | None = field(
        default=None, metadata=doc("BCM pin of the status LED.", gpio_pin)
    )
    talk_led: int | None = field(default=None, metadata=doc("BCM pin of the talk LED.", gpio_pin))
    channel_up_button: int | None = field(
        default=None, metadata=doc("BCM pin, next channel (videosdk.rooms; wraps).", gpio_pin)
    )
    channel_down_button: int | None = field(
        default=None, metadata=doc("BCM pin, previous channel (wraps).", gpio_pin)
    )
    emergency_button: int | None = field(
        default=None, metadata=doc("BCM pin of the emergency button (hold 2 s).", gpio_pin)
    )
    pin_factory: str = field(
        default="",
        metadata=doc(
            "gpiozero pin factory ('' = gpiozero's choice).",
            one_of("", "lgpio", "rpigpio", "pigpio", "native", "mock"),
        ),
    )
    backend: str = field(
        default="auto",
        metadata=doc(
            "What drives the buttons and LEDs: 'chardev' (the kernel's GPIO character "
            "device, served by the event loop: no thread wakes while no button moves), "
            "'gpiozero' (the pin factory), 'auto' (chardev when pin_factory is '' or "
            "'lgpio' and a /dev/gpiochip* is there, else gpiozero).",
            one_of("auto", "chardev", "gpiozero"),
        ),
    )

    def pins(self) -> dict[str, int]:
        """The configured controls and LEDs, by key name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.endswith(("_button", "_led")) and getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class RoomConfig:
    """One channel of ``videosdk.rooms``: a VideoSDK room and the name people know it by."""

    id: str
    name: str = ""  # "" = the id

    @property
    def label(self) -> str:
        return self.name or self.id


PIXEL_ROLES = ("status_led", "talk_led", "")


def pixel_roles(v: tuple[str, ...]) -> str | None:
    bad = [r for r in v if r not in PIXEL_ROLES]
    return f"each entry must be one of {list(PIXEL_ROLES)}, not {bad[0]!r}" if bad else None


@dataclass(frozen=True)
class PixelsConfig:
    enabled: bool = field(
        default=False, metadata=doc("Drive APA102 RGB LEDs over SPI (e.g. the ReSpeaker HAT's).")
    )
    spi_bus: int = field(default=0, metadata=doc("SPI bus: /dev/spidevBUS.DEVICE.", in_range(0, 6)))
    spi_device: int = field(
        default=0, metadata=doc("SPI chip select (the ReSpeaker 2-Mic HAT: 1).", in_range(0, 3))
    )
    speed_hz: int = field(
        default=8_000_000,
        metadata=doc("SPI clock, Hz.", in_range(100_000, 32_000_000, " Hz")),
    )
    count: int = field(default=3, metadata=doc("LEDs on the chain.", in_range(1, 64)))
    brightness: float = field(
        default=0.25, metadata=doc("0.0..1.0 of the LEDs' full brightness.", in_range(0, 1))
    )
    leds: tuple[str, ...] = field(
        default=("status_led", "talk_led", "status_led"),
        metadata=doc(
            "What each LED shows, first to last: status_led, talk_led or '' (off).", pixel_roles
        ),
    )


@dataclass(frozen=True)
class VideoSDKConfig:
    enabled: bool = field(default=True, metadata=doc("Stream into a VideoSDK room."))
    room_id: str = field(
        default="", metadata=doc("Room to join (the one-room form of rooms; not with rooms).")
    )
    rooms: tuple[RoomConfig, ...] = field(
        default=(),
        metadata=doc("Channels: [{ id = ROOM, name = NAME }, ...]; the device is in one.", rooms),
    )
    api_base: str = field(
        default="https://api.videosdk.live",
        metadata=doc("REST base URL.", url_with("https", "http")),
    )
    session_url: str = field(
        default="",
        metadata=doc(
            "Session broker URL ('' = ask VideoSDK at api_base); needs the device-token.",
            url_with("https", "http", empty_ok=True),
        ),
    )
    region: str = field(default="", metadata=doc("Ingest region ('' = VideoSDK's choice)."))
    topics: tuple[str, ...] = field(default=("CHAT",), metadata=doc("Subscribed topics."))
    status_topic: str = field(
        default="DEVICE_STATUS", metadata=doc("Status JSON topic.", topic_length)
    )
    command_topic: str = field(
        default="DEVICE_CMD", metadata=doc("Remote command topic.", topic_length)
    )
    alert_topic: str = field(
        default="DEVICE_ALERT", metadata=doc("Emergency alert topic ('' = off).", topic_length)
    )

    def channels(self) -> tuple[RoomConfig, ...]:
        """The channels: ``rooms``, else the one ``room_id`` (none when neither is set)."""
        if self.rooms:
            return self.rooms
        return (RoomConfig(self.room_id),) if self.room_id else ()


@dataclass(frozen=True)
class OrgoConfig:
    enabled: bool = field(default=False, metadata=doc("Play an Orgo computer's audio."))
    computer_id: str = field(default="", metadata=doc("Computer id. Required when enabled."))
    api_base: str = field(
        default="https://www.orgo.ai/api", metadata=doc("REST base URL.", url_with("https", "http"))
    )
    audio_url: str = field(
        default="wss://{computer_id}.orgo.dev/audio",
        metadata=doc("Audio WebSocket URL template.", url_with("wss", "ws")),
    )
    sample_rate: int = field(
        default=24000, metadata=doc("Hz asked for.", one_of(8000, 16000, 24000, 44100, 48000))
    )
    channels: int = field(default=1, metadata=doc("Channels asked for.", one_of(1, 2)))


@dataclass(frozen=True)
class FastRTCConfig:
    enabled: bool = field(default=False, metadata=doc("Talk to a FastRTC voice app."))
    url: str = field(
        default="", metadata=doc("The app's WebSocket URL.", url_with("wss", "ws", empty_ok=True))
    )
    input_rate: int = field(default=48000, metadata=doc("The handler's input rate, Hz.", rate_hz))
    output_rate: int = field(default=24000, metadata=doc("The handler's output rate, Hz.", rate_hz))


@dataclass(frozen=True)
class PbxConfig:
    enabled: bool = field(default=False, metadata=doc("Receive Yeastar PBX call audio."))
    listen: str = field(
        default="0.0.0.0:8765",
        metadata=doc(
            "HOST:PORT of the WebSocket server.", lambda v: host_port(v, allow_empty=False)
        ),
    )
    sample_rate: int = field(
        default=8000, metadata=doc("Hz, as set on the PBX.", one_of(8000, 16000))
    )
    secret_header: str = field(
        default="Secret",
        metadata=doc(
            "Request header carrying the secret.",
            lambda v: None if v and v.replace("-", "").isalnum() else "must be an HTTP header name",
        ),
    )
    tls_cert: str = field(
        default="",
        metadata=doc("PEM certificate (chain) for wss:// ('' = ws://); with tls_key.", abspath),
    )
    tls_key: str = field(
        default="", metadata=doc("PEM private key of tls_cert ('' = ws://).", abspath)
    )
    max_calls: int = field(
        default=4, metadata=doc("Concurrent calls (connections) accepted.", in_range(1, 64))
    )
    idle_timeout_s: float = field(
        default=30.0,
        metadata=doc("A call silent this long is closed, s.", in_range(1, 3600, " s")),
    )
    max_message_bytes: int = field(
        default=65536,
        metadata=doc("Largest message accepted, bytes.", message_bytes),
    )


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = field(
        default="127.0.0.1:9464",
        metadata=doc(
            "HOST:PORT for /metrics and /status ('' = off).",
            lambda v: host_port(v, allow_empty=True),
        ),
    )


@dataclass(frozen=True)
class SecurityConfig:
    allow_insecure: bool = field(
        default=False, metadata=doc("Allow ws:// and http:// to hosts other than loopback.")
    )
    ca_file: str = field(
        default="",
        metadata=doc(
            "PEM file of CAs trusted for https:// and wss:// besides the system's ('' = none).",
            ca_bundle,
        ),
    )


@dataclass(frozen=True)
class CommandsConfig:
    allow_mic_control: bool = field(
        default=False,
        metadata=doc("Signed remote commands may change what the mic sends (ptt)."),
    )
    allowed_senders: tuple[str, ...] = field(
        default=(),
        metadata=doc("Sender ids whose commands are considered ([] = any).", sender_ids),
    )
    window_s: float = field(
        default=60.0,
        metadata=doc("Replay window of signed commands, s.", in_range(5, 3600, " s")),
    )
    rate_per_s: float = field(
        default=2.0,
        metadata=doc("Commands per second per sender (token bucket).", in_range(0.1, 100, "/s")),
    )
    burst: int = field(
        default=10, metadata=doc("Commands a sender may send at once.", in_range(1, 1000))
    )


def _cue(what: str) -> Any:
    return field(default="tone", metadata=doc(f'{what}: "" off, "tone", or a WAV path.', cue_sound))


@dataclass(frozen=True)
class CuesConfig:
    """Sound cues, played on the speaker only (agent.audio.cues)."""

    enabled: bool = field(default=True, metadata=doc("Play sound cues on the speaker."))
    volume: float = field(
        default=0.5,
        metadata=doc("Cue loudness 0.0..1.0, times the speaker volume.", in_range(0, 1)),
    )
    talk_permit: str = _cue("PTT down and an uplink up")
    refusal: str = _cue("PTT down and no uplink up")
    roger: str = _cue("PTT up after talking")
    link_lost: str = _cue("The last uplink went down")
    link_back: str = _cue("An uplink is up again")
    mute_on: str = _cue("Speaker muted")
    mute_off: str = _cue("Speaker unmuted")
    volume_step: str = _cue("Volume changed")
    channel: str = _cue("Channel changed (played N times for channel N)")
    alarm: str = _cue("Emergency triggered")
    roger_to_room: bool = field(
        default=False, metadata=doc("Also send the roger beep into the room after PTT up.")
    )


@dataclass(frozen=True)
class EmergencyConfig:
    hold_s: float = field(
        default=2.0,
        metadata=doc("The emergency button triggers (and cancels) after this hold, s.",
                     in_range(1, 10, " s")),
    )  # fmt: skip
    open_mic_s: float = field(
        default=60.0,
        metadata=doc("The mic is open this long after a trigger, whatever the PTT mode, s "
                     "(0 = not opened).", in_range(0, 3600, " s")),
    )  # fmt: skip
    alert_every_s: float = field(
        default=10.0,
        metadata=doc("The alert is published again this often until cancelled, s.",
                     in_range(2, 600, " s")),
    )  # fmt: skip


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``path`` is where it was read from (for messages)."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    ptt: PttConfig = field(default_factory=PttConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    pixels: PixelsConfig = field(default_factory=PixelsConfig)
    videosdk: VideoSDKConfig = field(default_factory=VideoSDKConfig)
    orgo: OrgoConfig = field(default_factory=OrgoConfig)
    fastrtc: FastRTCConfig = field(default_factory=FastRTCConfig)
    pbx: PbxConfig = field(default_factory=PbxConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    cues: CuesConfig = field(default_factory=CuesConfig)
    emergency: EmergencyConfig = field(default_factory=EmergencyConfig)
    path: str = field(default="<defaults>", compare=False)


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name != "path"
}


# The placeholders config/agent.toml ships with: `check-config` warns while one is still
# set ("example value, edit it"); they are valid, so the file loads and exit stays 0.
EXAMPLE_VALUES: dict[tuple[str, str], str] = {
    ("device", "id"): "dev_12",
    ("device", "name"): "Field Device 12",
    ("videosdk", "room_id"): "abcd-efgh-ijkl",
}


def example_values(cfg: Config) -> list[str]:
    """``section.key = "value"`` for each shipped example value still in ``cfg``."""
    found = []
    for (section, key), example in EXAMPLE_VALUES.items():
        part = getattr(cfg, section)
        if getattr(part, "enabled", True) and getattr(part, key) == example:
            found.append(f'{section}.{key} = "{example}"')
    return found


# --- loading ----------------------------------------------------------------------


def default_path(env: typing.Mapping[str, str] = os.environ) -> Path:
    """``$FIELD_AGENT_CONFIG``, else ``/etc/field-agent/agent.toml``."""
    return Path(env.get(CONFIG_ENV) or DEFAULT_PATH)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file; raise ConfigError listing every problem."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{p}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            [f"{p}: cannot read: {e.__class__.__name__}: {getattr(e, 'strerror', None) or e}"]
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{p}: not valid TOML: {e}"]) from None
    return from_dict(raw, path=str(p))


def from_dict(raw: dict[str, Any], *, path: str = "<dict>") -> Config:
    """Build a Config from parsed TOML; raise ConfigError listing every problem."""
    problems: list[str] = []

    def bad(key: str, reason: str) -> None:
        problems.append(f"{path}: {key}: {reason}")

    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            bad(name, f"unknown section (known: {', '.join(SECTIONS)})")
        elif not isinstance(value, dict):
            bad(name, "must be a table ([" + name + "])")
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        sections[name] = build_section(name, cls, table if isinstance(table, dict) else {}, bad)

    cfg = Config(**sections, path=path)
    refused = {p.removeprefix(f"{path}: ").split(": ", 1)[0] for p in problems}

    def bad_unless_refused(key: str, reason: str) -> None:
        # a key whose value was refused above is left at its default: not a second line
        if key not in refused:
            bad(key, reason)

    if "videosdk.rooms" in refused:  # a refused rooms list is not also "room_id required"
        refused.add("videosdk.room_id")
    _cross_checks(cfg, bad_unless_refused)
    if problems:
        raise ConfigError(problems)
    return cfg


def _cross_checks(cfg: Config, bad: Callable[[str, str], None]) -> None:
    if not cfg.device.id:
        bad("device.id", 'required (the participant id, e.g. "dev_12")')
    if cfg.videosdk.room_id and cfg.videosdk.rooms:
        bad("videosdk.rooms", "set either videosdk.room_id (one room) or videosdk.rooms, not both")
    elif cfg.videosdk.enabled and not cfg.videosdk.channels():
        bad("videosdk.room_id", "required when videosdk.enabled = true (or videosdk.rooms)")
    for i, topic in enumerate(cfg.videosdk.topics):
        if not topic or len(topic) > 128:
            bad(f"videosdk.topics[{i}]", "a topic must be 1 to 128 characters")
    if cfg.orgo.enabled and not cfg.orgo.computer_id:
        bad("orgo.computer_id", "required when orgo.enabled = true")
    if cfg.fastrtc.enabled and not cfg.fastrtc.url:
        bad("fastrtc.url", "required when fastrtc.enabled = true")

    if bool(cfg.pbx.tls_cert) != bool(cfg.pbx.tls_key):
        missing = "pbx.tls_key" if cfg.pbx.tls_cert else "pbx.tls_cert"
        bad(missing, "required with the other of pbx.tls_cert / pbx.tls_key (both or neither)")
    pbx_host = cfg.pbx.listen.rpartition(":")[0]
    if (
        cfg.pbx.enabled
        and not cfg.pbx.tls_cert
        and not cfg.security.allow_insecure
        and not is_loopback_host(pbx_host)
    ):
        bad(
            "pbx.listen",
            f"ws:// on {pbx_host} would carry the PBX's secret in clear; set pbx.tls_cert and "
            "pbx.tls_key (wss://), or security.allow_insecure = true",
        )

    if len(cfg.pixels.leds) > cfg.pixels.count:
        bad("pixels.leds", f"lists {len(cfg.pixels.leds)} LEDs, pixels.count is {cfg.pixels.count}")
    if cfg.gpio.emergency_button is not None and not (
        cfg.videosdk.enabled and cfg.videosdk.alert_topic
    ):
        bad(
            "gpio.emergency_button",
            "an emergency alert needs videosdk.enabled = true and a videosdk.alert_topic",
        )
    if cfg.gpio.backend == "chardev" and cfg.gpio.pin_factory == "mock":
        bad(
            "gpio.backend",
            "'chardev' reads the kernel's GPIO lines; pin_factory 'mock' has none "
            "(use 'auto' or 'gpiozero')",
        )
    audio = cfg.audio
    if audio.handsfree_asked or (audio.echo_cancel == "auto" and cfg.ptt.mode in ("open", "vox")):
        reason = handsfree_library()
        if reason is not None:
            if audio.echo_cancel == "on":
                key = "audio.echo_cancel"
            elif audio.noise_suppression > 0:
                key = "audio.noise_suppression"
            elif audio.auto_gain:
                key = "audio.auto_gain"
            else:
                key = "audio.echo_cancel"
                reason = f'"auto" with ptt.mode = "{cfg.ptt.mode}" {reason}'
            bad(key, reason)

    seen: dict[int, str] = {}
    for key, pin in cfg.gpio.pins().items():
        if pin in seen:
            bad(f"gpio.{key}", f"GPIO {pin} is already used by gpio.{seen[pin]}")
        else:
            seen[pin] = key

    if not cfg.security.allow_insecure:
        urls = {
            "videosdk.api_base": (cfg.videosdk.enabled, cfg.videosdk.api_base),
            "videosdk.session_url": (cfg.videosdk.enabled, cfg.videosdk.session_url),
            "orgo.api_base": (cfg.orgo.enabled, cfg.orgo.api_base),
            "orgo.audio_url": (cfg.orgo.enabled, cfg.orgo.audio_url),
            "fastrtc.url": (cfg.fastrtc.enabled, cfg.fastrtc.url),
        }
        for key, (enabled, url) in urls.items():
            parts = urlsplit(url.replace("{computer_id}", "x"))
            if (
                enabled
                and parts.scheme in ("ws", "http")
                and not is_loopback_host(parts.hostname or "")
            ):
                bad(
                    key,
                    f"{parts.scheme}:// to a non-loopback host is refused; use "
                    f"{parts.scheme}s:// or set security.allow_insecure = true",
                )


def describe_keys() -> list[tuple[str, Any, str]]:
    """(section.key, default, doc) for every key: used to test the shipped config's docs."""
    out = []
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append((f"{name}.{f.name}", default, f.metadata.get("doc", "")))
    return out
