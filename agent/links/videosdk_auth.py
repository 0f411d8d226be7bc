"""Who the device asks for a session, and with which credential.

Exactly one of three credential sets (README "Credentials", "Fleets"):

- ``videosdk.session_url`` + ``device-token``: a session broker (``broker/``) holds
  the account and creates the session; the device only holds its own revocable
  token, sent as ``Authorization: Bearer <device-token>``;
- ``videosdk-token`` (a JWT made elsewhere), sent raw to VideoSDK;
- ``videosdk-api-key`` + ``videosdk-secret``, from which the device mints HS256 JWTs
  with PyJWT (a few minutes each, reused until a minute before they expire).

Any mix is refused (:class:`CredentialConflict`): a fleet device that kept an account
secret next to its device token would defeat the broker. Token values are never
logged nor put into exception text.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from agent.clock import ServerClock
from agent.config import VideoSDKConfig
from agent.errors import AuthRefused, CredentialError, HttpRefused
from agent.proto.videosdk import SESSIONS_PATH, jwt_claims
from agent.secrets import Credentials

logger = logging.getLogger(__name__)

TOKEN = "videosdk-token"
API_KEY = "videosdk-api-key"
SECRET = "videosdk-secret"
DEVICE_TOKEN = "device-token"  # this device's own token at a session broker

EXACTLY_ONE = (
    f"use exactly one of: videosdk.session_url + {DEVICE_TOKEN!r}, {TOKEN!r}, "
    f"or {API_KEY!r} + {SECRET!r}"
)


class CredentialConflict(CredentialError):
    """The credential files and ``videosdk.session_url`` contradict each other (a mix)."""


class DeviceNotEnrolled(AuthRefused):
    """The session broker refused this device's token (HTTP 401/403)."""


class Mode(enum.Enum):
    BROKER = "session broker (videosdk.session_url + device-token)"
    TOKEN = "VideoSDK token (videosdk-token)"
    KEYS = "VideoSDK API key + secret (videosdk-api-key + videosdk-secret; JWTs minted here)"


def credential_mode(present: Collection[str], session_url: str | None) -> Mode:
    """Which credential set the files in ``present`` form (pure).

    ``session_url``: the configured ``videosdk.session_url`` ("" = none), or None when
    it is not known here (the check against it is then left to :func:`session_target`).
    Raises :class:`CredentialConflict` for a mix or a set that contradicts
    ``session_url``, :class:`CredentialError` when a set is missing or incomplete.
    """
    sets = {
        Mode.BROKER: DEVICE_TOKEN in present,
        Mode.TOKEN: TOKEN in present,
        Mode.KEYS: API_KEY in present or SECRET in present,
    }
    found = [m for m, yes in sets.items() if yes]
    if len(found) > 1:
        files = [n for n in (DEVICE_TOKEN, TOKEN, API_KEY, SECRET) if n in present]
        raise CredentialConflict(f"credentials mixed: found {', '.join(files)}; {EXACTLY_ONE}")
    if session_url and found and found[0] is not Mode.BROKER:
        raise CredentialConflict(
            f"videosdk.session_url is set (a session broker), but the credentials are an "
            f"account's ({', '.join(n for n in (TOKEN, API_KEY, SECRET) if n in present)}): "
            f"provide {DEVICE_TOKEN!r} instead"
        )
    if session_url == "" and found == [Mode.BROKER]:
        raise CredentialConflict(
            f"{DEVICE_TOKEN!r} is for a session broker: set videosdk.session_url, or {EXACTLY_ONE}"
        )
    if not found:
        if session_url:
            raise CredentialError(
                f"no device token: videosdk.session_url needs the credential {DEVICE_TOKEN!r}"
            )
        raise CredentialError(
            f"no VideoSDK credentials: provide {TOKEN!r}, or {API_KEY!r} and {SECRET!r} "
            f"(or {DEVICE_TOKEN!r} with videosdk.session_url)"
        )
    if found == [Mode.KEYS] and not (API_KEY in present and SECRET in present):
        missing = SECRET if API_KEY in present else API_KEY
        raise CredentialError(f"no VideoSDK credentials: {missing!r} is missing (needs both)")
    return found[0]


def present_credentials(creds: Credentials) -> set[str]:
    """The VideoSDK credential files that exist (their values are not read)."""
    return {n for n in (DEVICE_TOKEN, TOKEN, API_KEY, SECRET) if creds.has(n)}


def mint_jwt(api_key: str, secret: str, *, now: float, ttl_s: float = 300.0) -> str:
    """An HS256 JWT with the crawler role (server-side ingest APIs need it).

    PyJWT is imported here, not at the top: only the api-key + secret credential set
    mints tokens, and PyJWT loads ``cryptography`` (about 8 MB RSS) whenever that is
    installed, though HS256 does not use it."""
    import jwt

    return jwt.encode(jwt_claims(api_key, now=now, ttl_s=ttl_s), secret, algorithm="HS256")


