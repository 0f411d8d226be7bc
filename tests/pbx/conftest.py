"""Fixtures for the PBX link: a real PbxLink on a loopback port, a recording mixer,
the sandbox PBX client, and a self-signed certificate for wss://."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.backoff import BackoffPolicy, Reconnector
from agent.config import PbxConfig
from agent.links.pbx import PbxLink
from agent.metrics import Metrics
from agent.sandbox.pbx import PbxCall, two_party_call
from agent.secrets import Credentials
from agent.service import Heartbeat
from agent.status import StatusBoard
from tests.support import LinkHarnessBase, RecordingMixer, wait_until

SECRET = "pbx-Secret-0123456789"
FAST = BackoffPolicy(initial_s=0.05, cap_s=0.2, slow_s=0.3, healthy_after_s=60.0)


@dataclass
class Harness(LinkHarnessBase):
    """A real PbxLink listening on 127.0.0.1 (a free port), with a recording mixer."""

    link_name: ClassVar[str] = "pbx"

    cfg: PbxConfig
    creds: Credentials
    mixer: Any = field(default_factory=RecordingMixer)
    metrics: Metrics = field(default_factory=Metrics)
    status: StatusBoard = field(default_factory=StatusBoard)
    heartbeat: Heartbeat = field(default_factory=lambda: Heartbeat("pbx", 10.0, time.monotonic))
    link: PbxLink | None = None
    task: asyncio.Task[None] | None = None
    client_ssl: ssl.SSLContext | None = None

    async def start(self, until: str = "up", **cfg_changes: Any) -> PbxLink:
        """Start the link (with ``cfg_changes``); wait for the state ``until`` (listening)."""
        self.cfg = replace(self.cfg, **cfg_changes)
        self.link = PbxLink(
            self.cfg,
            self.creds,
            mixer=self.mixer,
            status=self.status,
            metrics=self.metrics,
            heartbeat=self.heartbeat,
            reconnector=Reconnector(FAST),
        )
        self.task = asyncio.create_task(self.link.run(), name="pbx-under-test")
        await wait_until(lambda: self.state() == until, 5, f"the PBX link {until}")
        return self.link

    def received(self) -> int:
        """Call samples pushed into the live sources (each source's lead-in left out)."""
        return sum(sum(c.size for c in s.chunks[1:]) for s in self.mixer.live())

    @property
    def url(self) -> str:
        assert self.link is not None
        return self.link.url

    def call(self, **kw: Any) -> PbxCall:
        """The sandbox PBX's two-party call (1009 at 440 Hz, 1010 at 660 Hz) to this link."""
        kw.setdefault("secret", SECRET)
        kw.setdefault("sample_rate", self.cfg.sample_rate)
        kw.setdefault("ssl_context", self.client_ssl)
        return two_party_call(self.url, **kw)


def write_secret(directory: Path, value: str = SECRET) -> Credentials:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pbx-secret"
    path.write_text(value + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return Credentials(directory, env={})


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    cfg = PbxConfig(enabled=True, listen="127.0.0.1:0")  # port 0: the OS picks a free one
    h = Harness(cfg, write_secret(tmp_path / "creds"))
    try:
        yield h
    finally:
        if h.task is not None and not h.task.done():
            await h.stop()


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client that trusts exactly this self-signed certificate."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        return ctx


def make_self_signed(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """A fresh self-signed certificate for ``host`` (an IP SAN), key mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "field-agent test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "pbx.crt", directory / "pbx.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return TlsFiles(cert_path, key_path)


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_self_signed(tmp_path / "tls")
