"""A private PulseAudio daemon with null devices: real-time paced ALSA PCMs without a
sound card (docs/testing.md), for tests and benchmarks.

The daemon runs with its own HOME and XDG_RUNTIME_DIR under ``directory`` and a unix
socket there; an ALSA config file names its devices (point ``ALSA_CONFIG_PATH`` at it,
see :meth:`PulseRig.env`):

- ``pacedmic``: capture; returns the raw S16_LE samples of ``mic`` (a file; zeros
  after its end), paced by the null source's clock (20 ms periods in real time);
- ``pasrc``: the null source itself (zeros, paced);
- ``paspk``: playback into the null sink, consumed in real time;
- ``pamon``: capture from the null sink's monitor: whatever any client plays into
  ``paspk`` comes back, mixed, with a real device-clocked delay (an acoustic loop
  for the echo canceller's tests, :mod:`agent.sandbox.acoustic`).

Each :meth:`PulseRig.add_mic` adds another ``pacedmic``-like device reading its own
file (two processes can each have their own mic). ::

    with PulseRig(tmp) as rig:
        rig.mic.write_bytes(samples.astype("<i2").tobytes())
        subprocess.run([...], env={**os.environ, **rig.env()})
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"


class PulseUnavailable(RuntimeError):
    """pulseaudio is not installed, or its daemon did not start."""


class PulseRig:
    """``with PulseRig(directory) as rig:`` a running daemon and its ALSA devices."""

    def __init__(
        self,
        directory: Path,
        *,
        source_rate: int = 8000,
        sink_rate: int = 48000,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.directory = directory
        self.source_rate = source_rate
        self.sink_rate = sink_rate
        self.start_timeout_s = start_timeout_s
        self.home = directory / "pa-home"
        self.runtime = directory / "pa-run"
        self.socket = directory / "pa" / "native"
        self.conf = directory / "alsa-pulse.conf"
        self.mic = directory / "mic.raw"
        self._mics: dict[str, Path] = {"pacedmic": self.mic}
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("pulseaudio") is not None

    def env(self) -> dict[str, str]:
        """Environment for a process that opens the devices."""
        return {
            "ALSA_CONFIG_PATH": f"{SYSTEM_ALSA_CONF}:{self.conf}",
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
        }

    def add_mic(self, name: str, path: Path | None = None) -> Path:
        """Another paced capture device ``name`` reading ``path`` (default ``<name>.raw``)."""
        path = path or self.directory / f"{name}.raw"
        path.touch()
        self._mics[name] = path
        self._write_conf()
        return path

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        if not self.available():
            raise PulseUnavailable(
                "pulseaudio not installed (apt install pulseaudio libasound2-plugins)"
            )
        for d in (self.home, self.runtime, self.socket.parent):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.mic.touch()
        self._write_conf()
        env = {**os.environ, "HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.runtime)}
        src, sink = self.source_rate, self.sink_rate
        proc = subprocess.Popen(
            [
                "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                "-L", f"module-null-sink sink_name=nullsink rate={sink} channels=1 format=s16le",
                "-L", f"module-null-source source_name=nullsrc rate={src} channels=1 format=s16le",
                "-L", f"module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._proc = proc
        deadline = time.monotonic() + self.start_timeout_s
        while not self.socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise PulseUnavailable(f"pulseaudio did not start: {err.strip()}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> PulseRig:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _write_conf(self) -> None:
        lines = [
            f'pcm.pasrc {{ type pulse server "unix:{self.socket}" device "nullsrc" }}',
            f'pcm.paspk {{ type pulse server "unix:{self.socket}" device "nullsink" }}',
            f'pcm.pamon {{ type pulse server "unix:{self.socket}" device "nullsink.monitor" }}',
        ]
        lines += [
            f'pcm.{name} {{ type file slave.pcm "pasrc" file "/dev/null" '
            f'infile "{path}" format "raw" }}'
            for name, path in self._mics.items()
        ]
        self.conf.write_text("\n".join(lines) + "\n")
