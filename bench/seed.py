"""Databases with many users, for the "flat at a million users" figures:
the same read scenarios against a project of 10,000 users and of 1,000,000.

Rows go straight into the schema's tables (server/store/schema.py) in bulk:
SQLite by executemany in one transaction, PostgreSQL by COPY (asyncpg
copy_records_to_table). Each user is a `users` row plus its `identities`
row (provider, subject, external_id = tokens.external_id(secret, provider,
subject), attributes, linked_at), one device and one login; one user (the
first authZero user, `HEAVY_SUBJECT`, read by the profile scenarios) has
HEAVY_DEVICES devices and HEAVY_LOGINS logins, more than the history keeps.

Seeding a million takes a minute or so, so the databases are kept between
runs (SQLite under var/bench/, PostgreSQL as databases named
identify_bench_seed_<users>) and reused while the schema revision, the seed
size and SEED_VERSION match; anything else rebuilds them.

The project row (and its secret) is made by the service itself: the stack is
started once on the empty database, which migrates it and syncs the config,
then stopped before the rows go in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from server import tokens
from server.store import schema
from server.store.db import head_revision

log = logging.getLogger("bench")
ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED_DIR = ROOT / "var" / "bench"
# Bump when what a seeded database holds changes.
SEED_VERSION = 1
SMALL, LARGE = 10_000, 1_000_000
HEAVY_DEVICES = 50
HEAVY_LOGINS = 200
# Users are of three kinds in turn (index % 3); the first MEASURED of each
# kind are the ones the load reads.
KINDS = ("noLogin", "authZero", "awsCognito")
BATCH = 50_000
T0 = 1_700_000_000


def nologin_subject(n: int) -> str:
    return f"seed-nologin-{n:07d}"


def authzero_subject(n: int) -> str:
    return f"auth0|seed{n:07d}"


HEAVY_SUBJECT = authzero_subject(0)


def _cognito_subject(n: int) -> str:
    # Shaped like a Cognito sub; nobody signs in with these.
    return str(uuid.UUID(int=(0x5EED << 96) | n))


@dataclass(frozen=True)
class Seeded:
    db_url: str
    users: int
    secret: str


def _user_id(i: int) -> str:
    return str(uuid.UUID(int=(0xB3AC << 112) | i))


def _device_id(i: int, k: int = 0) -> str:
    return str(uuid.UUID(int=(0xDE71 << 112) | (k << 40) | i))


def rows(project_id: str, secret: str, users: int) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table name, a batch of row tuples in `columns(table)` order)."""
    batch: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
    counters = {kind: 0 for kind in KINDS}
    for i in range(users):
        kind = KINDS[i % 3]
        n = counters[kind]
        counters[kind] += 1
        subject = {
            "noLogin": nologin_subject,
            "authZero": authzero_subject,
            "awsCognito": _cognito_subject,
        }[kind](n)
        user_id = _user_id(i)
        at = T0 + i
        profile = json.dumps({"theme": "dark", "level": i % 100, "tags": ["a", "b"]})
        batch["users"].append((project_id, user_id, None, profile, at, at, 0, None, None))
        attributes = json.dumps({"email": f"user{i}@example.com"} if kind != "noLogin" else {})
        external = tokens.external_id(secret, kind, subject)
        batch["identities"].append((project_id, kind, subject, user_id, external, attributes, at))
        heavy = kind == "authZero" and n == 0
        for k in range(HEAVY_DEVICES if heavy else 1):
            device = _device_id(i, k)
            stamp = at + k
            sig = tokens.signature(secret, user_id, device, stamp)
            batch["devices"].append((project_id, user_id, device, stamp, stamp, stamp, sig, 0))
        for k in range(HEAVY_LOGINS if heavy else 1):
            device = _device_id(i, k % (HEAVY_DEVICES if heavy else 1))
            login_id = str(uuid.UUID(int=(0x1091 << 112) | (k << 40) | i))
            batch["logins"].append((project_id, user_id, login_id, at + k, device))
        if len(batch["users"]) >= BATCH:
            for table, got in batch.items():
                yield table, got
            batch = {t: [] for t in TABLES}
    for table, got in batch.items():
        if got:
            yield table, got


TABLES: dict[str, tuple[str, ...]] = {
    "users": (
        "project_id",
        "user_id",
        "username",
        "app_profile",
        "created_at",
        "updated_at",
        "valid_after",
        "merged_into",
        "merged_at",
    ),
    "identities": (
        "project_id",
        "provider",
        "subject",
        "user_id",
        "external_id",
        "attributes",
        "linked_at",
    ),
    "devices": (
        "project_id",
        "user_id",
        "device_id",
        "sign_up",
        "last_login",
        "time_stamp",
        "signature",
        "valid_after",
    ),
    "logins": ("project_id", "user_id", "login_id", "at", "device_id"),
}


