"""The board's health as the agent reads it: thermal zones, the Raspberry Pi's
throttling flags (``vcgencmd get_throttled``) and the process's own CPU and memory.

Pure parsing over paths and a command that tests replace with a fake sysfs and a
fake ``vcgencmd``; a board without them simply has none of these figures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

THROTTLED_MAX_AGE_S = 5.0  # vcgencmd runs at most this often (a scrape is every 15 s or so)
VCGENCMD_TIMEOUT_S = 2.0

# Raspberry Pi firmware throttling bits (vcgencmd get_throttled)
THROTTLE_BITS: dict[int, tuple[str, str]] = {
    0: ("under_voltage", "now"),
    1: ("freq_capped", "now"),
    2: ("throttled", "now"),
    3: ("soft_temp_limit", "now"),
    16: ("under_voltage", "since_boot"),
    17: ("freq_capped", "since_boot"),
    18: ("throttled", "since_boot"),
    19: ("soft_temp_limit", "since_boot"),
}


# -- board sensors (pure parsing, tested with a fake sysfs) ---------------------------
def read_temperatures(root: Path = Path("/")) -> list[tuple[str, str, float]]:
    """``(zone, type, °C)`` for every readable ``sys/class/thermal/thermal_zone*`` under
    ``root``; [] where there are none (containers, most VMs). Zones that cannot be read
    or hold no number (a sensor that is off answers EINVAL/ENODATA) are left out."""
    out = []
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        try:
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            kind = (zone / "type").read_text().strip()
        except OSError:
            kind = ""
        out.append((zone.name, kind, milli / 1000.0))
    return out


def parse_throttled(text: str) -> int | None:
    """The flags in ``vcgencmd get_throttled`` output (``throttled=0x50005``), or None."""
    key, sep, value = text.strip().partition("=")
    if not sep or key.strip() != "throttled":
        return None
    try:
        return int(value.strip(), 0)
    except ValueError:
        return None


def throttle_flags(value: int) -> list[tuple[str, str, bool]]:
    """``(flag, when, set)`` for every documented bit of a get_throttled value."""
    return [(flag, when, bool(value >> bit & 1)) for bit, (flag, when) in THROTTLE_BITS.items()]


class Throttling:
    """``vcgencmd get_throttled``, run asynchronously and cached; None where it is absent."""

    def __init__(self, command: str | None = "vcgencmd") -> None:
        self.path = shutil.which(command) if command else None
        self.value: int | None = None
        self._at = -1e9
        self._warned = False

    async def refresh(self) -> None:
        if self.path is None or time.monotonic() - self._at < THROTTLED_MAX_AGE_S:
            return
        self._at = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.path,
                "get_throttled",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                async with asyncio.timeout(VCGENCMD_TIMEOUT_S):
                    out, _ = await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
        except (OSError, TimeoutError) as e:
            self._fail(f"vcgencmd get_throttled failed: {e or 'timed out'}")
            return
        value = parse_throttled(out.decode(errors="replace"))
        if value is None:
            self._fail(f"vcgencmd get_throttled: unexpected output {out[:80]!r}")
        self.value = value

    def _fail(self, message: str) -> None:
        self.value = None
        if not self._warned:  # once: a board without the firmware interface stays that way
            self._warned = True
            logger.warning("%s; throttling flags not exported", message)


# -- process usage (for /status; /metrics uses prometheus_client's ProcessCollector) ----
def process_usage(proc: Path = Path("/proc/self")) -> dict[str, float]:
    """CPU seconds (user + system, all threads) and resident memory in bytes."""
    try:
        stat = (proc / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        rss = int((proc / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return {}
    return {"cpu_seconds": round(cpu, 2), "rss_bytes": float(rss)}
