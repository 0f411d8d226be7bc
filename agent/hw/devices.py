"""``field-agent devices`` and the audio half of ``field-agent selftest``.

Both return text (and a verdict) instead of printing, so the CLI decides where
it goes and tests read it.

Stable names: ALSA card *numbers* change with USB enumeration order, card *ids*
do not, so devices are listed as ``plughw:CARD=<id>,DEV=<n>`` (plughw converts
rate and channels in alsa-lib, so the agent's formats always work); the rates
shown are what the hardware does natively (probed on ``hw:``), i.e. the ones
that need no conversion.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import alsaaudio

from agent.errors import AudioError
from agent.hw.alsalog import route_alsa_lib_errors
from agent.hw.ports import AudioSink, AudioSource
from agent.hw.sim import ToneSource
from agent.metrics import Metrics
from agent.pcm import FRAMES_PER_S, SILENCE_DBFS, dbfs

logger = logging.getLogger(__name__)
route_alsa_lib_errors()  # probing prints alsa-lib's own lines otherwise (agent/hw/alsalog.py)

_HW_NAME = re.compile(r"^hw:CARD=(?P<card>[^,]+),DEV=(?P<dev>\d+)$")
_MAX_LISTED_RATE = 384000


@dataclass(frozen=True, slots=True)
class PcmInfo:
    """One PCM as ``field-agent devices`` shows it."""

    name: str  # the name to put in agent.toml
    rates: str  # what it accepts, human-readable; "" when not probed
    note: str = ""  # e.g. "busy", or the error from probing


def _format_rates(rates: Any) -> str:
    if isinstance(rates, int):
        return f"{rates} Hz"
    if isinstance(rates, tuple) and len(rates) == 2:
        lo, hi = (int(r) for r in rates)
        if hi > _MAX_LISTED_RATE:
            return f"any rate from {lo} Hz"
        return f"{lo}-{hi} Hz"
    if isinstance(rates, list) and rates:
        return " ".join(str(int(r)) for r in rates) + " Hz"
    return "unknown"


def probe_rates(device: str, *, capture: bool) -> str:
    """The sample rates ``device`` accepts natively, e.g. ``"16000 44100 48000 Hz"``.

    Opens non-blocking, so a device busy in another process answers at once
    (raises :class:`AudioError` with the reason).
    """
    kind = alsaaudio.PCM_CAPTURE if capture else alsaaudio.PCM_PLAYBACK
    last: Exception | None = None
    # hw: devices refuse formats they lack; one of these usually opens
    for channels, rate in ((1, 48000), (2, 48000), (1, 16000), (2, 44100)):
        try:
            pcm = alsaaudio.PCM(
                type=kind,
                mode=alsaaudio.PCM_NONBLOCK,
                device=device,
                rate=rate,
                channels=channels,
                format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=rate // FRAMES_PER_S,
            )
        except alsaaudio.ALSAAudioError as exc:
            last = exc
            if "busy" in str(exc).lower():
                break
            continue
        try:
            return _format_rates(pcm.getrates())
        except alsaaudio.ALSAAudioError as exc:
            raise AudioError(f"{device}: {exc}") from exc
        finally:
            pcm.close()
    raise AudioError(f"{device}: {last}")


def _card_pcms(capture: bool) -> tuple[list[PcmInfo], list[str]]:
    """(stable card devices with rates, other PCM names from the ALSA configuration)."""
    kind = alsaaudio.PCM_CAPTURE if capture else alsaaudio.PCM_PLAYBACK
    cards: list[PcmInfo] = []
    others: list[str] = []
    for name in alsaaudio.pcms(kind):
        match = _HW_NAME.match(name)
        if match is None:
            if ":" not in name:  # skip per-card aliases (sysdefault:CARD=..., front:...)
                others.append(name)
            continue
        stable = f"plughw:CARD={match['card']},DEV={match['dev']}"
        try:
            cards.append(PcmInfo(stable, probe_rates(name, capture=capture)))
        except AudioError as exc:
            note = "busy (in use by another program)" if "busy" in str(exc).lower() else str(exc)
            cards.append(PcmInfo(stable, "", note))
    return cards, others


def list_devices() -> str:
    """The text of ``field-agent devices``: cards, capture and playback PCMs with rates."""
    lines: list[str] = []
    indexes = alsaaudio.card_indexes()
    if not indexes:
        lines.append("No sound cards found (none in /proc/asound/cards).")
        lines.append(
            "  Plug in the USB sound card or enable the board's audio overlay, then retry."
        )
    else:
        lines.append("Sound cards:")
        for index in indexes:
            card_id, long_name = alsaaudio.card_name(index)
            lines.append(f"  {index}: CARD={card_id}  {long_name}")
    for capture, title in ((True, "Capture"), (False, "Playback")):
        cards, others = _card_pcms(capture)
        lines.append("")
        lines.append(f"{title} devices (use these names in agent.toml):")
        if not cards:
            lines.append("  (none on a sound card)")
        for info in cards:
            detail = f"rates: {info.rates}" if info.rates else info.note
            lines.append(f"  {info.name:<28} {detail}")
        marked, plugins = other_pcm_notes(others, capture=capture, have_cards=bool(cards))
        if marked:
            lines.append("  avoid in agent.toml:")
            lines.extend(f"    {name:<10} {note}" for name, note in marked)
        if plugins:
            lines.append(
                "  ALSA plugins (they wrap a device, they are not one): " + ", ".join(plugins)
            )
    return "\n".join(lines) + "\n"


_SOUND_SERVERS = ("pulse", "pipewire", "jack")


def other_pcm_notes(
    names: list[str], *, capture: bool, have_cards: bool
) -> tuple[list[tuple[str, str]], list[str]]:
    """``(name, why not to use it)`` for the configuration's PCMs a person may pick by
    mistake (``null``, ``default``, sound servers), and the plugin names (the rest)."""
    marked: list[tuple[str, str]] = []
    plugins: list[str] = []
    for name in names:
        if name == "null":
            marked.append((name, (
                "not a real device: it spins a core (endless silence, no clock)" if capture
                else "not a real device: it discards the audio as fast as it comes"
            )))  # fmt: skip
        elif name in ("default", "sysdefault"):
            marked.append((name, (
                "ALSA's default: it can point elsewhere when a card comes or goes; "
                "use the stable CARD= name above" if have_cards
                else "ALSA's default: there is no sound card behind it now"
            )))  # fmt: skip
        elif name in _SOUND_SERVERS:
            marked.append((name, "a sound server's device: none runs for the field-agent service"))
        else:
            plugins.append(name)
    return marked, plugins


def _meter(level: float, width: int = 30) -> str:
    """``-32.0 dBFS |##########          |`` over -60..0 dBFS."""
    filled = round(max(0.0, min(1.0, (level + 60.0) / 60.0)) * width)
    shown = "  -inf" if level <= SILENCE_DBFS else f"{level:6.1f}"
    return f"{shown} dBFS |{'#' * filled}{' ' * (width - filled)}|"


