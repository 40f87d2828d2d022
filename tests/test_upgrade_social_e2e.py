"""Upgrading anonymous users to google, facebook and twitter identities,
through the real edge against the local stand-ins (Google's certs, Graph,
X API): link (same userId, the check profile as data), conflict (nothing of
the anonymous user changes), merge (devices and logins move), a Google token
sent as Bearer, and a second permanent identity refused."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.fakes.facebook_graph import FakeGraph, GraphUser
from tests.fakes.oidc_issuer import FakeIssuer
from tests.fakes.x_api import FakeXApi, XUser
from tests.harness import Stack, in_store, refused, start_stack, user_rows

PROJECT = str(uuid.uuid4())  # anonymous + google + facebook + twitter
CLIENT = "1234-web.apps.googleusercontent.com"
GOOGLE = "https://accounts.google.com"
APP = "1029384756"
SECRET = "graph-app-secret-upgrade"
NETWORKS = ["google", "facebook", "twitter"]

# A person of one network: fresh credentials of theirs on each call (the
# fields a check or a link carries: accessToken, and userId for X).
Person = Callable[[], dict[str, str]]


@dataclass
class World:
    stack: Stack
    http: httpx.Client
    google: FakeIssuer
    graph: FakeGraph
    x: FakeXApi

    def person(self, network: str) -> Person:
        if network == "google":
            sub = str(uuid.uuid4().int)[:21]

            def google() -> dict[str, str]:
                token = self.google.mint(
                    sub=sub, aud=CLIENT, email="jane@gmail.test", email_verified=True, name="Jane"
                )
                return {"accessToken": token}

            return google
        if network == "facebook":
            fb = GraphUser(str(uuid.uuid4().int)[:17], "Ada Lovelace", "ada@example.com")
            return lambda: {"accessToken": self.graph.issue(APP, fb)}
        x = XUser(str(uuid.uuid4().int)[:19], "Grace", "grace")
        return lambda: {"accessToken": self.x.issue(x), "userId": x.id}

    def anonymous(self, logins: int = 1) -> dict[str, Any]:
        """A fresh anonymous user (a new device) signed in `logins` times:
        its last session."""
        body = {
            "projectId": PROJECT,
            "provider": "anonymous",
            "data": {"deviceId": str(uuid.uuid4())},
        }
        for _ in range(logins):
            reply = self.http.put("/user/login", json=body)
            assert reply.status_code == 200, reply.text
        return dict(reply.json()["data"])

    def check(self, network: str, creds: dict[str, str], **params: str) -> httpx.Response:
        query = {"projectId": PROJECT, "strategy": "email", "provider": network, **creds, **params}
        return self.http.get("/user/check/nonstandard", params=query)

    def upgrade(
        self,
        verb: str,
        network: str,
        anonymous_token: str,
        creds: dict[str, str],
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = {
            "projectId": PROJECT,
            "provider": network,
            "anonymousToken": anonymous_token,
            **creds,
        }
        return self.http.post(f"/v1/user:{verb}", json=body, headers=headers or {})


def merged_into(db_url: str, user_id: str) -> Any:
    return in_store(
        db_url,
        lambda c: c.execute(
            sa.text("SELECT merged_into FROM users WHERE user_id = :u"), {"u": user_id}
        ).scalar_one(),
    )


def providers_of(identities: list[dict[str, Any]]) -> list[str]:
    return sorted(i["provider"] for i in identities)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    google = FakeIssuer(issuer=GOOGLE, jwks_path="/oauth2/v3/certs")
    graph = FakeGraph({APP: SECRET})
    x = FakeXApi()
    config = {
        "projects": [
            {
                "id": PROJECT,
                "name": "upgrade-social",
                "providers": {
                    "anonymous": {},
                    "google": {"clientIds": [CLIENT], "certsUrl": google.jwks_url},
                    "facebook": {"appId": APP, "appSecret": SECRET, "graphUrl": graph.url},
                    "twitter": {"apiUrl": x.url},
                },
            }
        ]
    }
    stack = start_stack(tmp_path_factory.mktemp("upgrade-social"), config, db_url=db_url)
    w = World(stack, stack.client(), google, graph, x)
    try:
        yield w
    finally:
        w.http.close()
        code = stack.stop()
        google.stop()
        graph.stop()
        x.stop()
        assert code == 0, stack.log_text()


@pytest.mark.parametrize("network", NETWORKS)
def test_link_keeps_the_anonymous_user_id(world: World, network: str) -> None:
    anon = world.anonymous()
    person = world.person(network)
    creds = person()
    reply = world.upgrade("link", network, anon["profileToken"], creds)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["userId"] == anon["userId"]
    assert out["message"] == "identity linked"
    assert out.get("mergedUserId", "") == ""
    assert providers_of(out["linkedIdentities"]) == sorted(["anonymous", network])
    # data is the network's check profile, for the anonymous user.
    data = out["data"]
    assert data["userId"] == anon["userId"]
    assert providers_of(data["linkedIdentities"]) == sorted(["anonymous", network])
    assert [d["deviceId"] for d in data["devices"]] == [anon["deviceId"]]
    assert len(data["loginHistory"]) == 1
    # The network's own check with the same credentials finds that user.
    check = world.check(network, creds)
    assert check.status_code == 200, check.text
    assert check.json()["data"]["userId"] == anon["userId"]
    again = world.check(network, person())
    assert again.status_code == 200, again.text
    assert again.json()["data"]["userId"] == anon["userId"]


@pytest.mark.parametrize("network", NETWORKS)
def test_conflict_leaves_the_anonymous_user_as_it_was(world: World, network: str) -> None:
    person = world.person(network)
    first = world.check(network, person())  # the network user has its own user
    assert first.status_code == 200, first.text
    owner = first.json()["data"]["userId"]
    anon = world.anonymous()
    before = user_rows(world.stack.db_url, anon["userId"])
    owner_before = user_rows(world.stack.db_url, owner)
    body = refused(
        world.upgrade("link", network, anon["profileToken"], person()),
        409,
        "IDENTITY_ALREADY_LINKED",
    )
    [info] = [d for d in body["details"] if d["@type"].endswith("ErrorInfo")]
    assert (info["metadata"]["userId"], info["metadata"]["provider"]) == (owner, network)
    assert user_rows(world.stack.db_url, anon["userId"]) == before
    assert user_rows(world.stack.db_url, owner) == owner_before


@pytest.mark.parametrize("network", NETWORKS)
def test_merge_moves_devices_and_logins(world: World, network: str) -> None:
    person = world.person(network)
    owner_device = str(uuid.uuid4())
    first = world.check(network, person(), deviceId=owner_device)
    assert first.status_code == 200, first.text
    owner = first.json()["data"]["userId"]
    anon = world.anonymous(logins=2)
    reply = world.upgrade("merge", network, anon["profileToken"], person())
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert (out["userId"], out["mergedUserId"]) == (owner, anon["userId"])
    assert out["message"] == "users merged"
    assert providers_of(out["linkedIdentities"]) == sorted(["anonymous", network])
    data = out["data"]
    assert data["userId"] == owner
    assert sorted(d["deviceId"] for d in data["devices"]) == sorted(
        [owner_device, anon["deviceId"]]
    )
    assert all(d["userId"] == owner for d in data["devices"])
    assert len(data["loginHistory"]) == 3
    tomb = user_rows(world.stack.db_url, anon["userId"])
    assert len(tomb["users"]) == 1
    assert (tomb["devices"], tomb["logins"], tomb["identities"]) == ([], [], [])
    assert merged_into(world.stack.db_url, anon["userId"]) == owner
    moved = user_rows(world.stack.db_url, owner)
    assert len(moved["devices"]) == 2 and len(moved["logins"]) == 3
    # The network's check now finds the merged user with both identities.
    check = world.check(network, person())
    assert check.status_code == 200, check.text
    assert providers_of(check.json()["data"]["linkedIdentities"]) == sorted(["anonymous", network])


def test_google_token_sent_as_bearer_links_too(world: World) -> None:
    anon = world.anonymous()
    token = world.person("google")()["accessToken"]
    reply = world.upgrade(
        "link", "google", anon["profileToken"], {}, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["userId"] == anon["userId"]
    assert reply.json()["data"]["userId"] == anon["userId"]
    check = world.check("google", {"accessToken": token})
    assert check.json()["data"]["userId"] == anon["userId"]


def test_a_second_permanent_identity_is_refused_after_the_upgrade(world: World) -> None:
    anon = world.anonymous()
    linked = world.upgrade("link", "google", anon["profileToken"], world.person("google")())
    assert linked.status_code == 200, linked.text
    before = user_rows(world.stack.db_url, anon["userId"])
    fb = world.person("facebook")
    body = refused(
        world.upgrade("link", "facebook", anon["profileToken"], fb()), 409, "ACCOUNT_UPGRADED"
    )
    [info] = [d for d in body["details"] if d["@type"].endswith("ErrorInfo")]
    assert info["metadata"]["provider"] == "google"
    assert user_rows(world.stack.db_url, anon["userId"]) == before
    # The facebook identity was attached to nobody: its check makes a new user.
    check = world.check("facebook", fb())
    assert check.status_code == 200, check.text
    assert check.json()["data"]["userId"] != anon["userId"]
