"""A local HTTP server on a free port, serving from a thread, with the
failure modes upstream stand-ins need: answer normally, answer 5xx, drop the
connection without answering, or answer only after a delay."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

Mode = Literal["ok", "error", "drop", "slow"]


class StubServer:
    """Subclasses implement `respond(method, path, query, headers)` returning
    (status, json_body, extra_headers)."""

    slow_seconds = 3.0

    def __init__(self) -> None:
        self.mode: Mode = "ok"
        # (method, path, query) of every request, for assertions on what the
        # provider sent.
        self.requests: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                stub._handle(self, "GET")

            def do_POST(self) -> None:
                stub._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def respond(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def error_reply(self) -> tuple[int, Any, dict[str, str]]:
        return 500, {"error": "internal"}, {}

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in h.headers.items()}
        length = int(headers.get("content-length") or 0)
        if length:
            h.rfile.read(length)
        self.requests.append((method, parts.path, query, headers))
        mode = self.mode
        if mode == "drop":
            h.close_connection = True
            return
        if mode == "slow":
            time.sleep(self.slow_seconds)
        status, body, extra = (
            self.error_reply()
            if mode == "error"
            else self.respond(method, parts.path, query, headers)
        )
        payload = json.dumps(body).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", extra.pop("content-type", "application/json"))
            h.send_header("Content-Length", str(len(payload)))
            for k, v in extra.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The caller gave up first (slow mode exists to make it do so).
            h.close_connection = True
