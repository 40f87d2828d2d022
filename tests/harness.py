"""Starts the real thing for tests: `identify up` (gRPC server processes and
the real Envoy) on free ports, against a real database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine

from server.store.db import open_database
from tests.terminal import Terminal

T = TypeVar("T")
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _listen_range() -> range:
    """Ports for our listeners, below the kernel's ephemeral range: a port
    picked inside it can be taken, between the pick and the bind, as the
    local end of any outgoing connection (the PostgreSQL tests open
    thousands), which is how Envoy once failed with "Address already in
    use" in CI."""
    try:
        low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, max(low, 12000))


_LISTEN = _listen_range()
# Each test process walks the range from its own random start and never
# hands a port out twice, so stacks started one after another (or by
# several processes side by side) don't meet on a port whose last owner
# is still closing.
_next_port = random.randrange(len(_LISTEN))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_block(count: int) -> int:
    """A first port such that `count` consecutive ports are free."""
    global _next_port
    for _ in range(len(_LISTEN)):
        base = _LISTEN[_next_port % (len(_LISTEN) - count)]
        _next_port += count
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no block of free ports")


def free_port() -> int:
    return free_port_block(1)


@dataclass
class Stack:
    http: str
    grpc_target: str
    grpc_targets: list[str]
    edge_grpc_target: str
    db_url: str
    config_path: pathlib.Path
    log_path: pathlib.Path
    proc: subprocess.Popen[bytes]
    # `identify up --metrics-port`; 0 when metrics are off.
    metrics_port: int = 0
    _log: Any = field(repr=False, default=None)
    terminal: Terminal | None = field(repr=False, default=None)
    # The admin API listener (REST base URL and gRPC target).
    admin_http: str = ""
    admin_grpc_target: str = ""

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.http, timeout=10, **kwargs)

    def admin_client(self, key: str) -> httpx.Client:
        """The admin API's REST side, with an admin key (create_admin_key)."""
        return httpx.Client(
            base_url=self.admin_http, timeout=10, headers={"authorization": f"Bearer {key}"}
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[dict[str, Any]]:
        """Envoy's access log lines so far (JSON, one per request)."""
        lines = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return lines

    def access_log_line(self, timeout: float = 5, **fields: Any) -> dict[str, Any]:
        """The first access log line with these field values, once Envoy
        has flushed it (every half second)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.access_log():
                if all(line.get(k) == v for k, v in fields.items()):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no access log line with {fields}:\n{self.log_text()}")
            time.sleep(0.1)

    def worker_pids(self) -> dict[int, int]:
        """grpc port -> pid of each server process under `identify up`."""
        found = {}
        for task in pathlib.Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if b"serve" in argv:
                        found[int(argv[argv.index(b"--grpc-port") + 1])] = int(pid)
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.terminal is not None:
            self.terminal.close()
            self.terminal = None
        return int(self.proc.returncode)

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl-C: typed when the stack runs in a terminal, else SIGINT."""
        if self.terminal is None or self.proc.poll() is not None:
            return self.stop(signal.SIGINT, timeout)
        self.terminal.ctrl_c()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        return self.stop()


def start_stack(
    tmp_dir: pathlib.Path,
    config: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    db_url: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 40,
    terminal: bool = False,
    metrics_port: int | None = None,
) -> Stack:
    """`identify up`, its output (stdout and stderr together) in a log file;
    with `terminal`, written to a pseudo-terminal as `make run` is. Metrics
    on a free port unless `metrics_port` says (0: off), so parallel stacks
    never meet on the default 9090."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    config_path = tmp_dir / "identify.yaml"
    config_path.write_text(yaml.safe_dump(dict(config)))
    db_url = db_url or f"sqlite:///{tmp_dir / 'identify.db'}"
    http_port = free_port()
    # Never the default 8081: stacks run side by side.
    admin_port = free_port()
    grpc_base = free_port_block(workers)
    if metrics_port is None:
        metrics_port = free_port()
    log_path = tmp_dir / f"stack-{http_port}.log"
    tty = Terminal(log_path) if terminal else None
    log = None if tty else log_path.open("wb")
    output = tty.popen_kwargs() if tty else {"stdout": log, "stderr": subprocess.STDOUT}
    proc_env = {
        **os.environ,
        # Fast shutdown in tests; production defaults are longer.
        "IDENTIFY_DRAIN_DELAY": "0.2",
        "IDENTIFY_SHUTDOWN_GRACE": "5",
        "IDENTIFY_PROJECT_CACHE_TTL": "1",
        # Every test signs up and in from 127.0.0.1, far past any per-IP
        # limit; the abuse tests turn the limits back on (env={... "on"}).
        "IDENTIFY_RATE_LIMITS": "off",
        **(env or {}),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "up",
            "--config",
            str(config_path),
            "--db",
            db_url,
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_base),
            "--workers",
            str(workers),
            "--metrics-port",
            str(metrics_port),
            "--admin-port",
            str(admin_port),
            *extra_args,
        ],
        cwd=ROOT,
        env=proc_env,
        **output,
    )
    if tty:
        tty.started()
    stack = Stack(
        http=f"http://127.0.0.1:{http_port}",
        grpc_target=f"127.0.0.1:{grpc_base}",
        grpc_targets=[f"127.0.0.1:{grpc_base + i}" for i in range(workers)],
        edge_grpc_target=f"127.0.0.1:{http_port}",
        db_url=db_url,
        config_path=config_path,
        log_path=log_path,
        proc=proc,
        metrics_port=metrics_port,
        _log=log,
        terminal=tty,
        admin_http=f"http://127.0.0.1:{admin_port}",
        admin_grpc_target=f"127.0.0.1:{admin_port}",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stack.stop()
            raise RuntimeError(f"identify up exited with {proc.returncode}:\n{stack.log_text()}")
        # The banner is printed once every server process and Envoy are up.
        if "Identify is up." in stack.log_text():
            return stack
        time.sleep(0.1)
    stack.stop(signal.SIGKILL)
    raise RuntimeError(f"identify up did not come up in {timeout}s:\n{stack.log_text()}")


@contextlib.contextmanager
def running_stack(tmp_dir: pathlib.Path, config: Mapping[str, Any], **kwargs: Any) -> Any:
    stack = start_stack(tmp_dir, config, **kwargs)
    try:
        yield stack
    finally:
        stack.stop()


def _asyncpg(url: str) -> str:
    return (
        sa.engine.make_url(url)
        .set(drivername="postgresql+asyncpg")
        .render_as_string(hide_password=False)
    )


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(_asyncpg(url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@contextlib.contextmanager
def fresh_postgres_database(server_url: str, prefix: str = "identify_test") -> Any:
    """A new, empty database on the server at `server_url`, dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield (
            sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)
        )
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def error_reason(body: Mapping[str, Any]) -> str | None:
    """The ErrorInfo reason of an error reply through the edge."""
    for detail in body.get("details", []):
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason"))
    return None


