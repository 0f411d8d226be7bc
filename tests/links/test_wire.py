"""agent.links.wire: the websockets loggers of every link hide what must stay hidden."""

from __future__ import annotations

import logging

import pytest

from agent.links.wire import wire_logger
from agent.secrets import RedactingFilter

TOKEN = "wire-test-token-5e0a2c4b6d8f"


def test_queries_headers_and_registered_secrets_are_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    log = wire_logger("testlink", hide_headers=("X-Pbx-Secret",))
    RedactingFilter.register("registered-secret-77aa")
    log.debug("> GET /desktops/c1/ws/audio?token=%s&sample_rate=24000 HTTP/1.1", TOKEN)
    log.debug("> GET /ws/v2?ref=%s HTTP/1.1", TOKEN)
    log.debug("< x-pbx-secret: %s", TOKEN)
    log.debug("< Host: 127.0.0.1:8765")
    log.debug("= connection failed: registered-secret-77aa")
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.links.testlink.wire"]
    assert lines == [
        "> GET /desktops/c1/ws/audio?token=***&sample_rate=*** HTTP/1.1",
        "> GET /ws/v2?ref=*** HTTP/1.1",
        "< x-pbx-secret: ***",
        "< Host: 127.0.0.1:8765",
        "= connection failed: ***",
    ]


def test_a_server_link_keeps_the_library_info_lines_for_debugging_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = wire_logger("quietlink", quiet_info=True)
    caplog.set_level(logging.INFO)
    log.info("connection open")
    log.warning("connection failed")
    assert [r.getMessage() for r in caplog.records] == ["connection failed"]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="agent.links.quietlink.wire")
    log.info("connection open")
    assert [r.getMessage() for r in caplog.records] == ["connection open"]
