"""Upgrading anonymous users to awsCognito, through the real edge against
moto's Cognito server: link by password login (same userId, devices,
history) or by access token, sign-up then login with data.anonymousToken,
conflict (nothing of the anonymous user changes), merge by each appProfile
policy and its idempotence, the device refused after an upgrade, a wrong
password, a token of another project."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from server.store.schema import audit_events, users
from tests.harness import (
    Stack,
    cognito_settings,
    in_store,
    moto_cognito,
    refused,
    start_stack,
    user_rows,
)

REGION = "us-east-1"
PROJECT = str(uuid.uuid4())  # anonymous + awsCognito
OTHER = str(uuid.uuid4())  # anonymous + awsCognito on the same pool
PASSWORD = "Passw0rd!upgrade"
WRONG = "Wr0ng!upgrade"
PREFIXES = ["/v1", ""]
PROVIDERS = ["anonymous", "awsCognito"]


def new_email() -> str:
    return f"up{uuid.uuid4().hex[:12]}@example.com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def info_of(body: dict[str, Any]) -> dict[str, Any]:
    [info] = [d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    return dict(info)


@dataclass
class World:
    stack: Stack
    http: httpx.Client
    pool_id: str
    client_id: str
    cognito: Any

    @property
    def db(self) -> str:
        return self.stack.db_url

    def anonymous(self, project: str = PROJECT, device: str | None = None) -> dict[str, Any]:
        """A fresh anonymous user (a new device), signed in: its session."""
        device = device or str(uuid.uuid4())
        body = {"projectId": project, "provider": "anonymous", "data": {"deviceId": device}}
        reply = self.http.put("/user/login", json=body)
        assert reply.status_code == 200, reply.text
        return dict(reply.json()["data"])

    def anonymous_login(self, project: str, device: str) -> httpx.Response:
        body = {"projectId": project, "provider": "anonymous", "data": {"deviceId": device}}
        return self.http.put("/user/login", json=body)

    def upstream_user(self) -> str:
        """A confirmed user of the pool who never called us (signed up in
        the hosted UI, say): unknown to our store. Its email."""
        email = new_email()
        self.cognito.sign_up(ClientId=self.client_id, Username=email, Password=PASSWORD)
        self.cognito.admin_confirm_sign_up(UserPoolId=self.pool_id, Username=email)
        return email

    def upstream_token(self, email: str) -> str:
        """An access token straight from the pool, not through us."""
        auth = self.cognito.initiate_auth(
            ClientId=self.client_id,
            AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": email, "PASSWORD": PASSWORD},
        )
        return str(auth["AuthenticationResult"]["AccessToken"])

    def body(self, data: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"projectId": PROJECT, "strategy": "email", "provider": "awsCognito"}
        if data is not None:
            out["data"] = data
        return {**out, **top}

    def sign_up(self, email: str) -> dict[str, Any]:
        reply = self.http.post("/user", json=self.body({"email": email, "password": PASSWORD}))
        assert reply.status_code == 200, reply.text
        return dict(reply.json()["data"])

    def login(self, email: str, password: str = PASSWORD, **data: Any) -> httpx.Response:
        return self.http.put(
            "/user/login", json=self.body({"email": email, "password": password, **data})
        )

    def session(self, email: str, **data: Any) -> dict[str, Any]:
        reply = self.login(email, **data)
        assert reply.status_code == 200, reply.text
        return dict(reply.json()["data"])

    def upgrade(
        self,
        verb: str,
        anonymous_token: str,
        *,
        email: str | None = None,
        password: str = PASSWORD,
        token: str | None = None,
        prefix: str = "/v1",
        **extra: Any,
    ) -> httpx.Response:
        """POST :link or :merge with the credential as awsCognito's own
        calls carry it: data.email/password, or the access token as Bearer."""
        data = {"email": email, "password": password} if email else None
        body = self.body(data, anonymousToken=anonymous_token, **extra)
        return self.http.post(
            f"{prefix}/user:{verb}", json=body, headers=bearer(token) if token else {}
        )

    def profile(self, token: str) -> dict[str, Any]:
        reply = self.http.get(
            "/user",
            params={"projectId": PROJECT, "strategy": "email", "provider": "awsCognito"},
            headers=bearer(token),
        )
        assert reply.status_code == 200, reply.text
        return dict(reply.json()["data"])

    def set_app_profile(self, user_id: str, app_profile: dict[str, Any] | None) -> None:
        """Neither anonymous nor awsCognito writes appProfile: set it as an
        earlier call of the app would have left it."""

        def run(conn: sa.Connection) -> None:
            conn.execute(
                users.update().where(users.c.user_id == user_id).values(app_profile=app_profile)
            )

        in_store(self.db, run, write=True)

    def app_profile(self, user_id: str) -> Any:
        def run(conn: sa.Connection) -> Any:
            return conn.execute(
                sa.select(users.c.app_profile).where(users.c.user_id == user_id)
            ).scalar_one()

        return in_store(self.db, run)


def counts_of(db_url: str, user_id: str) -> tuple[int, int]:
    rows = user_rows(db_url, user_id)
    return len(rows["devices"]), len(rows["logins"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    with moto_cognito(REGION) as (url, client):
        cognito = {
            **cognito_settings(client, url, REGION, "upgrade"),
            "accessKeyId": "testing",
            "secretAccessKey": "testing",
        }
        providers = {"anonymous": {}, "awsCognito": cognito}
        config = {
            "projects": [
                {"id": PROJECT, "name": "upgrade", "providers": providers},
                {"id": OTHER, "name": "other", "providers": providers},
            ]
        }
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        stack = start_stack(
            tmp_path_factory.mktemp("upgrade-cognito"), config, env=env, db_url=db_url
        )
        w = World(stack, stack.client(), cognito["userPoolId"], cognito["clientId"], client)
        try:
            yield w
        finally:
            w.http.close()
            code = stack.stop()
            assert code == 0, stack.log_text()


# ------------------------------------------------------------------ link
@pytest.mark.parametrize("prefix", PREFIXES)
def test_link_by_password_keeps_the_user_id_devices_and_history(world: World, prefix: str) -> None:
    anon = world.anonymous()
    assert world.anonymous_login(PROJECT, anon["deviceId"]).status_code == 200  # a second login
    email = world.upstream_user()
    reply = world.upgrade("link", anon["profileToken"], email=email, prefix=prefix)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["result"] == 1
    assert out["message"] == "identity linked"
    assert out["userId"] == anon["userId"]
    assert out.get("mergedUserId", "") == ""
    assert [i["provider"] for i in out["linkedIdentities"]] == PROVIDERS
    # The reply's data is the Cognito login's session, for the anonymous user.
    session = out["data"]
    assert session["userId"] == anon["userId"]
    assert session["profileToken"] and session["signature"] and session["accessToken"]
    assert session["deviceId"] != anon["deviceId"]  # the login minted one
    # The Cognito identity now finds the anonymous user: its devices, its history.
    profile = world.profile(session["accessToken"])
    assert profile["data"]["userId"] == anon["userId"]
    assert {d["deviceId"] for d in profile["devices"]} == {anon["deviceId"], session["deviceId"]}
    assert len(profile["data"]["loginHistory"]) == 3  # two anonymous, one Cognito
    assert [i["provider"] for i in profile["linkedIdentities"]] == PROVIDERS
    # A plain login later is the same user.
    assert world.session(email)["userId"] == anon["userId"]


def test_link_by_access_token_answers_the_profile(world: World) -> None:
    anon = world.anonymous()
    email = world.upstream_user()
    token = world.upstream_token(email)
    reply = world.upgrade("link", anon["profileToken"], token=token)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["userId"] == anon["userId"]
    assert out["message"] == "identity linked"
    assert [i["provider"] for i in out["linkedIdentities"]] == PROVIDERS
    # The reply's data is GET /user's for that user.
    data = out["data"]
    assert data["email"] == email
    assert data["data"]["userId"] == anon["userId"]
    assert [d["deviceId"] for d in data["devices"]] == [anon["deviceId"]]
    assert [i["provider"] for i in data["linkedIdentities"]] == PROVIDERS
    assert data == world.profile(token)
    # Linking the same identity again changes nothing and answers the same.
    before = user_rows(world.db, anon["userId"])
    again = world.upgrade("link", anon["profileToken"], token=token)
    assert again.status_code == 200, again.text
    assert again.json()["userId"] == anon["userId"]
    assert user_rows(world.db, anon["userId"]) == before


@pytest.mark.parametrize("signed_up_with_us", [True, False], ids=["sign-up", "hosted-ui"])
def test_login_with_anonymous_token_upgrades_in_one_step(
    world: World, signed_up_with_us: bool
) -> None:
    anon = world.anonymous()
    registered = None
    if signed_up_with_us:
        email = new_email()
        # Our sign-up makes its user at once (the reply names it), never
        # signed in: the login carrying the anonymous token adopts its identity.
        registered = world.sign_up(email)["userId"]
        assert registered != anon["userId"]
    else:
        email = world.upstream_user()
    session = world.session(email, anonymousToken=anon["profileToken"])
    assert session["userId"] == anon["userId"]
    assert session["profileToken"] and session["accessToken"]
    identities = user_rows(world.db, anon["userId"])["identities"]
    assert len(identities) == 2
    if registered is not None:
        # The unused user is a tombstone pointing at the anonymous user.
        unused = user_rows(world.db, registered)
        assert unused["identities"] == [] and unused["devices"] == [] and unused["logins"] == []
        merged_into = in_store(
            world.db,
            lambda c: c.execute(
                sa.select(users.c.merged_into).where(users.c.user_id == registered)
            ).scalar_one(),
        )
        assert merged_into == anon["userId"]
    # A plain login later signs the same user in.
    later = world.session(email)
    assert later["userId"] == anon["userId"]
    providers = [i["provider"] for i in world.profile(later["accessToken"])["linkedIdentities"]]
    assert providers == PROVIDERS


# -------------------------------------------------------------- conflict
@pytest.mark.parametrize("by", ["password", "accessToken"])
def test_conflict_leaves_the_anonymous_user_exactly_as_it_was(world: World, by: str) -> None:
    email = world.upstream_user()
    owner = world.session(email)  # the identity's own user exists first
    anon = world.anonymous()
    before = user_rows(world.db, anon["userId"])
    owner_before = user_rows(world.db, owner["userId"])
    credential = {"email": email} if by == "password" else {"token": owner["accessToken"]}
    body = refused(
        world.upgrade("link", anon["profileToken"], **credential), 409, "IDENTITY_ALREADY_LINKED"
    )
    info = info_of(body)
    assert info["metadata"]["userId"] == owner["userId"]
    assert info["metadata"]["provider"] == "awsCognito"
    assert user_rows(world.db, anon["userId"]) == before
    assert user_rows(world.db, owner["userId"]) == owner_before
    # The same through a login carrying the anonymous token.
    body = refused(
        world.login(email, anonymousToken=anon["profileToken"]), 409, "IDENTITY_ALREADY_LINKED"
    )
    assert info_of(body)["metadata"]["userId"] == owner["userId"]
    assert user_rows(world.db, anon["userId"]) == before
    # The anonymous device still signs its own user in.
    again = world.anonymous_login(PROJECT, anon["deviceId"])
    assert again.status_code == 200, again.text
    assert again.json()["data"]["userId"] == anon["userId"]


# ----------------------------------------------------------------- merge
SOURCE_PROFILE = {"level": 1, "coins": 5}
TARGET_PROFILE = {"level": 9, "name": "target"}


@pytest.mark.parametrize(
    ("policy", "merged"),
    [
        ("", {"level": 9, "coins": 5, "name": "target"}),
        ("keepTarget", {"level": 9, "coins": 5, "name": "target"}),
        ("preferSource", {"level": 1, "coins": 5, "name": "target"}),
    ],
)
def test_merge_by_password_moves_devices_and_history(
    world: World, policy: str, merged: dict[str, Any]
) -> None:
    email = world.upstream_user()
    target = world.session(email)
    target_id = target["userId"]
    anon = world.anonymous()
    assert world.anonymous_login(PROJECT, anon["deviceId"]).status_code == 200
    world.set_app_profile(anon["userId"], SOURCE_PROFILE)
    world.set_app_profile(target_id, TARGET_PROFILE)
    assert counts_of(world.db, anon["userId"]) == (1, 2)
    assert counts_of(world.db, target_id) == (1, 1)

    extra = {"policy": policy} if policy else {}
    reply = world.upgrade("merge", anon["profileToken"], email=email, **extra)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["message"] == "users merged"
    assert out["userId"] == target_id
    assert out["mergedUserId"] == anon["userId"]
    assert sorted(i["provider"] for i in out["linkedIdentities"]) == PROVIDERS
    session = out["data"]  # the login's session, for the target
    assert session["userId"] == target_id and session["profileToken"] and session["signature"]
    # Its device, the anonymous one, and the one this login minted; its
    # login, the anonymous two, and this one.
    assert counts_of(world.db, target_id) == (3, 4)
    devices = {d["deviceId"] for d in world.profile(session["accessToken"])["devices"]}
    assert devices == {target["deviceId"], anon["deviceId"], session["deviceId"]}
    assert world.app_profile(target_id) == merged
    # A tombstone, not deleted: no devices, no logins, no identities left.
    tomb = user_rows(world.db, anon["userId"])
    assert len(tomb["users"]) == 1
    assert tomb["devices"] == [] and tomb["logins"] == [] and tomb["identities"] == []
    merged_into = in_store(
        world.db,
        lambda c: c.execute(
            sa.text("SELECT merged_into FROM users WHERE user_id = :u"), {"u": anon["userId"]}
        ).scalar_one(),
    )
    assert merged_into == target_id
    # The audit trail has it, under the target.
    events = in_store(
        world.db,
        lambda c: c.execute(
            sa.select(audit_events.c.provider, audit_events.c.data).where(
                audit_events.c.project_id == PROJECT,
                audit_events.c.type == "user.merged",
                audit_events.c.user_id == target_id,
            )
        ).all(),
    )
    [(provider, data)] = events
    assert provider == "awsCognito"
    assert data["sourceUserId"] == anon["userId"] and data["targetUserId"] == target_id
    assert data["movedDevices"] == 1 and data["movedLogins"] == 2
    assert data["policy"] == (policy or "keepTarget")

    # The same merge again: answered as done, nothing moved again.
    again = world.upgrade("merge", anon["profileToken"], email=email, **extra)
    assert again.status_code == 200, again.text
    assert again.json()["message"] == "users were merged already"
    assert again.json()["userId"] == target_id
    assert again.json()["mergedUserId"] == anon["userId"]
    assert counts_of(world.db, target_id) == (4, 5)  # only this login's device and login
    # ... and by access token, which signs nobody in: the target's rows unchanged.
    before = user_rows(world.db, target_id)
    by_token = world.upgrade("merge", anon["profileToken"], token=session["accessToken"], **extra)
    assert by_token.status_code == 200, by_token.text
    assert by_token.json()["message"] == "users were merged already"
    assert by_token.json()["data"]["data"]["userId"] == target_id
    assert user_rows(world.db, target_id) == before
    assert user_rows(world.db, anon["userId"]) == tomb

    # The device alone no longer signs in.
    body = refused(world.anonymous_login(PROJECT, anon["deviceId"]), 409, "ACCOUNT_UPGRADED")
    assert info_of(body)["metadata"]["provider"] == "awsCognito"
    # A link of the merged anonymous user has nothing left to link.
    body = refused(
        world.upgrade("link", anon["profileToken"], email=email), 409, "ANONYMOUS_USER_MERGED"
    )
    assert info_of(body)["metadata"]["mergedInto"] == target_id


def test_merge_by_access_token_then_again_changes_nothing(world: World) -> None:
    email = world.upstream_user()
    target = world.session(email)
    anon = world.anonymous()
    reply = world.upgrade("merge", anon["profileToken"], token=target["accessToken"])
    assert reply.status_code == 200, reply.text
    assert reply.json()["message"] == "users merged"
    # The reply's data is GET /user's, for the target, with the moved device.
    data = reply.json()["data"]
    assert data["data"]["userId"] == target["userId"]
    assert {d["deviceId"] for d in data["devices"]} == {target["deviceId"], anon["deviceId"]}
    assert counts_of(world.db, target["userId"]) == (2, 2)
    before = user_rows(world.db, target["userId"])
    again = world.upgrade("merge", anon["profileToken"], token=target["accessToken"])
    assert again.status_code == 200, again.text
    assert again.json()["message"] == "users were merged already"
    assert user_rows(world.db, target["userId"]) == before


def test_merge_with_policy_fail_and_two_app_profiles_changes_nothing(world: World) -> None:
    email = world.upstream_user()
    target = world.session(email)
    anon = world.anonymous()
    world.set_app_profile(anon["userId"], SOURCE_PROFILE)
    world.set_app_profile(target["userId"], TARGET_PROFILE)
    before = user_rows(world.db, anon["userId"])
    target_before = user_rows(world.db, target["userId"])
    for credential in ({"email": email}, {"token": target["accessToken"]}):
        body = refused(
            world.upgrade("merge", anon["profileToken"], policy="fail", **credential),
            409,
            "APP_PROFILE_CONFLICT",
        )
        assert info_of(body)["metadata"]["policy"] == "fail"
        assert user_rows(world.db, anon["userId"]) == before
        assert user_rows(world.db, target["userId"]) == target_before
    # With only one appProfile, `fail` has nothing to refuse.
    world.set_app_profile(anon["userId"], None)
    reply = world.upgrade("merge", anon["profileToken"], email=email, policy="fail")
    assert reply.status_code == 200, reply.text
    assert reply.json()["message"] == "users merged"
    assert world.app_profile(target["userId"]) == TARGET_PROFILE


# --------------------------------------------------------- after upgrade
def test_device_login_after_link_is_refused(world: World) -> None:
    anon = world.anonymous()
    linked = world.upgrade("link", anon["profileToken"], email=world.upstream_user())
    assert linked.status_code == 200, linked.text
    before = user_rows(world.db, anon["userId"])
    body = refused(world.anonymous_login(PROJECT, anon["deviceId"]), 409, "ACCOUNT_UPGRADED")
    assert info_of(body)["metadata"]["provider"] == "awsCognito"
    assert user_rows(world.db, anon["userId"]) == before
    # And the upgraded user cannot be upgraded again with another account.
    body = refused(
        world.upgrade("link", anon["profileToken"], email=world.upstream_user()),
        409,
        "ACCOUNT_UPGRADED",
    )
    assert info_of(body)["metadata"]["provider"] == "awsCognito"


# -------------------------------------------------------------- refusals
def test_wrong_password_is_the_usual_refusal_and_changes_nothing(world: World) -> None:
    email = world.upstream_user()
    usual = refused(world.login(email, WRONG), 401, "INVALID_CREDENTIALS")
    anon = world.anonymous()
    before = user_rows(world.db, anon["userId"])
    linking = refused(
        world.upgrade("link", anon["profileToken"], email=email, password=WRONG),
        401,
        "INVALID_CREDENTIALS",
    )
    assert linking["message"] == usual["message"]
    refused(
        world.login(email, WRONG, anonymousToken=anon["profileToken"]), 401, "INVALID_CREDENTIALS"
    )
    assert user_rows(world.db, anon["userId"]) == before
    # The right password still links afterwards.
    reply = world.upgrade("link", anon["profileToken"], email=email)
    assert reply.status_code == 200, reply.text
    assert reply.json()["userId"] == anon["userId"]


def test_an_anonymous_token_of_another_project_links_nothing(world: World) -> None:
    anon = world.anonymous(OTHER)
    email = world.upstream_user()
    before = user_rows(world.db, anon["userId"])
    refused(
        world.upgrade("link", anon["profileToken"], email=email), 401, "INVALID_ANONYMOUS_TOKEN"
    )
    refused(
        world.upgrade("merge", anon["profileToken"], email=email), 401, "INVALID_ANONYMOUS_TOKEN"
    )
    refused(world.login(email, anonymousToken=anon["profileToken"]), 401, "INVALID_ANONYMOUS_TOKEN")
    assert user_rows(world.db, anon["userId"]) == before
    # Nothing was linked: the Cognito account signs in as a new user of its own.
    assert world.session(email)["userId"] != anon["userId"]
    # A Cognito user's profileToken is no anonymous token either.
    owner = world.session(world.upstream_user())
    refused(
        world.upgrade("link", owner["profileToken"], email=email), 401, "INVALID_ANONYMOUS_TOKEN"
    )
