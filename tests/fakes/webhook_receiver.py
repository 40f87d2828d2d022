"""A local webhook receiver on a free port, serving from threads, that keeps
every request (headers, body, the sender's port) and answers as told per
attempt: a status, a hang past the sender's timeout, or a hold until the
test lets go (to kill the sender mid-delivery)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    # The sender's port on 127.0.0.1, and what `whose` made of it while the
    # connection was open (which process sent it).
    peer_port: int
    sender: Any = None

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verified(self, secret: str) -> Any:
        """The payload, once its signature checks out (raises otherwise)."""
        return Webhook(secret).verify(self.body, self.headers)


# What to do with the n-th request (0-based): an HTTP status to answer,
# ("hang", seconds) to answer only after that long, or "hold" to wait until
# `release()`.
Plan = Callable[[int], "int | tuple[str, float] | str"]


def always(status: int) -> Plan:
    return lambda _n: status


def fail_first(count: int, status: int = 500) -> Plan:
    return lambda n: status if n < count else 204


def hang_first(seconds: float) -> Plan:
    return lambda n: ("hang", seconds) if n == 0 else 200


def hold_first() -> Plan:
    return lambda n: "hold" if n == 0 else 200


class WebhookReceiver:
    def __init__(self, plan: Plan, *, whose: Callable[[int], Any] | None = None) -> None:
        self.plan = plan
        self.whose = whose
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/hooks"

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        """The first `count` requests, once they have come."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} deliveries came")
            time.sleep(0.05)
        return self.received[:count]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("content-length") or 0))
        port = h.client_address[1]
        sender = self.whose(port) if self.whose is not None else None
        with self._lock:
            n = len(self.received)
            self.received.append(
                Received({k.lower(): v for k, v in h.headers.items()}, body, port, sender)
            )
        action = self.plan(n)
        if action == "hold":
            self._released.wait(60)
            action = 200
        elif isinstance(action, tuple):
            time.sleep(action[1])
            action = 200
        assert isinstance(action, int)
        try:
            h.send_response(action)
            h.send_header("Content-Length", "0")
            h.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            # The sender gave up (or died) first.
            h.close_connection = True
