"""The foundation through the real Envoy edge: anonymous and noLogin, the
envelope and shapes of the contract, the error table, JWKS and signatures."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa

from server import tokens
from tests.harness import Stack, count_rows, error_reason, in_store, refused, start_stack

PROJECT = str(uuid.uuid4())
ONLY_ANON = str(uuid.uuid4())
PREFIXES = ["/v1", ""]
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SIG = re.compile(r"^[0-9A-F]{40}$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    config = {
        "projects": [
            {"id": PROJECT, "name": "e2e", "providers": {"anonymous": {}, "noLogin": {}}},
            {"id": ONLY_ANON, "name": "anon-only", "providers": {"anonymous": {}}},
        ]
    }
    s = start_stack(tmp_path_factory.mktemp("foundation"), config, db_url=db_url)
    yield s
    assert s.stop() == 0, s.log_text()


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def anon_body(device_id: str, project: str = PROJECT, **extra: Any) -> dict[str, Any]:
    return {
        "projectId": project,
        "strategy": "simplified",
        "provider": "anonymous",
        "data": {"deviceId": device_id, **extra},
    }


def nologin(project: str = PROJECT, **extra: Any) -> dict[str, Any]:
    return {"projectId": project, "strategy": "simplified", "provider": "noLogin", **extra}


# ------------------------------------------------------------------ anonymous
@pytest.mark.parametrize("prefix", PREFIXES)
def test_anonymous_login_returns_documented_session(http: httpx.Client, prefix: str) -> None:
    device = str(uuid.uuid4())
    reply = http.put(f"{prefix}/user/login", json=anon_body(device))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["result"] == 1 and body["message"] == "OK"
    data = body["data"]
    assert set(data) == {
        "deviceId",
        "timeStamp",
        "signature",
        "externalId",
        "userId",
        "signUp",
        "profileToken",
    }
    assert data["deviceId"] == device
    assert isinstance(data["timeStamp"], int) and isinstance(data["signUp"], int)
    assert SIG.match(data["signature"]) and HEX64.match(data["externalId"])
    uuid.UUID(data["userId"])


def test_same_device_maps_to_same_user(http: httpx.Client) -> None:
    device = str(uuid.uuid4())
    registered = http.post("/user", json=anon_body(device, additionalId="12345677865"))
    assert registered.status_code == 200, registered.text
    reg = registered.json()["data"]
    first = http.put("/v1/user/login", json=anon_body(device)).json()["data"]
    second = http.put("/user/login", json=anon_body(device.upper())).json()["data"]
    assert reg["userId"] == first["userId"] == second["userId"]
    assert reg["externalId"] == first["externalId"] == second["externalId"]
    assert reg["additionalId"] == "12345677865"
    assert first["signUp"] == second["signUp"]
    again = http.post("/v1/user", json=anon_body(device)).json()["data"]
    assert again["userId"] == reg["userId"]


def test_other_devices_and_projects_get_other_users(http: httpx.Client) -> None:
    device = str(uuid.uuid4())
    here = http.put("/user/login", json=anon_body(device)).json()["data"]
    other_device = http.put("/user/login", json=anon_body(str(uuid.uuid4()))).json()["data"]
    other_project = http.put("/user/login", json=anon_body(device, project=ONLY_ANON)).json()[
        "data"
    ]
    assert len({here["userId"], other_device["userId"], other_project["userId"]}) == 3
    assert here["externalId"] != other_project["externalId"]


def test_profile_token_verifies_against_published_jwks(http: httpx.Client) -> None:
    session = http.put("/user/login", json=anon_body(str(uuid.uuid4()))).json()["data"]
    jwks = http.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    keys = {k["kid"]: k for k in jwks.json()["keys"]}
    header = jwt.get_unverified_header(session["profileToken"])
    assert header["alg"] == "ES256" and header["kid"] in keys
    key = jwt.PyJWK(keys[header["kid"]]).key
    claims = jwt.decode(session["profileToken"], key, algorithms=["ES256"], audience=PROJECT)
    assert claims["sub"] == session["userId"]
    assert claims["externalId"] == session["externalId"]
    assert claims["exp"] - claims["iat"] <= 3600
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(session["profileToken"], key, algorithms=["ES256"], audience=ONLY_ANON)


def test_signature_verifies_through_the_edge(http: httpx.Client) -> None:
    s = http.put("/user/login", json=anon_body(str(uuid.uuid4()))).json()["data"]
    call = {
        "projectId": PROJECT,
        "userId": s["userId"],
        "deviceId": s["deviceId"],
        "timeStamp": s["timeStamp"],
        "signature": s["signature"],
    }
    assert http.post("/v1/signature:verify", json=call).json() == {"valid": True, "reason": ""}
    mismatch = {"valid": False, "reason": "SIGNATURE_MISMATCH"}
    tampered = {**call, "timeStamp": s["timeStamp"] + 1}
    assert http.post("/v1/signature:verify", json=tampered).json() == mismatch
    elsewhere = {**call, "projectId": ONLY_ANON}
    assert http.post("/v1/signature:verify", json=elsewhere).json() == mismatch


def project_secret(db_url: str, project: str) -> str:
    query = sa.text("SELECT secret FROM projects WHERE project_id = :p")
    return str(in_store(db_url, lambda conn: conn.execute(query, {"p": project}).scalar_one()))


def end_sessions(db_url: str, project: str, user_id: str, at: int) -> None:
    """What a logout writes (awsCognito's, or an admin's "sign out
    everywhere"); anonymous users have no logout call."""
    query = sa.text("UPDATE users SET valid_after = :at WHERE project_id = :p AND user_id = :u")
    in_store(
        db_url, lambda conn: conn.execute(query, {"at": at, "p": project, "u": user_id}), write=True
    )


def signed(stack: Stack, user_id: str, device_id: str, time_stamp: int) -> dict[str, Any]:
    """A genuine signature for any values, made with the project's secret."""
    secret = project_secret(stack.db_url, PROJECT)
    return {
        "projectId": PROJECT,
        "userId": user_id,
        "deviceId": device_id,
        "timeStamp": time_stamp,
        "signature": tokens.signature(secret, user_id, device_id, time_stamp),
    }


def verdict(http: httpx.Client, call: dict[str, Any]) -> tuple[bool, str]:
    reply = http.post("/v1/signature:verify", json=call)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    return body["valid"], body["reason"]


def test_signature_of_a_session_ended_since_is_not_valid(stack: Stack, http: httpx.Client) -> None:
    s = http.put("/user/login", json=anon_body(str(uuid.uuid4()))).json()["data"]
    call = {k: s[k] for k in ("userId", "deviceId", "timeStamp", "signature")}
    call["projectId"] = PROJECT
    assert verdict(http, call) == (True, "")
    # Ended in the session's own second: it may have begun after the end.
    end_sessions(stack.db_url, PROJECT, s["userId"], s["timeStamp"])
    assert verdict(http, call) == (True, "")
    end_sessions(stack.db_url, PROJECT, s["userId"], s["timeStamp"] + 1)
    assert verdict(http, call) == (False, "SESSION_ENDED")
    # A mismatch is told before anything the store knows.
    assert verdict(http, {**call, "signature": "0" * 40}) == (False, "SIGNATURE_MISMATCH")
    # The next sign-in is a new session, valid again.
    time.sleep(max(0.0, s["timeStamp"] + 1 - time.time()))
    again = http.put("/user/login", json=anon_body(s["deviceId"])).json()["data"]
    fresh = {k: again[k] for k in ("userId", "deviceId", "timeStamp", "signature")}
    assert verdict(http, {**fresh, "projectId": PROJECT}) == (True, "")


def test_signature_max_age(stack: Stack, http: httpx.Client) -> None:
    s = http.put("/user/login", json=anon_body(str(uuid.uuid4()))).json()["data"]
    now = int(time.time())
    old = signed(stack, s["userId"], s["deviceId"], now - 600)
    assert verdict(http, old) == (True, "")
    assert verdict(http, {**old, "maxAgeSeconds": 3600}) == (True, "")
    assert verdict(http, {**old, "maxAgeSeconds": 300}) == (False, "SESSION_TOO_OLD")
    current = signed(stack, s["userId"], s["deviceId"], now)
    assert verdict(http, {**current, "maxAgeSeconds": 300}) == (True, "")
    # maxAgeSeconds 0 is a limit too, not "unset".
    assert verdict(http, {**old, "maxAgeSeconds": 0}) == (False, "SESSION_TOO_OLD")
    body = refused(
        http.post("/v1/signature:verify", json={**current, "maxAgeSeconds": -1}),
        400,
        "INVALID_VALUE",
    )
    assert body["details"][0]["metadata"]["field"] == "maxAgeSeconds"


def test_signature_of_an_unknown_user_is_not_valid(stack: Stack, http: httpx.Client) -> None:
    call = signed(stack, str(uuid.uuid4()), str(uuid.uuid4()), int(time.time()))
    assert verdict(http, call) == (False, "UNKNOWN_USER")


@pytest.mark.parametrize(
    ("project", "status", "reason"),
    [
        ("", 400, "MISSING_PROJECT_ID"),
        ("not-a-uuid", 400, "INVALID_PROJECT_ID"),
        ("00000000-0000-4000-8000-000000000000", 404, "PROJECT_NOT_FOUND"),
    ],
)
def test_signature_verify_checks_the_project_like_every_call(
    http: httpx.Client, project: str, status: int, reason: str
) -> None:
    call = {
        "projectId": project,
        "userId": str(uuid.uuid4()),
        "deviceId": str(uuid.uuid4()),
        "timeStamp": 1,
        "signature": "AB" * 20,
    }
    refused(http.post("/v1/signature:verify", json=call), status, reason)
    # The same reasons as a provider call with the same projectId.
    refused(http.put("/v1/user/login", json=anon_body(call["deviceId"], project)), status, reason)


@pytest.mark.parametrize(
    ("device", "reason"),
    [("not-a-uuid", "INVALID_DEVICE_ID"), ("", "MISSING_DEVICE_ID"), (42, "INVALID_DEVICE_ID")],
)
def test_anonymous_bad_device_is_400_and_writes_nothing(
    stack: Stack, http: httpx.Client, device: Any, reason: str
) -> None:
    before = count_rows(stack.db_url, "users")
    reply = http.put("/v1/user/login", json=anon_body(device))
    assert reply.status_code == 400
    assert error_reason(reply.json()) == reason
    assert count_rows(stack.db_url, "users") == before


# -------------------------------------------------------------------- noLogin
@pytest.mark.parametrize("prefix", PREFIXES)
def test_nologin_lifecycle_flat_shapes(http: httpx.Client, prefix: str) -> None:
    created = http.post(f"{prefix}/user", json=nologin())
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["result"] == 1 and "data" not in body
    assert body["strategy"] == "simplified" and body["provider"] == "noLogin"
    assert body["projectId"] == PROJECT
    external_id = body["externalId"]
    assert HEX64.match(external_id)

    profile = {"data": "customUserObjectGoesHere", "level": 3, "tags": ["a", "b"]}
    put = http.put(
        f"{prefix}/user", json=nologin(externalId=external_id, data={"appProfile": profile})
    )
    assert put.status_code == 200, put.text
    assert put.json()["appProfile"] == profile
    assert put.json()["externalId"] == external_id

    got = http.get(
        f"{prefix}/user",
        params={
            "projectId": PROJECT,
            "strategy": "simplified",
            "provider": "noLogin",
            "externalId": external_id,
        },
    )
    assert got.status_code == 200
    assert got.json() == {
        "result": 1,
        "message": "ok",
        "strategy": "simplified",
        "provider": "noLogin",
        "projectId": PROJECT,
        "externalId": external_id,
        "appProfile": profile,
    }
    # PUT replaces the profile; it does not merge.
    http.put(f"{prefix}/user", json=nologin(externalId=external_id, data={"appProfile": {"x": 1}}))
    again = http.get(
        f"{prefix}/user",
        params={"projectId": PROJECT, "provider": "noLogin", "externalId": external_id},
    )
    assert again.json()["appProfile"] == {"x": 1}


def test_nologin_unknown_external_id_is_404(http: httpx.Client) -> None:
    reply = http.get(
        "/v1/user", params={"projectId": PROJECT, "provider": "noLogin", "externalId": "ab" * 32}
    )
    assert reply.status_code == 404
    assert error_reason(reply.json()) == "USER_NOT_FOUND"


def test_nologin_external_id_of_other_project_is_404(http: httpx.Client, stack: Stack) -> None:
    external_id = http.post("/user", json=nologin()).json()["externalId"]
    other = str(uuid.uuid4())
    reply = http.get(
        "/user", params={"projectId": other, "provider": "noLogin", "externalId": external_id}
    )
    assert reply.status_code == 404
    assert error_reason(reply.json()) == "PROJECT_NOT_FOUND"


@pytest.mark.parametrize(
    ("app_profile", "reason"),
    [
        ({"blob": "x" * (17 * 1024)}, "APP_PROFILE_TOO_LARGE"),
        (["not", "object"], "APP_PROFILE_NOT_OBJECT"),
    ],
)
def test_nologin_bad_app_profile_is_400_and_keeps_old(
    http: httpx.Client, app_profile: Any, reason: str
) -> None:
    external_id = http.post("/user", json=nologin()).json()["externalId"]
    http.put("/user", json=nologin(externalId=external_id, data={"appProfile": {"keep": True}}))
    reply = http.put(
        "/user", json=nologin(externalId=external_id, data={"appProfile": app_profile})
    )
    assert reply.status_code == 400
    assert error_reason(reply.json()) == reason
    got = http.get(
        "/user", params={"projectId": PROJECT, "provider": "noLogin", "externalId": external_id}
    )
    assert got.json()["appProfile"] == {"keep": True}


# ----------------------------------------------------------------- error table
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "reason"),
    [
        (
            "PUT",
            "/v1/user/login",
            {"json": anon_body(str(uuid.uuid4()), project="nope")},
            400,
            "INVALID_PROJECT_ID",
        ),
        (
            "PUT",
            "/user/login",
            {"json": anon_body(str(uuid.uuid4()), project=str(uuid.uuid4()))},
            404,
            "PROJECT_NOT_FOUND",
        ),
        (
            "PUT",
            "/v1/user/login",
            {"json": {**anon_body(str(uuid.uuid4())), "provider": "myspace"}},
            400,
            "UNKNOWN_PROVIDER",
        ),
        ("POST", "/v1/user", {"json": nologin(project=ONLY_ANON)}, 400, "PROVIDER_NOT_ENABLED"),
        (
            "PUT",
            "/v1/user/login",
            {"json": {**anon_body(str(uuid.uuid4())), "strategy": "email"}},
            400,
            "STRATEGY_MISMATCH",
        ),
        (
            "GET",
            "/v1/user",
            {"params": {"projectId": PROJECT, "provider": "noLogin", "externalId": "zz"}},
            400,
            "INVALID_EXTERNAL_ID",
        ),
        (
            "PUT",
            "/v1/user/login",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "GET",
            "/v1/user",
            {"params": {"projectId": PROJECT, "provider": "noLogin", "bogus": "1"}},
            400,
            "MALFORMED_REQUEST",
        ),
        ("GET", "/v1/nowhere", {}, 404, "UNKNOWN_PATH"),
        ("DELETE", "/user", {}, 404, "UNKNOWN_PATH"),
        (
            "POST",
            "/user",
            {"json": nologin(data={"pad": "x" * (65 * 1024)})},
            413,
            "BODY_TOO_LARGE",
        ),
        (
            "POST",
            "/v1/user/logout",
            {"json": anon_body(str(uuid.uuid4()))},
            400,
            "OPERATION_NOT_SUPPORTED",
        ),
    ],
)
def test_errors_through_the_edge(
    http: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int, reason: str
) -> None:
    reply = http.request(method, path, **kwargs)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert error_reason(body) == reason
    assert isinstance(body["code"], int) and body["message"]
    # No stack traces or exception text reach the client.
    assert "Traceback" not in reply.text and "Error(" not in reply.text


