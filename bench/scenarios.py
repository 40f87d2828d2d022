"""The scenarios and the data they need: one project with anonymous, noLogin,
authZero (against a local issuer) and awsCognito (against moto's Cognito
server), users made before the load so every measured call reads or writes
existing rows, and a request set per scenario that wrk sends round-robin.
The peer (bench/peer) gets its own users, through its own routes."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench import seed
from bench.load import HttpRequest
from server import tokens
from tests.fakes.oidc_issuer import FakeIssuer
from tests.harness import cognito_pool, moto_cognito

PROJECT = "0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f"
AUDIENCE = "https://api.identify-bench.test"
# Enough distinct rows that concurrent calls rarely touch the same one, few
# enough that the set is made in a second or two.
USERS = 64
DEVICES = 256
# Each is registered in moto once and signed in through every stack: moto
# answers slowly, and 32 spread the load well enough.
COGNITO_USERS = 32
COGNITO_REGION = "us-east-1"
COGNITO_PASSWORD = "Passw0rd!bench"
JSON_HEADERS = {"content-type": "application/json"}
PEER_PASSWORD = "peer-Passw0rd!"
# The peer hashes passwords with argon2 on register and login (~0.1 s of CPU
# each): 16 users keep its set-up short; GET /users/me costs the same for any.
PEER_USERS = 16


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    requests: list[HttpRequest]
    # Raises if a reply is not what the scenario is meant to measure, so a
    # misconfigured run cannot pass as fast errors.
    check: Callable[[httpx.Response], None]


class Cognito:
    """moto's Cognito server on a free port, a pool, and COGNITO_USERS users
    made (confirmed, with a permanent password) straight in moto."""

    def __init__(self) -> None:
        self._ctx = moto_cognito(COGNITO_REGION)
        self.url, self.client = self._ctx.__enter__()
        self.pool_id, self.client_id = cognito_pool(self.client, "bench")
        self.emails = [f"bench{i}-{uuid.uuid4().hex[:8]}@example.com" for i in range(COGNITO_USERS)]
        for email in self.emails:
            self.client.admin_create_user(
                UserPoolId=self.pool_id,
                Username=email,
                UserAttributes=[{"Name": "email", "Value": email}],
                MessageAction="SUPPRESS",
            )
            self.client.admin_set_user_password(
                UserPoolId=self.pool_id, Username=email, Password=COGNITO_PASSWORD, Permanent=True
            )

    def settings(self) -> dict[str, Any]:
        return {
            "region": COGNITO_REGION,
            "userPoolId": self.pool_id,
            "clientId": self.client_id,
            "endpointUrl": self.url,
        }

    def stop(self) -> None:
        self._ctx.__exit__(None, None, None)


def config(issuer: FakeIssuer, cognito: Cognito | None = None) -> dict[str, Any]:
    providers: dict[str, Any] = {
        "anonymous": {},
        "noLogin": {},
        "authZero": {
            "issuer": issuer.issuer,
            "jwksUri": issuer.jwks_url,
            "audience": AUDIENCE,
        },
    }
    if cognito is not None:
        providers["awsCognito"] = cognito.settings()
    return {"projects": [{"id": PROJECT, "name": "bench", "providers": providers}]}


def _query(path: str, **params: str) -> str:
    return path + "?" + urllib.parse.urlencode(params)


def _envelope_ok(reply: httpx.Response) -> None:
    if reply.status_code != 200:
        raise RuntimeError(f"expected 200, got {reply.status_code}: {reply.text[:500]}")
    if reply.json().get("result") != 1:
        raise RuntimeError(f"expected result 1: {reply.text[:500]}")


def _status_ok(reply: httpx.Response) -> None:
    if reply.status_code != 200:
        raise RuntimeError(f"expected 200, got {reply.status_code}: {reply.text[:500]}")


class World:
    """Tokens and devices are made once per run; noLogin users per stack,
    since every stack starts on an empty database."""

    def __init__(self, issuer: FakeIssuer, cognito: Cognito | None = None) -> None:
        self.issuer = issuer
        self.cognito = cognito
        self.devices = [str(uuid.uuid4()) for _ in range(DEVICES)]
        self.subjects = [f"auth0|bench{uuid.uuid4().hex[:16]}" for _ in range(USERS)]
        # Valid for an hour: longer than any run.
        self.tokens = [issuer.mint(sub=s, aud=AUDIENCE) for s in self.subjects]
        self.check_devices = [str(uuid.uuid4()) for _ in self.subjects]

    def _profile_requests(self, tokens: list[str] | None = None) -> list[HttpRequest]:
        path = _query("/v1/user", projectId=PROJECT, strategy="email", provider="authZero")
        return [
            HttpRequest("GET", path, {"authorization": f"Bearer {t}"})
            for t in (tokens or self.tokens)
        ]

    def profile_read(self, tokens: list[str] | None = None) -> Scenario:
        return Scenario(
            "profile_read",
            "authZero profile read, bearer JWT (GET /v1/user)",
            self._profile_requests(tokens),
            _envelope_ok,
        )

    def nologin_get(self, external_ids: list[str]) -> Scenario:
        return Scenario(
            "nologin_get",
            "noLogin get (GET /v1/user?externalId=)",
            [
                HttpRequest(
                    "GET",
                    _query(
                        "/v1/user",
                        projectId=PROJECT,
                        strategy="simplified",
                        provider="noLogin",
                        externalId=e,
                    ),
                )
                for e in external_ids
            ],
            _envelope_ok,
        )

    def cognito_profile_read(self, base_url: str) -> Scenario | None:
        """Every Cognito user signed in through this stack first (so its
        database holds them), then the profile read with their access tokens."""
        if self.cognito is None:
            return None
        access = []
        with httpx.Client(base_url=base_url, timeout=30) as http:
            for email in self.cognito.emails:
                reply = http.put(
                    "/v1/user/login",
                    json={
                        "projectId": PROJECT,
                        "strategy": "email",
                        "provider": "awsCognito",
                        "data": {"email": email, "password": COGNITO_PASSWORD},
                    },
                )
                _envelope_ok(reply)
                access.append(reply.json()["data"]["accessToken"])
        path = _query("/v1/user", projectId=PROJECT, strategy="email", provider="awsCognito")
        return Scenario(
            "cognito_profile_read",
            "awsCognito profile read, bearer access token (GET /v1/user)",
            [HttpRequest("GET", path, {"authorization": f"Bearer {t}"}) for t in access],
            _envelope_ok,
        )

    def seeded_reads(self, base_url: str, seeded: seed.Seeded) -> list[Scenario]:
        """The read scenarios against a seeded database: its first USERS
        noLogin and authZero users (the heavy user among them), and the
        Cognito users signed in through this stack."""
        external_ids = [
            tokens.external_id(seeded.secret, "noLogin", seed.nologin_subject(n))
            for n in range(USERS)
        ]
        minted = [
            self.issuer.mint(sub=seed.authzero_subject(n), aud=AUDIENCE) for n in range(USERS)
        ]
        out = [self.nologin_get(external_ids), self.profile_read(minted)]
        cognito = self.cognito_profile_read(base_url)
        return out + ([cognito] if cognito else [])

    def ceiling(self) -> Scenario:
        # The same path, query and headers as the profile read, so Envoy
        # does the same transcoding work for both.
        return Scenario(
            "ceiling",
            "lean ceiling: empty GetUser handler, transcoder only (GET /v1/user)",
            self._profile_requests(),
            _status_ok,
        )

    def edge_ceiling(self) -> Scenario:
        return Scenario(
            "edge_ceiling",
            "empty GetUser handler behind the service's Envoy config",
            self._profile_requests(),
            _status_ok,
        )

    def scenarios(self, base_url: str) -> list[Scenario]:
        external_ids = self._make_nologin_users(base_url)
        login = [
            HttpRequest(
                "PUT",
                "/v1/user/login",
                JSON_HEADERS,
                json.dumps(
                    {
                        "projectId": PROJECT,
                        "strategy": "simplified",
                        "provider": "anonymous",
                        "data": {"deviceId": d},
                    }
                ),
            )
            for d in self.devices
        ]
        check = [
            HttpRequest(
                "GET",
                _query(
                    "/v1/user/check",
                    projectId=PROJECT,
                    strategy="email",
                    provider="authZero",
                    deviceId=d,
                ),
                {"authorization": f"Bearer {t}"},
            )
            for t, d in zip(self.tokens, self.check_devices, strict=True)
        ]
        out = [
            Scenario(
                "anonymous_login", "anonymous login (PUT /v1/user/login)", login, _envelope_ok
            ),
            self.nologin_get(external_ids),
            self.profile_read(),
            Scenario(
                "check_token",
                "authZero check by token (GET /v1/user/check?deviceId=)",
                check,
                _envelope_ok,
            ),
        ]
        cognito = self.cognito_profile_read(base_url)
        return out + ([cognito] if cognito else [])

    def _make_nologin_users(self, base_url: str) -> list[str]:
        body = {"projectId": PROJECT, "strategy": "simplified", "provider": "noLogin"}
        ids = []
        with httpx.Client(base_url=base_url, timeout=10) as http:
            for i in range(USERS):
                profile = {"appProfile": {"theme": "dark", "level": i, "tags": ["a", "b"]}}
                reply = http.post("/v1/user", json={**body, "data": profile})
                _envelope_ok(reply)
                ids.append(reply.json()["externalId"])
        return ids


def peer_profile_read(base_url: str) -> Scenario:
    """The peer's users, registered and signed in through its own routes
    (`/auth/register`, `/auth/jwt/login`), then `GET /users/me`."""
    access = []
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for i in range(PEER_USERS):
            email = f"peer{i}-{uuid.uuid4().hex[:8]}@example.com"
            reply = http.post("/auth/register", json={"email": email, "password": PEER_PASSWORD})
            if reply.status_code != 201:
                raise RuntimeError(f"peer register: {reply.status_code} {reply.text[:300]}")
            reply = http.post(
                "/auth/jwt/login", data={"username": email, "password": PEER_PASSWORD}
            )
            _status_ok(reply)
            access.append(reply.json()["access_token"])
    return Scenario(
        "peer_profile_read",
        "peer: fastapi-users GET /users/me, bearer JWT",
        [HttpRequest("GET", "/users/me", {"authorization": f"Bearer {t}"}) for t in access],
        _status_ok,
    )


def verify(base_url: str, scenario: Scenario) -> None:
    """Send each distinct request once (this also makes the users the load
    will find) and check every reply."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        for req in scenario.requests:
            reply = http.request(
                req.method,
                req.path,
                headers=req.headers,
                content=req.body.encode() if req.body is not None else None,
            )
            scenario.check(reply)
