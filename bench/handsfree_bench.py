"""Hands-free benchmark: the processing's CPU against the empty-timer floor, on the rig.

    .venv/bin/python bench/handsfree_bench.py                 # record + measure (PulseAudio)
    .venv/bin/python bench/handsfree_bench.py --save take.npz  # also keep the capture
    OTHER_VENV/bin/python bench/handsfree_bench.py --compare take.npz --library livekit

Records one take through the acoustic loop (:mod:`agent.sandbox.acoustic`: speaker
into a PulseAudio null sink, mic from its monitor; 2 s of room audio alone, then
a near-end talker over it), processes it with each
configuration, and prints per configuration: ERLE after 2 s of single talk, the
near end's level change in double talk, the noise's level change, CPU per second
of audio (thread CPU of the library call), and that CPU as a multiple of the
floor: what an empty 20 ms asyncio timer costs here, measured in a subprocess in
the same run (as ``bench/agent_bench.py`` calibrates it).

``--compare`` replays a saved take (mic and the far-end reference as the tap gave
it) through one library, in whatever venv has it, and prints the same figures
plus the RSS the library adds (a fresh subprocess: numpy imported, then the
library imported, built and run on 1 s); used to choose the library.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RATE = 16000
BLOCK = RATE // 100
SECONDS = 12.0
NEAR_START_S = 6.0  # room audio alone before this (ERLE window: 2 .. 5.5 s)

FLOOR_CODE = """
import asyncio, os, sys, time
def cpu():
    f = open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
async def main(seconds):
    loop = asyncio.get_running_loop()
    t0, k = loop.time(), 0
    await asyncio.sleep(0.5)
    c0, w0 = cpu(), time.monotonic()
    t0, k = loop.time(), 0
    while time.monotonic() - w0 < seconds:
        k += 1
        await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))
    print((cpu() - c0) / (time.monotonic() - w0))
asyncio.run(main(float(sys.argv[1])))
"""


def floor_cpu_ms_per_s(seconds: float = 10.0) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_CODE, str(seconds)], capture_output=True, text=True, check=True
    )
    return 1000.0 * float(out.stdout.strip())


def level_db(x: np.ndarray) -> float:
    f = x.astype(np.float64)
    return 10.0 * math.log10(max(float(np.mean(f * f)), 1e-3) / 32768.0**2)


def seg(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return x[round(a * RATE) : round(b * RATE)]


# -- one library, offline, on a saved take ------------------------------------------------


class _Livekit:
    """livekit.rtc.AudioProcessingModule behind the ``process(near, far)`` shape."""

    def __init__(self, ec: bool, ns: bool, agc: bool) -> None:
        from livekit import rtc

        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=ec, noise_suppression=ns, high_pass_filter=True,
            auto_gain_control=agc,
        )  # fmt: skip

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        out = np.empty_like(near)
        for i in range(0, near.size, BLOCK):
            f = self._rtc.AudioFrame(bytearray(far[i : i + BLOCK].tobytes()), RATE, 1, BLOCK)
            self._apm.process_reverse_stream(f)
            n = self._rtc.AudioFrame(bytearray(near[i : i + BLOCK].tobytes()), RATE, 1, BLOCK)
            self._apm.process_stream(n)
            out[i : i + BLOCK] = np.frombuffer(bytes(n.data), np.int16)
        return out


def _build(library: str, ec: bool, ns: int, agc: bool) -> Any:
    if library == "livekit":
        return _Livekit(ec, ns > 0, agc)
    import pywebrtc_audio

    return pywebrtc_audio.AudioProcessor(
        sample_rate=RATE, echo_cancellation=ec, noise_suppression=ns > 0,
        high_pass_filter=True, auto_gain_control=agc, ns_level=max(0, min(3, ns)),
    )  # fmt: skip


def _run(proc: Any, mic: np.ndarray, far: np.ndarray) -> tuple[np.ndarray, float]:
    out = []
    cpu = 0.0
    for i in range(0, mic.size - 2 * BLOCK + 1, 2 * BLOCK):  # 20 ms periods, as the agent
        t0 = time.process_time()  # the process: a library may work in threads of its own
        out.append(proc.process(mic[i : i + 2 * BLOCK], far[i : i + 2 * BLOCK]))
        cpu += time.process_time() - t0
    y = np.concatenate(out)
    return y, cpu / (y.size / RATE)


RSS_CODE = """
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
base = rss()
import handsfree_bench as b
p = b._build(sys.argv[1], True, 2, True)
z = np.zeros(320, np.int16)
for _ in range(100):
    p.process(z, z)
