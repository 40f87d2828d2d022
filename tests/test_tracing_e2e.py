"""Traces through the real edge: a REST call carrying our `traceparent`
yields one trace (Envoy's span, the server's RPC span, its store spans,
the Cognito call through boto3 and the JWKS fetch through httpx), exported
over OTLP/gRPC to a small receiver in this process; nothing secret is in
any span. Without OTEL_* the edge config has no tracer and no server
process imports opentelemetry."""

from __future__ import annotations

import os
import pathlib
import re
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from server.store.db import DatabaseUrl
from server.supervisor import envoy_binary
from tests.harness import Stack, identify_cli, moto_cognito, running_stack, start_stack

REGION = "us-east-1"
PROJECT = str(uuid.uuid4())
PASSWORD = "Trace-Passw0rd!" + secrets.token_hex(4)
# Rides in the JWKS URL's query string, as Facebook's tokens do in theirs.
QUERY_SECRET = "query-secret-" + secrets.token_hex(8)
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass(frozen=True)
class Received:
    service: str
    span: Span

    def attributes(self) -> dict[str, Any]:
        return {kv.key: _value(kv.value) for kv in self.span.attributes}


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def _texts(kvs: Any) -> Iterator[str]:
    for kv in kvs:
        yield kv.key
        yield str(_value(kv.value))


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC collector: keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Received] = []
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        kv.value.string_value
                        for kv in resource_spans.resource.attributes
                        if kv.key == "service.name"
                    ),
                    "",
                )
                for scope in resource_spans.scope_spans:
                    self._spans += [Received(service, span) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Received]:
        with self._lock:
            return list(self._spans)

    def trace(
        self, trace_id: str, done: Callable[[list[Received]], bool], timeout: float = 20
    ) -> list[Received]:
        """The spans of one trace, once `done` says they are all in (Envoy
        sends its spans every 5 seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.spans() if r.span.trace_id.hex() == trace_id]
            if done(found):
                return found
            if time.monotonic() > deadline:
                names = [(r.service, r.span.name) for r in found]
                raise AssertionError(f"trace {trace_id} incomplete: {names}")
            time.sleep(0.1)

    def stop(self) -> None:
        self._server.stop(None)


@dataclass
class World:
    stack: Stack
    receiver: Receiver
    cognito: Any
    pool_id: str
    jwks_url: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    receiver = Receiver()
    with moto_cognito(REGION) as (url, client):
        pool_id = client.create_user_pool(PoolName="traced", UsernameAttributes=["email"])[
            "UserPool"
        ]["Id"]
        client_id = client.create_user_pool_client(
            UserPoolId=pool_id, ClientName="app", ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"]
        )["UserPoolClient"]["ClientId"]
        jwks_url = f"{url}/{pool_id}/.well-known/jwks.json"
        config = {
            "projects": [
                {
                    "id": PROJECT,
                    "name": "traced",
                    "providers": {
                        "awsCognito": {
                            "region": REGION,
                            "userPoolId": pool_id,
                            "clientId": client_id,
                            "endpointUrl": url,
                            "jwksUrl": f"{jwks_url}?access_token={QUERY_SECRET}",
                        }
                    },
                }
            ]
        }
        env = {
            **AWS,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_SERVICE_NAME": "identify-test",
            # The servers' batches go out within 0.1 s, not 5.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        stack = start_stack(tmp_path_factory.mktemp("tracing"), config, env=env, db_url=db_url)
        try:
            yield World(stack, receiver, client, pool_id, jwks_url)
        finally:
            assert stack.stop() == 0, stack.log_text()
            receiver.stop()


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def _descends(span: Received, ancestor: Received, spans: list[Received]) -> bool:
    by_id = {r.span.span_id: r for r in spans}
    current: Received | None = span
    while current is not None:
        if current.span.parent_span_id == ancestor.span.span_id:
            return True
        current = by_id.get(current.span.parent_span_id)
    return False


def _complete(rpc: str) -> Callable[[list[Received]], bool]:
    """Envoy's span and the RPC's are in: the RPC's ends after its
    children's, and a server exports its spans in the order they end."""

    def done(spans: list[Received]) -> bool:
        names = {r.span.name for r in spans}
        return rpc in names and any(r.service == "identify-test-edge" for r in spans)

    return done


