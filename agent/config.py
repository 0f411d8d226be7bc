"""Configuration: one frozen dataclass per TOML section, loaded and validated.

Every key and default is part of the external contract; ``config/agent.toml``
documents each one. Every rule the audio engine has at build time is checked here
too (device rates in whole 20 ms periods, the formats the mixer accepts), so a
config that passes ``check-config`` never fails to build (docs/architecture.md).
Loading reports *every* problem, one line each, as
``PATH: section.key: reason``, and raises :class:`~agent.errors.ConfigError`
(the CLI turns that into exit code 78, EX_CONFIG).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigError

DEFAULT_PATH = Path("/etc/field-agent/agent.toml")
CONFIG_ENV = "FIELD_AGENT_CONFIG"

# A validator returns None when the value is fine, else the reason.
Check = Callable[[Any], str | None]


def _doc(text: str, check: Check | None = None) -> Any:
    return {"doc": text, "check": check}


def _range(lo: float, hi: float, unit: str = "") -> Check:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}{unit}, not {v!r}"

    return check


def _one_of(*allowed: Any) -> Check:
    def check(v: Any) -> str | None:
        if v in allowed:
            return None
        return f"must be one of {', '.join(repr(a) for a in allowed)}, not {v!r}"

    return check


def _rate(v: int) -> str | None:
    return _range(8000, 192000, " Hz")(v)


FRAMES_PER_S = 50  # agent.pcm: the audio engine works in 20 ms periods


def _device_rate(v: int) -> str | None:
    """A device rate the audio engine can use: whole 20 ms periods (agent.audio.mixer
    refuses another output rate; the ALSA and simulated ports open rate/50-frame periods)."""
    if reason := _rate(v):
        return reason
    if v % FRAMES_PER_S:
        nearest = round(v / FRAMES_PER_S) * FRAMES_PER_S
        return (
            f"must be a multiple of {FRAMES_PER_S} Hz (the audio engine works in 20 ms "
            f"periods), not {v!r}; the nearest is {nearest}"
        )
    return None


def _pin(v: int | None) -> str | None:
    return None if v is None else _range(0, 27, " (BCM GPIO number)")(v)


def _host_port(v: str, *, allow_empty: bool) -> str | None:
    if v == "" and allow_empty:
        return None
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"must be HOST:PORT (e.g. 127.0.0.1:9464), not {v!r}"
    if not host.isprintable() or " " in host or not host.isascii():
        return f"HOST must be an address or an ASCII host name, not {host!r}"
    return None


def _url(*schemes: str, empty_ok: bool = False) -> Check:
    def check(v: str) -> str | None:
        if v == "" and empty_ok:
            return None
        try:
            parts = urlsplit(v.replace("{computer_id}", "x"))
        except ValueError:  # e.g. "http://[::1": an unclosed IPv6 bracket
            parts = urlsplit("")
        if parts.scheme not in schemes or not parts.netloc:
            return f"must be a {'/'.join(s + '://' for s in schemes)} URL, not {v!r}"
        return None

    return check


def _abspath(v: str) -> str | None:
    if v == "":
        return None
    if not v.startswith("/"):
        return f"must be an absolute path, not {v!r}"
    if "\x00" in v or not _encodable(v):
        return f"not a usable path: {v!r}"
    return None


def _encodable(v: str) -> bool:
    try:
        os.fsencode(v)
    except UnicodeError:
        return False
    return True


def _message_bytes(v: int) -> str | None:
    # _range's %g would print 1 MiB as 1.04858e+06
    return None if 4096 <= v <= 1 << 20 else f"must be between 4096 and 1048576 bytes, not {v!r}"


def _ca_file(v: str) -> str | None:
    """A readable PEM file of CA certificates (loaded once here to prove it)."""
    if v == "":
        return None
    if not os.path.isabs(v):
        return f"must be an absolute path, not {v!r}"
    import ssl

    try:
        ssl.create_default_context().load_verify_locations(cafile=v)
    except FileNotFoundError:
        return f"file {v} not found"
    except ssl.SSLError:
        return f"{v} holds no PEM CA certificate"
    except OSError as e:
        return f"cannot read {v}: {e.strerror or type(e).__name__}"
    except ValueError:  # a NUL in the path
        return f"not a usable path: {v!r}"
    return None


def _topic(v: str) -> str | None:
    return None if len(v) <= 128 else f"must be at most 128 characters, not {len(v)}"


# --- sections ---------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceConfig:
    id: str = field(default="", metadata=_doc("Participant id and metadata.deviceId. Required."))
    name: str = field(default="", metadata=_doc("Display name in the room; defaults to the id."))


@dataclass(frozen=True)
class AudioConfig:
    capture_device: str = field(default="default", metadata=_doc("ALSA capture PCM."))
    capture_rate: int = field(
        default=8000, metadata=_doc("Hz asked of the mic (a multiple of 50).", _device_rate)
    )
    playback_device: str = field(default="default", metadata=_doc("ALSA playback PCM."))
    playback_rate: int = field(
        default=48000, metadata=_doc("Hz of the speaker (a multiple of 50).", _device_rate)
    )
    volume: float = field(default=0.8, metadata=_doc("Speaker volume 0.0..1.0.", _range(0, 1)))
    mic_gain_db: float = field(
        default=0.0, metadata=_doc("Mic gain in dB, saturating.", _range(-40, 40, " dB"))
    )


@dataclass(frozen=True)
class PttConfig:
    mode: str = field(
        default="hold", metadata=_doc("PTT mode.", _one_of("hold", "toggle", "open", "vox"))
    )
    idle: str = field(
        default="silence", metadata=_doc("Uplink while not talking.", _one_of("silence", "none"))
    )
    vox_threshold_dbfs: float = field(
        default=-40.0, metadata=_doc("VOX opens above this level.", _range(-100, 0, " dBFS"))
    )
    vox_hangover_ms: int = field(
        default=600,
        metadata=_doc("VOX stays open this long after speech.", _range(0, 10000, " ms")),
    )
    duck_while_talking_db: float = field(
        default=0.0, metadata=_doc("Speaker attenuation while transmitting.", _range(0, 60, " dB"))
    )


@dataclass(frozen=True)
class GpioConfig:
    ptt_button: int | None = field(default=None, metadata=_doc("BCM pin of the PTT button.", _pin))
    mute_button: int | None = field(
        default=None, metadata=_doc("BCM pin of the mute button.", _pin)
    )
    volume_up_button: int | None = field(
        default=None, metadata=_doc("BCM pin, volume +10 %.", _pin)
    )
    volume_down_button: int | None = field(
        default=None, metadata=_doc("BCM pin, volume -10 %.", _pin)
    )
    status_led: int | None = field(default=None, metadata=_doc("BCM pin of the status LED.", _pin))
    talk_led: int | None = field(default=None, metadata=_doc("BCM pin of the talk LED.", _pin))
    pin_factory: str = field(
        default="",
        metadata=_doc(
            "gpiozero pin factory ('' = gpiozero's choice).",
            _one_of("", "lgpio", "rpigpio", "pigpio", "native", "mock"),
        ),
    )

    def pins(self) -> dict[str, int]:
        """The configured controls and LEDs, by key name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "pin_factory" and getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class VideoSDKConfig:
    enabled: bool = field(default=True, metadata=_doc("Stream into a VideoSDK room."))
    room_id: str = field(default="", metadata=_doc("Room to join. Required when enabled."))
    api_base: str = field(
        default="https://api.videosdk.live", metadata=_doc("REST base URL.", _url("https", "http"))
    )
    session_url: str = field(
        default="",
        metadata=_doc(
            "Session broker URL ('' = ask VideoSDK at api_base); needs the device-token.",
            _url("https", "http", empty_ok=True),
        ),
    )
    region: str = field(default="", metadata=_doc("Ingest region ('' = VideoSDK's choice)."))
    topics: tuple[str, ...] = field(default=("CHAT",), metadata=_doc("Subscribed topics."))
    status_topic: str = field(default="DEVICE_STATUS", metadata=_doc("Status JSON topic.", _topic))
    command_topic: str = field(default="DEVICE_CMD", metadata=_doc("Remote command topic.", _topic))