print(rss() - base)
"""


def compare(take: Path, library: str) -> dict[str, Any]:
    data = np.load(take)
    mic, far = data["mic"], data["far"]
    rows: dict[str, Any] = {"library": library}
    y, cpu = _run(_build(library, True, 0, False), mic, far)
    rows["erle_db"] = level_db(seg(mic, 2, NEAR_START_S - 0.5)) - level_db(
        seg(y, 2, NEAR_START_S - 0.5)
    )
    rows["aec_cpu_ms_per_s"] = 1000 * cpu
    from agent.sandbox.acoustic import component_db
    from agent.sandbox.voices import talker

    near = talker(RATE, SECONDS - NEAR_START_S, seed=7, f0=210, dbfs=-26)
    ref = np.concatenate((np.zeros(round(NEAR_START_S * RATE), np.int16), near))
    dt = (NEAR_START_S + 0.5, SECONDS - 0.5)
    rows["double_talk_near_change_db"] = component_db(y, ref, *dt) - component_db(mic, ref, *dt)
    _, cpu_all = _run(_build(library, True, 2, True), mic, far)
    rows["all_cpu_ms_per_s"] = 1000 * cpu_all
    rss = subprocess.run(
        [sys.executable, "-c", RSS_CODE, library, str(Path(__file__).parent)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows["rss_mb"] = float(rss.stdout.strip().splitlines()[-1])
    return rows


# -- the rig -------------------------------------------------------------------------------


def record_and_measure(save: Path | None) -> dict[str, Any]:
    from agent.audio.handsfree import HandsFreeSettings
    from agent.sandbox import acoustic
    from agent.sandbox.pulse import PulseRig
    from agent.sandbox.voices import talker

    configs = {
        "none (resample only)": HandsFreeSettings(echo_cancel=False),
        "echo_cancel": HandsFreeSettings(echo_cancel=True),
        "noise_suppression=2": HandsFreeSettings(echo_cancel=False, noise_suppression=2),
        "all three": HandsFreeSettings(echo_cancel=True, noise_suppression=2, auto_gain=True),
    }
    far = talker(acoustic.SPEAKER_RATE, SECONDS, seed=1, f0=110, dbfs=-20)
    near = talker(RATE, SECONDS - NEAR_START_S, seed=7, f0=210, dbfs=-26)
    # no fan: its floor would cap the ERLE measurable (tests/audio/test_handsfree_rig.py
    # measures the noise suppression on its own take)
    scene = acoustic.Scene(SECONDS, far=far, near=near, near_start_s=NEAR_START_S)
    with tempfile.TemporaryDirectory() as d, PulseRig(Path(d)) as rig:
        # a take in which the machine starved the speaker (underruns) is taken again
        take = acoustic.record_steady(rig, scene, list(configs.values()), keep_far=True)
    if save is not None and take.far is not None:
        np.savez(save, mic=take.mic, far=take.far)
    ref = np.concatenate((np.zeros(round(NEAR_START_S * RATE), np.int16), near))
    dt = (NEAR_START_S + 0.5, SECONDS - 0.5)
    raw_near = acoustic.component_db(take.mic, ref, *dt)
    out: dict[str, Any] = {
        "wall_s": take.wall_s,
        "speaker_starved_s": take.tap_padded / RATE,
        "reference_cut_s": take.tap_dropped / RATE,
        "configs": {},
    }
    for (name, _), y, st in zip(configs.items(), take.outs, take.stats, strict=True):
        out["configs"][name] = {
            "erle_db": level_db(seg(take.mic, 2, NEAR_START_S - 0.5))
            - level_db(seg(y, 2, NEAR_START_S - 0.5)),
            "double_talk_near_change_db": acoustic.component_db(y, ref, *dt) - raw_near,
            "cpu_ms_per_s": 1000 * st.cpu_per_audio_s,
            "estimated_erle_db": st.erle_db,
            "gain_db": st.gain_db,
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--save", type=Path, help="keep the take (mic + far reference) as .npz")
    ap.add_argument("--compare", type=Path, help="replay a saved take through --library")
    ap.add_argument("--library", default="pywebrtc-audio", choices=["pywebrtc-audio", "livekit"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.compare:
        rows = compare(args.compare, args.library)
        floor = floor_cpu_ms_per_s()
        rows["floor_cpu_ms_per_s"] = floor
        rows["all_cpu_x_floor"] = rows["all_cpu_ms_per_s"] / floor
        print(json.dumps(rows) if args.json else "\n".join(f"{k}: {v}" for k, v in rows.items()))
        return 0
    result = record_and_measure(args.save)
    floor = floor_cpu_ms_per_s()
    result["floor_cpu_ms_per_s"] = floor
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"machine: {_cpu_model()}, {_ncpu()} cores; take {result['wall_s']:.1f} s wall")
    print(
        f"loop: speaker starved {result['speaker_starved_s']:.2f} s, reference cut "
        f"{result['reference_cut_s']:.2f} s (realignments); load {os.getloadavg()[0]:.1f}"
    )
    print(f"floor: an empty 20 ms asyncio timer costs {floor:.2f} ms CPU per s here")
    print(f"{'config':24} {'ERLE dB':>8} {'DT near dB':>10} {'CPU ms/s':>9} {'x floor':>8}")
    for name, r in result["configs"].items():
        print(
            f"{name:24} {r['erle_db']:8.1f} {r['double_talk_near_change_db']:10.1f} "
            f"{r['cpu_ms_per_s']:9.2f} {r['cpu_ms_per_s'] / floor:8.2f}"
        )
    print("goal: all three at 16 kHz <= 1.5x the floor on top of the agent's own figure")
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown cpu"


def _ncpu() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
