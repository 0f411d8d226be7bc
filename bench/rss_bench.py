"""Memory benchmark: what the real ``field-agent run`` keeps resident, and why.

    .venv/bin/python bench/rss_bench.py [--seconds 60] [--case NAME[:full|vsdk][,KEY=VAL ...]]...
                                        [--json bench-results/rss_bench.jsonl]

One run (about ``seconds + 10`` s; needs ``pulseaudio`` and ``libasound2-plugins``): a
private PulseAudio daemon (:class:`agent.sandbox.pulse.PulseRig`) paces a mic per case
(a 440 Hz tone) and a speaker; per case, the sandbox servers (``python -m
agent.sandbox.serve``: the fake VideoSDK and Orgo, README "Try it without accounts")
and the agent itself, started the way systemd starts it (``field-agent run --config
... --credentials ...``, a subprocess of the CLI), with:

- ``full``: VideoSDK full duplex + Orgo at 24 kHz mixed to 48 kHz (the configuration
  of issue 18's goals, as in ``bench/agent_bench.py``);
- ``vsdk``: VideoSDK only.

``KEY=VAL`` items set environment variables of that case's agent (e.g.
``MALLOC_ARENA_MAX=2``), except ``python=PATH``: the interpreter of a venv to run the
agent with (default: this one), e.g. a venv with only what a device installs
(``pip install '.[gpio]'``: no test extras, so no ``cryptography``, ``click``,
``h2``...; the agent's code still comes from this checkout, via PYTHONPATH), and
``tracemalloc=N``: run the agent under :mod:`tracemalloc` (N frames; it costs memory
itself, so that case's RSS is not comparable) and print its largest live allocations
by line at the end, so variants can be compared side by side in one run. All
cases run at the same time. Default: one case ``full``.

Printed, per case: the library floor (the RSS of a process of the same venv that
only imports the libraries the agent needs and makes one httpx client: what any agent
on this stack pays before its own code), VmRSS, RssAnon / RssFile / RssShmem and VmHWM from
``/proc/<pid>/status`` every 10 s; at the end the largest mappings (``smaps``, by file;
anonymous ones one by one, with their size: thread stacks are 8 MiB, glibc's per-thread
malloc arenas 64 MiB reservations), the thread names, and the modules the agent
imported (``PYTHONPROFILEIMPORTTIME``: its whole life, lazy imports included): count,
and the heaviest top-level packages by import time. RSS of the libpulse plugin
(``libpulse*``, ``memfd:pulseaudio``) is a testbed artefact (real ``hw:`` devices load
none of it) and is shown apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ORGO_COMPUTER = "a3bb189e-8bf9-3888-9912-ace4e6543002"  # agent.sandbox.serve's default
GOAL_MB = 45.0
PULSE_PLUGIN = "libasound_module_pcm_pulse.so"
TESTBED = re.compile("libpulse|memfd:pulseaudio")  # main() sets the full list
NOT_TESTBED = ("libasound.so", "libc.so", "libm.so", "libpthread.so", "ld-linux", "liblzma.so")


def testbed_libraries() -> re.Pattern[str]:
    """Mapped files that only the testbed's PulseAudio ALSA plugin brings: the plugins,
    libpulse and what it links (``ldd``), the daemon's shared memory. Not libasound,
    libc, ... nor liblzma (Python's own _lzma links it). libsystemd and its libraries
    are counted here: the bench's agent logs to stderr; one that logs to the journal
    (systemd-python) loads them too (about 0.5 MB)."""
    names = ["libasound_module_", "memfd:pulseaudio"]
    found = sorted(Path("/usr/lib").glob(f"*/alsa-lib/{PULSE_PLUGIN}"))
    if found:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(["ldd", str(found[0])], capture_output=True, text=True,
                                 check=True).stdout  # fmt: skip
            for line in out.splitlines():
                lib = line.split()[0] if line.split() else ""
                if lib.startswith("lib") and not lib.startswith(NOT_TESTBED):
                    names.append(lib.split(".so")[0] + ".so")
    return re.compile("|".join(re.escape(n) for n in names))


# What any agent on this stack pays before its own code: the libraries it needs, loaded.
FLOOR = """
import sys
sys.modules.setdefault("httpx._main", None)  # as agent/__init__.py does
import asyncio, ssl, time
import numpy, soxr, alsaaudio
import websockets.asyncio.client, websockets.asyncio.server
import httpx
async def main():
    async with httpx.AsyncClient(verify=ssl.create_default_context()):
        await asyncio.sleep(3600)
asyncio.run(main())
"""

# The agent's CLI under tracemalloc: argv = frames, output file, when (s), CLI arguments.
TRACEMALLOC_RUN = """
import sys, threading, time, tracemalloc
frames, out, when = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
tracemalloc.start(frames)
def dump():
    time.sleep(when)
    snap = tracemalloc.take_snapshot()
    snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    lines = []
    total = sum(s.size for s in snap.statistics("filename"))
    lines.append(f"    {total / 1024:8.0f} in all (traced by Python's allocators)")
    for by in ("filename", "lineno"):
        for s in snap.statistics(by)[:25]:
            f = s.traceback[0]
            where = f.filename.split("site-packages/")[-1].split("/lib/python3")[-1]
            line = f.lineno if by == "lineno" else ""
            lines.append(f"    {s.size / 1024:8.0f} {s.count:7d}  {where}:{line}")
        lines.append("    --")
    with open(out + ".tmp", "w") as fh:
        fh.write("\\n".join(lines) + "\\n")
    import os
    os.replace(out + ".tmp", out)
threading.Thread(target=dump, name="tracemalloc-dump", daemon=True).start()
from agent.__main__ import main
sys.exit(main(sys.argv[4:]))
"""


def free_ports(n: int) -> int:
    """A base port P with P..P+n-1 free (probed, not reserved)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n >= 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


def agent_toml(name: str, mic: str, base: int, metrics_port: int, orgo: bool) -> str:
    text = f"""
[device]
id = "{name}"
[audio]
capture_device = "{mic}"
capture_rate = 8000
playback_device = "paspk"
playback_rate = 48000
[ptt]
mode = "open"
[videosdk]
room_id = "rss-room"
api_base = "http://127.0.0.1:{base + 1}"
[metrics]
listen = "127.0.0.1:{metrics_port}"
"""
    if orgo:
        text += f"""
[orgo]
enabled = true
computer_id = "{ORGO_COMPUTER}"
api_base = "http://127.0.0.1:{base + 3}/api"
audio_url = "ws://127.0.0.1:{base + 4}/{{computer_id}}/audio"
sample_rate = 24000
channels = 1
"""
    return text


def status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if (len(parts) == 2 and parts[1] == "kB") or key == "Threads":
            out[key] = int(parts[0])
    return out


@dataclass
class Mapping:
    name: str
    size_kb: int
    rss_kb: int = 0
    perms: str = ""


def mappings(pid: int) -> list[Mapping]:
    maps: list[Mapping] = []
    cur: Mapping | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0] and len(head) >= 5:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            cur = Mapping(head[5] if len(head) > 5 else "[anon]", (hi - lo) // 1024, 0, head[1])
            maps.append(cur)
        elif line.startswith("Rss:") and cur is not None:
            cur.rss_kb = int(head[1])
    return maps


def by_file(maps: list[Mapping]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for m in maps:
        key = m.name if m.name.startswith("[") else short(m.name)
        sizes[key] = sizes.get(key, 0) + m.rss_kb
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def short(path: str) -> str:
    """A mapped file's name, with the package it belongs to in site-packages."""
    p = Path(path)
    parts = p.parts
    if "site-packages" in parts:
        i = parts.index("site-packages")
        pkg = parts[i + 1] if i + 1 < len(parts) - 1 else ""
        return f"{p.name} ({pkg})" if pkg else p.name
    return p.name


def threads(pid: int) -> list[str]:
    names = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        with contextlib.suppress(OSError):
            names.append((task / "comm").read_text().strip())
    return names


def imports(log: str) -> tuple[list[str], dict[str, float]]:
    """Module names (in import order) and ms of import time per top-level package, from
    a PYTHONPROFILEIMPORTTIME log."""
    names: list[str] = []
    per_pkg: dict[str, float] = {}
    for line in log.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cum, name = (x.strip() for x in line[len("import time:") :].split("|"))
        names.append(name)
        top = name.split(".")[0]
        per_pkg[top] = per_pkg.get(top, 0.0) + int(self_us) / 1000
    return names, dict(sorted(per_pkg.items(), key=lambda kv: -kv[1]))


@dataclass
class Case:
    name: str
    kind: str
    env: dict[str, str]
    python: Path = Path(sys.executable)
    tracemalloc: int = 0
    base: int = 0
    work: Path = Path()
    serve: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    floor: subprocess.Popen[bytes] | None = None
    floor_kb: int = 0
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    @staticmethod
    def parse(spec: str) -> Case:
        head, *pairs = spec.split(",")
        name, _, kind = head.partition(":")
        kind = kind or "full"
        if kind not in ("full", "vsdk"):
            raise SystemExit(f"--case {spec}: the kind is full or vsdk")
        env = {}
        python = Path(sys.executable)
        tm = 0
        for pair in pairs:
            k, sep, v = pair.partition("=")
            if not sep:
                raise SystemExit(f"--case {spec}: {pair!r} is not KEY=VAL")
            if k == "python":
                python = Path(v)
            elif k == "tracemalloc":
                tm = int(v)
            else:
                env[k] = v
        return Case(name, kind, env, python, tm)


def wait_http(url: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long each agent runs (60)")
    ap.add_argument("--case", action="append", default=[],
                    help="NAME[:full|vsdk][,KEY=VAL...] (repeatable; default: full)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="append the result as one JSON line")
    ap.add_argument("--top", type=int, default=14, help="mappings shown (14)")
    args = ap.parse_args()
    cases = [Case.parse(s) for s in args.case] or [Case("full", "full", {})]

    from agent.sandbox.pulse import PulseRig

    work = Path(tempfile.mkdtemp(prefix="rss-bench-"))
    rig = PulseRig(work)
    total_s = args.seconds + 60
    import numpy as np

    t = np.arange(int(8000 * total_s)) / 8000
    tone = (0.25 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype("<i2").tobytes()
    for i, c in enumerate(cases):
        c.work = work / f"case{i}"
        c.work.mkdir()
        rig.add_mic(f"mic{i}").write_bytes(tone)
    rig.start()
    env0 = {**os.environ, **rig.env(), "PYTHONPATH": str(REPO)}
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY"):
        env0.pop(k, None)
    py = Path(sys.executable)
    try:
        for i, c in enumerate(cases):
            c.base = free_ports(6)
            creds = c.work / "creds"
            c.serve = subprocess.Popen(
                [str(py), "-m", "agent.sandbox.serve", "--base-port", str(c.base),
                 "--credentials", str(creds)],
                env=env0, stdout=subprocess.DEVNULL, stderr=(c.work / "serve.log").open("wb"),
            )  # fmt: skip
            wait_http(f"http://127.0.0.1:{c.base}/state", 30)
            cfg = c.work / "agent.toml"
            cfg.write_text(agent_toml(c.name, f"mic{i}", c.base, c.base + 5, c.kind == "full"))
            argv = ["--log-level", "WARNING", "run", "--config", str(cfg), "--credentials",
                    str(creds)]  # fmt: skip
            cmd = [str(c.python.parent / "field-agent"), *argv]
            if c.tracemalloc:
                out = c.work / "tracemalloc.txt"
                cmd = [str(c.python), "-c", TRACEMALLOC_RUN, str(c.tracemalloc), str(out),
                       str(max(args.seconds - 10, 1)), *argv]  # fmt: skip
            c.agent = subprocess.Popen(
                cmd,
                env={**env0, "PYTHONPROFILEIMPORTTIME": "1", **c.env},
                stdout=subprocess.DEVNULL, stderr=(c.work / "agent.log").open("wb"),
            )  # fmt: skip
            c.floor = subprocess.Popen(
                [str(c.python), "-c", FLOOR], env={**env0, **c.env},
                stdout=subprocess.DEVNULL, stderr=(c.work / "floor.log").open("wb"),
            )  # fmt: skip
        t0 = time.monotonic()
        print(f"{len(cases)} case(s), {args.seconds:g} s each, in {work}", file=sys.stderr)
        next_sample = 0.0
        while (el := time.monotonic() - t0) < args.seconds:
            if el >= next_sample:
                for c in cases:
                    assert c.agent is not None
                    if c.agent.poll() is not None:
                        raise RuntimeError(
                            f"{c.name}: the agent exited {c.agent.returncode}:\n"
                            + (c.work / "agent.log").read_text()[-3000:]
                        )
                    c.samples.append((el, status(c.agent.pid)))
                next_sample += 10.0
            time.sleep(0.2)
        result: dict[str, Any] = {"seconds": args.seconds, "cases": {}}
        for c in cases:
            assert c.agent is not None
            st = status(c.agent.pid)
            c.samples.append((args.seconds, st))
            assert c.floor is not None
            if c.floor.poll() is None:
                c.floor_kb = status(c.floor.pid)["VmRSS"]
            maps = mappings(c.agent.pid)
            names = threads(c.agent.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{c.base}/state", timeout=5) as r:
                state = json.loads(r.read())
            result["cases"][c.name] = {
                "kind": c.kind, "env": c.env, "status_kb": st, "maps": maps, "threads": names,
                "state": state,
            }  # fmt: skip
        for c in cases:  # a tracemalloc snapshot takes a while
            deadline = time.monotonic() + 60
            while c.tracemalloc and not (c.work / "tracemalloc.txt").exists():
                if time.monotonic() > deadline:
                    print(f"{c.name}: no tracemalloc snapshot within 60 s", file=sys.stderr)
                    break
                time.sleep(0.5)
    finally:
        for c in cases:
            for p in (c.agent, c.floor, c.serve):
                if p is not None and p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
        rig.stop()

    global TESTBED
    TESTBED = testbed_libraries()
    machine = f"{os.uname().machine}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    print(f"machine: {machine}; git {git_commit()}")
    out: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "git": git_commit(), "machine": machine, "seconds": args.seconds,
                           "cases": {}}  # fmt: skip
    for c in cases:
        r = result["cases"][c.name]
        st = r["status_kb"]
        maps: list[Mapping] = r["maps"]
        files = by_file(maps)
        testbed = sum(kb for name, kb in files.items() if TESTBED.search(name))
        log = (c.work / "agent.log").read_text(errors="replace")
        mods, per_pkg = imports(log)
        env = " ".join(f"{k}={v}" for k, v in c.env.items()) or "-"
        print(f"\n== {c.name}: {c.kind}, env {env}, {c.python}")
        print("   t (s)  VmRSS  RssAnon  RssFile  RssShmem  VmHWM   (MB)")
        for el, s in c.samples:
            print(f"  {el:6.0f} {mb(s['VmRSS']):6.1f} {mb(s['RssAnon']):8.1f} "
                  f"{mb(s['RssFile']):8.1f} {mb(s['RssShmem']):9.1f} "
                  f"{mb(s['VmHWM']):6.1f}")  # fmt: skip
        print(f"  RSS after {args.seconds:g} s: {mb(st['VmRSS']):.1f} MB "
              f"(of it the libpulse testbed plugin {mb(testbed):.1f} MB; "
              f"without it {mb(st['VmRSS'] - testbed):.1f} MB); "
              f"goal <= {GOAL_MB:g} MB")  # fmt: skip
        if c.floor_kb:
            print(f"  library floor: {mb(c.floor_kb):.1f} MB (a process that only imports what "
                  "the agent needs: asyncio, ssl, numpy, soxr, alsaaudio, websockets, httpx, "
                  "and makes one httpx client; no PCM opened)")  # fmt: skip
        print("  largest mappings (MB; [testbed]: the PulseAudio plugin and what it links):")
        for name, kb in list(files.items())[: args.top]:
            tag = "  [testbed]" if TESTBED.search(name) else ""
            print(f"    {mb(kb):5.1f}  {name}{tag}")
        anon = sorted((m for m in maps if m.name == "[anon]"), key=lambda m: -m.rss_kb)
        print("  largest anonymous mappings (RSS / size, MB):")
        for m in anon[:8]:
            print(f"    {mb(m.rss_kb):5.1f} / {mb(m.size_kb):6.1f}  {m.perms}")
        print(f"  threads ({len(r['threads'])}): {', '.join(r['threads'])}")
        print(f"  modules imported: {len(mods)}; heaviest packages (ms of import time, count):")
        counts: dict[str, int] = {}
        for n in mods:
            counts[n.split(".")[0]] = counts.get(n.split(".")[0], 0) + 1
        print("    " + ", ".join(f"{p} {ms:.0f} ({counts[p]})" for p, ms in
                                 list(per_pkg.items())[:14]))  # fmt: skip
        frames = r["state"].get("videosdk", {}).get("frames_total", r["state"])
        out["cases"][c.name] = {
            "kind": c.kind, "env": c.env, "python": str(c.python), "rss_mb": mb(st["VmRSS"]),
            "rss_anon_mb": mb(st["RssAnon"]), "rss_file_mb": mb(st["RssFile"]),
            "hwm_mb": mb(st["VmHWM"]), "testbed_mb": mb(testbed), "floor_mb": mb(c.floor_kb),
            "mappings_mb": {k: round(mb(v), 2) for k, v in list(files.items())[:24]},
            "threads": r["threads"], "modules": len(mods),
            "packages": {p: counts[p] for p in per_pkg},
        }  # fmt: skip
        if not isinstance(frames, dict | list):
            print(f"  the fake room received {frames} frames")
        tm = c.work / "tracemalloc.txt"
        if tm.exists():
            print("  tracemalloc, largest live allocations (KiB, count, where):")
            print(tm.read_text().rstrip())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as f:
            f.write(json.dumps(out) + "\n")
    return 0


def mb(kb: float) -> float:
    return kb / 1024


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
