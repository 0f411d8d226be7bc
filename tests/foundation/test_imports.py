"""Layering: the protocol modules are pure, and no module imports itself back in a cycle."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
