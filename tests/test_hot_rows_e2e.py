"""Hot users' rows (server/store/hot.py) across server processes, through the
edge: a revocation or an update made through one process is honoured by every
other within the stated bound (IDENTIFY_HOT_CACHE_SECONDS), awsCognito's
logout too (whose same-second token is refused by its hash, an answer a
profile read keeps within that bound)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from server.store.schema import users
from tests.fakes.oidc_issuer import FakeIssuer
from tests.harness import (
    Stack,
    cognito_settings,
    create_admin_key,
    error_reason,
    in_store,
    moto_cognito,
    start_stack,
)

AUD = "https://api.hot-rows.test"
PROJECT = str(uuid.uuid4())
# An entry lives between (1 - SPREAD) x BOUND (3 s, time enough for the reads
# that must be served from it) and BOUND.
BOUND = 4.0
READS = 20


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    fake = FakeIssuer()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, db_url: str, issuer: FakeIssuer
) -> Iterator[Stack]:
    verifier = {"issuer": issuer.issuer, "jwksUri": issuer.jwks_url, "audience": AUD}
    config = {"projects": [{"id": PROJECT, "name": "hot", "providers": {"authZero": verifier}}]}
    if db_url.startswith("postgresql"):
        # As behind PgBouncer: nothing prepared, on both pools.
        db_url += "?pgbouncer=true"
    s = start_stack(
        tmp_path_factory.mktemp("hot"),
        config,
        db_url=db_url,
        workers=2,
        env={"IDENTIFY_HOT_CACHE_SECONDS": str(BOUND)},
    )
    yield s
    assert s.stop() == 0, s.log_text()


def reads(
    http: httpx.Client, token: str, project: str = PROJECT, provider: str = "authZero"
) -> list[httpx.Response]:
    # New connections, so Envoy spreads them over both processes.
    out = []
    for _ in range(READS):
        with httpx.Client(base_url=str(http.base_url), timeout=10) as fresh:
            out.append(
                fresh.get(
                    "/v1/user",
                    params={"projectId": project, "provider": provider},
                    headers={"Authorization": f"Bearer {token}"},
                )
            )
    return out


def test_a_revocation_through_one_process_binds_every_other_within_the_bound(
    stack: Stack, issuer: FakeIssuer
) -> None:
    token = issuer.mint(sub=f"auth0|{uuid.uuid4().hex}", aud=AUD)
    with stack.client() as http:
        # Every process reads (and keeps) the user.
        assert {r.status_code for r in reads(http, token)} == {200}
        user_id = None
        with stack.admin_client(create_admin_key(stack.db_url)) as admin:
            listed = admin.get(f"/admin/v1/projects/{PROJECT}/users").json()["users"]
            (user_id,) = [u["userId"] for u in listed]
            # A token of the same second as the revocation stays valid (the
            # rule of every logout); one issued before is refused.
            time.sleep(1.1)
            revoked = admin.post(f"/admin/v1/projects/{PROJECT}/users/{user_id}:revokeSessions")
            assert revoked.status_code == 200, revoked.text
        time.sleep(BOUND + 0.2)
        after = reads(http, token)
        assert {r.status_code for r in after} == {401}
        assert {error_reason(r.json()) for r in after} == {"TOKEN_REVOKED"}


def test_an_update_through_one_process_is_read_by_every_other_within_the_bound(
    stack: Stack, issuer: FakeIssuer
) -> None:
    token = issuer.mint(sub=f"auth0|{uuid.uuid4().hex}", aud=AUD)
    with stack.client() as http:
        assert {r.status_code for r in reads(http, token)} == {200}
        body = {"projectId": PROJECT, "provider": "authZero", "data": {"appProfile": {"v": 2}}}
        put = http.put("/v1/user", json=body, headers={"Authorization": f"Bearer {token}"})
        assert put.status_code == 200, put.text
        time.sleep(BOUND + 0.2)
        seen = {str(r.json()["data"]["appProfile"]) for r in reads(http, token)}
        assert seen == {"{'v': 2}"}


def test_within_the_bound_reads_cost_no_database_read(stack: Stack, issuer: FakeIssuer) -> None:
    token = issuer.mint(sub=f"auth0|{uuid.uuid4().hex}", aud=AUD)
    with stack.client() as http:
        first = reads(http, token)
        assert {r.status_code for r in first} == {200}
        # Changed behind Identify's back: only a database read would see it.
        in_store(
            stack.db_url.split("?")[0],
            lambda conn: conn.execute(
                sa.update(users)
                .where(users.c.project_id == PROJECT)
                .values(app_profile={"behind": True})
            ),
            write=True,
        )
        kept = reads(http, token)
        assert {str(r.json()["data"]["appProfile"]) for r in kept} == {"{}"}
        time.sleep(BOUND + 0.2)
        fresh = reads(http, token)
        assert {str(r.json()["data"]["appProfile"]) for r in fresh} == {"{'behind': True}"}


COGNITO_PROJECT = str(uuid.uuid4())
REGION = "us-east-1"


@pytest.fixture(scope="module")
def cognito_stack(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    with moto_cognito(REGION) as (url, client):
        settings = cognito_settings(client, url, REGION, "hot-rows")
        config = {
            "projects": [
                {"id": COGNITO_PROJECT, "name": "hot", "providers": {"awsCognito": settings}}
            ]
        }
        s = start_stack(
            tmp_path_factory.mktemp("hot-cognito"),
            config,
            db_url=db_url,
            workers=2,
            env={
                "IDENTIFY_HOT_CACHE_SECONDS": str(BOUND),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
            },
        )
        yield s
        assert s.stop() == 0, s.log_text()


def test_a_cognito_logout_through_one_process_binds_every_other_within_the_bound(
    cognito_stack: Stack,
) -> None:
    email = f"u{uuid.uuid4().hex[:12]}@example.com"
    body = {"projectId": COGNITO_PROJECT, "strategy": "email", "provider": "awsCognito"}
    credentials = {"email": email, "password": "Passw0rd!hot"}
    with cognito_stack.client() as http:
        made = http.post("/v1/user", json={**body, "data": credentials})
        assert made.status_code == 200, made.text
        # At a second's start, so the token, the reads and the logout share a
        # second: the logout's valid_after then does not refuse the token,
        # only its hash does.
        time.sleep(1 - time.time() % 1)
        login = http.put("/v1/user/login", json={**body, "data": credentials})
        assert login.status_code == 200, login.text
        token = login.json()["data"]["accessToken"]
        # Every process reads the user and keeps "this token is not logged out".
        assert {r.status_code for r in reads(http, token, COGNITO_PROJECT, "awsCognito")} == {200}
        logout = http.post(
            "/v1/user/logout", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert logout.status_code == 200, logout.text
        time.sleep(BOUND + 0.2)
        after = reads(http, token, COGNITO_PROJECT, "awsCognito")
        assert {r.status_code for r in after} == {401}
        assert {error_reason(r.json()) for r in after} == {"TOKEN_REVOKED"}
