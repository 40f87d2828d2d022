"""`identify up` keeping its server processes: a start that cannot be whole
fails, quick kills of every process never leave the edge without one for
long, and the database URL stays out of the process list."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from server.supervisor import MAX_RESTART_DELAY, STABLE_SECONDS, Backoff
from tests.harness import ROOT, BackgroundClients, Stack, free_port, free_port_block, start_stack

PROJECT = str(uuid.uuid4())
CONFIG = {"projects": [{"id": PROJECT, "name": "sup", "providers": {"anonymous": {}}}]}
# Never a timing we assert on: only how long we wait before calling it lost.
RECOVERY_BOUND = 12.0


# ------------------------------------------------------------------ backoff
def test_backoff_grows_while_a_process_dies_young_and_resets_after_a_stable_run() -> None:
    backoff = Backoff()
    delays = []
    for _ in range(8):
        backoff.died(uptime=2.0)
        delays.append(backoff.delay)
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, MAX_RESTART_DELAY, MAX_RESTART_DELAY]
    backoff.died(uptime=STABLE_SECONDS)
    assert backoff.delay == 0.0
    backoff.died(uptime=1.0)
    assert backoff.delay == 1.0


# ------------------------------------------------------------- a whole start
def test_up_fails_when_a_server_cannot_take_its_port(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"projects: [{{id: {PROJECT}, name: sup, providers: {{anonymous: {{}}}}}}]\n")
    base = free_port_block(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        out = subprocess.run(
            [
                *(sys.executable, "-m", "server.cli", "up", "--config", str(config)),
                *("--db", f"sqlite:///{tmp_path}/s.db", "--http-port", str(free_port())),
                *("--grpc-port", str(base), "--workers", "2"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Identify is up." not in out.stdout
    # The server's own reason, then ours, both naming the port.
    assert f"cannot listen on 127.0.0.1:{base + 1}: is the port in use?" in out.stderr
    assert f"identify up failed: server-1 (127.0.0.1:{base + 1}) exited with 1" in out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------ while running
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("supervisor")
    # A name to look for in the process list; a PostgreSQL URL would have a
    # password where this has a path.
    db_url = f"sqlite:///{tmp / 'secret-db-name.db'}"
    s = start_stack(tmp, CONFIG, db_url=db_url, workers=2)
    yield s
    s.stop()


def test_the_database_url_is_not_in_the_servers_argv(stack: Stack) -> None:
    pids = stack.worker_pids()
    assert len(pids) == 2
    for pid in pids.values():
        argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"secret-db-name" not in argv
        # It is in the environment, which only the same user can read.
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"IDENTIFY_DB={stack.db_url}".encode() in environ
    with stack.client() as http:
        body = {
            "projectId": PROJECT,
            "provider": "anonymous",
            "data": {"deviceId": str(uuid.uuid4())},
        }
        assert http.put("/v1/user/login", json=body).status_code == 200


def test_each_child_has_its_own_process_group_in_the_supervisors_session(stack: Stack) -> None:
    # Its own group: a terminal's Ctrl-C reaches only the supervisor, which
    # stops the children in order. The same session: the scheduler shares
    # the CPU between sessions, and one per child lengthened the tail.
    children = [
        int(pid)
        for task in pathlib.Path(f"/proc/{stack.proc.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert set(stack.worker_pids().values()) < set(children)  # and Envoy
    session = os.getsid(stack.proc.pid)
    for pid in children:
        assert os.getpgid(pid) == pid
        assert os.getsid(pid) == session


def reads(stack: Stack) -> BackgroundClients:
    """Two clients reading the JWKS through the edge until stopped (a route
    the sign-in limiter leaves alone)."""
    return BackgroundClients(
        stack, lambda http: http.get("/v1/jwks"), clients=2, timeout=5, pause=0.02
    )


def served_since(clients: BackgroundClients, since: float) -> bool:
    # By when it was sent: a reply that arrives just after a kill may have
    # been served before it.
    return any(o.sent > since and o.status == 200 for o in clients.outcomes)


def test_quick_kills_of_every_server_never_leave_the_edge_without_one(stack: Stack) -> None:
    with reads(stack) as clients:
        for round_ in range(6):
            pids = stack.worker_pids()
            assert pids, f"round {round_}: no server process is running"
            killed_at = time.monotonic()
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            # With a backoff of its own for each process, the sixth round
            # waited 16 s with nobody serving; now one comes back at once.
            deadline = killed_at + RECOVERY_BOUND
            while not served_since(clients, killed_at):
                assert time.monotonic() < deadline, f"round {round_}: the edge did not recover"
                time.sleep(0.05)
    codes = {o.status for o in clients.outcomes}
    # Down between a kill and a restart, never broken.
    assert codes <= {200, 503}, codes
    # The processes in backoff come back too (at most 30 s later).
    deadline = time.monotonic() + MAX_RESTART_DELAY + RECOVERY_BOUND
    while len(stack.worker_pids()) < 2:
        assert time.monotonic() < deadline, stack.log_text()
        time.sleep(0.2)
    assert "no other server process is serving" in stack.log_text()
