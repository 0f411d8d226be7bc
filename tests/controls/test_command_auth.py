"""Who may do what with a remote command: Controls with a real credential file, a real
state directory and the real Metrics, driven by TopicMessage events as the link hands them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.commands import sign_command
from agent.controls import Controls, StateStore
from agent.metrics import Metrics
from agent.proto.videosdk import TopicMessage
from agent.ptt import PttGate
from agent.secrets import Credentials
from agent.status import StatusBoard

KEY = "c0ffee" * 8
DEVICE = "dev_auth"
TOPIC = "DEVICE_CMD"


def iso(t: float) -> str:
    return (
        dt.datetime.fromtimestamp(t, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def event(text: str, *, sender: str = "console", at: float | None = None) -> TopicMessage:
    stamp = iso(dt.datetime.now(dt.UTC).timestamp() if at is None else at)
    return TopicMessage(TOPIC, text, sender, "Console", stamp, "m-1", "")


def signed(cmd: str, value: Any = None, *, key: str = KEY, ts: int | None = None, **kw: Any) -> str:
    return sign_command(
        key, topic=TOPIC, device=kw.get("device", DEVICE), cmd=cmd, value=value, ts=ts
    )


class Mixer:
    volume = 1.0
    muted = False


class Rig:
    def __init__(
        self, tmp_path: Path, *, key: str | None = KEY, wall_clock: Any = None, **commands: Any
    ) -> None:
        creds = tmp_path / "creds"
        creds.mkdir(parents=True, exist_ok=True)
        if key is not None:
            (creds / "command-key").write_text(key + "\n")
            (creds / "command-key").chmod(0o600)
        self.cfg = config.from_dict(
            {"device": {"id": DEVICE}, "videosdk": {"room_id": "r"}, "commands": commands}
        )
        self.replies: list[dict[str, Any]] = []
        self.metrics = Metrics()
        self.store = StateStore(tmp_path / "state")
        (tmp_path / "state").mkdir(parents=True, exist_ok=True)
        self.controls = Controls(
            StatusBoard(),
            store=self.store,
            default_volume=0.8,
            publish=self.replies.append,
            config=lambda: self.cfg,
            credentials=Credentials(creds, env={}),
            metrics=self.metrics,
            **({"wall_clock": wall_clock} if wall_clock else {}),
        )
        self.gate = PttGate("hold")
        self.mixer = Mixer()
        self.controls.attach(self.gate, self.mixer)

    def send(self, text: str, **kw: Any) -> dict[str, Any]:
        self.controls.on_command(event(text, **kw))
        return self.replies[-1]

    def refused(self, reason: str) -> float:
        return self.metrics.get("commands_refused_total", reason=reason)


def test_a_stranger_cannot_open_the_mic_or_touch_the_speaker(tmp_path: Path) -> None:
    rig = Rig(tmp_path, allow_mic_control=True)
    for text in ('{"cmd":"ptt","value":"open"}', '{"cmd":"volume","value":0.1}', '{"cmd":"mute"}'):
        reply = rig.send(text, sender="stranger")
        assert reply["error"] == "unsigned command refused" and reply["reason"] == "unsigned"
        assert "value" not in json.dumps(reply)  # the payload is not echoed
    assert rig.gate.mode == "hold" and not rig.gate.transmitting
    assert rig.mixer.volume == 0.8 and not rig.mixer.muted
    assert rig.refused("unsigned") == 3
    # status is read-only: fine unsigned
    assert rig.send('{"cmd":"status"}')["ok"] == "status"


def test_a_signed_ptt_needs_the_opt_in(tmp_path: Path) -> None:
    rig = Rig(tmp_path)  # allow_mic_control defaults to false
    reply = rig.send(signed("ptt", "open"))
    assert reply["reason"] == "mic_control_off" and "allow_mic_control" in reply["error"]
    assert not rig.gate.transmitting
    assert rig.send(signed("volume", 0.3))["ok"] == "volume"  # the speaker needs no opt-in
    assert rig.mixer.volume == pytest.approx(0.3)
    rig.cfg = config.from_dict(
        {"device": {"id": DEVICE}, "videosdk": {"room_id": "r"},
         "commands": {"allow_mic_control": True}}
    )  # fmt: skip
    assert rig.send(signed("ptt", "open"))["ok"] == "ptt"
    assert rig.gate.transmitting


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: signed("volume", 0.1, key="another key of 32 characters...."), "bad_signature"),
        (lambda: signed("volume", 0.1, device="dev_other"), "wrong_device"),
        (lambda: signed("volume", 0.1, ts=int(dt.datetime.now(dt.UTC).timestamp()) - 3600),
         "stale"),
    ],
)  # fmt: skip
def test_forged_misdirected_and_old_commands_are_refused(
    tmp_path: Path, make: Any, reason: str
) -> None:
    rig = Rig(tmp_path)
    reply = rig.send(make())
    assert reply["reason"] == reason and rig.refused(reason) == 1
    assert rig.mixer.volume == 0.8


def test_a_replay_is_refused_also_after_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    text = signed("volume", 0.3)
    assert rig.send(text)["ok"] == "volume"
    assert rig.send(text)["reason"] == "replayed"
    rig.controls.close()
    again = Rig(tmp_path)  # a restart: same state directory
    assert again.send(text)["reason"] == "replayed"
    assert again.send(signed("volume", 0.4))["ok"] == "volume"


def test_without_a_key_signed_commands_are_refused_and_say_why(tmp_path: Path) -> None:
    rig = Rig(tmp_path, key=None)
    assert rig.send(signed("mute"))["reason"] == "no_key"
    short = Rig(tmp_path / "short", key="tooshort")
    assert short.send(signed("mute", key="tooshort"))["reason"] == "no_key"


def test_allow_list_of_senders(tmp_path: Path) -> None:
    rig = Rig(tmp_path, allowed_senders=["console"])
    assert rig.send(signed("mute"), sender="console")["ok"] == "mute"
    assert rig.send('{"cmd":"status"}', sender="peer-9")["reason"] == "sender_not_allowed"


def test_device_clock_off_does_not_matter(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name, clock in (("1970", lambda: 0.0), ("ahead", lambda: 4e9)):
        rig = Rig(tmp_path / name, wall_clock=clock)
        assert rig.send(signed("volume", 0.2))["ok"] == "volume"
        assert rig.send(signed("volume", 0.3))["ok"] == "volume"
    assert "clock is off by" in caplog.text


def test_a_flood_is_rate_limited_per_sender_with_one_reply(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rate_per_s=1.0, burst=3)
    for _ in range(100):
        rig.controls.on_command(event('{"cmd":"status"}', sender="flooder"))
    oks = [r for r in rig.replies if "ok" in r]
    limited = [r for r in rig.replies if r.get("reason") == "rate_limited"]
    assert len(oks) == 3 and len(limited) == 1
    assert rig.refused("rate_limited") == 97
    rig.controls.on_command(event('{"cmd":"status"}', sender="other"))
    assert rig.replies[-1]["ok"] == "status"  # another sender is not starved


def test_bad_commands_config_exits_78_naming_the_key(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import agent_cmd, subprocess_env

    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nid = "d"\n[videosdk]\nroom_id = "r"\n[commands]\n'
        'allow_mic_control = "yes"\nwindow_s = 1\nrate_per_s = 0\nburst = 0\n'
        'allowed_senders = ["ok", ""]\n'
    )
    out = subprocess.run(
        agent_cmd("check-config", "--config", str(cfg)),
        capture_output=True, text=True, env=subprocess_env(), timeout=30,
    )  # fmt: skip
    assert out.returncode == 78
    lines = out.stdout.splitlines() + out.stderr.splitlines()
    for key in ("allow_mic_control", "window_s", "rate_per_s", "burst", "allowed_senders"):
        assert any(line.startswith(f"{cfg}: commands.{key}: ") for line in lines), (key, lines)