def test_unimplemented_provider_answers_501_with_reason(http: httpx.Client) -> None:
    reply = http.get("/v1/user", params={"projectId": PROJECT, "provider": "noSuchProviderAtAll"})
    assert reply.status_code == 400
    assert error_reason(reply.json()) == "UNKNOWN_PROVIDER"


# ---------------------------------------------------------------- edge basics
def test_healthz_reports_serving(http: httpx.Client) -> None:
    reply = http.get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "SERVING"}


def test_access_log_never_carries_tokens(stack: Stack, http: httpx.Client) -> None:
    secret = "Bearer super-secret-token-value"
    http.get(
        "/v1/user",
        params={"projectId": PROJECT, "provider": "noLogin", "externalId": "cd" * 32},
        headers={"authorization": secret},
    )
    http.put("/v1/user/login", json=anon_body("password-like-secret-value"))
    # Social tokens may travel in the query string; Envoy logs paths without
    # it (a transcoded call logs its gRPC path; others their own path).
    http.get(
        "/user/check/nonstandard",
        params={
            "accessToken": "query-secret-token-value",
            "projectId": PROJECT,
            "provider": "noLogin",
        },
    )
    http.get("/nowhere", params={"accessToken": "query-secret-token-value"})
    deadline = time.monotonic() + 5
    while '"path":"/nowhere"' not in stack.log_text():
        assert time.monotonic() < deadline, "Envoy's access log line never arrived"
        time.sleep(0.1)
    log = stack.log_text()
    assert "query-secret-token-value" not in log
    assert "super-secret-token-value" not in log
    assert "password-like-secret-value" not in log
    assert "cd" * 32 not in log


def test_json_numbers_are_numbers(http: httpx.Client) -> None:
    raw = http.put("/user/login", json=anon_body(str(uuid.uuid4()))).text
    decoded = json.loads(raw)["data"]
    assert f'"timeStamp":{decoded["timeStamp"]}' in raw.replace(" ", "")
