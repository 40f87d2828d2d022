"""Anonymous retention on a real stack (SQLite, and PostgreSQL when
IDENTIFY_TEST_POSTGRES_URL is set): a project's `anonymousRetentionDays`
(YAML or admin API) purges its anonymous users with no login for that long,
with their devices, logins and identities, one `user.purged` event each, in
small transactions. Fresh, upgraded and merged users stay, and so does
everyone in a project without the setting.

Users sign up through the public edge and are then aged in the store. The
purge is every server process's housekeeping (every 10 minutes) and no call
starts it, so the tests run it on the stack's database themselves, counting
its write transactions through the store's `observe` hook."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from providers.registry import Registry
from server import config as config_mod
from server.clock import now as clock_now
from server.events import types as t
from server.store import retention
from server.store.db import open_database
from server.store.schema import audit_events, devices, identities, logins, projects, users
from tests.harness import Stack, create_admin_key, identify_cli, in_store, refused, start_stack

DAY = 86400
# One project per test: a purge run covers every project of the database.
PURGED, FOREVER, RACE, BATCH, LIMITED = (str(uuid.uuid4()) for _ in range(5))
ANONYMOUS = {"anonymous": {}}


@dataclass
class World:
    stack: Stack
    public: httpx.Client
    admin: httpx.Client


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    def project(pid: str, days: int | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": pid, "name": "retention", "providers": ANONYMOUS}
        if days is not None:
            entry["anonymousRetentionDays"] = days
        return entry

    config = {
        "projects": [
            project(PURGED, 30),
            project(FOREVER, None),
            project(RACE, 30),
            project(BATCH, 7),
            project(LIMITED, 7),
        ]
    }
    stack = start_stack(tmp_path_factory.mktemp("retention"), config, db_url=db_url)
    public = stack.client()
    admin = stack.admin_client(create_admin_key(db_url))
    try:
        yield World(stack, public, admin)
    finally:
        public.close()
        admin.close()
        stack.stop()


def sign_up(world: World, project: str, device_id: str | None = None) -> str:
    body = {
        "projectId": project,
        "provider": "anonymous",
        "data": {"deviceId": device_id or str(uuid.uuid4())},
    }
    reply = world.public.put("/v1/user/login", json=body)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["data"]["userId"])


def age(
    db_url: str, project: str, user_id: str, *, days: int, last_login_days: int | None = None
) -> int:
    """Move the user's sign-up `days` back, and its logins `last_login_days`
    back (default: the same); returns the last login's time."""
    signed_up = clock_now() - days * DAY
    last = clock_now() - (days if last_login_days is None else last_login_days) * DAY

    def run(conn: sa.Connection) -> None:
        def mine(table: sa.Table) -> Any:
            return table.update().where(table.c.project_id == project, table.c.user_id == user_id)

        conn.execute(mine(users).values(created_at=signed_up, updated_at=signed_up))
        conn.execute(mine(identities).values(linked_at=signed_up))
        conn.execute(mine(devices).values(sign_up=signed_up, last_login=last, time_stamp=last))
        conn.execute(mine(logins).values(at=last))

    in_store(db_url, run, write=True)
    return last


def rows_of(db_url: str, project: str, user_id: str) -> dict[str, int]:
    def run(conn: sa.Connection) -> dict[str, int]:
        return {
            table.name: conn.execute(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.project_id == project, table.c.user_id == user_id)
            ).scalar_one()
            for table in (users, identities, devices, logins)
        }

    return in_store(db_url, run)


def purged_events(db_url: str, project: str) -> list[Any]:
    return in_store(
        db_url,
        lambda conn: list(
            conn.execute(
                sa.select(audit_events).where(
                    audit_events.c.project_id == project, audit_events.c.type == t.USER_PURGED
                )
            )
        ),
    )


@dataclass
class Run:
    purged: int
    writes: int


def purge(db_url: str, *, before_write: Callable[[], None] | None = None, **kwargs: Any) -> Run:
    """One purge run on the stack's database; `before_write` runs before
    the first write transaction, after the read that picked candidates."""
    writes = 0

    @contextlib.contextmanager
    def observe(kind: str, _asker: str) -> Iterator[None]:
        nonlocal writes
        if kind == "write":
            writes += 1
            if writes == 1 and before_write is not None:
                before_write()
        yield

    async def run() -> int:
        database = open_database(db_url, pool_size=1)
        database.observe = observe
        try:
            return await retention.purge_stale_anonymous(
                database, now=clock_now(), **{"pause": 0, **kwargs}
            )
        finally:
            await database.dispose()

    return Run(asyncio.run(run()), writes)


