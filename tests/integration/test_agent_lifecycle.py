"""The agent's generation (agent.app.Generation): what is built under supervision, when
READY=1 goes out, and what a part that cannot be built does to the rest. The whole agent
runs against the loopback fakes (tests/reliability/fullagent.py) with a real
NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent, Hardware
from agent.config import Config
from agent.controls import StateStore
from agent.hw.sim import RecordingSink, ToneSource
from agent.metrics import Metrics
from agent.secrets import Credentials
from agent.service import Notifier
from tests.conftest import NotifyRecorder
from tests.reliability.fullagent import full_agent
from tests.support import wait_until

pytestmark = pytest.mark.slow


class SlowMic(ToneSource):
    """A mic whose first open takes ``delay_s`` (a USB card still enumerating)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(8000, 1000.0, -20.0, paced=True)
        self.delay_s = delay_s
        self.opened_at: float | None = None
        self._first = threading.Event()

    def open(self) -> None:
        if not self._first.is_set():
            self._first.set()
            time.sleep(self.delay_s)
        super().open()
        if self.opened_at is None:
            self.opened_at = time.monotonic()


def notify_times(rec: NotifyRecorder, line: str) -> list[float]:
    return [t for t, m in list(rec.messages) if m == line]


@pytest.fixture
def notifier(notify_socket: NotifyRecorder, monkeypatch: pytest.MonkeyPatch) -> Notifier:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))  # systemd.daemon reads it
    return Notifier(env=notify_socket.env())


async def test_ready_is_sent_once_the_mic_has_opened(
    tmp_path: Path, notify_socket: NotifyRecorder, notifier: Notifier
) -> None:
    mic = SlowMic(0.8)
    async with full_agent(tmp_path, mic=mic, links=("videosdk",), notifier=notifier) as rig:
        await asyncio.to_thread(notify_socket.wait_for, "READY=1", 5.0)
        ready = notify_times(notify_socket, "READY=1")
        assert len(ready) == 1
        assert mic.opened_at is not None and ready[0] >= mic.opened_at
        assert rig.agent.generation is not None and rig.agent.generation.ready


async def test_a_missing_mic_does_not_hold_back_ready(
    tmp_path: Path, notify_socket: NotifyRecorder, notifier: Notifier
) -> None:
    """Retrying counts as ready: a USB mic that is not plugged in must not keep systemd
    waiting (it would kill the agent after TimeoutStartSec); the status says why."""
    mic = ToneSource(8000, 1000.0, -20.0, paced=True)
    mic.unplug()
    async with full_agent(tmp_path, mic=mic, links=("videosdk",), notifier=notifier) as rig:
        await asyncio.to_thread(notify_socket.wait_for, "READY=1", 5.0)
        assert rig.device_state("mic") == "attention"
        mic.plug()
        await wait_until(lambda: rig.device_state("mic") == "up", 5, "the mic back")
        n = rig.vsdk.frames_total
        await rig.vsdk.wait_for(lambda: rig.vsdk.frames_total > n + 10, 3, "the mic heard")


class BuggyMic(ToneSource):
    """A mic driver with a bug: one read raises something that is not an AudioError."""

    def __init__(self) -> None:
        super().__init__(8000, 1000.0, -20.0, paced=True)
        self.reads = 0

    def read(self) -> Any:
        self.reads += 1
        if self.reads == 50:
            raise RuntimeError("driver bug")
        return super().read()


async def test_a_part_that_crashes_is_restarted_and_the_rest_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mic = BuggyMic()
    async with full_agent(tmp_path, mic=mic, links=("videosdk",)) as rig:
        session = rig.vsdk.started_sessions[-1] if rig.vsdk.started_sessions else None
        await wait_until(
            lambda: rig.agent.metrics.total("task_crashes_total", task="capture") == 1, 5, "crash"
        )
        n = rig.vsdk.frames_total
        await rig.vsdk.wait_for(lambda: rig.vsdk.frames_total > n + 25, 5, "the mic again")
        assert mic.reads > 60
        assert rig.agent.status.last_error == "capture failed unexpectedly (see journal)"
        assert any(
            r.getMessage().startswith("capture failed unexpectedly; restarting it in")
            for r in caplog.records
        )
        assert session is None or rig.vsdk.started_sessions[0] is session
        assert len(rig.vsdk.sessions) == 1 and rig.link_state("videosdk") == "up"


