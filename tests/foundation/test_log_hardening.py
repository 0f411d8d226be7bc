"""Remote text cannot forge log lines, and repeated events cannot flood the journal:
the filters setup_logging installs, on the terminal handler and on a real journald
socket (the native protocol, read back datagram by datagram)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.secrets import RedactingFilter
from agent.service import RateLimitFilter, escape, setup_logging
from agent.status import LinkState, StatusBoard
from tests.support import journal_datagram

EVIL = "evil\nINFO    links.videosdk: fake line\r\x1b[2J\u2028\u202e"


@pytest.fixture
def terminal() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = setup_logging("INFO", journal=False, stream=out, env={})
    yield out
    logging.getLogger("agent").removeHandler(handler)


def test_escape_leaves_printable_text_alone_and_escapes_the_rest() -> None:
    assert escape("room abcd · ptt: idle ✓") == "room abcd · ptt: idle ✓"
    assert escape(EVIL) == "evil\\nINFO    links.videosdk: fake line\\r\\x1b[2J\\u2028\\u202e"


def test_a_sender_name_with_a_newline_is_one_escaped_terminal_line(
    terminal: io.StringIO,
) -> None:
    # with a secret known, the redacting filter pre-formats the traceback: same result
    RedactingFilter.register("log-hardening-secret-0c1e")
    log = logging.getLogger("agent.links.videosdk")
    # the link's own call (agent/links/videosdk.py _command)
    log.info(
        "videosdk: command from %s: %s",
        EVIL,
        '{"cmd":"status"}',
        extra={"LINK": "videosdk", "TOPIC": "DEVICE_CMD", "SENDER": EVIL},
    )
    try:
        raise ValueError("server said: boom\nCRITICAL fake")
    except ValueError:
        log.exception("videosdk: the command handler failed")
    lines = terminal.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "command from evil\\nINFO    links.videosdk: fake line\\r\\x1b[2J" in lines[0]
    assert "SENDER=evil\\nINFO" in lines[0]
    assert "(ValueError: server said: boom\\nCRITICAL fake)" in lines[1]
    assert "\x1b" not in terminal.getvalue()


def test_status_details_and_errors_are_escaped() -> None:
    board = StatusBoard()
    board.set_link("orgo", LinkState.RETRY, "server error: " + EVIL, retry_in=3)
    board.set_error("fastrtc: " + EVIL)
    doc = board.to_json()
    assert "\n" not in doc["links"]["orgo"]["detail"] and "\\n" in doc["links"]["orgo"]["detail"]
    assert "\n" not in doc["last_error"] and "\n" not in board.summary()


def test_a_flood_of_one_event_is_a_few_lines_then_a_count(terminal: io.StringIO) -> None:
    log = logging.getLogger("agent.controls")
    for i in range(1000):
        log.warning("remote command from %s refused: %s", f"peer-{i}", "unsigned command refused")
    log.info("something else")
    lines = terminal.getvalue().splitlines()
    assert len(lines) == 12  # the burst of 10, one that says so, then the other event
    assert "peer-10" in lines[10] and "(more like this suppressed for 10 s)" in lines[10]
    assert "something else" in lines[11]


def test_after_the_interval_the_next_line_says_how_many_were_suppressed() -> None:
    now = [0.0]
    f = RateLimitFilter(interval_s=10.0, burst=2, clock=lambda: now[0])
    rec = [logging.LogRecord("agent.x", logging.WARNING, "", 0, "dropped %d", (i,), None)
           for i in range(10)]  # fmt: skip
    passed = [f.filter(r) for r in rec[:7]]
    assert passed == [True, True, True, False, False, False, False]
    assert rec[2].getMessage() == "dropped 2 (more like this suppressed for 10 s)"
    now[0] = 11.0
    assert f.filter(rec[7])
    assert rec[7].getMessage() == "dropped 7 (4 more suppressed)"
    assert f.suppressed_total == 4


def test_journal_fields_carry_no_raw_line_breaks(tmp_path: Path) -> None:
    """journald's native protocol: a value with a newline would be sent length-prefixed
    (binary); escaped, every field is one KEY=value line of the datagram."""
    datagram = journal_datagram(
        tmp_path,
        f"evil = {EVIL!r}\n"
        "logging.getLogger('agent.links.videosdk').info(\n"
        "    'videosdk: command from %s: %s', evil, 'x',\n"
        "    extra={'LINK': 'videosdk', 'SENDER': evil})",
    )
    lines = datagram.decode().split("\n")
    assert all("=" in line for line in lines if line), lines  # no binary-framed field
    assert "MESSAGE=videosdk: command from evil\\nINFO    links.videosdk: fake line" in (
        datagram.decode()
    )
    assert any(line.startswith("SENDER=evil\\nINFO") for line in lines)
    assert not any(line.startswith("CODE_ARGS=") for line in lines)  # raw args not sent
