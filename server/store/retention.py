"""Retention of anonymous users: in a project with `anonymous_retention_days`
set (None: kept forever), an anonymous user with no login for that many days
is purged with its logins, devices and identities, each one recorded as a
`user.purged` event in the transaction that deletes it.

An anonymous user is one that is not a tombstone and whose identities are
all `anonymous`. Its last activity is its devices' latest `last_login`, or
its `created_at` when it has no device.

Every server process runs it (housekeeping). Candidates are found by a read,
then each batch is decided again in its own write transaction, which first
holds the users and their devices (SELECT ... FOR UPDATE on PostgreSQL;
SQLite's BEGIN IMMEDIATE holds the database): a user who signed in, or was
upgraded or merged, since the read is kept, and racing runs purge each user
once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from server.events.audit import ACTOR_SYSTEM, AuditEvent, record
from server.events.types import USER_PURGED
from server.store.db import Database
from server.store.identities import ANONYMOUS
from server.store.schema import devices, identities, logins, projects, users

DAY = 86400
# Users per transaction: each costs a few indexed deletes and an audit row,
# so a batch holds SQLite's one writer for milliseconds, not the logins.
PURGE_BATCH = 100
PURGE_PAUSE = 0.05
# A run stops after this many batches; the next run (10 minutes on) goes on.
PURGE_MAX_BATCHES = 100


def _last_activity() -> Any:
    latest_login = (
        sa.select(sa.func.max(devices.c.last_login))
        .where(devices.c.project_id == users.c.project_id, devices.c.user_id == users.c.user_id)
        .scalar_subquery()
    )
    return sa.func.coalesce(latest_login, users.c.created_at)


def _has_identity(*where: Any) -> Any:
    return (
        sa.select(sa.literal(1))
        .where(
            identities.c.project_id == users.c.project_id,
            identities.c.user_id == users.c.user_id,
            *where,
        )
        .exists()
    )


def _stale(project_id: str, cutoff: int) -> sa.Select[Any]:
    """The project's anonymous users whose last activity is before `cutoff`,
    oldest first, with that activity."""
    last_activity = _last_activity()
    return (
        sa.select(users.c.user_id, users.c.created_at, last_activity.label("last_activity"))
        .where(
            users.c.project_id == project_id,
            users.c.merged_into.is_(None),
            # Implied by the activity test (a login comes after the sign-up),
            # and lets the (project_id, created_at) index skip recent users.
            users.c.created_at < cutoff,
            _has_identity(identities.c.provider == ANONYMOUS),
            ~_has_identity(identities.c.provider != ANONYMOUS),
            last_activity < cutoff,
        )
        .order_by(users.c.created_at, users.c.user_id)
    )


def _projects_with_retention(conn: sa.Connection) -> list[tuple[str, int]]:
    rows = conn.execute(
        sa.select(projects.c.project_id, projects.c.anonymous_retention_days)
        .where(projects.c.anonymous_retention_days.is_not(None), projects.c.deleted_at.is_(None))
        .order_by(projects.c.project_id)
    )
    return [(r.project_id, int(r.anonymous_retention_days)) for r in rows]


def _hold(conn: sa.Connection, project_id: str, user_ids: Sequence[str]) -> None:
    """Lock the candidates and their devices, in one order in every process
    (no deadlock between racing runs). A link or merge holds the users row
    and a login writes its device row: each now waits for this transaction,
    or committed before it and is seen by the check that follows."""
    if conn.dialect.name != "postgresql":
        return
    for table in (users, devices):
        conn.execute(
            sa.select(table.c.user_id)
            .where(table.c.project_id == project_id, table.c.user_id.in_(user_ids))
            .order_by(*table.primary_key.columns)
            .with_for_update()
        ).all()


def _purge_batch(
    project_id: str, days: int, cutoff: int, candidates: Sequence[str], now: int
) -> Any:
    def run(conn: sa.Connection) -> int:
        _hold(conn, project_id, candidates)
        # Decided again, in this transaction: the read may be stale.
        confirmed = conn.execute(_stale(project_id, cutoff).where(users.c.user_id.in_(candidates)))
        gone = {r.user_id: int(r.last_activity) for r in confirmed}
        if not gone:
            return 0
        for table in (logins, devices, identities, users):
            conn.execute(
                table.delete().where(
                    table.c.project_id == project_id, table.c.user_id.in_(list(gone))
                )
            )
        for user_id, last_activity in gone.items():
            record(
                conn,
                AuditEvent(
                    type=USER_PURGED,
                    project_id=project_id,
                    actor=ACTOR_SYSTEM,
                    user_id=user_id,
                    provider=ANONYMOUS,
                    data={"retentionDays": days, "lastActivity": last_activity},
                    at=now,
                ),
            )
        return len(gone)

    return run


async def purge_stale_anonymous(
    database: Database,
    *,
    now: int,
    batch: int = PURGE_BATCH,
    pause: float = PURGE_PAUSE,
    max_batches: int = PURGE_MAX_BATCHES,
) -> int:
    """Purge the anonymous users idle past their project's retention, at
    most `batch` per transaction with `pause` seconds between two (so logins
    get the write lock in between); returns how many were purged."""
    purged = 0
    batches = 0
    for project_id, days in await database.read(_projects_with_retention):
        cutoff = now - days * DAY
        # Keyset on (created_at, user_id): users the check kept (or that
        # are not anonymous) are never scanned again in this run.
        after: tuple[int, str] | None = None
        while batches < max_batches:
            query = _stale(project_id, cutoff).limit(batch)
            if after is not None:
                query = query.where(
                    sa.tuple_(users.c.created_at, users.c.user_id)
                    > sa.tuple_(*(sa.literal(v) for v in after))
                )

            def found(conn: sa.Connection, query: Any = query) -> list[Any]:
                return list(conn.execute(query))

            candidates = await database.read(found)
            if not candidates:
                break
            after = (int(candidates[-1].created_at), str(candidates[-1].user_id))
            ids = [r.user_id for r in candidates]
            purged += await database.write(_purge_batch(project_id, days, cutoff, ids, now))
            batches += 1
            if len(candidates) < batch:
                break
            await asyncio.sleep(pause)
    return purged
