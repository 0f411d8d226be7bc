"""No secret anywhere a person or a log collector can see, during a full run with faults.

The whole agent runs against the fakes with its secrets in a credentials directory
(VideoSDK API key + secret, from which it mints JWTs; the Orgo API key, from which it
fetches rotating passwords; the PBX secret, which the PBX presents) and a token in
the FastRTC app's URL query. Faults drive every error path: refused credentials, a
stale password (close 4401), a computer restart, servers killed, garbage frames,
server errors, PBX calls with the right and a wrong (near-miss) secret, a busy and a
vanishing FastRTC app. Scanned, for every secret value the run involved (files, each
minted JWT and its payload and signature, every session ref, every password handed
out, the PBX's wrong secret, the URL token):

- every log record of every logger at DEBUG (message, arguments, exception text,
  stack, extra fields), taken *before* the handlers' redacting filter;
- every exception the event loop saw unhandled;
- every STATUS= line sent to systemd, every status JSON (StatusBoard.to_json) at each
  change, the metrics snapshot.

Expected: 0 hits. Lines from the fakes themselves (agent.sandbox.*, the remote side)
are not the agent's and are left out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from agent.commands import sign_command
from agent.service import Notifier
from tests.conftest import NotifyRecorder
from tests.reliability.fullagent import (
    COMMAND_KEY,
    FAST_LINKS,
    PBX_WRONG,
    FullAgent,
    full_agent,
)

pytestmark = pytest.mark.slow

_STD = set(vars(logging.LogRecord("n", 0, "p", 0, "m", None, None)))


class Collector(logging.Handler):
    """Everything a record carries, as text, with nothing scrubbed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("agent.sandbox"):
            return
        parts = [record.getMessage(), repr(record.args)]
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        parts += [record.exc_text or "", record.stack_info or ""]
        parts += [f"{k}={v}" for k, v in vars(record).items() if k not in _STD]
        self.texts.append((f"log {record.name}", "\n".join(parts)))


def secret_values(rig: FullAgent) -> list[str]:
    values = set(rig.secrets())
    for v in list(values):
        if v.count(".") == 2 and v.startswith("ey"):  # a JWT: its payload and signature too
            values.update(seg for seg in v.split(".")[1:] if len(seg) >= 16)
    return sorted(values)


def hits(texts: list[tuple[str, str]], secrets: list[str]) -> list[str]:
    return [f"{where}: {s[:6]}...: {t[:200]!r}" for where, t in texts for s in secrets if s in t]


async def test_no_secret_in_logs_exceptions_status_or_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify_socket: NotifyRecorder
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))  # sd_notify reads os.environ
    collector = Collector()
    root = logging.getLogger()
    names = ("", "agent", "websockets", "httpx", "httpcore")
    saved = {n: logging.getLogger(n).level for n in names}
    for name in saved:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(collector)
    texts = collector.texts
    loop_errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    try:
        async with full_agent(
            tmp_path, policies=FAST_LINKS, notifier=Notifier(env=notify_socket.env())
        ) as rig:
            board = rig.agent.status
            board.add_listener(lambda b: texts.append(("status", json.dumps(b.to_json()))))
            await run_faults(rig)
            texts.append(("status", json.dumps(board.to_json())))
            texts.append(("metrics", json.dumps(rig.agent.metrics.snapshot())))
            secrets = secret_values(rig)
            assert await rig.stop() == 0
    finally:
        root.removeHandler(collector)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        loop.set_exception_handler(None)
    texts += [("STATUS=", line) for line in notify_socket.lines()]
    texts += [("loop exception", repr(ctx)) for ctx in loop_errors]

    # the run did what it claims: many records, every kind of secret, the error paths
    assert len([t for t in texts if t[0].startswith("log")]) > 500
    assert any(t[0] == "STATUS=" for t in texts) and any(t[0] == "status" for t in texts)
    assert len(secrets) >= 10, secrets
    assert rig.vsdk.auth_failures, "VideoSDK refused a JWT at least once"
    assert any(s.close_code == 4401 for s in rig.orgo.sessions), "a stale password was refused"
    metrics = rig.agent.metrics
    assert metrics.total("calls_total", link="pbx") >= 2, "PBX calls played"
    assert metrics.total("connections_refused_total", link="pbx", reason="bad_secret") >= 1
    assert rig.rtc.refusals >= 1 and len(rig.rtc.accepted()) >= 3, "FastRTC: busy, dropped"
    assert hits([("canary", f"x{secrets[0]}y")], secrets), "the scanner finds a planted secret"

    found = hits(texts, secrets)
    assert found == [], "\n".join(found[:20])
    assert not loop_errors, loop_errors