def test_one_rest_login_is_one_trace_through_envoy_the_server_the_store_and_upstream(
    world: World,
) -> None:
    email = f"t{uuid.uuid4().hex[:10]}@example.com"
    world.cognito.admin_create_user(UserPoolId=world.pool_id, Username=email)
    world.cognito.admin_set_user_password(
        UserPoolId=world.pool_id, Username=email, Password=PASSWORD, Permanent=True
    )
    trace_id, parent, traceparent = _traceparent()
    body = {
        "projectId": PROJECT,
        "strategy": "email",
        "provider": "awsCognito",
        "data": {"email": email, "password": PASSWORD},
    }
    with world.stack.client() as http:
        reply = http.put("/user/login", json=body, headers={"traceparent": traceparent})
    assert reply.status_code == 200, reply.text
    session = reply.json()["data"]

    spans = world.receiver.trace(trace_id, _complete("identify.v1.Identify/Login"))
    [edge] = [r for r in spans if r.service == "identify-test-edge"]
    [rpc] = [r for r in spans if r.span.name == "identify.v1.Identify/Login"]
    store = [r for r in spans if r.span.name.startswith("store.")]
    [cognito] = [r for r in spans if r.attributes().get("rpc.method") == "InitiateAuth"]
    [jwks] = [r for r in spans if r.span.name == "GET"]

    # Envoy continued our trace; the server continued Envoy's span.
    assert {r.span.trace_id.hex() for r in spans} == {trace_id}
    assert edge.span.parent_span_id.hex() == parent
    assert edge.span.name == "PUT /user/login" and edge.attributes()["http.method"] == "PUT"
    assert rpc.span.parent_span_id == edge.span.span_id
    assert rpc.service == "identify-test" and rpc.span.kind == Span.SPAN_KIND_SERVER
    assert rpc.attributes() == {
        "rpc.system": "grpc",
        "rpc.service": "identify.v1.Identify",
        "rpc.method": "Login",
        "rpc.grpc.status_code": 0,
        "identify.request_id": reply.headers["x-request-id"],
        "identify.project": PROJECT,
        "identify.provider": "awsCognito",
    }
    # The store's spans and both upstream calls are the RPC's.
    assert store and all(_descends(r, rpc, spans) for r in store)
    assert any(r.span.parent_span_id == rpc.span.span_id for r in store)
    dialect = DatabaseUrl.parse(world.stack.db_url).dialect
    assert {r.attributes()["db.system.name"] for r in store} == {dialect}
    assert {"store.record_login", "store.get_project"} <= {r.span.name for r in store}
    assert _descends(cognito, rpc, spans) and cognito.attributes()["rpc.system"] == "aws-api"
    assert _descends(jwks, rpc, spans)
    # The JWKS URL without its query string.
    assert jwks.attributes().get("http.url", jwks.attributes().get("url.full")) == world.jwks_url

    # A token in the edge's query string (this RPC takes one there).
    trace_id, _, traceparent = _traceparent()
    with world.stack.client() as http:
        http.get(
            "/user/check/nonstandard",
            params={
                "projectId": PROJECT,
                "provider": "awsCognito",
                "accessToken": session["accessToken"],
            },
            headers={"traceparent": traceparent},
        )
    found = world.receiver.trace(trace_id, _complete("identify.v1.Identify/CheckUserNonstandard"))
    [edge] = [r for r in found if r.service == "identify-test-edge"]
    assert edge.span.name == "GET /user/check/nonstandard"
    assert edge.attributes()["http.url"] == "/user/check/nonstandard"

    secret = [
        email,
        session["userId"],
        PASSWORD,
        QUERY_SECRET,
        session["accessToken"],
        session["refreshToken"],
        session["profileToken"],
        session["signature"],
    ]
    everything = world.receiver.spans()
    texts = [text for r in everything for text in _texts(r.span.attributes)]
    texts += [r.span.name for r in everything] + [r.span.status.message for r in everything]
    texts += [
        text for r in everything for event in r.span.events for text in _texts(event.attributes)
    ]
    assert texts
    for value in secret:
        assert not [text for text in texts if value in text], "a secret is in a span"


