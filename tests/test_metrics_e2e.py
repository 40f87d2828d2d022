"""The one scrape endpoint of `identify up --metrics-port`: Envoy's own
statistics and the servers' metrics summed over every server process, read
with prometheus-client's parser while calls go through the real edge and
straight to each process; the counters move by exactly what the calls did,
a killed process's counts stay in the sums, and no label holds a token, a
user id or an address."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from identify.v1 import identify_pb2 as pb
from identify.v1 import identify_pb2_grpc

from server.metrics.exposition import MULTIPROC_ENV
from tests.fakes.oidc_issuer import FakeIssuer
from tests.harness import (
    Stack,
    error_reason,
    free_port,
    identify_cli,
    scrape,
    start_stack,
)

PROJECT, CAPPED, DEAD_ISSUER = (str(uuid.uuid4()) for _ in range(3))
AUDIENCE = "https://api.metrics.test"
SERVICE = "identify.v1.Identify"
Labels = Mapping[str, str]


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    fake = FakeIssuer()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, issuer: FakeIssuer) -> Iterator[Stack]:
    dead = f"http://127.0.0.1:{free_port()}"
    auth0 = {"issuer": issuer.issuer, "jwksUri": issuer.jwks_url, "audience": AUDIENCE}
    config = {
        "projects": [
            {
                "id": PROJECT,
                "name": "metrics",
                "providers": {"anonymous": {}, "authZero": auth0},
                "limits": {"anonymousSignUp": "off"},
            },
            {
                "id": CAPPED,
                "name": "capped",
                "providers": {"anonymous": {}},
                "limits": {"anonymousSignUp": {"perIp": "2/hour", "perProject": "off"}},
            },
            {
                "id": DEAD_ISSUER,
                "name": "dead issuer",
                "providers": {
                    "authZero": {**auth0, "jwksUri": dead + "/jwks", "timeoutSeconds": 1}
                },
            },
        ]
    }
    s = start_stack(
        tmp_path_factory.mktemp("metrics"),
        config,
        workers=2,
        # The servers' limits on (the capped project), the edge's off.
        env={"IDENTIFY_RATE_LIMITS": "on"},
        extra_args=("--edge-rate-limit", "off"),
    )
    yield s
    s.stop()


# ------------------------------------------------------------------ calls
def login_body(project: str, device: str) -> dict[str, Any]:
    return {
        "projectId": project,
        "strategy": "simplified",
        "provider": "anonymous",
        "data": {"deviceId": device},
    }


def rest_login(http: httpx.Client, project: str = PROJECT, device: str | None = None) -> Any:
    return http.put("/v1/user/login", json=login_body(project, device or str(uuid.uuid4())))


def grpc_login(target: str, project: str = PROJECT) -> pb.SessionReply:
    data = struct_pb2.Struct()
    data.update({"deviceId": str(uuid.uuid4())})
    request = pb.UserRequest(
        project_id=project, strategy="simplified", provider="anonymous", data=data
    )
    with grpc.insecure_channel(target) as channel:
        reply: pb.SessionReply = identify_pb2_grpc.IdentifyStub(channel).Login(
            request, timeout=10, wait_for_ready=True
        )
        return reply


def profile_read(target: str, token: str, project: str = PROJECT) -> Any:
    request = pb.GetUserRequest(project_id=project, strategy="email", provider="authZero")
    with grpc.insecure_channel(target) as channel:
        return identify_pb2_grpc.IdentifyStub(channel).GetUser(
            request, timeout=10, metadata=(("authorization", f"Bearer {token}"),)
        )


LOGINS_OK = {"project": PROJECT, "provider": "anonymous", "result": "OK"}


# ------------------------------------------------------------------ tests
def test_logins_are_summed_over_every_process_and_envoy_counts_them_too(stack: Stack) -> None:
    before = scrape(stack)
    edge_logins, direct_each = 6, 3
    with stack.client() as http:
        for _ in range(edge_logins):
            assert rest_login(http).status_code == 200
    for target in stack.grpc_targets:
        for _ in range(direct_each):
            assert grpc_login(target).result == 1
    after = scrape(stack)

    calls = edge_logins + direct_each * len(stack.grpc_targets)
    # Each process counted only its own calls: a sum short of this would
    # mean a process's files were not read.
    grew = after.value("identify_logins_total", **LOGINS_OK) - before.value(
        "identify_logins_total", **LOGINS_OK
    )
    assert grew == calls, after.text
    rpcs = {"grpc_service": SERVICE, "grpc_method": "Login", "grpc_code": "OK"}
    assert (
        after.value("identify_rpcs_total", **rpcs) - before.value("identify_rpcs_total", **rpcs)
        == calls
    )
    timed = {"grpc_service": SERVICE, "grpc_method": "Login"}
    assert (
        after.value("identify_rpc_duration_seconds_count", **timed)
        - before.value("identify_rpc_duration_seconds_count", **timed)
        == calls
    )
    # Envoy saw only the REST calls, transcoded, under the gRPC method
    # they became (grpc_stats), with their status code (Envoy's
    # envoy_cluster_grpc_0; the parser names a counter's samples *_total).
    envoy = {"grpc_service": SERVICE, "grpc_method": "Login"}
    assert (
        after.value("envoy_cluster_grpc_total", **envoy)
        - before.value("envoy_cluster_grpc_total", **envoy)
        == edge_logins
    )
    assert (
        after.value("envoy_cluster_grpc_0_total", **envoy)
        - before.value("envoy_cluster_grpc_0_total", **envoy)
        == edge_logins
    )
    assert after.value("identify_envoy_stats_up") == 1
    # Envoy's own statistics beside ours: one target sees the edge too.
    assert "envoy_cluster_upstream_rq_total" in after.names()


def test_a_refusal_counts_once_under_its_reason(stack: Stack) -> None:
    before = scrape(stack)
    with stack.client() as http:
        reply = rest_login(http, device="not a uuid")
    assert reply.status_code == 400
    reason = error_reason(reply.json())
    assert reason
    after = scrape(stack)
    refusal = {"project": PROJECT, "provider": "anonymous", "grpc_method": "Login"}
    assert (
        after.value("identify_refusals_total", reason=reason, **refusal)
        - before.value("identify_refusals_total", reason=reason, **refusal)
        == 1
    )
    failed = {"project": PROJECT, "provider": "anonymous", "result": reason}
    assert (
        after.value("identify_logins_total", **failed)
        - before.value("identify_logins_total", **failed)
        == 1
    )
    # A project id that is no UUID: refused before any project is known, so
    # the label stays empty rather than hold the client's text.
    with stack.client() as http:
        reply = http.get("/v1/user", params={"projectId": "robert'); DROP TABLE"})
    assert reply.status_code == 400
    later = scrape(stack)
    assert (
        later.value(
            "identify_refusals_total",
            project="",
            grpc_method="GetUser",
            reason="INVALID_PROJECT_ID",
        )
        - after.value(
            "identify_refusals_total",
            project="",
            grpc_method="GetUser",
            reason="INVALID_PROJECT_ID",
        )
        == 1
    )
    assert "DROP TABLE" not in later.text


def test_rate_limit_refusals_are_counted(stack: Stack) -> None:
    # Counters live in each process: all three calls go to one.
    target = stack.grpc_targets[0]
    before = scrape(stack)
    for _ in range(2):
        assert grpc_login(target, CAPPED).result == 1
    with pytest.raises(grpc.RpcError) as refused:
        grpc_login(target, CAPPED)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = scrape(stack)
    limited = {"project": CAPPED, "action": "anonymousSignUp", "scope": "client"}
    assert (
        after.value("identify_rate_limited_total", **limited)
        - before.value("identify_rate_limited_total", **limited)
        == 1
    )
    assert (
        after.value("identify_refusals_total", project=CAPPED, reason="RATE_LIMITED")
        - (before.value("identify_refusals_total", project=CAPPED, reason="RATE_LIMITED"))
        == 1
    )


def test_upstream_calls_jwks_fetches_and_the_token_cache(stack: Stack, issuer: FakeIssuer) -> None:
    target = stack.grpc_targets[1]
    token = issuer.mint(sub=f"auth0|{uuid.uuid4().hex}", aud=AUDIENCE)
    before = scrape(stack)
    for _ in range(3):
        assert profile_read(target, token).result == 1
    after = scrape(stack)

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # Verified once, then twice from the cache.
    assert grew("identify_cache_lookups_total", cache="verified_token", result="miss") == 1
    assert grew("identify_cache_lookups_total", cache="verified_token", result="hit") == 2
    assert after.value("identify_cache_lookups_total", cache="project", result="hit") > 0
    # This process had no keys of the issuer yet: one fetch, one request.
    assert grew("identify_jwks_fetches_total", provider="authZero", outcome="ok") == 1
    assert grew("identify_upstream_requests_total", provider="authZero", outcome="2xx") == 1
    assert (
        grew("identify_upstream_request_duration_seconds_count", provider="authZero", outcome="2xx")
        == 1
    )

    # An issuer nobody answers for: counted as unreachable, and as a failed fetch.
    with pytest.raises(grpc.RpcError) as down:
        profile_read(target, token, project=DEAD_ISSUER)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    later = scrape(stack)
    assert (
        later.value("identify_upstream_requests_total", provider="authZero", outcome="unreachable")
        - after.value(
            "identify_upstream_requests_total", provider="authZero", outcome="unreachable"
        )
        == 1
    )
    assert (
        later.value("identify_jwks_fetches_total", provider="authZero", outcome="failed")
        - after.value("identify_jwks_fetches_total", provider="authZero", outcome="failed")
        == 1
    )
    assert token not in later.text


def test_a_killed_process_keeps_its_counts_in_the_sums(stack: Stack) -> None:
    victim = stack.grpc_targets[0]
    port = int(victim.rpartition(":")[2])
    for _ in range(4):
        grpc_login(victim)
    before = scrape(stack)
    counted = before.value("identify_logins_total", **LOGINS_OK)
    old_pid = stack.worker_pids()[port]
    os.kill(old_pid, signal.SIGKILL)
    # The supervisor starts it again at once; its successor serves the port.
    deadline = time.monotonic() + 20
    while stack.worker_pids().get(port) in (None, old_pid):
        assert time.monotonic() < deadline, stack.log_text()
        time.sleep(0.1)
    with contextlib.suppress(grpc.RpcError):
        grpc_login(victim)
    # Whatever that first call did, the sums never went back.
    meanwhile = scrape(stack).value("identify_logins_total", **LOGINS_OK)
    assert meanwhile >= counted
    for _ in range(3):
        assert grpc_login(victim).result == 1
    after = scrape(stack)
    assert after.value("identify_logins_total", **LOGINS_OK) == meanwhile + 3, after.text


def test_labels_hold_no_secret_user_id_or_address(stack: Stack) -> None:
    device = str(uuid.uuid4())
    with stack.client() as http:
        reply = rest_login(http, device=device)
    assert reply.status_code == 200
    session = reply.json()["data"]
    after = scrape(stack)
    secrets = [
        device,
        session["userId"],
        session["externalId"],
        session["signature"],
        session["profileToken"],
    ]
    for secret in secrets:
        assert secret not in after.text
    ours = [(n, labels) for n, labels, _ in after.samples if n.startswith("identify_")]
    assert ours
    for name, labels in ours:
        for key, value in labels.items():
            assert "127.0.0.1" not in value, (name, key, value)
            assert key in ALLOWED_LABELS, (name, key)


# Every label our metrics may carry: each has a bounded set of values.
ALLOWED_LABELS = {
    "grpc_service",
    "grpc_method",
    "grpc_code",
    "project",
    "provider",
    "result",
    "reason",
    "outcome",
    "cache",
    "kind",
    "action",
    "scope",
    "event",
    "le",
}


def _environ(pid: int) -> dict[str, str]:
    raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def test_metrics_port_zero_turns_them_off(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # With metrics on, every server process writes its samples to the run's
    # directory; with --metrics-port 0 none does, and the banner says so.
    for pid in stack.worker_pids().values():
        assert MULTIPROC_ENV in _environ(pid)
    config = {"projects": [{"id": PROJECT, "name": "off", "providers": {"anonymous": {}}}]}
    off = start_stack(tmp_path_factory.mktemp("metrics-off"), config, metrics_port=0)
    try:
        assert "  metrics      off (--metrics-port 0)" in off.log_text()
        with off.client() as http:
            assert rest_login(http).status_code == 200
        for pid in off.worker_pids().values():
            assert MULTIPROC_ENV not in _environ(pid)
    finally:
        off.stop()


def test_a_metrics_port_in_use_stops_the_start(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = identify_cli(
            "up",
            "--db",
            f"sqlite:///{tmp_path / 'identify.db'}",
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(port),
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} for metrics" in result.stderr
    assert "Traceback" not in result.stderr
