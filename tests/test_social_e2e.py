"""`GET /user/check/nonstandard` for facebook and twitter through the real
Envoy edge and server, against local Graph and X API stand-ins."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from server.store import schema
from server.store.db import open_database
from tests.fakes.facebook_graph import FakeGraph, GraphUser
from tests.fakes.x_api import FakeXApi, XUser
from tests.harness import Stack, refused, start_stack
from tests.social_helpers import free_closed_port

APP = "1029384756"
SECRET = "graph-app-secret-e2e"
OTHER_APP = "5647382910"

FB = str(uuid.uuid4())
FB_OTHER_PROJECT = str(uuid.uuid4())
X = str(uuid.uuid4())
DOWN = str(uuid.uuid4())
SLOW = str(uuid.uuid4())
BROKEN = str(uuid.uuid4())

PATHS = ["/v1/user/check/nonstandard", "/user/check/nonstandard"]


@dataclass
class World:
    stack: Stack
    http: httpx.Client
    graph: FakeGraph
    x: FakeXApi
    tokens: list[str]

    def check(
        self,
        project: str,
        provider: str,
        *,
        path: str = PATHS[0],
        bearer: str | None = None,
        **params: str,
    ) -> httpx.Response:
        if "accessToken" in params:
            self.tokens.append(params["accessToken"])
        if bearer:
            self.tokens.append(bearer)
        return self.http.get(
            path,
            params={"projectId": project, "strategy": "email", "provider": provider, **params},
            headers={"Authorization": f"Bearer {bearer}"} if bearer else {},
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    graph = FakeGraph({APP: SECRET, OTHER_APP: "another-secret"})
    x = FakeXApi()
    slow_x = FakeXApi()
    slow_x.mode = "slow"
    slow_x.slow_seconds = 3.0
    broken_graph = FakeGraph({APP: SECRET})
    broken_graph.mode = "error"
    closed = f"http://127.0.0.1:{free_closed_port()}"
    facebook = {"appId": APP, "appSecret": "${SOCIAL_E2E_FB_SECRET}", "graphUrl": graph.url}

    def project(pid: str, providers: dict[str, Any]) -> dict[str, Any]:
        return {"id": pid, "name": pid[:8], "providers": providers}

    config = {
        "projects": [
            project(FB, {"facebook": facebook}),
            project(FB_OTHER_PROJECT, {"facebook": facebook}),
            project(X, {"twitter": {"apiUrl": x.url}}),
            project(
                DOWN,
                {
                    "facebook": {**facebook, "graphUrl": closed},
                    "twitter": {"apiUrl": closed},
                },
            ),
            project(SLOW, {"twitter": {"apiUrl": slow_x.url, "timeoutSeconds": 0.5}}),
            project(BROKEN, {"facebook": {**facebook, "graphUrl": broken_graph.url}}),
        ]
    }
    stack = start_stack(
        tmp_path_factory.mktemp("social"),
        config,
        env={"SOCIAL_E2E_FB_SECRET": SECRET},
        db_url=db_url,
    )
    client = stack.client()
    try:
        yield World(stack, client, graph, x, [])
    finally:
        client.close()
        stack.stop()
        for fake in (graph, x, slow_x, broken_graph):
            fake.stop()


def fb_user(name: str = "Ada Lovelace", email: str | None = "ada@example.com") -> GraphUser:
    return GraphUser(str(uuid.uuid4().int)[:17], name, email)


def x_user(handle: str = "ada") -> XUser:
    return XUser(str(uuid.uuid4().int)[:19], handle.title(), handle)


def retry_delay(body: dict[str, Any]) -> str:
    [retry] = [d for d in body["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    return str(retry["retryDelay"])


# ---------------------------------------------------------------- facebook
@pytest.mark.parametrize("path", PATHS)
def test_facebook_valid_token_returns_the_documented_profile(world: World, path: str) -> None:
    user = fb_user()
    token = world.graph.issue(APP, user)
    resp = world.check(FB, "facebook", path=path, accessToken=token)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["result"], body["message"]) == (1, "OK")
    data = body["data"]
    assert set(data) == {
        "updatedAt", "nickname", "email", "devices", "userId", "externalId", "loginHistory",
        "linkedIdentities",
    }  # fmt: skip
    assert re.fullmatch(r"\d{10}", data["updatedAt"])
    assert (data["nickname"], data["email"]) == ("Ada Lovelace", "ada@example.com")
    assert data["devices"] == [] and data["loginHistory"] == []
    assert str(uuid.UUID(data["userId"])) == data["userId"]
    assert re.fullmatch(r"[0-9a-f]{64}", data["externalId"])


def test_facebook_same_account_twice_is_one_identity_and_records_the_device(world: World) -> None:
    user = fb_user("Grace Hopper", "grace@example.com")
    first = world.check(FB, "facebook", accessToken=world.graph.issue(APP, user)).json()["data"]
    device = str(uuid.uuid4())
    # A second token of the same person, sent the other documented way.
    resp = world.check(
        FB,
        "facebook",
        path=PATHS[1],
        bearer=world.graph.issue(APP, user),
        userId=user.id,
        deviceId=device,
    )
    assert resp.status_code == 200, resp.text
    second = resp.json()["data"]
    assert (second["userId"], second["externalId"]) == (first["userId"], first["externalId"])
    [dev] = second["devices"]
    assert dev["deviceId"] == device and dev["userId"] == first["userId"]
    assert all(isinstance(dev[k], int) for k in ("lastLogin", "signUp", "timeStamp"))
    assert re.fullmatch(r"[0-9A-F]{40}", dev["signature"])
    assert len(second["loginHistory"]) == 1 and isinstance(second["loginHistory"][0], int)


def test_facebook_first_checks_racing_still_make_one_identity(world: World) -> None:
    user = fb_user("Racer")
    tokens = [world.graph.issue(APP, user) for _ in range(8)]
    with ThreadPoolExecutor(len(tokens)) as pool:
        replies = list(pool.map(lambda t: world.check(FB, "facebook", accessToken=t), tokens))
    assert [r.status_code for r in replies] == [200] * len(tokens)
    assert len({(r.json()["data"]["userId"], r.json()["data"]["externalId"]) for r in replies}) == 1


def test_facebook_profile_follows_upstream_changes(world: World) -> None:
    user = fb_user("Old Name", "old@example.com")
    world.check(FB, "facebook", accessToken=world.graph.issue(APP, user))
    user.name, user.email = "New Name", None  # renamed, email permission withdrawn
    data = world.check(FB, "facebook", accessToken=world.graph.issue(APP, user)).json()["data"]
    assert (data["nickname"], data["email"]) == ("New Name", "")


def test_facebook_identity_is_per_project(world: World) -> None:
    user = fb_user()
    a = world.check(FB, "facebook", accessToken=world.graph.issue(APP, user)).json()["data"]
    other = world.check(FB_OTHER_PROJECT, "facebook", accessToken=world.graph.issue(APP, user))
    b = other.json()["data"]
    assert a["userId"] != b["userId"] and a["externalId"] != b["externalId"]


def revoke_sessions_in_store(db_url: str, project: str, user_id: str, before: int) -> None:
    """What an admin's "sign this user out everywhere" writes; no public RPC
    does it for social users, so the test writes the row itself."""

    async def go() -> None:
        database = open_database(db_url, pool_size=1)
        try:
            await database.write(
                lambda conn: conn.execute(
                    sa.update(schema.users)
                    .where(schema.users.c.project_id == project, schema.users.c.user_id == user_id)
                    .values(valid_after=before)
                )
            )
        finally:
            await database.dispose()

    asyncio.run(go())


def test_facebook_token_issued_before_revocation_is_refused(world: World) -> None:
    user = fb_user("Revoked")
    now = int(time.time())
    old = world.graph.issue(APP, user, issued_at=now - 600)
    first = world.check(FB, "facebook", accessToken=old)
    assert first.status_code == 200, first.text
    revoke_sessions_in_store(world.stack.db_url, FB, first.json()["data"]["userId"], now - 60)
    refused(world.check(FB, "facebook", accessToken=old), 401, "TOKEN_REVOKED")
    fresh = world.graph.issue(APP, user, issued_at=now)
    assert world.check(FB, "facebook", accessToken=fresh).status_code == 200


def test_facebook_accepts_matching_user_id(world: World) -> None:
    user = fb_user()
    resp = world.check(FB, "facebook", accessToken=world.graph.issue(APP, user), userId=user.id)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("path", PATHS)
def test_facebook_invalid_token(world: World, path: str) -> None:
    body = refused(
        world.check(FB, "facebook", path=path, accessToken="EAAforged"), 401, "INVALID_SOCIAL_TOKEN"
    )
    assert body["code"] == 16 and "EAAforged" not in body["message"]


def test_facebook_token_of_another_app(world: World) -> None:
    token = world.graph.issue(OTHER_APP, fb_user())
    refused(world.check(FB, "facebook", accessToken=token), 401, "WRONG_APP")


def test_facebook_expired_token(world: World) -> None:
    token = world.graph.issue(APP, fb_user(), expires_in=-1)
    refused(world.check(FB, "facebook", accessToken=token), 401, "TOKEN_EXPIRED")


def test_facebook_user_id_mismatch(world: World) -> None:
    token = world.graph.issue(APP, fb_user())
    resp = world.check(FB, "facebook", accessToken=token, userId="1234")
    refused(resp, 401, "USER_ID_MISMATCH")


def test_missing_token(world: World) -> None:
    refused(world.check(FB, "facebook"), 401, "MISSING_ACCESS_TOKEN")


def test_device_id_must_be_a_uuid(world: World) -> None:
    token = world.graph.issue(APP, fb_user())
    resp = world.check(FB, "facebook", accessToken=token, deviceId="not-a-uuid")
    refused(resp, 400, "INVALID_DEVICE_ID")


def test_facebook_graph_down_is_503_with_retry(world: World) -> None:
    body = refused(
        world.check(DOWN, "facebook", accessToken="EAAanything"), 503, "UPSTREAM_UNAVAILABLE"
    )
    assert retry_delay(body).endswith("s")


def test_facebook_graph_5xx_is_503(world: World) -> None:
    body = refused(
        world.check(BROKEN, "facebook", accessToken="EAAanything"), 503, "UPSTREAM_ERROR"
    )
    assert retry_delay(body)


# ----------------------------------------------------------------- twitter
@pytest.mark.parametrize("path", PATHS)
def test_twitter_valid_token(world: World, path: str) -> None:
    user = x_user("lovelace")
    token = world.x.issue(user)
    resp = world.check(X, "twitter", path=path, accessToken=token, userId=user.id)
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert (data["nickname"], data["email"]) == ("lovelace", "")
    assert re.fullmatch(r"[0-9a-f]{64}", data["externalId"])


def test_twitter_same_account_twice_is_one_identity(world: World) -> None:
    user = x_user("hopper")
    first = world.check(X, "twitter", accessToken=world.x.issue(user), userId=user.id)
    user.username = "gracehopper"  # handles change; the id does not
    second = world.check(X, "twitter", bearer=world.x.issue(user), userId=user.id, path=PATHS[1])
    a, b = first.json()["data"], second.json()["data"]
    assert (a["userId"], a["externalId"]) == (b["userId"], b["externalId"])
    assert b["nickname"] == "gracehopper"


def test_twitter_requires_user_id(world: World) -> None:
    resp = world.check(X, "twitter", accessToken=world.x.issue(x_user()))
    body = refused(resp, 400, "MISSING_FIELD")
    [info] = [d for d in body["details"] if d["@type"].endswith("ErrorInfo")]
    assert info["metadata"]["field"] == "userId"


def test_twitter_user_id_mismatch(world: World) -> None:
    resp = world.check(X, "twitter", accessToken=world.x.issue(x_user()), userId="42")
    refused(resp, 401, "USER_ID_MISMATCH")


def test_twitter_invalid_token(world: World) -> None:
    refused(
        world.check(X, "twitter", accessToken="forged-x-token", userId="42"),
        401,
        "INVALID_SOCIAL_TOKEN",
    )


def test_twitter_rate_limit_is_429_with_retry(world: World) -> None:
    user = x_user()
    token = world.x.issue(user)
    world.x.throttled.add(token)
    body = refused(
        world.check(X, "twitter", accessToken=token, userId=user.id), 429, "UPSTREAM_RATE_LIMITED"
    )
    seconds = float(retry_delay(body).rstrip("s"))
    assert world.x.reset_in - 5 <= seconds <= world.x.reset_in


def test_twitter_down_is_503(world: World) -> None:
    resp = world.check(DOWN, "twitter", accessToken="anything", userId="42")
    refused(resp, 503, "UPSTREAM_UNAVAILABLE")


def test_twitter_timeout_is_503(world: World) -> None:
    resp = world.check(SLOW, "twitter", accessToken="anything", userId="42")
    body = refused(resp, 503, "UPSTREAM_TIMEOUT")
    assert retry_delay(body)


def test_no_token_reached_the_server_log(world: World) -> None:
    # Runs last in this module (pytest keeps file order): every token sent
    # above must be absent from everything the server and Envoy logged.
    world.check(FB, "facebook", accessToken=world.graph.issue(APP, fb_user()))
    assert len(world.tokens) > 10
    log = world.stack.log_text()
    leaked = [t for t in world.tokens if t in log]
    assert leaked == []
    assert SECRET not in log
