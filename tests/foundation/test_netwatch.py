"""The log says when a network appears (issue 17, item 13): /proc/net/route as the
kernel writes it, in a directory the test controls."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from agent.netwatch import default_route, watch_network

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
LAN_ONLY = "wlan0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
DEFAULT = "wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
V6_UNREACHABLE = (  # the kernel's own default on lo when there is no IPv6 route
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
)
V6_DEFAULT = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fe800000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
)


def proc(tmp_path: Path, v4: str, v6: str = V6_UNREACHABLE) -> Path:
    (tmp_path / "net").mkdir(exist_ok=True)
    (tmp_path / "net" / "route").write_text(HEADER + v4)
    (tmp_path / "net" / "ipv6_route").write_text(v6)
    return tmp_path


def test_default_route_ipv4_ipv6_and_none(tmp_path: Path) -> None:
    assert default_route(proc(tmp_path, LAN_ONLY)) is None  # a LAN route is no way out
    assert default_route(proc(tmp_path, LAN_ONLY + DEFAULT)) == "wlan0"
    assert default_route(proc(tmp_path, "", V6_DEFAULT)) == "eth0"
    assert default_route(tmp_path / "nothing") is None


async def test_the_log_says_when_the_network_appears_and_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = proc(tmp_path, LAN_ONLY)
    with caplog.at_level(logging.INFO, logger="agent.netwatch"):
        task = asyncio.create_task(watch_network(root, every_s=0.01))
        await asyncio.sleep(0.05)
        proc(tmp_path, LAN_ONLY + DEFAULT)
        await asyncio.sleep(0.05)
        proc(tmp_path, LAN_ONLY)
        await asyncio.sleep(0.05)
        task.cancel()
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "network: no default route yet (links keep retrying)"
    assert said[1].startswith("network: default route via wlan0 (after 0 s without)")
    assert said[2] == "network: default route gone (was via wlan0)"
    assert len(said) == 3
