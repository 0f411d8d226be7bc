"""The device's time: servers' Date headers and steps of the wall clock (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import ServerClock, StepDetector, describe_offset, parse_http_date

NOON = 1_780_000_000.0  # 2026-05-28, a synced device's "now"


def test_http_dates_in_every_form_servers_send() -> None:
    assert parse_http_date("Thu, 28 May 2026 20:26:40 GMT") == NOON
    assert parse_http_date("Thu, 28 May 2026 20:26:40 +0000") == NOON
    for bad in (None, "", "yesterday", "Thu, 28 May 2026 20:26:40", "x" * 100):
        assert parse_http_date(bad) is None


@given(st.text(max_size=80))
def test_any_header_text_is_a_date_or_none(text: str) -> None:
    assert parse_http_date(text) is None or parse_http_date(text) > 0  # type: ignore[operator]


def test_a_synced_clock_is_left_alone() -> None:
    wall = [NOON]
    clock = ServerClock(lambda: wall[0])
    offset = clock.observe("Thu, 28 May 2026 20:26:41 GMT", "api.videosdk.live", sent_at=NOON)
    assert offset is not None and not offset.large  # 1.5 s: network and rounding
    assert clock.now() == NOON


def test_a_device_that_booted_in_1970_mints_with_the_servers_time() -> None:
    wall = [3600.0]  # one hour after the epoch: no RTC, no NTP yet
    clock = ServerClock(lambda: wall[0])
    offset = clock.observe("Thu, 28 May 2026 20:26:40 GMT", "api.videosdk.live", sent_at=3600.0)
    assert offset is not None and offset.large
    assert abs(clock.now() - NOON) <= 1.0
    assert offset.message() == (
        "clock is off by 20602 days (behind api.videosdk.live; not synced?)"
    )
    wall[0] += 10
    assert abs(clock.now() - (NOON + 10)) <= 1.0  # keeps following the local clock's rate


@pytest.mark.parametrize(
    ("offset", "text"),
    [(3 * 3600 + 125, "3 h 2 min"), (3 * 3600 - 0.4, "3 h 0 min"), (-720, "12 min"), (45, "45 s")],
)
def test_offsets_read_as_a_person_says_them(offset: float, text: str) -> None:
    assert describe_offset(offset) == text


def test_a_clock_step_is_seen_once_and_drift_is_not() -> None:
    wall, mono = [NOON], [100.0]
    steps = StepDetector(lambda: wall[0], lambda: mono[0])
    mono[0] += 60
    wall[0] += 60.5  # half a second of slew over a minute: not a step
    assert steps.stepped() == 0.0
    wall[0] += 3 * 3600  # NTP stepped the clock forward three hours
    assert steps.stepped() == pytest.approx(3 * 3600)
    assert steps.stepped() == 0.0  # reported once
