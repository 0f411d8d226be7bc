"""One error tree for the whole agent.

Every error the agent raises on purpose derives from :class:`AgentError` and
also from the built-in that best describes it, so callers may catch either::

    AgentError
    ├── ConfigError (ValueError)            bad or unreadable configuration; exit 78
    ├── CredentialError (LookupError)       a secret file is missing or unreadable
    ├── ProtocolError (ValueError)          a peer sent a malformed or unknown message
    │   └── MessageTooLarge                 refused locally before sending
    ├── AudioError (OSError)                an audio device failed
    │   └── DeviceUnavailable               opening failed / device vanished (ENODEV)
    │       └── DeviceBusy                  another program, or a stuck handle, has it (EBUSY)
    ├── GpioUnavailable (OSError)           no GPIO chip or pin factory
    │   └── PixelsUnavailable               no SPI device / spidev for the APA102 LEDs
    ├── SoundFileError (ValueError)         a sound file (a cue's WAV) cannot be used
    └── LinkError (ConnectionError)         a link could not be (re)established
        ├── AuthRefused                     the service refused our credentials
        ├── Unreachable                     no connection to a host: DNS, refused, reset, timeout
        │   └── TlsUntrusted                the host's certificate failed verification
        ├── HttpRefused                     the host answered an HTTP error status
        └── PeerClosed                      an open connection ended (close code, or none)

:mod:`agent.links.transport` turns the libraries' exceptions (websockets, httpx, ssl,
OSError, DNS) into the LinkError branch, keeping the host and the cause.

Messages never contain secret values: they name the credential file instead.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """The configuration is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CredentialError(AgentError, LookupError):
    """A credential file is missing, empty or unreadable."""


class ProtocolError(AgentError, ValueError):
    """The peer sent a malformed message, or one we cannot accept."""


class MessageTooLarge(ProtocolError):
    """An outgoing message breaks a documented size limit; it is not sent."""


class AudioError(AgentError, OSError):
    """An audio device failed."""


class DeviceUnavailable(AudioError):
    """An audio device cannot be opened or has vanished (e.g. USB card pulled)."""


class DeviceBusy(DeviceUnavailable):
    """An audio device exists but is held by another program or a stuck handle (EBUSY)."""


class GpioUnavailable(AgentError, OSError):
    """GPIO cannot be used on this machine (no gpiochip, no pin factory)."""


class PixelsUnavailable(GpioUnavailable):
    """The APA102 pixel LEDs cannot be driven (no SPI device, no spidev module)."""
class SoundFileError(AgentError, ValueError):
    """A sound file (a cue's WAV) is missing, unreadable, or not a usable WAV."""


class LinkError(AgentError, ConnectionError):
    """A link could not be established or broke."""


class AuthRefused(LinkError):
    """The service refused our credentials (HTTP 401/403, close 4401, ...)."""


class Unreachable(LinkError):
    """No connection to ``host``: ``cause`` says why (DNS, refused, reset, timed out, TLS)."""

    def __init__(self, host: str, cause: str) -> None:
        self.host = host
        self.cause = cause
        super().__init__(f"cannot connect to {host}: {cause}")


class TlsUntrusted(Unreachable):
    """The host's TLS certificate failed verification; ``cause`` names the reason."""


class HttpRefused(LinkError):
    """``host`` answered HTTP ``status`` (a REST call, or a WebSocket upgrade refused)."""

    def __init__(
        self, host: str, status: int, *, what: str = "", retry_after_s: float = 0.0
    ) -> None:
        self.host = host
        self.status = status
        self.retry_after_s = retry_after_s  # the server's Retry-After, 0 if none
        super().__init__(f"{what or host} answered HTTP {status}")


class PeerClosed(LinkError):
    """An open connection ended. ``code``: the close code the peer sent (None: no
    closing handshake, the connection was lost); ``sent``: the code we sent, if any."""

    def __init__(self, message: str, *, code: int | None = None, sent: int | None = None) -> None:
        self.code = code
        self.sent = sent
        super().__init__(message)
