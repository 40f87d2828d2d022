"""Where the metrics are read: the one scrape endpoint of `identify up`
(in the supervisor), and `identify serve --metrics-port` (one process).

`identify up` gives its server processes a PROMETHEUS_MULTIPROC_DIR of the
run, where prometheus-client keeps each process's samples in files named by
its pid. A scrape adds them up and appends Envoy's own statistics, fetched
from its admin endpoint, so one URL shows the edge and every process.
A process that dies leaves its files: its counts stay in the sums (counters
only ever grow), and the one that replaces it writes files of its own."""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import pathlib
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PATH = "/metrics"
HOST = "127.0.0.1"
DEFAULT_PORT = 9090
ENVOY_TIMEOUT_S = 2.0


class PortTaken(OSError):
    """The metrics port cannot be had."""


def _bind_error(port: int) -> PortTaken:
    return PortTaken(f"cannot listen on {HOST}:{port} for metrics: is the port in use?")


class _EnvoyUp:
    """identify_envoy_stats_up, for the scrape that asked."""

    def __init__(self, up: bool) -> None:
        self._up = up

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "identify_envoy_stats_up",
            "1 when this scrape includes Envoy's statistics, 0 when its admin endpoint"
            " did not answer.",
            value=1.0 if self._up else 0.0,
        )


def envoy_stats(admin: str | None) -> str | None:
    """Envoy's /stats/prometheus, or None when its admin endpoint does not answer."""
    if admin is None:
        return None
    connection = http.client.HTTPConnection(admin, timeout=ENVOY_TIMEOUT_S)
    try:
        connection.request("GET", "/stats/prometheus")
        reply = connection.getresponse()
        body = reply.read().decode()
        return body if reply.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


class Endpoint:
    """`identify up`'s scrape endpoint: a small threaded HTTP server in the
    supervisor, bound to 127.0.0.1 only (it is for the operator's
    Prometheus, not for clients)."""

    def __init__(
        self, port: int, directory: pathlib.Path, envoy_admin: Callable[[], str | None]
    ) -> None:
        self._directory = directory
        self._envoy_admin = envoy_admin
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.partition("?")[0] != PATH:
                    self.send_error(404)
                    return
                body = endpoint.scrape()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # The console is the banner's and Envoy's access log's.
                pass

        try:
            self._server = http.server.ThreadingHTTPServer((HOST, port), Handler)
        except OSError:
            raise _bind_error(port) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def scrape(self) -> bytes:
        envoy = envoy_stats(self._envoy_admin())
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self._directory))  # type: ignore[no-untyped-call]
        registry.register(_EnvoyUp(envoy is not None))
        ours = generate_latest(registry)
        if envoy is None:
            return ours
        return ours + envoy.encode() + (b"" if envoy.endswith("\n") else b"\n")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def process_dead(pid: int, directory: pathlib.Path) -> None:
    """A server process of the run died: its live gauges go (there are none
    today, so this keeps a future gauge honest); its counters stay."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def serve_own(port: int) -> None:
    """`identify serve --metrics-port`: this process's metrics (or, under a
    PROMETHEUS_MULTIPROC_DIR, the sums of every process writing there)."""
    registry = None
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    try:
        if registry is None:
            start_http_server(port, addr=HOST)
        else:
            start_http_server(port, addr=HOST, registry=registry)
    except OSError:
        raise _bind_error(port) from None
