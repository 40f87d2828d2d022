"""The scenarios and the data they need: one project with anonymous, noLogin
and authZero (against a local issuer), users made before the load so every
measured call reads or writes existing rows, and a request set per scenario
that wrk sends round-robin."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.load import HttpRequest
from tests.fakes.oidc_issuer import FakeIssuer

PROJECT = "0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f"
AUDIENCE = "https://api.identify-bench.test"
# Enough distinct rows that concurrent calls rarely touch the same one, few
# enough that the set is made in a second or two.
USERS = 64
DEVICES = 256
JSON_HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    requests: list[HttpRequest]
    # Raises if a reply is not what the scenario is meant to measure, so a
    # misconfigured run cannot pass as fast errors.
    check: Callable[[httpx.Response], None]


def config(issuer: FakeIssuer) -> dict[str, Any]:
    return {
        "projects": [
            {
                "id": PROJECT,
                "name": "bench",
                "providers": {
                    "anonymous": {},
                    "noLogin": {},
                    "authZero": {
                        "issuer": issuer.issuer,
                        "jwksUri": issuer.jwks_url,
                        "audience": AUDIENCE,
                    },
                },
            }
        ]
    }


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

    def __init__(self, issuer: FakeIssuer) -> None:
        self.issuer = issuer
        self.devices = [str(uuid.uuid4()) for _ in range(DEVICES)]
        self.subjects = [f"auth0|bench{uuid.uuid4().hex[:16]}" for _ in range(USERS)]
        # Valid for an hour: longer than any run.
        self.tokens = [issuer.mint(sub=s, aud=AUDIENCE) for s in self.subjects]
        self.check_devices = [str(uuid.uuid4()) for _ in self.subjects]

    def _profile_requests(self) -> list[HttpRequest]:
        path = _query("/v1/user", projectId=PROJECT, strategy="email", provider="authZero")
        return [HttpRequest("GET", path, {"authorization": f"Bearer {t}"}) for t in self.tokens]

    def ceiling(self) -> Scenario:
        # The same path, query and headers as the profile read, so Envoy
        # does the same transcoding work for both.
        return Scenario(
            "ceiling",
            "empty GetUser handler (GET /v1/user)",
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
        nologin = [
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
        return [
            Scenario(
                "anonymous_login", "anonymous login (PUT /v1/user/login)", login, _envelope_ok
            ),
            Scenario(
                "nologin_get", "noLogin get (GET /v1/user?externalId=)", nologin, _envelope_ok
            ),
            Scenario(
                "profile_read",
                "authZero profile read, bearer JWT (GET /v1/user)",
                self._profile_requests(),
                _envelope_ok,
            ),
            Scenario(
                "check_token",
                "authZero check by token (GET /v1/user/check?deviceId=)",
                check,
                _envelope_ok,
            ),
        ]

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
