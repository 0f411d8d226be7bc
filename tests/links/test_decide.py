"""Each link's pure ``decide(exc, history) -> Outcome``: what the operator is shown and
how the next attempt waits, for every kind of failure the link knows (no I/O)."""

from __future__ import annotations

import functools

from agent.errors import (
    AuthRefused,
    CredentialError,
    HttpRefused,
    LinkError,
    PeerClosed,
    ProtocolError,
    TlsUntrusted,
    Unreachable,
)
from agent.links import orgo, pbx, videosdk
from agent.links.runner import Delay, History
from agent.links.tls import InsecureTransport
from agent.proto.keepalive import NoPong
from agent.status import LinkState

FIRST = History()
ATTN, RETRY = LinkState.ATTENTION, LinkState.RETRY


def test_videosdk() -> None:
    d = videosdk.decide
    refused = d(AuthRefused("VideoSDK refused the credentials (HTTP 401)"), FIRST)
    assert (refused.state, refused.delay) == (ATTN, Delay.SLOW)
    assert d(CredentialError("no videosdk-token"), FIRST).state is ATTN
    assert d(InsecureTransport("ws:// refused"), FIRST).state is ATTN
    busy = d(videosdk.SessionError("api", 429, what="session request", retry_after_s=7), FIRST)
    assert (busy.state, busy.at_least_s, busy.delay) == (RETRY, 7.0, Delay.NORMAL)
    assert busy.message == "session request rate-limited (HTTP 429)"
    room = d(videosdk.SessionError("api", 404, what="session request"), FIRST)
    assert room.state is ATTN and "check videosdk.room_id" in room.message
    assert d(videosdk.SessionError("api", 503), FIRST).message == (
        "session request failed (HTTP 503)"
    )
    ws = d(HttpRefused("media", 403), FIRST)  # the upgrade, not the REST call: retried
    assert (ws.state, ws.message) == (RETRY, "WebSocket handshake refused (HTTP 403)")
    bad = d(ProtocolError("wsUrl wss://m/x?ref=s3cr3t is odd"), FIRST)
    assert bad.message == "bad session reply: wsUrl wss://m/x?ref=*** is odd"
    gone = d(Unreachable("api.videosdk.live", "DNS: name not found"), FIRST)
    assert gone.message == "cannot connect to api.videosdk.live: DNS: name not found"
    assert d(TimeoutError(), FIRST).message == "timed out connecting"


def test_orgo() -> None:
    d = functools.partial(orgo.decide, computer_id="c1")
    token = orgo.TokenRefused("closed with 4401")
    assert d(token, History(refusals=0)).state is RETRY
    assert d(token, History(refusals=1)).refusal
    third = d(token, History(refusals=2))
    assert (third.state, third.delay, third.refusal) == (ATTN, Delay.SLOW, True)
    assert third.message == "computer c1 refused its password 3 times in a row"
    gone = d(orgo.ComputerGone("closed with 4404"), FIRST)
    assert (gone.state, gone.delay) == (ATTN, Delay.SLOW)
    assert gone.message == "computer c1 not found or not running (close 4404): start it in Orgo"
    error = d(PeerClosed("server closed the connection (4500)", code=4500), FIRST)
    assert (error.state, error.message) == (RETRY, "Orgo server error (close 4500)")
    off = d(orgo.ComputerOffline("cannot connect to 127.0.0.1:9: connection refused"), FIRST)
    assert off.message == "computer offline"  # the status
    assert off.cause == "cannot connect to 127.0.0.1:9: connection refused"  # the log line
    assert d(orgo.PasswordRefused(401, "c1"), FIRST).state is ATTN
    assert d(NoPong("late"), FIRST).message == "no pong, reconnecting"
    assert d(LinkError("connection ended"), FIRST).message == "connection lost"


def test_fastrtc_tls_is_named() -> None:
    from agent.links import fastrtc

    why = "certificate is not yet valid: is the clock right?"
    out = fastrtc.decide(TlsUntrusted("app.example", why), FIRST)
    assert out.message == "app unreachable: TLS certificate not trusted"
    assert out.cause == f"cannot connect to app.example: {why}"


def test_pbx() -> None:
    d = pbx.decide
    assert d(CredentialError("no pbx-secret"), FIRST).state is ATTN
    assert d(pbx.TlsUnavailable("cannot load pbx.tls_cert"), FIRST).delay is Delay.SLOW
    busy = d(pbx.CannotListen("cannot listen on 0.0.0.0:8765: address in use"), FIRST)
    assert (busy.state, busy.message) == (RETRY, "cannot listen on 0.0.0.0:8765: address in use")
    assert d(LinkError("x"), FIRST).message == "server stopped"
