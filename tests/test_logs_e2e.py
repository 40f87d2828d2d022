"""The log of a whole run, in JSON at debug level: one stack (`identify up
--log-format json --log-level debug`) serving anonymous, awsCognito (moto,
an app client with a secret), authZero (with the Management API) and oidc
(local issuers) goes through a realistic sequence of calls and refusals,
one server process is killed so the supervisor speaks, and the stack is
stopped. Then the log (servers' stderr, Envoy's stdout, the supervisor's
own lines) must hold none of the secrets the run used, every line of it
but the banner must be a JSON object with the documented fields, and a
server line must name the same request id as Envoy's access line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from moto.cognitoidp.models import cognitoidp_backends
from moto.core.models import DEFAULT_ACCOUNT_ID

from server import edge
from server.supervisor import Supervisor
from tests.fakes.oidc_issuer import FakeIssuer
from tests.harness import ROOT, Stack, in_store, moto_cognito, refused, start_stack

REGION = "us-east-1"
ANON, COGNITO, AUTH0, OIDC = (str(uuid.uuid4()) for _ in range(4))
# Distinct from anything else in a log, so a find is a leak, not a coincidence.
PASSWORD = "Logs-e2e-pass-" + uuid.uuid4().hex[:10] + "!A1"
NEW_PASSWORD = "Logs-e2e-new-" + uuid.uuid4().hex[:10] + "!B2"
WRONG_PASSWORD = "Logs-e2e-wrong-" + uuid.uuid4().hex[:10] + "!C3"
AWS_SECRET = "logs-e2e-aws-secret-" + uuid.uuid4().hex
MGMT_ID = "logs-mgmt-client"
MGMT_SECRET = "logs-e2e-mgmt-secret-" + uuid.uuid4().hex
AUD = "https://api.logs-e2e.test"
OIDC_CLIENT = "logs-e2e-client"
BANNER_FIRST, BANNER_LAST, STOPPED = "Identify is up.", "Ctrl-C stops.", "Identify stopped."
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LINE_FIELDS = {"time", "level", "logger", "message", "pid"}
CALL_FIELDS = {"request_id", "rpc", "project", "provider"}
LEVELS = {"trace", "debug", "info", "warning", "error", "critical"}


@dataclass
class Run:
    stack: Stack
    exit_code: int
    secrets: set[str] = field(default_factory=set)
    # The x-request-id the edge answered a Cognito profile read with.
    profile_request_id: str = ""
    supervisor_pid: int = 0

    def lines(self) -> list[str]:
        return [line.rstrip("\r") for line in self.stack.log_text().splitlines()]

    def entries(self) -> list[dict[str, Any]]:
        """Every line but the banner and the stopped line, as JSON."""
        lines = self.lines()
        first, last = lines.index(BANNER_FIRST), lines.index(BANNER_LAST)
        out = []
        for i, line in enumerate(lines):
            if first <= i <= last or not line.strip() or line == STOPPED:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
            assert isinstance(entry, dict), line
            out.append(entry)
        return out


def _pieces(secret: str) -> set[str]:
    """A secret as it could show up in a log line: itself, JSON-escaped,
    URL-encoded; a JWT also by its payload and its signature."""
    out = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe="")}
    parts = secret.split(".")
    if len(parts) == 3 and all(len(part) >= 16 for part in parts):
        out.update(parts[1:])
    return out


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    out: dict[str, Any] = reply.json()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    with moto_cognito(REGION) as (moto_url, aws):
        pool_id = aws.create_user_pool(PoolName="logs")["UserPool"]["Id"]
        app = aws.create_user_pool_client(
            UserPoolId=pool_id,
            ClientName="app",
            ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
            GenerateSecret=True,
        )["UserPoolClient"]
        auth0 = FakeIssuer(management_clients={MGMT_ID: MGMT_SECRET})
        oidc = FakeIssuer()
        config = {
            "projects": [
                {"id": ANON, "name": "anon", "providers": {"anonymous": {}}},
                {
                    "id": COGNITO,
                    "name": "cognito",
                    "providers": {
                        "awsCognito": {
                            "region": REGION,
                            "userPoolId": pool_id,
                            "clientId": app["ClientId"],
                            "clientSecret": app["ClientSecret"],
                            "endpointUrl": moto_url,
                            "autoConfirm": True,
                            "accessKeyId": "${LOGS_E2E_KEY_ID}",
                            "secretAccessKey": "${LOGS_E2E_SECRET_KEY}",
                        }
                    },
                },
                {
                    "id": AUTH0,
                    "name": "auth0",
                    "providers": {
                        "authZero": {
                            "issuer": auth0.issuer,
                            "jwksUri": auth0.jwks_url,
                            "audience": AUD,
                            "userinfoUrl": auth0.base_url + "/userinfo",
                            "tokenUrl": auth0.base_url + "/oauth/token",
                            "managementApiUrl": auth0.base_url + "/api/v2",
                            "managementClientId": MGMT_ID,
                            "managementClientSecret": "${LOGS_E2E_MGMT_SECRET}",
                        }
                    },
                },
                # Discovery, and ID tokens: the audience is the app's client id.
                {
                    "id": OIDC,
                    "name": "oidc",
                    "providers": {"oidc": {"issuer": oidc.issuer, "audience": OIDC_CLIENT}},
                },
            ]
        }
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "LOGS_E2E_KEY_ID": "testing",
            "LOGS_E2E_SECRET_KEY": AWS_SECRET,
            "LOGS_E2E_MGMT_SECRET": MGMT_SECRET,
        }
        stack = start_stack(
            tmp_path_factory.mktemp("logs"),
            config,
            env=env,
            extra_args=["--log-format", "json", "--log-level", "debug"],
        )
        secrets = {PASSWORD, NEW_PASSWORD, WRONG_PASSWORD, AWS_SECRET, MGMT_SECRET}
        secrets.add(app["ClientSecret"])
        try:
            with stack.client() as http:
                profile_request_id = _calls(http, pool_id, auth0, oidc, secrets)
                supervisor_pid = _kill_a_worker(stack, http)
            secrets |= set(auth0.patch_authorizations)  # Management API tokens
            secrets |= _stored_secrets(stack.db_url)
        finally:
            code = stack.stop()
            auth0.stop()
            oidc.stop()
    yield Run(stack, code, secrets, profile_request_id, supervisor_pid)


def _calls(
    http: httpx.Client, pool_id: str, auth0: FakeIssuer, oidc: FakeIssuer, secrets: set[str]
) -> str:
    """The calls an app makes, and some refusals; every secret they use or
    receive goes into `secrets`. Returns the request id of a profile read."""

    def body(project: str, provider: str, data: dict[str, Any] | None = None, **top: Any) -> Any:
        strategy = "simplified" if provider == "anonymous" else "email"
        out = {"projectId": project, "strategy": strategy, "provider": provider, **top}
        return {**out, "data": data} if data is not None else out

    def session(reply: httpx.Response) -> dict[str, Any]:
        data: dict[str, Any] = _ok(reply)["data"]
        # Anonymous sessions have no access or refresh token.
        keys = ("accessToken", "refreshToken", "profileToken", "signature")
        secrets.update(str(data[k]) for k in keys if k in data)
        return data

    # anonymous: the device is the credential.
    device = str(uuid.uuid4())
    secrets.add(device)
    anon = session(http.put("/user/login", json=body(ANON, "anonymous", {"deviceId": device})))
    assert anon["signature"]

    # awsCognito, through moto: the whole password lifecycle.
    email = f"logs{uuid.uuid4().hex[:10]}@example.com"
    cognito = body(COGNITO, "awsCognito", {"email": email, "password": PASSWORD})
    _ok(http.post("/user", json=cognito))
    first = session(http.put("/v1/user/login", json=cognito))
    read = http.get(
        "/v1/user",
        params={"projectId": COGNITO, "strategy": "email", "provider": "awsCognito"},
        headers=_bearer(first["accessToken"]),
    )
    _ok(read)
    profile_request_id = read.headers["x-request-id"]
    refresh = body(
        COGNITO, "awsCognito", deviceId=first["deviceId"], refreshToken=first["refreshToken"]
    )
    session(http.post("/user/refresh", json=refresh, headers=_bearer(first["accessToken"])))
    wrong = body(COGNITO, "awsCognito", {"email": email, "password": WRONG_PASSWORD})
    # A client's own request id does not reach the logs: the edge names every call.
    chosen = {"x-request-id": "client-chosen-id"}
    reply = http.put("/user/login", json=wrong, headers=chosen)
    refused(reply, 401, "INVALID_CREDENTIALS")
    assert reply.headers["x-request-id"] != chosen["x-request-id"]
    _ok(http.put("/user/forgot-password", json=body(COGNITO, "awsCognito", {"email": email})))
    user = cognitoidp_backends[DEFAULT_ACCOUNT_ID][REGION].user_pools[pool_id]._get_user(email)
    code = str(user.confirmation_code)
    made_up = "moto-confirmation-code:" + str(uuid.uuid4().int)[:7]
    secrets.update({code, made_up})

    def confirm(with_code: str) -> httpx.Response:
        data = {"email": email, "confirmationCode": with_code, "password": NEW_PASSWORD}
        return http.post("/user/confirm-forgot-password", json=body(COGNITO, "awsCognito", data))

    refused(confirm(made_up), 400, "EXPIRED_CODE")
    _ok(confirm(code))
    changed = session(
        http.put(
            "/user/login",
            json=body(COGNITO, "awsCognito", {"email": email, "password": NEW_PASSWORD}),
        )
    )
    again = session(
        http.put(
            "/user/change-password",
            json=body(
                COGNITO, "awsCognito", {"password": PASSWORD, "previousPassword": NEW_PASSWORD}
            ),
            headers=_bearer(changed["accessToken"]),
        )
    )
    _ok(
        http.post(
            "/user/logout",
            json=body(COGNITO, "awsCognito", {"refreshToken": again["refreshToken"]}),
            headers=_bearer(again["accessToken"]),
        )
    )
    revoked = body(
        COGNITO, "awsCognito", deviceId=again["deviceId"], refreshToken=again["refreshToken"]
    )
    refused(
        http.post("/user/refresh", json=revoked, headers=_bearer(again["accessToken"])),
        401,
        "REFRESH_TOKEN_REVOKED",
    )

    # authZero: a profile read, a username written back through the
    # Management API, a forged and a malformed token.
    sub = f"auth0|{uuid.uuid4().hex}"
    auth0.add_auth0_user(sub)
    token = auth0.mint(sub=sub, aud=AUD)
    forged = auth0.mint_unsigned(sub=sub, aud=AUD)
    malformed = ".".join(uuid.uuid4().hex for _ in range(3))
    secrets.update({token, forged, malformed})
    auth0_query = {"projectId": AUTH0, "strategy": "email", "provider": "authZero"}
    _ok(http.get("/user", params=auth0_query, headers=_bearer(token)))
    _ok(
        http.put(
            "/user", json=body(AUTH0, "authZero", {"username": "logsUser"}), headers=_bearer(token)
        )
    )
    for bad in (forged, malformed):
        reply = http.get("/user", params=auth0_query, headers=_bearer(bad))
        assert reply.status_code == 401, reply.text

    # oidc: an ID token, found through discovery.
    id_token = oidc.mint(sub=str(uuid.uuid4()), aud=OIDC_CLIENT, nonce=uuid.uuid4().hex)
    secrets.add(id_token)
    oidc_query = {"projectId": OIDC, "strategy": "email", "provider": "oidc"}
    _ok(http.get("/v1/user", params=oidc_query, headers=_bearer(id_token)))
    return profile_request_id


def _kill_a_worker(stack: Stack, http: httpx.Client) -> int:
    """SIGKILL the server process: the supervisor logs its death and starts
    it again. Returns the supervisor's pid once a call is served again."""
    [pid] = stack.worker_pids().values()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "restarting it" not in stack.log_text():
        assert time.monotonic() < deadline, stack.log_text()
        time.sleep(0.1)
    login = {
        "projectId": ANON,
        "strategy": "simplified",
        "provider": "anonymous",
        "data": {"deviceId": str(uuid.uuid4())},
    }
    while http.put("/user/login", json=login).status_code != 200:
        assert time.monotonic() < deadline, stack.log_text()
        time.sleep(0.1)
    return stack.proc.pid


