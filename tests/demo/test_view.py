"""The live view's parts: the log ring, meters, rates, reconnect counting, and the view
drawn from a running demo bench (real agent, sandbox servers, mock GPIO)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from rich.console import Console

from agent.demo import STATUS_LED
from agent.demo.bench import DemoBench
from agent.demo.keys import PttKeys
from agent.demo.view import DemoView, LinkUps, LogRing, Rates, capture_logs, meter
from agent.secrets import RedactingFilter
from agent.status import LinkState, StatusBoard
from tests.support import wait_until


@pytest.fixture(autouse=True)
def _agent_info_logs() -> None:
    """What `field-agent demo` sets up (the conftest restores the logger afterwards)."""
    logging.getLogger("agent").setLevel(logging.INFO)


def test_the_log_ring_gets_agent_records_and_library_warnings_never_a_secret() -> None:
    RedactingFilter.register("s3cr3t-token-value")
    ring = LogRing(maxlen=3)
    with capture_logs(ring):
        logging.getLogger("agent.links.videosdk").info("sent token %s", "s3cr3t-token-value")
        logging.getLogger("websockets.client").warning("connection reset")
        logging.getLogger("websockets.client").info("library chatter stays out")
    logging.getLogger("agent.demo").info("after the view: not captured")
    lines = [line for _, line in ring.tail(10)]
    assert len(lines) == 2
    assert lines[0].endswith("INFO    links.videosdk: sent token ***")
    assert "WARNING websockets.client: connection reset" in lines[1]
    assert ring.since(1) == [lines[1]] and ring.since(0, logging.WARNING) == [lines[1]]


def test_the_ring_keeps_only_the_newest_lines() -> None:
    ring = LogRing(maxlen=3)
    log = logging.getLogger("agent.test_ring")
    with capture_logs(ring):
        for i in range(5):
            log.warning("line %d", i)
    assert [line[-6:] for _, line in ring.tail(10)] == ["line 2", "line 3", "line 4"]
    assert [line[-6:] for line in ring.since(3)] == ["line 3", "line 4"]


def test_meter_fills_with_the_level() -> None:
    assert meter(0.0, "green").plain.startswith("█" * 30)
    assert meter(-30.0, "green").plain.startswith("█" * 15 + "░" * 15)
    assert meter(-120.0, "green").plain == "░" * 30 + " --- dBFS"
    assert meter(None, "green").plain.endswith("--- dBFS")


def test_rates_count_per_second() -> None:
    r = Rates(window_s=1.0)
    assert r.rate("x", 0, 10.0) == 0.0
    for i in range(1, 21):
        rate = r.rate("x", 5 * i, 10.0 + 0.1 * i)  # 5 per 100 ms
    assert rate == pytest.approx(50.0)


def test_reconnects_are_counted_from_link_states() -> None:
    board = StatusBoard()
    ups = LinkUps(board)
    for state in (LinkState.CONNECTING, LinkState.UP, LinkState.RETRY, LinkState.RETRY,
                  LinkState.CONNECTING, LinkState.UP):  # fmt: skip
        board.set_link("videosdk", state, str(state))
    board.set_link("orgo", LinkState.UP)
    assert ups.reconnects("videosdk") == 1 and ups.reconnects("orgo") == 0


@pytest.mark.slow
async def test_the_view_shows_the_agent_talking_and_the_led_blinking_while_the_room_is_down() -> (
    None
):
    ring = LogRing()
    with capture_logs(ring):
        async with DemoBench() as bench:
            loop = asyncio.get_running_loop()
            ptt = PttKeys(loop, lambda talk: bench.press_ptt() if talk else bench.release_ptt())
            view = DemoView(bench, ptt, ring)
            console = Console(width=80, record=True, color_system=None)

            def screen() -> str:
                console.print(view.render())
                return console.export_text()

            await wait_until(lambda: bench.agent.status.led.value == "on", 10, "links up")
            text = screen()
            assert "videosdk  ● up (room demo-room)" in text and "status ● on" in text
            assert "idle (hold space to talk)" in text

            ptt.toggle_latch()
            await wait_until(lambda: bench.fake_vs.voiced_total >= 25, 5, "voice in the room")
            text = screen()
            assert "TALKING  (latched with t)" in text and "talk ● on" in text
            assert "demo: PTT pressed" in text

            kill = asyncio.create_task(bench.kill_room(down_s=1.5))
            await wait_until(lambda: bench.agent.status.led.value == "blink-1hz", 5, "link down")
            lit = set()
            for _ in range(15):  # 1.2 s: the status LED pin goes on and off at 1 Hz
                lit.add(bench.led_lit(STATUS_LED))
                await asyncio.sleep(0.08)
            assert lit == {True, False}
            text = screen()
            assert "status ● blink 1 Hz" in text and "talk ● blink 4 Hz" in text
            await kill
            await wait_until(lambda: view.ups.reconnects("videosdk") == 1, 10, "reconnect")
            before = bench.fake_vs.voiced_total
            await wait_until(lambda: bench.fake_vs.voiced_total > before + 10, 5, "voice again")
            row = next(line for line in screen().splitlines()[::-1] if "│ videosdk" in line)
            assert "● up (room demo-room)" in row and row.endswith(
                " 1 ({} tries)   │".format(
                    int(bench.agent.metrics.get("reconnects_total", link="videosdk"))
                )
            )
            ptt.close()
