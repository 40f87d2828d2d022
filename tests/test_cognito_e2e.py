"""awsCognito through the real Envoy edge, against moto's Cognito server.

One moto server (in this process, on a free port) holds three user pools;
one stack serves six projects on them:

- PUBLIC: pool A (email is the username attribute), app client without a
  secret, sign-ups confirmed by the service (autoConfirm);
- SECRET: pool B (plain usernames), app client with a secret, autoConfirm
  with AWS keys from ${ENV} references;
- MANUAL: pool A again, another app client, no autoConfirm;
- OTHER: pool C, a second pool on the same emulator (same signing key!);
- DOWN: an endpoint and JWKS URL where nothing listens;
- STUB: a stand-in endpoint answering the Cognito errors moto never returns
  (throttling, internal errors, unknown codes, slowness).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from moto.cognitoidp.models import cognitoidp_backends
from moto.core.models import DEFAULT_ACCOUNT_ID

from tests.harness import Stack, count_rows, free_port, moto_cognito, refused, start_stack

REGION = "us-east-1"
PUBLIC, SECRET, MANUAL, OTHER, DOWN, STUB = (str(uuid.uuid4()) for _ in range(6))
PASSWORD = "Passw0rd!one"
NEW_PASSWORD = "Passw0rd!two"
PREFIXES = ["/v1", ""]
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SIG = re.compile(r"^[0-9A-F]{40}$")
SESSION_KEYS = {
    "deviceId",
    "timeStamp",
    "signature",
    "externalId",
    "userId",
    "accessToken",
    "refreshToken",
    "profileToken",
    "signUp",
}


@dataclass(frozen=True)
class Pool:
    id: str
    client_id: str
    client_secret: str | None = None

    def issuer(self) -> str:
        return f"https://cognito-idp.{REGION}.amazonaws.com/{self.id}"


@dataclass(frozen=True)
class Cognito:
    url: str
    client: Any
    a: Pool
    a_manual: Pool
    b: Pool
    c: Pool

    def user(self, pool: Pool, email: str) -> Any:
        backend = cognitoidp_backends[DEFAULT_ACCOUNT_ID][REGION]
        return backend.user_pools[pool.id]._get_user(email)


@pytest.fixture(scope="module")
def cognito() -> Iterator[Cognito]:
    with moto_cognito(REGION) as (url, client):
        yield _pools(url, client)


def _pools(url: str, client: Any) -> Cognito:
    flows = ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
    schema = [
        {"Name": "terms_optin1", "AttributeDataType": "String", "Mutable": True},
        {"Name": "terms_optin2", "AttributeDataType": "String", "Mutable": True},
    ]

    def pool(name: str, *, secret: bool = False, **extra: Any) -> Pool:
        pool_id = client.create_user_pool(PoolName=name, Schema=schema, **extra)["UserPool"]["Id"]
        return app_client(pool_id, secret=secret)

    def app_client(pool_id: str, *, secret: bool = False) -> Pool:
        made = client.create_user_pool_client(
            UserPoolId=pool_id, ClientName="app", ExplicitAuthFlows=flows, GenerateSecret=secret
        )["UserPoolClient"]
        return Pool(pool_id, made["ClientId"], made.get("ClientSecret"))

    a = pool("a", UsernameAttributes=["email"], AutoVerifiedAttributes=["email"])
    return Cognito(
        url=url,
        client=client,
        a=a,
        a_manual=app_client(a.id),
        b=pool("b", secret=True),
        c=pool("c", UsernameAttributes=["email"]),
    )


class ErrorStub:
    """Answers every Cognito call with the error named by the username's
    local part (`TooManyRequestsException@x.test`), with a message that
    must never reach a client; `slow@...` answers too late instead."""

    LEAK = "COGNITO-TEXT-MUST-NOT-LEAK"

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                call = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                username = call.get("Username") or call.get("AuthParameters", {}).get("USERNAME")
                code = str(username).partition("@")[0]
                if code == "slow":
                    time.sleep(1.5)
                payload = json.dumps({"__type": code, "message": ErrorStub.LEAK}).encode()
                self.send_response(500 if code == "InternalErrorException" else 400)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def stub() -> Iterator[ErrorStub]:
    server = ErrorStub()
    yield server
    server.stop()


def settings(cognito: Cognito, pool: Pool, **extra: Any) -> dict[str, Any]:
    out = {
        "region": REGION,
        "userPoolId": pool.id,
        "clientId": pool.client_id,
        # No jwksUrl: like any emulator, moto serves the pool's keys under its
        # endpoint, and the provider derives that URL from endpointUrl.
        "endpointUrl": cognito.url,
        **extra,
    }
    if pool.client_secret:
        out["clientSecret"] = pool.client_secret
    return out


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, db_url: str, cognito: Cognito, stub: ErrorStub
) -> Iterator[Stack]:
    dead = f"http://127.0.0.1:{free_port()}"

    def project(pid: str, name: str, cognito_settings: dict[str, Any]) -> dict[str, Any]:
        return {"id": pid, "name": name, "providers": {"awsCognito": cognito_settings}}

    config = {
        "projects": [
            project(PUBLIC, "public", settings(cognito, cognito.a, autoConfirm=True)),
            project(
                SECRET,
                "secret",
                settings(
                    cognito,
                    cognito.b,
                    autoConfirm=True,
                    accessKeyId="${COGNITO_TEST_KEY_ID}",
                    secretAccessKey="${COGNITO_TEST_SECRET_KEY}",
                ),
            ),
            project(MANUAL, "manual", settings(cognito, cognito.a_manual)),
            project(OTHER, "other", settings(cognito, cognito.c, autoConfirm=True)),
            project(
                DOWN,
                "down",
                {
                    **settings(cognito, cognito.a),
                    "endpointUrl": dead,
                    "jwksUrl": f"{dead}/jwks.json",
                    "timeoutSeconds": 2,
                },
            ),
            project(
                STUB,
                "stub",
                {
                    **settings(cognito, cognito.a),
                    "endpointUrl": stub.url,
                    "jwksUrl": f"{cognito.url}/{cognito.a.id}/.well-known/jwks.json",
                    "timeoutSeconds": 0.5,
                },
            ),
        ]
    }
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "COGNITO_TEST_KEY_ID": "testing",
        "COGNITO_TEST_SECRET_KEY": "testing",
    }
    # Two server processes: a logout handled by one must bind the other.
    s = start_stack(tmp_path_factory.mktemp("cognito"), config, env=env, db_url=db_url, workers=2)
    yield s
    assert s.stop() == 0, s.log_text()


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


# ------------------------------------------------------------------ helpers
def new_email() -> str:
    return f"u{uuid.uuid4().hex[:12]}@example.com"


def body(project: str, data: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"projectId": project, "strategy": "email", "provider": "awsCognito"}
    if data is not None:
        out["data"] = data
    return {**out, **top}


def query(project: str, **extra: str) -> dict[str, str]:
    return {"projectId": project, "strategy": "email", "provider": "awsCognito", **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["result"] == 1
    return dict(out)


def register(http: httpx.Client, project: str, email: str, **attrs: Any) -> dict[str, Any]:
    data = {"email": email, "password": PASSWORD, **attrs}
    return dict(ok(http.post("/user", json=body(project, data)))["data"])


def login(
    http: httpx.Client,
    project: str,
    email: str,
    password: str = PASSWORD,
    device: str | None = None,
) -> dict[str, Any]:
    data = {"email": email, "password": password}
    if device:
        data["deviceId"] = device
    return dict(ok(http.put("/user/login", json=body(project, data)))["data"])


def signed_up(
    http: httpx.Client, project: str = PUBLIC, **attrs: Any
) -> tuple[str, dict[str, Any]]:
    email = new_email()
    register(http, project, email, **attrs)
    return email, login(http, project, email)


def profile(http: httpx.Client, project: str, token: str, prefix: str = "") -> httpx.Response:
    return http.get(f"{prefix}/user", params=query(project), headers=bearer(token))


def retry_delay(out: dict[str, Any]) -> str:
    [retry] = [d for d in out["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    return str(retry["retryDelay"])


# -------------------------------------------------------- register and login
@pytest.mark.parametrize("prefix", PREFIXES)
def test_register_then_login_returns_the_documented_session(
    http: httpx.Client, cognito: Cognito, prefix: str
) -> None:
    email = new_email()
    reply = http.post(
        f"{prefix}/user",
        json=body(
            PUBLIC,
            {
                "email": email,
                "password": PASSWORD,
                "nickname": "burger",
                "custom:terms_optin1": "1",
            },
        ),
    )
    created = ok(reply)
    assert created["message"] == "User is Correctly Created"
    reg = created["data"]
    assert reg["email"] == email and reg["projectId"] == PUBLIC
    assert reg["userConfirmed"] is True and HEX64.match(reg["externalId"])
    upstream = cognito.user(cognito.a, email)
    assert upstream.status.value == "CONFIRMED"
    assert upstream.attribute_lookup["nickname"] == "burger"
    assert upstream.attribute_lookup["custom:terms_optin1"] == "1"

    device = str(uuid.uuid4())
    logged = ok(
        http.put(
            f"{prefix}/user/login",
            json=body(PUBLIC, {"email": email, "password": PASSWORD, "deviceId": device.upper()}),
        )
    )
    assert logged["message"] == "OK"
    session = logged["data"]
    assert set(session) == SESSION_KEYS
    assert session["deviceId"] == device
    assert session["userId"] == reg["userId"] and session["externalId"] == reg["externalId"]
    assert isinstance(session["timeStamp"], int) and isinstance(session["signUp"], int)
    assert SIG.match(session["signature"])
    claims = jwt.decode(session["accessToken"], options={"verify_signature": False})
    assert claims["iss"] == cognito.a.issuer() and claims["client_id"] == cognito.a.client_id
    assert claims["sub"] == upstream.id
    assert session["refreshToken"]
    profile_claims = jwt.decode(session["profileToken"], options={"verify_signature": False})
    assert profile_claims["aud"] == PUBLIC and profile_claims["sub"] == session["userId"]


def test_login_without_device_mints_one_and_keeps_the_user(http: httpx.Client) -> None:
    email, first = signed_up(http)
    second = login(http, PUBLIC, email)
    assert uuid.UUID(first["deviceId"]) and uuid.UUID(second["deviceId"])
    assert first["deviceId"] != second["deviceId"]
    assert first["userId"] == second["userId"]


def test_register_without_auto_confirm_leaves_the_user_unconfirmed(
    http: httpx.Client, cognito: Cognito
) -> None:
    email = new_email()
    assert register(http, MANUAL, email)["userConfirmed"] is False
    reply = http.put("/user/login", json=body(MANUAL, {"email": email, "password": PASSWORD}))
    out = refused(reply, 400, "USER_NOT_CONFIRMED")
    assert "confirm" in out["message"] and "User is not confirmed." not in out["message"]
    cognito.client.admin_confirm_sign_up(UserPoolId=cognito.a.id, Username=email)
    assert login(http, MANUAL, email)["userId"]


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        ({"password": "weak"}, 400, "INVALID_PASSWORD"),
        ({"email": "a@b"}, 400, "INVALID_PARAMETER"),
        ({"email": "not-an-email"}, 400, "INVALID_EMAIL"),
        ({"isAdmin": "1"}, 400, "UNKNOWN_ATTRIBUTE"),
        ({"password": None}, 400, "MISSING_FIELD"),
    ],
)
def test_register_refusals(
    http: httpx.Client, data: dict[str, Any], status: int, reason: str
) -> None:
    payload = {"email": new_email(), "password": PASSWORD, **data}
    payload = {k: v for k, v in payload.items() if v is not None}
    refused(http.post("/v1/user", json=body(PUBLIC, payload)), status, reason)


def test_register_twice_is_409(http: httpx.Client) -> None:
    email = new_email()
    register(http, PUBLIC, email)
    out = refused(
        http.post("/user", json=body(PUBLIC, {"email": email, "password": PASSWORD})),
        409,
        "USER_ALREADY_EXISTS",
    )
    assert email not in out["message"]


def test_simultaneous_registrations_of_one_email_make_one_user(
    stack: Stack, cognito: Cognito
) -> None:
    email = new_email()

    def attempt(_: int) -> int:
        with stack.client() as client:
            data = {"email": email, "password": PASSWORD}
            return client.post("/v1/user", json=body(PUBLIC, data)).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(attempt, range(8)))
    assert codes == [200] + [409] * 7, codes
    found = cognito.client.list_users(UserPoolId=cognito.a.id, Filter=f'email = "{email}"')
    assert len(found["Users"]) == 1


def test_logout_through_one_process_binds_every_process(http: httpx.Client) -> None:
    _, session = signed_up(http)
    ok(http.post("/user/logout", json=body(PUBLIC), headers=bearer(session["accessToken"])))
    # Envoy spreads these over both server processes.
    codes = {profile(http, PUBLIC, session["accessToken"]).status_code for _ in range(8)}
    assert codes == {401}


def test_wrong_password_and_unknown_user_look_the_same(http: httpx.Client) -> None:
    email, _ = signed_up(http)
    wrong = refused(
        http.put("/user/login", json=body(PUBLIC, {"email": email, "password": "Wr0ng!pass"})),
        401,
        "INVALID_CREDENTIALS",
    )
    unknown = refused(
        http.put("/user/login", json=body(PUBLIC, {"email": new_email(), "password": PASSWORD})),
        401,
        "INVALID_CREDENTIALS",
    )
    assert wrong["message"] == unknown["message"]
    assert "Incorrect username or password" not in wrong["message"]
    assert "User does not exist" not in unknown["message"]


def test_login_with_a_bad_device_id_is_400(http: httpx.Client) -> None:
    email, _ = signed_up(http)
    reply = http.put(
        "/user/login",
        json=body(PUBLIC, {"email": email, "password": PASSWORD, "deviceId": "nope"}),
    )
    refused(reply, 400, "INVALID_DEVICE_ID")


# ------------------------------------------------------------------ profile
@pytest.mark.parametrize("prefix", PREFIXES)
def test_profile_has_the_documented_shape(http: httpx.Client, prefix: str) -> None:
    email, session = signed_up(
        http, nickname="burger1111111", **{"custom:terms_optin1": "1", "custom:terms_optin2": "1"}
    )
    out = ok(profile(http, PUBLIC, session["accessToken"], prefix))
    assert out["message"] == "OK"
    data = out["data"]
    assert set(data) == {
        "data",
        "email",
        "nickname",
        "custom:terms_optin1",
        "custom:terms_optin2",
        "updatedAt",
        "devices",
        "linkedIdentities",
    }
    assert data["email"] == email and data["nickname"] == "burger1111111"
    assert data["custom:terms_optin1"] == "1"
    assert isinstance(data["updatedAt"], str) and data["updatedAt"].isdigit()
    inner = data["data"]
    assert inner["userId"] == session["userId"]
    assert inner["email"] == email and inner["nickname"] == "burger1111111"
    assert inner["custom:terms_optin2"] == "1"
    assert uuid.UUID(inner["username"])  # Cognito's username: the sub, in email pools
    assert len(inner["loginHistory"]) == 1 and isinstance(inner["loginHistory"][0], int)
    [device] = data["devices"]
    assert device["deviceId"] == session["deviceId"]
    assert device["userId"] == session["userId"]
    assert device["signature"] == session["signature"]
    assert device["timeStamp"] == session["timeStamp"] and device["signUp"] == session["signUp"]
    assert isinstance(device["lastLogin"], int)


def test_check_records_the_device_login(http: httpx.Client) -> None:
    _, session = signed_up(http)
    other = str(uuid.uuid4())
    for prefix in PREFIXES:
        out = ok(
            http.get(
                f"{prefix}/user/check",
                params=query(PUBLIC, deviceId=other),
                headers=bearer(session["accessToken"]),
            )
        )
    data = out["data"]
    assert {d["deviceId"] for d in data["devices"]} == {session["deviceId"], other}
    assert len(data["data"]["loginHistory"]) == 3
    assert data["data"]["userId"] == session["userId"]


@pytest.mark.parametrize(
    ("device", "reason"), [(None, "MISSING_DEVICE_ID"), ("x", "INVALID_DEVICE_ID")]
)
def test_check_needs_a_device_uuid(http: httpx.Client, device: str | None, reason: str) -> None:
    _, session = signed_up(http)
    params = query(PUBLIC) if device is None else query(PUBLIC, deviceId=device)
    reply = http.get("/user/check", params=params, headers=bearer(session["accessToken"]))
    refused(reply, 400, reason)


def test_update_user_writes_cognito_and_returns_the_documented_reply(
    http: httpx.Client, cognito: Cognito
) -> None:
    email, session = signed_up(http, nickname="before")
    for prefix in PREFIXES:
        nickname = f"after{prefix.strip('/')}"
        out = ok(
            http.put(
                f"{prefix}/user",
                json=body(PUBLIC, {"nickname": nickname, "custom:terms_optin2": "1"}),
                headers=bearer(session["accessToken"]),
            )
        )
        assert out["data"] == {
            "email": email,
            "username": cognito.user(cognito.a, email).id,
            "externalId": session["externalId"],
            "projectId": PUBLIC,
        }
        assert cognito.user(cognito.a, email).attribute_lookup["nickname"] == nickname
    data = ok(profile(http, PUBLIC, session["accessToken"]))["data"]
    assert data["nickname"] == nickname and data["custom:terms_optin2"] == "1"


@pytest.mark.parametrize(
    ("data", "reason"), [({}, "NO_ATTRIBUTES"), ({"role": "admin"}, "UNKNOWN_ATTRIBUTE")]
)
def test_update_user_refusals(http: httpx.Client, data: dict[str, Any], reason: str) -> None:
    _, session = signed_up(http)
    reply = http.put("/user", json=body(PUBLIC, data), headers=bearer(session["accessToken"]))
    refused(reply, 400, reason)


# ---------------------------------------------------------------- passwords
def test_change_password_returns_a_fresh_session(http: httpx.Client) -> None:
    email, session = signed_up(http)
    device = str(uuid.uuid4())
    out = ok(
        http.put(
            "/v1/user/change-password",
            json=body(
                PUBLIC,
                {"password": NEW_PASSWORD, "previousPassword": PASSWORD, "deviceId": device},
            ),
            headers=bearer(session["accessToken"]),
        )
    )
    assert out["message"] == "password has been updated"
    fresh = out["data"]
    assert set(fresh) == SESSION_KEYS and fresh["deviceId"] == device
    assert fresh["userId"] == session["userId"]
    assert fresh["accessToken"] != session["accessToken"]
    ok(profile(http, PUBLIC, fresh["accessToken"]))
    refused(
        http.put("/user/login", json=body(PUBLIC, {"email": email, "password": PASSWORD})),
        401,
        "INVALID_CREDENTIALS",
    )
    assert login(http, PUBLIC, email, NEW_PASSWORD)["userId"] == session["userId"]


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        ({"password": NEW_PASSWORD, "previousPassword": "Wr0ng!pass"}, 401, "INVALID_CREDENTIALS"),
        ({"password": "weak", "previousPassword": PASSWORD}, 400, "INVALID_PASSWORD"),
        ({"password": NEW_PASSWORD}, 400, "MISSING_FIELD"),
    ],
)
def test_change_password_refusals(
    http: httpx.Client, data: dict[str, Any], status: int, reason: str
) -> None:
    _, session = signed_up(http)
    reply = http.put(
        "/user/change-password", json=body(PUBLIC, data), headers=bearer(session["accessToken"])
    )
    refused(reply, status, reason)


def test_forgot_then_confirm_sets_the_new_password(http: httpx.Client, cognito: Cognito) -> None:
    email, session = signed_up(http)
    out = ok(http.put("/user/forgot-password", json=body(PUBLIC, {"email": email})))
    assert out["message"] == "please check your email"
    code = cognito.user(cognito.a, email).confirmation_code
    assert code and code.startswith("moto-confirmation-code:")

    def confirm(with_code: str) -> httpx.Response:
        data = {"email": email, "confirmationCode": with_code, "password": NEW_PASSWORD}
        return http.post("/v1/user/confirm-forgot-password", json=body(PUBLIC, data))

    # moto checks only codes in its own format; a wrong one reads as expired.
    refused(confirm("moto-confirmation-code:1234567"), 400, "EXPIRED_CODE")
    assert ok(confirm(code))["message"] == "password has been reset"
    assert login(http, PUBLIC, email, NEW_PASSWORD)["userId"] == session["userId"]


def test_forgot_password_does_not_reveal_unknown_emails(http: httpx.Client) -> None:
    known, _ = signed_up(http)
    a = ok(http.put("/v1/user/forgot-password", json=body(PUBLIC, {"email": known})))
    b = ok(http.put("/user/forgot-password", json=body(PUBLIC, {"email": new_email()})))
    assert a == b


# ------------------------------------------------------------------ refresh
@pytest.mark.parametrize("prefix", PREFIXES)
def test_refresh_returns_new_tokens(http: httpx.Client, prefix: str) -> None:
    _, session = signed_up(http)
    out = ok(
        http.post(
            f"{prefix}/user/refresh",
            json=body(PUBLIC, deviceId=session["deviceId"], refreshToken=session["refreshToken"]),
        )
    )
    fresh = out["data"]
    assert set(fresh) == SESSION_KEYS
    assert fresh["accessToken"] != session["accessToken"]
    assert fresh["profileToken"] != session["profileToken"]
    assert fresh["refreshToken"] == session["refreshToken"]
    assert fresh["deviceId"] == session["deviceId"] and fresh["userId"] == session["userId"]
    ok(profile(http, PUBLIC, fresh["accessToken"]))


def test_refresh_refusals(http: httpx.Client) -> None:
    _, session = signed_up(http)
    refused(
        http.post("/user/refresh", json=body(PUBLIC, deviceId=session["deviceId"])),
        400,
        "MISSING_FIELD",
    )
    refused(
        http.post(
            "/user/refresh",
            json=body(PUBLIC, deviceId=session["deviceId"], refreshToken=str(uuid.uuid4())),
        ),
        401,
        "INVALID_REFRESH_TOKEN",
    )


# ------------------------------------------------- app client with a secret
def test_client_with_secret_runs_the_whole_lifecycle(http: httpx.Client, cognito: Cognito) -> None:
    email = new_email()
    assert register(http, SECRET, email, nickname="sec")["userConfirmed"] is True
    session = login(http, SECRET, email)
    assert ok(profile(http, SECRET, session["accessToken"]))["data"]["nickname"] == "sec"

    # SECRET_HASH of a refresh is over Cognito's username, read from the bearer.
    refresh = body(SECRET, deviceId=session["deviceId"], refreshToken=session["refreshToken"])
    refused(http.post("/user/refresh", json=refresh), 401, "MISSING_BEARER_TOKEN")
    fresh = ok(http.post("/user/refresh", json=refresh, headers=bearer(session["accessToken"])))[
        "data"
    ]
    assert fresh["userId"] == session["userId"]

    ok(http.put("/user/forgot-password", json=body(SECRET, {"email": email})))
    code = cognito.user(cognito.b, email).confirmation_code
    data = {"email": email, "confirmationCode": code, "password": NEW_PASSWORD}
    ok(http.post("/user/confirm-forgot-password", json=body(SECRET, data)))
    changed = login(http, SECRET, email, NEW_PASSWORD)

    again = ok(
        http.put(
            "/user/change-password",
            json=body(SECRET, {"password": PASSWORD, "previousPassword": NEW_PASSWORD}),
            headers=bearer(changed["accessToken"]),
        )
    )["data"]
    assert again["userId"] == session["userId"]
    # The refresh token presented at logout is refused by hash from then on.
    ok(
        http.post(
            "/user/logout",
            json=body(SECRET, {"refreshToken": again["refreshToken"]}),
            headers=bearer(again["accessToken"]),
        )
    )
    refused(
        http.post(
            "/user/refresh",
            json=body(SECRET, deviceId=again["deviceId"], refreshToken=again["refreshToken"]),
            headers=bearer(again["accessToken"]),
        ),
        401,
        "REFRESH_TOKEN_REVOKED",
    )


# ------------------------------------------------------------------- logout
def test_logout_revokes_access_and_refresh_tokens_even_where_cognito_would_not(
    http: httpx.Client, cognito: Cognito
) -> None:
    email, first = signed_up(http)
    # change-password signs in again under Cognito's username (the sub); moto
    # files that session under another name than the email login's, so its
    # GlobalSignOut below leaves it alive: only this service can refuse it.
    second = ok(
        http.put(
            "/user/change-password",
            json=body(PUBLIC, {"password": NEW_PASSWORD, "previousPassword": PASSWORD}),
            headers=bearer(first["accessToken"]),
        )
    )["data"]
    time.sleep(1.01)  # both sessions strictly before the logout's second
    out = ok(http.post("/v1/user/logout", json=body(PUBLIC), headers=bearer(first["accessToken"])))
    assert out["message"] == "user logged out"

    refused(profile(http, PUBLIC, first["accessToken"]), 401, "TOKEN_REVOKED")
    refused(profile(http, PUBLIC, second["accessToken"]), 401, "TOKEN_REVOKED")
    assert cognito.client.get_user(AccessToken=second["accessToken"])["Username"]
    refused(
        http.post("/user/logout", json=body(PUBLIC), headers=bearer(first["accessToken"])),
        401,
        "TOKEN_REVOKED",
    )

    refused(
        http.post(
            "/user/refresh",
            json=body(PUBLIC, deviceId=second["deviceId"], refreshToken=second["refreshToken"]),
        ),
        401,
        "REFRESH_TOKEN_REVOKED",
    )
    still = cognito.client.initiate_auth(
        ClientId=cognito.a.client_id,
        AuthFlow="REFRESH_TOKEN_AUTH",
        AuthParameters={"REFRESH_TOKEN": second["refreshToken"]},
    )
    assert still["AuthenticationResult"]["AccessToken"]
    refused(
        http.post(
            "/user/refresh",
            json=body(PUBLIC, deviceId=first["deviceId"], refreshToken=first["refreshToken"]),
        ),
        401,
        "INVALID_REFRESH_TOKEN",
    )

    # A new sign-in starts a new epoch: its tokens and refresh work again.
    third = login(http, PUBLIC, email, NEW_PASSWORD)
    ok(profile(http, PUBLIC, third["accessToken"]))
    ok(
        http.post(
            "/user/refresh",
            json=body(PUBLIC, deviceId=third["deviceId"], refreshToken=third["refreshToken"]),
        )
    )


def test_logout_refuses_the_presented_token_at_once(http: httpx.Client) -> None:
    _, session = signed_up(http)
    ok(http.post("/user/logout", json=body(PUBLIC), headers=bearer(session["accessToken"])))
    refused(profile(http, PUBLIC, session["accessToken"], "/v1"), 401, "TOKEN_REVOKED")


def test_logout_ends_the_session_signature(http: httpx.Client) -> None:
    email, session = signed_up(http)
    call = {k: session[k] for k in ("userId", "deviceId", "timeStamp", "signature")}
    call["projectId"] = PUBLIC
    assert http.post("/v1/signature:verify", json=call).json() == {"valid": True, "reason": ""}
    # A logout in the session's own second cannot tell which came first.
    time.sleep(max(0.0, session["timeStamp"] + 1 - time.time()))
    ok(http.post("/user/logout", json=body(PUBLIC), headers=bearer(session["accessToken"])))
    ended = http.post("/v1/signature:verify", json=call).json()
    assert ended == {"valid": False, "reason": "SESSION_ENDED"}
    again = login(http, PUBLIC, email)
    fresh = {k: again[k] for k in ("userId", "deviceId", "timeStamp", "signature")}
    fresh["projectId"] = PUBLIC
    assert http.post("/v1/signature:verify", json=fresh).json() == {"valid": True, "reason": ""}


def signed_up_elsewhere(cognito: Cognito) -> str:
    """The access token of a user who signed up in the pool directly (hosted
    UI, console): unknown to our store until a call authenticates them."""
    email = new_email()
    cognito.client.sign_up(ClientId=cognito.a.client_id, Username=email, Password=PASSWORD)
    cognito.client.admin_confirm_sign_up(UserPoolId=cognito.a.id, Username=email)
    auth = cognito.client.initiate_auth(
        ClientId=cognito.a.client_id,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": email, "PASSWORD": PASSWORD},
    )
    return str(auth["AuthenticationResult"]["AccessToken"])


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "reason"),
    [
        ("PUT", "/user/change-password", {"password": NEW_PASSWORD}, 400, "MISSING_FIELD"),
        ("PUT", "/user", {"role": "admin"}, 400, "UNKNOWN_ATTRIBUTE"),
        ("PUT", "/user", {"nickname": "a\x00b"}, 400, "INVALID_CHARACTERS"),
        ("POST", "/user/logout", {"refreshToken": "r\u00e9fresh"}, 401, "MALFORMED_TOKEN"),
    ],
)
def test_a_refused_call_of_a_user_first_seen_writes_no_user(
    http: httpx.Client,
    stack: Stack,
    cognito: Cognito,
    method: str,
    path: str,
    data: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    token = signed_up_elsewhere(cognito)
    before = count_rows(stack.db_url, "users")
    refused(
        http.request(method, path, json=body(PUBLIC, data), headers=bearer(token)), status, reason
    )
    assert count_rows(stack.db_url, "users") == before
    # The same token is fine, and the user is ours from its first good call.
    ok(profile(http, PUBLIC, token))
    assert count_rows(stack.db_url, "users") == before + 1


# ------------------------------------------------------------ token trust
def test_tokens_of_other_pools_clients_and_projects_are_refused(http: httpx.Client) -> None:
    _, public = signed_up(http, PUBLIC)
    _, other = signed_up(http, OTHER)
    # Same emulator, same signing key: only iss tells these pools apart.
    for project, token in ((PUBLIC, other), (OTHER, public)):
        refused(profile(http, project, token["accessToken"]), 401, "WRONG_ISSUER")
    # Same pool, another app client: client_id tells them apart.
    refused(profile(http, MANUAL, public["accessToken"]), 401, "WRONG_AUDIENCE")
    ok(profile(http, PUBLIC, public["accessToken"]))


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 401, "MISSING_BEARER_TOKEN"),
        ({"Authorization": "Bearer not.a.jwt"}, 401, "MALFORMED_TOKEN"),
        ({"Authorization": "Basic abc"}, 401, "MALFORMED_AUTHORIZATION"),
        # One bound on every token, where the header is read: past it, the
        # server's own clear refusal, never gRPC's metadata limit.
        ({"Authorization": "Bearer " + "x" * 17000}, 400, "FIELD_TOO_LONG"),
    ],
)
def test_profile_needs_a_valid_bearer(
    http: httpx.Client, headers: dict[str, str], status: int, reason: str
) -> None:
    refused(http.get("/user", params=query(PUBLIC), headers=headers), status, reason)


# ------------------------------------------------------------ Cognito down
def test_unreachable_cognito_is_503_with_retry_info(http: httpx.Client) -> None:
    started = time.monotonic()
    out = refused(
        http.put("/user/login", json=body(DOWN, {"email": new_email(), "password": PASSWORD})),
        503,
        "UPSTREAM_UNAVAILABLE",
    )
    assert retry_delay(out) == "1s"
    _, session = signed_up(http)
    out = refused(profile(http, DOWN, session["accessToken"]), 503, "UPSTREAM_UNAVAILABLE")
    assert retry_delay(out)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("code", "status", "reason", "delay"),
    [
        ("TooManyRequestsException", 429, "TOO_MANY_REQUESTS", "1s"),
        ("LimitExceededException", 429, "LIMIT_EXCEEDED", "60s"),
        ("TooManyFailedAttemptsException", 429, "TOO_MANY_FAILED_ATTEMPTS", "30s"),
        ("InternalErrorException", 503, "UPSTREAM_ERROR", "1s"),
        ("slow", 503, "UPSTREAM_TIMEOUT", "1s"),
        ("BrandNewException", 500, "UPSTREAM_UNMAPPED_ERROR", None),
    ],
)
def test_errors_moto_cannot_produce(
    http: httpx.Client, code: str, status: int, reason: str, delay: str | None
) -> None:
    data = {"email": f"{code}@example.com", "password": PASSWORD}
    out = refused(http.put("/user/login", json=body(STUB, data)), status, reason)
    assert ErrorStub.LEAK not in json.dumps(out)
    if delay is None:
        assert not [d for d in out["details"] if d["@type"].endswith("RetryInfo")]
    else:
        assert retry_delay(out) == delay


def test_wrong_code_on_confirm_is_invalid_code(http: httpx.Client) -> None:
    data = {
        "email": "CodeMismatchException@example.com",
        "confirmationCode": "123456",
        "password": PASSWORD,
    }
    out = refused(
        http.post("/user/confirm-forgot-password", json=body(STUB, data)), 400, "INVALID_CODE"
    )
    assert ErrorStub.LEAK not in json.dumps(out)
