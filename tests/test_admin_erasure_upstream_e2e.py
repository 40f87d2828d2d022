"""The admin API's erasure with deleteUpstream, through the real edge: the
Cognito account (moto) or the Auth0 account (the Management API stand-in) is
deleted first, and our rows only once it is gone; a failure upstream erases
nothing of ours and says why; providers with nothing to delete upstream
refuse; without deleteUpstream nothing upstream is touched."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError

from tests.fakes.oidc_issuer import FakeIssuer
from tests.harness import (
    Stack,
    create_admin_key,
    in_store,
    moto_cognito,
    refused,
    start_stack,
)

REGION = "us-east-1"
PASSWORD = "Passw0rd!one"
AUD = "https://api.erasure-e2e.test"
MGMT_ID = "mgmt-client"
MGMT_SECRET = "mgmt-secret-erasure"
P = str(uuid.uuid4())  # anonymous, awsCognito (pool A), authZero with Management API
Q = str(uuid.uuid4())  # awsCognito on pool D (deleted by a test), authZero without one
TABLES = ("users", "devices", "logins")


@dataclass(frozen=True)
class World:
    stack: Stack
    public: httpx.Client
    admin: httpx.Client
    cognito: Any  # boto3 cognito-idp client on moto
    pool_a: str
    pool_d: str
    auth0: FakeIssuer

    # ------------------------------------------------------------ users
    def cognito_user(self, project: str = P) -> tuple[str, str]:
        """(userId, email) of a Cognito user who signed up and signed in."""
        email = f"u{uuid.uuid4().hex[:12]}@example.com"
        body = {"projectId": project, "provider": "awsCognito", "strategy": "email"}
        data = {"email": email, "password": PASSWORD}
        made = self.public.post("/v1/user", json={**body, "data": data})
        assert made.status_code == 200, made.text
        data["deviceId"] = str(uuid.uuid4())
        signed_in = self.public.put("/v1/user/login", json={**body, "data": data})
        assert signed_in.status_code == 200, signed_in.text
        return str(made.json()["data"]["userId"]), email

    def auth0_user(self, project: str = P) -> tuple[str, str]:
        """(userId, Auth0 user id) of an Auth0 user known upstream and here."""
        sub = f"auth0|{uuid.uuid4().hex}"
        self.auth0.add_auth0_user(sub, email=f"{sub[6:18]}@example.com")
        token = self.auth0.mint(sub=sub, aud=AUD)
        checked = self.public.get(
            "/v1/user/check",
            params={
                "projectId": project,
                "provider": "authZero",
                "strategy": "email",
                "deviceId": str(uuid.uuid4()),
            },
            headers={"authorization": f"Bearer {token}"},
        )
        assert checked.status_code == 200, checked.text
        return self.lookup(project, "authZero", sub), sub

    def anonymous_user(self) -> str:
        body = {"projectId": P, "provider": "anonymous", "data": {"deviceId": str(uuid.uuid4())}}
        reply = self.public.put("/v1/user/login", json=body)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["data"]["userId"])

    def lookup(self, project: str, provider: str, subject: str) -> str:
        found = self.admin.get(
            f"/admin/v1/projects/{project}/users:lookup",
            params={"provider": provider, "subject": subject},
        )
        assert found.status_code == 200, found.text
        return str(found.json()["userId"])

    # ---------------------------------------------------------- erasure
    def erase(self, project: str, user: str, *, upstream: bool) -> httpx.Response:
        params = {"deleteUpstream": True} if upstream else {}
        return self.admin.delete(f"/admin/v1/projects/{project}/users/{user}", params=params)

    def rows(self, user: str) -> dict[str, int]:
        """How many rows each table holds for `user`."""

        def count(conn: sa.Connection) -> dict[str, int]:
            return {
                t: int(
                    conn.execute(
                        sa.text(f"SELECT count(*) FROM {t} WHERE user_id = :u"), {"u": user}
                    ).scalar_one()
                )
                for t in TABLES
            }

        return in_store(self.stack.db_url, count)

    def in_pool(self, pool: str, email: str) -> bool:
        try:
            self.cognito.admin_get_user(UserPoolId=pool, Username=email)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "UserNotFoundException"
            return False
        return True

    def erasures(self, project: str) -> dict[bool, int]:
        """How many `user.deleted` events the project's trail holds, by
        their upstreamDeleted."""
        listed = self.admin.get(
            f"/admin/v1/projects/{project}/auditEvents",
            params={"filter": 'type = "user.deleted"', "pageSize": 1000},
        )
        assert listed.status_code == 200, listed.text
        events = listed.json().get("auditEvents", [])
        for event in events:
            assert event["userId"].startswith("erased:") and not event.get("clientIp"), event
        flags = [e["data"]["upstreamDeleted"] for e in events]
        return {True: flags.count(True), False: flags.count(False)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    auth0 = FakeIssuer(management_clients={MGMT_ID: MGMT_SECRET})
    verifier = {"issuer": auth0.issuer, "jwksUri": auth0.jwks_url, "audience": AUD}
    with moto_cognito(REGION) as (url, client):
        flows = ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]

        def pool(name: str) -> tuple[str, str]:
            made = client.create_user_pool(PoolName=name, UsernameAttributes=["email"])
            pool_id = made["UserPool"]["Id"]
            app = client.create_user_pool_client(
                UserPoolId=pool_id, ClientName="app", ExplicitAuthFlows=flows
            )
            return pool_id, app["UserPoolClient"]["ClientId"]

        def cognito(pool_id: str, client_id: str) -> dict[str, Any]:
            return {
                "region": REGION,
                "userPoolId": pool_id,
                "clientId": client_id,
                "endpointUrl": url,
                "autoConfirm": True,
            }

        (pool_a, client_a), (pool_d, client_d) = pool("a"), pool("d")
        config = {
            "projects": [
                {
                    "id": P,
                    "name": "p",
                    "providers": {
                        "anonymous": {},
                        "awsCognito": cognito(pool_a, client_a),
                        "authZero": {
                            **verifier,
                            "tokenUrl": auth0.base_url + "/oauth/token",
                            "managementApiUrl": auth0.base_url + "/api/v2",
                            "managementClientId": MGMT_ID,
                            "managementClientSecret": "${ERASURE_E2E_MGMT_SECRET}",
                        },
                    },
                },
                {
                    "id": Q,
                    "name": "q",
                    "providers": {"awsCognito": cognito(pool_d, client_d), "authZero": verifier},
                },
            ]
        }
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "ERASURE_E2E_MGMT_SECRET": MGMT_SECRET,
        }
        stack = start_stack(tmp_path_factory.mktemp("erasure"), config, env=env, db_url=db_url)
        public = stack.client()
        admin = stack.admin_client(create_admin_key(db_url))
        try:
            yield World(stack, public, admin, client, pool_a, pool_d, auth0)
        finally:
            public.close()
            admin.close()
            code = stack.stop()
            logs = stack.log_text()
            auth0.stop()
            assert code == 0, logs
            assert MGMT_SECRET not in logs


# ----------------------------------------------------------------- Cognito
def test_cognito_account_is_deleted_upstream_then_ours(world: World) -> None:
    user, email = world.cognito_user()
    assert world.rows(user) == {"users": 1, "devices": 1, "logins": 1}
    assert world.in_pool(world.pool_a, email)
    erasures = world.erasures(P)
    reply = world.erase(P, user, upstream=True)
    assert reply.status_code == 200, reply.text
    assert not world.in_pool(world.pool_a, email)
    assert world.rows(user) == dict.fromkeys(TABLES, 0)
    assert world.erasures(P) == {True: erasures[True] + 1, False: erasures[False]}


def test_a_cognito_account_already_gone_upstream_counts_as_deleted(world: World) -> None:
    user, email = world.cognito_user()
    world.cognito.admin_delete_user(UserPoolId=world.pool_a, Username=email)
    reply = world.erase(P, user, upstream=True)
    assert reply.status_code == 200, reply.text
    assert world.rows(user) == dict.fromkeys(TABLES, 0)


def test_a_cognito_failure_upstream_erases_nothing_of_ours(world: World) -> None:
    user, email = world.cognito_user(Q)
    before = world.rows(user)
    world.cognito.delete_user_pool(UserPoolId=world.pool_d)
    body = refused(world.erase(Q, user, upstream=True), 400, "PROVIDER_MISCONFIGURED")
    assert email not in str(body)
    assert world.rows(user) == before == {"users": 1, "devices": 1, "logins": 1}
    # Without deleteUpstream the erasure needs nothing from the pool.
    assert world.erase(Q, user, upstream=False).status_code == 200
    assert world.rows(user) == dict.fromkeys(TABLES, 0)


# ------------------------------------------------------------------- Auth0
def test_auth0_account_is_deleted_upstream_then_ours(world: World) -> None:
    user, sub = world.auth0_user()
    assert world.rows(user) == {"users": 1, "devices": 1, "logins": 1}
    reply = world.erase(P, user, upstream=True)
    assert reply.status_code == 200, reply.text
    assert sub not in world.auth0.auth0_users and world.auth0.delete_requests[-1] == sub
    assert world.rows(user) == dict.fromkeys(TABLES, 0)


def test_an_auth0_outage_erases_nothing_of_ours(world: World) -> None:
    user, sub = world.auth0_user()
    before, erasures = world.rows(user), world.erasures(P)
    world.auth0.delete_failure = 500
    try:
        refused(world.erase(P, user, upstream=True), 503, "UPSTREAM_ERROR")
    finally:
        world.auth0.delete_failure = None
    assert world.rows(user) == before and sub in world.auth0.auth0_users
    assert world.erasures(P) == erasures


def test_a_management_token_without_delete_users_is_a_clear_refusal(world: World) -> None:
    user, sub = world.auth0_user()
    before = world.rows(user)
    # Upstream drops our token and grants the next one update:users only.
    world.auth0.management_scopes = ("update:users",)
    world.auth0.expire_management_tokens()
    try:
        body = refused(world.erase(P, user, upstream=True), 400, "PROVIDER_MISCONFIGURED")
    finally:
        world.auth0.management_scopes = ("update:users", "delete:users")
        world.auth0.expire_management_tokens()
    assert "delete:users" in body["message"]
    assert world.rows(user) == before and sub in world.auth0.auth0_users
    # With the scope back (a fresh token after one 401), the erasure completes.
    assert world.erase(P, user, upstream=True).status_code == 200
    assert world.rows(user) == dict.fromkeys(TABLES, 0)


def test_auth0_without_management_credentials_cannot_delete_upstream(world: World) -> None:
    user, _sub = world.auth0_user(Q)
    before = world.rows(user)
    calls = len(world.auth0.delete_requests)
    body = refused(world.erase(Q, user, upstream=True), 400, "UPSTREAM_DELETE_NOT_SUPPORTED")
    assert "Management API credentials" in body["message"]
    assert world.rows(user) == before and len(world.auth0.delete_requests) == calls


# ----------------------------------------------------- the other providers
def test_an_anonymous_user_cannot_be_deleted_upstream(world: World) -> None:
    user = world.anonymous_user()
    before = world.rows(user)
    refused(world.erase(P, user, upstream=True), 400, "UPSTREAM_DELETE_NOT_SUPPORTED")
    assert world.rows(user) == before


def test_without_delete_upstream_nothing_upstream_is_touched(world: World) -> None:
    (cognito_user, email), (auth0_user, sub) = world.cognito_user(), world.auth0_user()
    calls, erasures = len(world.auth0.delete_requests), world.erasures(P)
    for user in (cognito_user, auth0_user):
        assert world.erase(P, user, upstream=False).status_code == 200
        assert world.rows(user) == dict.fromkeys(TABLES, 0)
    assert world.in_pool(world.pool_a, email)
    assert sub in world.auth0.auth0_users and len(world.auth0.delete_requests) == calls
    assert world.erasures(P) == {True: erasures[True], False: erasures[False] + 2}
