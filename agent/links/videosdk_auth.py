"""The VideoSDK token the device sends: a provisioned one, or a short-lived minted JWT.

Credentials (DESIGN.md): ``videosdk-token`` (a JWT made elsewhere), or
``videosdk-api-key`` + ``videosdk-secret``, from which the device mints HS256 JWTs
with PyJWT. A minted token lives a few minutes and is reused until a minute
before it expires. Token values are never logged nor put into exception text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import jwt

from agent.proto.videosdk import jwt_claims
from agent.secrets import Credentials

logger = logging.getLogger(__name__)

TOKEN = "videosdk-token"
API_KEY = "videosdk-api-key"
SECRET = "videosdk-secret"


def mint_jwt(api_key: str, secret: str, *, now: float, ttl_s: float = 300.0) -> str:
    """An HS256 JWT with the crawler role (server-side ingest APIs need it)."""
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
        self._wall = wall_clock
        self._minted: tuple[str, float, int] | None = None  # (jwt, exp, hash of inputs)

    def token(self) -> str:
        """The token to send; raise CredentialError naming the files if none is usable."""
        provisioned = self._creds.optional(TOKEN)
        if provisioned is not None:
            return provisioned.reveal()
        if not (self._creds.has(API_KEY) and self._creds.has(SECRET)):
            raise self._creds.not_found(TOKEN, f"{API_KEY} and {SECRET}")
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
