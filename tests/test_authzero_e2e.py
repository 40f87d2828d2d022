"""authZero and oidc through the real Envoy edge and server, against local
OIDC issuers: the three operations, the Management API write, every refusal
with its reason, key rotation, the refetch bound under a flood, outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from server.store.db import DatabaseUrl
from server.store.schema import identities, users
from tests.fakes.oidc_issuer import FakeIssuer, SigningKey
from tests.harness import Stack, error_reason, free_port, start_stack

AUD = "https://api.identify-e2e.test"

AUD_B = "https://api.other-app.test"
MGMT_ID = "mgmt-client"
MGMT_SECRET = "mgmt-secret-e2e"

AZ = str(uuid.uuid4())  # authZero on issuer A, with userinfo and Management API
AZ_SAME_ISSUER = str(uuid.uuid4())  # issuer A, another audience
AZ_OTHER_ISSUER = str(uuid.uuid4())  # issuer B
ROTATING = str(uuid.uuid4())  # issuer R, refetch allowed every second
FLOODED = str(uuid.uuid4())  # issuer F, default refetch bound
DOWN = str(uuid.uuid4())  # issuer D answers 503
UNREACHABLE = str(uuid.uuid4())  # nothing listens
OIDC = str(uuid.uuid4())  # generic oidc on issuer C, discovery, claim mapping
PREFIXES = ["/v1", ""]


@dataclass
class World:
    stack: Stack
    http: httpx.Client
    a: FakeIssuer
    b: FakeIssuer
    c: FakeIssuer
    r: FakeIssuer
    f: FakeIssuer
    d: FakeIssuer
    tokens: list[str] = field(default_factory=list)

    def token(self, issuer: FakeIssuer, sub: str | None = None, **kw: Any) -> str:
        kw.setdefault("aud", AUD)
        token = issuer.mint(sub=sub or f"auth0|{uuid.uuid4().hex}", **kw)
        self.tokens.append(token)
        return token

    def params(self, project: str, provider: str = "authZero", **extra: str) -> dict[str, str]:
        return {"projectId": project, "strategy": "email", "provider": provider, **extra}

    def get_user(
        self, token: str | None, project: str = AZ, provider: str = "authZero", prefix: str = ""
    ) -> httpx.Response:
        return self.http.get(
            f"{prefix}/user", params=self.params(project, provider), headers=_auth(token)
        )

    def check(
        self,
        token: str | None,
        device: str | None,
        project: str = AZ,
        provider: str = "authZero",
        prefix: str = "",
    ) -> httpx.Response:
        extra = {"deviceId": device} if device else {}
        return self.http.get(
            f"{prefix}/user/check",
            params=self.params(project, provider, **extra),
            headers=_auth(token),
        )

    def put_user(
        self,
        token: str | None,
        data: dict[str, Any],
        project: str = AZ,
        provider: str = "authZero",
        prefix: str = "",
    ) -> httpx.Response:
        body = {"projectId": project, "strategy": "email", "provider": provider, "data": data}
        return self.http.put(f"{prefix}/user", json=body, headers=_auth(token))


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def _verifier(issuer: FakeIssuer, **extra: Any) -> dict[str, Any]:
    return {"issuer": issuer.issuer, "jwksUri": issuer.jwks_url, "audience": AUD, **extra}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    a = FakeIssuer(management_clients={MGMT_ID: MGMT_SECRET})
    b, c, r, f, d = (FakeIssuer() for _ in range(5))
    d.mode = "error"
    closed = f"http://127.0.0.1:{free_port()}"
    projects = {
        AZ: {
            "authZero": _verifier(
                a,
                audience=[AUD, "https://second-audience.test"],
                userinfoUrl=a.base_url + "/userinfo",
                tokenUrl=a.base_url + "/oauth/token",
                managementApiUrl=a.base_url + "/api/v2",
                managementClientId=MGMT_ID,
                managementClientSecret="${AUTH0_E2E_MGMT_SECRET}",
            )
        },
        AZ_SAME_ISSUER: {"authZero": _verifier(a, audience=AUD_B)},
        AZ_OTHER_ISSUER: {"authZero": _verifier(b)},
        ROTATING: {"authZero": _verifier(r)},
        FLOODED: {"authZero": _verifier(f)},
        DOWN: {"authZero": _verifier(d)},
        UNREACHABLE: {
            "authZero": {"issuer": closed + "/", "jwksUri": closed + "/jwks", "audience": AUD}
        },
        OIDC: {
            "oidc": {
                "issuer": c.issuer,
                "audience": AUD,
                "claims": {"username": "upn", "email": "mail", "nickname": ["nick", "name"]},
            }
        },
    }
    config = {
        "projects": [
            {"id": pid, "name": f"p{i}", "providers": providers}
            for i, (pid, providers) in enumerate(projects.items())
        ]
    }
    stack = start_stack(
        tmp_path_factory.mktemp("authzero"),
        config,
        db_url=db_url,
        env={"AUTH0_E2E_MGMT_SECRET": MGMT_SECRET},
    )
    w = World(stack, stack.client(), a, b, c, r, f, d)
    try:
        yield w
    finally:
        w.http.close()
        code = stack.stop()
        logs = stack.log_text()
        for fake in (a, b, c, r, f, d):
            fake.stop()
        assert code == 0, logs
        leaked = [t for t in w.tokens if t in logs or t.split(".")[2] in logs]
        assert not leaked, "a token reached the logs"
        assert MGMT_SECRET not in logs


def stored_user(db_url: str, project: str, subject: str) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        engine = create_async_engine(DatabaseUrl.parse(db_url).driver_url)
        try:
            async with engine.connect() as conn:
                query = (
                    sa.select(users.c.username, identities.c.attributes)
                    .select_from(
                        identities.join(
                            users,
                            sa.and_(
                                users.c.project_id == identities.c.project_id,
                                users.c.user_id == identities.c.user_id,
                            ),
                        )
                    )
                    .where(identities.c.project_id == project, identities.c.subject == subject)
                )
                row = (await conn.execute(query)).one()
                return {"username": row.username, "attributes": row.attributes}
        finally:
            await engine.dispose()

    return asyncio.run(run())


# ---------------------------------------------------------------- operations
@pytest.mark.parametrize("prefix", PREFIXES)
def test_get_user_seeds_from_token_and_userinfo(world: World, prefix: str) -> None:
    sub = f"auth0|{uuid.uuid4().hex}"
    world.a.userinfo[sub] = {"nickname": "fromUserinfo", "email": "ui@example.test"}
    token = world.token(world.a, sub)
    reply = world.get_user(token, prefix=prefix)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    (identity,) = body["data"].pop("linkedIdentities")
    assert identity["provider"] == "authZero" and len(identity["externalId"]) == 64
    assert body == {
        "result": 1,
        "message": "OK",
        "data": {"username": "fromUserinfo", "appProfile": {}, "loginHistory": []},
    }
    stored = stored_user(world.stack.db_url, AZ, sub)
    assert stored["attributes"] == {"email": "ui@example.test", "nickname": "fromUserinfo"}
    # Seeding happens once: later calls read our store, not /userinfo.
    calls = world.a.userinfo_calls
    assert world.get_user(token, prefix=prefix).status_code == 200
    assert world.a.userinfo_calls == calls


def test_put_user_stores_profile_and_writes_username_to_auth0(world: World) -> None:
    sub = f"auth0|{uuid.uuid4().hex}"
    world.a.add_auth0_user(sub, username="before")
    token = world.token(world.a, sub, nickname="before")
    app_profile = {"data": "customUserObjectGoesHere", "level": 3, "tags": ["a", "b"]}
    reply = world.put_user(token, {"username": "testUserAuthZero", "appProfile": app_profile})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["result"] == 1 and body["message"] == "User is Correctly Created"
    data = body["data"]
    assert set(data) == {"externalId", "projectId", "accessToken", "appProfile"}
    assert data["projectId"] == AZ and len(data["externalId"]) == 64
    assert data["appProfile"] == app_profile
    # The accessToken is our profileToken, verifiable with our JWKS.
    jwks = world.http.get("/.well-known/jwks.json").json()
    kid = jwt.get_unverified_header(data["accessToken"])["kid"]
    assert any(k["kid"] == kid for k in jwks["keys"])
    assert world.a.auth0_users[sub]["username"] == "testUserAuthZero"

    got = world.get_user(token).json()["data"]
    assert got["username"] == "testUserAuthZero" and got["appProfile"] == app_profile

    # appProfile alone: no Management API call, the username stays.
    patches = len(world.a.patch_authorizations)
    reply = world.put_user(token, {"appProfile": {"data": "v2"}})
    assert reply.status_code == 200, reply.text
    assert len(world.a.patch_authorizations) == patches
    assert world.get_user(token).json()["data"]["username"] == "testUserAuthZero"


def test_management_token_is_cached_and_refreshed_once_on_401(world: World) -> None:
    subs = [f"auth0|{uuid.uuid4().hex}" for _ in range(3)]
    for s in subs:
        world.a.add_auth0_user(s)
    assert world.put_user(world.token(world.a, subs[0]), {"username": "u0"}).status_code == 200
    requests = world.a.token_requests
    assert world.put_user(world.token(world.a, subs[1]), {"username": "u1"}).status_code == 200
    assert world.a.token_requests == requests
    world.a.expire_management_tokens()
    reply = world.put_user(world.token(world.a, subs[2]), {"username": "u2"})
    assert reply.status_code == 200, reply.text
    assert world.a.token_requests == requests + 1
    assert world.a.auth0_users[subs[2]]["username"] == "u2"


def test_management_api_refusals_leave_our_store_unchanged(world: World) -> None:
    taken, mine = f"auth0|{uuid.uuid4().hex}", f"auth0|{uuid.uuid4().hex}"
    world.a.add_auth0_user(taken, username="takenName")
    world.a.add_auth0_user(mine, username="mine")
    token = world.token(world.a, mine, nickname="mine")
    reply = world.put_user(token, {"username": "takenName"})
    assert reply.status_code == 409, reply.text
    assert error_reason(reply.json()) == "USERNAME_TAKEN"
    assert world.get_user(token).json()["data"]["username"] == "mine"

    ghost = world.token(world.a, f"auth0|{uuid.uuid4().hex}")
    reply = world.put_user(ghost, {"username": "ghost"})
    assert reply.status_code == 404, reply.text
    assert error_reason(reply.json()) == "UPSTREAM_USER_NOT_FOUND"


@pytest.mark.parametrize(
    ("app_profile", "reason"),
    [
        ("not an object", "APP_PROFILE_NOT_OBJECT"),
        ([1, 2], "APP_PROFILE_NOT_OBJECT"),
        ({"blob": "x" * (16 * 1024)}, "APP_PROFILE_TOO_LARGE"),
    ],
)
def test_put_user_refuses_bad_app_profiles(world: World, app_profile: Any, reason: str) -> None:
    reply = world.put_user(world.token(world.a), {"appProfile": app_profile})
    assert reply.status_code == 400, reply.text
    assert error_reason(reply.json()) == reason


def test_put_user_needs_something_to_update(world: World) -> None:
    reply = world.put_user(world.token(world.a), {})
    assert reply.status_code == 400
    assert error_reason(reply.json()) == "NOTHING_TO_UPDATE"


@pytest.mark.parametrize("prefix", PREFIXES)
def test_check_records_device_and_login(world: World, prefix: str) -> None:
    token = world.token(world.a, nickname="checker")
    device = str(uuid.uuid4())
    first = world.check(token, device, prefix=prefix)
    assert first.status_code == 200, first.text
    data = first.json()["data"]
    assert set(data) == {"username", "appProfile", "loginHistory", "linkedIdentities"}
    assert data["username"] == "checker" and len(data["loginHistory"]) == 1
    assert isinstance(data["loginHistory"][0], int)
    again = world.check(token, device.upper(), prefix=prefix).json()["data"]
    assert len(again["loginHistory"]) == 2
    assert world.get_user(token).json()["data"]["loginHistory"] == again["loginHistory"]


@pytest.mark.parametrize(
    ("device", "reason"), [(None, "MISSING_DEVICE_ID"), ("nope", "INVALID_DEVICE_ID")]
)
def test_check_needs_a_device_uuid(world: World, device: str | None, reason: str) -> None:
    reply = world.check(world.token(world.a), device)
    assert reply.status_code == 400, reply.text
    assert error_reason(reply.json()) == reason


def test_same_subject_is_one_user_with_a_stable_external_id(world: World) -> None:
    sub = f"auth0|{uuid.uuid4().hex}"
    first = world.put_user(world.token(world.a, sub), {"appProfile": {"n": 1}}).json()["data"]
    second = world.put_user(world.token(world.a, sub), {"appProfile": {"n": 2}}).json()["data"]
    assert first["externalId"] == second["externalId"]


# ------------------------------------------------------------------ refusals
def _refusals(world: World) -> dict[str, tuple[str | None, str]]:
    a, now = world.a, int(time.time())
    return {
        "expired": (world.token(a, exp=now - 300), "TOKEN_EXPIRED"),
        "not yet valid": (world.token(a, nbf=now + 600), "TOKEN_NOT_YET_VALID"),
        "wrong audience": (world.token(a, aud=AUD_B), "WRONG_AUDIENCE"),
        "wrong issuer": (world.token(a, iss="https://impostor.test/"), "WRONG_ISSUER"),
        "alg none": (a.mint_unsigned(sub="auth0|x", aud=AUD), "ALGORITHM_NOT_ALLOWED"),
        "hs256 public key": (
            a.mint_hs256_with_public_key(sub="auth0|x", aud=AUD),
            "ALGORITHM_NOT_ALLOWED",
        ),
        "unknown kid": (
            world.token(a, key=SigningKey.generate(kid="nobody")),
            "UNKNOWN_SIGNING_KEY",
        ),
        "key of another issuer": (
            world.token(world.b, iss=a.issuer),
            "UNKNOWN_SIGNING_KEY",
        ),
        "malformed": ("this.is.not-a-jwt", "MALFORMED_TOKEN"),
        "missing subject": (world.token(a, sub=" "), "MISSING_SUBJECT"),
        "machine token": (world.token(a, gty="client-credentials"), "NOT_A_USER_TOKEN"),
        "missing bearer": (None, "MISSING_BEARER_TOKEN"),
    }


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("operation", ["get", "check", "put"])
def test_each_refusal_is_a_401_with_its_reason(world: World, prefix: str, operation: str) -> None:
    for case, (token, reason) in _refusals(world).items():
        if operation == "get":
            reply = world.get_user(token, prefix=prefix)
        elif operation == "check":
            reply = world.check(token, str(uuid.uuid4()), prefix=prefix)
        else:
            reply = world.put_user(token, {"username": "x"}, prefix=prefix)
        assert reply.status_code == 401, (case, reply.text)
        body = reply.json()
        assert body["code"] == 16, case
        assert error_reason(body) == reason, case


def test_token_of_project_a_is_refused_by_project_b(world: World) -> None:
    token = world.token(world.a)
    assert world.get_user(token).status_code == 200
    same_issuer = world.get_user(token, project=AZ_SAME_ISSUER)
    assert same_issuer.status_code == 401
    assert error_reason(same_issuer.json()) == "WRONG_AUDIENCE"
    other_issuer = world.get_user(token, project=AZ_OTHER_ISSUER)
    assert other_issuer.status_code == 401
    assert error_reason(other_issuer.json()) == "UNKNOWN_SIGNING_KEY"


# ------------------------------------------------------------ keys and outages
def test_a_freshly_published_key_is_accepted_at_once(world: World) -> None:
    assert world.get_user(world.token(world.r), project=ROTATING).status_code == 200
    fetches = world.r.jwks_fetches
    # The issuer rotates right after our fetch and signs with the new key at
    # once: the first such token is accepted (default 30 s refetch interval).
    new = world.r.rotate(keep_old=False)
    reply = world.get_user(world.token(world.r, key=new), project=ROTATING)
    assert reply.status_code == 200, reply.text
    assert world.r.jwks_fetches == fetches + 1


def test_refetch_bound_holds_under_a_flood_of_unknown_kids(world: World) -> None:
    forged = [world.token(world.f, key=SigningKey.generate(kid=f"forged-{i}")) for i in range(8)]

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=world.stack.http, timeout=20) as client:
            return await asyncio.gather(
                *(
                    client.get(
                        "/user",
                        params=world.params(FLOODED),
                        headers=_auth(forged[i % len(forged)]),
                    )
                    for i in range(120)
                )
            )

    replies = asyncio.run(flood())
    assert {r.status_code for r in replies} == {401}
    assert {error_reason(r.json()) for r in replies} == {"UNKNOWN_SIGNING_KEY"}
    # Concurrent callers share a fetch, and the refetch budget (3 at once,
    # then one per 30 s) bounds the rest however many kids are forged.
    fetches = world.f.jwks_fetches
    assert 1 <= fetches <= 3
    assert world.get_user(world.token(world.f), project=FLOODED).status_code == 200
    assert world.f.jwks_fetches == fetches


@pytest.mark.parametrize("project", [DOWN, UNREACHABLE], ids=["down", "unreachable"])
def test_issuer_down_is_503_with_retry_info(world: World, project: str) -> None:
    issuer = world.d if project == DOWN else world.a
    reply = world.get_user(world.token(issuer), project=project)
    assert reply.status_code == 503, reply.text
    body = reply.json()
    assert error_reason(body) == "UPSTREAM_UNAVAILABLE"
    assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in body["details"])


# ---------------------------------------------------------------------- oidc
@pytest.mark.parametrize("prefix", PREFIXES)
def test_oidc_maps_configured_claims(world: World, prefix: str) -> None:
    sub = f"okta-{uuid.uuid4().hex}"
    token = world.token(world.c, sub, upn="jdoe@corp.test", mail="jdoe@mail.test", name="Jane Doe")
    reply = world.get_user(token, project=OIDC, provider="oidc", prefix=prefix)
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"]["username"] == "jdoe@corp.test"
    stored = stored_user(world.stack.db_url, OIDC, sub)
    assert stored["attributes"] == {"email": "jdoe@mail.test", "nickname": "Jane Doe"}

    device = str(uuid.uuid4())
    checked = world.check(token, device, project=OIDC, provider="oidc", prefix=prefix)
    assert checked.status_code == 200 and len(checked.json()["data"]["loginHistory"]) == 1
    put = world.put_user(token, {"appProfile": {"k": "v"}}, project=OIDC, provider="oidc")
    assert put.status_code == 200 and put.json()["data"]["appProfile"] == {"k": "v"}
    # The oidc issuer was found through discovery.
    assert world.c.discovery_fetches == 1


def test_oidc_refuses_authzero_tokens(world: World) -> None:
    reply = world.get_user(world.token(world.a), project=OIDC, provider="oidc")
    assert reply.status_code == 401
    assert error_reason(reply.json()) == "UNKNOWN_SIGNING_KEY"