@pytest.fixture
def no_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* of the developer's shell: only what a test sets."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)


def _connection_manager(config: str) -> dict[str, Any]:
    """The public listener's (the admin API's listener is another)."""
    listeners = yaml.safe_load(config)["static_resources"]["listeners"]
    [listener] = [x for x in listeners if x["name"] == "edge"]
    return dict(listener["filter_chains"][0]["filters"][0]["typed_config"])


@pytest.mark.usefixtures("no_otel")
def test_without_otel_variables_nothing_traces(tmp_path_factory: pytest.TempPathFactory) -> None:
    off = identify_cli("envoy-config")
    assert off.returncode == 0, off.stderr
    assert "tracing" not in _connection_manager(off.stdout)
    assert "envoy.tracers" not in off.stdout and "identify_otlp" not in off.stdout
    on = identify_cli("envoy-config", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert on.returncode == 0, on.stderr
    tracer = _connection_manager(on.stdout)["tracing"]["provider"]
    assert tracer["name"] == "envoy.tracers.opentelemetry"
    clusters = yaml.safe_load(on.stdout)["static_resources"]["clusters"]
    assert [c["name"] for c in clusters] == ["identify_backend", "identify_otlp"]
    # Every Python process of the stack says what it imports, and when.
    env = {**AWS, "PYTHONPROFILEIMPORTTIME": "1"}
    config = {
        "projects": [
            {"id": PROJECT, "name": "untraced", "providers": {"anonymous": {}}},
        ]
    }
    with running_stack(tmp_path_factory.mktemp("untraced"), config, env=env) as stack:
        with httpx.Client(base_url=stack.http, timeout=10) as http:
            reply = http.put(
                "/user/login",
                json={
                    "projectId": PROJECT,
                    "strategy": "simplified",
                    "provider": "anonymous",
                    "data": {"deviceId": str(uuid.uuid4())},
                },
                headers={"traceparent": _traceparent()[2]},
            )
        assert reply.status_code == 200, reply.text
        log = stack.log_text()
    # `identify up` imports the servicer too; the second time is the server's.
    assert len(re.findall(r"\|\s+server\.servicer$", log, re.MULTILINE)) == 2
    assert "opentelemetry" not in log


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otel.example.com:4317",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=k%20ey,tenant=t",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
        },
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example.com:4318",
        },
    ],
    ids=["default-endpoint", "grpc-tls-headers-ratio", "http-protobuf"],
)
@pytest.mark.usefixtures("no_otel")
def test_envoy_accepts_the_tracer_it_is_given(env: dict[str, str], tmp_path: pathlib.Path) -> None:
    rendered = identify_cli("envoy-config", env=env)
    assert rendered.returncode == 0, rendered.stderr
    config = tmp_path / "envoy.yaml"
    config.write_text(rendered.stdout)
    checked = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tracing = _connection_manager(rendered.stdout)["tracing"]
    exporter = tracing["provider"]["typed_config"]
    if "OTEL_EXPORTER_OTLP_PROTOCOL" in env:
        assert exporter["http_service"]["http_uri"]["uri"] == (
            "http://collector.example.com:4318/v1/traces"
        )
    else:
        assert "grpc_service" in exporter
    if "OTEL_TRACES_SAMPLER_ARG" in env:
        assert tracing["random_sampling"] == {"value": 25.0}
        assert exporter["grpc_service"]["initial_metadata"] == [
            {"key": "api-key", "value": "k ey"},
            {"key": "tenant", "value": "t"},
        ]


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/json"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "jaeger_remote"}, "jaeger_remote"),
    ],
    ids=["exporter", "protocol", "sampler"],
)
@pytest.mark.usefixtures("no_otel")
def test_a_trace_setting_it_cannot_honour_stops_the_start(env: dict[str, str], said: str) -> None:
    refused = identify_cli("envoy-config", env=env)
    assert refused.returncode == 2 and refused.stdout == ""
    assert said in refused.stderr