def _stored_secrets(db_url: str) -> set[str]:
    """The project signing secrets and our token signing keys (each line of
    the PEM body, so no part of a key goes unnoticed)."""

    def read(conn: sa.Connection) -> set[str]:
        out = {str(s) for s in conn.execute(sa.text("SELECT secret FROM projects")).scalars()}
        for pem in conn.execute(sa.text("SELECT private_pem FROM signing_keys")).scalars():
            out.update(line for line in str(pem).splitlines() if "-----" not in line)
        return out

    return in_store(db_url, read)


# ------------------------------------------------------------------- tests
def test_the_run_stops_cleanly(run: Run) -> None:
    assert run.exit_code == 0, run.stack.log_text()


def test_no_secret_reaches_the_log(run: Run) -> None:
    text = run.stack.log_text()
    # The run did use them: a sequence that went wrong early would pass.
    assert len(run.secrets) >= 25, run.secrets
    leaked = sorted(p for s in run.secrets for p in _pieces(s) if p in text)
    assert not leaked, f"in the log: {leaked}"


def test_every_line_but_the_banner_is_json_with_the_fields(run: Run) -> None:
    entries = run.entries()
    app_lines = [e for e in entries if "logger" in e]
    access = [e for e in entries if "logger" not in e]
    assert app_lines and access
    for entry in app_lines:
        assert LINE_FIELDS <= entry.keys(), entry
        assert RFC3339_MS_UTC.match(entry["time"]), entry
        assert entry["level"] in LEVELS, entry
        assert isinstance(entry["pid"], int) and isinstance(entry["message"], str), entry
        if "request_id" in entry:
            assert CALL_FIELDS <= entry.keys(), entry
    for entry in access:
        assert {"request_id", "status", "duration_ms", "grpc_method"} <= entry.keys(), entry


