"""Racing upgrades of one anonymous user, through the edge, against two
server processes and a real database: two links, a link and a merge, ten
identical merges. Exactly one wins, the others get a documented 409 (or, for
the same merge said again, its idempotent answer), never a 5xx, and the rows
are whole: never half linked, never half merged."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.fakes.oidc_issuer import FakeIssuer
from tests.harness import Stack, error_reason, in_store, start_stack, user_rows

AUD = "https://api.upgrade-race.test"
PROJECT = str(uuid.uuid4())  # anonymous + authZero


@dataclass
class World:
    stack: Stack
    http: httpx.Client
    issuer: FakeIssuer

    def anonymous(self) -> dict[str, Any]:
        body = {
            "projectId": PROJECT,
            "provider": "anonymous",
            "data": {"deviceId": str(uuid.uuid4())},
        }
        reply = self.http.put("/user/login", json=body)
        assert reply.status_code == 200, reply.text
        return dict(reply.json()["data"])

    def token(self, sub: str) -> str:
        return self.issuer.mint(sub=sub, aud=AUD)

    def owner(self) -> tuple[str, str]:
        """An authZero user of its own: (its subject, its userId)."""
        sub = f"auth0|{uuid.uuid4().hex}"
        reply = self.http.get(
            "/user",
            params={"projectId": PROJECT, "provider": "authZero"},
            headers={"Authorization": f"Bearer {self.token(sub)}"},
        )
        assert reply.status_code == 200, reply.text
        [user_id] = holders_of(self.stack.db_url, sub)
        return sub, user_id

    def upgrade(self, verb: str, anonymous_token: str, sub: str) -> Callable[[], httpx.Response]:
        """The call, ready to fire (on its own connection, from any thread)."""
        body = {"projectId": PROJECT, "provider": "authZero", "anonymousToken": anonymous_token}
        headers = {"Authorization": f"Bearer {self.token(sub)}"}

        def call() -> httpx.Response:
            with self.stack.client() as http:
                return http.post(f"/v1/user:{verb}", json=body, headers=headers)

        return call


def at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """The calls fired together (a barrier releases every thread at once)."""
    start = threading.Barrier(len(calls))

    def fire(call: Callable[[], httpx.Response]) -> httpx.Response:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(fire, calls))


def user_row(db_url: str, user_id: str) -> Any:
    return in_store(
        db_url,
        lambda c: c.execute(
            sa.text("SELECT merged_into FROM users WHERE user_id = :u"), {"u": user_id}
        ).one(),
    )


def holders_of(db_url: str, subject: str) -> list[str]:
    """Who holds the authZero identity `subject` (at most one user)."""
    return in_store(
        db_url,
        lambda c: [
            str(r[0])
            for r in c.execute(
                sa.text(
                    "SELECT user_id FROM identities"
                    " WHERE project_id = :p AND provider = 'authZero' AND subject = :s"
                ),
                {"p": PROJECT, "s": subject},
            )
        ],
    )


def merged_events(db_url: str, source_id: str) -> list[dict[str, Any]]:
    def run(conn: sa.Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            sa.text(
                "SELECT user_id, data FROM audit_events"
                " WHERE project_id = :p AND type = 'user.merged'"
            ),
            {"p": PROJECT},
        )
        out = []
        for user_id, data in rows:
            data = data if isinstance(data, dict) else json.loads(data)
            if data.get("sourceUserId") == source_id:
                out.append({"userId": user_id, **data})
        return out

    return in_store(db_url, run)


def outcomes(replies: list[httpx.Response]) -> list[tuple[int, str | None]]:
    return [
        (r.status_code, error_reason(r.json()) if r.status_code != 200 else None) for r in replies
    ]


def assert_no_5xx(replies: list[httpx.Response]) -> None:
    assert all(r.status_code < 500 for r in replies), [r.text for r in replies]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    issuer = FakeIssuer()
    config = {
        "projects": [
            {
                "id": PROJECT,
                "name": "upgrade races",
                "providers": {
                    "anonymous": {},
                    "authZero": {
                        "issuer": issuer.issuer,
                        "jwksUri": issuer.jwks_url,
                        "audience": AUD,
                    },
                },
            }
        ]
    }
    stack = start_stack(tmp_path_factory.mktemp("upgrade-race"), config, db_url=db_url, workers=2)
    w = World(stack, stack.client(), issuer)
    try:
        yield w
    finally:
        w.http.close()
        code = stack.stop()
        issuer.stop()
        assert code == 0, stack.log_text()


def test_two_links_of_one_anonymous_user_one_wins(world: World) -> None:
    db = world.stack.db_url
    for _ in range(10):
        anon = world.anonymous()
        subs = [f"auth0|{uuid.uuid4().hex}" for _ in range(2)]
        replies = at_once([world.upgrade("link", anon["profileToken"], s) for s in subs])
        assert_no_5xx(replies)
        assert sorted(r.status_code for r in replies) == [200, 409], [r.text for r in replies]
        [won] = [i for i, r in enumerate(replies) if r.status_code == 200]
        lost = replies[1 - won]
        assert error_reason(lost.json()) == "ACCOUNT_UPGRADED", lost.text
        assert replies[won].json()["userId"] == anon["userId"]
        rows = user_rows(db, anon["userId"])
        assert len(rows["identities"]) == 2
        assert holders_of(db, subs[won]) == [anon["userId"]]
        assert holders_of(db, subs[1 - won]) == []
        assert user_row(db, anon["userId"]).merged_into is None


def test_a_link_racing_a_merge_one_wins_whole(world: World) -> None:
    db = world.stack.db_url
    rounds = [(world.owner(), world.anonymous()) for _ in range(6)]
    time.sleep(1.1)  # the anonymous tokens older than the merge's end of sessions
    for (target_sub, target_id), anon in rounds:
        fresh = f"auth0|{uuid.uuid4().hex}"
        link, merge = at_once(
            [
                world.upgrade("link", anon["profileToken"], fresh),
                world.upgrade("merge", anon["profileToken"], target_sub),
            ]
        )
        assert_no_5xx([link, merge])
        assert sorted([link.status_code, merge.status_code]) == [200, 409], (link.text, merge.text)
        rows = user_rows(db, anon["userId"])
        target = user_rows(db, target_id)
        merged_into = user_row(db, anon["userId"]).merged_into
        if link.status_code == 200:
            assert error_reason(merge.json()) == "ACCOUNT_UPGRADED", merge.text
            assert merged_into is None
            assert len(rows["identities"]) == 2 and len(rows["devices"]) == 1
            assert len(rows["logins"]) == 1
            assert holders_of(db, fresh) == [anon["userId"]]
            assert len(target["identities"]) == 1 and target["devices"] == []
            assert merged_events(db, anon["userId"]) == []
        else:
            assert error_reason(link.json()) == "ANONYMOUS_USER_MERGED", link.text
            assert merge.json()["userId"] == target_id
            assert merged_into == target_id
            assert (rows["devices"], rows["logins"], rows["identities"]) == ([], [], [])
            assert holders_of(db, fresh) == []
            assert len(target["identities"]) == 2 and len(target["devices"]) == 1
            assert len(target["logins"]) == 1


def test_ten_identical_merges_merge_once(world: World) -> None:
    db = world.stack.db_url
    target_sub, target_id = world.owner()
    anon = world.anonymous()
    # The merge ends the anonymous sessions (valid_after = now): a token
    # issued a second before is still the proof of the merges said again.
    time.sleep(1.1)
    replies = at_once([world.upgrade("merge", anon["profileToken"], target_sub)] * 10)
    assert_no_5xx(replies)
    assert [r.status_code for r in replies] == [200] * 10, outcomes(replies)
    messages = sorted(r.json()["message"] for r in replies)
    assert messages == ["users merged"] + ["users were merged already"] * 9
    assert {(r.json()["userId"], r.json()["mergedUserId"]) for r in replies} == {
        (target_id, anon["userId"])
    }
    [event] = merged_events(db, anon["userId"])
    assert (event["userId"], event["targetUserId"]) == (target_id, target_id)
    assert (event["movedDevices"], event["movedLogins"]) == (1, 1)
    assert user_row(db, anon["userId"]).merged_into == target_id
    target = user_rows(db, target_id)
    assert len(target["identities"]) == 2 and len(target["devices"]) == 1
