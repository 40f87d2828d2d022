"""What the benchmark loads: the real stack (`identify up` with its gRPC
server processes and Envoy) and the ceiling (the same Envoy config in front
of empty handlers), both on free loopback ports, plus a throwaway
PostgreSQL database when one is configured."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench import procstat
from server import edge
from server.supervisor import Supervisor
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
SERVICE_ENV = {"IDENTIFY_PROJECT_CACHE_TTL": "5", "IDENTIFY_DRAIN_DELAY": "0.2"}
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
