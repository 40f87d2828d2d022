"""Faults survived, through the edge: a server process killed or stopped
under load, and PostgreSQL restarted under load."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests import pgcluster
from tests.harness import BackgroundClients, Outcome, Stack, error_reason, start_stack

PROJECT = str(uuid.uuid4())
CONFIG = {"projects": [{"id": PROJECT, "name": "faults", "providers": {"anonymous": {}}}]}
CLIENTS = 4
# Load tests: every client here is 127.0.0.1, and the sign-in limiter would
# refuse most of the load they exist to put on the servers.
NO_LIMIT = ["--edge-rate-limit", "off"]


def sign_in(http: httpx.Client) -> httpx.Response:
    body = {"projectId": PROJECT, "provider": "anonymous", "data": {"deviceId": str(uuid.uuid4())}}
    return http.put("/v1/user/login", json=body)


def load(stack: Stack) -> BackgroundClients:
    """A few clients signing devices in through the edge until stopped."""
    return BackgroundClients(stack, sign_in, clients=CLIENTS, timeout=15)


def codes(outcomes: list[Outcome], since: float = 0.0) -> Counter[int]:
    return Counter(o.status for o in outcomes if o.done >= since)


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
    with load(two_workers) as clients:
        time.sleep(1.5)
        victim = worker_pids(two_workers)[int(two_workers.grpc_targets[0].rsplit(":", 1)[1])]
        os.kill(victim, signal.SIGKILL)
        time.sleep(4)
    seen = codes(clients.outcomes)
    failures = sum(n for code, n in seen.items() if code != 200)
    assert seen[200] > 50, seen
    # At most the calls that were on the dead process when it died.
    assert failures <= CLIENTS, seen
    # The supervisor brought the process back.
    assert victim not in worker_pids(two_workers).values()
    assert len(worker_pids(two_workers)) == 2


def test_sigterm_to_one_server_under_load_loses_nothing(two_workers: Stack) -> None:
    with load(two_workers) as clients:
        time.sleep(1.5)
        port = int(two_workers.grpc_targets[1].rsplit(":", 1)[1])
        os.kill(worker_pids(two_workers)[port], signal.SIGTERM)
        time.sleep(4)
    seen = codes(clients.outcomes)
    assert set(seen) == {200}, seen
    assert seen[200] > 50
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
        with load(stack) as clients:
            time.sleep(1.5)
            cluster.stop()
            down_at = time.monotonic()
            time.sleep(2.0)
            cluster.start()
            cluster.wait_ready()
            up_at = time.monotonic()
            time.sleep(4.0)
        during = [(o.status, o.reason) for o in clients.outcomes if down_at + 0.5 < o.done < up_at]
        after = [o.status for o in clients.outcomes if o.done > up_at + 2.5]
        assert during, "no calls were made while PostgreSQL was down"
        assert {c for c, _ in during} <= {200, 503}, Counter(during)
        assert {r for c, r in during if c == 503} <= {"STORE_UNAVAILABLE"}
        assert 503 in {c for c, _ in during}
        # Recovered on its own, without a restart of Identify.
        assert after and set(after) == {200}, Counter(after)
        assert not any(o.status == 500 for o in clients.outcomes)
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