@dataclass(frozen=True)
class OrgoConfig:
    enabled: bool = field(default=False, metadata=_doc("Play an Orgo computer's audio."))
    computer_id: str = field(default="", metadata=_doc("Computer id. Required when enabled."))
    api_base: str = field(
        default="https://www.orgo.ai/api", metadata=_doc("REST base URL.", _url("https", "http"))
    )
    audio_url: str = field(
        default="wss://{computer_id}.orgo.dev/audio",
        metadata=_doc("Audio WebSocket URL template.", _url("wss", "ws")),
    )
    sample_rate: int = field(
        default=24000, metadata=_doc("Hz asked for.", _one_of(8000, 16000, 24000, 44100, 48000))
    )
    channels: int = field(default=1, metadata=_doc("Channels asked for.", _one_of(1, 2)))


@dataclass(frozen=True)
class FastRTCConfig:
    enabled: bool = field(default=False, metadata=_doc("Talk to a FastRTC voice app."))
    url: str = field(
        default="", metadata=_doc("The app's WebSocket URL.", _url("wss", "ws", empty_ok=True))
    )
    input_rate: int = field(default=48000, metadata=_doc("The handler's input rate, Hz.", _rate))
    output_rate: int = field(default=24000, metadata=_doc("The handler's output rate, Hz.", _rate))


