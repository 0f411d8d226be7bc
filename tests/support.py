"""Test doubles of the agent's own interfaces, shared by the link test suites.

A :class:`RecordingMixer` stands in for :class:`agent.audio.mixer.Mixer` where a test
is about what a link delivers (formats, exact samples), not about mixing.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from agent.metrics import Metrics
from agent.pcm import Pcm
from agent.status import StatusBoard


@dataclass
class RecordedSource:
    """One add_source() call: the format asked for and everything pushed into it."""

    name: str
    rate: int
    channels: int
    chunks: list[Pcm] = field(default_factory=list)
    arrivals: list[float | None] = field(default_factory=list)
    removed: bool = False

    def push(self, pcm: Pcm, t_arrival: float | None = None) -> None:
        assert pcm.dtype == np.int16
        assert len(pcm) % self.channels == 0, "a push must hold whole sample frames"
        self.chunks.append(pcm.copy())
        self.arrivals.append(t_arrival)

    def pcm(self) -> Pcm:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


@dataclass
class RecordingMixer:
    """A SourceFactory that keeps every source it made, in order."""

    sources: list[RecordedSource] = field(default_factory=list)

    def add_source(self, name: str, rate: int, channels: int = 1) -> RecordedSource:
        for s in self.sources:
            if s.name == name:
                s.removed = True
        src = RecordedSource(name, rate, channels)
        self.sources.append(src)
        return src

    def remove_source(self, name: str) -> None:
        for s in self.sources:
            if s.name == name:
                s.removed = True

    def formats(self) -> list[tuple[str, int, int]]:
        return [(s.name, s.rate, s.channels) for s in self.sources]

    def live(self) -> list[RecordedSource]:
        return [s for s in self.sources if not s.removed]


async def wait_until(pred: Callable[[], Any], within_s: float = 5.0, what: str = "") -> None:
    """Poll ``pred`` until true; fail with ``what`` after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what or pred}")
        await asyncio.sleep(0.01)


class LinkHarnessBase:
    """What every link-test harness shares: stopping the link task and reading the
    link's counters and status. Subclasses are dataclasses with ``task``, ``metrics``
    and ``status`` fields and set ``link_name``."""

    link_name: ClassVar[str]
    task: asyncio.Task[None] | None
    metrics: Metrics
    status: StatusBoard

    async def stop(self) -> float:
        """Cancel the link (as the app does on SIGTERM); return how long it took."""
        assert self.task is not None
        t0 = time.monotonic()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return time.monotonic() - t0

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.total(name, link=self.link_name, **labels)

    def state(self) -> str:
        part = self.status.links.get(self.link_name)
        return "" if part is None else part.state.value

    def detail(self) -> str:
        part = self.status.links.get(self.link_name)
        return "" if part is None else part.detail


def toml_text(raw: dict[str, dict[str, Any]]) -> str:
    """``[section] key = value`` TOML for a config dict (strings, numbers, booleans, lists
    of strings: what agent.toml holds), so a test can write the file a person would."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML for {v!r}")

    lines: list[str] = []
    for section, table in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value(v)}" for key, v in table.items()]
    return "\n".join(lines) + "\n"


JOURNAL_PROBE = """\
import os, socket, logging, subprocess, sys
subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', '/run'], check=True)
os.makedirs('/run/systemd/journal')
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('/run/systemd/journal/socket')
from agent.service import setup_logging
setup_logging('INFO', env={'INVOCATION_ID': 'x'})
"""


def journal_datagram(tmp_path: Path, log_code: str) -> bytes:
    """Run ``log_code`` (Python that logs one record) with the agent's logging set up as
    under systemd, against a journald socket bound in a private mount namespace
    (docs/testing.md); return the one native-protocol datagram the agent sent.
    Skips where ``unshare --mount`` is not permitted."""
    import pytest

    from tests.conftest import subprocess_env

    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --mount not permitted here")
    script = tmp_path / "journal_probe.py"
    script.write_text(
        JOURNAL_PROBE + log_code + "\ns.settimeout(5)\nsys.stdout.buffer.write(s.recv(65536))\n"
    )
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, str(script)],
        capture_output=True,
        env=subprocess_env(),
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def run_only_when_selected(
    config: pytest.Config, items: list[pytest.Item], marker: str, how: str
) -> None:
    """Tests marked ``marker`` run only when ``-m`` selects it (``-m vm``); a plain
    ``pytest`` skips them at collection, saying ``how`` to run them."""
    expr = config.option.markexpr or ""
    if re.search(rf"\b{marker}\b", expr) and not re.search(rf"\bnot\s+{marker}\b", expr):
        return
    skip = pytest.mark.skip(reason=how)
    for item in items:
        if item.get_closest_marker(marker):
            item.add_marker(skip)
