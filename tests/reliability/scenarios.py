"""Network fault scenarios, each a plain record: how to inject it, what must hold while
it lasts, how it clears, and the bounds the link promises. See test_link_faults.py.

Adding a scenario = one :class:`Scenario` in :data:`SCENARIOS`; it then runs against
every rig in :data:`tests.reliability.rigs.RIGS` whose ``scenarios`` include it.

The first eight are faults of a server the link connects to (VideoSDK, Orgo and,
where they apply, FastRTC). ``refusal_storm`` is FastRTC's "credentials refused":
the app answers every ``start`` with its concurrency refusal. The ``pbx_*`` ones are
faults of a *client* (the PBX calls the link's server): for them "up" means "a call
is playing" (see :class:`~tests.reliability.rigs.PbxRig`), and a fault that must not
end the call (garbage, slowloris, a connection storm) has ``exact_drops=0`` and its
own ``detect``: the link noticed when it refused or dropped what was bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.reliability.rigs import PBX_SECRET, FastRTCRig, LinkRig, PbxRig
from tests.support import wait_until

Step = Callable[[LinkRig], Awaitable[None]]
Bound = Callable[[LinkRig], float]
Detect = Callable[[LinkRig, float], Awaitable[float]]
"""``detect(rig, t_inject)``: wait until the link noticed; return the seconds it took."""


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
    detect: Detect | None = None  # None: the link leaves "up" (see test_link_faults.py)


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


# -- FastRTC: the app refuses every session (concurrency limit) -----------------------------


def _fastrtc(rig: LinkRig) -> FastRTCRig:
    assert isinstance(rig, FastRTCRig), rig
    return rig


async def _busy(rig: LinkRig) -> None:
    r = _fastrtc(rig)
    r.marks["refusals0"] = r.refusals_seen()
    r.set_auth_refused(True)
    r.ws.reset_all()


def _refused_since(rig: FastRTCRig) -> int:
    return rig.refusals_seen() - int(rig.marks["refusals0"])


async def _hold_busy(rig: LinkRig) -> None:
    r = _fastrtc(rig)
    t0 = time.monotonic()
    waits = sum(1.2 * r.refusal_wait(k) for k in (1, 2, 3))
    bound = r.timing.backoff.cap_s + waits + 2 * r.timing.allowance_s
    await wait_until(lambda: _refused_since(r) >= 3, bound, "three refusals")
    _no_up_while(r, t0)
    assert r.state() in ("retry", "connecting"), r.state()
    assert not r.entered("attention", t0), "a busy app is not the user's problem"
    # No hammering: after the k-th refusal in a row, the next attempt waits refusal_wait(k).
    timeline = [(t, what) for t, what in r.fake.timeline if t >= t0]
    k = 0
    for (t1, what1), (t2, _what2) in itertools.pairwise(timeline):
        if what1 == "refuse":
            k += 1
            assert t2 - t1 >= r.refusal_wait(k), (k, t2 - t1, r.refusal_wait(k))
    assert sum(what == "refuse" for _, what in timeline) >= 3, timeline


async def _not_busy(rig: LinkRig) -> None:
    _fastrtc(rig).set_auth_refused(False)


def _after_refusal_wait(rig: LinkRig) -> float:
    """The link may be waiting out the wait after the latest refusal (+20 % jitter), or
    be refused once more if its attempt raced the clearing."""
    r = _fastrtc(rig)
    return 1.2 * r.refusal_wait(_refused_since(r) + 1) + r.timing.allowance_s


# -- PBX: faults of the client (the PBX calls us) ------------------------------------------


def _pbx(rig: LinkRig) -> PbxRig:
    assert isinstance(rig, PbxRig), rig
    return rig


async def _client_reset(rig: LinkRig) -> None:
    """The PBX vanishes mid-call: its connection is reset (no closing handshake)."""
    r = _pbx(rig)
    r.ended["lost"] += 1
    r.ws.reset_all()


async def _client_freeze(rig: LinkRig) -> None:
    """The PBX stops sending (half-open): only the idle timeout can end the call."""
    r = _pbx(rig)
    r.ended["idle_timeout"] += 1
    r.ws.freeze()


def _idle_bound(rig: LinkRig) -> float:
    t = rig.timing
    return t.idle_s + t.close_s + t.allowance_s


async def _hold_listening(rig: LinkRig) -> None:
    assert _pbx(rig).link_state() == "up", "the server keeps listening"


def _pbx_redial(rig: LinkRig) -> float:
    return _pbx(rig).redial_s + rig.timing.allowance_s


SLOWLORIS_TRICKLING = 3
SLOWLORIS_SILENT = 1
_REQUEST = b"GET / HTTP/1.1\r\nHost: pbx.example\r\nX-Padding: "


async def _slowloris_conn(port: int, trickle: bool) -> None:
    """One slowloris connection; returns when the server has closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(reader.read(1))  # b"" (closed), a byte, or a reset
    try:
        for i in range(10_000 if trickle else 0):
            writer.write(_REQUEST[i : i + 1] if i < len(_REQUEST) else b"a")
            await writer.drain()
            done, _ = await asyncio.wait([answer], timeout=0.2)
            if done:
                break
        await asyncio.wait([answer])
    except OSError:
        pass  # reset while writing: closed
    finally:
        answer.cancel()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await answer  # retrieved: a reset is the expected end here
        writer.close()


