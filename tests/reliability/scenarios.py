"""Network fault scenarios, each a plain record: how to inject it, what must hold while
it lasts, how it clears, and the bounds the link promises. See test_link_faults.py.

Adding a scenario = one :class:`Scenario` in :data:`SCENARIOS`; it then runs against
every rig in :data:`tests.reliability.rigs.RIGS` whose ``scenarios`` include it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.reliability.rigs import LinkRig
from tests.support import wait_until

Step = Callable[[LinkRig], Awaitable[None]]
Bound = Callable[[LinkRig], float]


async def _nothing(rig: LinkRig) -> None:
    pass


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str  # for the report
    inject: Step
    clear: Step
    detect_within: Bound  # fault injected -> the link leaves "up"
    recover_within: Bound  # fault cleared -> audio flowing again
    hold: Step = _nothing  # while the fault lasts: wait, and check what must hold
    exact_connects: int | None = 1  # new WebSocket connections per cycle, when known
    exact_drops: int | None = 1  # up -> down transitions per cycle, when known


def _quick(rig: LinkRig) -> float:
    """A reset or a refused connection is noticed at once (no timer involved)."""
    return rig.timing.allowance_s


def _reconnect(rig: LinkRig) -> float:
    return rig.timing.reconnect_s


def _no_up_while(rig: LinkRig, since: float) -> None:
    assert not rig.entered("up", since), f"{rig.name} reported up while the fault lasted"


# -- server process killed ---------------------------------------------------------------


async def _kill(rig: LinkRig) -> None:
    await rig.ws.kill()


async def _hold_killed(rig: LinkRig) -> None:
    t0, n0 = time.monotonic(), rig.attempts()
    await wait_until(lambda: rig.attempts() >= n0 + 2, 3.0, "two refused attempts")
    _no_up_while(rig, t0)


async def _revive(rig: LinkRig) -> None:
    await rig.ws.revive()


# -- TCP reset in the middle of a frame -----------------------------------------------------


async def _cut(rig: LinkRig) -> None:
    await rig.ws.reset_mid_frame()


# -- half-open: the server stops reading and answering ------------------------------------


async def _freeze(rig: LinkRig) -> None:
    rig.ws.freeze()


async def _thaw(rig: LinkRig) -> None:
    rig.ws.thaw()


def _half_open_bound(rig: LinkRig) -> float:
    # The keepalive promise (2 ping intervals) plus event-loop latency only: the timers
    # themselves are not stretched.
    return rig.timing.detect_half_open_s + 0.5


# -- accepted, never answered (blackhole) -------------------------------------------------


async def _blackhole(rig: LinkRig) -> None:
    rig.ws.mode = "blackhole"
    rig.ws.reset_all()


async def _hold_blackhole(rig: LinkRig) -> None:
    t0, c0 = time.monotonic(), rig.ws.connections
    # two handshakes swallowed: each must be abandoned at the link's open timeout
    await wait_until(
        lambda: rig.ws.connections >= c0 + 2,
        2 * (rig.timing.open_s + rig.timing.backoff.cap_s) + rig.timing.allowance_s,
        "two blackholed handshakes",
    )
    _no_up_while(rig, t0)


async def _pass_and_reset(rig: LinkRig) -> None:
    rig.ws.mode = "pass"
    rig.ws.reset_all()


def _after_pending_open(rig: LinkRig) -> float:
    """An attempt in progress may be stuck in a swallowed handshake: it ends at the
    open timeout, then one backoff delay, then a connect."""
    return rig.timing.open_s + rig.timing.reconnect_s


# -- handshake answered, then silence (no `started`, no pong) ------------------------------


async def _mute(rig: LinkRig) -> None:
    rig.ws.mode = "mute"
    rig.ws.reset_all()


async def _hold_mute(rig: LinkRig) -> None:
    t0, f0 = time.monotonic(), rig.flow()
    await asyncio.sleep(2 * rig.timing.detect_half_open_s)
    assert rig.flow() == f0, "audio arrived from a muted server"
    # A link may call itself up after the handshake (VideoSDK has no `started`), but a
    # silent server must be dropped within the keepalive bound each time.
    spans = rig.up_spans(t0, time.monotonic())
    assert all(s <= _half_open_bound(rig) for s in spans), spans


# -- slow REST (a server trickling its reply) ---------------------------------------------


async def _trickle(rig: LinkRig) -> None:
    rig.rest.mode = "trickle"
    rig.ws.reset_all()  # the next attempt needs the REST call


async def _hold_trickle(rig: LinkRig) -> None:
    t0, n0 = time.monotonic(), rig.attempts()
    await wait_until(
        lambda: rig.attempts() >= n0 + 2,
        2 * (rig.timing.rest_s + rig.timing.backoff.cap_s) + rig.timing.allowance_s,
        "two abandoned REST requests",
    )
    _no_up_while(rig, t0)


async def _rest_pass(rig: LinkRig) -> None:
    # No reset: a request in flight finishes trickling or is abandoned by the link (a
    # reset could kill it before it reaches the server and spoil the request count).
    rig.rest.mode = "pass"


def _after_pending_rest(rig: LinkRig) -> float:
    return rig.timing.rest_s + rig.timing.reconnect_s


# -- DNS failure ------------------------------------------------------------------------


async def _dns_down(rig: LinkRig) -> None:
    rig.resolver.broken = True
    rig.ws.reset_all()


async def _hold_dns(rig: LinkRig) -> None:
    t0, f0 = time.monotonic(), rig.resolver.failures
    await wait_until(lambda: rig.resolver.failures >= f0 + 2, 3.0, "two failed lookups")
    _no_up_while(rig, t0)


async def _dns_up(rig: LinkRig) -> None:
    rig.resolver.broken = False


# -- 401 storm ----------------------------------------------------------------------------


async def _refuse(rig: LinkRig) -> None:
    rig.set_auth_refused(True)
    rig.ws.reset_all()


async def _hold_refused(rig: LinkRig) -> None:
    t0, seen0 = time.monotonic(), rig.rest_requests_seen()
    slow = rig.timing.backoff.slow_s
    await wait_until(lambda: rig.rest_requests_seen() >= seen0 + 3, 6 * slow + 2, "three 401s")
    await wait_until(lambda: rig.state() == "attention", 2.0, "attention")
    elapsed = time.monotonic() - t0
    # no hammering: refused credentials are retried at the slow cadence only
    refusals = rig.rest_requests_seen() - seen0
    assert refusals <= elapsed / (slow * (1 - rig.timing.backoff.jitter)) + 2, refusals
    _no_up_while(rig, t0)


async def _accept(rig: LinkRig) -> None:
    rig.set_auth_refused(False)


def _after_slow(rig: LinkRig) -> float:
    return rig.timing.backoff.slow_s + rig.timing.allowance_s


SCENARIOS: list[Scenario] = [
    Scenario("server_killed", "server process killed (RST, port closed), back after 2 tries",
             _kill, _revive, _quick, _reconnect, _hold_killed),
    Scenario("reset_mid_frame", "TCP reset in the middle of a server frame",
             _cut, _nothing, _quick, _reconnect),
    Scenario("half_open", "server stops reading and answering (half-open)",
             _freeze, _thaw, _half_open_bound, _reconnect),
    Scenario("accept_no_answer", "server accepts TCP, never answers the handshake",
             _blackhole, _pass_and_reset, _quick, _after_pending_open, _hold_blackhole,
             exact_connects=None),
    Scenario("handshake_then_silence", "handshake answered, then nothing (no started/pong)",
             _mute, _pass_and_reset, _quick, _reconnect, _hold_mute,
             exact_connects=None, exact_drops=None),
    Scenario("slow_rest", "REST reply trickles one byte per 0.2 s",
             _trickle, _rest_pass, _quick, _after_pending_rest, _hold_trickle),
    Scenario("dns_failure", "the server's name stops resolving",
             _dns_down, _dns_up, _quick, _reconnect, _hold_dns),
    Scenario("auth_storm", "credentials refused (HTTP 401) again and again",
             _refuse, _accept, _quick, _after_slow, _hold_refused),
]  # fmt: skip
