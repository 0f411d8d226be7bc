"""A tiny JSON REST server on loopback for the sandbox fakes (stdlib http.server).

Routes are plain functions ``handler(request) -> Reply``; the server runs in a
daemon thread, so handlers must be thread-safe (the fakes guard their state
with a lock). Used by the VideoSDK and Orgo fakes for their REST halves.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    match: re.Match[str]

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None  # JSON-serialisable
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # answer this late (slow-REST fault injection)


Handler = Callable[[Request], Reply]


class RestServer:
    """``server.route("POST", r"/v2/ingest/sessions", fn)``; ``server.start()``; ``server.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.requests: list[Request] = []  # every request seen, for tests
        routes, requests = self._routes, self.requests

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def _serve(self) -> None:
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                for method, pattern, fn in routes:
                    m = pattern.fullmatch(path)
                    if m and method == self.command:
                        req = Request(self.command, path, query, headers, body, m)
                        requests.append(req)
                        try:
                            reply = fn(req)
                        except Exception as e:  # a fake must answer, not hang
                            reply = Reply(500, {"error": f"{e.__class__.__name__}: {e}"})
                        break
                else:
                    reply = Reply(404, {"error": "not found"})
                if reply.delay_s:
                    threading.Event().wait(reply.delay_s)
                data = b"" if reply.body is None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def route(self, method: str, pattern: str, fn: Handler) -> None:
        self._routes.append((method, re.compile(pattern), fn))

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # so that stop() returns within 50 ms
            name="sandbox-rest",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=2)
