"""The edge on the open internet, through the real Envoy: the sign-in rate
limit per client IP, trusted proxies and the client IP the servers get, one
header budget, headers gRPC would fail on, Envoy's own replies and what its
access log records."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from identify.v1 import identify_pb2 as pb
from identify.v1 import identify_pb2_grpc

from tests.harness import Stack, error_reason, refused, start_stack

PROJECT = str(uuid.uuid4())
# The servers' own sign-up limits off: these tests are about the edge's.
CONFIG = {
    "projects": [
        {
            "id": PROJECT,
            "name": "edge",
            "providers": {"anonymous": {}, "noLogin": {}},
            "limits": {"anonymousSignUp": "off"},
        }
    ]
}
# The harness turns every rate limit off; these stacks want the edge's on.
LIMITS_ON = {"IDENTIFY_RATE_LIMITS": "on"}
# Small enough to run dry in a few calls, slow enough (a token every 20 s)
# that none comes back while a test runs.
SMALL_BUCKET = "3/m,burst=3"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The defaults, as `identify up` runs without flags."""
    s = start_stack(tmp_path_factory.mktemp("edge"), CONFIG, env=LIMITS_ON)
    yield s
    assert s.stop() == 0, s.log_text()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Behind one load balancer: X-Forwarded-For names the client."""
    s = start_stack(
        tmp_path_factory.mktemp("proxied"),
        CONFIG,
        env=LIMITS_ON,
        extra_args=["--trusted-proxies", "1", "--edge-rate-limit", SMALL_BUCKET],
    )
    yield s
    assert s.stop() == 0, s.log_text()


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """No load balancer trusted: the peer address is the client."""
    s = start_stack(
        tmp_path_factory.mktemp("direct"),
        CONFIG,
        env=LIMITS_ON,
        extra_args=["--edge-rate-limit", SMALL_BUCKET],
    )
    yield s
    assert s.stop() == 0, s.log_text()


def anon(device: str | None = None) -> dict[str, Any]:
    return {
        "projectId": PROJECT,
        "provider": "anonymous",
        "data": {"deviceId": device or str(uuid.uuid4())},
    }


def grpc_call(
    stack: Stack,
    method: str,
    metadata: tuple[tuple[str, str], ...] = (),
    device: str | None = None,
) -> grpc.RpcError | None:
    """A native gRPC sign-in through the edge: None if it succeeded."""
    request = pb.UserRequest(
        project_id=PROJECT, provider="anonymous", device_id=device or str(uuid.uuid4())
    )
    with grpc.insecure_channel(stack.edge_grpc_target) as channel:
        stub = identify_pb2_grpc.IdentifyStub(channel)
        try:
            getattr(stub, method)(request, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc
    return None


def retry_delay(body: dict[str, Any]) -> str:
    [retry] = [d for d in body["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    return str(retry["retryDelay"])


def rate_limited(reply: httpx.Response) -> None:
    body = refused(reply, 429, "RATE_LIMITED")
    assert body["code"] == 8
    # 3 a minute: the next token in 20 s, said twice, for clients and proxies.
    assert retry_delay(body) == "20s"
    assert reply.headers["retry-after"] == "20"


# ----------------------------------------------------------- the rate limit
def test_sign_ups_and_logins_share_one_bucket_per_client(proxied: Stack) -> None:
    client = {"x-forwarded-for": "203.0.113.7"}
    with proxied.client(headers=client) as http:
        # REST under both prefixes (a trailing slash too) and native gRPC
        # draw on the same three tokens.
        assert http.put("/v1/user/login", json=anon()).status_code == 200
        assert http.post("/user/", json=anon()).status_code == 200
        assert grpc_call(proxied, "CreateUser", tuple(client.items())) is None
        rate_limited(http.put("/user/login", json=anon()))
        rate_limited(http.post("/v1/user", json=anon()))
        failed = grpc_call(proxied, "Login", tuple(client.items()))
        assert failed is not None and failed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(failed)  # type: ignore[arg-type]
        assert status is not None
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info) and info.reason == "RATE_LIMITED"
        assert status.details[1].Unpack(retry) and retry.retry_delay.seconds == 20
        # Every other route is left alone, for the same client.
        user = {"projectId": PROJECT, "provider": "noLogin", "externalId": "ab" * 32}
        for _ in range(5):
            assert http.get("/v1/jwks").status_code == 200
            refused(http.get("/v1/user", params=user), 404, "USER_NOT_FOUND")
            assert http.put("/v1/user", json=user).status_code not in (200, 429)


def test_each_client_behind_the_proxy_has_its_own_bucket(proxied: Stack) -> None:
    with proxied.client(headers={"x-forwarded-for": "203.0.113.8"}) as first:
        for _ in range(3):
            assert first.put("/v1/user/login", json=anon()).status_code == 200
        rate_limited(first.put("/v1/user/login", json=anon()))
    # What the proxy in front appended is the client; what came before it
    # (here a client's own claim to be someone else) is not trusted.
    with proxied.client(headers={"x-forwarded-for": "203.0.113.8, 203.0.113.9"}) as second:
        reply = second.put("/v1/user/login", json=anon())
        assert reply.status_code == 200, reply.text
    line = proxied.access_log_line(request_id=reply.headers["x-request-id"])
    assert line["client_ip"] == "203.0.113.9"


def test_without_trusted_proxies_x_forwarded_for_is_ignored(direct: Stack) -> None:
    for n in range(3):
        with direct.client(headers={"x-forwarded-for": f"198.51.100.{n}"}) as http:
            assert http.put("/v1/user/login", json=anon()).status_code == 200
    with direct.client(headers={"x-forwarded-for": "198.51.100.99"}) as http:
        reply = http.put("/v1/user/login", json=anon())
    rate_limited(reply)
    line = direct.access_log_line(request_id=reply.headers["x-request-id"])
    assert line["client_ip"] == "127.0.0.1"
    assert line["details"] == "local_rate_limited"
    with direct.client() as http:
        # The same client, another sign-in route: the same empty bucket.
        rate_limited(http.post("/v1/user", json=anon()))


def test_the_servers_get_the_client_ip_the_edge_decided_on(proxied: Stack) -> None:
    # A client cannot name itself: its own x-identify-client-ip is replaced.
    headers = {"x-forwarded-for": "203.0.113.20", "x-identify-client-ip": "192.0.2.1"}
    with proxied.client(headers=headers) as http:
        reply = http.get("/v1/jwks")
    assert reply.status_code == 200
    line = proxied.access_log_line(request_id=reply.headers["x-request-id"])
    # The log shows the request header as it went to the servers.
    assert line["client_ip"] == "203.0.113.20"
    assert line["upstream"]


# --------------------------------------------------------- the header budget
def test_tokens_up_to_16_kib_reach_the_servers(stack: Stack) -> None:
    with stack.client() as http:
        created = http.post("/v1/user", json={"projectId": PROJECT, "provider": "noLogin"})
        user = {
            "projectId": PROJECT,
            "provider": "noLogin",
            "externalId": created.json()["externalId"],
        }
        token = {"authorization": "Bearer " + "t" * (16 * 1024)}
        assert http.get("/v1/user", params=user, headers=token).status_code == 200
        # Past 16 KiB: the server's own answer, never a limit of gRPC's.
        longer = {"authorization": "Bearer " + "t" * 17_000}
        out = refused(http.get("/v1/user", params=user, headers=longer), 400, "FIELD_TOO_LONG")
        assert out["details"][0]["metadata"]["field"] == "authorization"
        # Past Envoy's 32 KiB: Envoy's answer, before any server.
        huge = {"x-padding": "p" * 40_000}
        refused(http.get("/v1/user", params=user, headers=huge), 431, "HEADERS_TOO_LARGE")
        refused(http.put("/v1/user/login", json=anon(), headers=huge), 431, "HEADERS_TOO_LARGE")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-trace+id", "1"),
        ("a^b", "1"),
        ("x~y", "1"),
        ("x|y", "1"),
        ("x_y", "1"),  # refused by Envoy itself, with the same reason
        ("x-trace-bin", "!!!"),
        ("x-trace-bin", "AAAAA"),
        ("grpc-timeout", "soon"),
        ("grpc-encoding", "zip"),
    ],
)
def test_headers_grpc_would_fail_on_are_refused(stack: Stack, name: str, value: str) -> None:
    with stack.client() as http:
        for reply in (
            http.put("/v1/user/login", json=anon(), headers={name: value}),
            http.get("/v1/jwks", headers={name: value}),
        ):
            body = refused(reply, 400, "INVALID_HEADER")
            assert body["code"] == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Trace-Id", "1"),  # names are case-insensitive
        ("x.trace", "1"),
        ("x-trace-bin", "AAAA"),
        ("x-trace-bin", "AA=="),
        ("grpc-timeout", "100m"),
        ("x-note", "café".encode()),
    ],
)
def test_headers_grpc_takes_pass(stack: Stack, name: str, value: str | bytes) -> None:
    with stack.client() as http:
        assert http.put("/v1/user/login", json=anon(), headers={name: value}).status_code == 200


def test_a_refused_value_does_not_spoil_the_next_calls(stack: Stack) -> None:
    # gRPC caches what it parsed per connection, and Envoy shares its
    # connections to the servers among clients: a bad value let through once
    # failed every later call carrying that header, good values too.
    with stack.client() as http:
        for _ in range(3):
            refused(http.get("/v1/jwks", headers={"x-span-bin": "AAAAA"}), 400, "INVALID_HEADER")
        for _ in range(3):
            assert http.get("/v1/jwks", headers={"x-span-bin": "AAAA"}).status_code == 200


# ------------------------------------------------------ Envoy's own replies
def raw_http(stack: Stack, request: bytes) -> tuple[str, dict[str, Any]]:
    """The status line and JSON body of one raw exchange."""
    host, port = stack.http.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(body)


def test_http_1_0_is_refused_with_a_reason(stack: Stack) -> None:
    status, body = raw_http(stack, b"GET /v1/jwks HTTP/1.0\r\nHost: edge\r\n\r\n")
    assert status.split(" ")[1] == "426"
    assert error_reason(body) == "HTTP_VERSION_UNSUPPORTED"
    assert body["code"] == 9 and body["message"]


# ------------------------------------------------------------ the access log
def test_the_access_log_has_the_rest_call_and_the_real_grpc_status(stack: Stack) -> None:
    with stack.client() as http:
        body = refused(
            http.put("/v1/user/login", json=anon("not-a-uuid")), 400, "INVALID_DEVICE_ID"
        )
    request_id = body["details"][0]["metadata"]["requestId"]
    line = stack.access_log_line(request_id=request_id)
    assert line["method"] == "PUT"
    assert line["path"] == "/v1/user/login"
    assert line["grpc_method"] == "/identify.v1.Identify/Login"
    # What the server answered (INVALID_ARGUMENT), not a guess from the 400.
    assert line["grpc_status"] == 3
    assert line["status"] == 400
    assert line["client_ip"] == "127.0.0.1"


def test_the_access_log_of_a_success_and_of_native_grpc(stack: Stack) -> None:
    with stack.client() as http:
        reply = http.get("/.well-known/jwks.json")
    line = stack.access_log_line(request_id=reply.headers["x-request-id"])
    assert (line["method"], line["path"]) == ("GET", "/.well-known/jwks.json")
    assert (line["grpc_method"], line["grpc_status"]) == ("/identify.v1.Identify/GetJwks", 0)
    failed = grpc_call(stack, "Login", device="not-a-uuid")
    assert failed is not None and failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    request_id = dict(failed.trailing_metadata() or ())["x-request-id"]  # type: ignore[attr-defined]
    line = stack.access_log_line(request_id=request_id)
    assert (line["method"], line["path"]) == ("POST", "/identify.v1.Identify/Login")
    assert (line["status"], line["grpc_status"]) == (200, 3)


def test_the_access_log_keeps_query_strings_out(stack: Stack) -> None:
    secret = "query-secret-" + uuid.uuid4().hex
    with stack.client() as http:
        reply = http.get(
            "/v1/user/check/nonstandard",
            params={"projectId": PROJECT, "provider": "noLogin", "accessToken": secret},
        )
    line = stack.access_log_line(request_id=reply.headers["x-request-id"])
    assert line["path"] == "/v1/user/check/nonstandard"
    assert line["grpc_method"] == "/identify.v1.Identify/CheckUserNonstandard"
    assert secret not in stack.log_text()


def test_the_access_log_of_envoys_own_refusals(stack: Stack) -> None:
    with stack.client() as http:
        reply = http.get("/v1/nowhere", params={"token": "x"})
    body = refused(reply, 404, "UNKNOWN_PATH")
    assert reply.headers["grpc-status"] == str(body["code"]) == "5"
    line = stack.access_log_line(request_id=reply.headers["x-request-id"])
    # No gRPC call was made, so none is claimed.
    assert (line["path"], line["grpc_method"], line["grpc_status"]) == ("/v1/nowhere", None, None)


def test_the_access_log_of_a_refused_sign_in(direct: Stack) -> None:
    # Refused once it was a gRPC call: the edge's own code (RESOURCE_EXHAUSTED,
    # as in the body), not the HTTP mapping's guess (UNAVAILABLE for a 429).
    with direct.client() as http:
        for _ in range(4):
            reply = http.post("/v1/user", json=anon())
    rate_limited(reply)
    line = direct.access_log_line(request_id=reply.headers["x-request-id"])
    assert (line["method"], line["path"]) == ("POST", "/v1/user")
    assert (line["grpc_method"], line["grpc_status"]) == ("/identify.v1.Identify/CreateUser", 8)
