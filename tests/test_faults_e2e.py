"""Faults survived, through the edge: a server process killed or stopped
under load, and PostgreSQL restarted under load."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests import pgcluster
from tests.harness import Stack, error_reason, start_stack

PROJECT = str(uuid.uuid4())
CONFIG = {"projects": [{"id": PROJECT, "name": "faults", "providers": {"anonymous": {}}}]}
CLIENTS = 4
# Load tests: every client here is 127.0.0.1, and the sign-in limiter would
# refuse most of the load they exist to put on the servers.
NO_LIMIT = ["--edge-rate-limit", "off"]


class Load:
    """A few clients signing devices in through the edge until stopped."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.outcomes: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.stack.http, timeout=15) as http:
            while not self._stop.is_set():
                body = {
                    "projectId": PROJECT,
                    "provider": "anonymous",
                    "data": {"deviceId": str(uuid.uuid4())},
                }
                try:
                    reply = http.put("/v1/user/login", json=body)
                    reason = None if reply.status_code == 200 else error_reason(reply.json())
                    self.outcomes.append((time.monotonic(), reply.status_code, reason))
                except httpx.HTTPError as exc:
                    self.outcomes.append((time.monotonic(), 0, type(exc).__name__))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)

    def codes(self, since: float = 0.0) -> Counter[int]:
        return Counter(code for at, code, _ in self.outcomes if at >= since)


def worker_pids(stack: Stack) -> dict[int, int]:
    return stack.worker_pids()


@pytest.fixture
def two_workers(tmp_path: pathlib.Path, db_url: str) -> Iterator[Stack]:
    s = start_stack(
        tmp_path,
        CONFIG,
        db_url=db_url,
        workers=2,
        env={"IDENTIFY_DRAIN_DELAY": "1.5"},
        extra_args=NO_LIMIT,
    )
    yield s
    s.stop()


def test_killed_server_process_costs_only_its_in_flight_calls(two_workers: Stack) -> None:
    with Load(two_workers) as load:
        time.sleep(1.5)
        victim = worker_pids(two_workers)[int(two_workers.grpc_targets[0].rsplit(":", 1)[1])]
        os.kill(victim, signal.SIGKILL)
        time.sleep(4)
    codes = load.codes()
    failures = sum(n for code, n in codes.items() if code != 200)
    assert codes[200] > 50, codes
    # At most the calls that were on the dead process when it died.
    assert failures <= CLIENTS, codes
    # The supervisor brought the process back.
    assert victim not in worker_pids(two_workers).values()
    assert len(worker_pids(two_workers)) == 2


def test_sigterm_to_one_server_under_load_loses_nothing(two_workers: Stack) -> None:
    with Load(two_workers) as load:
        time.sleep(1.5)
        port = int(two_workers.grpc_targets[1].rsplit(":", 1)[1])
        os.kill(worker_pids(two_workers)[port], signal.SIGTERM)
        time.sleep(4)
    codes = load.codes()
    assert set(codes) == {200}, codes
    assert codes[200] > 50
    assert "server-1 exited with 0" in two_workers.log_text()


def _pg_required() -> None:
    if pgcluster.binaries() is None:
        if os.environ.get("IDENTIFY_TEST_POSTGRES_URL"):
            pytest.fail("PostgreSQL server binaries are needed for the restart test")
        pytest.skip("no PostgreSQL server binaries on this machine")


def test_postgres_restart_under_load_gives_503_then_recovers(tmp_path: pathlib.Path) -> None:
    _pg_required()
    cluster = pgcluster.Cluster().init()
    cluster.start()
    stack = start_stack(
        tmp_path / "stack", CONFIG, db_url=cluster.url, workers=2, extra_args=NO_LIMIT
    )
    try:
        with Load(stack) as load:
            time.sleep(1.5)
            cluster.stop()
            down_at = time.monotonic()
            time.sleep(2.0)
            cluster.start()
            cluster.wait_ready()
            up_at = time.monotonic()
            time.sleep(4.0)
        during = [(c, r) for at, c, r in load.outcomes if down_at + 0.5 < at < up_at]
        after = [c for at, c, _ in load.outcomes if at > up_at + 2.5]
        assert during, "no calls were made while PostgreSQL was down"
        assert {c for c, _ in during} <= {200, 503}, Counter(during)
        assert {r for c, r in during if c == 503} <= {"STORE_UNAVAILABLE"}
        assert 503 in {c for c, _ in during}
        # Recovered on its own, without a restart of Identify.
        assert after and set(after) == {200}, Counter(after)
        assert not any(c == 500 for _, c, _ in load.outcomes)
        # The outage is logged, but never with the rows' values (signatures).
        assert "store unavailable" in stack.log_text()
        assert "[parameters:" not in stack.log_text()
    finally:
        stack.stop()
        cluster.stop()
        cluster.remove()


def test_clients_hanging_up_mid_call_do_not_stall_the_next(
    tmp_path: pathlib.Path, db_url: str
) -> None:
    stack = start_stack(tmp_path, CONFIG, db_url=db_url, workers=1, extra_args=NO_LIMIT)
    try:
        host, port = stack.http.removeprefix("http://").split(":")

        def impatient(_: int) -> None:
            # Send a whole login, then hang up before the answer: Envoy
            # cancels the call on the server mid-flight.
            for _ in range(20):
                body = json.dumps(
                    {
                        "projectId": PROJECT,
                        "provider": "anonymous",
                        "data": {"deviceId": str(uuid.uuid4())},
                    }
                ).encode()
                head = (
                    f"PUT /v1/user/login HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n\r\n"
                ).encode()
                with socket.create_connection((host, int(port))) as sock:
                    sock.sendall(head + body)
                    time.sleep(0.002)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(impatient, range(16)))
        with stack.client() as http:
            started = time.monotonic()
            body = {
                "projectId": PROJECT,
                "provider": "anonymous",
                "data": {"deviceId": str(uuid.uuid4())},
            }
            reply = http.put("/v1/user/login", json=body)
            took = time.monotonic() - started
        assert reply.status_code == 200, reply.text
        assert took < 2.0, f"the next call waited {took:.1f}s behind abandoned ones"
    finally:
        stack.stop()


def test_healthz_follows_the_backends_health(tmp_path: pathlib.Path, db_url: str) -> None:
    stack = start_stack(tmp_path, CONFIG, db_url=db_url, workers=1)
    try:

        def wait_for(status: int, within: float) -> httpx.Response:
            started = time.monotonic()
            with httpx.Client(base_url=stack.http, timeout=2) as http:
                while time.monotonic() - started < within:
                    reply = http.get("/healthz")
                    if reply.status_code == status:
                        return reply
                    time.sleep(0.05)
            raise AssertionError(f"/healthz never answered {status} within {within}s")

        assert wait_for(200, 5).json() == {"status": "SERVING"}
        # A frozen process answers no health check (a killed one would be
        # restarted by the supervisor before the edge could be seen down).
        pid = next(iter(worker_pids(stack).values()))
        os.kill(pid, signal.SIGSTOP)
        try:
            assert error_reason(wait_for(503, 10).json()) == "BACKEND_UNAVAILABLE"
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(200, 10)
    finally:
        stack.stop()
