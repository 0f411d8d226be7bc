"""Audio devices as they come (issue 17, item 10), on real alsa-lib (TESTBED.md):
a stereo-only mic, a PCM that is not paced by a clock, a driver stuck on one buffer."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.audio.capture import Capture
from agent.hw.alsa import AlsaSink, AlsaSource
from agent.metrics import Metrics
from agent.pcm import Frame
from agent.status import LinkState, StatusBoard
from tests.audio.testbed import AlsaTestbed
from tests.conftest import REPO, agent_cmd, subprocess_env


def _with_devices(alsa: AlsaTestbed, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """More PCMs for this test: alsa-lib reloads when $ALSA_CONFIG_PATH changes."""
    extra = alsa.directory / f"extra-{os.getpid()}-{time.monotonic_ns()}.conf"
    extra.write_text(text)
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"{alsa.config_path}:{extra}")


async def _frames(capture: Capture, count: int) -> list[Frame]:
    got: list[Frame] = []
    async with contextlib.aclosing(capture.frames()) as stream:
        async for frame in stream:
            got.append(frame)
            if len(got) == count:
                break
    return got


async def test_a_stereo_only_mic_is_opened_as_it_is_and_downmixed(
    alsa: AlsaTestbed, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `multi` with two bindings offers exactly 2 channels, as a stereo-only hw: mic does
    _with_devices(
        alsa, monkeypatch,
        'pcm.stereomic { type multi slaves.a { pcm "testmic" channels 2 } '
        "bindings.0 { slave a channel 0 } bindings.1 { slave a channel 1 } }\n",
    )  # fmt: skip
    # (multi reads its slave through mmap, which the file plugin's infile does not feed:
    # the content is the null slave's; the downmix itself is the processor's test and
    # the whole agent's, test_audio_faults.py)
    metrics, status = Metrics(), StatusBoard()
    source = AlsaSource("stereomic", 8000, metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="agent.hw.alsa"):
        frames = await _frames(Capture(source, metrics=metrics, status=status), 10)
    assert source.channels == 2 and source.rate == 8000
    assert status.devices["mic"].state is LinkState.UP
    assert [f.pcm.size for f in frames] == [160] * 10  # mono uplink frames
    assert "mic stereomic: runs at 8000 Hz x2, not the 8000 Hz x1 asked; downmixing" in (
        caplog.text
    )


def test_an_unpaced_pcm_is_detected_and_paced_in_software(
    alsa: AlsaTestbed, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    source = AlsaSource("null", 8000, metrics=metrics)
    sink = AlsaSink("null", 48000, metrics=metrics)
    source.open()
    sink.open()
    t0 = time.monotonic()
    cpu0 = time.process_time()
    reads = 0
    with caplog.at_level(logging.WARNING, logger="agent.hw.alsa"):
        while time.monotonic() - t0 < 2.0:
            source.read()
            sink.write(np.zeros(960, np.int16))
            reads += 1
    cpu = time.process_time() - cpu0
    source.close()
    sink.close()
    print(f"null: {reads} periods in 2 s, {cpu:.2f} s CPU")
    assert source.unpaced and sink.unpaced
    # the first half second of audio goes at once (that is how it is noticed), then 50/s
    assert 25 + 70 <= reads <= 25 + 110, reads
    assert metrics.total("audio_unpaced_total", device="mic") == 1
    assert metrics.total("audio_unpaced_total", device="speaker") == 1
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "capture device null is not paced by a clock (e.g. 'null'): pacing it in software",
        "playback device null is not paced by a clock (e.g. 'null'): pacing it in software",
    ]


def test_a_sink_declared_clocked_is_never_paced_in_software(
    alsa: AlsaTestbed, caplog: pytest.LogCaptureFixture
) -> None:
    """``clocked=True`` (the acoustic rig's pulse streams, which stall and then take a
    burst): the judgement is skipped, so a burst is written as fast as the device takes
    it and nothing is logged or counted."""
    metrics = Metrics()
    sink = AlsaSink("null", 48000, metrics=metrics, clocked=True)
    sink.open()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="agent.hw.alsa"):
        for _ in range(100):  # 2 s of audio
            sink.write(np.zeros(960, np.int16))
    elapsed = time.monotonic() - t0
    sink.close()
    assert not sink.unpaced
    assert elapsed < 1.0, elapsed  # not slowed to real time
    assert metrics.total("audio_unpaced_total", device="speaker") == 0
    assert "not paced" not in caplog.text


def test_a_paced_mic_is_left_alone(pulse: AlsaTestbed) -> None:
    pulse.write_mic(np.ones(8000 * 3, np.int16))
    source = AlsaSource("pacedmic", 8000, metrics=Metrics())
    source.open()
    try:
        for _ in range(75):  # 1.5 s
            source.read()
    finally:
        source.close()
    assert not source.unpaced


async def test_a_mic_stuck_on_one_buffer_is_reported_like_a_silent_one(
    alsa: AlsaTestbed, caplog: pytest.LogCaptureFixture
) -> None:
    """The file plugin replays one non-zero 20 ms period again and again: what a driver
    stuck on one DMA buffer delivers. Status, counter, one log line; frames go on."""
    period = np.random.default_rng(7).integers(-3000, 3000, 160).astype(np.int16)
    alsa.write_mic(np.tile(period, 50 * 4))  # 4 s of the same period
    metrics, status = Metrics(), StatusBoard()
    capture = Capture(
        AlsaSource("testmic", 8000, metrics=metrics),
        metrics=metrics, status=status, silence_alarm_s=1.0, queue_frames=500,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="agent.audio.capture"):
        frames = await _frames(capture, 50 * 3)
    reports = [r.getMessage() for r in caplog.records if "repeating buffer" in r.getMessage()]
    assert reports == [
        "mic delivers one repeating buffer: the same 160 samples from testmic again and again "
        "for 1 s (sound driver stuck? unplug and replug the card)"
    ]
    assert status.last_error == "mic delivers one repeating buffer"
    assert metrics.total("mic_stuck_alarms_total") == 1
    assert len(frames) == 150 and all(np.array_equal(f.pcm, period) for f in frames)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_agent_on_null_devices_does_not_spin_a_core(tmp_path: Path) -> None:
    """`field-agent run` with ALSA `null` as mic and speaker: it says so, paces both, and
    captures ~50 frames a second; the process CPU over 3 s is printed (the number)."""
    port = _free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nid = "d1"\n[videosdk]\nenabled = false\n'
        '[audio]\ncapture_device = "null"\nplayback_device = "null"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    proc = subprocess.Popen(
        agent_cmd("run", "--config", str(cfg), "--credentials", str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=subprocess_env(HOME=str(tmp_path)), cwd=REPO,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/status"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url, timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "no /status"
                time.sleep(0.2)
        time.sleep(1.5)  # past the detection
        c0, cpu0, t0 = (
            httpx.get(url).json()["audio"]["frames_captured"],
            _cpu_s(proc.pid),
            (time.monotonic()),
        )
        time.sleep(3.0)
        c1, cpu1, t1 = (
            httpx.get(url).json()["audio"]["frames_captured"],
            _cpu_s(proc.pid),
            (time.monotonic()),
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0]
    fps = (c1 - c0) / (t1 - t0)
    cpu = (cpu1 - cpu0) / (t1 - t0)
    print(f"null mic and speaker: {fps:.1f} frames/s captured, process CPU {cpu:.0%} of a core")
    assert re.search(
        r"capture device null is not paced by a clock \(e\.g\. 'null'\): pacing it in software",
        out,
    ), out
    assert "playback device null is not paced by a clock" in out, out
    assert 40 <= fps <= 60, fps
    assert cpu < 0.5, f"{cpu:.0%} of a core"  # generous: it was a whole core before


def test_a_device_reopen_out_of_file_descriptors_is_counted_and_not_called_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import alsaaudio

    from agent.errors import AudioError, DeviceUnavailable

    def no_fds(**_kw: object) -> None:
        raise alsaaudio.ALSAAudioError("Too many open files [hw:CARD=U0x46d,DEV=0]")

    monkeypatch.setattr(alsaaudio, "PCM", no_fds)
    metrics = Metrics()
    source = AlsaSource("hw:CARD=U0x46d,DEV=0", 8000, metrics=metrics, label="usbmic")
    with caplog.at_level(logging.WARNING, logger="agent.resources"):
        for _ in range(3):
            with pytest.raises(AudioError, match="out of file descriptors") as e:
                source.open()
            assert not isinstance(e.value, DeviceUnavailable)
    assert metrics.total("resource_exhausted_total", resource="fds", where="usbmic open") == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("out of file descriptors (usbmic open;")
