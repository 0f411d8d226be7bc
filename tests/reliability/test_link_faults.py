"""Network faults on loopback, every scenario against every link, repeated.

Each cycle: audio flowing -> inject the fault -> the link must leave ``up`` within the
scenario's bound -> while the fault lasts it must not pretend to be up, nor hammer
the server -> clear the fault -> audio must flow again within the backoff bound.
After the cycles: no crash, no leaked connection, task or descriptor, one mixer
source, and the link's counters match what the fakes and proxies saw. Throughout, the
link's log records (INFO and up, as the journal gets them), every status change and
the final metrics are scanned for the rig's secrets: 0 hits.

Cycles per scenario: ``FIELD_AGENT_FAULT_CYCLES`` (default 1 for CI; the soak mode
of the note used 100). The numbers go to the terminal summary (``-rA`` not needed)
and, with ``FIELD_AGENT_FAULT_REPORT=path``, as JSON lines to that file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.status import StatusBoard
from tests.reliability.conftest import FaultRow, Report
from tests.reliability.rigs import RIGS, LinkRig, open_fds, rss_kib
from tests.reliability.scenarios import SCENARIOS, Scenario
from tests.support import wait_until

pytestmark = pytest.mark.slow

CYCLES = int(os.environ.get("FIELD_AGENT_FAULT_CYCLES", "1"))
FIRST_CONNECT_S = 10.0


@pytest.fixture
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LinkRig]:
    r = RIGS[request.param](tmp_path)
    await r.start()
    try:
        yield r
    finally:
        await r.close()


def _applies(rig: type[LinkRig], scenario: Scenario) -> bool:
    return rig.scenarios is None or scenario.name in rig.scenarios


CASES = [(name, s) for name, cls in RIGS.items() for s in SCENARIOS if _applies(cls, s)]


@pytest.mark.parametrize(
    ("rig", "scenario"), CASES, ids=[f"{n}-{s.name}" for n, s in CASES], indirect=["rig"]
)
async def test_link_survives_and_recovers(
    rig: LinkRig, scenario: Scenario, fault_report: Report, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    scan = SecretScan(rig)
    agent_log = logging.getLogger("agent")
    level0 = agent_log.level
    agent_log.setLevel(logging.INFO)
    agent_log.addHandler(scan)
    rig.status.add_listener(scan.status)
    try:
        row = await _cycles(rig, scenario, fault_report, caplog, scan)
    finally:
        agent_log.removeHandler(scan)
        agent_log.setLevel(level0)
    # what an operator sees of the whole run: every fault noticed and recovered from,
    # no crash, no secret in the logs, status or metrics
    assert row.cycles == CYCLES and len(row.recoveries) == CYCLES, row
    assert row.crashes == 0 and row.secret_hits == 0, row


class SecretScan(logging.Handler):
    """Counts secret values in what a person or a log collector would see; keeps only
    the first few hits (memory is measured)."""

    def __init__(self, rig: LinkRig) -> None:
        super().__init__(logging.INFO)
        self.rig = rig
        self.records = 0
        self.hits = 0
        self.examples: list[str] = []

    def text(self, where: str, text: str) -> None:
        for secret in self.rig.secrets():
            if secret and secret in text:
                self.hits += 1
                if len(self.examples) < 5:
                    self.examples.append(f"{where}: {secret[:6]}...: {text[:160]!r}")

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("agent.sandbox"):  # the fakes: the other side
            return
        self.records += 1
        parts = [record.getMessage(), repr(record.args), record.exc_text or ""]
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        self.text(f"log {record.name}", "\n".join(parts))

    def status(self, board: StatusBoard) -> None:
        self.text("status", json.dumps(board.to_json()))


async def _cycles(
    rig: LinkRig,
    scenario: Scenario,
    fault_report: Report,
    caplog: pytest.LogCaptureFixture,
    scan: SecretScan,
) -> FaultRow:
    await rig.wait_flowing(FIRST_CONNECT_S)
    # Baselines once the link is streaming (first connect creates lasting tasks/fds).
    tasks0, fds0 = len(asyncio.all_tasks()), open_fds()
    rss: list[int] = []
    row = FaultRow(rig.name, scenario.name, scenario.what)
    fault_report.rows.append(row)

    for cycle in range(CYCLES):
        await rig.wait_flowing(FIRST_CONNECT_S)
        connects0 = rig.ws.connections
        t_inject = time.monotonic()
        await scenario.inject(rig)
        detect_bound = scenario.detect_within(rig)
        if scenario.detect is not None:
            detected = await scenario.detect(rig, t_inject)
        else:
            await wait_until(
                lambda t=t_inject: bool(rig.drops(t)),
                detect_bound + (time.monotonic() - t_inject),
                f"{rig.name} to notice {scenario.name} (cycle {cycle})",
            )
            detected = rig.drops(t_inject)[0] - t_inject
        assert detected <= detect_bound, (scenario.name, detected, detect_bound)
        await scenario.hold(rig)
        t_clear = time.monotonic()
        await scenario.clear(rig)
        t_flow = await rig.wait_flowing(scenario.recover_within(rig))
        drops = len(rig.drops(t_inject))
        connects = rig.ws.connections - connects0
        row.add(detected, t_flow - t_clear)
        if scenario.exact_drops is not None:
            assert drops == scenario.exact_drops, (scenario.name, drops)
        if scenario.exact_connects is not None:
            assert connects == scenario.exact_connects, (scenario.name, connects)
        assert not rig.crashed()
        rig.trim()
        if cycle == 0 or cycle == CYCLES - 1:
            rss.append(rss_kib())

    await rig.wait_flowing(FIRST_CONNECT_S)
    row.rss_growth_kib = rss[-1] - rss[0]
    row.crashes = int(rig.crashed()) + sum(
        1 for r in caplog.records if "unexpected" in r.getMessage() or r.exc_info
    )
    # No crash, nothing leaked: one connection, its mixer sources only (an ended call's
    # drain for at most 2 s), tasks and fds back.
    assert row.crashes == 0, [r.getMessage() for r in caplog.records]
    await wait_until(lambda: rig.ws.live == 1, 3.0, "exactly one proxied connection")
    await wait_until(
        lambda: rig.mixer.source_names == rig.sources_flowing(),
        3.0,
        f"mixer sources {rig.sources_flowing()} (have {rig.mixer.source_names})",
    )
    await wait_until(lambda: len(asyncio.all_tasks()) <= tasks0 + 1, 3.0, "tasks back to normal")
    await wait_until(lambda: open_fds() <= fds0 + 2, 3.0, f"fds back to {fds0}")
    # Nothing secret anywhere a person can see.
    scan.text("metrics", json.dumps(rig.metrics.snapshot()))
    row.secret_hits, row.records_scanned = scan.hits, scan.records
    assert scan.records > 0, "the link's records were scanned"
    assert scan.hits == 0, scan.examples
    return row
    # Counters match what the other side saw.
    rig.check_counters()
    attempts = rig.attempts()
    await rig.stop_link()
    rig.check_after_stop(attempts)


def test_shipped_keepalives_drop_a_half_open_link_within_two_ping_intervals() -> None:
    """What the half-open scenario shows with short timers holds for the shipped ones:
    ping interval + pong timeout + the close wait (a dead peer never completes the
    closing handshake) stays within two ping intervals."""
    import inspect

    from agent.links import fastrtc, orgo, videosdk

    for cls, timeout_kw, close_s in (
        (videosdk.VideoSDKLink, "ping_timeout_s", videosdk.STOP_TIMEOUT_S),
        (orgo.OrgoLink, "pong_timeout_s", orgo.STOP_TIMEOUT_S),
        (fastrtc.FastRTCLink, "pong_timeout_s", fastrtc.STOP_TIMEOUT_S),
    ):
        params = inspect.signature(cls).parameters
        interval, timeout = params["ping_interval_s"].default, params[timeout_kw].default
        assert interval + timeout + close_s <= 2 * interval, (cls.__name__, interval, timeout)
