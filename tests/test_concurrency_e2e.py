"""Several server processes on one database, hit at once through the edge:
no duplicate users, no lost logins, no torn profiles, settings changes seen
by every process within the cache bound."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from server.store.db import DatabaseUrl
from tests.harness import Stack, error_reason, start_stack

PROJECT = str(uuid.uuid4())
CACHE_TTL = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    config = {
        "projects": [{"id": PROJECT, "name": "conc", "providers": {"anonymous": {}, "noLogin": {}}}]
    }
    s = start_stack(
        tmp_path_factory.mktemp("conc"),
        config,
        db_url=db_url,
        workers=2,
        env={"IDENTIFY_PROJECT_CACHE_TTL": str(CACHE_TTL)},
    )
    yield s
    s.stop()


def sql(db_url: str, statement: str, **params: object) -> list[tuple[object, ...]]:
    async def run() -> list[tuple[object, ...]]:
        engine = create_async_engine(DatabaseUrl.parse(db_url).driver_url)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(sa.text(statement), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(run())


def parallel(n: int, fn, *args):  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: fn(*args), range(n)))


def test_fifty_first_logins_of_one_device_make_one_user(stack: Stack) -> None:
    device = str(uuid.uuid4())
    body = {"projectId": PROJECT, "provider": "anonymous", "data": {"deviceId": device}}

    def login() -> httpx.Response:
        with httpx.Client(base_url=stack.http, timeout=30) as http:
            return http.put("/v1/user/login", json=body)

    replies = parallel(50, login)
    assert [r.status_code for r in replies] == [200] * 50, {
        r.text for r in replies if r.status_code != 200
    }
    assert len({r.json()["data"]["userId"] for r in replies}) == 1
    rows = sql(
        stack.db_url,
        "SELECT user_id FROM identities WHERE project_id = :p AND provider = 'anonymous' AND subject = :s",
        p=PROJECT,
        s=device,
    )
    assert len(rows) == 1
    # Login history stays complete: every one of the 50 logins was recorded.
    logins = sql(
        stack.db_url,
        "SELECT count(*) FROM logins WHERE project_id = :p AND user_id = :u",
        p=PROJECT,
        u=rows[0][0],
    )
    assert logins[0][0] == 50


def test_concurrent_app_profile_writes_never_interleave(stack: Stack) -> None:
    with stack.client() as http:
        external_id = http.post("/user", json={"projectId": PROJECT, "provider": "noLogin"}).json()[
            "externalId"
        ]
    profiles = [{"writer": i, "payload": [i] * 200, "nested": {"writer": i}} for i in range(20)]

    def write(profile: dict[str, object]) -> int:
        with httpx.Client(base_url=stack.http, timeout=30) as http:
            body = {
                "projectId": PROJECT,
                "provider": "noLogin",
                "externalId": external_id,
                "data": {"appProfile": profile},
            }
            return http.put("/v1/user", json=body).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(write, profiles))
    assert codes == [200] * 20
    with stack.client() as http:
        final = http.get(
            "/user", params={"projectId": PROJECT, "provider": "noLogin", "externalId": external_id}
        ).json()
    # Whole-object replacement: exactly one writer's profile, never a mix.
    assert final["appProfile"] in profiles


def test_settings_change_reaches_every_process_within_the_bound(stack: Stack) -> None:
    other = str(uuid.uuid4())
    sql(
        stack.db_url,
        "INSERT INTO projects (project_id, name, secret, providers, created_at, updated_at) "
        "VALUES (:p, 'late', :s, :prov, 0, 0)",
        p=other,
        s="ab" * 32,
        prov='{"anonymous": {}, "noLogin": {}}',
    )
    time.sleep(CACHE_TTL + 0.5)
    # Both processes (Envoy balances across them) now serve noLogin there.
    with stack.client() as http:
        codes = {
            http.post("/user", json={"projectId": other, "provider": "noLogin"}).status_code
            for _ in range(10)
        }
    assert codes == {200}
    sql(
        stack.db_url,
        "UPDATE projects SET providers = :prov WHERE project_id = :p",
        p=other,
        prov='{"anonymous": {}}',
    )
    time.sleep(CACHE_TTL + 0.5)
    with stack.client() as http:
        replies = [
            http.post("/user", json={"projectId": other, "provider": "noLogin"}) for _ in range(10)
        ]
    assert {r.status_code for r in replies} == {400}
    assert {error_reason(r.json()) for r in replies} == {"PROVIDER_NOT_ENABLED"}
