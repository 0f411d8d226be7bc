"""`field-agent demo` on a real terminal (tmux): keys in, the screen a person sees out.

The demo runs in a tmux pane exactly as a person starts it; the test types into the
pane (space held by key repeat, m, +, k, q or Ctrl-C) and reads the screen with
``capture-pane``. The pane's terminal settings are saved before the demo and after
it exits, and must be identical (the demo restores cbreak mode however it ends).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("tmux") is None, reason="tmux not installed (apt install tmux)"
    ),
]


class Pane:
    """One tmux server (own socket) with one pane running a shell command."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "tmux.sock"

    def tmux(self, *args: str) -> str:
        r = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return r.stdout

    def start(self, command: str, width: int = 140, height: int = 32) -> None:
        # the server (and the pane's command) inherits this environment
        subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", "/dev/null", "new-session", "-d",
             "-s", "demo", "-x", str(width), "-y", str(height), command],
            env=subprocess_env(), check=True, timeout=10,
        )  # fmt: skip

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "demo", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "demo")

    def wait_for(self, pred: Callable[[str], object], within_s: float, what: str) -> str:
        deadline = time.monotonic() + within_s
        while True:
            text = self.screen()
            if pred(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} on screen within {within_s} s:\n{text}")
            time.sleep(0.05)

    def kill(self) -> None:
        subprocess.run(
            ["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=10
        )


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    # a short directory: the tmux socket path must fit in sun_path (108 bytes)
    workdir = Path(tempfile.mkdtemp(prefix="fa-tty-"))
    p = Pane(workdir)
    yield p
    p.kill()
    shutil.rmtree(workdir, ignore_errors=True)


def start_demo(pane: Pane, speaker: Path) -> None:
    """The demo as a person types it, with the terminal settings saved around it."""
    demo = shlex.join([sys.executable, "-m", "agent", "demo", "--speaker-out", str(speaker)])
    w = pane.workdir
    pane.start(
        # stty.after appears whole (mv), never empty: the test reads it once "demo exited" shows
        f"stty -g > {w}/stty.before; {demo}; echo demo exited $?; "
        f"stty -g > {w}/stty.tmp && mv {w}/stty.tmp {w}/stty.after; "
        "sleep 600"
    )
    pane.wait_for(
        lambda s: "videosdk  ● up (room demo-room)" in s and "status ● on" in s, 30, "links up"
    )


def row(screen: str, name: str) -> str:
    return next(line for line in screen.splitlines() if line.startswith(f"│ {name} "))


def summary(pane: Pane) -> tuple[str, dict[str, float]]:
    text = pane.wait_for(lambda s: "demo exited" in s, 20, "the demo's exit")
    assert "demo exited 0" in text, text
    m = re.search(
        r"(\d+) sessions, (\d+) reconnect\(s\), (\d+) frames sent, (\d+) voiced "
        r"\(PTT held ([\d.]+) s\)",
        text,
    )
    assert m, text
    keys = ("sessions", "reconnects", "sent", "voiced", "held_s")
    return text, dict(zip(keys, map(float, m.groups()), strict=True))


def terminal_restored(pane: Pane) -> bool:
    w = pane.workdir
    deadline = time.monotonic() + 5
    while not (w / "stty.after").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    before, after = (w / "stty.before").read_text(), (w / "stty.after").read_text()
    return before == after and before.strip() != ""


def test_keys_drive_the_device_and_the_screen_shows_it(pane: Pane, tmp_path: Path) -> None:
    speaker = tmp_path / "speaker.wav"
    start_demo(pane, speaker)

    # Hold space: a held key reaches a terminal as repeats (every 40 ms here).
    t0 = time.monotonic()
    shown_talking = ""
    while time.monotonic() - t0 < 2.0:
        pane.keys("Space")
        if not shown_talking and time.monotonic() - t0 > 1.0:
            shown_talking = pane.screen()
        time.sleep(0.04)
    held_for = time.monotonic() - t0
    assert "TALKING  (space held)" in shown_talking and "talk ● on" in shown_talking
    assert re.search(r"room     hears (4\d|5\d) voiced fr/s", shown_talking), shown_talking
    pane.wait_for(lambda s: "idle (hold space to talk)" in s, 3, "PTT released")

    pane.keys("m")
    pane.wait_for(lambda s: "MUTED" in s, 3, "muted")
    pane.keys("+")
    pane.wait_for(lambda s: "volume 90 %" in s, 3, "volume up")

    pane.keys("k")  # kill the room server: the link drops, the LED blinks, it reconnects
    seen_down = pane.wait_for(lambda s: "status ● blink 1 Hz" in s, 5, "the room link down")
    assert "● up (room" not in row(seen_down, "videosdk")
    back = pane.wait_for(
        lambda s: re.search(r"● up \(room demo-room\).* 1 \(\d+ tries\)", row(s, "videosdk")),
        15,
        "the reconnect",
    )
    assert "status ● on" in back

    pane.keys("q")
    text, s = summary(pane)
    assert s["reconnects"] == 1 and s["sessions"] == 2
    # PTT stayed down while the repeats came, and let go 0.4 s after the last one
    assert held_for - 0.3 <= s["held_s"] <= held_for + 1.0, (held_for, text)
    assert abs(s["voiced"] - 50 * s["held_s"]) <= 5, text  # 50 voiced frames/s while held
    assert terminal_restored(pane)
    assert speaker.stat().st_size > 48000 * 2 * 3  # the speaker recorded seconds of audio


def test_ctrl_c_while_talking_quits_cleanly_and_restores_the_terminal(
    pane: Pane, tmp_path: Path
) -> None:
    start_demo(pane, tmp_path / "speaker.wav")
    pane.keys("t")  # latched: talking until told otherwise
    pane.wait_for(lambda s: "TALKING  (latched with t)" in s, 5, "talking")
    pane.keys("C-c")
    text, s = summary(pane)
    assert s["voiced"] > 0 and "Traceback" not in text
    assert terminal_restored(pane)


def test_key_e_holds_the_emergency_button_and_again_cancels(pane: Pane, tmp_path: Path) -> None:
    start_demo(pane, tmp_path / "speaker.wav")
    pane.keys("e")  # the emergency button held 2.2 s
    shown = pane.wait_for(lambda s: "EMERGENCY" in s, 5, "the emergency")
    assert "TALKING  (emergency: mic open)" in shown  # the mic opened without PTT
    assert "talk ● blink 10 Hz" in shown
    assert "EMERGENCY triggered by the button" in shown  # the log pane
    time.sleep(0.5)  # the key's hold ends
    pane.keys("e")  # held again: cancelled
    pane.wait_for(lambda s: "emergency cancelled by the button" in s, 5, "the cancel")
    gone = pane.wait_for(lambda s: "idle (hold space to talk)" in s, 3, "the mic closed")
    assert "  EMERGENCY" not in row(gone, "PTT")
    pane.keys("q")
    text, _s = summary(pane)
    assert "Traceback" not in text
