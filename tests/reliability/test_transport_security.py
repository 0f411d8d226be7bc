"""Transport security: TLS verified by default (a self-signed loopback server is refused
unless ``security.ca_file`` trusts its CA), for httpx and websockets alike, through the
whole agent; plaintext to non-loopback hosts refused unless ``security.allow_insecure``,
in the config and for URLs a server hands out at run time."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trustme

from agent import config
from agent.config import DeviceConfig, SecurityConfig, VideoSDKConfig
from agent.errors import ConfigError
from agent.links.videosdk import VideoSDKLink
from agent.metrics import Metrics
from agent.sandbox.fastrtc import FakeFastRTC
from agent.sandbox.faultproxy import FaultProxy, Resolver
from agent.sandbox.orgo import FakeOrgo
from agent.sandbox.videosdk import FakeVideoSDK
from agent.secrets import Credentials
from agent.status import StatusBoard
from tests.reliability.fullagent import FAST_LINKS, full_agent
from tests.reliability.rigs import write_secret
from tests.support import RecordingMixer, wait_until


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


# --- config -------------------------------------------------------------------------------


def _load(security: dict[str, Any], **sections: dict[str, Any]) -> config.Config:
    raw: dict[str, Any] = {"device": {"id": "d"}, "videosdk": {"room_id": "r"}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    raw["security"] = security
    return config.from_dict(raw, path="t.toml")


def test_ca_file_must_be_a_readable_absolute_pem_file(tmp_path: Path, ca_file: Path) -> None:
    assert _load({"ca_file": str(ca_file)}).security.ca_file == str(ca_file)
    assert _load({}).security.ca_file == ""
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    for value, reason in (
        ("private-ca.pem", "absolute path"),
        (str(tmp_path / "missing.pem"), "not found"),
        (str(not_pem), "no PEM CA certificate"),
        (str(tmp_path), "cannot read"),
    ):
        with pytest.raises(ConfigError) as e:
            _load({"ca_file": value})
        assert e.value.problems == [
            f"t.toml: security.ca_file: {e.value.problems[0].split(': ', 2)[2]}"
        ]
        assert reason in e.value.problems[0], (value, e.value.problems)


URL_KEYS = [
    ("videosdk", "api_base", "http://{h}:8080"),
    ("orgo", "api_base", "http://{h}/api"),
    ("orgo", "audio_url", "ws://{h}/{{computer_id}}/audio"),
    ("fastrtc", "url", "ws://{h}:7860/websocket/offer"),
]


@pytest.mark.parametrize(("section", "key", "template"), URL_KEYS)
@pytest.mark.parametrize(
    "host",
    ["example.org", "10.0.0.9", "0.0.0.0", "[::ffff:127.0.0.1]", "127.0.0.1.nip.io", "localhost."],
)
def test_plaintext_to_a_non_loopback_host_is_refused(
    section: str, key: str, template: str, host: str
) -> None:
    enable = {"enabled": True, "computer_id": "c"} if section == "orgo" else {"enabled": True}
    value = {**enable, key: template.format(h=host)}
    with pytest.raises(ConfigError) as e:
        _load({}, **{section: value})
    assert any(f"{section}.{key}: " in p and "non-loopback" in p for p in e.value.problems)
    assert _load({"allow_insecure": True}, **{section: value})  # unless explicitly allowed


@pytest.mark.parametrize(("section", "key", "template"), URL_KEYS)
@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "[::1]", "localhost"])
def test_plaintext_to_loopback_is_allowed(section: str, key: str, template: str, host: str) -> None:
    enable = {"enabled": True, "computer_id": "c"} if section == "orgo" else {"enabled": True}
    assert _load({}, **{section: {**enable, key: template.format(h=host)}})


# --- a plaintext wsUrl handed out at run time ---------------------------------------------


@pytest.mark.parametrize("allow_insecure", [False, True])
async def test_a_plaintext_session_url_to_another_host_is_refused_at_run_time(
    tmp_path: Path, allow_insecure: bool
) -> None:
    """The REST reply decides where audio goes: a ws:// wsUrl to a non-loopback host is
    not connected to (ATTENTION), unless allow_insecure."""
    write_secret(tmp_path, "videosdk-token", "tok-0123456789abcdef")
    status, metrics = StatusBoard(), Metrics()
    async with (
        FakeVideoSDK(token="tok-0123456789abcdef") as fake,
        httpx.AsyncClient(trust_env=False) as http,
    ):
        with Resolver(["media.agent-test.invalid"]):
            fake.ws_url_base = f"ws://media.agent-test.invalid:{fake.ws_port}"
            link = VideoSDKLink(
                VideoSDKConfig(room_id="r", api_base=fake.api_base),
                DeviceConfig(id="d"),
                Credentials(tmp_path, env={}),
                uplink=asyncio.Queue(),
                mixer=RecordingMixer(),
                status=status,
                metrics=metrics,
                http=http,
                security=SecurityConfig(allow_insecure=allow_insecure),
            )
            task = asyncio.create_task(link.run())

            def part() -> tuple[str, str]:
                p = status.links.get("videosdk")
                return ("", "") if p is None else (p.state.value, p.detail)

            try:
                want = "up" if allow_insecure else "attention"
                await wait_until(lambda: part()[0] == want, 5.0, want)
                if not allow_insecure:
                    detail = part()[1]
                    assert "ws:// to media.agent-test.invalid (not loopback) is refused" in detail
                    assert not fake.ref_presented, "nothing may be sent to that URL"
                    assert "ref=" not in detail
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


# --- TLS through the whole agent ---------------------------------------------------------


LINKS = ("videosdk", "orgo", "fastrtc")  # the outgoing links (the PBX serves: tests/pbx)


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [False, True], ids=["default-trust", "ca_file"])
@pytest.mark.parametrize("rest_tls", [True, False], ids=["https+wss", "wss-only"])
async def test_a_self_signed_server_is_refused_unless_its_ca_is_configured(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server_tls: ssl.SSLContext,
    ca_file: Path,
    trusted: bool,
    rest_tls: bool,
) -> None:
    """TLS terminators with a certificate from a private CA sit in front of the fakes'
    WebSocket servers (VideoSDK, Orgo, FastRTC) and, for https+wss, the REST APIs.
    Without ``ca_file`` no link comes up and no request or handshake reaches the fakes;
    with it all three do.
    "wss-only" keeps REST on plain loopback http, so websockets' own verification is
    what is tested there."""
    proxies: list[FaultProxy] = []

    async def tls_front(port: int) -> int:
        proxy = FaultProxy(port, tls=server_tls)
        await proxy.start()
        proxies.append(proxy)
        return proxy.port

    async def setup(
        vsdk: FakeVideoSDK, orgo: FakeOrgo, rtc: FakeFastRTC
    ) -> dict[str, dict[str, Any]]:
        vsdk.ws_url_base = f"wss://127.0.0.1:{await tls_front(vsdk.ws_port)}"
        audio = await tls_front(_port(orgo.audio_url))
        out: dict[str, dict[str, Any]] = {
            "orgo": {"audio_url": f"wss://127.0.0.1:{audio}/{{computer_id}}/audio"},
            "fastrtc": {"url": f"wss://127.0.0.1:{await tls_front(rtc.port)}/websocket/offer"},
            "security": {"ca_file": str(ca_file)} if trusted else {},
        }
        if rest_tls:
            out["videosdk"] = {
                "api_base": f"https://127.0.0.1:{await tls_front(_port(vsdk.api_base))}"
            }
            out["orgo"]["api_base"] = (
                f"https://127.0.0.1:{await tls_front(_port(orgo.api_base))}/api"
            )
        return out

    try:
        async with full_agent(
            tmp_path, policies=FAST_LINKS, setup=setup, wait_up=False, links=LINKS
        ) as rig:
            if trusted:
                await wait_until(rig.all_up, 10.0, "every link up over TLS")
                await rig.vsdk.wait_for(lambda: rig.vsdk.frames_total >= 10, 5.0, "wss media")
                await wait_until(lambda: rig.rtc.media_total >= 10, 5.0, "wss media (fastrtc)")
                assert all(p.connections for p in proxies), "every TLS front was used"
            else:
                # several attempts each, all refused at the TLS handshake
                await wait_until(
                    lambda: rig.agent.metrics.total("reconnects_total") >= 4, 10.0, "retries"
                )
                await wait_until(
                    lambda: rig.agent.metrics.total("reconnects_total", link="fastrtc") >= 2,
                    10.0,
                    "fastrtc retries",
                )
                assert not any(rig.link_state(name) == "up" for name in LINKS)
                assert not rig.vsdk.ref_presented, "a wss handshake got through unverified"
                assert not rig.orgo.sessions, "an Orgo handshake got through unverified"
                assert not rig.rtc.connections, "a FastRTC handshake got through unverified"
                await wait_until(
                    lambda: (
                        rig.agent.status.links["fastrtc"].detail
                        == "app unreachable: TLS certificate not trusted"
                    ),
                    5.0,
                    "the reason shown",
                )
                if rest_tls:
                    assert not rig.vsdk.rest_requests and not rig.orgo.rest_requests
                else:
                    assert rig.vsdk.rest_requests and rig.orgo.rest_requests
                # (a TLS front only counts connections whose handshake completed)
                assert sum(p.connections for p in proxies) == 0
    finally:
        for p in proxies:
            await p.stop()


@pytest.mark.slow
async def test_a_reload_that_adds_the_ca_brings_every_link_up_over_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    """security.ca_file added by a reload reaches both the WebSocket handshakes and the
    REST client (a new one: the old trusted only the system's CAs)."""
    proxies: list[FaultProxy] = []

    async def tls_front(port: int) -> int:
        proxy = FaultProxy(port, tls=server_tls)
        await proxy.start()
        proxies.append(proxy)
        return proxy.port

    async def setup(
        vsdk: FakeVideoSDK, orgo: FakeOrgo, rtc: FakeFastRTC
    ) -> dict[str, dict[str, Any]]:
        vsdk.ws_url_base = f"wss://127.0.0.1:{await tls_front(vsdk.ws_port)}"
        return {
            "videosdk": {"api_base": f"https://127.0.0.1:{await tls_front(_port(vsdk.api_base))}"},
            "orgo": {
                "audio_url": f"wss://127.0.0.1:{await tls_front(_port(orgo.audio_url))}"
                "/{computer_id}/audio",
                "api_base": f"https://127.0.0.1:{await tls_front(_port(orgo.api_base))}/api",
            },
        }

    try:
        async with full_agent(
            tmp_path,
            policies=FAST_LINKS,
            setup=setup,
            wait_up=False,
            links=("videosdk", "orgo"),
        ) as rig:
            await wait_until(
                lambda: rig.agent.metrics.total("reconnects_total") >= 3, 10.0, "refusals"
            )
            assert not rig.vsdk.rest_requests and not rig.orgo.rest_requests
            rig.write_config({"security": {"ca_file": str(ca_file)}})
            rig.agent.reload()
            await wait_until(rig.all_up, 10.0, "every link up over TLS after the reload")
            await rig.vsdk.wait_for(lambda: rig.vsdk.frames_total >= 10, 5.0, "wss media")
            assert rig.vsdk.rest_requests and rig.orgo.rest_requests
    finally:
        for p in proxies:
            await p.stop()


def _port(url: str) -> int:
    port = urlsplit(url.replace("{computer_id}", "x")).port
    assert port is not None
    return port
