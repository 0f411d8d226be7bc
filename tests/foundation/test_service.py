"""sd_notify, the progress-based watchdog, and the two logging destinations."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest

from agent.service import (
    Heartbeats,
    Notifier,
    TerminalFormatter,
    run_watchdog,
    setup_logging,
    watchdog_interval,
)
from tests.conftest import NotifyRecorder
from tests.support import journal_datagram


def test_notifier_sends_states_and_dedups_status(
    notify_socket: NotifyRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    n = Notifier()
    n.ready()
    n.status("videosdk: up")
    n.status("videosdk: up")  # unchanged: not sent again
    n.status("videosdk: retry in 3s")
    n.watchdog()
    n.stopping()
    notify_socket.wait_for("STOPPING=1")
    assert notify_socket.lines() == [
        "READY=1",
        "STATUS=videosdk: up",
        "STATUS=videosdk: retry in 3s",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_notifier_is_a_no_op_outside_systemd() -> None:
    n = Notifier({})
    n.ready()  # would raise if it tried to reach a socket that does not exist
    assert not n.enabled


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None  # not us


async def test_a_stalled_task_stops_the_watchdog_pings(
    notify_socket: NotifyRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks beat; when one stalls (blocked on a lock), WATCHDOG=1 stops; it resumes after."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    beats = Heartbeats()
    busy, stuck = beats.register("capture", 0.15), beats.register("link-videosdk", 0.15)
    gate = asyncio.Event()
    gate.set()

    async def worker(hb, wait_for_gate: bool) -> None:
        while True:
            if wait_for_gate:
                await gate.wait()
            hb.beat()
            await asyncio.sleep(0.02)

    tasks = [
        asyncio.create_task(worker(busy, False)),
        asyncio.create_task(worker(stuck, True)),
        asyncio.create_task(run_watchdog(Notifier(), beats, 0.05)),
    ]
    await asyncio.sleep(0.4)
    healthy = notify_socket.lines().count("WATCHDOG=1")
    gate.clear()  # the link task stalls
    await asyncio.sleep(0.3)  # 0.15 s to be noticed ...
    mark = len(notify_socket.lines())
    await asyncio.sleep(0.5)  # ... then nothing for 0.5 s
    stalled_pings = notify_socket.lines()[mark:].count("WATCHDOG=1")
    gate.set()
    await asyncio.sleep(0.3)
    resumed = notify_socket.lines()[mark:].count("WATCHDOG=1")
    for t in tasks:
        t.cancel()
    assert healthy >= 5
    assert stalled_pings == 0
    assert resumed >= 3


def test_paused_heartbeat_is_not_a_stall() -> None:
    now = [0.0]
    beats = Heartbeats(clock=lambda: now[0])
    hb = beats.register("link-orgo", 1.0)
    now[0] = 5.0
    assert beats.stalled() == ["link-orgo"]
    hb.pause()  # waiting in backoff on purpose
    assert beats.stalled() == []
    hb.beat()
    now[0] = 7.0
    assert beats.stalled() == ["link-orgo"]


def test_terminal_lines_carry_journal_fields() -> None:
    out = io.StringIO()
    handler = setup_logging("INFO", journal=False, stream=out, env={})
    try:
        logging.getLogger("agent.links.videosdk").info(
            "session created", extra={"LINK": "videosdk", "CALL_ID": "c-1"}
        )
        logging.getLogger("agent.x").debug("hidden at INFO")
    finally:
        logging.getLogger("agent").removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "INFO    links.videosdk: session created [LINK=videosdk CALL_ID=c-1]" in lines[0]
    assert isinstance(handler.formatter, TerminalFormatter)


def test_under_systemd_records_go_to_journald_with_fields(tmp_path: Path) -> None:
    """JournalHandler talks to /run/systemd/journal/socket: bind one in a private mount
    namespace (docs/testing.md) and read the datagrams the agent's logging sends."""
    fields = journal_datagram(
        tmp_path,
        "logging.getLogger('agent.links.orgo').warning(\n"
        "    'password refused for %s', 'computer c1', extra={'LINK': 'orgo'})",
    ).decode(errors="replace")
    assert "MESSAGE=password refused for computer c1" in fields
    assert "LINK=orgo" in fields
    assert "SYSLOG_IDENTIFIER=field-agent" in fields
    assert "PRIORITY=4" in fields