def test_access_lines_name_the_call_its_outcome_and_validated_project(run: Run) -> None:
    calls = [e for e in run.entries() if e.get("logger") == "identify.access"]
    assert calls
    for entry in calls:
        assert entry["status"] and isinstance(entry["duration_ms"], float), entry
        assert entry["rpc"].startswith("/identify.v1.Identify/"), entry
    seen = {(e["project"], e["provider"]) for e in calls}
    assert {(ANON, "anonymous"), (COGNITO, "awsCognito"), (AUTH0, "authZero")} <= seen
    assert (OIDC, "oidc") in seen
    [wrong] = [e for e in calls if e.get("reason") == "INVALID_CREDENTIALS"]
    assert wrong["status"] == "UNAUTHENTICATED" and wrong["level"] == "info", wrong
    assert "client-chosen-id" not in {e.get("request_id") for e in run.entries()}


def test_a_server_line_and_envoys_line_share_the_request_id(run: Run) -> None:
    rid = run.profile_request_id
    [server] = [
        e for e in run.entries() if e.get("logger") == "identify.access" and e["request_id"] == rid
    ]
    [envoy] = [e for e in run.entries() if "logger" not in e and e["request_id"] == rid]
    assert server["rpc"] == envoy["grpc_method"] == "/identify.v1.Identify/GetUser"
    assert server["status"] == "OK" and envoy["status"] == 200
    assert (server["project"], server["provider"]) == (COGNITO, "awsCognito")