async def test_every_task_of_the_agent_is_named_and_owned(tmp_path: Path) -> None:
    async with full_agent(tmp_path, links=("videosdk", "orgo")) as rig:
        gen = rig.agent.generation
        assert gen is not None
        assert sorted(gen.parts) == ["capture", "link-orgo", "link-videosdk", "playback"]
        for name, part in gen.parts.items():
            assert part.task is not None and part.task.get_name() == name
        for task in asyncio.all_tasks():
            code = getattr(task.get_coro(), "cr_code", None)
            if code is not None and code.co_filename.endswith("agent/app.py"):
                assert not re.fullmatch(r"Task-\d+", task.get_name()), task


async def test_a_mic_that_cannot_be_built_needs_attention_and_the_room_plays_on(
    tmp_path: Path,
    notify_socket: NotifyRecorder,
    notifier: Notifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_mic(_cfg: Any, _m: Metrics) -> Any:
        raise ValueError("no driver for this mic")

    speaker = RecordingSink(48000, paced=True)
    hw = Hardware(mic=broken_mic, speaker=lambda _c, _m: speaker)
    caplog.set_level(logging.INFO, logger="agent")
    async with full_agent(
        tmp_path, hardware=hw, links=("videosdk",), notifier=notifier, wait_up=False
    ) as rig:
        await wait_until(lambda: rig.device_state("mic") == "attention", 5, "mic attention")
        await rig.vsdk.wait_for(lambda: rig.link_state("videosdk") == "up", 10, "link up")
        await wait_until(lambda: speaker.frames_written > 48000, 5, "a second played")
        assert "cannot start: no driver for this mic" in rig.agent.status.summary()
        assert "no driver for this mic" in rig.agent.status.last_error
        await asyncio.sleep(1.0)  # a retry or two (backoff from 0.5 s): still one line
        assert "READY=1" not in notify_socket.lines(), "READY with a part that failed to build"
        lines = [r for r in caplog.records if "cannot start" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.ERROR
        assert lines[0].getMessage().startswith("capture: cannot start: no driver for this mic")
        assert "Traceback" not in caplog.text
        assert rig.agent.metrics.total("part_build_failures_total") >= 2  # retried
        assert await rig.stop() == 0


async def test_a_generation_that_cannot_be_built_keeps_the_agent_up(
    tmp_path: Path,
    notify_socket: NotifyRecorder,
    notifier: Notifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mixer the engine refuses (a rate validation would have caught: here the config
    is forged past it) is one log line and ATTENTION, not a crashed agent, and no READY."""
    cfg = Config()
    cfg = dataclasses.replace(
        cfg,
        device=dataclasses.replace(cfg.device, id="dev_x"),
        audio=dataclasses.replace(cfg.audio, playback_rate=44101),
        videosdk=dataclasses.replace(cfg.videosdk, enabled=False),
        metrics=dataclasses.replace(cfg.metrics, listen=""),
    )
    agent = Agent(
        cfg,
        credentials=Credentials(tmp_path, env={}),
        hardware=Hardware(
            mic=lambda _c, _m: ToneSource(8000, 1000.0, -20.0, paced=True),
            speaker=lambda _c, _m: RecordingSink(48000, paced=True),
        ),
        state=StateStore(None),
        notifier=notifier,
    )
    task = asyncio.create_task(agent.run(), name="agent-under-test")
    await wait_until(lambda: agent.status.devices.get("speaker") is not None, 5, "status")
    await asyncio.sleep(0.3)
    assert not task.done()
    speaker = agent.status.devices["speaker"]
    assert speaker.state.value == "attention"
    assert "44101 Hz cannot hold whole 20 ms periods" in speaker.detail
    assert agent.generation is not None and agent.generation.parts == {}
    assert "READY=1" not in notify_socket.lines()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(":")[0] for r in errors] == ["audio", "not ready"]
    agent.stop()
    assert await asyncio.wait_for(task, 5) == 0
