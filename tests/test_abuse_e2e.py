"""Abuse protection through the real edge: per-project and per-IP rate limits
on sign-ups, password logins and social checks (429 RATE_LIMITED with
RetryInfo and Retry-After), the per-account lockout of awsCognito credential
checks against moto (counted in the database, seen by every process), and
shared counters in Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.protobuf import struct_pb2
from identify.v1 import identify_pb2 as pb
from identify.v1 import identify_pb2_grpc

from server.abuse.guard import client_key
from tests.harness import (
    Stack,
    cognito_pool,
    error_reason,
    free_port,
    identify_cli,
    moto_cognito,
    refused,
    start_stack,
)

REGION = "us-east-1"
PASSWORD = "Passw0rd!one"
WRONG = "Wrong-passw0rd!"
LIMITS_ON = {"IDENTIFY_RATE_LIMITS": "on"}

ANON, ANON_DEFAULT, CAPPED, SOCIAL, COGNITO = (str(uuid.uuid4()) for _ in range(5))
LOCKOUT = {"maxFailures": 3, "stepSeconds": 2, "maxLockSeconds": 4}


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, str, str]]:
    """(endpoint, pool id, app client id) of a moto Cognito pool."""
    with moto_cognito(REGION) as (url, client):
        yield (url, *cognito_pool(client, "abuse"))


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, db_url: str, moto: tuple[str, str, str]
) -> Iterator[Stack]:
    endpoint, pool_id, client_id = moto
    dead = f"http://127.0.0.1:{free_port()}"
    config = {
        "projects": [
            {
                "id": ANON,
                "name": "anon",
                "providers": {"anonymous": {}, "noLogin": {}},
                "limits": {"anonymousSignUp": {"perIp": "3/hour"}},
            },
            {"id": ANON_DEFAULT, "name": "defaults", "providers": {"anonymous": {}}},
            {
                "id": CAPPED,
                "name": "capped",
                "providers": {"anonymous": {}},
                "limits": {"anonymousSignUp": {"perIp": "off", "perProject": "4/hour"}},
            },
            {
                "id": SOCIAL,
                "name": "social",
                "providers": {"twitter": {"apiUrl": dead, "timeoutSeconds": 0.5}},
                "limits": {"socialCheck": {"perIp": "2/minute"}},
            },
            {
                "id": COGNITO,
                "name": "cognito",
                "providers": {
                    "awsCognito": {
                        "region": REGION,
                        "userPoolId": pool_id,
                        "clientId": client_id,
                        "endpointUrl": endpoint,
                        "autoConfirm": True,
                        "accessKeyId": "testing",
                        "secretAccessKey": "testing",
                    }
                },
                "limits": {"lockout": LOCKOUT, "signUp": {"perIp": "20/hour"}},
            },
        ]
    }
    # One process: the embedded counters are per process (see the Redis test).
    # One trusted proxy: the client IP is the one X-Forwarded-For names.
    s = start_stack(
        tmp_path_factory.mktemp("abuse"),
        config,
        db_url=db_url,
        env=LIMITS_ON,
        extra_args=["--trusted-proxies", "1"],
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[Stack]:
    """The same database and config with two server processes."""
    s = start_stack(
        tmp_path_factory.mktemp("abuse2"),
        yaml.safe_load(stack.config_path.read_text()),
        db_url=stack.db_url,
        env=LIMITS_ON,
        workers=2,
    )
    yield s
    s.stop()


@pytest.fixture()
def http(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def anonymous_login(http: httpx.Client, project: str, device: str | None = None) -> httpx.Response:
    body = {
        "projectId": project,
        "provider": "anonymous",
        "data": {"deviceId": device or str(uuid.uuid4())},
    }
    return http.put("/v1/user/login", json=body)


def rate_limited(reply: httpx.Response, scope: str) -> dict[str, Any]:
    body = refused(reply, 429, "RATE_LIMITED")
    [info] = [d for d in body["details"] if d["@type"].endswith("ErrorInfo")]
    assert info["metadata"]["scope"] == scope
    [retry] = [d for d in body["details"] if d["@type"].endswith("RetryInfo")]
    wait = int(reply.headers["retry-after"])
    assert wait >= 1 and retry["retryDelay"] == f"{wait}s"
    return body


# --------------------------------------------------------------- rate limits
def test_anonymous_sign_ups_are_limited_per_ip_and_other_calls_are_not(http: httpx.Client) -> None:
    known = str(uuid.uuid4())
    assert anonymous_login(http, ANON, known).status_code == 200
    # noLogin creates are anonymous sign-ups too, on the same counter.
    create = {"projectId": ANON, "provider": "noLogin", "strategy": "simplified"}
    external_id = http.post("/v1/user", json=create).json()["externalId"]
    assert anonymous_login(http, ANON).status_code == 200
    rate_limited(anonymous_login(http, ANON), "client")
    rate_limited(http.post("/v1/user", json=create), "client")
    # A device that already has its user is a login, not a sign-up, and a
    # profile read is no sign-up either: neither is ever limited.
    for _ in range(5):
        assert anonymous_login(http, ANON, known).status_code == 200
        read = {**create, "externalId": external_id}
        assert http.get("/v1/user", params=read).status_code == 200


def test_each_client_ip_has_its_own_count(http: httpx.Client) -> None:
    def sign_up(ip: str) -> httpx.Response:
        body = {"projectId": ANON, "provider": "anonymous", "data": {"deviceId": str(uuid.uuid4())}}
        return http.put("/v1/user/login", json=body, headers={"X-Forwarded-For": ip})

    assert [sign_up("203.0.113.7").status_code for _ in range(3)] == [200] * 3
    rate_limited(sign_up("203.0.113.7"), "client")
    # Another client behind the same load balancer is not held to that count.
    assert sign_up("203.0.113.8").status_code == 200


def test_the_defaults_apply_without_a_limits_block(http: httpx.Client) -> None:
    # 30 new anonymous accounts per hour per IP (Supabase's figure).
    replies = [anonymous_login(http, ANON_DEFAULT).status_code for _ in range(31)]
    assert replies == [200] * 30 + [429]


def test_the_project_limit_holds_whoever_asks(http: httpx.Client) -> None:
    replies = [anonymous_login(http, CAPPED) for _ in range(5)]
    assert [r.status_code for r in replies[:4]] == [200] * 4
    rate_limited(replies[4], "project")


def test_social_checks_are_limited_before_any_upstream_call(http: httpx.Client) -> None:
    params = {"projectId": SOCIAL, "provider": "twitter", "userId": "1", "accessToken": "t"}
    first = [http.get("/v1/user/check/nonstandard", params=params) for _ in range(2)]
    # The stand-in X API is down: the two admitted checks reach for it.
    assert [error_reason(r.json()) for r in first] == ["UPSTREAM_UNAVAILABLE"] * 2
    rate_limited(http.get("/v1/user/check/nonstandard", params=params), "client")


# ------------------------------------------------------------------- lockout
def register(http: httpx.Client) -> str:
    email = f"{uuid.uuid4().hex[:12]}@abuse.test"
    data = {"email": email, "password": PASSWORD}
    reply = http.post(
        "/v1/user", json={"projectId": COGNITO, "provider": "awsCognito", "data": data}
    )
    assert reply.status_code == 200, reply.text
    return email


def login(http: httpx.Client, email: str, password: str) -> httpx.Response:
    data = {"email": email, "password": password}
    return http.put(
        "/v1/user/login", json={"projectId": COGNITO, "provider": "awsCognito", "data": data}
    )


def locked(reply: httpx.Response) -> dict[str, Any]:
    body = refused(reply, 429, "TOO_MANY_FAILED_ATTEMPTS")
    assert int(reply.headers["retry-after"]) >= 1
    return body


def test_wrong_passwords_lock_the_account_and_a_success_resets_it(http: httpx.Client) -> None:
    email = register(http)
    for _ in range(3):
        refused(login(http, email, WRONG), 401, "INVALID_CREDENTIALS")
    # Even the right password is refused while locked: Cognito is not asked.
    locked(login(http, email, PASSWORD))
    assert int(login(http, email, PASSWORD).headers["retry-after"]) <= LOCKOUT["stepSeconds"]
    time.sleep(LOCKOUT["stepSeconds"] + 0.5)
    # The lock is over; one more failure locks again, one step longer.
    refused(login(http, email, WRONG), 401, "INVALID_CREDENTIALS")
    longer = login(http, email, PASSWORD)
    locked(longer)
    assert int(longer.headers["retry-after"]) > LOCKOUT["stepSeconds"]
    time.sleep(LOCKOUT["maxLockSeconds"] + 0.5)
    assert login(http, email, PASSWORD).status_code == 200
    # The success forgot the count: two failures do not lock.
    for _ in range(2):
        refused(login(http, email, WRONG), 401, "INVALID_CREDENTIALS")
    assert login(http, email, PASSWORD).status_code == 200


def test_the_locked_answer_does_not_tell_who_has_an_account(http: httpx.Client) -> None:
    real, ghost = register(http), f"{uuid.uuid4().hex[:12]}@nobody.test"
    for email in (real, ghost):
        for _ in range(3):
            refused(login(http, email, WRONG), 401, "INVALID_CREDENTIALS")
    answers = [locked(login(http, email, PASSWORD)) for email in (real, ghost)]
    for body in answers:
        for detail in body["details"]:
            detail.get("metadata", {}).pop("requestId", None)
            # The time left differs by how long the other account's three tries
            # took, which may cross a whole second; both are within one step.
            delay = detail.pop("retryDelay", None)
            if delay is not None:
                assert 1 <= int(delay.rstrip("s")) <= LOCKOUT["stepSeconds"]
    assert answers[0] == answers[1]


def test_only_credential_failures_move_the_counter(http: httpx.Client) -> None:
    email = register(http)
    session = login(http, email, PASSWORD).json()["data"]
    for _ in range(2):
        refused(login(http, email, WRONG), 401, "INVALID_CREDENTIALS")
    # A profile read and a refresh neither reset nor move the count...
    auth = {"Authorization": f"Bearer {session['accessToken']}"}
    query = {"projectId": COGNITO, "provider": "awsCognito"}
    assert http.get("/v1/user", params=query, headers=auth).status_code == 200
    refresh = {**query, "refreshToken": session["refreshToken"]}
    assert http.post("/v1/user/refresh", json=refresh, headers=auth).status_code == 200
    # ...so the third failure still locks.
    refused(login(http, email, WRONG), 401, "INVALID_CREDENTIALS")
    locked(login(http, email, PASSWORD))


def test_wrong_previous_passwords_count_against_the_same_account(http: httpx.Client) -> None:
    email = register(http)
    token = login(http, email, PASSWORD).json()["data"]["accessToken"]
    body = {
        "projectId": COGNITO,
        "provider": "awsCognito",
        "data": {"password": "Passw0rd!new", "previousPassword": WRONG},
    }
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        refused(
            http.put("/v1/user/change-password", json=body, headers=auth),
            401,
            "INVALID_CREDENTIALS",
        )
    locked(http.put("/v1/user/change-password", json=body, headers=auth))
    locked(login(http, email, PASSWORD))


def test_wrong_reset_codes_lock_the_reset(http: httpx.Client) -> None:
    email = register(http)
    query = {"projectId": COGNITO, "provider": "awsCognito"}
    assert http.put("/v1/user/forgot-password", json={**query, "data": {"email": email}}).is_success
    # moto checks only codes in its own format; a wrong one reads as expired.
    data = {"email": email, "confirmationCode": "moto-confirmation-code:1", "password": WRONG}
    for _ in range(3):
        reply = http.post("/v1/user/confirm-forgot-password", json={**query, "data": data})
        refused(reply, 400, "EXPIRED_CODE")
    locked(http.post("/v1/user/confirm-forgot-password", json={**query, "data": data}))
    # The same account: its password logins are locked too.
    locked(login(http, email, PASSWORD))


def test_a_lockout_counted_by_one_process_binds_the_other(http: httpx.Client, two: Stack) -> None:
    email = register(http)

    def grpc_login(target: str, password: str) -> grpc.StatusCode:
        data = struct_pb2.Struct()
        data.update({"email": email, "password": password})
        with grpc.insecure_channel(target) as channel:
            stub = identify_pb2_grpc.IdentifyStub(channel)
            try:
                stub.Login(pb.UserRequest(project_id=COGNITO, provider="awsCognito", data=data))
            except grpc.RpcError as err:
                return err.code()
        return grpc.StatusCode.OK

    first, second = two.grpc_targets
    assert [grpc_login(first, WRONG) for _ in range(3)] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert grpc_login(second, PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_lockouts_and_limits_are_logged_without_secrets(stack: Stack) -> None:
    log = stack.log_text()
    assert "account locked project=" in log and "rate limited project=" in log
    assert PASSWORD not in log and WRONG not in log and "@abuse.test" not in log


# -------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("limits", "words"),
    [
        ({"anonymousSignup": {"perIp": "3/hour"}}, "unknown limits setting(s): anonymousSignup"),
        ({"signUp": {"perIp": "three an hour"}}, "perIp must be a rate such as 30/hour"),
        ({"lockout": {"maxFailures": 0}}, "maxFailures must be a whole number between 1"),
        ({"passwordLogin": {"perIP": "1/second"}}, "unknown passwordLogin setting(s): perIP"),
    ],
)
def test_bad_limits_stop_the_start_naming_the_key(
    tmp_path: Any, limits: dict[str, Any], words: str
) -> None:
    config = tmp_path / "identify.yaml"
    project = {"id": str(uuid.uuid4()), "providers": {"anonymous": {}}, "limits": limits}
    config.write_text(yaml.safe_dump({"projects": [project]}))
    out = identify_cli("serve", "--config", str(config), "--db", f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 2 and words in out.stderr, out.stderr


def test_a_redis_that_does_not_answer_stops_the_start(tmp_path: Any) -> None:
    out = identify_cli(
        "serve", "--db", f"sqlite:///{tmp_path}/x.db", "--redis", f"redis://127.0.0.1:{free_port()}"
    )
    assert out.returncode == 2 and "Redis at --redis does not answer" in out.stderr


# --------------------------------------------------------------------- redis
REDIS_URL = "redis://127.0.0.1:6379/0"


def test_with_redis_every_process_shares_the_counters(
    tmp_path_factory: pytest.TempPathFactory, db_url: str
) -> None:
    project = str(uuid.uuid4())
    config = {
        "projects": [
            {
                "id": project,
                "name": "shared",
                "providers": {"anonymous": {}},
                "limits": {"anonymousSignUp": {"perIp": "6/hour"}},
            }
        ]
    }
    s = start_stack(
        tmp_path_factory.mktemp("redis"),
        config,
        db_url=db_url,
        env=LIMITS_ON,
        workers=2,
        extra_args=["--redis", REDIS_URL],
    )
    try:
        with s.client() as http:
            codes = [anonymous_login(http, project).status_code for _ in range(12)]
        # Without Redis each of the two processes would admit 6.
        assert codes.count(200) == 6 and codes[:6] == [200] * 6, codes
        assert set(codes[6:]) == {429}
    finally:
        s.stop()


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("", "unknown"),
    ],
)
def test_a_client_is_an_ipv4_address_or_an_ipv6_64(ip: str, key: str) -> None:
    assert client_key(ip) == key
