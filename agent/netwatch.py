"""Is there a network? The default route, read from /proc (cheap, no privilege).

The agent starts without a network and its links retry by themselves; this only says
in the log when a network appears or goes away, so "connecting" for minutes after a
boot reads as what it is::

    network: no default route yet (links keep retrying)
    network: default route via wlan0 (after 41 s without)
    network: default route gone (was via wlan0)

:func:`default_route` parses ``/proc/net/route`` (IPv4: destination 0, flag UP) and
``/proc/net/ipv6_route`` (prefix ::/0, not the kernel's unreachable default on lo).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0
_RTF_UP = 0x1
_RTF_REJECT = 0x200


def default_route(proc: Path = Path("/proc")) -> str | None:
    """The interface of a default route (IPv4 first, then IPv6), or None."""
    try:
        for line in (proc / "net/route").read_text().splitlines()[1:]:
            f = line.split()
            default = len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000"
            if default and int(f[3], 16) & _RTF_UP:
                return f[0]
    except (OSError, ValueError):
        pass
    try:
        for line in (proc / "net/ipv6_route").read_text().splitlines():
            f = line.split()
            if len(f) >= 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo":
                flags = int(f[8], 16)
                if flags & _RTF_UP and not flags & _RTF_REJECT:
                    return f[9]
    except (OSError, ValueError):
        pass
    return None


async def watch_network(proc: Path = Path("/proc"), every_s: float = CHECK_EVERY_S) -> None:
    """Log when the default route appears or goes away (until cancelled)."""
    was = default_route(proc)
    since = time.monotonic()
    if was is None:
        logger.info("network: no default route yet (links keep retrying)")
    while True:
        await asyncio.sleep(every_s)
        now = default_route(proc)
        if now == was:
            continue
        if now is None:
            logger.warning("network: default route gone (was via %s)", was)
        elif was is None:
            logger.info(
                "network: default route via %s (after %.0f s without)",
                now,
                time.monotonic() - since,
            )
        else:
            logger.info("network: default route now via %s (was %s)", now, was)
        was, since = now, time.monotonic()
