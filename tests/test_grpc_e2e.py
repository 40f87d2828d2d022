"""Native gRPC clients, directly on a server port and through the edge:
typed replies, rich error details, health checking, reflection, draining."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from identify.v1 import identify_pb2 as pb
from identify.v1 import identify_pb2_grpc

from tests.harness import Stack, start_stack

PROJECT = str(uuid.uuid4())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    config = {
        "projects": [{"id": PROJECT, "name": "grpc", "providers": {"anonymous": {}, "noLogin": {}}}]
    }
    s = start_stack(tmp_path_factory.mktemp("grpc"), config, db_url=db_url)
    yield s
    s.stop()


@pytest.fixture(params=["direct", "edge"])
def channel(request: pytest.FixtureRequest, stack: Stack) -> Iterator[grpc.Channel]:
    target = stack.grpc_target if request.param == "direct" else stack.edge_grpc_target
    with grpc.insecure_channel(target) as ch:
        yield ch


def login_request(device: str) -> pb.UserRequest:
    data = struct_pb2.Struct()
    data.update({"deviceId": device})
    return pb.UserRequest(
        project_id=PROJECT, strategy="simplified", provider="anonymous", data=data
    )


def test_typed_login_reply(channel: grpc.Channel) -> None:
    stub = identify_pb2_grpc.IdentifyStub(channel)
    device = str(uuid.uuid4())
    reply = stub.Login(login_request(device), timeout=10)
    assert reply.result == 1
    assert reply.data.device_id == device
    assert len(reply.data.signature) == 40 and len(reply.data.external_id) == 64
    assert not reply.data.HasField("access_token")
    check = stub.VerifySignature(
        pb.VerifySignatureRequest(
            project_id=PROJECT,
            user_id=reply.data.user_id,
            device_id=device,
            time_stamp=reply.data.time_stamp,
            signature=reply.data.signature,
        ),
        timeout=10,
    )
    assert check.valid


def test_errors_carry_error_info(channel: grpc.Channel) -> None:
    stub = identify_pb2_grpc.IdentifyStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Login(login_request("not-a-uuid"), timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err)
    assert status is not None
    detail = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(detail)
    assert detail.reason == "INVALID_DEVICE_ID" and detail.domain == "identify"
    assert detail.metadata["requestId"]


@pytest.mark.parametrize("method", ["/identify.v1.Identify/Login", "/grpc.health.v1.Health/Check"])
def test_bytes_that_are_no_message_are_refused_cleanly(
    stack: Stack, channel: grpc.Channel, method: str
) -> None:
    mark = len(stack.log_text())
    # Field 1, length-delimited, 5 bytes announced and 2 sent.
    call = channel.unary_unary(method)
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x0a\x05ab", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(info.value)
    assert status is not None
    detail = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(detail)
    assert detail.reason == "MALFORMED_REQUEST"
    assert "Exception deserializing" not in (info.value.details() or "")
    time.sleep(0.2)
    assert "Traceback" not in stack.log_text()[mark:]


def test_health_and_reflection(stack: Stack) -> None:
    with grpc.insecure_channel(stack.grpc_target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "identify.v1.Identify"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert {"identify.v1.Identify", "grpc.health.v1.Health"} <= names


def test_sigterm_drains_in_flight_calls_and_exits_zero(
    tmp_path_factory: pytest.TempPathFactory, db_url: str
) -> None:
    config = {"projects": [{"id": PROJECT, "name": "grpc", "providers": {"anonymous": {}}}]}
    s = start_stack(
        tmp_path_factory.mktemp("drain"), config, db_url=db_url, env={"IDENTIFY_LOG_LEVEL": "debug"}
    )
    results: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with grpc.insecure_channel(s.grpc_target) as ch:
            stub = identify_pb2_grpc.IdentifyStub(ch)
            while not stop.is_set():
                try:
                    stub.Login(login_request(str(uuid.uuid4())), timeout=5)
                    results.append("ok")
                except grpc.RpcError as err:
                    results.append(err.code().name)
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        return

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    code = s.stop(signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join(10)
    assert code == 0, s.log_text()
    assert results.count("ok") > 10
    # Every call the server started completed and its answer arrived; the
    # others were refused before starting (UNAVAILABLE, or CANCELLED for calls
    # that were still queued in the transport when the server went away).
    started = s.log_text().count("method=/identify.v1.Identify/Login code=")
    completed = s.log_text().count("method=/identify.v1.Identify/Login code=OK")
    assert started == completed == results.count("ok"), (started, completed, results.count("ok"))
    assert set(results) <= {"ok", "UNAVAILABLE", "CANCELLED"}, set(results)


def test_sigint_stops_both_processes(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> None:
    config = {"projects": [{"id": PROJECT, "name": "grpc", "providers": {"anonymous": {}}}]}
    s = start_stack(tmp_path_factory.mktemp("sigint"), config, db_url=db_url)
    assert s.stop(signal.SIGINT) == 0
    import socket

    for target in (s.grpc_target, s.edge_grpc_target):
        host, port = target.split(":")
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(1)
            sock.connect((host, int(port)))
