"""Transport security shared by the outgoing links: TLS trust and the plaintext rule.

- TLS is always verified (certificate chain and host name), against the system's CA
  store (``ca-certificates``; what websockets and asyncio use by default), plus the CAs
  in ``security.ca_file`` when it is set (a private CA, a self-signed server).
  :func:`client_context` gives the one ``ssl.SSLContext`` httpx and every wss://
  connection share: not one per connection (what asyncio makes for ``ssl=True``), nor
  httpx's own from its certifi bundle. Each context holds its own parsed copy of the
  CA store, about 0.9 MB RSS.
- ``ws://`` and ``http://`` go only to loopback unless ``security.allow_insecure``.
  The configuration checks its own URLs when it is loaded; :func:`plaintext_refusal`
  is for URLs a server hands out at run time (VideoSDK's ``wsUrl``).
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

from agent.config import SecurityConfig
from agent.config_checks import is_loopback_host
from agent.errors import LinkError


class InsecureTransport(LinkError):
    """A URL would send credentials or audio in clear text to a non-loopback host."""


_shared: dict[tuple[str, int, int], ssl.SSLContext] = {}
_shared_lock = threading.Lock()


def client_context(security: SecurityConfig) -> ssl.SSLContext:
    """The verifying client context for ``security``: the system's CAs (what asyncio
    uses for a wss:// connection without one), plus those of ``ca_file``.

    Shared: the same object for the same ``ca_file`` while that file is unchanged (a
    reload after editing it gets a new context with the new CAs).

    Raises OSError / ssl.SSLError if ``ca_file`` cannot be loaded (the configuration
    check already refused such a file, so this only happens if it changed since).
    """
    key = ("", 0, 0)
    if security.ca_file:
        st = os.stat(security.ca_file)
        key = (security.ca_file, st.st_mtime_ns, st.st_size)
    with _shared_lock:
        ctx = _shared.get(key)
        if ctx is None:
            ctx = ssl.create_default_context()  # CERT_REQUIRED, check_hostname, system CAs
            if security.ca_file:
                ctx.load_verify_locations(cafile=security.ca_file)
            # the default one, and the latest ca_file's: older ones go with their links
            for old in [k for k in _shared if k[0]]:
                del _shared[old]
            _shared[key] = ctx
    return ctx


def httpx_verify(security: SecurityConfig) -> ssl.SSLContext:
    """httpx's ``verify=``: the shared context (the system's CAs, plus ``ca_file``'s)."""
    return client_context(security)


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
