"""The state file after power cuts, bad tools and bad luck: `field-agent run` reaches
READY whatever state.json holds, says so once, and writes it atomically."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.state import MAX_BYTES, StateStore
from tests.conftest import NotifyRecorder, PulseDevices, agent_cmd, subprocess_env

AUDIO_ONLY = """
[device]
id = "dev_state"
[audio]
capture_device = "pacedmic"
playback_device = "paspk"
volume = 0.6
[videosdk]
enabled = false
[metrics]
listen = ""
"""


def _write(content: str | bytes) -> Callable[[Path], None]:
    def put(p: Path) -> None:
        p.write_bytes(content.encode() if isinstance(content, str) else content)

    return put


BAD: dict[str, Callable[[Path], None]] = {
    "garbage": _write(b"\x00\xff\xfe garbage \x1b[2J"),
    "empty": _write(""),
    "truncated": _write('{"volume": 0.'),
    "deeply nested": _write("[" * 60000),
    "huge": _write('{"volume": 0.5, "pad": "' + "x" * (MAX_BYTES * 3) + '"}'),
    "not an object": _write("[0.5]"),
    "volume true": _write('{"volume": true}'),
    "volume NaN": _write('{"volume": NaN}'),
    "volume negative": _write('{"volume": -1}'),
    "commands wrong": _write('{"volume": 0.3, "commands": {"high_water": "x", "nonces": 1}}'),
    "a directory": lambda p: p.mkdir(),
    "a fifo": lambda p: os.mkfifo(p),
}


def test_any_state_file_gives_one_warning_and_the_agent_runs(
    tmp_path: Path, pulse: PulseDevices, notify_socket: NotifyRecorder
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(AUDIO_ONLY)
    for i, (name, make) in enumerate(BAD.items()):
        state_dir = tmp_path / f"state{i}"
        state_dir.mkdir()
        make(state_dir / "state.json")
        (state_dir / ".state.json.4242.tmp").write_text('{"volume": 0.1')  # a crash mid-write
        mark = len(notify_socket.lines())
        proc = subprocess.Popen(
            agent_cmd("run", "--config", str(cfg), "--credentials", str(tmp_path)),
            env=subprocess_env(
                **pulse.env(), **notify_socket.env(), STATE_DIRECTORY=str(state_dir)
            ),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            notify_socket.wait_for("READY=1", timeout=20, after=mark)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=5)
        finally:
            proc.kill()
        assert proc.returncode == 0, (name, out)
        warnings = [line for line in out.splitlines() if "state file" in line]
        assert len(warnings) == 1, (name, out)
        assert str(state_dir / "state.json") in warnings[0] and "config defaults" in warnings[0]
        assert "Traceback" not in out, (name, out)
        assert not list(state_dir.glob(".state.json.*.tmp")), name  # stale temp file removed


def test_one_bad_key_keeps_the_good_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "state.json").write_text('{"volume": 0.3, "commands": 7, "future": 1}')
    doc = StateStore(tmp_path).load()
    assert doc == {"volume": 0.3}
    assert len(caplog.records) == 1 and "commands must be an object" in caplog.text
    assert str(tmp_path / "state.json") in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_state_file_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = tmp_path / "state.json"
    p.write_text('{"volume": 0.3}')
    p.chmod(0)
    assert StateStore(tmp_path).load() == {}
    assert "Permission denied" in caplog.text


async def test_writes_are_coalesced_and_atomic(tmp_path: Path) -> None:
    store = StateStore(tmp_path, interval_s=0.3)
    store.load()
    for i in range(300):  # a burst of volume commands
        store.save(volume=i / 300)
    assert store.writes == 1  # the first at once, the rest wait for the interval
    await asyncio.sleep(0.5)
    assert store.writes == 2  # one more carried the last value
    assert json.loads((tmp_path / "state.json").read_text()) == {"volume": 299 / 300}
    store.save(volume=0.5)
    store.flush()  # a clean stop writes what is pending
    assert json.loads((tmp_path / "state.json").read_text()) == {"volume": 0.5}
    assert os.listdir(tmp_path) == ["state.json"]
    assert os.stat(tmp_path / "state.json").st_mode & 0o777 == 0o600


def test_a_failed_write_leaves_no_temp_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").mkdir()  # rename over a directory fails
    store = StateStore(tmp_path)
    store.load()
    store.save(volume=0.2)
    assert "cannot save state" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
