"""VM tier: the amd64 image booted under QEMU TCG, real systemd as PID 1, real drivers.

``image/build --vm`` makes the image (the cached Debian base, the agent installed by
``image/provision.sh``, the test overlay of ``image/vm/``); ``image/vm-run`` boots it.
Inside, ``field-agent.service`` starts at boot against snd-aloop sound devices, gpio-sim
lines (gpiozero's lgpio factory) and the sandbox VideoSDK/Orgo servers on the guest's
loopback; ``image/vm/checks.py`` then drives it and prints one ``VMCHECK`` line per
check on the serial console. Each test below asserts one of those lines.

Needs root, ``qemu-system-x86``, ``qemu-utils``, ``mmdebstrap`` (``.ci/run`` installs
them). Selecting ``-m vm`` on a machine without them fails rather than skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.vm

OUT = REPO / "image" / "out"
BUILD_TIMEOUT_S = 1500  # a cold base rootfs is ~3-4 min; everything else ~1 min
BOOT_TIMEOUT_S = 720  # the guest's whole run is ~3-4 min under TCG on 2 loaded cores


@dataclass
class VmRun:
    build: dict[str, object]
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    serial: list[str] = field(default_factory=list)
    done: bool = False
    qemu_rc: int | None = None
    boot_wall_s: float = 0.0
    build_wall_s: float = 0.0

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.serial[-n:])


def _require_tools() -> None:
    missing = [t for t in ("qemu-system-x86_64", "mmdebstrap", "mkfs.ext4") if not shutil.which(t)]
    if missing:
        pytest.fail(
            f"VM tier needs {missing}: apt-get install qemu-system-x86 qemu-utils mmdebstrap"
        )
    if os.geteuid() != 0:
        pytest.fail("VM tier needs root (mmdebstrap, chroot, image ownership)")


@pytest.fixture(scope="module")
def vm(request: pytest.FixtureRequest) -> VmRun:
    _require_tools()
    t0 = time.monotonic()
    built = subprocess.run(
        [str(REPO / "image" / "build"), "--vm", "--out", str(OUT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert built.returncode == 0, f"image/build --vm failed:\n{built.stderr[-4000:]}"
    run = VmRun(build=json.loads(built.stdout.strip().splitlines()[-1]))
    run.build_wall_s = time.monotonic() - t0

    serial_log = OUT / "vm" / "serial.log"
    t1 = time.monotonic()
    with (
        serial_log.open("w") as log,
        subprocess.Popen(
            [str(REPO / "image" / "vm-run"), "--timeout", str(BOOT_TIMEOUT_S), str(OUT / "vm")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as qemu,
    ):
        assert qemu.stdout is not None
        for raw in qemu.stdout:
            log.write(raw)
            line = raw.strip()
            run.serial.append(line)
            words = line.split(" ", 3)
            if words[0] == "VMCHECK" and len(words) >= 3:
                run.checks[words[1]] = (words[2] == "PASS", words[3] if len(words) > 3 else "")
            elif words[0] == "VMINFO" and len(words) >= 3:
                run.info[words[1]] = line.split(" ", 2)[2]
            elif words[0] == "VMDONE":
                run.done = True
        run.qemu_rc = qemu.wait()
    run.boot_wall_s = time.monotonic() - t1
    _report(request.config, run)
    return run


def _report(config: pytest.Config, run: VmRun) -> None:
    """The numbers the issue note wants, printed under the test results."""
    b = run.build
    lines = [
        "VM tier (QEMU TCG, -smp 2):",
        f"  build: {run.build_wall_s:.0f} s (base rootfs {b['base_s']} s"
        f"{' (cached)' if b['base_s'] == 0 else ''}, provision {b['provision_s']} s)",
        f"  base tarball {int(b['base_bytes']) / 2**20:.0f} MiB, rootfs "
        f"{int(b['rootfs_bytes']) / 2**20:.0f} MiB, root.img {int(b['image_bytes']) / 2**20:.0f} "
        f"MiB ({int(b['image_allocated_bytes']) / 2**20:.0f} MiB allocated)",
        f"  guest run (boot, checks, poweroff): {run.boot_wall_s:.0f} s wall",
    ]
    lines += [f"  {k}: {v}" for k, v in run.info.items()]
    (OUT / "vm" / "vm-tier.json").write_text(
        json.dumps(
            {
                "build": b,
                "build_wall_s": run.build_wall_s,
                "boot_wall_s": run.boot_wall_s,
                "info": run.info,
                "checks": run.checks,
            },
            indent=2,
        )
    )
    config.vm_tier_summary = lines  # type: ignore[attr-defined]  # printed by conftest.py


CHECKS = {
    "1-starts-at-boot": "field-agent.service is active (Type=notify) at boot, credentials loaded",
    "2-ptt-tone-reaches-room": "a mic tone reaches the room only while gpio-sim holds PTT",
    "3-room-audio-reaches-speaker": "room audio from the fake is played on the speaker",
    "4-status-led": "status LED solid when connected, 1 Hz blink when the server is gone",
    "5-journal-link-fields-no-secrets": "journal records carry LINK=, no secret anywhere",
    "6-watchdog-restarts-stalled-agent": "a SIGSTOPped agent is restarted (Result=watchdog)",
    "7-bad-config-exit-78-no-restart": "a bad config exits 78 and is not restarted",
    "8-provisioned-path-and-first-boot-files": (
        "field-agent on PATH; the first-boot directory's config, credentials, Wi-Fi and ssh key"
        " are moved into place (root-only) and removed from it"
    ),
}


@pytest.mark.parametrize("name", list(CHECKS), ids=[n.split("-", 1)[1] for n in CHECKS])
def test_guest_check(vm: VmRun, name: str) -> None:
    assert name in vm.checks, (
        f"the guest reported nothing for {name} ({CHECKS[name]}); serial tail:\n{vm.tail()}"
    )
    ok, detail = vm.checks[name]
    assert ok, f"{CHECKS[name]}: {detail}\nserial tail:\n{vm.tail()}"


def test_guest_finished_and_powered_off(vm: VmRun) -> None:
    assert vm.done, f"the checks did not finish (qemu exit {vm.qemu_rc}); serial tail:\n{vm.tail()}"
    assert vm.qemu_rc == 0, (
        f"qemu exit {vm.qemu_rc} (124 = host timeout): the guest did not power off"
    )
