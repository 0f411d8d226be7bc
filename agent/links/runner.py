"""The one reconnect loop every link runs on.

Like python-websockets' ``connect()`` iterator with its ``process_exception`` hook,
a link gives the runner two things:

- ``attempt()``: one connection (or one listening server), from the first byte to its
  end; it raises why it ended (returning counts as "connection ended");
- ``decide(exc, history) -> Outcome``: a pure function of why, and of the refusals in
  a row before it, saying what to show and how long to wait.

The runner owns the rest, the same for every link::

    loop:  status CONNECTING -> attempt() ... link calls runner.up(detail) -> UP
           ends -> decide() -> Reconnector delay (normal / slow / at least N s)
                -> status RETRY or ATTENTION + retry_in, one log line, heartbeat paused
                -> sleep -> reconnects_total += 1 -> loop

One wording and one level per kind of event (rate-limited when it repeats)::

    RETRY       WARNING  "<link> down: <message>; retry in 2.3 s"
    ATTENTION   ERROR    "<link> needs attention: <message>; retry in 120 s"
    a bug       ERROR    "<link> failed unexpectedly: <message>; retry in 0.2 s" + traceback
    up          INFO     "<link> up: <detail>"
    stopped     INFO     "<link> stopped"

The same down line again within :attr:`Runner.repeat_s` goes to DEBUG; the next one
shown says how many were held back ("(3 repeats not shown)").

Two things outside the link cut a wait short or end a connection at once:

- the network (:meth:`Runner.network_changed`, fed by :mod:`agent.netwatch`): when the
  default route goes away, a connection to a non-loopback :attr:`Runner.remote` is
  ended at once ("no network") instead of riding a dead socket until its keepalive
  gives up; when a route is back, a link waiting to retry tries now, with its backoff
  started again;
- the wall clock (:class:`agent.clock.StepDetector`): while a link waits out a slow
  (ATTENTION) delay, a step of the clock (NTP syncing after a boot without a real-time
  clock) ends the wait: credentials refused because of the wrong time are tried again
  at once with the right one.

A link may also end its own attempt on purpose: :meth:`Runner.restart` (a VideoSDK
channel switch) cancels it and starts the next one at once, not as a failure.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.exceptions import WebSocketException

from agent.backoff import Reconnector
from agent.clock import StepDetector
from agent.config_checks import is_loopback_host
from agent.errors import AgentError, LinkError
from agent.links.wire import mask_query
from agent.metrics import Metrics
from agent.secrets import RedactingFilter
from agent.service import Heartbeat
from agent.status import LinkState, StatusBoard

REPEAT_S = 60.0  # the same down line again within this: DEBUG, counted
AT_LEAST_JITTER = 0.2  # a wait the peer asked for is stretched by up to this (devices desync)
# What a link's attempt may raise on purpose; anything else is a bug (logged with its trace).
DOWN_LINE = "%s down: %s; retry in %s%s"
ATTENTION_LINE = "%s needs attention: %s; retry in %s%s"
EXPECTED = (AgentError, OSError, TimeoutError, WebSocketException)
CLOCK_CHECK_S = 5.0  # during a slow wait: how often the wall clock is checked for a step


class NetworkLost(LinkError):
    """The default route went away under a live connection."""


def remote_of(url: str) -> str:
    """The host a link dials (for :meth:`Runner.network_changed`); "" if none."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def seconds(delay: float) -> str:
    """A delay as the log lines say it: "2.3 s" below 10 s, "120 s" from there."""
    return f"{delay:.1f} s" if delay < 10 else f"{delay:.0f} s"


class Delay(enum.Enum):
    """Which wait comes after an attempt."""

    NORMAL = "normal"  # the backoff sequence (reset after a healthy connection)
    SLOW = "slow"  # a person must act first: BackoffPolicy.slow_s


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a link's ``decide`` says about an attempt that ended."""

    state: LinkState  # RETRY or ATTENTION
    message: str  # for the operator: status detail and log line; never a secret
    delay: Delay = Delay.NORMAL
    at_least_s: float = 0.0  # never retry sooner (the peer asked: Retry-After, busy app)
    refusal: bool = False  # counts toward History.refusals (a peer said no to us)
    bug: bool = False  # an unexpected exception: logged with its traceback
    cause: str = ""  # more for the log line (host, errno, TLS reason); not in the status


def retry(
    message: str, *, at_least_s: float = 0.0, refusal: bool = False, cause: str = ""
) -> Outcome:
    """Down for now: RETRY after the backoff's delay (at least ``at_least_s``)."""
    return Outcome(
        LinkState.RETRY,
        message,
        at_least_s=at_least_s,
        refusal=refusal,
        cause=_cause(message, cause),
    )