def _check_columns() -> None:
    """The schema has no required column this seed leaves out (a migration
    added one): fail loudly rather than seed rows the service cannot read."""
    for name, cols in TABLES.items():
        table: sa.Table = getattr(schema, name)
        missing = [
            c.name
            for c in table.columns
            if c.name not in cols and not c.nullable and c.server_default is None
        ]
        if missing:
            raise RuntimeError(f"bench/seed.py does not fill {name}.{missing}: update it")


def marker(users: int) -> str:
    return f"identify-bench-seed v{SEED_VERSION} rev {head_revision()} users {users}"


# ------------------------------------------------------------------ SQLite
def _sqlite_seed(path: pathlib.Path, project_id: str, users: int) -> str:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        (secret,) = conn.execute(
            "SELECT secret FROM projects WHERE project_id = ?", (project_id,)
        ).fetchone()
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        for table, batch in rows(project_id, secret, users):
            cols = TABLES[table]
            marks = ", ".join("?" * len(cols))
            conn.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", batch)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        return str(secret)
    finally:
        conn.close()


# -------------------------------------------------------------- PostgreSQL
def _plain_dsn(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)


async def _pg_seed(url: str, project_id: str, users: int) -> str:
    import asyncpg

    conn = await asyncpg.connect(_plain_dsn(url))
    try:
        secret = await conn.fetchval(
            "SELECT secret FROM projects WHERE project_id = $1", project_id
        )
        async with conn.transaction():
            for table, batch in rows(project_id, secret, users):
                await conn.copy_records_to_table(table, records=batch, columns=list(TABLES[table]))
        await conn.execute("ANALYZE")
        return str(secret)
    finally:
        await conn.close()


async def _pg_admin(server_url: str, statement: str, *args: Any) -> Any:
    import asyncpg

    conn = await asyncpg.connect(_plain_dsn(server_url))
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


def _pg_comment(server_url: str, name: str) -> str | None:
    return asyncio.run(
        _pg_admin(
            server_url,
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            name,
        )
    )


# ------------------------------------------------------------------ either
StartOnce = Callable[[str], None]


def seeded(
    store: str, users: int, project_id: str, start_once: StartOnce, pg_server: str | None = None
) -> Seeded:
    """A database of `users` users for `store` ("sqlite" or "postgresql"),
    reused when it matches; `start_once(db_url)` runs the service on an empty
    one (migrations, the project row) before the rows go in."""
    _check_columns()
    want = marker(users)
    if store == "sqlite":
        SEED_DIR.mkdir(parents=True, exist_ok=True)
        path = SEED_DIR / f"sqlite-{users}.db"
        stamp = path.with_suffix(".seed")
        db_url = f"sqlite:///{path}"
        if path.exists() and stamp.exists() and stamp.read_text() == want:
            return Seeded(db_url, users, _sqlite_secret(path, project_id))
        for stale in (path, stamp, *path.parent.glob(path.name + "-*")):
            stale.unlink(missing_ok=True)
        started = time.monotonic()
        start_once(db_url)
        secret = _sqlite_seed(path, project_id, users)
        stamp.write_text(want)
        log.info("seeded %s with %d users in %.0f s", path, users, time.monotonic() - started)
        return Seeded(db_url, users, secret)
    if pg_server is None:
        raise ValueError("postgresql needs a server URL")
    name = f"identify_bench_seed_{users}"
    db_url = sa.engine.make_url(pg_server).set(database=name).render_as_string(False)
    if _pg_comment(pg_server, name) == want:
        return Seeded(db_url, users, asyncio.run(_pg_secret(db_url, project_id)))
    asyncio.run(_pg_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_pg_admin(pg_server, f'CREATE DATABASE "{name}"'))
    started = time.monotonic()
    start_once(db_url)
    secret = asyncio.run(_pg_seed(db_url, project_id, users))
    # Set last: a seed cut short is never taken for a whole one.
    asyncio.run(_pg_admin(pg_server, f"COMMENT ON DATABASE \"{name}\" IS '{want}'"))
    log.info("seeded %s with %d users in %.0f s", name, users, time.monotonic() - started)
    return Seeded(db_url, users, secret)


def _sqlite_secret(path: pathlib.Path, project_id: str) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (secret,) = conn.execute(
            "SELECT secret FROM projects WHERE project_id = ?", (project_id,)
        ).fetchone()
    return str(secret)


async def _pg_secret(url: str, project_id: str) -> str:
    return str(
        await _pg_admin(url, "SELECT secret FROM projects WHERE project_id = $1", project_id)
    )