def test_the_supervisor_and_every_server_process_write_json(run: Run) -> None:
    entries = run.entries()
    [death] = [e for e in entries if "restarting it" in e.get("message", "")]
    assert death["pid"] == run.supervisor_pid and death["level"] == "warning"
    assert death["logger"] == "server.supervisor", death
    servers = {e["pid"] for e in entries if e.get("logger") == "server.app"}
    assert len(servers) == 2, servers  # the killed process and the one after it


def test_envoys_own_lines_are_json_in_json_mode() -> None:
    """Envoy's application log says nothing at `up`'s warning level in a
    good run, so its JSON shape is checked on the argv `up` would start it
    with, at info level, validating the config."""
    supervisor = Supervisor(
        worker_argv=[["unused"]],
        http_port=8080,
        backends=[edge.Backend("127.0.0.1", 50051)],
        envoy_log_level="info",
        log_format="json",
    )
    try:
        done = subprocess.run(
            [*supervisor.envoy.argv, "--mode", "validate"],
            env={**os.environ, **supervisor.envoy.env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        supervisor.shutdown()
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert LINE_FIELDS <= entry.keys() and entry["logger"].startswith("envoy."), entry
        assert RFC3339_MS_UTC.match(entry["time"]), entry


def test_an_exception_is_one_json_field_and_so_is_a_crash() -> None:
    program = (
        "import logging\n"
        "from server import logs\n"
        "logs.setup('info', 'json')\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('identify.test').exception('caught it')\n"
        "raise RuntimeError('not caught')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    caught, crash = (json.loads(line) for line in done.stderr.splitlines())
    assert caught["message"] == "caught it" and "ZeroDivisionError" in caught["exc_info"]
    assert "Traceback" in caught["exc_info"] and "request_id" not in caught
    assert crash["level"] == "critical" and "RuntimeError: not caught" in crash["exc_info"]
