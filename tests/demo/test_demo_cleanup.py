"""`field-agent demo` leaves nothing in $TMPDIR (its work folder holds credentials); the
speaker WAV the summary names is outside it and still there afterwards."""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import pytest

from tests.conftest import agent_cmd, subprocess_env

pytestmark = pytest.mark.slow


def demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    tmpdir, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmpdir.mkdir()
    cwd.mkdir(exist_ok=True)
    r = subprocess.run(
        agent_cmd("--log-level", "WARNING", "demo", "--duration", "2.5", *args),
        capture_output=True, text=True, env=subprocess_env(TMPDIR=str(tmpdir)),
        timeout=60, cwd=cwd, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r, tmpdir, cwd


def speaker_named(summary: str) -> str:
    m = re.search(r"^  speaker: (.+?)(?: \(-?[\d.]+ dBFS rms\))?$", summary, re.M)
    assert m, summary
    return m.group(1)


def test_a_demo_run_leaves_nothing_in_tmpdir_and_keeps_the_speaker_wav(tmp_path: Path) -> None:
    r, tmpdir, cwd = demo(tmp_path)
    assert list(tmpdir.iterdir()) == []
    wav = Path(speaker_named(r.stdout))
    assert wav == cwd / "field-agent-demo-speaker.wav"
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 48000 and w.getnframes() > 48000  # the speaker played


def test_keep_keeps_the_work_folder(tmp_path: Path) -> None:
    _, tmpdir, _ = demo(tmp_path, "--keep")
    (work,) = tmpdir.iterdir()
    assert work.name.startswith("field-agent-demo-")
    assert sorted(p.name for p in (work / "credentials").iterdir()) == [
        "orgo-api-key", "videosdk-token",
    ]  # fmt: skip


def test_a_read_only_folder_gets_no_wav_and_the_summary_says_so(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cwd.chmod(0o555)
    try:
        r, tmpdir, _ = demo(tmp_path)
    finally:
        cwd.chmod(0o755)
    if list(cwd.iterdir()):  # root ignores the mode: nothing to show there
        pytest.skip("running as root: a read-only folder is writable")
    assert speaker_named(r.stdout) == "(not saved: --speaker-out FILE.wav keeps it)"
    assert list(tmpdir.iterdir()) == []
