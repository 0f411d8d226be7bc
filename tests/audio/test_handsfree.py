"""Hands-free processing block: bad input, streaming shape, the far-end tap, the capture
stage, loading only when asked, and its config keys (the rig tests are in
test_handsfree_rig.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agent import config
from agent.audio.capture import CaptureProcessor
from agent.audio.handsfree import (
    BLOCK,
    PROCESS_RATE,
    FarEndTap,
    HandsFree,
    HandsFreeSettings,
    HandsFreeStage,
    library_available,
    resolve,
    stage_factory,
)
from agent.errors import ConfigError
from agent.metrics import Metrics
from agent.pcm import Pcm, dbfs
from agent.reload import plan
from agent.sandbox.voices import talker

from .signals import tone

needs_library = pytest.mark.skipif(
    not library_available() and not os.environ.get("CI"),
    reason="pywebrtc-audio not installed (pip install 'field-agent[handsfree]')",
)
ROOT = Path(__file__).resolve().parents[2]
ALL = HandsFreeSettings(echo_cancel=True, noise_suppression=2, auto_gain=True)


class BrokenLibrary:
    """The library failing at run time (a bug in a new release, a bad build)."""

    stream_delay_ms = 0
    speech_probability = 0.0
    gain_db = 0.0

    def __init__(self, settings: HandsFreeSettings) -> None:
        self.calls = 0

    def process(self, near: Pcm, far: Pcm | None = None) -> Pcm:
        self.calls += 1
        raise RuntimeError("apm: internal error -11")


@needs_library
def test_bad_input_is_counted_logged_once_and_passed_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    hf = HandsFree(ALL, metrics=metrics)
    mic = talker(PROCESS_RATE, 1.0, seed=2)
    out = []
    with caplog.at_level(logging.WARNING, logger="agent.audio.handsfree"):
        for i in range(0, mic.size, 320):
            far = np.zeros(100, np.int16)  # the wrong length, every time
            out.append(hf.process(mic[i : i + 320], far, 0.05))
        nan = np.full(320, np.nan, np.float32)
        out.append(hf.process(nan, np.zeros(320, np.int16), float("nan")))
    assert sum(o.size for o in out) == mic.size + 320  # nothing lost, nothing stuck
    assert metrics.get("handsfree_errors_total", reason="far_length") == 50
    assert metrics.get("handsfree_errors_total", reason="nan") == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "far end of 100 samples" in m]) == 1  # rate-limited
    assert any("not finite" in m for m in lines)
    assert not out[-1].any()  # NaN became silence, not noise


def test_the_library_raising_passes_the_mic_through(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    hf = HandsFree(ALL, metrics=metrics, processor=BrokenLibrary)
    mic = tone(PROCESS_RATE, 440.0, 1.0, dbfs=-20.0)
    with caplog.at_level(logging.WARNING, logger="agent.audio.handsfree"):
        out = np.concatenate(
            [hf.process(mic[i : i + 320], mic[i : i + 320]) for i in range(0, mic.size, 320)]
        )
    assert np.array_equal(out, mic)  # the uplink carries the mic as it was
    assert metrics.get("handsfree_errors_total", reason="library") == 50
    assert hf.stats().errors == 50
    assert len([r for r in caplog.records if "apm: internal error" in r.getMessage()]) == 1


@needs_library
def test_output_is_whole_10_ms_blocks_and_keeps_pace_with_any_read_length() -> None:
    hf = HandsFree(HandsFreeSettings(echo_cancel=True))
    mic = talker(PROCESS_RATE, 2.0, seed=3)
    sizes = [317, 1, 0, 640, 159, 161, 333]
    got = 0
    i = 0
    k = 0
    while i < mic.size:
        n = sizes[k % len(sizes)]
        k += 1
        chunk = mic[i : i + n]
        out = hf.process(chunk, np.zeros(chunk.size, np.int16))
        assert out.size % BLOCK == 0 and out.dtype == np.int16
        got += out.size
        i += chunk.size
        assert 0 <= i - got < BLOCK  # at most one block waits
    stats = hf.stats()
    assert stats.audio_s == pytest.approx(got / PROCESS_RATE) and stats.cpu_s > 0


@needs_library
def test_statistics_show_gain_and_voice_probability() -> None:
    hf = HandsFree(ALL)
    quiet = talker(PROCESS_RATE, 4.0, seed=4, dbfs=-45.0)
    for i in range(0, quiet.size, 320):
        hf.process(quiet[i : i + 320], np.zeros(320, np.int16))
    stats = hf.stats()
    assert stats.gain_db is not None and stats.gain_db > 3.0  # AGC brought the quiet talker up
    assert 0.0 <= stats.voice_probability <= 1.0
    assert stats.erle_db is None  # nothing played, so no echo figure
    metrics = Metrics()
    hf.publish(metrics)
    assert metrics.get("handsfree_gain_db") == pytest.approx(round(stats.gain_db, 1))
    assert metrics.get("handsfree_cpu_ratio") > 0


def test_tap_costs_nothing_until_a_stage_listens_then_stays_aligned() -> None:
    tap = FarEndTap()
    period48 = tone(48000, 1000.0, 0.02)
    tap.rendered(period48, 48000)
    ref, delay = tap.take(320)
    assert not ref.any() and delay is None and tap.padded_samples == 320  # not listening
    tap.listening = True
    stereo = np.repeat(tone(48000, 1000.0, 0.02), 2)  # a stereo speaker, interleaved
    for _ in range(10):  # the speaker ran 200 ms ahead at the start (its buffer filled)
        tap.rendered(stereo, 48000, 2, 0.08)
    for _ in range(10):  # then steady: one period in, one period out, with jitter
        tap.rendered(stereo, 48000, 2, 0.08)
        ref, delay = tap.take(320)
        assert ref.size == 320 and delay == 0.08
    # the lead was cut once, early, so the reference comes before its echo...
    assert 2800 <= tap.dropped_samples <= 3200 and tap.padded_samples == 320
    # ...and a burst of writes (jitter) is kept: the reference stays continuous
    tap.rendered(stereo, 48000, 2, 0.08)
    tap.rendered(stereo, 48000, 2, 0.08)
    for _ in range(60):
        tap.take(320)
        tap.rendered(stereo, 48000, 2, 0.08)
    assert tap.dropped_samples <= 3200
    assert dbfs(ref) == pytest.approx(-20.0, abs=1.0)  # the rendered tone at 16 kHz


@needs_library
def test_capture_processor_with_the_stage_still_cuts_160_sample_frames() -> None:
    mic = talker(48000, 2.0, seed=5)
    stage = HandsFreeStage(HandsFree(HandsFreeSettings(echo_cancel=True)), FarEndTap(), 48000)
    with_stage = CaptureProcessor(48000, stage=stage)
    plain = CaptureProcessor(48000)
    a = [f for i in range(0, mic.size, 960) for f in with_stage.process(mic[i : i + 960], 1.0)]
    b = [f for i in range(0, mic.size, 960) for f in plain.process(mic[i : i + 960], 1.0)]
    assert all(f.pcm.size == 160 for f in a)
    assert [f.seq for f in a] == list(range(1, len(a) + 1))
    assert abs(len(a) - len(b)) <= 1
    # nothing played: the near end goes through at its level
    la = dbfs(np.concatenate([f.pcm for f in a[25:]]))
    lb = dbfs(np.concatenate([f.pcm for f in b[25:]]))
    assert la == pytest.approx(lb, abs=1.0)


@needs_library
def test_auto_stage_follows_the_ptt_mode_without_rebuilding() -> None:
    mode = ["hold"]
    build = stage_factory(
        HandsFreeSettings(echo_cancel=True), FarEndTap(), active=lambda: resolve("auto", mode[0])
    )
    stage = build(16000)
    assert stage is not None
    mic = talker(PROCESS_RATE, 1.0, seed=6)
    for i in range(0, mic.size, 320):
        stage.process(mic[i : i + 320])
    assert stage.handsfree.stats().audio_s == 0  # hold: not processed
    mode[0] = "open"
    for i in range(0, mic.size, 320):
        stage.process(mic[i : i + 320])
    assert stage.handsfree.stats().audio_s > 0.9


def test_resolve() -> None:
    assert [resolve("auto", m) for m in ("hold", "toggle", "open", "vox")] == [
        False, False, True, True,
    ]  # fmt: skip
    assert resolve("on", "hold") and not resolve("off", "open")


def test_the_agent_does_not_load_the_library_unless_a_key_asks() -> None:
    code = textwrap.dedent(
        """
        import sys
        from agent import app, config, generation
        from agent.audio import capture, playback, handsfree
        cfg = config.from_dict({"device": {"id": "d"}, "videosdk": {"room_id": "r"},
                                "ptt": {"mode": "open"}})
        assert "pywebrtc_audio" not in sys.modules, "loaded with echo_cancel off"
        config.from_dict({"device": {"id": "d"}, "videosdk": {"room_id": "r"},
                          "audio": {"noise_suppression": 1}})
        print("pywebrtc_audio" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(library_available())  # loaded once a key asked


def _cfg(audio: dict[str, object], mode: str = "hold") -> config.Config:
    return config.from_dict(
        {"device": {"id": "d"}, "videosdk": {"room_id": "r"}, "audio": audio, "ptt": {"mode": mode}}
    )


def test_config_keys_are_validated() -> None:
    with pytest.raises(ConfigError) as e:
        _cfg({"echo_cancel": "maybe", "noise_suppression": 4, "auto_gain": "yes"})
    text = "\n".join(e.value.problems)
    assert "audio.echo_cancel: must be one of" in text
    assert "audio.noise_suppression: must be between 0 and 3, not 4" in text
    assert "audio.auto_gain:" in text
    cfg = _cfg({})
    assert (cfg.audio.echo_cancel, cfg.audio.noise_suppression, cfg.audio.auto_gain) == (
        "off", 0, False,
    )  # fmt: skip


def test_a_hands_free_key_change_reopens_the_mic_only() -> None:
    old, new = _cfg({}), _cfg({"noise_suppression": 2})
    p = plan(old, new, running={"capture", "playback"})
    assert p.stop == ("capture",) and "capture" in p.start and "playback" not in p.start


def _check_config(
    tmp_path: Path, toml: str, *, without_library: bool
) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(toml)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if without_library:  # a machine without the extra: the module does not load
        shadow = tmp_path / "shadow"
        shadow.mkdir()
        (shadow / "pywebrtc_audio.py").write_text(
            "raise ImportError('No module named pywebrtc_audio')\n"
        )
        env["PYTHONPATH"] = str(shadow)
    exe = Path(sys.executable).parent / "field-agent"
    return subprocess.run(
        [str(exe), "check-config", "--config", str(cfg), "--credentials", str(tmp_path)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


BASE = '[device]\nid = "d"\n[videosdk]\nroom_id = "r"\n'


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ('[audio]\necho_cancel = "on"\n', "audio.echo_cancel"),
        ("[audio]\nnoise_suppression = 2\n", "audio.noise_suppression"),
        ("[audio]\nauto_gain = true\n", "audio.auto_gain"),
        ('[audio]\necho_cancel = "auto"\n[ptt]\nmode = "vox"\n', "audio.echo_cancel"),
    ],
)
def test_check_config_says_what_to_install(tmp_path: Path, section: str, key: str) -> None:
    out = _check_config(tmp_path, BASE + section, without_library=True)
    assert out.returncode == 78, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if f"agent.toml: {key}: " in x)
    assert "needs pywebrtc-audio" in line
    assert "pip install 'field-agent[handsfree]'" in out.stdout


def test_check_config_without_the_library_accepts_what_does_not_ask(tmp_path: Path) -> None:
    # "auto" in hold mode asks for nothing until the mode changes
    out = _check_config(tmp_path, BASE + '[audio]\necho_cancel = "auto"\n', without_library=True)
    assert "needs pywebrtc-audio" not in out.stdout, out.stdout
    assert out.returncode != 78, out.stdout


@needs_library
def test_check_config_with_the_library_accepts_all_three(tmp_path: Path) -> None:
    toml = BASE + '[audio]\necho_cancel = "on"\nnoise_suppression = 3\nauto_gain = true\n'
    out = _check_config(tmp_path, toml, without_library=False)
    assert "needs pywebrtc-audio" not in out.stdout
    assert out.returncode != 78, out.stdout
