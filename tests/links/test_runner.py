"""agent.links.runner: the one reconnect loop, driven with a fake clock and scripted
attempts (no sockets): delays, the healthy reset, the slow cadence, waits a peer asked
for, refusals in a row, and the one wording and level of each kind of log line."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

import pytest

from agent.backoff import BackoffPolicy, Reconnector
from agent.errors import AuthRefused, LinkError
from agent.links import orgo
from agent.links.runner import Decide, History, Outcome, Runner, attention, retry
from agent.metrics import Metrics
from agent.status import LinkState, StatusBoard

POLICY = BackoffPolicy(initial_s=1.0, factor=2.0, cap_s=8.0, jitter=0.0, slow_s=120.0,
                       healthy_after_s=5.0)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A Runner over a script of attempts; each entry raises, or runs a callable."""

    def __init__(self, decide: Decide, policy: BackoffPolicy = POLICY, jitter: float = 0.0) -> None:
        self.clock = Clock()
        self.status = StatusBoard()
        self.metrics = Metrics()
        self.script: list[BaseException | Callable[[Runner], None] | None] = []
        self.histories: list[History] = []

        def recording(exc: BaseException, history: History) -> Outcome:
            self.histories.append(history)
            return decide(exc, history)

        self.runner = Runner(
            "demo",
            self._attempt,
            recording,
            status=self.status,
            metrics=self.metrics,
            reconnector=Reconnector(policy, clock=self.clock, rng=lambda: 0.0),
            clock=self.clock,
            rng=lambda: jitter,
        )
        CLOCKS[self.runner] = self.clock

    async def _attempt(self) -> None:
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        if step is not None:
            step(self.runner)

    async def delays(self, *steps: BaseException | Callable[[Runner], None] | None) -> list[float]:
        self.script = list(steps)
        out = []
        while self.script:
            out.append(await self.runner.once())
            self.clock.now += out[-1]
        return out


def plain(exc: BaseException, history: History) -> Outcome:
    if isinstance(exc, AuthRefused):
        return attention("credentials refused")
    return retry(str(exc))


def up_for(seconds: float, then: BaseException) -> Callable[[Runner], None]:
    """An attempt that comes up, carries traffic ``seconds`` (fake clock), then fails."""

    def run(runner: Runner) -> None:
        runner.up("peer 1")
        CLOCKS[runner].now += seconds
        raise then

    return run


CLOCKS: dict[Runner, Clock] = {}


async def test_delays_grow_to_the_cap_and_reset_after_a_healthy_connection() -> None:
    rig = Rig(plain)
    down = LinkError("peer gone")
    assert await rig.delays(down, down, down, down, down) == [1.0, 2.0, 4.0, 8.0, 8.0]
    # up long enough (≥ healthy_after_s): the sequence starts again
    assert await rig.delays(up_for(6.0, down), down) == [1.0, 2.0]
    # up, but dropped at once (flapping): no reset
    assert await rig.delays(up_for(1.0, down)) == [4.0]
    assert rig.metrics.total("reconnects_total", link="demo") == 0  # once() does not count


async def test_attention_waits_the_slow_cadence_and_shows_the_error() -> None:
    rig = Rig(plain)
    assert await rig.delays(AuthRefused("no")) == [120.0]
    part = rig.status.links["demo"]
    assert part.state is LinkState.ATTENTION and part.detail == "credentials refused"
    assert rig.status.last_error == "demo: credentials refused"


async def test_a_wait_the_peer_asked_for_is_a_floor_stretched_by_jitter() -> None:
    def busy(exc: BaseException, history: History) -> Outcome:
        return retry("busy", at_least_s=10.0)

    assert await Rig(busy).delays(LinkError("x")) == [10.0]
    most = Rig(busy, jitter=1.0)  # the most jitter: +20 %
    assert await most.delays(LinkError("x")) == pytest.approx([12.0])


async def test_refusals_in_a_row_reach_decide_and_reset_on_anything_else() -> None:
    rig = Rig(functools.partial(orgo.decide, computer_id="c1"))
    bad = orgo.TokenRefused("4401")
    await rig.delays(bad, bad)
    assert rig.status.links["demo"].state is LinkState.RETRY
    await rig.delays(bad)  # the third 4401 in a row
    assert rig.status.links["demo"].state is LinkState.ATTENTION
    assert rig.status.links["demo"].detail == "computer c1 refused its password 3 times in a row"
    assert [h.refusals for h in rig.histories] == [0, 1, 2]
    await rig.delays(orgo.ComputerOffline("x"), bad)  # another failure: the count restarts
    assert rig.histories[-1].refusals == 0
    assert rig.status.links["demo"].state is LinkState.RETRY
    await rig.delays(bad, up_for(0.1, bad))  # an up in between restarts it too
    assert rig.histories[-1].refusals == 0


async def test_each_kind_of_line_has_one_wording_and_one_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.links.demo")
    rig = Rig(plain)

    def boom(runner: Runner) -> None:
        raise RuntimeError("sound card vanished")

    await rig.delays(LinkError("peer gone"), AuthRefused("no"), boom, up_for(0.0, LinkError("x")))
    lines = [(r.levelname, r.getMessage().split("\n")[0]) for r in caplog.records]
    assert lines == [
        ("WARNING", "demo down: peer gone; retry in 1.0 s"),
        ("ERROR", "demo needs attention: credentials refused; retry in 120 s"),
        ("ERROR", "demo failed unexpectedly: unexpected error (RuntimeError); retry in 4.0 s"),
        ("INFO", "demo up: peer 1"),
        ("WARNING", "demo down: x; retry in 8.0 s"),
    ]
    assert "sound card vanished" in caplog.records[2].getMessage()  # the traceback is kept
    assert all(getattr(r, "LINK", "") == "demo" for r in caplog.records)


async def test_the_same_line_again_is_held_back_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.links.demo")
    rig = Rig(plain, BackoffPolicy(initial_s=1.0, factor=1.0, jitter=0.0))
    down = LinkError("peer gone")
    await rig.delays(down, down, down)  # within a minute: one WARNING, two DEBUG
    assert [r.levelname for r in caplog.records] == ["WARNING", "DEBUG", "DEBUG"]
    rig.clock.now += 60.0
    await rig.delays(down)
    assert caplog.records[-1].levelname == "WARNING"
    assert caplog.records[-1].getMessage() == (
        "demo down: peer gone; retry in 1.0 s (2 repeats not shown)"
    )
    await rig.delays(LinkError("other"))  # a different line is shown at once
    assert caplog.records[-1].levelname == "WARNING"
    await rig.delays(down, down, down, LinkError("other"))
    assert caplog.records[-1].getMessage() == (
        "demo down: other; retry in 1.0 s (previous line repeated 2 more times)"
    )


async def test_run_counts_reconnects_pauses_and_ends_stopped() -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        if len(slept) == 3:
            raise asyncio.CancelledError

    async def attempt() -> None:
        raise LinkError("down")

    status, metrics = StatusBoard(), Metrics()
    runner = Runner("demo", attempt, plain, status=status, metrics=metrics,
                    reconnector=Reconnector(POLICY, rng=lambda: 0.0), sleep=sleep)  # fmt: skip
    with pytest.raises(asyncio.CancelledError):
        await runner.run()
    assert slept == [1.0, 2.0, 4.0]
    assert metrics.total("reconnects_total", link="demo") == 2
    assert status.links["demo"].state is LinkState.STOPPED


async def test_a_clean_end_is_a_drop_too() -> None:
    rig = Rig(plain)
    assert await rig.delays(None) == [1.0]
    assert rig.status.links["demo"].detail == "connection ended"
