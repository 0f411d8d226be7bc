"""The running agent's CPU and context switches, measured where it runs (a VM guest on
snd-aloop, or a device): issue #18's figures on real kernel ``hw:`` devices, no libpulse.

    python3 guest_cpu.py [--pid PID] [--seconds 60] [--warmup 10] [--no-room-audio]

Needs ``agent_bench.py`` next to it (the host benchmark: its floor, its /proc readers).
The agent: ``--pid`` or ``systemctl show -P MainPID field-agent`` (the service is started
if it is not running). The floor: ``agent_bench.py --role idle``, the host benchmark's
empty 20 ms asyncio timer, in its own process. When the sandbox's control API answers
(127.0.0.1:7000: the VM tier, the arm64 check), it waits for the agent's links and has
the fake VideoSDK send room audio (a tone, paced at 20 ms) for the whole run: the agent
carries uplink, room audio and Orgo, as in the host benchmark. After ``--warmup`` it
measures for ``--seconds``: CPU (utime + stime, /proc/PID/stat) in ms/s and as a ratio
to the floor's; context switches/s (voluntary + involuntary) per thread, named by what
the kernel shows (tid == pid: MainThread; comm; the function it sleeps in most,
/proc/.../wchan sampled every 0.25 s; for poll(), the file polled: Python 3.11 names no
thread for the kernel); RSS. Prints a table and one line ``GUESTCPU {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import math
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_bench import Child, cpu_model, machine_busy, switch_groups

CONTROL = "http://127.0.0.1:7000"
FLOOR_HZ = 50  # the floor wakes every 20 ms


def control(path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    method = "GET" if data is None else "POST"
    req = urllib.request.Request(CONTROL + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def room_tone(seconds: float, hz: float = 600.0) -> str:
    """``seconds`` of a -12 dBFS tone, PCM16 LE at 8 kHz, base64 (the control API's form)."""
    n = int(seconds * 8000)
    amp = 32767 * 10 ** (-12 / 20)
    w = 2 * math.pi * hz / 8000
    pcm = struct.pack(f"<{n}h", *(int(amp * math.sin(w * i)) for i in range(n)))
    return base64.b64encode(pcm).decode()


def usage(pid: int) -> dict[str, Any]:
    """agent_bench's Child.usage of any process (it only reads ``self.proc.pid``)."""
    return Child.usage(cast(Child, SimpleNamespace(proc=SimpleNamespace(pid=pid))))


POLL_NR = {"x86_64": {"7", "271"}, "aarch64": {"73"}}.get(platform.machine(), set())  # (p)poll


def polled(pid: int, task: Path) -> str:
    """The file a thread blocked in poll()/ppoll() waits on (its first pollfd's), e.g.
    /dev/snd/pcmC0D1c: tells the audio threads apart (Python 3.11 names no thread for
    the kernel). "" if the thread is in another system call."""
    try:
        nr, fds, *_ = (task / "syscall").read_text().split()  # "NR fds nfds ... sp pc"
        if nr not in POLL_NR:
            return ""
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(int(fds, 16))
            (fd,) = struct.unpack("=i", mem.read(4))
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except (OSError, ValueError, struct.error):
        return ""


def sample(pid: int, counts: dict[int, collections.Counter[str]]) -> None:
    """Where each thread sleeps (/proc/.../wchan), and what it polls, once."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            where = (task / "wchan").read_text().strip()
        except OSError:
            continue
        seen = counts.setdefault(int(task.name), collections.Counter())
        seen[where if where != "0" else "(running)"] += 1
        if "poll" in where and (file := polled(pid, task)):
            seen["polls " + file] += 1


def involuntary(pid: int) -> dict[int, int]:
    """nonvoluntary_ctxt_switches of each thread (preempted, not waiting: a busy CPU)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            line = (task / "status").read_text().split("nonvoluntary_ctxt_switches:")[1]
        except (OSError, IndexError):
            continue
        out[int(task.name)] = int(line.split()[0])
    return out


def links_up() -> bool:
    """The agent's links to the sandbox (the VM tier's checks.links_up)."""
    try:
        state = control("/state")
    except OSError:  # (the sandbox restarting)
        return False
    return bool(state["videosdk"]["active"] >= 1 and state["orgo"]["accepted"] >= 1)


def agent_pid() -> int:
    """The field-agent service's MainPID; the service is started first if it is not running
    (the VM checks leave it failed: their bad-config check is among the last)."""
    show = ["systemctl", "show", "-P", "MainPID", "field-agent"]
    pid = int(subprocess.run(show, capture_output=True, text=True).stdout.strip() or 0)
    if not pid:
        print("guest_cpu: field-agent is not running: systemctl start field-agent", flush=True)
        subprocess.run(["systemctl", "start", "field-agent"], timeout=300)
        pid = int(subprocess.run(show, capture_output=True, text=True).stdout.strip() or 0)
    return pid


async def measure(args: argparse.Namespace, pid: int) -> dict[str, Any]:
    room = False
    try:
        control("/state")
        room = not args.no_room_audio
    except OSError:
        pass
    if room:  # the agent's links up first (the VM tier's links_up)
        deadline = time.monotonic() + 180
        while not links_up():
            if time.monotonic() > deadline:
                raise SystemExit(f"guest_cpu: the agent's links are not up: {control('/state')}")
            await asyncio.sleep(1)
        control("/videosdk/room-audio", {"pcm": room_tone(args.warmup + args.seconds + 10)})
    log = Path(tempfile.gettempdir()) / "guest_cpu-floor.log"
    floor = Child("floor", ["--role", "idle"], dict(os.environ), log)
    floor_pid = (await floor.read())["pid"]
    await asyncio.sleep(args.warmup)
    counts: dict[int, collections.Counter[str]] = {}

    def snap() -> tuple[Any, ...]:
        return involuntary(pid), usage(pid), usage(floor_pid), machine_busy(), time.monotonic()

    i0, a0, f0, m0, t0 = snap()
    while time.monotonic() - t0 < args.seconds:
        sample(pid, counts)
        await asyncio.sleep(0.25)
    i1, a1, f1, m1, t1 = snap()
    await floor.ask("quit")
    floor.close()
    s = t1 - t0
    names = {tid: "MainThread" if tid == pid else t[0] for tid, t in a1["by_tid"].items()}
    total = switch_groups(a0["by_tid"], a1["by_tid"], names, s)["own"]  # every thread's
    threads = []
    for tid, (_, cpu_s, n) in sorted(a1["by_tid"].items()):
        _, cpu0, n0 = a0["by_tid"].get(tid, ("", 0.0, 0))
        seen = counts.get(tid, collections.Counter())
        where = [(k, n) for k, n in seen.most_common() if not k.startswith("polls ")]
        polls = [k[6:] for k, n in seen.most_common() if k.startswith("polls ")]
        threads.append({"tid": tid, "name": names[tid], "wchan": where[0][0] if where else "?",
                        "polls": polls[0] if polls else "",
                        "cpu_ms_per_s": (cpu_s - cpu0) * 1000 / s,
                        "switches_per_s": (n - n0) / s,
                        "involuntary_per_s": (i1.get(tid, 0) - i0.get(tid, 0)) / s})  # fmt: skip
    agent_ms = (a1["cpu_s"] - a0["cpu_s"]) * 1000 / s
    floor_ms = (f1["cpu_s"] - f0["cpu_s"]) * 1000 / s
    floor_sw = sum(t[2] for t in f1["by_tid"].values()) - sum(t[2] for t in f0["by_tid"].values())
    return {
        "machine": platform.machine(), "kernel": os.uname().release, "cpu_model": cpu_model(),
        "cpus": os.cpu_count(), "seconds": s, "warmup_s": args.warmup, "room_audio": room,
        "agent_pid": pid, "agent_cpu_ms_per_s": agent_ms, "floor_cpu_ms_per_s": floor_ms,
        "cpu_x_floor": agent_ms / floor_ms if floor_ms else float("nan"),
        "floor_us_per_wakeup": floor_ms * 1000 / FLOOR_HZ, "floor_switches_per_s": floor_sw / s,
        "agent_switches_per_s": total, "threads": threads,
        "agent_involuntary_per_s": (sum(i1.values()) - sum(i0.values())) / s,
        "agent_rss_mb": [a0["rss_mb"], a1["rss_mb"]], "agent_hwm_mb": a1["hwm_mb"],
        "guest_busy_pct": 100 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
    }  # fmt: skip


def print_table(r: dict[str, Any]) -> None:
    print(
        f"guest_cpu: {r['seconds']:.0f} s after {r['warmup_s']:.0f} s, {r['machine']} "
        f"({r['cpu_model']}, {r['cpus']} CPUs, kernel {r['kernel']}), room audio "
        f"{'on' if r['room_audio'] else 'off'}, guest busy {r['guest_busy_pct']:.0f} %"
    )
    print(f"  agent (pid {r['agent_pid']}): {r['agent_cpu_ms_per_s']:.1f} ms/s = "
          f"{r['cpu_x_floor']:.2f} x floor, {r['agent_switches_per_s']:.0f} switches/s "
          f"({r['agent_involuntary_per_s']:.0f} involuntary), "
          f"RSS {r['agent_rss_mb'][0]:.1f} -> {r['agent_rss_mb'][1]:.1f} MB")  # fmt: skip
    print(f"  floor (empty 20 ms asyncio timer): {r['floor_cpu_ms_per_s']:.2f} ms/s, "
          f"{r['floor_us_per_wakeup']:.0f} us per wakeup, "
          f"{r['floor_switches_per_s']:.0f} switches/s")  # fmt: skip
    print(f"  {'tid':>7} {'thread':<12} {'sleeps in (most)':<24} {'CPU ms/s':>9} "
          f"{'switches/s':>10} {'invol./s':>8}  polls")  # fmt: skip
    for t in r["threads"]:
        print(f"  {t['tid']:>7} {t['name']:<12} {t['wchan'][:24]:<24} "
              f"{t['cpu_ms_per_s']:>9.1f} {t['switches_per_s']:>10.1f} "
              f"{t['involuntary_per_s']:>8.1f}  {t['polls']}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pid", type=int, default=0, help="the agent's (default: the service's)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured (default 60)")
    parser.add_argument("--warmup", type=float, default=10.0, help="before measuring (10)")
    parser.add_argument("--no-room-audio", action="store_true", help="no room audio from the fake")
    args = parser.parse_args()
    pid = args.pid or agent_pid()
    if not pid:
        raise SystemExit("guest_cpu: no agent pid (field-agent not running? --pid)")
    result = asyncio.run(measure(args, pid))
    print_table(result)
    print("GUESTCPU " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