def selftest_audio(
    capture_device: str,
    playback_device: str,
    *,
    capture_rate: int = 8000,
    playback_rate: int = 48000,
    seconds: float = 5.0,
    tone_hz: float = 1000.0,
    tone_dbfs: float = -12.0,
    metrics: Metrics | None = None,
    out: Callable[[str], None] | None = None,
    open_source: Callable[[str, int], AudioSource] | None = None,
    open_sink: Callable[[str, int], AudioSink] | None = None,
) -> tuple[bool, str]:
    """Play a tone on the speaker while metering the mic for ``seconds``.

    ``out`` receives live meter lines (twice a second of audio). Returns
    ``(ok, report)``: ok when the tone played and the mic delivered audio that
    is not exact zeros. ``open_source`` / ``open_sink`` build the ports (ALSA
    by default).
    """
    from agent.hw.alsa import AlsaSink, AlsaSource

    registry = metrics or Metrics()
    make_source = open_source or (lambda dev, rate: AlsaSource(dev, rate, metrics=registry))
    make_sink = open_sink or (lambda dev, rate: AlsaSink(dev, rate, metrics=registry))
    periods = max(1, round(seconds * FRAMES_PER_S))
    report: list[str] = []
    speaker_result: list[str] = []

    def play(sink: AudioSink) -> None:
        tone = ToneSource(sink.rate, tone_hz, tone_dbfs, channels=sink.channels)
        tone.open()
        try:
            for _ in range(periods):
                sink.write(tone.read())
            speaker_result.append("ok")
        except AudioError as exc:
            speaker_result.append(f"FAILED: {exc}")
        finally:
            sink.close()

    speaker_ok = False
    player: threading.Thread | None = None
    try:
        sink = make_sink(playback_device, playback_rate)
        sink.open()
    except AudioError as exc:
        report.append(f"speaker {playback_device}: FAILED: {exc}")
    else:
        player = threading.Thread(target=play, args=(sink,), name="selftest-tone", daemon=True)
        player.start()

    mic_ok = False
    try:
        source = make_source(capture_device, capture_rate)
        source.open()
    except AudioError as exc:
        report.append(f"mic {capture_device}: FAILED: {exc}")
    else:
        mic_ok, mic_line = _meter_mic(source, capture_device, periods, out)
        report.append(mic_line)

    if player is not None:
        player.join()
        verdict = speaker_result[0] if speaker_result else "FAILED: no result"
        speaker_ok = verdict == "ok"
        report.insert(
            0,
            f"speaker {playback_device}: played a {tone_hz:g} Hz tone at {tone_dbfs:g} dBFS "
            f"for {periods / FRAMES_PER_S:.1f} s: {verdict}",
        )
    ok = speaker_ok and mic_ok
    report.append("audio selftest: " + ("PASS" if ok else "FAIL"))
    return ok, "\n".join(report) + "\n"


def _meter_mic(
    source: AudioSource, name: str, periods: int, out: Callable[[str], None] | None
) -> tuple[bool, str]:
    levels: list[float] = []
    any_signal = False
    try:
        for i in range(periods):
            pcm = source.read()
            any_signal = any_signal or bool(pcm.any())
            levels.append(dbfs(pcm))
            if out is not None and (i + 1) % (FRAMES_PER_S // 2) == 0:
                window = levels[-(FRAMES_PER_S // 2) :]
                out(f"mic {_meter(max(window))}")
    except AudioError as exc:
        return False, f"mic {name}: FAILED after {len(levels)} periods: {exc}"
    finally:
        source.close()
    seconds = len(levels) / FRAMES_PER_S
    if not any_signal:
        return (
            False,
            f"mic {name}: only exact zeros for {seconds:.1f} s: FAILED (muted or unplugged?)",
        )
    mean = sum(levels) / len(levels)
    return True, (
        f"mic {name}: level average {mean:.1f} dBFS, peak {max(levels):.1f} dBFS "
        f"over {seconds:.1f} s: ok"
    )
