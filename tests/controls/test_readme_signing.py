"""The README's "how an operator console signs a command" snippet, run as written: what it
prints is accepted by the agent's Controls, and matches agent.commands.sign_command."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.commands import parse, signature
from agent.controls import Controls, StateStore
from agent.proto.videosdk import TopicMessage
from agent.ptt import PttGate
from agent.secrets import Credentials
from agent.status import StatusBoard

README = Path(__file__).resolve().parents[2] / "README.md"
KEY = "5f2b8c0e4a7d9163b2e8f0c4a6d1e3b7"


def snippet() -> str:
    text = README.read_text()
    found = re.search(r"<!-- console-signing -->\n```python\n(.*?)```", text, re.S)
    assert found, "the README lost its signing snippet"
    return found.group(1)


def test_the_readme_snippet_produces_a_command_the_agent_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "command-key").write_text(KEY + "\n")
    (tmp_path / "command-key").chmod(0o600)
    monkeypatch.chdir(tmp_path)  # the snippet reads ./command-key
    scope: dict[str, Any] = {}
    exec(compile(snippet(), "README.md", "exec"), scope)
    message = scope["message"]
    env = parse(message)
    assert env.sig == signature(KEY.encode(), "DEVICE_CMD", env.body)

    cfg = config.from_dict(
        {"device": {"id": "dev_12"}, "videosdk": {"room_id": "r"},
         "commands": {"allow_mic_control": True}}
    )  # fmt: skip
    replies: list[dict[str, Any]] = []
    controls = Controls(
        StatusBoard(),
        store=StateStore(None),
        default_volume=0.8,
        publish=replies.append,
        config=lambda: cfg,
        credentials=Credentials(tmp_path, env={}),
    )
    gate = PttGate("hold")
    controls.attach(gate, None)
    stamp = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    controls.on_command(TopicMessage("DEVICE_CMD", message, "console", "Ops", stamp, "m1", ""))
    assert replies[-1]["ok"] == "ptt", json.dumps(replies)
    assert gate.mode == "open" and gate.transmitting
