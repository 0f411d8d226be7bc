"""alsa-lib's own error lines: how many reach the terminal, and what routing them costs.

Opens a PCM that does not exist N times (what the agent's capture loop does while a USB
mic is unplugged), in a child process per mode so each starts clean:

- ``stderr``: pyalsaaudio as is: alsa-lib writes ``ALSA lib pcm.c:...`` to fd 2 each time;
- ``routed``: with agent.hw.alsalog's handler installed (snd_lib_error_set_handler).

Prints, per mode, the lines that reached fd 2, the DEBUG log lines, and the time per
failed open (median of 5 runs). Usage: ``.venv/bin/python bench/alsa_lib_messages.py [N]``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import io, json, logging, sys, time
import alsaaudio
mode, n = sys.argv[1], int(sys.argv[2])
log = io.StringIO()
handler = logging.StreamHandler(log)
logging.getLogger("agent").addHandler(handler)
logging.getLogger("agent").setLevel(logging.DEBUG)
if mode == "routed":
    from agent.hw.alsalog import route_alsa_lib_errors
    assert route_alsa_lib_errors()
times = []
for _ in range(n):
    t0 = time.perf_counter()
    try:
        alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="nosuchmic-bench")
    except alsaaudio.ALSAAudioError:
        pass
    times.append(time.perf_counter() - t0)
print(json.dumps({"log_lines": len(log.getvalue().splitlines()), "times": times}))
"""


def run(mode: str, n: int) -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(n)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    r.check_returncode()
    doc = json.loads(r.stdout)
    return {
        "stderr_lines": sum("ALSA lib" in line for line in r.stderr.splitlines()),
        "log_lines": doc["log_lines"],
        "us_per_open": statistics.median(doc["times"]) * 1e6,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print(f"{n} failed opens of a missing PCM, per mode (median of 5 child runs)")
    for mode in ("stderr", "routed"):
        runs = [run(mode, n) for _ in range(5)]
        print(
            f"  {mode:<7} ALSA lib lines on fd 2: {runs[0]['stderr_lines']:>4}   "
            f"DEBUG log lines: {runs[0]['log_lines']:>3}   "
            f"per open: {statistics.median(r['us_per_open'] for r in runs):7.1f} us"
        )


if __name__ == "__main__":
    main()