async def _slowloris(rig: LinkRig) -> None:
    """Connections trickle their request a byte at a time (or send nothing); meanwhile a
    second call must still be admitted: slowloris holds no call slot."""
    r = _pbx(rig)
    r.marks["slowloris_t0"] = time.monotonic()
    r.refused["handshake_timeout"] += SLOWLORIS_TRICKLING + SLOWLORIS_SILENT
    r.slow = [
        asyncio.create_task(_slowloris_conn(r.ws.port, trickle=i < SLOWLORIS_TRICKLING))
        for i in range(SLOWLORIS_TRICKLING + SLOWLORIS_SILENT)
    ]
    await asyncio.sleep(0.1)  # the slow ones are in
    await _extra_call(r)


async def _extra_call(r: PbxRig) -> None:
    call = r.new_call()
    await call.connect()
    r.admitted += 1
    r.ended["closed"] += 1
    await call.stream(0.3)
    await call.end()
    await call.close()


async def _slowloris_closed(rig: LinkRig, t_inject: float) -> float:
    """Seconds from the slow connections' start to the last one closed by the link."""
    r = _pbx(rig)
    t0 = r.marks["slowloris_t0"]
    bound = _open_bound(r) - (time.monotonic() - t0)
    await wait_until(lambda: all(t.done() for t in r.slow), bound, "slowloris closed")
    for t in r.slow:
        t.result()  # no harness error
    return time.monotonic() - t0


def _open_bound(rig: LinkRig) -> float:
    return rig.timing.open_s + rig.timing.allowance_s


GARBAGE: list[tuple[str | bytes, str]] = [
    (b"\x00\x01\x02", "binary"),
    ("not json at all", "json"),
    ("[" * 50_000, "json"),
    ('{"callflow":"","audio":""}', "callid"),
    ('{"callid":"g1","audio":null}', "audio"),
    ('{"callid":"g1","audio":"!!not base64!!"}', "base64"),
    ('{"callid":"g1","audio":"QUJD"}', "odd_length"),
    ('{"callid":"g1","audio":"","number":1009}', "number"),
]


async def _garbage(rig: LinkRig) -> None:
    """Garbage frames inside the live call, and one TCP connection that is not HTTP."""
    r = _pbx(rig)
    assert r.call is not None, "a call is playing"
    for message, reason in GARBAGE:
        r.malformed[reason] += 1
        await r.call.send_raw(message)
    r.refused["bad_request"] += 1
    reader, writer = await asyncio.open_connection("127.0.0.1", r.ws.port)
    writer.write(b"\x16\x03\x01\x00\xa5 not HTTP at all\r\n\r\n")
    try:
        await asyncio.wait_for(reader.read(), 5.0)
    except OSError:
        pass
    finally:
        writer.close()


async def _garbage_counted(rig: LinkRig, t_inject: float) -> float:
    r = _pbx(rig)

    def counted() -> bool:
        malformed = r.metric("malformed_total") == sum(r.malformed.values())
        return (
            malformed
            and r.metric("connections_refused_total", reason="bad_request")
            == r.refused["bad_request"]
        )

    await wait_until(counted, r.timing.allowance_s + 2.0, "garbage counted")
    return time.monotonic() - t_inject


