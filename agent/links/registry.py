"""Every link the agent knows, and what each is built from.

A link is one module in ``agent/links/`` that exports ``create(cfg, deps) -> Link``,
one line in :data:`REGISTRY`, and one config section of the same name with an
``enabled`` key. :func:`build` makes the enabled ones; the agent runs each ``run()``
under its supervision. Everything a link needs from the agent comes in
:class:`LinkDeps`; timings a test or a benchmark shortens come in
:class:`LinkPolicies` (``Agent(..., link_policies=...)``), never by patching modules.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from agent.backoff import BackoffPolicy, Reconnector
from agent.channels import Channels
from agent.config import Config, DeviceConfig, SecurityConfig
from agent.links.runner import Runner
from agent.metrics import Metrics
from agent.pcm import Frame, SourceFactory
from agent.proto.videosdk import TopicMessage
from agent.secrets import Credentials
from agent.service import Heartbeat
from agent.status import StatusBoard


class Link(Protocol):
    """What the agent runs: a name (status, metrics, logs) and ``run()`` until cancelled,
    on its :class:`~agent.links.runner.Runner` (the agent tells it of network changes)."""

    name: str
    runner: Runner

    async def run(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LinkPolicies:
    """Timings of every link; None keeps the link's production default."""

    backoff: BackoffPolicy | None = None  # every link's reconnect policy
    app_ping_interval_s: float | None = None  # Orgo / FastRTC application ping (s)
    app_pong_timeout_s: float | None = None  # ... its pong deadline (s)
    ws_ping_interval_s: float | None = None  # VideoSDK WebSocket ping (s)
    ws_ping_timeout_s: float | None = None  # ... its pong deadline (s)
    refusal_wait_s: float | None = None  # FastRTC: least wait after a busy app's refusal (s)

    def backoff_for(self, default: BackoffPolicy) -> BackoffPolicy:
        return self.backoff or default


@dataclass(frozen=True, slots=True)
class LinkDeps:
    """The agent's parts a link may use; built once per generation."""

    credentials: Credentials
    device: DeviceConfig
    security: SecurityConfig
    http: httpx.AsyncClient
    mixer: SourceFactory  # downlink: one mixer source per stream
    status: StatusBoard
    metrics: Metrics
    uplink: Callable[[str], asyncio.Queue[Frame]]  # the mic's frames for a link (Fanout)
    heartbeat: Callable[[str], Heartbeat]  # a registered watchdog heartbeat for a link
    on_command: Callable[[TopicMessage], None] | None = None  # VideoSDK command topic
    connect: Callable[..., Any] | None = None  # websockets connect() (tests: a proxy)
    channels: Channels | None = None  # the VideoSDK rooms and the current one (agent.channels)
    policies: LinkPolicies = field(default_factory=LinkPolicies)

    def common(self, name: str) -> dict[str, Any]:
        """The keyword arguments every link constructor takes, for link ``name``."""
        return {
            "mixer": self.mixer,
            "status": self.status,
            "metrics": self.metrics,
            "heartbeat": self.heartbeat(name),
        }

    def reconnector(self, default: BackoffPolicy) -> Reconnector:
        """The link's Reconnector: the policies' backoff, else the link's ``default``."""
        return Reconnector(self.policies.backoff_for(default))


Factory = Callable[[Config, LinkDeps], Link]

# (config section = link name, module exporting `create`), in start order.
REGISTRY: tuple[tuple[str, str], ...] = (
    ("videosdk", "agent.links.videosdk"),
    ("orgo", "agent.links.orgo"),
    ("pbx", "agent.links.pbx"),
    ("fastrtc", "agent.links.fastrtc"),
)


def enabled(cfg: Config) -> list[str]:
    """The names of the links ``cfg`` enables, in start order."""
    return [name for name, _ in REGISTRY if getattr(cfg, name).enabled]


def factory(name: str) -> Factory:
    """The ``create`` of link ``name`` (its module is imported only when used)."""
    module = importlib.import_module(dict(REGISTRY)[name])
    create: Factory = module.create
    return create


def build(cfg: Config, deps: LinkDeps) -> dict[str, Link]:
    """Every enabled link, built."""
    return {name: factory(name)(cfg, deps) for name in enabled(cfg)}
