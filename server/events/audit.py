"""The audit trail: one row per thing that happened to a project's users,
accounts and settings, written by `record` INSIDE the transaction of the
change it records (so a change that rolls back leaves no event, and an event
never describes a change that did not happen). Refusals, which change
nothing, are written in a small transaction of their own (calls.py).

The table is also the webhooks' outbox: the relay (relay.py) turns each row
into deliveries once and marks it `fanned_out`.

What a row may hold: ids (project, user, device, event), the actor, the
provider, the client's IP as the edge decided it, a refusal's ErrorInfo
reason, and `data`: a small JSON object of bounded, secret-free details.
Never a token, password, code or secret: `record` refuses data keys that
name one, and the tests read the whole table after a run with known secrets.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from server import clock
from server.events.types import EVENT_TYPES
from server.store.db import Database
from server.store.schema import audit_events, projects, webhook_deliveries

ACTOR_USER = "user"
ACTOR_SYSTEM = "system"
# An operator at the machine, straight into the database (`identify admin
# create-key`): the one admin action no key makes.
ACTOR_CLI = "cli"
ADMIN_ACTOR_PREFIX = "admin:"
# Events about no one project (an admin key refused before a project was
# named, say) are kept under this project id.
NO_PROJECT = "-"
DEFAULT_RETENTION_DAYS = 90
MAX_DATA_CHARS = 1024
# Purge: rows per DELETE, and the pause between two. On SQLite every write
# waits for the one writer; a DELETE of 500 indexed rows holds it ~ms, while
# one of a million rows would hold every login out for seconds.
PURGE_BATCH = 500
PURGE_PAUSE = 0.05
# A purge run stops after this many statements; the next run goes on.
PURGE_MAX_STATEMENTS = 2000
# Words that name secrets: a data key holding one is a bug, refused.
_SECRET_WORDS = ("password", "token", "secret", "code", "signature", "authorization")


def admin_actor(key_id: str) -> str:
    return f"{ADMIN_ACTOR_PREFIX}{key_id}"


_last_event_id = 0


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562) with sub-millisecond time in its 12 `rand_a`
    bits (the RFC's method 3), and never below the last one this process
    made: ids sort in the order events happened, within one second too, so
    the list's page tokens can key on (at, event_id)."""
    global _last_event_id
    ms, sub = divmod(time.time_ns(), 1_000_000)
    value = (
        ms << 80
        | 0x7 << 76  # version 7
        | (sub * 4096 // 1_000_000) << 64
        | 0x2 << 62  # RFC 9562 variant
        | int.from_bytes(os.urandom(8), "big") >> 2
    )
    value = max(value, _last_event_id + 1)
    _last_event_id = value
    return str(uuid.UUID(int=value))


@dataclass(frozen=True)
class AuditEvent:
    type: str
    project_id: str
    actor: str = ACTOR_USER
    user_id: str | None = None
    provider: str | None = None
    device_id: str | None = None
    client_ip: str | None = None
    # A refusal's ErrorInfo reason.
    reason: str | None = None
    data: Mapping[str, Any] | None = None
    event_id: str = field(default_factory=new_event_id)
    at: int = field(default_factory=clock.now)

    def to_json(self) -> dict[str, Any]:
        """The event as the admin API and webhook payloads show it."""
        return {
            "eventId": self.event_id,
            "type": self.type,
            "time": self.at,
            "projectId": self.project_id,
            "userId": self.user_id,
            "actor": self.actor,
            "provider": self.provider,
            "deviceId": self.device_id,
            "clientIp": self.client_ip,
            "reason": self.reason,
            "data": dict(self.data or {}),
        }


def _check(event: AuditEvent) -> None:
    if event.type not in EVENT_TYPES:
        raise ValueError(f"unknown audit event type {event.type!r} (see server/events/types.py)")
    if event.actor not in (ACTOR_USER, ACTOR_SYSTEM, ACTOR_CLI) and not event.actor.startswith(
        ADMIN_ACTOR_PREFIX
    ):
        raise ValueError(f"unknown audit actor {event.actor!r}")
    if event.data:
        _check_data(event.data)
        if len(json.dumps(event.data, separators=(",", ":"), default=str)) > MAX_DATA_CHARS:
            raise ValueError(f"audit event data is longer than {MAX_DATA_CHARS} characters")


def _check_data(data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        lowered = str(key).lower()
        if any(word in lowered for word in _SECRET_WORDS):
            raise ValueError(f"audit event data must hold no secrets (key {key!r})")
        if isinstance(value, Mapping):
            _check_data(value)


_COLUMNS = (
    "project_id",
    "event_id",
    "type",
    "at",
    "user_id",
    "actor",
    "provider",
    "device_id",
    "client_ip",
    "reason",
    "data",
)
_INSERT = audit_events.insert()
_SQLITE_INSERT = (
    "INSERT INTO audit_events (project_id, event_id, type, at, user_id, actor, provider,"
    " device_id, client_ip, reason, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _values(event: AuditEvent) -> tuple[Any, ...]:
    """The event's columns (_COLUMNS but data), checked and bounded."""
    _check(event)
    return (
        event.project_id,
        event.event_id,
        event.type,
        event.at,
        event.user_id,
        event.actor[:128],
        event.provider[:64] if event.provider else None,
        event.device_id[:36] if event.device_id else None,
        event.client_ip[:64] if event.client_ip else None,
        event.reason[:64] if event.reason else None,
    )


def _data_text(event: AuditEvent) -> str | None:
    return json.dumps(dict(event.data), separators=(",", ":")) if event.data else None


def record(conn: sa.Connection, event: AuditEvent) -> None:
    """Write `event` in the caller's transaction (a Database.write function's
    connection): it commits or rolls back with the change it records."""
    values = _values(event)
    if conn.dialect.name != "sqlite":
        row = dict(zip(_COLUMNS[:-1], values, strict=True))
        conn.execute(_INSERT, {**row, "data": dict(event.data) if event.data else None})
        return
    # Every login pays for this insert: on SQLite straight through sqlite3
    # on the transaction's own connection (~20 us, where SQLAlchemy's
    # compiled insert costs ~40-80 us here), its errors wrapped as
    # SQLAlchemy's so server/errors.py reads them the same.
    try:
        conn.connection.driver_connection.execute(_SQLITE_INSERT, (*values, _data_text(event)))  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(
            _SQLITE_INSERT, None, exc, sqlite3.Error, hide_parameters=True
        ) from exc


# The event as one part of a hot write (server/store/db.py HotWrite): its
# binds are the columns' names after HOT_PREFIX, so they never meet the
# other parts' binds; `hot_params` gives their values.
HOT_PREFIX = "audit_"
HOT_INSERT = audit_events.insert().values(
    {name: sa.bindparam(HOT_PREFIX + name) for name in _COLUMNS}
)


def hot_params(event: AuditEvent) -> dict[str, Any]:
    values = (*_values(event), _data_text(event))
    return {HOT_PREFIX + name: value for name, value in zip(_COLUMNS, values, strict=True)}


async def record_alone(database: Database, event: AuditEvent) -> None:
    """An event that records no change of ours (a refusal; a password reset
    done upstream): a small transaction of its own."""
    await database.write(lambda conn: record(conn, event))


def event_of(row: Any) -> AuditEvent:
    return AuditEvent(
        type=row.type,
        project_id=row.project_id,
        actor=row.actor,
        user_id=row.user_id,
        provider=row.provider,
        device_id=row.device_id,
        client_ip=row.client_ip,
        reason=row.reason,
        data=row.data or None,
        event_id=row.event_id,
        at=int(row.at),
    )


# ------------------------------------------------------------- GDPR erasure
def pseudonym(project_secret: str, user_id: str) -> str:
    """What an erased user's events name instead of its userId: the same for
    all of them (so an operator still sees they were one person's), and
    not the userId without the project's secret."""
    digest = hmac.new(project_secret.encode(), f"audit-user:{user_id}".encode(), hashlib.sha256)
    return f"erased:{digest.hexdigest()[:40]}"


def pseudonymize_user(conn: sa.Connection, project_id: str, user_id: str) -> str:
    """For a user's erasure, in its transaction: the user's events keep their
    type, time, actor, provider and reason, under a pseudonym; device, IP and
    data are cleared. Returns the pseudonym (for the `user.deleted` event).
    Deliveries not yet sent carry the pseudonymous event: payloads are built
    from the row when sent."""
    secret = conn.execute(
        sa.select(projects.c.secret).where(projects.c.project_id == project_id)
    ).scalar_one()
    alias = pseudonym(secret, user_id)
    conn.execute(
        audit_events.update()
        .where(audit_events.c.project_id == project_id, audit_events.c.user_id == user_id)
        .values(user_id=alias, device_id=None, client_ip=None, data=sa.null())
    )
    return alias


# ---------------------------------------------------------------- retention
@dataclass(frozen=True)
class Purged:
    events: int = 0
    deliveries: int = 0
    # DELETE statements run (each one transaction of at most `batch` rows).
    statements: int = 0


def _expired(table: sa.Table, key: str, time_column: str) -> tuple[Any, Any]:
    """(a probe for, and a DELETE of at most :batch of) one project's rows
    older than :cutoff, found through the (project_id, time) index."""
    c = table.c
    where = [c.project_id == sa.bindparam("project_id"), c[time_column] < sa.bindparam("cutoff")]
    if table is webhook_deliveries:
        # A pending delivery is still being retried; it ends, then goes.
        where.append(c.state != "pending")
    probe = sa.select(sa.literal(1)).where(*where).limit(1)
    picked = (
        sa.select(c.project_id, c[key]).where(*where).limit(sa.bindparam("batch", type_=sa.Integer))
    )
    return probe, table.delete().where(sa.tuple_(c.project_id, c[key]).in_(picked))


_PURGES = (
    (audit_events, *_expired(audit_events, "event_id", "at")),
    (webhook_deliveries, *_expired(webhook_deliveries, "delivery_id", "created_at")),
)


async def purge_expired(
    database: Database,
    *,
    now: int,
    batch: int = PURGE_BATCH,
    pause: float = PURGE_PAUSE,
    max_statements: int = PURGE_MAX_STATEMENTS,
) -> Purged:
    """Delete events (and finished webhook deliveries) older than their
    project's `audit_retention_days` (None: 90), in transactions of at most
    `batch` rows with `pause` seconds between two, so logins get the write
    lock in between. Every server process runs it (housekeeping); racing
    runs delete disjoint or already-gone rows."""

    def retention(conn: sa.Connection) -> dict[str, int]:
        rows = conn.execute(sa.select(projects.c.project_id, projects.c.audit_retention_days))
        days = {r.project_id: r.audit_retention_days or DEFAULT_RETENTION_DAYS for r in rows}
        days.setdefault(NO_PROJECT, DEFAULT_RETENTION_DAYS)
        return days

    removed = {"audit_events": 0, "webhook_deliveries": 0}
    statements = 0
    for project_id, days in (await database.read(retention)).items():
        params = {"project_id": project_id, "cutoff": now - days * 86400, "batch": batch}
        for table, probe, delete in _PURGES:

            def found(conn: sa.Connection, probe: Any = probe, params: Any = params) -> bool:
                return conn.execute(probe, params).first() is not None

            # A read first: most runs find nothing, and take no write lock.
            if statements >= max_statements or not await database.read(found):
                continue
            while statements < max_statements:

                def run(conn: sa.Connection, delete: Any = delete, params: Any = params) -> int:
                    return int(conn.execute(delete, params).rowcount or 0)

                count = await database.write(run)
                statements += 1
                removed[table.name] += count
                if count < batch:
                    break
                await asyncio.sleep(pause)
    return Purged(removed["audit_events"], removed["webhook_deliveries"], statements)
