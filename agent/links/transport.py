"""Transport exceptions → the agent's error tree, with the cause a person needs.

The libraries say what failed in their own words and types: websockets
(``InvalidStatus``, ``InvalidHandshake``, ``InvalidURI``, ``ConnectionClosed``),
httpx (``ConnectError`` wrapping the real cause), ``ssl`` (a verify code), ``OSError``
and ``socket.gaierror`` (errno), ``TimeoutError``. :func:`link_error` maps any of
them to one :class:`~agent.errors.LinkError` that names the host (never the path's
query or a ref: that is where tokens live) and the cause::

    cannot connect to api.videosdk.live: certificate is not yet valid: is the clock right?
    cannot connect to orgo.example: DNS: name not found
    cannot connect to 127.0.0.1:9: connection refused
    api.videosdk.live answered HTTP 503

:func:`closed` does the same for a connection that ended (close code and reason).
"""

from __future__ import annotations

import errno
import socket
import ssl
from urllib.parse import urlsplit

import httpx
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from agent.errors import AgentError, HttpRefused, LinkError, PeerClosed, TlsUntrusted, Unreachable

__all__ = ["closed", "host_of", "link_error", "retry_after", "shown_url", "tls_reason"]

RETRY_AFTER_CAP_S = 300.0  # a peer's Retry-After is honoured up to this

# OpenSSL's verify messages, as a person at the device would act on them.
_TLS_HINTS = {
    "certificate is not yet valid": "is the clock right?",
    "certificate has expired": "is the clock right, or is the certificate old?",
    "self-signed certificate": "trust it with security.ca_file",
    "self signed certificate": "trust it with security.ca_file",
    "unable to get local issuer certificate": "a private CA? set security.ca_file",
    "self-signed certificate in certificate chain": "a private CA? set security.ca_file",
}

_ERRNO = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EHOSTUNREACH: "host unreachable (no route)",
    errno.ENETUNREACH: "network unreachable (no route)",
    errno.ETIMEDOUT: "timed out",
    errno.EPIPE: "connection reset",
}


def host_of(url: str) -> str:
    """``host[:port]`` of ``url``: no user info, path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host or "?"


def shown_url(url: str) -> str:
    """``url`` fit for a log line: scheme, host and path; no query, fragment or user info."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "?"
    return f"{parts.scheme}://{host_of(url)}{parts.path}"


def tls_reason(exc: ssl.SSLError) -> str:
    """The verify reason of a TLS failure, with what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = str(exc.verify_message or "certificate verify failed")
        if message.startswith("Hostname mismatch"):
            return "certificate is for another host name"
        hint = _TLS_HINTS.get(message)
        return f"{message}: {hint}" if hint else message
    return f"TLS handshake failed ({getattr(exc, 'reason', None) or type(exc).__name__})"


def _cause(exc: BaseException) -> BaseException:
    """The innermost useful cause: httpx and httpcore wrap the socket's own error."""
    seen = 0
    while seen < 8:
        inner = exc.__cause__ or exc.__context__
        if inner is None or isinstance(exc, ssl.SSLError | socket.gaierror):
            return exc
        if isinstance(exc, OSError) and not isinstance(inner, OSError):
            return exc
        exc, seen = inner, seen + 1
    return exc


def _os_cause(exc: BaseException) -> str:
    match exc:
        case socket.gaierror(errno=code) if code in (socket.EAI_NONAME, socket.EAI_NODATA):
            return "DNS: name not found"
        case socket.gaierror(errno=socket.EAI_AGAIN):
            return "DNS: lookup failed (no network or no DNS server?)"
        case socket.gaierror():
            return "DNS lookup failed"
        case TimeoutError():
            return "timed out"
        case OSError(errno=code) if code in _ERRNO:
            return _ERRNO[code]
        case OSError(strerror=text) if text:
            return text.lower() if text[:1].isupper() and text[1:2].islower() else text
        case _:
            return type(exc).__name__


def link_error(exc: BaseException, url: str, *, what: str = "") -> AgentError:
    """The LinkError for ``exc`` raised while talking to ``url``.

    ``what`` names the step for HTTP refusals (e.g. "session request"). An AgentError
    is returned as it is: it already says what a person needs.
    """
    host = host_of(url)
    if isinstance(exc, AgentError):
        return exc
    match exc:
        case InvalidStatus(response=response):
            after = retry_after(response.headers.get("Retry-After"))
            return HttpRefused(
                host, response.status_code, what=what or f"{host} (WebSocket upgrade)",
                retry_after_s=after,
            )  # fmt: skip
        case InvalidURI():
            return LinkError(f"invalid URL {shown_url(url)}")
        case httpx.TimeoutException():
            return Unreachable(host, "timed out")
        case httpx.InvalidURL() | httpx.UnsupportedProtocol():
            return LinkError(f"invalid URL {shown_url(url)}")
        case httpx.RemoteProtocolError():
            return Unreachable(host, "the server broke the HTTP exchange")
        case ConnectionClosed():
            return closed(exc)
    inner = _cause(exc)
    if isinstance(inner, ssl.SSLCertVerificationError):
        return TlsUntrusted(host, tls_reason(inner))
    if isinstance(inner, ssl.SSLError):
        return Unreachable(host, tls_reason(inner))
    if isinstance(inner, OSError):  # TimeoutError and gaierror included
        return Unreachable(host, _os_cause(inner))
    if isinstance(exc, InvalidHandshake):
        return Unreachable(host, f"WebSocket handshake failed ({type(exc).__name__})")
    if isinstance(exc, httpx.HTTPError):
        return Unreachable(host, f"HTTP request failed ({type(exc).__name__})")
    return Unreachable(host, type(exc).__name__)


def closed(exc: ConnectionClosed) -> PeerClosed:
    """A user-facing reason for a closed connection, with its codes."""
    rcvd, sent = exc.rcvd, exc.sent
    code = None if rcvd is None else int(rcvd.code)
    sent_code = None if sent is None else int(sent.code)
    if rcvd is not None:
        reason = f" {rcvd.reason[:120]}" if rcvd.reason else ""
        text = f"server closed the connection ({rcvd.code}{reason})"
    elif sent is not None and sent.code == 1011:
        text = f"server stopped answering ({sent.reason or 'keepalive'})"
    elif sent is not None:
        text = f"connection closed ({sent.code} {sent.reason})".rstrip()
    else:
        text = "connection lost"
    return PeerClosed(text, code=code, sent=sent_code)


def retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (delta-seconds only), within the cap."""
    try:
        return max(0.0, min(RETRY_AFTER_CAP_S, float(value or "0")))
    except ValueError:
        return 0.0