async def run_faults(rig: FullAgent) -> None:
    vsdk, orgo = rig.vsdk, rig.orgo

    async def both_up(what: str) -> None:
        await vsdk.wait_for(rig.all_up, 10.0, f"every link up after {what}")

    await vsdk.wait_for(lambda: vsdk.frames_total >= 20, 5.0, "uplink media")
    # refused credentials, both links
    vsdk.api_key = "someone-elses-key"
    orgo.api_key, real_key = "sk_orgo_not_yours", orgo.api_key
    await vsdk.drop(1011, "rotating")
    await orgo.drop_connections()
    await vsdk.wait_for(lambda: rig.link_state("videosdk") == "attention", 5.0, "attention")
    await vsdk.wait_for(lambda: rig.link_state("orgo") == "attention", 5.0, "orgo attention")
    vsdk.api_key, orgo.api_key = "fa-vsdk-apikey-3c1e9b7d5a2f", real_key
    await both_up("refusals")
    # a stale password (4401), a restart with API lag, server errors and garbage
    await orgo.expire_token()
    await both_up("4401")
    await orgo.restart_computer(stale_fetches=1)
    await both_up("restart")
    await orgo.send_error("capture failed: token=" + orgo.password)  # a careless server
    await orgo.inject_text("{not json")
    await vsdk.send_raw("garbage " * 10)
    await vsdk.send_raw(b"\xff\x00binary")
    await vsdk.send_message("DEVICE_CMD", '{"cmd":"volume","value":0.5}')
    signed = sign_command(
        COMMAND_KEY, topic="DEVICE_CMD", device="dev_full", cmd="volume", value=0.4
    )
    await vsdk.send_message("DEVICE_CMD", signed)
    forged = json.loads(signed) | {"sig": "0" * 64}
    await vsdk.send_message("DEVICE_CMD", json.dumps(forged))
    vsdk.rest_status = 500
    await vsdk.drop(4000, "custom close")
    await asyncio.sleep(0.3)
    vsdk.rest_status = None
    await both_up("HTTP 500")
    # servers killed
    await vsdk.stop_ws()
    await orgo.stop_computer(refuse=True)
    await asyncio.sleep(0.5)
    await vsdk.start_ws()
    await orgo.start_computer()
    await both_up("servers killed")
    await pbx_and_fastrtc_faults(rig)
    await both_up("PBX and FastRTC faults")
    await asyncio.sleep(0.5)


async def pbx_and_fastrtc_faults(rig: FullAgent) -> None:
    rtc, metrics = rig.rtc, rig.agent.metrics
    # a PBX call with the right secret plays; one with a near miss is refused (401)
    async with rig.pbx_call() as call:
        await call.stream(0.5)
        await rig.vsdk.wait_for(
            lambda: metrics.total("active_channels", link="pbx") == 2, 5.0, "a PBX call playing"
        )
        await call.send_raw('{"callid":"x","audio":"!!"}')  # garbage in a live call
        await call.end()
    with pytest.raises(InvalidStatus) as refused:
        await rig.pbx_call(PBX_WRONG).connect()
    assert refused.value.response.status_code == 401
    async with rig.pbx_call() as call:  # then the PBX vanishes mid-call
        await call.stream(0.3)
        assert call.ws is not None
        call.ws.transport.abort()
    # the FastRTC app: notes, garbage, an error, a busy app, a vanishing app
    await rtc.send_log("started_talking")
    await rtc.send_raw("{not json")
    await rtc.send_error("the model is overloaded")
    rtc.busy = True
    rtc.drop_connections()
    await rig.vsdk.wait_for(lambda: rtc.refusals >= 1, 5.0, "a refused FastRTC session")
    rtc.busy = False
    await rig.vsdk.wait_for(lambda: rig.link_state("fastrtc") == "up", 10.0, "fastrtc back")
    rtc.drop_connections()