def elsewhere(fn: Callable[[], Any]) -> None:
    """`fn` on a thread of its own (its own event loop), waited for: another
    process's change, made while a purge run is between two steps."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised below, on the test's thread
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    if failure:
        raise failure[0]


def add_identity(db_url: str, project: str, user_id: str, provider: str = "oidc") -> None:
    """What linking a permanent account writes (an upgrade)."""
    subject = str(uuid.uuid4())
    in_store(
        db_url,
        lambda conn: conn.execute(
            identities.insert().values(
                project_id=project,
                provider=provider,
                subject=subject,
                user_id=user_id,
                external_id=uuid.uuid4().hex,
                attributes={},
                linked_at=clock_now(),
            )
        ),
        write=True,
    )


# -------------------------------------------------------------- the purge
def test_a_stale_anonymous_user_goes_with_its_rows_and_one_event_and_the_rest_stays(
    world: World, db_url: str
) -> None:
    device = str(uuid.uuid4())
    stale = sign_up(world, PURGED, device)
    sign_up(world, PURGED, device)  # a second login: two logins rows
    last = age(db_url, PURGED, stale, days=31)
    fresh = sign_up(world, PURGED)
    age(db_url, PURGED, fresh, days=29)
    # Signed up long ago, but signed in since: its activity is the login.
    returning = sign_up(world, PURGED)
    age(db_url, PURGED, returning, days=400, last_login_days=1)
    upgraded = sign_up(world, PURGED)
    age(db_url, PURGED, upgraded, days=31)
    add_identity(db_url, PURGED, upgraded)
    # A merged user's tombstone (here still holding its anonymous identity).
    tombstone = sign_up(world, PURGED)
    age(db_url, PURGED, tombstone, days=31)
    in_store(
        db_url,
        lambda conn: conn.execute(
            users.update()
            .where(users.c.project_id == PURGED, users.c.user_id == tombstone)
            .values(merged_into=upgraded, merged_at=clock_now() - 31 * DAY)
        ),
        write=True,
    )
    # No setting: kept forever, however old.
    ancient = sign_up(world, FOREVER)
    age(db_url, FOREVER, ancient, days=4000)
    assert rows_of(db_url, PURGED, stale) == {
        "users": 1,
        "identities": 1,
        "devices": 1,
        "logins": 2,
    }

    assert purge(db_url) == Run(purged=1, writes=1)

    assert rows_of(db_url, PURGED, stale) == {
        "users": 0,
        "identities": 0,
        "devices": 0,
        "logins": 0,
    }
    for kept in (fresh, returning, upgraded, tombstone):
        assert rows_of(db_url, PURGED, kept)["users"] == 1, kept
    assert rows_of(db_url, FOREVER, ancient) == {
        "users": 1,
        "identities": 1,
        "devices": 1,
        "logins": 1,
    }
    [event] = purged_events(db_url, PURGED)
    assert (event.user_id, event.actor, event.provider) == (stale, "system", "anonymous")
    assert event.data == {"retentionDays": 30, "lastActivity": last}
    assert purged_events(db_url, FOREVER) == []
    # The admin API shows it as every other event.
    listed = world.admin.get(
        f"/admin/v1/projects/{PURGED}/auditEvents", params={"filter": f'type = "{t.USER_PURGED}"'}
    )
    assert listed.status_code == 200, listed.text
    assert [e["userId"] for e in listed.json()["auditEvents"]] == [stale]

    # A second run finds nothing; the device signing in again is a new user.
    assert purge(db_url) == Run(purged=0, writes=0)
    assert sign_up(world, PURGED, device) != stale


def test_a_login_or_an_upgrade_after_the_read_keeps_the_user(world: World, db_url: str) -> None:
    device = str(uuid.uuid4())
    returns, upgrades, stale = (
        sign_up(world, RACE, device),
        sign_up(world, RACE),
        sign_up(world, RACE),
    )
    for user_id in (returns, upgrades, stale):
        age(db_url, RACE, user_id, days=31)

    def meanwhile() -> None:
        # Both after the run picked all three, before it writes.
        assert sign_up(world, RACE, device) == returns
        elsewhere(lambda: add_identity(db_url, RACE, upgrades))

    assert purge(db_url, before_write=meanwhile) == Run(purged=1, writes=1)
    assert [e.user_id for e in purged_events(db_url, RACE)] == [stale]
    assert rows_of(db_url, RACE, returns) == {
        "users": 1,
        "identities": 1,
        "devices": 1,
        "logins": 2,
    }
    assert rows_of(db_url, RACE, upgrades)["identities"] == 2


def seed_stale(db_url: str, project: str, count: int, *, days: int) -> list[str]:
    """`count` anonymous users, each with a device and a login, as sign-ups
    `days` ago leave them (written at once: 250 sign-ups through the edge
    would be most of this file's time)."""
    at = clock_now() - days * DAY
    made = [str(uuid.uuid4()) for _ in range(count)]

    def run(conn: sa.Connection) -> None:
        key = [{"project_id": project, "user_id": u} for u in made]
        conn.execute(
            users.insert(),
            [{**k, "created_at": at, "updated_at": at, "valid_after": 0} for k in key],
        )
        conn.execute(
            identities.insert(),
            [
                {
                    **k,
                    "provider": "anonymous",
                    "subject": k["user_id"],
                    "external_id": uuid.uuid4().hex,
                    "attributes": {},
                    "linked_at": at,
                }
                for k in key
            ],
        )
        conn.execute(
            devices.insert(),
            [
                {
                    **k,
                    "device_id": k["user_id"],
                    "sign_up": at,
                    "last_login": at,
                    "time_stamp": at,
                    "signature": "0" * 40,
                }
                for k in key
            ],
        )
        conn.execute(
            logins.insert(),
            [
                {**k, "login_id": str(uuid.uuid4()), "at": at, "device_id": k["user_id"]}
                for k in key
            ],
        )

    in_store(db_url, run, write=True)
    return made


def count_in(db_url: str, table: sa.Table, project: str) -> int:
    return int(
        in_store(
            db_url,
            lambda conn: conn.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.project_id == project)
            ).scalar_one(),
        )
    )


