"""Social token verifications are remembered for a short time (providers/kit/
social.py, VERIFICATION_CACHE_SECONDS), so a hot client does not cost an
upstream call per request: counted at the Graph and X stand-ins, through the
real edge and server. Never past the token's own expiry; refusals are never
remembered; a revocation through Identify is honoured at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from providers.kit.social import VERIFICATION_CACHE_SECONDS
from tests.fakes.facebook_graph import FakeGraph, GraphUser
from tests.fakes.x_api import FakeXApi, XUser
from tests.harness import Stack, refused, start_stack
from tests.test_social_e2e import revoke_sessions_in_store

APP = "1029384756"
SECRET = "graph-app-secret-cache"
FB, X = str(uuid.uuid4()), str(uuid.uuid4())
PATH = "/v1/user/check/nonstandard"


@dataclass
class World:
    stack: Stack
    http: httpx.Client
    graph: FakeGraph
    x: FakeXApi

    def check(self, project: str, provider: str, token: str, **params: str) -> httpx.Response:
        query = {"projectId": project, "strategy": "email", "provider": provider, **params}
        return self.http.get(PATH, params={**query, "accessToken": token})

    def graph_calls(self, token: str) -> list[str]:
        """The Graph endpoints asked about `token`, in order."""
        return [
            path.rsplit("/", 1)[-1]
            for _, path, query, _ in self.graph.requests
            if token in (query.get("input_token"), query.get("access_token"))
        ]

    def x_calls(self, token: str) -> int:
        return sum(
            1
            for _, _, _, headers in self.x.requests
            if headers.get("authorization") == f"Bearer {token}"
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    graph = FakeGraph({APP: SECRET})
    x = FakeXApi()
    config = {
        "projects": [
            {
                "id": FB,
                "name": "fb-cache",
                "providers": {
                    "facebook": {"appId": APP, "appSecret": SECRET, "graphUrl": graph.url}
                },
            },
            {"id": X, "name": "x-cache", "providers": {"twitter": {"apiUrl": x.url}}},
        ]
    }
    stack = start_stack(tmp_path_factory.mktemp("social-cache"), config, db_url=db_url)
    client = stack.client()
    try:
        yield World(stack, client, graph, x)
    finally:
        client.close()
        stack.stop()
        graph.stop()
        x.stop()


def fb_user() -> GraphUser:
    return GraphUser(str(uuid.uuid4().int)[:17], "Ada Lovelace", "ada@example.com")


def x_user() -> XUser:
    return XUser(str(uuid.uuid4().int)[:19], "Grace", "grace")


def test_the_bound_is_short() -> None:
    # What the README promises: a network-side revocation is seen within a minute.
    assert 0 < VERIFICATION_CACHE_SECONDS <= 60


def test_facebook_same_token_twice_asks_graph_once(world: World) -> None:
    user = fb_user()
    token = world.graph.issue(APP, user)
    first = world.check(FB, "facebook", token)
    second = world.check(FB, "facebook", token)
    assert first.status_code == second.status_code == 200, second.text
    assert first.json()["data"]["userId"] == second.json()["data"]["userId"]
    assert world.graph_calls(token) == ["debug_token", "me"]
    # Another token of the same person is verified on its own.
    other = world.graph.issue(APP, user)
    assert world.check(FB, "facebook", other).status_code == 200
    assert world.graph_calls(other) == ["debug_token", "me"]
    assert world.graph_calls(token) == ["debug_token", "me"]


def test_facebook_refusals_are_not_remembered(world: World) -> None:
    token = "EAAnot-a-graph-token-" + uuid.uuid4().hex
    for _ in range(2):
        refused(world.check(FB, "facebook", token), 401, "INVALID_SOCIAL_TOKEN")
    assert world.graph_calls(token) == ["debug_token", "debug_token"]


def test_facebook_token_invalidated_at_graph_is_served_within_the_bound(world: World) -> None:
    # The documented price of the cache: a logout at Facebook is seen here
    # only once the entry ends (VERIFICATION_CACHE_SECONDS). A token Graph
    # never vouched for, or one past its own expiry, is never served from it.
    token = world.graph.issue(APP, fb_user())
    assert world.check(FB, "facebook", token).status_code == 200
    world.graph.invalidate(token)
    assert world.check(FB, "facebook", token).status_code == 200
    assert world.graph_calls(token) == ["debug_token", "me"]


def test_facebook_entry_ends_with_the_tokens_own_expiry(world: World) -> None:
    token = world.graph.issue(APP, fb_user(), expires_in=2)
    assert world.check(FB, "facebook", token).status_code == 200
    # Waits out the token's own life (two seconds), far inside the cache's bound.
    time.sleep(max(0.0, world.graph.tokens[token].expires_at - time.time()) + 0.2)
    refused(world.check(FB, "facebook", token), 401, "TOKEN_EXPIRED")
    assert world.graph_calls(token) == ["debug_token", "me", "debug_token"]


def test_facebook_revocation_through_identify_is_honoured_on_a_cached_token(
    world: World,
) -> None:
    user = fb_user()
    now = int(time.time())
    token = world.graph.issue(APP, user, issued_at=now - 600)
    first = world.check(FB, "facebook", token)
    assert first.status_code == 200, first.text
    revoke_sessions_in_store(world.stack.db_url, FB, first.json()["data"]["userId"], now - 60)
    refused(world.check(FB, "facebook", token), 401, "TOKEN_REVOKED")
    # The refusal came from the store's rule, not from asking Graph again.
    assert world.graph_calls(token) == ["debug_token", "me"]


def test_x_same_token_and_user_id_twice_asks_x_once(world: World) -> None:
    user = x_user()
    token = world.x.issue(user)
    for _ in range(3):
        assert world.check(X, "twitter", token, userId=user.id).status_code == 200
    assert world.x_calls(token) == 1
    # The userId is part of the key: another one is asked about (and refused).
    refused(world.check(X, "twitter", token, userId="42"), 401, "USER_ID_MISMATCH")
    assert world.x_calls(token) == 2
    # X reports no expiry: a token revoked there is served until the entry
    # ends (VERIFICATION_CACHE_SECONDS), then refused.
    world.x.revoke(token)
    assert world.check(X, "twitter", token, userId=user.id).status_code == 200
    assert world.x_calls(token) == 2
