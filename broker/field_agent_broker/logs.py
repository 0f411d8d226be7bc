"""Structured logs: one JSON object per line on stderr, credentials scrubbed.

Fields: ``ts``, ``level``, ``logger``, ``msg`` and the record's known extras
(``event``, ``outcome``, ``status``, ``device``, ``room``, ``call_id``, ``ms``,
``result``). The broker never passes a credential to a log call; :class:`Redactor`
is the second line of defence: every account value (token, API key, secret, each
minted JWT) is registered and replaced by ``***`` in any record that still carries it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading

FIELDS = ("event", "outcome", "status", "device", "room", "call_id", "ms", "result")
MASK = "***"


class Redactor(logging.Filter):
    _values: set[str] = set()
    _lock = threading.Lock()

    @classmethod
    def register(cls, value: str) -> None:
        if len(value) >= 6:
            with cls._lock:
                cls._values.add(value)

    @classmethod
    def scrub(cls, text: str) -> str:
        with cls._lock:
            values = sorted(cls._values, key=len, reverse=True)
        for v in values:
            if v in text:
                text = text.replace(v, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def setup(level: str = "INFO", stream: object = None) -> logging.Handler:
    """Log JSON lines to ``stream`` (stderr); uvicorn's loggers too (no access log)."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # request lines: URL only, but noisy
    return handler
