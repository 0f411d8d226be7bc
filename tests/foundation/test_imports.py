"""Layering: the protocol modules are pure, and no module imports itself back in a cycle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import agent_cmd, subprocess_env

PURE = [
    "agent.pcm",
    "agent.proto.videosdk",
    "agent.proto.orgo",
    "agent.proto.fastrtc",
    "agent.proto.yeastar",
]


@pytest.mark.parametrize("module", PURE)
def test_protocol_modules_load_no_io_library(module: str) -> None:
    """`import agent.proto.X` in a fresh interpreter loads neither asyncio, websockets nor
    httpx: a protocol module can be read, tested and reused without the agent's runtime."""
    code = (
        f"import sys, {module}; "
        "print(','.join(m for m in ('asyncio', 'websockets', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} loads {out.stdout.strip()}"


# --- what the agent keeps resident (issue 18: RSS after 60 s <= 45 MB) -------------------
# Measured with bench/rss_bench.py: PyJWT loads `cryptography` (~8 MB) whenever it is
# installed, httpx its command-line client (click, rich, pygments: ~6 MB) whenever those
# are; neither is needed by `field-agent run` with a VideoSDK token.
NOT_AT_RUN = ("jwt", "cryptography", "click", "pygments", "rich", "httpx._main")
RUN_MODULES = (
    "agent.__main__", "agent.app", "agent.hw.alsa", "agent.audio.capture",
    "agent.audio.playback", "agent.observe.server", "agent.links.videosdk",
    "agent.links.orgo", "agent.links.fastrtc", "agent.links.pbx",
)  # fmt: skip


def imported_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c",
         f"{code}\nimport sys; print(' '.join(m for m, v in sys.modules.items() if v))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(out.stdout.split())


def test_the_running_agent_loads_no_jwt_library_nor_httpx_command_line() -> None:
    """What ``field-agent run`` imports with every link (the modules its runner loads)
    and an httpx client made: no PyJWT (only minting from an API key needs it, and it
    drags in ``cryptography``) and no httpx CLI (``click``/``rich``/``pygments``)."""
    mods = imported_by(
        f"import {', '.join(RUN_MODULES)}\nimport httpx\nhttpx.AsyncClient(trust_env=False)"
    )
    assert "httpx" in mods and "websockets" in mods and "numpy" in mods
    assert not {m for m in mods if m.split(".")[0] in NOT_AT_RUN or m in NOT_AT_RUN}


def test_minting_a_jwt_loads_pyjwt_when_it_is_needed() -> None:
    """The api-key + secret credential set still mints its HS256 JWT (PyJWT loaded then)."""
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys\nfrom agent.links.videosdk_auth import mint_jwt\n"
         "assert 'jwt' not in sys.modules\n"
         "t = mint_jwt('key-1', 'secret-1', now=1.7e9)\n"
         "print(t.count('.'), 'jwt' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["2", "True"]


def test_check_config_loads_no_audio_or_network_library(tmp_path: Path) -> None:
    """``field-agent check-config`` (run by hand and by the installer on a Pi Zero) reads
    the config and the credentials' presence, and loads none of numpy, websockets,
    httpx nor PyJWT: it answers quickly and in little memory."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nid = "kiosk_3"\n[videosdk]\nroom_id = "real-room-0001"\n'
        '[orgo]\nenabled = true\ncomputer_id = "a3bb189e-8bf9-3888-9912-ace4e6543002"\n'
    )
    (tmp_path / "videosdk-token").write_text("tok")
    (tmp_path / "videosdk-token").chmod(0o600)
    r = subprocess.run(
        agent_cmd("check-config", "--config", str(cfg), "--credentials", str(tmp_path)),
        capture_output=True, text=True, timeout=60,
        env={**subprocess_env(), "PYTHONPROFILEIMPORTTIME": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"{cfg}: OK", r.stdout
    loaded = {
        line.rsplit("|", 1)[1].strip()
        for line in r.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "agent.config" in loaded
    heavy = {m for m in loaded if m.split(".")[0] in ("numpy", "websockets", "httpx", "jwt")}
    assert not heavy, sorted(heavy)
