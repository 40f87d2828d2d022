"""awsCognito's profileRefreshSeconds through the real edge, against moto:
profile reads and checks serve our synced copy of the attributes and ask
Cognito's GetUser at most once per access token per window; our own writes
show at once; a logout through Identify is refused at once; what changes in
the console (an attribute, a global sign-out) is seen after the window.

One server process, so "this process already asked" is known to the test.
GetUser calls are counted by our own metrics (every boto3 call to Cognito is
an upstream request of provider awsCognito). The windows are an hour (LONG:
"within the window" can never run out during a test), two seconds (SHORT:
the test waits past it) and 0 (ZERO: every read asks).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.harness import Stack, cognito_pool, moto_cognito, refused, scrape, start_stack

REGION = "us-east-1"
PASSWORD = "Passw0rd!one"
LONG, SHORT, ZERO = (str(uuid.uuid4()) for _ in range(3))
WINDOWS = {LONG: 3600, SHORT: 2, ZERO: 0}


@dataclass(frozen=True)
class World:
    stack: Stack
    http: httpx.Client
    cognito: Any  # boto3 cognito-idp client on moto
    pools: dict[str, tuple[str, str]]  # project -> (pool id, client id)

    def upstream(self) -> float:
        return scrape(self.stack).value("identify_upstream_requests_total", provider="awsCognito")

    def signed_in(self, project: str, nickname: str = "before") -> tuple[str, str]:
        """(email, access token) of a user registered and signed in here."""
        email = f"u{uuid.uuid4().hex[:12]}@example.com"
        data = {"email": email, "password": PASSWORD, "nickname": nickname}
        ok(self.http.post("/user", json=body(project, data)))
        return email, self.login(project, email)

    def login(self, project: str, email: str) -> str:
        data = {"email": email, "password": PASSWORD}
        return str(ok(self.http.put("/user/login", json=body(project, data)))["accessToken"])

    def profile(self, project: str, token: str) -> httpx.Response:
        return self.http.get("/user", params=query(project), headers=bearer(token))

    def check(self, project: str, token: str) -> httpx.Response:
        params = query(project, deviceId=str(uuid.uuid4()))
        return self.http.get("/user/check", params=params, headers=bearer(token))

    def nickname(self, project: str, token: str) -> str:
        return str(ok(self.profile(project, token))["nickname"])

    def console_sets(self, project: str, email: str, nickname: str) -> None:
        """An attribute changed in the AWS console, not through Identify."""
        self.cognito.admin_update_user_attributes(
            UserPoolId=self.pools[project][0],
            Username=email,
            UserAttributes=[{"Name": "nickname", "Value": nickname}],
        )


def body(project: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"projectId": project, "strategy": "email", "provider": "awsCognito"}
    if data is not None:
        out["data"] = data
    return out


def query(project: str, **extra: str) -> dict[str, str]:
    return {"projectId": project, "strategy": "email", "provider": "awsCognito", **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["data"])


def past_the_window(project: str) -> None:
    # Monotonic on both sides: the server's marks use time.monotonic() too.
    time.sleep(WINDOWS[project] + 0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    with moto_cognito(REGION) as (url, client):
        pools = {p: cognito_pool(client, f"sync-{n}") for n, p in enumerate(WINDOWS)}
        projects = [
            {
                "id": project,
                "name": f"sync{window}",
                "providers": {
                    "awsCognito": {
                        "region": REGION,
                        "userPoolId": pools[project][0],
                        "clientId": pools[project][1],
                        "endpointUrl": url,
                        "autoConfirm": True,
                        "profileRefreshSeconds": window,
                    }
                },
            }
            for project, window in WINDOWS.items()
        ]
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        stack = start_stack(
            tmp_path_factory.mktemp("cognito-sync"),
            {"projects": projects},
            env=env,
            db_url=db_url,
            workers=1,
        )
        try:
            with stack.client() as http:
                yield World(stack, http, client, pools)
        finally:
            assert stack.stop() == 0, stack.log_text()


def test_within_the_window_reads_and_checks_serve_our_copy_without_asking(world: World) -> None:
    email, token = world.signed_in(LONG)
    before = world.upstream()
    # The login's GetUser synced the copy for this token: nothing more to ask.
    assert world.nickname(LONG, token) == "before"
    ok(world.check(LONG, token))
    assert world.nickname(LONG, token) == "before"
    assert world.upstream() == before

    world.console_sets(LONG, email, "console")
    # Within the window the console's change is not seen yet: the bound the
    # README states, and what spares Cognito's quota.
    assert world.nickname(LONG, token) == "before"
    assert world.check(LONG, token).json()["data"]["nickname"] == "before"
    assert world.upstream() == before


def test_after_the_window_one_read_asks_and_sees_the_console_change(world: World) -> None:
    email, token = world.signed_in(SHORT)
    world.console_sets(SHORT, email, "console")
    past_the_window(SHORT)
    before = world.upstream()
    data = ok(world.profile(SHORT, token))
    assert data["nickname"] == "console" and data["data"]["nickname"] == "console"
    assert world.upstream() == before + 1


def test_with_zero_every_read_asks_cognito(world: World) -> None:
    email, token = world.signed_in(ZERO)
    before = world.upstream()
    for _ in range(3):
        assert world.nickname(ZERO, token) == "before"
    ok(world.check(ZERO, token))
    assert world.upstream() == before + 4
    world.console_sets(ZERO, email, "console")
    assert world.nickname(ZERO, token) == "console"


def test_an_update_through_identify_shows_at_once_for_every_token(world: World) -> None:
    email, first = world.signed_in(LONG)
    second = world.login(LONG, email)
    assert world.nickname(LONG, second) == "before"
    reply = world.http.put("/user", json=body(LONG, {"nickname": "after"}), headers=bearer(first))
    assert ok(reply)["email"] == email
    before = world.upstream()
    # Both tokens are within their window: served from the copy the update
    # wrote through, without asking Cognito.
    assert world.nickname(LONG, first) == "after"
    assert world.nickname(LONG, second) == "after"
    assert world.upstream() == before
    [user] = world.cognito.list_users(UserPoolId=world.pools[LONG][0], Filter=f'email = "{email}"')[
        "Users"
    ]
    assert {"Name": "nickname", "Value": "after"} in user["Attributes"]


def test_a_logout_through_identify_is_refused_at_once_within_the_window(world: World) -> None:
    email, first = world.signed_in(LONG)
    second = world.login(LONG, email)
    for token in (first, second):
        ok(world.profile(LONG, token))
    # Both sessions strictly before the logout's second (a same-second token
    # is refused by hash only when it is the one presented).
    time.sleep(1.01)
    ok(world.http.post("/user/logout", json=body(LONG), headers=bearer(first)))
    for token in (first, second):
        refused(world.profile(LONG, token), 401, "TOKEN_REVOKED")
        refused(world.check(LONG, token), 401, "TOKEN_REVOKED")
    assert world.nickname(LONG, world.login(LONG, email)) == "before"


def test_a_console_sign_out_is_seen_after_the_window_and_stays(world: World) -> None:
    email, old = world.signed_in(SHORT)
    world.cognito.admin_user_global_sign_out(UserPoolId=world.pools[SHORT][0], Username=email)
    past_the_window(SHORT)
    refused(world.profile(SHORT, old), 401, "INVALID_TOKEN")
    # A new sign-in syncs the copy for its own token only: the revoked one
    # is still asked about, and refused.
    new = world.login(SHORT, email)
    assert world.nickname(SHORT, new) == "before"
    refused(world.profile(SHORT, old), 401, "INVALID_TOKEN")
    refused(world.check(SHORT, old), 401, "INVALID_TOKEN")


def test_a_console_sign_out_within_the_window_is_not_seen_yet(world: World) -> None:
    email, token = world.signed_in(LONG)
    world.cognito.admin_user_global_sign_out(UserPoolId=world.pools[LONG][0], Username=email)
    # The documented bound: Cognito is not asked again within the window.
    assert world.nickname(LONG, token) == "before"


def test_simultaneous_first_reads_of_one_token_ask_cognito_once(world: World) -> None:
    # Signed up and in at the pool directly: a token this process never saw.
    email = f"u{uuid.uuid4().hex[:12]}@example.com"
    pool, client = world.pools[LONG]
    world.cognito.sign_up(ClientId=client, Username=email, Password=PASSWORD)
    world.cognito.admin_confirm_sign_up(UserPoolId=pool, Username=email)
    auth = world.cognito.initiate_auth(
        ClientId=client,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": email, "PASSWORD": PASSWORD},
    )
    token = auth["AuthenticationResult"]["AccessToken"]
    world.signed_in(LONG)  # the pool's signing keys fetched: not counted below
    before = world.upstream()

    def read(_: int) -> int:
        with world.stack.client() as http:
            return http.get("/user", params=query(LONG), headers=bearer(token)).status_code

    with ThreadPoolExecutor(8) as pool_:
        assert set(pool_.map(read, range(8))) == {200}
    # Each read either joined the one GetUser in flight or found it done.
    assert world.upstream() == before + 1
    assert ok(world.profile(LONG, token))["email"] == email
    assert world.upstream() == before + 1
