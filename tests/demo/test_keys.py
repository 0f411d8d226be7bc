"""The keyboard as hardware: cbreak mode on a real pty, keys to actions, PTT from key repeat."""

from __future__ import annotations

import asyncio
import os
import pty
import termios
from collections.abc import Iterator

import pytest

from agent.demo.keys import Keyboard, PttKeys


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """(master, slave) of a real pseudo-terminal, in its default cooked mode."""
    master, slave = pty.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def _cooked(fd: int) -> bool:
    lflag = termios.tcgetattr(fd)[3]
    return bool(lflag & termios.ICANON) and bool(lflag & termios.ECHO)


async def test_keys_arrive_one_at_a_time_and_the_terminal_is_restored(
    terminal: tuple[int, int],
) -> None:
    master, slave = terminal
    before = termios.tcgetattr(slave)
    loop = asyncio.get_running_loop()
    typed: list[str] = []
    got_q = asyncio.Event()
    keys = {"m": lambda: typed.append("m"), "k": lambda: typed.append("k"), "q": got_q.set}
    with Keyboard(loop, keys, fd=slave):
        assert not _cooked(slave)  # cbreak: no line buffering, no echo
        os.write(master, b"mxK")  # no Enter: each key acts at once; unknown keys are ignored
        os.write(master, b"q")
        async with asyncio.timeout(5):
            await got_q.wait()
    assert typed == ["m", "k"]
    assert termios.tcgetattr(slave) == before


async def test_the_terminal_is_restored_when_the_demo_fails(terminal: tuple[int, int]) -> None:
    _, slave = terminal
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError), Keyboard(asyncio.get_running_loop(), {}, fd=slave):
        assert not _cooked(slave)
        raise RuntimeError("boom")
    assert termios.tcgetattr(slave) == before and _cooked(slave)


class _Ptt:
    """Records PttKeys changes with the loop time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.changes: list[tuple[float, bool]] = []

    def __call__(self, talk: bool) -> None:
        self.changes.append((self.loop.time(), talk))


async def test_held_space_talks_until_the_repeats_stop() -> None:
    loop = asyncio.get_running_loop()
    rec = _Ptt(loop)
    ptt = PttKeys(loop, rec, first_hold_s=0.3, repeat_hold_s=0.1)
    t0 = loop.time()
    ptt.hold()  # the press; repeats start after a delay longer than repeat_hold_s
    await asyncio.sleep(0.2)
    assert ptt.talking
    for _ in range(10):  # key repeat every 30 ms
        ptt.hold()
        await asyncio.sleep(0.03)
    last_repeat = loop.time() - 0.03
    await asyncio.sleep(0.4)
    assert [talk for _, talk in rec.changes] == [True, False]  # one press, one release
    assert rec.changes[0][0] - t0 < 0.05
    assert rec.changes[1][0] - last_repeat == pytest.approx(0.1, abs=0.08)


async def test_a_single_tap_talks_for_the_first_hold_only() -> None:
    loop = asyncio.get_running_loop()
    rec = _Ptt(loop)
    ptt = PttKeys(loop, rec, first_hold_s=0.15, repeat_hold_s=0.05)
    ptt.hold()
    await asyncio.sleep(0.3)
    (t_on, on), (t_off, off) = rec.changes
    assert (on, off) == (True, False) and t_off - t_on == pytest.approx(0.15, abs=0.08)


async def test_latch_keeps_talking_through_a_held_space_and_close_releases() -> None:
    loop = asyncio.get_running_loop()
    rec = _Ptt(loop)
    ptt = PttKeys(loop, rec, first_hold_s=0.05, repeat_hold_s=0.05)
    ptt.toggle_latch()
    ptt.hold()
    await asyncio.sleep(0.15)  # the space "released": still latched
    assert ptt.talking and [t for _, t in rec.changes] == [True]
    ptt.toggle_latch()
    assert not ptt.talking
    ptt.hold()
    ptt.close()
    assert [t for _, t in rec.changes] == [True, False, True, False]