def test_stale_users_go_in_transactions_of_at_most_a_batch(world: World, db_url: str) -> None:
    made = seed_stale(db_url, BATCH, 250, days=8)
    assert purge(db_url, batch=100) == Run(purged=250, writes=3)
    for table in (users, identities, devices, logins):
        assert count_in(db_url, table, BATCH) == 0, table.name
    assert sorted(e.user_id for e in purged_events(db_url, BATCH)) == sorted(made)


def test_a_run_stops_after_its_batches_and_the_next_goes_on(world: World, db_url: str) -> None:
    seed_stale(db_url, LIMITED, 5, days=8)
    assert purge(db_url, batch=2, max_batches=2) == Run(purged=4, writes=2)
    assert purge(db_url, batch=2, max_batches=2) == Run(purged=1, writes=1)
    assert count_in(db_url, users, LIMITED) == 0


# ------------------------------------------------------- the setting itself
def retention_column(db_url: str, project: str) -> int | None:
    return in_store(
        db_url,
        lambda conn: conn.execute(
            sa.select(projects.c.anonymous_retention_days).where(projects.c.project_id == project)
        ).scalar_one(),
    )


def test_the_yaml_key_reaches_the_store_and_the_admin_api(world: World, db_url: str) -> None:
    assert retention_column(db_url, PURGED) == 30
    assert retention_column(db_url, FOREVER) is None
    shown = world.admin.get(f"/admin/v1/projects/{BATCH}").json()
    assert shown["anonymousRetentionDays"] == 7
    # 0: kept forever.
    assert world.admin.get(f"/admin/v1/projects/{FOREVER}").json()["anonymousRetentionDays"] == 0


@pytest.mark.parametrize("bad", [0, -1, 3651, "30", True, 1.5])
def test_bad_yaml_values_are_refused_naming_the_key(bad: Any) -> None:
    entry = {"id": str(uuid.uuid4()), "providers": ANONYMOUS, "anonymousRetentionDays": bad}
    with pytest.raises(config_mod.ConfigError, match=r"projects\[0\]\.anonymousRetentionDays"):
        config_mod.parse({"projects": [entry]}, Registry.discover())