async def _wrong_secret(rig: LinkRig) -> None:
    """Someone changed the secret on the PBX: the call breaks, every redial gets 401."""
    r = _pbx(rig)
    r.set_auth_refused(True)
    r.ended["lost"] += 1
    r.ws.reset_all()


async def _hold_401s(rig: LinkRig) -> None:
    r = _pbx(rig)
    t0, n0 = time.monotonic(), r.http_refusals[401]
    warnings0 = sum("wrong secret" in w for w in r.pbx_warnings)
    await wait_until(lambda: r.http_refusals[401] >= n0 + 10, 5.0, "ten 401s")
    _no_up_while(r, t0)
    assert r.link_state() == "up", "the server keeps listening through the storm"
    # one WARNING per address and reason a minute: a storm does not flood the journal
    warnings = sum("wrong secret" in w for w in r.pbx_warnings) - warnings0
    assert warnings <= 1, warnings
    assert not any(PBX_SECRET in w or "4e1a7c9b2d6f8" in w for w in r.pbx_warnings)


async def _right_secret(rig: LinkRig) -> None:
    _pbx(rig).set_auth_refused(False)


STORM = 20


async def _connection_storm(rig: LinkRig) -> None:
    """STORM calls dialled at once beside the live one: max_calls - 1 get in, the rest
    503; the live call plays on."""
    r = _pbx(rig)
    calls = [r.new_call() for _ in range(STORM)]
    results = await asyncio.gather(*(c.connect() for c in calls), return_exceptions=True)
    r.marks["storm_answered"] = time.monotonic()
    statuses = [getattr(getattr(e, "response", None), "status_code", e) for e in results]
    admitted = [c for c, res in zip(calls, results, strict=True) if res is None]
    r.http_refusals[503] += sum(1 for s in statuses if s == 503)
    assert len(admitted) == r.max_calls - 1, statuses
    assert sum(1 for s in statuses if s == 503) == STORM - len(admitted), statuses
    r.admitted += len(admitted)
    r.ended["closed"] += len(admitted)
    for call in admitted:
        await call.stream(0.3)
        await call.end()
        await call.close()


async def _storm_answered(rig: LinkRig, t_inject: float) -> float:
    return rig.marks["storm_answered"] - t_inject


def _storm_bound(rig: LinkRig) -> float:
    return 2 * rig.timing.allowance_s  # STORM handshakes through the proxy, loaded machine


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
    Scenario("refusal_storm", "app refuses every session (concurrency limit) again and again",
             _busy, _not_busy, _quick, _after_refusal_wait, _hold_busy, exact_connects=None),
    Scenario("pbx_client_reset", "PBX vanishes mid-call (TCP reset, no close)",
             _client_reset, _nothing, _quick, _pbx_redial, _hold_listening),
    Scenario("pbx_client_half_open", "PBX stops sending (half-open): idle timeout ends the call",
             _client_freeze, _thaw, _idle_bound, _pbx_redial, _hold_listening),
    Scenario("pbx_slowloris", "4 connections trickle or withhold their handshake",
             _slowloris, _nothing, _open_bound, _pbx_redial, exact_drops=0,
             exact_connects=SLOWLORIS_TRICKLING + SLOWLORIS_SILENT + 1,
             detect=_slowloris_closed),
    Scenario("pbx_garbage", "8 malformed frames in a live call + a non-HTTP connection",
             _garbage, _nothing, _quick, _pbx_redial, exact_drops=0, exact_connects=1,
             detect=_garbage_counted),
    Scenario("pbx_401_storm", "PBX sends a wrong secret (HTTP 401) again and again",
             _wrong_secret, _right_secret, _quick, _pbx_redial, _hold_401s,
             exact_connects=None),
    Scenario("pbx_connection_storm", f"{STORM} calls at once beyond max_calls (HTTP 503)",
             _connection_storm, _nothing, _storm_bound, _pbx_redial, exact_drops=0,
             exact_connects=STORM, detect=_storm_answered),
]  # fmt: skip
