"""A client hanging up mid-call (a gRPC client cancelling, or an HTTP client
closing its connection so Envoy cancels the stream) is CANCELLED: one line
at debug level, no traceback, no error, counted as CANCELLED, and the next
calls are served as usual. The call is held in flight by an X stand-in that
answers slowly."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from identify.v1 import identify_pb2 as pb
from identify.v1 import identify_pb2_grpc

from tests.fakes.x_api import FakeXApi, XUser
from tests.harness import Stack, scrape, start_stack

SLOW = str(uuid.uuid4())
METHOD = "/identify.v1.Identify/CheckUserNonstandard"


@dataclass
class World:
    stack: Stack
    x: FakeXApi


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    x = FakeXApi()
    x.mode = "slow"
    x.slow_seconds = 1.5
    config = {
        "projects": [
            {
                "id": SLOW,
                "name": "slow-x",
                "providers": {"twitter": {"apiUrl": x.url, "timeoutSeconds": 10}},
            }
        ]
    }
    stack = start_stack(
        tmp_path_factory.mktemp("hangup"),
        config,
        db_url=db_url,
        env={"IDENTIFY_LOG_LEVEL": "debug"},
    )
    try:
        yield World(stack, x)
    finally:
        stack.stop()
        x.stop()


def wait_for(what: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


def server_lines(stack: Stack, needle: str) -> list[str]:
    return [line for line in stack.log_text().splitlines() if needle in line]


def cancelled_count(stack: Stack) -> float:
    return scrape(stack).value(
        "identify_rpcs_total", grpc_method="CheckUserNonstandard", grpc_code="CANCELLED"
    )


def test_a_grpc_client_cancelling_is_one_debug_line(world: World) -> None:
    request_id = uuid.uuid4().hex
    before = len(world.x.requests)
    cancelled_before = cancelled_count(world.stack)
    user = XUser(str(uuid.uuid4().int)[:19], "Slow", "slow")
    request = pb.CheckUserNonstandardRequest(
        project_id=SLOW, provider="twitter", user_id=user.id, access_token=world.x.issue(user)
    )
    with grpc.insecure_channel(world.stack.grpc_target) as channel:
        call = identify_pb2_grpc.IdentifyStub(channel).CheckUserNonstandard.future(
            request, metadata=[("x-request-id", request_id)], timeout=30
        )
        # The call is in flight once the server has asked X; then hang up.
        wait_for(lambda: len(world.x.requests) > before)
        assert call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED
    wait_for(lambda: bool(server_lines(world.stack, request_id)))
    # The work itself finishes (shielded) once X answers; nothing more is logged.
    time.sleep(world.x.slow_seconds + 0.5)
    [line] = server_lines(world.stack, request_id)
    assert "DEBUG" in line and "code=CANCELLED" in line and METHOD in line, line
    assert cancelled_count(world.stack) == cancelled_before + 1
    log = world.stack.log_text()
    for noise in ("Traceback", "CancelledError", "code=UNKNOWN", "ERROR"):
        assert noise not in log, log


def test_an_http_client_hanging_up_at_the_edge_is_one_debug_line(world: World) -> None:
    before = len(world.x.requests)
    lines_before = len(server_lines(world.stack, "code=CANCELLED"))
    user = XUser(str(uuid.uuid4().int)[:19], "Gone", "gone")
    host, port = world.stack.http.removeprefix("http://").split(":")
    path = (
        f"/v1/user/check/nonstandard?projectId={SLOW}&provider=twitter"
        f"&userId={user.id}&accessToken={world.x.issue(user)}"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        wait_for(lambda: len(world.x.requests) > before)
    # Envoy resets the stream to the server once the client is gone.
    wait_for(lambda: len(server_lines(world.stack, "code=CANCELLED")) > lines_before)
    time.sleep(world.x.slow_seconds + 0.5)
    new = server_lines(world.stack, "code=CANCELLED")[lines_before:]
    assert len(new) == 1 and "DEBUG" in new[0] and METHOD in new[0], new
    log = world.stack.log_text()
    for noise in ("Traceback", "CancelledError", "code=UNKNOWN", "ERROR"):
        assert noise not in log, log
    # And the server goes on serving (X answers slowly, but answers).
    with world.stack.client() as http:
        reply = http.get(
            "/v1/user/check/nonstandard",
            params={
                "projectId": SLOW,
                "provider": "twitter",
                "userId": user.id,
                "accessToken": world.x.issue(user),
            },
        )
    assert reply.status_code == 200, reply.text


def test_a_client_deadline_passing_is_one_debug_line_too(world: World) -> None:
    request_id = uuid.uuid4().hex
    user = XUser(str(uuid.uuid4().int)[:19], "Hasty", "hasty")
    request = pb.CheckUserNonstandardRequest(
        project_id=SLOW, provider="twitter", user_id=user.id, access_token=world.x.issue(user)
    )
    with grpc.insecure_channel(world.stack.grpc_target) as channel:
        stub = identify_pb2_grpc.IdentifyStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CheckUserNonstandard(request, metadata=[("x-request-id", request_id)], timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: bool(server_lines(world.stack, request_id)))
    time.sleep(world.x.slow_seconds + 0.5)
    [line] = server_lines(world.stack, request_id)
    assert "DEBUG" in line and "code=DEADLINE_EXCEEDED" in line, line
    assert "Traceback" not in world.stack.log_text()
