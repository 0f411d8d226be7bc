"""The network watcher: netlink parsing, /proc/net parsing, and a real route change in a
network namespace made by the test (no traffic leaves it)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.netwatch import NetWatch, Route, default_route, event_kinds

ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
)


def nlmsg(kind: int, payload: bytes = b"\0" * 12) -> bytes:
    length = 16 + len(payload)
    pad = b"\0" * (((length + 3) & ~3) - length)
    return struct.pack("=IHHII", length, kind, 0, 0, 0) + payload + pad


def test_netlink_datagrams_give_the_kinds_of_change() -> None:
    assert event_kinds(nlmsg(24) + nlmsg(17)) == {"route", "link"}
    assert event_kinds(nlmsg(21, b"\0" * 9)) == {"address"}  # unaligned payload, padded
    assert event_kinds(nlmsg(3)) == set()  # NLMSG_DONE and other types: no change


def test_garbled_netlink_data_yields_what_was_readable_and_never_raises() -> None:
    good = nlmsg(25)
    assert event_kinds(good + b"\xff\xff") == {"route"}  # trailing junk
    assert event_kinds(struct.pack("=IHHII", 4, 24, 0, 0, 0)) == set()  # length < header
    assert event_kinds(struct.pack("=IHHII", 9999, 24, 0, 0, 0)) == set()  # beyond the data
    assert event_kinds(b"") == set()


def write_proc(tmp: Path, v4: str = "", v6: str = "") -> Path:
    (tmp / "net").mkdir(exist_ok=True)
    (tmp / "net/route").write_text(ROUTE_HEADER + v4)
    (tmp / "net/ipv6_route").write_text(v6)
    return tmp


LO_REJECT_V6 = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
)


def test_default_route_is_read_as_ip_route_shows_it(tmp_path: Path) -> None:
    v4 = "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
    assert default_route(write_proc(tmp_path, v4, LO_REJECT_V6)).describe() == (
        "default route via wlan0"
    )
    subnet_only = "wlan0\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0\n"
    none = default_route(write_proc(tmp_path, subnet_only, LO_REJECT_V6))
    assert not none.present and none.describe() == "no default route"
    v6 = (
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000002 00000000 00000003     wwan0\n"
    )
    assert default_route(write_proc(tmp_path, "", v6 + LO_REJECT_V6)).interfaces == ("wwan0",)


def test_unreadable_or_garbage_proc_files_mean_no_route(tmp_path: Path) -> None:
    assert not default_route(tmp_path).present  # no files at all
    garbage = "x\n\0\0\0\neth0 00000000 zz zz 0 0 0 00000000\n"
    assert not default_route(write_proc(tmp_path, garbage, "zz 00 " * 9 + "\n")).present


WATCHER = textwrap.dedent(
    """
    import asyncio, subprocess, sys, time
    from agent.netwatch import NetWatch

    def ip(*args):
        subprocess.run(["ip", *args], check=True)

    ip("link", "set", "lo", "up")
    ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ip("addr", "add", "10.99.0.2/24", "dev", "v0")
    ip("link", "set", "v0", "up"); ip("link", "set", "v1", "up")
    ip("route", "add", "default", "via", "10.99.0.1", "dev", "v0")

    async def main():
        seen = asyncio.Queue()
        watch = NetWatch(lambda old, r: seen.put_nowait((time.monotonic(), r)), settle_s=0.1)
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0.3)
        print("start", watch.route.describe(), flush=True)
        for step in (["route", "del", "default"], ["link", "set", "v0", "down"],
                     ["link", "set", "v0", "up"],
                     ["route", "add", "default", "via", "10.99.0.1", "dev", "v0"]):
            t0 = time.monotonic()
            ip(*step)
            try:
                t, route = await asyncio.wait_for(seen.get(), 2.0)
                ms = f"{(t - t0) * 1000:.0f} ms"
                print(" ".join(step), "->", route.describe(), ms, flush=True)
            except TimeoutError:
                print(" ".join(step), "-> no change", flush=True)
        task.cancel()

    asyncio.run(main())
    """
)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_route_changes_in_a_namespace_are_seen_within_half_a_second() -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", WATCHER],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "start default route via v0"
    assert lines[1].startswith("route del default -> no default route")
    assert lines[2] == "link set v0 down -> no change"  # already gone: reported once
    assert lines[3] == "link set v0 up -> no change"
    assert lines[4].startswith("route add default via 10.99.0.1 dev v0 -> default route via v0")
    for line in (lines[1], lines[4]):
        assert int(line.rsplit(" ", 2)[1]) < 500, line


async def test_the_log_says_when_the_network_appears_goes_and_moves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lan_only = "wlan0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    via = "{}\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n".format
    root = write_proc(tmp_path, lan_only, LO_REJECT_V6)
    changes: list[tuple[Route, Route]] = []
    watch = NetWatch(lambda o, n: changes.append((o, n)), proc=root, poll_s=0.01, netlink=False)
    with caplog.at_level(logging.INFO, logger="agent.netwatch"):
        task = asyncio.create_task(watch.run())
        for v4 in (lan_only + via("wlan0"), lan_only + via("wwan0"), lan_only):
            await asyncio.sleep(0.05)
            write_proc(tmp_path, v4, LO_REJECT_V6)
        await asyncio.sleep(0.05)
        task.cancel()
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "network: no default route yet (links keep retrying)"
    assert said[1].startswith("network: default route via wlan0 (after 0 s without)")
    assert said[2] == "network: default route now via wwan0 (was wlan0)"
    assert said[3] == "network: default route gone (was via wwan0)"
    assert len(said) == 4
    assert [(o.lost(n), n.present) for o, n in changes] == [
        ((), True),  # a route appeared: nothing lost
        (("wlan0",), True),  # moved: what went out through wlan0 is dead
        (("wwan0",), False),
    ]
