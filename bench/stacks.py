"""What the benchmark loads: the real stack (`identify up` with its gRPC
server processes and Envoy); the lean ceiling (the same Envoy binary with only
the JSON transcoder, bench/lean-envoy.yaml, in front of empty handlers); the
edge ceiling (the service's own Envoy config in front of the same empty
handlers); and the peer (bench/peer, fastapi-users under uvicorn), all on free
loopback ports, plus a throwaway PostgreSQL database when one is configured."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import string
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench import procstat
from server import edge
from server.supervisor import Supervisor, envoy_binary
from tests.harness import (
    Stack,
    free_port,
    free_port_block,
    fresh_postgres_database,
    start_stack,
)

log = logging.getLogger("bench")
PG_ENVS = ("IDENTIFY_BENCH_POSTGRES_URL", "IDENTIFY_TEST_POSTGRES_URL")

# Production values, where tests/harness.py shortens them for fast tests.
SERVICE_ENV = {
    "IDENTIFY_PROJECT_CACHE_TTL": "5",
    "IDENTIFY_DRAIN_DELAY": "0.2",
    # What boto3 in the service signs its calls to moto's Cognito with
    # (bench/scenarios.py Cognito); moto checks none of it.
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# The load comes from one address: the sign-in limiter would measure itself.
NO_EDGE_LIMIT = ("--edge-rate-limit", "off")


@dataclass
class Running:
    """A stack under load: where to send requests and which processes to watch."""

    host: str
    port: int
    processes: list[procstat.Watched]
    stop: Any = field(repr=False)
    # The scrape endpoint's port; 0 when metrics are off (and for the ceiling).
    metrics_port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def servers(self) -> list[procstat.Watched]:
        return [p for p in self.processes if p.name.startswith("server")]


def _name(pid: int) -> str | None:
    argv = procstat.cmdline(pid)
    if argv and pathlib.Path(argv[0]).name.startswith("envoy"):
        return "envoy"
    if "serve" in argv and "--grpc-port" in argv:
        return "server:" + argv[argv.index("--grpc-port") + 1]
    return None


def _watch_children(parent: int) -> list[procstat.Watched]:
    named = [(n, pid) for pid in procstat.children(parent) if (n := _name(pid))]
    servers = sorted((n, pid) for n, pid in named if n.startswith("server"))
    watched = [procstat.Watched(f"server-{i}", pid) for i, (_, pid) in enumerate(servers)]
    watched += [procstat.Watched(n, pid) for n, pid in named if n == "envoy"]
    return watched


@contextlib.contextmanager
def service(
    tmp: pathlib.Path,
    config: Mapping[str, Any],
    *,
    db_url: str,
    workers: int,
    env: Mapping[str, str] | None = None,
    metrics: bool = True,
) -> Iterator[tuple[Running, Stack]]:
    """`identify up`, its metrics on (a free port, as in production they
    are on by default) unless `metrics` is False (--metrics-port 0)."""
    stack = start_stack(
        tmp,
        config,
        db_url=db_url,
        workers=workers,
        env={**SERVICE_ENV, **(env or {})},
        extra_args=NO_EDGE_LIMIT,
        metrics_port=None if metrics else 0,
    )
    try:
        processes = _watch_children(stack.proc.pid)
        found = sum(p.name.startswith("server") for p in processes)
        if found != workers or not any(p.name == "envoy" for p in processes):
            raise RuntimeError(f"expected {workers} servers and envoy, found {processes}")
        host, _, port = stack.http.removeprefix("http://").partition(":")
        yield (
            Running(host, int(port), processes, stop=stack.stop, metrics_port=stack.metrics_port),
            stack,
        )
    finally:
        code = stack.stop()
        if code != 0:
            log.warning("identify up exited with %s; log: %s", code, stack.log_path)


@contextlib.contextmanager
def ceiling(tmp: pathlib.Path, *, workers: int) -> Iterator[Running]:
    """Envoy, rendered by server.edge exactly as `identify up` renders it and
    started by the same Supervisor, in front of bench/empty_server.py."""
    tmp.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    base = free_port_block(workers)
    ports = [base + i for i in range(workers)]
    supervisor = Supervisor(
        worker_argv=[[sys.executable, "-m", "bench.empty_server", "--port", str(p)] for p in ports],
        http_port=http_port,
        backends=[edge.Backend("127.0.0.1", p) for p in ports],
        rate_limit=None,
    )
    # Envoy's access log goes to stdout; keep it out of the report, as
    # `identify up` does when its output goes to a file.
    with (tmp / "ceiling-envoy.log").open("wb") as envoy_log:
        supervisor.envoy.stdout = envoy_log.fileno()
        supervisor.start()
        try:
            problem = supervisor.wait_until_serving(timeout=30)
            if problem is not None:
                raise RuntimeError(f"the ceiling did not come up: {problem}")
            processes = [
                procstat.Watched(f"server-{i}", child.proc.pid)
                for i, child in enumerate(supervisor.workers)
                if child.proc
            ]
            assert supervisor.envoy.proc is not None
            processes.append(procstat.Watched("envoy", supervisor.envoy.proc.pid))
            yield Running("127.0.0.1", http_port, processes, stop=supervisor.shutdown)
        finally:
            supervisor.shutdown()


LEAN_TEMPLATE = pathlib.Path(__file__).resolve().parent / "lean-envoy.yaml"


def _wait_for(url: str, procs: list[subprocess.Popen[bytes]], what: str, timeout: float) -> None:
    """Until `url` answers 200 (every backend up behind the edge)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: {dead[0].args[:3]} exited with {dead[0].returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:g}s")


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def lean_ceiling(tmp: pathlib.Path, *, workers: int, probe_path: str) -> Iterator[Running]:
    """bench/lean-envoy.yaml (the transcoder and the router, nothing else)
    in front of `workers` bench/empty_server.py processes: what the edge
    and gRPC cost with no work at all. Envoy runs with the flags `identify
    up` gives it (one worker thread)."""
    tmp.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    base = free_port_block(workers)
    ports = [base + i for i in range(workers)]
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]
    config = tmp / "lean-envoy.yaml"
    config.write_text(
        string.Template(LEAN_TEMPLATE.read_text()).substitute(
            http_port=http_port,
            descriptor=str(edge.DESCRIPTOR.resolve()),
            endpoints=json.dumps(endpoints),
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            procs.append(
                subprocess.Popen([sys.executable, "-m", "bench.empty_server", "--port", str(port)])
            )
        with (tmp / "lean-envoy.log").open("wb") as envoy_log:
            envoy = subprocess.Popen(
                [
                    str(envoy_binary()),
                    "-c",
                    str(config),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warning",
                ],
                stdout=envoy_log,
                stderr=subprocess.STDOUT,
            )
        procs.append(envoy)
        _wait_for(f"http://127.0.0.1:{http_port}{probe_path}", procs, "the lean ceiling", 30)
        # Every backend healthy, not just the first: the health checks run
        # each second.
        time.sleep(1.5)
        processes = [procstat.Watched(f"server-{i}", p.pid) for i, p in enumerate(procs[:-1])]
        processes.append(procstat.Watched("envoy", envoy.pid))
        yield Running("127.0.0.1", http_port, processes, stop=lambda: _stop_all(procs))
    finally:
        _stop_all(procs)


PEER_WORKERS = 2


def _async_url(db_url: str) -> str:
    """The SQLAlchemy async URL the peer takes for one of our db URLs."""
    if db_url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + db_url.removeprefix("sqlite:///")
    if db_url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + db_url.split("://", 1)[1]
    return db_url


@contextlib.contextmanager
def peer(tmp: pathlib.Path, *, db_url: str, workers: int = PEER_WORKERS) -> Iterator[Running]:
    """bench/peer/app.py (fastapi-users, JWT strategy) under uvicorn with
    `workers` worker processes on the database at `db_url`; its tables are
    made first, once, so the workers never race to make them."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "PEER_DB_URL": _async_url(db_url),
        "PEER_JWT_SECRET": os.urandom(24).hex(),
    }
    subprocess.run([sys.executable, "-m", "bench.peer.app"], env=env, check=True)
    argv = [sys.executable, "-m", "uvicorn", "bench.peer.app:app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    # Per-request access lines would cost the peer what Identify does not pay.
    argv += ["--log-level", "warning", "--no-access-log"]
    with (tmp / "peer.log").open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(f"http://127.0.0.1:{port}/docs", [proc], "the peer", 30)
        deadline = time.monotonic() + 20
        while True:
            spawned = [
                pid
                for pid in procstat.children(proc.pid)
                if any("spawn_main" in arg for arg in procstat.cmdline(pid))
            ]
            if len(spawned) >= workers or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        processes = [procstat.Watched(f"peer-{i}", pid) for i, pid in enumerate(spawned)]
        yield Running("127.0.0.1", port, processes, stop=lambda: _stop_all([proc]))
    finally:
        _stop_all([proc])


# ----------------------------------------------------------------- databases
def postgres_server_url() -> str | None:
    for name in PG_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return None


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh database on the server at `server_url`, dropped afterwards."""
    with fresh_postgres_database(server_url, prefix="identify_bench") as url:
        yield url