class TokenSource:
    """Gives the Authorization value for each session request.

    The credential files are read at every session request (a minted JWT is reused
    while its inputs are unchanged). What that means for a rotated credential
    depends on where they come from: from ``--credentials DIR`` (no systemd) the new
    file is used at the next reconnect; under the shipped unit the service reads the
    copy ``LoadCredential=`` made when it started, which does not change, so a
    rotation takes ``systemctl restart field-agent`` (README, "Credentials").
    """

    def __init__(
        self,
        creds: Credentials,
        *,
        ttl_s: float = 300.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._creds = creds
        self._ttl_s = ttl_s
        self.clock = ServerClock(wall_clock)  # JWTs are stamped with the servers' time
        self._wall = self.clock.now
        self._minted: tuple[str, float, int] | None = None  # (jwt, exp, hash of inputs)

    def saw_reply(self, date: str | None, host: str, sent_at: float) -> None:
        """Learn the server's time from a reply's ``Date`` (sent at local ``sent_at``);
        say once when the local clock is found off (JWTs then use the server's time)."""
        was = self.clock.offset
        offset = self.clock.observe(date, host, sent_at=sent_at)
        if offset is not None and offset.large and (was is None or not was.large):
            logger.warning("videosdk: %s: minting credentials with its time", offset.message())
            self._minted = None

    def refused(self, target: SessionTarget, status: int, body: bytes) -> AuthRefused:
        """The error for a 401/403 session reply: the cached JWT is dropped, and a wrong
        clock is named as the likely cause when the device mints its tokens."""
        self._minted = None
        offset = self.clock.offset
        if target.via_broker or offset is None or not offset.large:
            return target.refused(status, body)
        if self.mode() is not Mode.KEYS:
            return AuthRefused(f"VideoSDK refused the token (HTTP {status}); {offset.message()}")
        return ClockRefused(f"VideoSDK refused the credentials (HTTP {status}): {offset.message()}")

    def mode(self, session_url: str | None = None) -> Mode:
        """The credential set on disk now (see :func:`credential_mode`); none at all
        reads as what to put where."""
        present = present_credentials(self._creds)
        if not present and session_url:
            raise self._creds.not_found(DEVICE_TOKEN)
        if not present:
            raise self._creds.not_found(TOKEN, f"{API_KEY} and {SECRET}")
        return credential_mode(present, session_url)

    def token(self) -> str:
        """The token to send; raise CredentialError naming the files if none is usable
        (or if they are mixed). In broker mode it is the device token."""
        mode = self.mode()
        if mode is Mode.BROKER:
            return self._creds.get(DEVICE_TOKEN).reveal()
        if mode is Mode.TOKEN:
            return self._creds.get(TOKEN).reveal()
        key, secret = self._creds.get(API_KEY), self._creds.get(SECRET)
        now = self._wall()
        inputs = hash((key, secret))
        if self._minted is not None:
            token, exp, was = self._minted
            if was == inputs and exp - now > 60.0:
                return token
        token = mint_jwt(key.reveal(), secret.reveal(), now=now, ttl_s=self._ttl_s)
        self._minted = (token, now + self._ttl_s, inputs)
        logger.debug("minted a VideoSDK JWT valid for %.0f s", self._ttl_s)
        return token


# --- where the session request goes -------------------------------------------------


class ClockRefused(AuthRefused):
    """Credentials minted by this device were refused while its clock is off: the next
    JWT, stamped with the server's time, may well be accepted."""


class SessionError(HttpRefused):
    """The session request failed with an HTTP status other than 401/403. ``detail``:
    what a session broker said about it (``": VideoSDK unreachable"``), or ""."""

    def __init__(
        self, host: str, status: int, *, what: str = "", retry_after_s: float = 0.0,
        detail: str = "",
    ) -> None:  # fmt: skip
        super().__init__(host, status, what=what, retry_after_s=retry_after_s)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SessionTarget:
    """The session request's URL and ``Authorization`` value. Never log ``authorization``."""

    url: str
    authorization: str = ""
    via_broker: bool = False

    def __repr__(self) -> str:  # the token stays out of tracebacks and debug output
        return f"SessionTarget(url={self.url!r}, via_broker={self.via_broker})"

    def detail(self, body: bytes) -> str:
        """``": <the broker's reason>"`` for a broker's error reply, else ""."""
        reason = broker_reason(body) if self.via_broker else ""
        return f": {reason}" if reason else ""

    def refused(self, status: int, body: bytes = b"") -> AuthRefused:
        """The error for a 401/403 answer (``body``: the reply, for the broker's reason)."""
        if not self.via_broker:
            return AuthRefused(f"VideoSDK refused the credentials (HTTP {status})")
        return DeviceNotEnrolled(
            f"session broker refused this device (HTTP {status}{self.detail(body)}); device "
            f"not enrolled or revoked: check {DEVICE_TOKEN!r} and the broker's enrolment"
        )


def session_target(cfg: VideoSDKConfig, tokens: TokenSource, token: str) -> SessionTarget:
    """VideoSDK itself (``api_base`` + the sessions path, the raw token) or the broker
    (``session_url``, ``Bearer <device-token>``). Raises CredentialError when the
    credentials on disk do not fit ``cfg.session_url``."""
    mode = tokens.mode(cfg.session_url)
    if mode is Mode.BROKER:
        return SessionTarget(cfg.session_url, f"Bearer {token}", via_broker=True)
    return SessionTarget(cfg.api_base.rstrip("/") + SESSIONS_PATH, token)


def broker_reason(body: bytes) -> str:
    """The broker's ``{"error": "..."}`` text, printable and short ("" if none)."""
    try:
        error = json.loads(body).get("error", "")
    except (ValueError, AttributeError, RecursionError):
        return ""
    if not isinstance(error, str):
        return ""
    return "".join(c if c.isprintable() else "?" for c in error[:120])
