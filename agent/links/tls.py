"""Transport security shared by the outgoing links: TLS trust and the plaintext rule.

- TLS is always verified (certificate chain and host name). With ``security.ca_file``
  the CAs in that PEM file are trusted *in addition to* the system's store (a private
  CA, a self-signed server); without it the libraries' defaults apply unchanged.
  :func:`client_context` builds the one ``ssl.SSLContext`` that httpx and websockets
  both use.
- ``ws://`` and ``http://`` go only to loopback unless ``security.allow_insecure``.
  The configuration checks its own URLs when it is loaded; :func:`plaintext_refusal`
  is for URLs a server hands out at run time (VideoSDK's ``wsUrl``).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from agent.config import SecurityConfig
from agent.config_checks import is_loopback_host
from agent.errors import LinkError


class InsecureTransport(LinkError):
    """A URL would send credentials or audio in clear text to a non-loopback host."""


def client_context(security: SecurityConfig) -> ssl.SSLContext | None:
    """The verifying client context for ``security``; None = the libraries' defaults.

    Raises OSError / ssl.SSLError if ``ca_file`` cannot be loaded (the configuration
    check already refused such a file, so this only happens if it changed since).
    """
    if not security.ca_file:
        return None
    ctx = ssl.create_default_context()  # CERT_REQUIRED, check_hostname, the system's CAs
    ctx.load_verify_locations(cafile=security.ca_file)
    return ctx


def httpx_verify(security: SecurityConfig) -> ssl.SSLContext | bool:
    """httpx's ``verify=``: the context with the extra CAs, or True (httpx's default)."""
    ctx = client_context(security)
    return True if ctx is None else ctx


def ws_tls(url: str, ctx: ssl.SSLContext | None) -> dict[str, Any]:
    """websockets ``connect()`` keyword arguments for ``url``: ``ssl=ctx`` for wss:// only
    (websockets refuses an ``ssl`` argument with a ws:// URI)."""
    if ctx is not None and url.lower().startswith("wss://"):
        return {"ssl": ctx}
    return {}


def plaintext_refusal(url: str, *, allow_insecure: bool) -> str | None:
    """None if ``url`` may be used; else why not (no secret: the query is left out)."""
    parts = urlsplit(url)
    if allow_insecure or parts.scheme.lower() not in ("ws", "http"):
        return None
    host = parts.hostname or ""
    if is_loopback_host(host):
        return None
    return (
        f"{parts.scheme}:// to {host} (not loopback) is refused; the server must use "
        f"{parts.scheme}s://, or set security.allow_insecure = true"
    )
