"""Upgrading anonymous users to authZero and oidc identities, through the
real edge against local OIDC issuers: link (same userId, devices, history,
appProfile), conflict (nothing of the anonymous user changes), merge by each
policy and its idempotence, unlink, the device refused after an upgrade, a
token of another project linking nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.fakes.oidc_issuer import FakeIssuer
from tests.fakes.webhook_receiver import WebhookReceiver, always
from tests.harness import Stack, create_admin_key, in_store, refused, start_stack, user_rows

AUD = "https://api.upgrade-e2e.test"
PROJECT = str(uuid.uuid4())  # anonymous + authZero + oidc
KEEPS_DEVICES = str(uuid.uuid4())  # anonymous keeps device logins after upgrade
OTHER = str(uuid.uuid4())  # anonymous + authZero on the same issuer
PREFIXES = ["/v1", ""]


@dataclass
class World:
    stack: Stack
    http: httpx.Client
    issuer: FakeIssuer
    oidc_issuer: FakeIssuer

    def anonymous(self, project: str = PROJECT, device: str | None = None) -> dict[str, Any]:
        """A fresh anonymous user (a new device), signed in: its session."""
        device = device or str(uuid.uuid4())
        body = {"projectId": project, "provider": "anonymous", "data": {"deviceId": device}}
        reply = self.http.put("/user/login", json=body)
        assert reply.status_code == 200, reply.text
        return dict(reply.json()["data"])

    def token(self, sub: str | None = None, issuer: FakeIssuer | None = None) -> str:
        return (issuer or self.issuer).mint(sub=sub or f"auth0|{uuid.uuid4().hex}", aud=AUD)

    def upgrade(
        self,
        verb: str,
        anonymous_token: str,
        bearer: str,
        *,
        project: str = PROJECT,
        provider: str = "authZero",
        prefix: str = "/v1",
        **extra: Any,
    ) -> httpx.Response:
        body = {
            "projectId": project,
            "provider": provider,
            "anonymousToken": anonymous_token,
            **extra,
        }
        return self.http.post(
            f"{prefix}/user:{verb}", json=body, headers={"Authorization": f"Bearer {bearer}"}
        )

    def profile(self, bearer: str, provider: str = "authZero") -> dict[str, Any]:
        reply = self.http.get(
            "/user",
            params={"projectId": PROJECT, "provider": provider},
            headers={"Authorization": f"Bearer {bearer}"},
        )
        assert reply.status_code == 200, reply.text
        return dict(reply.json()["data"])

    def set_app_profile(self, bearer: str, app_profile: dict[str, Any]) -> None:
        body = {"projectId": PROJECT, "provider": "authZero", "data": {"appProfile": app_profile}}
        reply = self.http.put("/user", json=body, headers={"Authorization": f"Bearer {bearer}"})
        assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    issuer, oidc_issuer = FakeIssuer(), FakeIssuer()
    verifier = {"issuer": issuer.issuer, "jwksUri": issuer.jwks_url, "audience": AUD}
    config = {
        "projects": [
            {
                "id": PROJECT,
                "name": "upgrade",
                "providers": {
                    "anonymous": {},
                    "authZero": verifier,
                    "oidc": {"issuer": oidc_issuer.issuer, "audience": AUD},
                },
            },
            {
                "id": KEEPS_DEVICES,
                "name": "keeps devices",
                "providers": {"anonymous": {"deviceLoginAfterUpgrade": True}, "authZero": verifier},
            },
            {
                "id": OTHER,
                "name": "other",
                "providers": {"anonymous": {}, "authZero": verifier},
            },
        ]
    }
    stack = start_stack(
        tmp_path_factory.mktemp("upgrade-oidc"),
        config,
        db_url=db_url,
        env={"IDENTIFY_WEBHOOK_POLL_SECONDS": "0.2"},
    )
    w = World(stack, stack.client(), issuer, oidc_issuer)
    try:
        yield w
    finally:
        w.http.close()
        code = stack.stop()
        issuer.stop()
        oidc_issuer.stop()
        assert code == 0, stack.log_text()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_link_keeps_the_user_id_devices_history_and_app_profile(world: World, prefix: str) -> None:
    anon = world.anonymous()
    body = {
        "projectId": PROJECT,
        "provider": "anonymous",
        "data": {"deviceId": anon["deviceId"]},
    }
    assert world.http.put("/user/login", json=body).status_code == 200  # a second login
    sub = f"auth0|{uuid.uuid4().hex}"
    token = world.token(sub)
    reply = world.upgrade("link", anon["profileToken"], token, prefix=prefix)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["userId"] == anon["userId"]
    assert out["message"] == "identity linked"
    assert out.get("mergedUserId", "") == ""
    assert [i["provider"] for i in out["linkedIdentities"]] == ["anonymous", "authZero"]
    # The reply's data is GET /user's for that user.
    assert len(out["data"]["loginHistory"]) == 2
    profile = world.profile(token)
    assert [i["provider"] for i in profile["linkedIdentities"]] == ["anonymous", "authZero"]
    assert len(profile["loginHistory"]) == 2
    # Linking the same identity again changes nothing and answers the same.
    again = world.upgrade("link", anon["profileToken"], token, prefix=prefix)
    assert again.status_code == 200, again.text
    assert again.json()["userId"] == anon["userId"]


def test_conflict_leaves_the_anonymous_user_exactly_as_it_was(world: World) -> None:
    owner_token = world.token()
    owner = world.profile(owner_token)  # the identity's user exists first
    assert owner["linkedIdentities"][0]["provider"] == "authZero"
    anon = world.anonymous()
    before = user_rows(world.stack.db_url, anon["userId"])
    body = refused(
        world.upgrade("link", anon["profileToken"], owner_token), 409, "IDENTITY_ALREADY_LINKED"
    )
    info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["metadata"]["provider"] == "authZero"
    assert uuid.UUID(info["metadata"]["userId"])
    assert info["metadata"]["userId"] != anon["userId"]
    assert user_rows(world.stack.db_url, anon["userId"]) == before


def test_merge_moves_devices_and_history_and_tombstones_the_anonymous_user(world: World) -> None:
    target_token = world.token()
    world.set_app_profile(target_token, {"level": 9, "name": "target"})
    anon = world.anonymous()
    body = {
        "projectId": PROJECT,
        "provider": "anonymous",
        "data": {"deviceId": anon["deviceId"], "appProfile": {"level": 1, "coins": 5}},
    }
    world.http.put("/user/login", json=body)
    reply = world.upgrade("merge", anon["profileToken"], target_token)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    target_id = out["userId"]
    assert target_id != anon["userId"]
    assert out["mergedUserId"] == anon["userId"]
    assert out["message"] == "users merged"
    profile = world.profile(target_token)
    assert sorted(i["provider"] for i in profile["linkedIdentities"]) == ["anonymous", "authZero"]
    assert len(profile["loginHistory"]) >= 1
    # Tombstone, not deleted.
    tomb = user_rows(world.stack.db_url, anon["userId"])
    assert len(tomb["users"]) == 1 and tomb["devices"] == [] and tomb["logins"] == []
    merged_into = in_store(
        world.stack.db_url,
        lambda c: c.execute(
            sa.text("SELECT merged_into FROM users WHERE user_id = :u"), {"u": anon["userId"]}
        ).scalar_one(),
    )
    assert merged_into == target_id
    # Idempotent: the same merge again changes nothing.
    before = user_rows(world.stack.db_url, target_id)
    again = world.upgrade("merge", anon["profileToken"], target_token)
    assert again.status_code == 200, again.text
    assert again.json()["message"] == "users were merged already"
    assert again.json()["userId"] == target_id
    assert user_rows(world.stack.db_url, target_id) == before
    # The device alone no longer signs in.
    device_login = {
        "projectId": PROJECT,
        "provider": "anonymous",
        "data": {"deviceId": anon["deviceId"]},
    }
    body = refused(world.http.put("/user/login", json=device_login), 409, "ACCOUNT_UPGRADED")
    info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["metadata"]["provider"] == "authZero"


def test_device_login_after_upgrade_is_refused_unless_the_project_keeps_it(world: World) -> None:
    for project, status in ((PROJECT, 409), (KEEPS_DEVICES, 200)):
        anon = world.anonymous(project)
        linked = world.upgrade("link", anon["profileToken"], world.token(), project=project)
        assert linked.status_code == 200, linked.text
        body = {
            "projectId": project,
            "provider": "anonymous",
            "data": {"deviceId": anon["deviceId"]},
        }
        reply = world.http.put("/user/login", json=body)
        assert reply.status_code == status, reply.text
        if status == 200:
            assert reply.json()["data"]["userId"] == anon["userId"]


def test_unlink_removes_one_identity_never_the_last(world: World) -> None:
    anon = world.anonymous()
    token = world.token()
    linked = world.upgrade("link", anon["profileToken"], token)
    assert linked.status_code == 200, linked.text
    session_token = anon["profileToken"]
    body = {"projectId": PROJECT, "provider": "anonymous"}
    headers = {"Authorization": f"Bearer {session_token}"}
    reply = world.http.post("/v1/user:unlink", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert [i["provider"] for i in reply.json()["linkedIdentities"]] == ["authZero"]
    last = {"projectId": PROJECT, "provider": "authZero"}
    refused(world.http.post("/v1/user:unlink", json=last, headers=headers), 400, "LAST_IDENTITY")
    refused(
        world.http.post("/v1/user:unlink", json=body, headers=headers), 404, "IDENTITY_NOT_FOUND"
    )
    # The device is an anonymous user's credential again: a new user.
    again = world.anonymous(device=anon["deviceId"])
    assert again["userId"] != anon["userId"]


def test_a_token_of_another_project_links_nothing(world: World) -> None:
    anon = world.anonymous(OTHER)
    refused(
        world.upgrade("link", anon["profileToken"], world.token()), 401, "INVALID_ANONYMOUS_TOKEN"
    )
    refused(world.upgrade("link", "not-a-jwt", world.token()), 401, "INVALID_ANONYMOUS_TOKEN")
    refused(world.upgrade("link", "", world.token()), 400, "MISSING_FIELD")
    refused(
        world.upgrade("merge", anon["profileToken"], world.token(), policy="sometimes"),
        400,
        "INVALID_MERGE_POLICY",
    )


def test_oidc_identity_links_too(world: World) -> None:
    anon = world.anonymous()
    token = world.token(issuer=world.oidc_issuer)
    reply = world.upgrade("link", anon["profileToken"], token, provider="oidc")
    assert reply.status_code == 200, reply.text
    assert reply.json()["userId"] == anon["userId"]
    assert [i["provider"] for i in world.profile(token, "oidc")["linkedIdentities"]] == [
        "anonymous",
        "oidc",
    ]


def test_merge_is_a_signed_webhook_and_the_admin_api_shows_identities_and_tombstone(
    world: World,
) -> None:
    receiver = WebhookReceiver(always(200))
    try:
        with world.stack.admin_client(create_admin_key(world.stack.db_url)) as admin:
            made = admin.post(
                f"/admin/v1/projects/{PROJECT}/webhooks",
                json={"uri": receiver.url, "eventTypes": ["user.merged"]},
            )
            assert made.status_code == 200, made.text
            secret = made.json()["secret"]
            target_token = world.token()
            world.profile(target_token)
            anon = world.anonymous()
            merged = world.upgrade("merge", anon["profileToken"], target_token)
            assert merged.status_code == 200, merged.text
            target_id = merged.json()["userId"]

            (delivery,) = receiver.wait_for(1)
            payload = delivery.verified(secret)
            assert payload["type"] == "user.merged"
            assert payload["data"]["userId"] == target_id
            assert payload["data"]["data"]["sourceUserId"] == anon["userId"]
            assert payload["data"]["data"]["targetUserId"] == target_id

            target = admin.get(f"/admin/v1/projects/{PROJECT}/users/{target_id}").json()
            assert sorted(i["provider"] for i in target["identities"]) == ["anonymous", "authZero"]
            assert target.get("mergedInto", "") == ""
            tomb = admin.get(f"/admin/v1/projects/{PROJECT}/users/{anon['userId']}").json()
            assert tomb["mergedInto"] == target_id and tomb.get("identities", []) == []
            assert "mergeTime" in tomb
            # The anonymous device's externalId now finds the permanent user.
            found = admin.get(
                f"/admin/v1/projects/{PROJECT}/users:lookup",
                params={"externalId": anon["externalId"]},
            )
            assert found.status_code == 200, found.text
            assert found.json()["userId"] == target_id
    finally:
        receiver.stop()
