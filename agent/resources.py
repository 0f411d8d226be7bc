"""Running out of a resource (file descriptors first) is logged once, counted, survived.

A process that leaks or is flooded reaches ``LimitNOFILE=`` (the unit sets 512): then
``accept()``, ``socket()`` (the sd_notify socket), ``open()`` (an audio device being
reopened) fail with EMFILE (or ENFILE for the whole system). Each place that can meet
it reports through :func:`exhausted`: one warning per place and minute with the count
of repeats (``out of file descriptors (accept: 37 times in 60 s; LimitNOFILE=512)``)
and ``resource_exhausted_total{resource="fds",where=...}``; the caller then goes on
(asyncio already retries ``accept`` after a second; a device is retried by its
backoff; a status line is dropped).

:func:`install_loop_handler` routes asyncio's own "socket.accept() out of system
resource" report (an error with a traceback, every second while it lasts) here.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.metrics import Metrics

logger = logging.getLogger(__name__)

FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
REPORT_EVERY_S = 60.0

_lock = threading.Lock()
_last: dict[str, float] = {}
_held: dict[str, int] = {}


def is_out_of_fds(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in FD_ERRNOS


def fd_limit() -> int | str:
    """The soft RLIMIT_NOFILE of this process ("?" if even that cannot be asked)."""
    try:
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return "?"


def exhausted(
    where: str,
    metrics: Metrics | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Count one EMFILE/ENFILE at ``where``; log at most one line a minute per place."""
    if metrics is not None:
        metrics.inc("resource_exhausted_total", resource="fds", where=where)
    now = clock()
    with _lock:
        if now - _last.get(where, -1e9) < REPORT_EVERY_S:
            _held[where] = _held.get(where, 0) + 1
            return
        _last[where] = now
        held = _held.pop(where, 0)
    more = f"; {held} more since the last such line" if held else ""
    logger.warning(
        "out of file descriptors (%s; LimitNOFILE=%s%s): going on", where, fd_limit(), more
    )


def install_loop_handler(loop: asyncio.AbstractEventLoop, metrics: Metrics | None) -> None:
    """asyncio's report of an accept() without descriptors goes to :func:`exhausted`;
    every other report to the handler that was there (or the default)."""
    previous = loop.get_exception_handler()
    if getattr(previous, "_field_agent_fds", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if is_out_of_fds(exc) and "accept" in str(context.get("message", "")):
            exhausted("accept", metrics)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler._field_agent_fds = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)
