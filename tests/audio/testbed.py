"""Real alsa-lib without sound hardware (docs/testing.md), shared by tests/audio and tests/hw.

alsa-lib caches its configuration per process and pytest runs every test in one
process, so the devices live in ONE session-wide config file whose device paths
are fixed; each test rewrites the files behind them (``write_mic``) before it
opens a PCM. Measured on this machine (alsa-lib 1.2.8): ``snd_pcm_open`` re-reads
``$ALSA_CONFIG_PATH`` and reloads when the variable or a file's mtime changes, so
the ``alsa`` fixture re-asserts the variable for every test in case another
test's fixture pointed it elsewhere.

Devices:

- ``testmic``: capture, returns ``mic.raw`` bit-exact, then zeros -- or garbage
  at some rates, so tests always provide enough input;
- ``testspk``: playback, written bit-exact to ``spk.raw`` (truncated at open);
- ``gonemic``: capture from ``gone/mic.raw``; opening fails while ``gone/`` does
  not exist (a "missing device" that can appear);
- ``pacedmic``: ``mic.raw`` paced at 20 ms per period by a private PulseAudio
  null source (only while the ``pulse`` fixture runs the daemon).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

SYSTEM_CONF = "/usr/share/alsa/alsa.conf"


@dataclass(frozen=True)
class AlsaTestbed:
    directory: Path
    conf: Path
    # the private PulseAudio daemon's pid ("pid"), under the pulse fixture
    pulse_daemon: dict[str, int] = field(default_factory=dict)

    @property
    def mic(self) -> Path:
        return self.directory / "mic.raw"

    @property
    def spk(self) -> Path:
        return self.directory / "spk.raw"

    @property
    def gone_dir(self) -> Path:
        return self.directory / "gone"

    @property
    def pulse_socket(self) -> Path:
        return self.directory / "pa" / "native"

    @property
    def config_path(self) -> str:
        return f"{SYSTEM_CONF}:{self.conf}"

    def write_mic(self, samples: npt.NDArray[np.int16]) -> None:
        """What ``testmic`` / ``pacedmic`` will capture (raw S16_LE)."""
        self.mic.write_bytes(np.asarray(samples, dtype="<i2").tobytes())

    def read_spk(self) -> npt.NDArray[np.int16]:
        """Everything played to ``testspk`` since it was last opened."""
        return np.frombuffer(self.spk.read_bytes(), dtype="<i2").astype(np.int16)


def make_testbed(directory: Path) -> AlsaTestbed:
    conf = directory / "field-agent-test.conf"
    tb = AlsaTestbed(directory, conf)
    tb.mic.touch()
    (directory / "pa").mkdir(mode=0o700, exist_ok=True)
    conf.write_text(
        f'pcm.testmic {{ type file slave.pcm {{ type null }} file "/dev/null" '
        f'infile "{tb.mic}" format "raw" }}\n'
        f'pcm.testspk {{ type file slave.pcm {{ type null }} file "{tb.spk}" '
        f'format "raw" truncate true }}\n'
        f'pcm.gonemic {{ type file slave.pcm {{ type null }} file "/dev/null" '
        f'infile "{tb.gone_dir / "mic.raw"}" format "raw" }}\n'
        f'pcm.pasrc {{ type pulse server "unix:{tb.pulse_socket}" device "nullsrc" }}\n'
        f'pcm.pacedmic {{ type file slave.pcm "pasrc" file "/dev/null" '
        f'infile "{tb.mic}" format "raw" }}\n'
    )
    return tb


@pytest.fixture(scope="session")
def alsa_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlsaTestbed]:
    """The session's ALSA config (see the module docstring)."""
    tb = make_testbed(tmp_path_factory.mktemp("alsa"))
    old = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = tb.config_path
    yield tb
    if old is None:
        os.environ.pop("ALSA_CONFIG_PATH", None)
    else:
        os.environ["ALSA_CONFIG_PATH"] = old


@pytest.fixture
def alsa(alsa_testbed: AlsaTestbed, monkeypatch: pytest.MonkeyPatch) -> AlsaTestbed:
    """The testbed, with ``ALSA_CONFIG_PATH`` pointing at it for this test."""
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa_testbed.config_path)
    shutil.rmtree(alsa_testbed.gone_dir, ignore_errors=True)
    alsa_testbed.write_mic(np.zeros(0, np.int16))
    return alsa_testbed


@pytest.fixture
def pulse(alsa: AlsaTestbed, tmp_path: Path) -> Iterator[AlsaTestbed]:
    """A private PulseAudio daemon (own HOME and XDG_RUNTIME_DIR) behind ``pacedmic``."""
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio is not installed (apt install pulseaudio libasound2-plugins)")
    home, runtime = tmp_path / "pa-home", tmp_path / "pa-run"
    for d in (home, runtime):
        d.mkdir(mode=0o700)
    alsa.pulse_socket.unlink(missing_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    proc = subprocess.Popen(
        [
            "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1",
            "-L", "module-null-sink sink_name=nullsink rate=8000 channels=1 format=s16le",
            "-L", "module-null-source source_name=nullsrc rate=8000 channels=1 format=s16le",
            "-L", f"module-native-protocol-unix auth-anonymous=1 socket={alsa.pulse_socket}",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10.0
        while not alsa.pulse_socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
                pytest.fail(f"pulseaudio did not start: {err}")
            time.sleep(0.05)
        alsa.pulse_daemon["pid"] = proc.pid
        yield alsa
    finally:
        alsa.pulse_daemon.clear()
        proc.terminate()
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