def attention(message: str, *, refusal: bool = False, cause: str = "") -> Outcome:
    """A person must act (credentials, config): ATTENTION, retried at the slow cadence."""
    return Outcome(
        LinkState.ATTENTION, message, Delay.SLOW, refusal=refusal, cause=_cause(message, cause)
    )


def _cause(message: str, cause: str) -> str:
    return "" if not cause or cause in message else cause


@dataclass(frozen=True, slots=True)
class History:
    """What came before the attempt being decided."""

    refusals: int = 0  # refusal outcomes in a row before this one (an up, or any other
    # outcome, starts the count again)
    attempts: int = 0  # attempts before this one


Decide = Callable[[BaseException, History], Outcome]


class Runner:
    """Runs ``attempt`` for ever with ``decide``'s outcomes; cancel to stop."""

    repeat_s = REPEAT_S

    def __init__(
        self,
        name: str,
        attempt: Callable[[], Coroutine[Any, Any, None]],
        decide: Decide,
        *,
        status: StatusBoard,
        metrics: Metrics,
        reconnector: Reconnector,
        heartbeat: Heartbeat | None = None,
        connecting: str = "",
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``connecting``: the status detail while an attempt is under way."""
        self.name, self.reconnector, self.connecting = name, reconnector, connecting
        self._attempt, self._decide = attempt, decide
        self._status, self._metrics = status, metrics
        self._heartbeat = heartbeat
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._extra = {"LINK": name}
        self._log = logging.getLogger(f"agent.links.{name}")  # the link's own logger
        # the host this link dials, for network changes ("": none, e.g. a server)
        self.remote = ""
        self.steps = StepDetector()
        self._wake = asyncio.Event()
        self._current: asyncio.Task[None] | None = None  # the attempt under way
        self._lost_why = ""  # set when a network change ends the attempt under way
        self._restart_why = ""  # set by restart(): the next attempt at once, no failure
        self._restarted = False  # the last attempt ended by restart(): not a reconnect
        self._slow = False  # the last outcome asked for the slow delay
        self.refusals = 0  # refusal outcomes in a row
        self.attempts = 0
        self._last_line: tuple[LinkState, str] | None = None
        self._last_at = -1e18
        self._held = 0

    # -- what a link calls ---------------------------------------------------------------
    def up(self, detail: str) -> None:
        """The connection is up and carries traffic: reset the refusal count, start the
        healthy timer of the backoff, show UP, log it."""
        self.refusals = 0
        self.reconnector.connected()
        self._status.set_link(self.name, LinkState.UP, detail)
        self._log.info("%s up: %s", self.name, detail, extra=self._extra)

    def show(self, detail: str) -> None:
        """A new status detail while up (no log line)."""
        self._status.set_link(self.name, LinkState.UP, detail)

    def beat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.beat()

    # -- the loop ------------------------------------------------------------------------
    async def run_with(self, uplink: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """:meth:`run`, with the link's uplink pump beside it in one TaskGroup."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(uplink(), name=f"{self.name}-uplink")
            tg.create_task(self.run(), name=f"{self.name}-sessions")

    async def run(self) -> None:
        try:
            while True:
                if self.attempts and not self._restarted:
                    self._metrics.inc("reconnects_total", link=self.name)
                delay = await self.once()
                if self._heartbeat is not None:
                    self._heartbeat.pause()
                await self._pause(delay)
        finally:
            self._status.set_link(self.name, LinkState.STOPPED)
            self._log.info("%s stopped", self.name, extra=self._extra)

    async def once(self) -> float:
        """One attempt and its outcome (status, log line); returns the delay to wait."""
        self.beat()
        self._status.set_link(self.name, LinkState.CONNECTING, self.connecting)
        attempts = self.attempts
        self.attempts += 1
        self._restart_why, self._restarted = "", False
        # The attempt runs as a task of its own so that a lost route can end it (see
        # network_changed); cancelling the runner cancels it too, and waits for its goodbye.
        self._wake.clear()
        self._current = asyncio.create_task(self._attempt(), name=f"{self.name}-attempt")
        try:
            await self._current
            exc: BaseException = LinkError("connection ended")
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if (me is not None and me.cancelling()) or not (self._lost_why or self._restart_why):
                raise
            if self._restart_why and not self._lost_why:
                return self._restarting()
            exc = NetworkLost(self._lost_why)
        except EXPECTED as e:
            exc = e
        except Exception as e:  # a bug: show it, but keep the other links and sources alive
            exc = e
        finally:
            self._current, self._lost_why = None, ""
        # after the attempt: an up during it has started the refusal count again
        outcome = self.outcome(exc, History(self.refusals, attempts))
        return self.report(outcome, exc)

    def outcome(self, exc: BaseException, history: History) -> Outcome:
        if not isinstance(exc, EXPECTED):
            return Outcome(LinkState.RETRY, f"unexpected error ({type(exc).__name__})", bug=True)
        if isinstance(exc, NetworkLost):
            return retry(str(exc))
        return self._decide(exc, history)

    def _restarting(self) -> float:
        self._log.info("%s: %s", self.name, self._restart_why, extra=self._extra)
        self._restart_why, self._restarted = "", True
        return 0.0

    # -- what the agent calls --------------------------------------------------------------
    def restart(self, why: str) -> None:
        """End the attempt under way and start the next one at once (a room switch):
        not a failure, so no down line, no backoff, no reconnect counted. A link waiting
        to retry tries now. ``why`` is logged (INFO)."""
        self._restart_why = why
        if self._current is not None and not self._current.done():
            self._current.cancel()
        else:
            self._wake.set()

    def network_changed(self, present: bool, *, lost: tuple[str, ...] = ()) -> None:
        """The default route changed: ``present`` now or not; ``lost``: interfaces that
        carried it and no longer do.

        A connection under way to a non-loopback :attr:`remote` ends now when an
        interface was lost (its socket went out through it); when a route is there, a
        wait for the next attempt ends now and the backoff starts again. Links without a
        remote (a server) and loopback links are not affected.
        """
        if not self.remote or is_loopback_host(self.remote):
            return
        live = self._current is not None and not self._current.done()
        if lost and self._current is not None and live:
            live = False
            gone = ", ".join(lost)
            self._lost_why = (
                f"network changed (default route via {gone} gone)"
                if present
                else f"no network (default route via {gone} gone)"
            )
            self._current.cancel()
        if present and not live:  # a connection that still works is left alone
            self.reconnector.reset()
            self._wake.set()

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` before the next attempt, unless woken (network back, clock step;
        a wake that came while the last attempt was ending counts)."""
        slow = self._slow
        if slow:
            self.steps.stepped()  # steps count from here on
        left = delay
        while left > 0:
            step = min(left, CLOCK_CHECK_S) if slow else left
            left -= step
            sleeper = asyncio.ensure_future(self._sleep(step))
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
                if sleeper.done():
                    sleeper.result()  # what the sleep raised, raised here
            finally:
                sleeper.cancel()
                woken.cancel()
            if self._wake.is_set():
                if self._restart_why:
                    self._log.info("%s: %s", self.name, self._restart_why, extra=self._extra)
                else:
                    self._log.info("%s: network back, retrying now", self.name, extra=self._extra)
                return
            jump = self.steps.stepped() if slow else 0.0
            if jump:
                self._log.info(
                    "%s: the clock stepped by %+.0f s; retrying now", self.name, jump,
                    extra=self._extra,
                )  # fmt: skip
                return

    def report(self, outcome: Outcome, exc: BaseException | None = None) -> float:
        """Apply ``outcome``: count, pick the delay, show it, log it; return the delay."""
        self.refusals = self.refusals + 1 if outcome.refusal else 0
        self._slow = outcome.delay is Delay.SLOW
        at_least = outcome.at_least_s
        if at_least:
            at_least *= 1.0 + AT_LEAST_JITTER * self._rng()
        delay = self.reconnector.next_delay(slow=outcome.delay is Delay.SLOW, at_least_s=at_least)
        self._status.set_link(self.name, outcome.state, outcome.message, retry_in=delay)
        if outcome.state is LinkState.ATTENTION:
            self._status.set_error(f"{self.name}: {outcome.message}")
        self._line(outcome, delay, exc)
        return delay

    @staticmethod
    def text(outcome: Outcome) -> str:
        """The log line's account of an outcome: the message, and the cause if it adds one."""
        return f"{outcome.message} ({outcome.cause})" if outcome.cause else outcome.message

    def _line(self, outcome: Outcome, delay: float, exc: BaseException | None) -> None:
        if outcome.bug and exc is not None:
            trace = "".join(traceback.format_exception(exc))
            self._log.error(
                "%s failed unexpectedly: %s; retry in %s\n%s",
                self.name,
                outcome.message,
                seconds(delay),
                RedactingFilter.scrub(mask_query(trace)),
                extra=self._extra,
            )
            return
        attn = outcome.state is LinkState.ATTENTION
        text = self.text(outcome)
        key = (outcome.state, text)
        now = self._clock()
        if key == self._last_line and now - self._last_at < self.repeat_s:
            self._held += 1
            level = logging.DEBUG
            held = ""
        else:
            level = logging.ERROR if attn else logging.WARNING
            held = ""
            if self._held:
                same = key == self._last_line
                held = (
                    f" ({self._held} repeats not shown)"
                    if same
                    else f" (previous line repeated {self._held} more times)"
                )
            self._last_line, self._last_at, self._held = key, now, 0
        self._log.log(
            level,
            ATTENTION_LINE if attn else DOWN_LINE,
            self.name,
            text,
            seconds(delay),
            held,
            extra=self._extra,
        )