def refused(reply: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    """Asserts an error reply through the edge: its HTTP status, its
    ErrorInfo reason in our domain; returns the body."""
    assert reply.status_code == status, reply.text
    body: dict[str, Any] = reply.json()
    assert error_reason(body) == reason, body
    [info] = [d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["domain"] == "identify"
    return body


def in_store(db_url: str, fn: Callable[[sa.Connection], T], *, write: bool = False) -> T:
    """Runs `fn` on the stack's database from outside its servers: to read
    what a call left behind, or to set up what no public call writes."""

    async def run() -> T:
        database = open_database(db_url, pool_size=1)
        try:
            return await (database.write(fn) if write else database.read(fn))
        finally:
            await database.dispose()

    return asyncio.run(run())


def count_rows(db_url: str, table: str) -> int:
    return int(
        in_store(
            db_url, lambda conn: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
        )
    )


def identify_cli(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The `identify` command, run to completion, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def create_admin_key(db_url: str, name: str = "root", *options: str) -> str:
    """A new admin key, made as an operator makes the first one: `identify
    admin create-key` on the machine, the key alone on its last line."""
    made = identify_cli("admin", "create-key", "--db", db_url, "--name", name, *options)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def cognito_pool(client: Any, name: str) -> tuple[str, str]:
    """A user pool signing in by email and an app client without a secret
    allowed password logins and refreshes: (pool id, client id)."""
    pool = client.create_user_pool(PoolName=name, UsernameAttributes=["email"])["UserPool"]
    app = client.create_user_pool_client(
        UserPoolId=pool["Id"],
        ClientName="app",
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]
    return pool["Id"], app["ClientId"]


def cognito_settings(client: Any, url: str, region: str, name: str) -> dict[str, Any]:
    """awsCognito's provider settings for a new cognito_pool on moto at
    `url`, signing users up confirmed."""
    pool_id, client_id = cognito_pool(client, name)
    return {
        "region": region,
        "userPoolId": pool_id,
        "clientId": client_id,
        "endpointUrl": url,
        "autoConfirm": True,
    }


@contextlib.contextmanager
def moto_cognito(region: str) -> Iterator[tuple[str, Any]]:
    """moto's Cognito server on a free loopback port: (endpoint URL, boto3 client)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client: Any = boto3.client(
        "cognito-idp",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        yield url, client
    finally:
        server.stop()


@dataclass(frozen=True)
class Outcome:
    sent: float  # time.monotonic() when the call left
    done: float  # ... and when its answer (or failure) came back
    status: int  # HTTP status; 0 when the call failed at the transport
    reason: str | None  # ErrorInfo reason, or the transport error's class


class BackgroundClients:
    """`clients` threads calling `call` through the edge until stopped (a
    `with` block), each outcome recorded: load for the fault tests."""

    def __init__(
        self,
        stack: Stack,
        call: Callable[[httpx.Client], httpx.Response],
        *,
        clients: int,
        timeout: float,
        pause: float = 0.0,
    ) -> None:
        self.stack = stack
        self.outcomes: list[Outcome] = []
        self._call = call
        self._timeout = timeout
        self._pause = pause
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.stack.http, timeout=self._timeout) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    reply = self._call(http)
                    reason = None if reply.is_success else error_reason(reply.json())
                    outcome = Outcome(sent, time.monotonic(), reply.status_code, reason)
                except httpx.HTTPError as exc:
                    outcome = Outcome(sent, time.monotonic(), 0, type(exc).__name__)
                self.outcomes.append(outcome)
                if self._pause:
                    time.sleep(self._pause)

    def __enter__(self) -> BackgroundClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self._timeout + 5)


# ------------------------------------------------------------ /metrics
class Scrape:
    """One scrape of a stack's /metrics, parsed by prometheus-client."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include these."""
        return sum(
            v
            for n, got, v in self.samples
            if n == name and all(got.get(k) == want for k, want in labels.items())
        )

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}


def scrape(stack: Stack) -> Scrape:
    reply = httpx.get(stack.metrics_url, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(reply.text)


def from_now(seconds: int) -> tuple[str, int]:
    """A claim time `seconds` from when the test runs, for parametrize lists:
    a time taken at collection can have passed by the time a long run gets
    to the test. `at_run_time` turns it into Unix seconds."""
    return ("now", seconds)


def at_run_time(claims: Mapping[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    return {
        k: now + v[1] if isinstance(v, tuple) and v[:1] == ("now",) else v
        for k, v in claims.items()
    }


def user_rows(db_url: str, user_id: str) -> dict[str, Any]:
    """Every row of one user's (users, devices, logins, identities), to
    compare before and after a call that must leave it as it was."""

    def run(conn: sa.Connection) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for table in ("users", "devices", "logins", "identities"):
            rows = conn.execute(
                sa.text(f"SELECT * FROM {table} WHERE user_id = :u ORDER BY 1, 2, 3"),
                {"u": user_id},
            )
            out[table] = [tuple(r) for r in rows]
        return out

    return in_store(db_url, run)