@dataclass(frozen=True)
class PbxConfig:
    enabled: bool = field(default=False, metadata=_doc("Receive Yeastar PBX call audio."))
    listen: str = field(
        default="0.0.0.0:8765",
        metadata=_doc(
            "HOST:PORT of the WebSocket server.", lambda v: _host_port(v, allow_empty=False)
        ),
    )
    sample_rate: int = field(
        default=8000, metadata=_doc("Hz, as set on the PBX.", _one_of(8000, 16000))
    )
    secret_header: str = field(
        default="Secret",
        metadata=_doc(
            "Request header carrying the secret.",
            lambda v: None if v and v.replace("-", "").isalnum() else "must be an HTTP header name",
        ),
    )
    tls_cert: str = field(
        default="",
        metadata=_doc("PEM certificate (chain) for wss:// ('' = ws://); with tls_key.", _abspath),
    )
    tls_key: str = field(
        default="", metadata=_doc("PEM private key of tls_cert ('' = ws://).", _abspath)
    )
    max_calls: int = field(
        default=4, metadata=_doc("Concurrent calls (connections) accepted.", _range(1, 64))
    )
    idle_timeout_s: float = field(
        default=30.0,
        metadata=_doc("A call silent this long is closed, s.", _range(1, 3600, " s")),
    )
    max_message_bytes: int = field(
        default=65536,
        metadata=_doc("Largest message accepted, bytes.", _message_bytes),
    )


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = field(
        default="127.0.0.1:9464",
        metadata=_doc(
            "HOST:PORT for /metrics and /status ('' = off).",
            lambda v: _host_port(v, allow_empty=True),
        ),
    )


@dataclass(frozen=True)
class SecurityConfig:
    allow_insecure: bool = field(
        default=False, metadata=_doc("Allow ws:// and http:// to hosts other than loopback.")
    )
    ca_file: str = field(
        default="",
        metadata=_doc(
            "PEM file of CAs trusted for https:// and wss:// besides the system's ('' = none).",
            _ca_file,
        ),
    )


def _senders(v: tuple[str, ...]) -> str | None:
    for s in v:
        if not s or len(s) > 128 or not s.isprintable():
            return f"a sender id must be 1 to 128 printable characters, not {s!r}"
    return None


@dataclass(frozen=True)
class CommandsConfig:
    allow_mic_control: bool = field(
        default=False,
        metadata=_doc("Signed remote commands may change what the mic sends (ptt)."),
    )
    allowed_senders: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Sender ids whose commands are considered ([] = any).", _senders),
    )
    window_s: float = field(
        default=60.0,
        metadata=_doc("Replay window of signed commands, s.", _range(5, 3600, " s")),
    )
    rate_per_s: float = field(
        default=2.0,
        metadata=_doc("Commands per second per sender (token bucket).", _range(0.1, 100, "/s")),
    )
    burst: int = field(
        default=10, metadata=_doc("Commands a sender may send at once.", _range(1, 1000))
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``path`` is where it was read from (for messages)."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    ptt: PttConfig = field(default_factory=PttConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    videosdk: VideoSDKConfig = field(default_factory=VideoSDKConfig)
    orgo: OrgoConfig = field(default_factory=OrgoConfig)
    fastrtc: FastRTCConfig = field(default_factory=FastRTCConfig)
    pbx: PbxConfig = field(default_factory=PbxConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
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
        sections[name] = _build_section(name, cls, table if isinstance(table, dict) else {}, bad)

    cfg = Config(**sections, path=path)
    refused = {p.removeprefix(f"{path}: ").split(": ", 1)[0] for p in problems}

    def bad_unless_refused(key: str, reason: str) -> None:
        # a key whose value was refused above is left at its default: not a second line
        if key not in refused:
            bad(key, reason)

    _cross_checks(cfg, bad_unless_refused)
    if problems:
        raise ConfigError(problems)
    return cfg


def _build_section(
    name: str, cls: type, table: dict[str, Any], bad: Callable[[str, str], None]
) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            bad(f"{name}.{key}", f"unknown key (known: {', '.join(known)})")
            continue
        converted, reason = _convert(value, hints[key])
        if reason is None:
            check = known[key].metadata.get("check")
            reason = check(converted) if check else None
        if reason is not None:
            bad(f"{name}.{key}", reason)
        else:
            values[key] = converted
    return cls(**values)


def _convert(value: Any, hint: Any) -> tuple[Any, str | None]:
    """Check ``value`` against a field's type; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(value, options[0])
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"must be a list of strings, not {_tname(value)}"
        return tuple(value), None
    if hint is bool:
        return (
            (value, None)
            if isinstance(value, bool)
            else (None, f"must be true or false, not {_tname(value)}")
        )
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        return None, f"must be an integer, not {_tname(value)}"
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), None
        return None, f"must be a number, not {_tname(value)}"
    if hint is str:
        return (
            (value, None)
            if isinstance(value, str)
            else (None, f"must be a string, not {_tname(value)}")
        )
    raise TypeError(f"unsupported config type {hint!r}")  # a programming error, not user input


def _tname(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _cross_checks(cfg: Config, bad: Callable[[str, str], None]) -> None:
    if not cfg.device.id:
        bad("device.id", 'required (the participant id, e.g. "dev_12")')
    if cfg.videosdk.enabled and not cfg.videosdk.room_id:
        bad("videosdk.room_id", "required when videosdk.enabled = true")
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
