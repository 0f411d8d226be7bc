"""The websockets library's own logger for each link, with the redaction every link needs.

websockets logs the request line and every header at DEBUG (``> GET /ws?token=…``,
``< Secret: …``) and connection events at INFO. :func:`wire_logger` gives a link a
logger (``agent.links.<link>.wire``) whose filter, before any handler sees a record:

- masks every URL query value (``?token=***&sample_rate=***``; VideoSDK's ``ref=``),
- masks the value of each header named in ``hide_headers`` (the PBX secret header),
- scrubs every value registered with :class:`~agent.secrets.RedactingFilter`,
- with ``quiet_info``, drops the library's INFO lines unless the wire logger is at
  DEBUG (a server link logs each connection itself, with more context).
"""

from __future__ import annotations

import logging
import re

from agent.metrics import Metrics
from agent.secrets import MASK, RedactingFilter

_QUERY_VALUE = re.compile(r"([?&][^=&\s?#]+=)[^&\s#'\"]*")


class WireFilter(logging.Filter):
    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger
        self.headers: re.Pattern[str] | None = None
        self.quiet_info = False

    def hide(self, headers: tuple[str, ...]) -> None:
        names = "|".join(re.escape(h) for h in headers)
        self.headers = (
            re.compile(rf"^([<>] (?:{names}):).*$", re.IGNORECASE | re.DOTALL) if names else None
        )

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            self.quiet_info
            and record.levelno == logging.INFO
            and not self._logger.isEnabledFor(logging.DEBUG)
        ):
            return False
        message = record.getMessage()
        clean = _QUERY_VALUE.sub(rf"\g<1>{MASK}", message)
        if self.headers is not None:
            clean = self.headers.sub(rf"\1 {MASK}", clean)
        clean = RedactingFilter.scrub(clean)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def mask_query(text: str) -> str:
    """``text`` with every URL query value replaced by ``***``."""
    return _QUERY_VALUE.sub(rf"\g<1>{MASK}", text)


def wire_logger(
    link: str, *, hide_headers: tuple[str, ...] = (), quiet_info: bool = False
) -> logging.Logger:
    """The redacting logger to pass as websockets' ``logger=`` for ``link``."""
    logger = logging.getLogger(f"agent.links.{link}.wire")
    wire = next((f for f in logger.filters if isinstance(f, WireFilter)), None)
    if wire is None:
        wire = WireFilter(logger)
        logger.addFilter(wire)
    wire.hide(hide_headers)
    wire.quiet_info = quiet_info
    return logger


class MalformedNotes:
    """Malformed input from a peer: always counted (``malformed_total{link,reason}``),
    logged at WARNING once per reason per connection and at DEBUG after that, so a
    garbage-spewing peer cannot flood the journal. :meth:`reset` at each connection."""

    def __init__(self, log: logging.Logger, link: str, metrics: Metrics) -> None:
        self._log = log
        self._link = link
        self._metrics = metrics
        self._seen: set[str] = set()

    def reset(self) -> None:
        self._seen.clear()

    def note(self, reason: str, what: object) -> None:
        self._metrics.inc("malformed_total", link=self._link, reason=reason)
        level = logging.DEBUG if reason in self._seen else logging.WARNING
        self._seen.add(reason)
        self._log.log(level, "ignored a malformed message: %s", what, extra={"LINK": self._link})
