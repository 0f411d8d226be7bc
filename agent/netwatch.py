"""The network under the device: is there a default route, and when does that change.

In a vehicle the LTE modem drops and comes back, Wi-Fi roams between access points,
a USB modem is replugged. A link whose route is gone keeps a socket that looks fine
until its keepalive times out (tens of seconds), and a link in backoff waits out its
delay although the network is back. :class:`NetWatch` tells the agent at once:

- it listens on a netlink socket (``NETLINK_ROUTE``: link, address and route
  changes; no wakeups while nothing changes) and, a moment after any burst of
  events, reads whether a default route exists (``/proc/net/route`` and
  ``/proc/net/ipv6_route``, what ``ip route`` shows);
- when that answer changes it logs one line and calls ``on_change(old, new)`` once::

    network: no default route yet (links keep retrying)
    network: default route via wlan0 (after 41 s without)
    network: default route gone (was via wlan0)
    network: default route now via wwan0 (was wlan0)

Where netlink cannot be opened (a sandbox without ``AF_NETLINK``) it says so once
and polls ``/proc`` every :data:`POLL_S` instead. The parsing below is pure and
tested on bytes and files the tests make; the watcher is tested in a network
namespace the test creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

POLL_S = 5.0  # fallback poll interval without netlink
SETTLE_S = 0.3  # wait for a burst of netlink events to end before reading /proc

# linux/rtnetlink.h
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
)
KINDS = {16: "link", 17: "link", 20: "address", 21: "address", 24: "route", 25: "route"}
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTF_UP, RTF_REJECT = 0x0001, 0x0200


def event_kinds(data: bytes) -> set[str]:
    """The kinds of change ("link", "address", "route") in one netlink datagram.
    Unknown message types are ignored; a truncated or garbled datagram yields what
    was readable before the damage."""
    kinds: set[str] = set()
    at = 0
    while at + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, at)
        if length < _NLMSGHDR.size or at + length > len(data):
            break
        if kind in KINDS:
            kinds.add(KINDS[kind])
        at += (length + 3) & ~3  # NLMSG_ALIGN
    return kinds


@dataclass(frozen=True, slots=True)
class Route:
    present: bool
    interfaces: tuple[str, ...] = ()  # where the default routes go

    def describe(self) -> str:
        if not self.present:
            return "no default route"
        return "default route via " + ", ".join(self.interfaces)

    def lost(self, new: Route) -> tuple[str, ...]:
        """The interfaces of this route that ``new`` no longer has (connections that
        went out through them are dead)."""
        return tuple(i for i in self.interfaces if i not in new.interfaces)


def default_route(proc: Path = Path("/proc")) -> Route:
    """Whether a usable default route exists (IPv4 or IPv6), from /proc/net."""
    ifaces: list[str] = []
    try:
        lines = (proc / "net/route").read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        f = line.split()
        if len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000":
            with contextlib.suppress(ValueError):
                if int(f[3], 16) & RTF_UP and not int(f[3], 16) & RTF_REJECT:
                    ifaces.append(f[0])
    try:
        lines6 = (proc / "net/ipv6_route").read_text().splitlines()
    except OSError:
        lines6 = []
    for line in lines6:
        f = line.split()
        if len(f) >= 10 and f[1] == "00" and f[0] == "0" * 32 and f[9] != "lo":
            with contextlib.suppress(ValueError):
                if int(f[8], 16) & RTF_UP and not int(f[8], 16) & RTF_REJECT:
                    ifaces.append(f[9])
    return Route(bool(ifaces), tuple(dict.fromkeys(ifaces)))


class NetWatch:
    """Calls ``on_change(old, new)`` when the default route appears, goes away or moves
    to other interfaces."""

    def __init__(
        self,
        on_change: Callable[[Route, Route], None],
        *,
        proc: Path = Path("/proc"),
        settle_s: float = SETTLE_S,
        poll_s: float = POLL_S,
        netlink: bool = True,
    ) -> None:
        """``netlink=False``: poll ``proc`` every ``poll_s`` (what happens anyway where
        netlink cannot be opened)."""
        self._on_change = on_change
        self._proc = proc
        self._settle_s = settle_s
        self._poll_s = poll_s
        self._netlink = netlink
        self.route = default_route(proc)
        self.events = 0  # netlink datagrams read
        self._dirty = asyncio.Event()
        self._since = time.monotonic()  # when the route last came or went

    async def run(self) -> None:
        """Watch until cancelled."""
        if self.route.present:
            logger.info("network: %s", self.route.describe())
        else:
            logger.info("network: no default route yet (links keep retrying)")
        sock = self._open() if self._netlink else None
        if sock is None:
            while True:
                await asyncio.sleep(self._poll_s)
                self._check()
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._readable, sock)
        try:
            while True:
                await self._dirty.wait()
                await asyncio.sleep(self._settle_s)  # let a burst (link down + routes) end
                self._dirty.clear()
                self._check()
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except (OSError, AttributeError) as e:  # AttributeError: no AF_NETLINK on this OS
            logger.warning(
                "network: cannot watch netlink (%s); checking the default route every %.0f s",
                e,
                self._poll_s,
            )
            return None
        try:
            sock.setblocking(False)
            sock.bind((0, GROUPS))
        except OSError as e:
            sock.close()
            logger.warning(
                "network: cannot join netlink groups (%s); checking every %.0f s", e, self._poll_s
            )
            return None
        return sock

    def _readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:  # ENOBUFS: events were lost; re-reading /proc covers them
                logger.debug("network: netlink read: %s", e)
                self._dirty.set()
                return
            self.events += 1
            if event_kinds(data):
                self._dirty.set()

    def _check(self) -> None:
        old, new = self.route, default_route(self._proc)
        if new.interfaces == old.interfaces:
            return
        self.route = new
        if not new.present:
            logger.warning("network: default route gone (was via %s)", ", ".join(old.interfaces))
        elif not old.present:
            logger.info(
                "network: %s (after %.0f s without)", new.describe(), time.monotonic() - self._since
            )
        else:
            logger.info(
                "network: default route now via %s (was %s)",
                ", ".join(new.interfaces),
                ", ".join(old.interfaces),
            )
        if new.present != old.present:
            self._since = time.monotonic()
        self._on_change(old, new)
