"""google `GET /user/check/nonstandard` through the real Envoy edge and
server, against a local stand-in for Google's certs endpoint."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.fakes.oidc_issuer import FakeIssuer
from tests.harness import Stack, error_reason, start_stack

CLIENT = "1234-web.apps.googleusercontent.com"
CLIENT_ANDROID = "1234-android.apps.googleusercontent.com"
OTHER_CLIENT = "9876-other.apps.googleusercontent.com"
GOOGLE = "https://accounts.google.com"

G = str(uuid.uuid4())
G_OTHER_APP = str(uuid.uuid4())
G_CERTS_DOWN = str(uuid.uuid4())
PATHS = ["/v1/user/check/nonstandard", "/user/check/nonstandard"]


@dataclass
class World:
    stack: Stack
    http: httpx.Client
    google: FakeIssuer
    down: FakeIssuer
    tokens: list[str] = field(default_factory=list)

    def id_token(self, sub: str | None = None, **claims: Any) -> str:
        claims.setdefault("aud", CLIENT)
        claims.setdefault("email", "jane@gmail.test")
        claims.setdefault("email_verified", True)
        claims.setdefault("name", "Jane Doe")
        token = self.google.mint(sub=sub or str(uuid.uuid4().int)[:21], **claims)
        self.tokens.append(token)
        return token

    def check(
        self,
        token: str | None,
        *,
        project: str = G,
        path: str = PATHS[0],
        bearer: str | None = None,
        **params: str,
    ) -> httpx.Response:
        query = {"projectId": project, "strategy": "email", "provider": "google", **params}
        if token is not None:
            query["accessToken"] = token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return self.http.get(path, params=query, headers=headers)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    google = FakeIssuer(issuer=GOOGLE, jwks_path="/oauth2/v3/certs")
    down = FakeIssuer(issuer=GOOGLE, jwks_path="/oauth2/v3/certs")
    down.mode = "error"
    config = {
        "projects": [
            {
                "id": G,
                "name": "google",
                "providers": {
                    "google": {"clientIds": [CLIENT, CLIENT_ANDROID], "certsUrl": google.jwks_url}
                },
            },
            {
                "id": G_OTHER_APP,
                "name": "other-app",
                "providers": {"google": {"clientIds": OTHER_CLIENT, "certsUrl": google.jwks_url}},
            },
            {
                "id": G_CERTS_DOWN,
                "name": "down",
                "providers": {"google": {"clientIds": [CLIENT], "certsUrl": down.jwks_url}},
            },
        ]
    }
    stack = start_stack(tmp_path_factory.mktemp("google"), config, db_url=db_url)
    w = World(stack, stack.client(), google, down)
    try:
        yield w
    finally:
        w.http.close()
        code = stack.stop()
        logs = stack.log_text()
        google.stop()
        down.stop()
        assert code == 0, logs
        assert not [t for t in w.tokens if t.split(".")[2] in logs], "a token reached the logs"


@pytest.mark.parametrize("path", PATHS)
def test_valid_id_token_gives_the_documented_profile(world: World, path: str) -> None:
    device = str(uuid.uuid4())
    before = int(time.time())
    reply = world.check(world.id_token(), path=path, deviceId=device)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["result"] == 1 and body["message"] == "OK"
    data = body["data"]
    assert set(data) == {
        "updatedAt",
        "nickname",
        "email",
        "devices",
        "userId",
        "externalId",
        "loginHistory",
        "linkedIdentities",
    }
    assert re.fullmatch(r"\d+", data["updatedAt"]) and int(data["updatedAt"]) >= before - 1
    assert data["nickname"] == "Jane Doe" and data["email"] == "jane@gmail.test"
    assert re.fullmatch(r"[0-9a-f]{64}", data["externalId"])
    [dev] = data["devices"]
    assert dev["deviceId"] == device and dev["userId"] == data["userId"]
    assert isinstance(dev["lastLogin"], int) and re.fullmatch(r"[0-9A-F]{40}", dev["signature"])
    assert len(data["loginHistory"]) == 1


def test_same_google_account_is_one_identity(world: World) -> None:
    sub = "108" + str(uuid.uuid4().int)[:18]
    first = world.check(world.id_token(sub), deviceId=str(uuid.uuid4())).json()["data"]
    # Another app of the project (Android client id), another device, a new
    # token, another email: still the same person.
    again = world.check(
        world.id_token(sub, aud=CLIENT_ANDROID, email="jane.new@gmail.test"),
        deviceId=str(uuid.uuid4()),
    ).json()["data"]
    assert again["userId"] == first["userId"]
    assert again["externalId"] == first["externalId"]
    assert again["email"] == "jane.new@gmail.test"
    assert len(again["devices"]) == 2 and len(again["loginHistory"]) == 2


def test_token_as_bearer_header_and_query_wins(world: World) -> None:
    sub = "109" + str(uuid.uuid4().int)[:18]
    by_header = world.check(None, bearer=world.id_token(sub))
    assert by_header.status_code == 200, by_header.text
    both = world.check(world.id_token(sub), bearer="garbage")
    assert both.status_code == 200, both.text
    assert both.json()["data"]["userId"] == by_header.json()["data"]["userId"]


def test_short_issuer_spelling_is_accepted(world: World) -> None:
    reply = world.check(world.id_token(iss="accounts.google.com"))
    assert reply.status_code == 200, reply.text


def test_email_only_when_google_verified_it(world: World) -> None:
    reply = world.check(world.id_token(email="unverified@gmail.test", email_verified=False))
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"]["email"] != "unverified@gmail.test"


def test_user_id_must_be_the_tokens_subject(world: World) -> None:
    sub = "110" + str(uuid.uuid4().int)[:18]
    assert world.check(world.id_token(sub), userId=sub).status_code == 200
    reply = world.check(world.id_token(sub), userId="111111111111111111111")
    assert reply.status_code == 401
    assert error_reason(reply.json()) == "USER_ID_MISMATCH"


@pytest.mark.parametrize("path", PATHS)
def test_refusals_are_401_with_reasons(world: World, path: str) -> None:
    now = int(time.time())
    cases = {
        "wrong audience": (world.id_token(aud=OTHER_CLIENT), "WRONG_AUDIENCE"),
        "expired": (world.id_token(exp=now - 600, iat=now - 4200), "TOKEN_EXPIRED"),
        "wrong issuer": (world.id_token(iss="https://accounts.evil.test"), "WRONG_ISSUER"),
        "alg none": (world.google.mint_unsigned(sub="1", aud=CLIENT), "ALGORITHM_NOT_ALLOWED"),
        "hs256": (
            world.google.mint_hs256_with_public_key(sub="1", aud=CLIENT),
            "ALGORITHM_NOT_ALLOWED",
        ),
        "malformed": ("not-a-jwt", "MALFORMED_TOKEN"),
        "missing": (None, "MISSING_ACCESS_TOKEN"),
    }
    for case, (token, reason) in cases.items():
        reply = world.check(token, path=path)
        assert reply.status_code == 401, (case, reply.text)
        assert error_reason(reply.json()) == reason, case


def test_token_of_another_app_is_refused(world: World) -> None:
    token = world.id_token()
    assert world.check(token).status_code == 200
    reply = world.check(token, project=G_OTHER_APP)
    assert reply.status_code == 401
    assert error_reason(reply.json()) == "WRONG_AUDIENCE"


def test_certs_down_is_503_with_retry_info(world: World) -> None:
    reply = world.check(world.id_token(), project=G_CERTS_DOWN)
    assert reply.status_code == 503, reply.text
    body = reply.json()
    assert error_reason(body) == "UPSTREAM_UNAVAILABLE"
    assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in body["details"])
