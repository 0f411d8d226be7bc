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

from websockets.exceptions import WebSocketException

from agent.backoff import Reconnector
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
        attempt: Callable[[], Awaitable[None]],
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
                if self.attempts:
                    self._metrics.inc("reconnects_total", link=self.name)
                delay = await self.once()
                if self._heartbeat is not None:
                    self._heartbeat.pause()
                await self._sleep(delay)
        finally:
            self._status.set_link(self.name, LinkState.STOPPED)
            self._log.info("%s stopped", self.name, extra=self._extra)

    async def once(self) -> float:
        """One attempt and its outcome (status, log line); returns the delay to wait."""
        self.beat()
        self._status.set_link(self.name, LinkState.CONNECTING, self.connecting)
        attempts = self.attempts
        self.attempts += 1
        try:
            await self._attempt()
            exc: BaseException = LinkError("connection ended")
        except EXPECTED as e:
            exc = e
        except Exception as e:  # a bug: show it, but keep the other links and sources alive
            exc = e
        # after the attempt: an up during it has started the refusal count again
        outcome = self.outcome(exc, History(self.refusals, attempts))
        return self.report(outcome, exc)

    def outcome(self, exc: BaseException, history: History) -> Outcome:
        if not isinstance(exc, EXPECTED):
            return Outcome(LinkState.RETRY, f"unexpected error ({type(exc).__name__})", bug=True)
        return self._decide(exc, history)

    def report(self, outcome: Outcome, exc: BaseException | None = None) -> float:
        """Apply ``outcome``: count, pick the delay, show it, log it; return the delay."""
        self.refusals = self.refusals + 1 if outcome.refusal else 0
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
