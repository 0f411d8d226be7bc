"""What a reload changes: the pure half of applying a new config (no I/O, no asyncio).

:func:`config_changes` lists every key whose value differs; :func:`plan` decides, from
those changes and the state of the running parts, which parts stop, which start, and
whether the mixer is rebuilt; everything else is applied in place by
:meth:`agent.generation.Generation.apply`, which carries the plan out. The table of
what each change does is in docs/architecture.md ("Reload").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent import config as config_mod
from agent.config import Config
from agent.links.registry import REGISTRY

LINKS = tuple(name for name, _module in REGISTRY)  # link names = their config sections

# What a reload restarts (everything else is applied in place, or at the next start):
# the config sections each link is built from: a change there restarts that link only
# (its own, [security] for every link, and what else it reads: VideoSDK joins as [device])
ALSO_BUILT_FROM: dict[str, frozenset[str]] = {"videosdk": frozenset({"device"})}
LINK_SECTIONS: dict[str, frozenset[str]] = {
    name: frozenset({name, "security"}) | ALSO_BUILT_FROM.get(name, frozenset()) for name in LINKS
}
# credentials a link reads once, when it starts (the others read theirs at each attempt)
READ_AT_START: dict[str, tuple[str, ...]] = {"pbx": ("pbx-secret",)}
# reopen the mic (the hands-free keys rebuild its processing stage)
CAPTURE_KEYS = frozenset(
    {
        "audio.capture_device",
        "audio.capture_rate",
        "audio.echo_cancel",
        "audio.noise_suppression",
        "audio.auto_gain",
    }
)
PLAYBACK_KEYS = frozenset({"audio.playback_device"})  # reopen the speaker
MIXER_KEYS = frozenset({"audio.playback_rate"})  # new mixer: speaker + every link restart
AT_NEXT_START = frozenset({"metrics.listen"})  # bound once, at start

Change = tuple[str, Any, Any]  # (section.key, old value, new value)


@dataclass(frozen=True)
class Plan:
    """What a reload does to the running parts (``capture``, ``playback``, ``link-<name>``)."""

    changes: tuple[Change, ...]
    stop: tuple[str, ...] = ()  # parts to stop first (together)
    start: tuple[str, ...] = ()  # parts to start after, in this order
    new_mixer: bool = False  # build a new mixer between the two

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(k for k, _, _ in self.changes)

    @property
    def restarted(self) -> list[str]:
        return sorted({*self.stop, *self.start})


def plan(
    old: Config,
    new: Config,
    *,
    running: Collection[str],
    failed: Collection[str] = (),
    rotated: Collection[str] = (),
) -> Plan:
    """The plan for going from ``old`` to ``new``.

    ``running``: the parts now running; ``failed``: those whose build failed (built
    again by any good reload); ``rotated``: links whose start-time credentials changed.
    """
    changes = config_changes(old, new)
    keys = {k for k, _, _ in changes}
    sections = {k.split(".")[0] for k in keys}
    new_mixer = bool(keys & MIXER_KEYS)
    stop: list[str] = []
    start: list[str] = []

    def restart(part: str) -> None:
        if part in running:
            stop.append(part)
        start.append(part)

    if keys & CAPTURE_KEYS or "capture" in failed:
        restart("capture")
    if keys & PLAYBACK_KEYS or new_mixer or "playback" in failed:
        restart("playback")
    for name in LINKS:
        part = f"link-{name}"
        again = (
            new_mixer or part in failed or name in rotated or bool(sections & LINK_SECTIONS[name])
        )
        is_running, wanted = part in running, getattr(new, name).enabled
        if is_running and (again or not wanted):
            stop.append(part)
        if wanted and (again or not is_running):
            start.append(part)
    return Plan(tuple(changes), tuple(stop), tuple(start), new_mixer)


def config_changes(old: Config, new: Config) -> list[Change]:
    """Every key whose value differs, in the order of the config file's sections."""
    out: list[Change] = []
    for section in config_mod.SECTIONS:
        a, b = getattr(old, section), getattr(new, section)
        if a != b:
            for f in dataclasses.fields(a):
                va, vb = getattr(a, f.name), getattr(b, f.name)
                if va != vb:
                    out.append((f"{section}.{f.name}", va, vb))
    return out


def show_value(v: Any) -> str:
    """A config value as the file spells it; a URL without its query or user info (a
    FastRTC app's URL may carry a token: config holds no secret, but a URL might)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "(unset)"
    if isinstance(v, tuple):
        return "[" + ", ".join(show_value(x) for x in v) + "]"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):  # a table: videosdk.rooms
        pairs = [f"{f.name} = {show_value(getattr(v, f.name))}" for f in dataclasses.fields(v)]
        return "{ " + ", ".join(pairs) + " }"
    if isinstance(v, str):
        if "://" in v:
            parts = urlsplit(v)
            host = parts.netloc.rpartition("@")[2]
            v = urlunsplit((parts.scheme, host, parts.path, "..." if parts.query else "", ""))
        return f'"{v}"'
    return repr(v)


def only_link(cfg: Config, name: str) -> Config:
    """``cfg`` with every link section but ``name`` disabled."""
    sections = {n: dataclasses.replace(getattr(cfg, n), enabled=n == name) for n in LINKS}
    return dataclasses.replace(cfg, **sections)
