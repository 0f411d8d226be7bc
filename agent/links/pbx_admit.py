"""Who may call the PBX link: the secret header, the call limit, broken handshakes.

Before the WebSocket upgrade :meth:`Doorman.admit` checks the secret header (HTTP 401
when missing or wrong; compared in constant time) and the number of calls (HTTP 503
at ``pbx.max_calls``). Handshakes websockets ends by itself (not HTTP, no upgrade, no
complete request within ``open_timeout_s``: slowloris) are counted too. Every refusal
is counted (``connections_refused_total{reason=}``) and logged: the same address and
reason once a minute at WARNING, the rest at DEBUG, so a storm does not flood the journal.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response
from websockets.protocol import State

from agent.config import PbxConfig
from agent.metrics import Metrics

logger = logging.getLogger(__name__)

NAME = "pbx"
LOG = {"LINK": NAME}
REFUSAL_LOG_EVERY_S = 60.0  # the same refusal from the same address: one WARNING a minute


class Doorman:
    """Admits or refuses each connection to the PBX server."""

    def __init__(
        self,
        cfg: PbxConfig,
        metrics: Metrics,
        clock: Callable[[], float],
        open_timeout_s: float,
    ) -> None:
        self._cfg, self._metrics, self._clock = cfg, metrics, clock
        self._open_timeout_s = open_timeout_s
        self.secret = b""  # the pbx-secret, read when the server starts
        self.admitted: set[ServerConnection] = set()  # passed admit, not yet closed
        self._logged: dict[tuple[str, str], float] = {}

    def admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the upgrade: the secret (401), then the call limit (503)."""
        peer = peer_of(connection)
        values = request.headers.get_all(self._cfg.secret_header)
        if not values:
            return self._refuse(connection, peer, "no_secret", http.HTTPStatus.UNAUTHORIZED)
        given = values[0].encode("iso-8859-1")  # websockets decoded the raw bytes so
        # compare_digest: the time taken does not tell how much of a guess was right
        if len(values) != 1 or not hmac.compare_digest(given, self.secret):
            return self._refuse(connection, peer, "bad_secret", http.HTTPStatus.UNAUTHORIZED)
        self.admitted = {c for c in self.admitted if c.state is not State.CLOSED}
        if len(self.admitted) >= self._cfg.max_calls:
            return self._refuse(
                connection, peer, "too_many_calls", http.HTTPStatus.SERVICE_UNAVAILABLE
            )
        self.admitted.add(connection)
        return None

    def _refuse(
        self, connection: ServerConnection, peer: str, reason: str, code: http.HTTPStatus
    ) -> Response:
        why = {
            "no_secret": f"no {self._cfg.secret_header!r} header",
            "bad_secret": f"wrong secret in the {self._cfg.secret_header!r} header",
            "too_many_calls": f"already {self._cfg.max_calls} calls (pbx.max_calls)",
        }[reason]
        self.note_refusal(peer, reason, f"{why} (HTTP {code.value})")
        text = "unauthorized\n" if code == http.HTTPStatus.UNAUTHORIZED else "too many calls\n"
        return connection.respond(code, text)

    def note_refusal(self, peer: str, reason: str, why: str) -> None:
        """Count a refused connection; log it (the same address and reason: once a minute
        at WARNING, the rest at DEBUG, so a storm does not flood the journal)."""
        self._metrics.inc("connections_refused_total", link=NAME, reason=reason)
        host = peer.rpartition(":")[0] or peer
        now = self._clock()
        last = self._logged.get((host, reason))
        fresh = last is None or now - last >= REFUSAL_LOG_EVERY_S
        if fresh:
            self._logged[(host, reason)] = now
            if len(self._logged) > 1000:  # a scan from many addresses: forget
                self._logged = {(host, reason): now}
        logger.log(
            logging.WARNING if fresh else logging.DEBUG,
            "refused a PBX connection from %s: %s",
            peer,
            why,
            extra=LOG,
        )

    def connection_class(self) -> type[ServerConnection]:
        """websockets' connection, with the handshakes it ends by itself counted too:
        no valid request within ``open_timeout_s`` (slowloris, a silent TCP connection)
        and requests it rejects (not HTTP, no Upgrade, headers too large)."""
        link = self

        class _Connection(ServerConnection):
            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                try:
                    await super().handshake(*args, **kwargs)
                except asyncio.CancelledError:
                    if self.server.is_serving():  # open_timeout, not the server stopping
                        link.handshake_failed(self, timed_out=True)
                    raise
                if self.protocol.state is not State.OPEN:
                    link.handshake_failed(self, timed_out=False)

        return _Connection

    def handshake_failed(self, connection: ServerConnection, *, timed_out: bool) -> None:
        """Count a handshake websockets ended (our own 401/503 are counted already)."""
        status = 0 if connection.response is None else connection.response.status_code
        if status in (http.HTTPStatus.UNAUTHORIZED, http.HTTPStatus.SERVICE_UNAVAILABLE):
            return  # refused by _admit (the client then lingered, or left)
        if status:
            self.note_refusal(
                peer_of(connection), "bad_request", f"not a WebSocket upgrade (HTTP {status})"
            )
        elif connection.protocol.handshake_exc is not None or not timed_out:
            self.note_refusal(peer_of(connection), "bad_request", "not an HTTP request")
        else:
            self.note_refusal(
                peer_of(connection),
                "handshake_timeout",
                f"no complete request within {self._open_timeout_s:g} s",
            )


def peer_of(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return "unknown peer"
