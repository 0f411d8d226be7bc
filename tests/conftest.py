"""Fixtures shared by every test tier: a recording sd_notify socket, a per-test ALSA
config with file-plugin devices (docs/testing.md), and gpiozero's MockFactory."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class NotifyRecorder:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    path: Path
    messages: list[tuple[float, str]] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._running = True
        self._thread.start()

    def _loop(self) -> None:
        assert self._sock is not None
        while self._running:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                for line in data.decode().splitlines():
                    self.messages.append((time.monotonic(), line))
                self._cond.notify_all()

    def stop(self) -> None:
        self._running = False
        if self._thread:
            self._thread.join(1)
        if self._sock:
            self._sock.close()

    def lines(self) -> list[str]:
        with self._cond:
            return [m for _, m in self.messages]

    def wait_for(self, prefix: str, timeout: float = 10.0, *, after: int = 0) -> str:
        """Wait for a message starting with ``prefix`` (among messages from index ``after``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _, m in self.messages[after:]:
                    if m.startswith(prefix):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {prefix!r} within {timeout}s; got {self.lines()}")
                self._cond.wait(left)

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifyRecorder]:
    """A recording NOTIFY_SOCKET; use ``rec.env()`` for a subprocess."""
    rec = NotifyRecorder(tmp_path / "notify.sock")
    rec.start()
    yield rec
    rec.stop()


@dataclass
class AlsaFiles:
    """File-plugin ALSA devices: ``testmic`` reads ``mic``, ``testspk`` writes ``spk``."""

    conf: Path
    mic: Path
    spk: Path

    def env(self) -> dict[str, str]:
        return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.conf}"}


def write_alsa_conf(directory: Path) -> AlsaFiles:
    mic, spk, conf = directory / "mic.raw", directory / "spk.raw", directory / "alsa-test.conf"
    mic.touch()
    conf.write_text(
        f'pcm.testmic {{ type file slave.pcm {{ type null }} file "/dev/null" '
        f'infile "{mic}" format "raw" }}\n'
        f'pcm.testspk {{ type file slave.pcm {{ type null }} file "{spk}" '
        f'format "raw" truncate true }}\n'
    )
    return AlsaFiles(conf, mic, spk)


@pytest.fixture
def alsa_files(tmp_path: Path) -> AlsaFiles:
    """An ALSA config for a *subprocess* (alsa-lib reads its config once per process)."""
    return write_alsa_conf(tmp_path)


@pytest.fixture
def gpio_mock(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """gpiozero's MockFactory (with PWM-capable pins), reset after the test."""
    monkeypatch.setenv("GPIOZERO_MOCK_PIN_CLASS", "mockpwmpin")
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=MockPWMPin)
    old = Device.pin_factory
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = old


def agent_cmd(*args: str) -> list[str]:
    """The command line that runs the agent's CLI with this interpreter."""
    return [sys.executable, "-m", "agent", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "INVOCATION_ID",
            "JOURNAL_STREAM",
            "CREDENTIALS_DIRECTORY",
        )
    }
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@dataclass
class PulseDevices:
    """A private PulseAudio daemon with a null source and sink: real-time pacing
    for ALSA (docs/testing.md). ``pacedmic`` reads ``mic`` (then zeros) every 20 ms;
    ``paspk`` plays in real time into the null sink."""

    conf: Path
    mic: Path
    env_extra: dict[str, str]

    def env(self) -> dict[str, str]:
        return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.conf}", **self.env_extra}


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[PulseDevices]:
    from agent.sandbox.pulse import PulseRig, PulseUnavailable

    if not PulseRig.available():
        pytest.skip("pulseaudio not installed (apt install pulseaudio libasound2-plugins)")
    rig = PulseRig(tmp_path)
    try:
        rig.start()
    except PulseUnavailable as e:
        pytest.fail(str(e))
    env = rig.env()
    env.pop("ALSA_CONFIG_PATH")
    yield PulseDevices(rig.conf, rig.mic, env)
    rig.stop()


@pytest.fixture(autouse=True)
def _restore_agent_logging() -> Iterator[None]:
    """setup_logging() reconfigures the ``agent`` logger; put it back after each test
    so later tests' caplog still sees agent records."""
    import logging

    names = ("agent", "websockets", "httpx", "httpcore")
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate,
                 list(logging.getLogger(n).handlers)) for n in names}  # fmt: skip
    yield
    for n, (level, propagate, handlers) in saved.items():
        lg = logging.getLogger(n)
        lg.setLevel(level)
        lg.propagate = propagate
        lg.handlers[:] = handlers


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog at DEBUG: for tests that scan every record for secrets."""
    import logging

    caplog.set_level(logging.DEBUG)
    return caplog