def test_a_bad_value_in_the_file_stops_the_start(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.yaml"
    entry = {"id": str(uuid.uuid4()), "providers": ANONYMOUS, "anonymousRetentionDays": 0}
    path.write_text(yaml.safe_dump({"projects": [entry]}))
    out = identify_cli("serve", "--config", str(path), "--db", f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 2
    assert "anonymousRetentionDays" in out.stderr


def test_the_admin_api_sets_and_clears_it(world: World, db_url: str) -> None:
    made = world.admin.post(
        "/admin/v1/projects", json={"providers": ANONYMOUS, "anonymousRetentionDays": 90}
    )
    assert made.status_code == 200, made.text
    pid, name = made.json()["projectId"], made.json()["name"]
    assert made.json()["anonymousRetentionDays"] == 90
    assert retention_column(db_url, pid) == 90

    # Without a mask, a 0 is not sent: the setting stays.
    kept = world.admin.patch(f"/admin/v1/{name}", json={"displayName": "renamed"}).json()
    assert kept["anonymousRetentionDays"] == 90
    changed = world.admin.patch(
        f"/admin/v1/{name}",
        params={"updateMask": "anonymousRetentionDays"},
        json={"anonymousRetentionDays": 14},
    ).json()
    assert changed["anonymousRetentionDays"] == 14
    cleared = world.admin.patch(
        f"/admin/v1/{name}",
        params={"updateMask": "anonymousRetentionDays"},
        json={"anonymousRetentionDays": 0},
    ).json()
    assert cleared["anonymousRetentionDays"] == 0
    assert retention_column(db_url, pid) is None

    for bad in (-1, 3651):
        body = refused(
            world.admin.patch(
                f"/admin/v1/{name}",
                params={"updateMask": "anonymousRetentionDays"},
                json={"anonymousRetentionDays": bad},
            ),
            400,
            "INVALID_VALUE",
        )
        assert "anonymous_retention_days" in body["message"]
        body = refused(
            world.admin.post(
                "/admin/v1/projects", json={"providers": ANONYMOUS, "anonymousRetentionDays": bad}
            ),
            400,
            "INVALID_VALUE",
        )
    assert retention_column(db_url, pid) is None


def test_the_command_line_flag(world: World) -> None:
    made = world.admin.post("/admin/v1/projects", json={"providers": ANONYMOUS}).json()
    done = identify_cli(
        "admin",
        "projects",
        "update",
        made["projectId"],
        "--anonymous-retention-days",
        "21",
        "--output",
        "json",
        "--server",
        world.stack.admin_grpc_target,
        env={"IDENTIFY_ADMIN_KEY": world.admin.headers["authorization"].removeprefix("Bearer ")},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["anonymousRetentionDays"] == 21


def test_the_background_job_purges_on_its_own(tmp_path: pathlib.Path) -> None:
    # Its own database: the job purges every project of the one it runs on.
    project = str(uuid.uuid4())
    config = {
        "projects": [
            {
                "id": project,
                "name": "job",
                "providers": ANONYMOUS,
                "anonymousRetentionDays": 30,
            }
        ]
    }
    stack = start_stack(tmp_path, config, env={"IDENTIFY_PURGE_SECONDS": "0.5"})
    try:
        with stack.client() as public:
            world = World(stack, public, public)
            stale, fresh = sign_up(world, project), sign_up(world, project)
            age(stack.db_url, project, stale, days=31)
            deadline = time.monotonic() + 20
            while rows_of(stack.db_url, project, stale)["users"]:
                assert time.monotonic() < deadline, "the job did not purge the stale user"
                time.sleep(0.2)
            assert rows_of(stack.db_url, project, fresh)["users"] == 1
            assert [e.user_id for e in purged_events(stack.db_url, project)] == [stale]
    finally:
        assert stack.stop() == 0, stack.log_text()


def test_a_bad_purge_interval_stops_the_start(tmp_path: pathlib.Path) -> None:
    config = {"projects": [{"id": str(uuid.uuid4()), "providers": ANONYMOUS}]}
    (tmp_path / "identify.yaml").write_text(yaml.safe_dump(config))
    done = identify_cli(
        "serve",
        "--config",
        str(tmp_path / "identify.yaml"),
        "--db",
        f"sqlite:///{tmp_path / 'identify.db'}",
        env={"IDENTIFY_PURGE_SECONDS": "soon"},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "IDENTIFY_PURGE_SECONDS" in done.stdout + done.stderr
