"""Queries. Every function that touches tenant data takes the project id and
puts it first in the WHERE clause, so no query can cross projects.

The hot statements are built once with bind parameters: building and
cache-keying a SQLAlchemy statement per call cost more than running it.

A write that changes a user takes the audit event describing it (`event`)
and records it in the same transaction (server/events/audit.py)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from providers.values import Device, Identity, User
from server.events.audit import HOT_INSERT, AuditEvent, hot_params, record
from server.store.db import Database, HotQuery, HotWrite
from server.store.schema import (
    credential_failures,
    devices,
    identities,
    issued_tokens,
    logins,
    projects,
    revoked_tokens,
    signing_keys,
    users,
)

LOGIN_HISTORY = 50
P = sa.bindparam


def insert_for(conn: sa.Connection, table: sa.Table) -> Any:
    """The dialect's INSERT (for ON CONFLICT)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass(frozen=True)
class ProjectRow:
    project_id: str
    name: str
    secret: str
    providers: Mapping[str, Mapping[str, Any]]
    limits: Mapping[str, Any] | None
    updated_at: int


# ----------------------------------------------------------------- projects
# A soft-deleted project is no project to the request path.
_GET_PROJECT = sa.select(projects).where(
    projects.c.project_id == P("project_id"), projects.c.deleted_at.is_(None)
)


async def upsert_project(
    database: Database,
    *,
    project_id: str,
    name: str,
    providers_settings: Mapping[str, Any],
    limits: Mapping[str, Any] | None,
    secret: str,
    now: int,
    anonymous_retention_days: int | None = None,
) -> None:
    """Creates the project with `secret`, or updates name, providers,
    limits and anonymous retention while keeping the secret it already has
    (rotating it would change every user's externalId)."""

    def run(conn: sa.Connection) -> None:
        values = {
            "name": name,
            "providers": dict(providers_settings),
            "limits": dict(limits) if limits is not None else None,
            "anonymous_retention_days": anonymous_retention_days,
            "updated_at": now,
        }
        stmt = insert_for(conn, projects).values(
            project_id=project_id, secret=secret, created_at=now, **values
        )
        conn.execute(
            stmt.on_conflict_do_update(index_elements=[projects.c.project_id], set_=values)
        )

    await database.write(run)


async def get_project(database: Database, project_id: str) -> ProjectRow | None:
    def run(conn: sa.Connection) -> ProjectRow | None:
        row = conn.execute(_GET_PROJECT, {"project_id": project_id}).first()
        if row is None:
            return None
        return ProjectRow(
            row.project_id, row.name, row.secret, row.providers, row.limits, row.updated_at
        )

    return await database.read(run)


# ------------------------------------------------------------ signing keys
async def load_signing_keys(database: Database) -> list[tuple[str, str, int, int | None]]:
    def run(conn: sa.Connection) -> list[tuple[str, str, int, int | None]]:
        rows = conn.execute(sa.select(signing_keys)).all()
        return [(r.kid, r.private_pem, r.created_at, r.retired_at) for r in rows]

    return await database.read(run)


async def insert_signing_key_if_none(
    database: Database, *, kid: str, private_pem: str, now: int
) -> None:
    """Racing processes may each try; a second active key is harmless (both
    are published), so no stronger lock is needed."""

    def run(conn: sa.Connection) -> None:
        active = conn.execute(
            sa.select(sa.func.count())
            .select_from(signing_keys)
            .where(signing_keys.c.retired_at.is_(None))
        ).scalar_one()
        if not active:
            conn.execute(
                signing_keys.insert().values(
                    kid=kid, algorithm="ES256", private_pem=private_pem, created_at=now
                )
            )

    await database.write(run)


async def rotate_signing_key(
    database: Database,
    *,
    kid: str,
    private_pem: str,
    now: int,
    also: Callable[[sa.Connection], None] | None = None,
) -> int:
    """Retire every active key and add a new one, in one transaction (with
    `also`, the audit event's write); returns how many were retired."""

    def run(conn: sa.Connection) -> int:
        if also is not None:
            also(conn)
        retired = conn.execute(
            signing_keys.update().where(signing_keys.c.retired_at.is_(None)).values(retired_at=now)
        ).rowcount
        conn.execute(
            signing_keys.insert().values(
                kid=kid, algorithm="ES256", private_pem=private_pem, created_at=now
            )
        )
        return int(retired or 0)

    return await database.write(run)


# -------------------------------------------------------------------- users
def user_from_row(row: Any) -> User:
    """A User from a row of users joined with one of its identities (the
    columns `provider`, `subject`, `external_id`)."""
    return User(
        user_id=row.user_id,
        project_id=row.project_id,
        provider=row.provider or "",
        subject=row.subject or "",
        external_id=row.external_id or "",
        created_at=row.created_at,
        updated_at=row.updated_at,
        username=row.username,
        attributes=dict(row.attributes or {}),
        app_profile=row.app_profile,
        valid_after=row.valid_after,
    )


def with_row(user: User, row: Any) -> User:
    """`user` (as its identity found it) with the users row's current values
    (its attributes are the identity's, not in that row)."""
    return dataclasses.replace(
        user,
        created_at=row.created_at,
        updated_at=row.updated_at,
        username=row.username,
        app_profile=row.app_profile,
        valid_after=row.valid_after,
    )


_JOINED = identities.join(
    users,
    sa.and_(users.c.project_id == identities.c.project_id, users.c.user_id == identities.c.user_id),
)
_JOINED_COLUMNS = (
    *users.c,
    identities.c.provider,
    identities.c.subject,
    identities.c.external_id,
    identities.c.attributes,
)


def _user_by(column: str) -> sa.Select[Any]:
    # One statement, two primary-key (or unique) lookups: identity, then user.
    query = (
        sa.select(*_JOINED_COLUMNS)
        .select_from(_JOINED)
        .where(
            identities.c.project_id == P("project_id"),
            identities.c.provider == P("provider"),
            identities.c[column] == P("value"),
            users.c.merged_into.is_(None),
        )
    )
    if column == "user_id":
        # A user may hold several identities of one provider (devices).
        query = query.order_by(identities.c.linked_at, identities.c.subject).limit(1)
    return query


_FIND_USER = {column: _user_by(column) for column in ("subject", "external_id", "user_id")}
_HOT_FIND_USER = {column: HotQuery(query) for column, query in _FIND_USER.items()}
USER_ROW = sa.select(users).where(
    users.c.project_id == P("project_id"), users.c.user_id == P("user_id")
)


# The user's and the device's: a session ends with either (logout or
# :revokeSessions for the user, a device signed out for the device).
_VALID_AFTER = (
    sa.select(users.c.valid_after, devices.c.valid_after.label("device_valid_after"))
    .select_from(
        users.outerjoin(
            devices,
            sa.and_(
                devices.c.project_id == users.c.project_id,
                devices.c.user_id == users.c.user_id,
                devices.c.device_id == P("device_id"),
            ),
        )
    )
    .where(users.c.project_id == P("project_id"), users.c.user_id == P("user_id"))
)
_HOT_VALID_AFTER = HotQuery(_VALID_AFTER)


async def session_valid_after(
    database: Database, project_id: str, user_id: str, device_id: str
) -> int | None:
    """When the sessions of this user on this device were last ended (0:
    never), or None when the project has no such user. One primary-key read,
    whatever the provider."""
    params = {"project_id": project_id, "user_id": user_id, "device_id": device_id}
    (rows,) = await database.fetch((_HOT_VALID_AFTER, params))
    if not rows:
        return None
    row = rows[0]
    return max(int(row.valid_after), int(row.device_valid_after or 0))


async def find_user(
    database: Database, project_id: str, column: str, value: str, provider: str
) -> User | None:
    params = {"project_id": project_id, "provider": provider, "value": value}
    (rows,) = await database.fetch((_HOT_FIND_USER[column], params))
    return user_from_row(rows[0]) if rows else None


def insert_identity(
    conn: sa.Connection,
    *,
    project_id: str,
    provider: str,
    subject: str,
    user_id: str,
    external_id: str,
    attributes: Mapping[str, Any],
    now: int,
) -> bool:
    """Insert-or-nothing of one identity; False when it is someone's already."""
    inserted = conn.execute(
        insert_for(conn, identities)
        .values(
            project_id=project_id,
            provider=provider,
            subject=subject,
            user_id=user_id,
            external_id=external_id,
            attributes=dict(attributes),
            linked_at=now,
        )
        # Any unique key: racing inserts of one subject collide on the
        # primary key and on external_id (derived from the subject) alike.
        # PostgreSQL raises on a conflict in an index other than a named
        # arbiter, so none is named.
        .on_conflict_do_nothing()
    ).rowcount
    return bool(inserted)


async def ensure_user(
    database: Database,
    *,
    project_id: str,
    provider: str,
    subject: str,
    external_id: str,
    attributes: Mapping[str, Any],
    username: str | None,
    now: int,
    app_profile: Mapping[str, Any] | None = None,
    event: AuditEvent | None = None,
) -> tuple[User, bool]:
    """Insert-or-nothing of the identity (project, provider, subject), then
    the user only if that insert won, then read back: racing first logins all
    end on the one user that won; only the winner records `event` (with the
    new userId)."""
    user_id = str(uuid.uuid4())
    params = {"project_id": project_id, "provider": provider, "value": subject}

    def run(conn: sa.Connection) -> tuple[User, bool]:
        inserted = insert_identity(
            conn,
            project_id=project_id,
            provider=provider,
            subject=subject,
            user_id=user_id,
            external_id=external_id,
            attributes=attributes,
            now=now,
        )
        if inserted:
            conn.execute(
                users.insert().values(
                    project_id=project_id,
                    user_id=user_id,
                    username=username,
                    app_profile=dict(app_profile) if app_profile is not None else None,
                    created_at=now,
                    updated_at=now,
                    valid_after=0,
                )
            )
        row = conn.execute(_FIND_USER["subject"], params).first()
        if row is None:
            # The identity is held by a tombstone (a merged user): sign-ins
            # through it are the merged user's, so this is a lookup miss.
            raise LookupError("identity belongs to a merged user")
        created = row.user_id == user_id
        if created and event is not None:
            record(conn, dataclasses.replace(event, user_id=user_id))
        return user_from_row(row), created

    return await database.write(run)


def _identity_key(user: User) -> tuple[Any, ...]:
    return (
        identities.c.project_id == user.project_id,
        identities.c.provider == user.provider,
        identities.c.subject == user.subject,
        identities.c.user_id == user.user_id,
    )


def _reread(conn: sa.Connection, user: User) -> User | None:
    params = {"project_id": user.project_id, "provider": user.provider, "value": user.subject}
    row = conn.execute(_FIND_USER["subject"], params).first()
    return user_from_row(row) if row is not None and row.user_id == user.user_id else None


async def update_user(
    database: Database,
    user: User,
    *,
    values: Mapping[str, Any],
    now: int,
    event: AuditEvent | None = None,
) -> User | None:
    """One transaction, one UPDATE per table, so concurrent writers never
    interleave fields. `attributes` are the identity's (the provider's say);
    the rest is the user's."""
    mine = {k: v for k, v in values.items() if k != "attributes"}

    def run(conn: sa.Connection) -> User | None:
        if "attributes" in values:
            conn.execute(
                identities.update()
                .where(*_identity_key(user))
                .values(attributes=dict(values["attributes"]))
            )
        conn.execute(
            users.update()
            .where(users.c.project_id == user.project_id, users.c.user_id == user.user_id)
            .values(**mine, updated_at=now)
        )
        updated = _reread(conn, user)
        if updated is not None and event is not None:
            record(conn, event)
        return updated

    return await database.write(run)


async def merge_attributes(
    database: Database,
    user: User,
    patch: Mapping[str, Any],
    now: int,
    *,
    event: AuditEvent | None = None,
) -> User | None:
    """Read-merge-write of the identity's attributes in one transaction that
    holds the row (SELECT ... FOR UPDATE on PostgreSQL; SQLite's BEGIN
    IMMEDIATE holds the database)."""

    def run(conn: sa.Connection) -> User | None:
        query = sa.select(identities.c.attributes).where(*_identity_key(user))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        current = conn.execute(query).first()
        if current is None:
            return None
        merged = {**(current.attributes or {}), **patch}
        conn.execute(identities.update().where(*_identity_key(user)).values(attributes=merged))
        conn.execute(
            users.update()
            .where(users.c.project_id == user.project_id, users.c.user_id == user.user_id)
            .values(updated_at=now)
        )
        if event is not None:
            record(conn, event)
        return _reread(conn, user)

    return await database.write(run)


# ------------------------------------------------------- devices and logins
_INSERT_LOGIN = logins.insert().values(
    project_id=P("project_id"),
    user_id=P("user_id"),
    login_id=P("login_id"),
    at=P("now"),
    device_id=P("device_id"),
)


def _device_upsert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(devices).values(
        project_id=P("project_id"),
        user_id=P("user_id"),
        device_id=P("device_id"),
        sign_up=P("now"),
        last_login=P("now"),
        time_stamp=P("now"),
        signature=P("signature"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[devices.c.project_id, devices.c.user_id, devices.c.device_id],
        set_={
            "last_login": stmt.excluded.last_login,
            "time_stamp": stmt.excluded.time_stamp,
            "signature": stmt.excluded.signature,
        },
    ).returning(devices.c.sign_up)


# Every login writes these three rows: the hot write of the sign-in paths, one
# statement on PostgreSQL (server/store/db.py HotWrite).
_RECORD_LOGIN = HotWrite("record_login", _device_upsert("postgresql"), _INSERT_LOGIN)
_RECORD_LOGIN_AUDITED = HotWrite(
    "record_login", _device_upsert("postgresql"), _INSERT_LOGIN, HOT_INSERT
)


async def record_login(
    database: Database,
    *,
    project_id: str,
    user_id: str,
    device_id: str,
    now: int,
    signature: str,
    event: AuditEvent | None = None,
) -> Device:
    params = {
        "project_id": project_id,
        "user_id": user_id,
        "device_id": device_id,
        "now": now,
        "signature": signature,
        "login_id": str(uuid.uuid4()),
    }
    if event is None:
        sign_up = await database.write_hot(_RECORD_LOGIN, params)
    else:
        sign_up = await database.write_hot(_RECORD_LOGIN_AUDITED, {**params, **hot_params(event)})
    return Device(device_id, int(sign_up), now, now, signature)


_DEVICES = (
    sa.select(devices)
    .where(
        devices.c.project_id == P("project_id"),
        devices.c.user_id == P("user_id"),
        # A signed-out device is listed again once it signs in again.
        devices.c.time_stamp >= devices.c.valid_after,
    )
    .order_by(devices.c.sign_up, devices.c.device_id)
)
_HISTORY = (
    sa.select(logins.c.at)
    .where(logins.c.project_id == P("project_id"), logins.c.user_id == P("user_id"))
    .order_by(logins.c.at.desc())
    .limit(LOGIN_HISTORY)
)


IDENTITIES = (
    sa.select(identities)
    .where(identities.c.project_id == P("project_id"), identities.c.user_id == P("user_id"))
    .order_by(identities.c.linked_at, identities.c.provider, identities.c.subject)
)


def identity_from_row(row: Any) -> Identity:
    return Identity(
        row.provider, row.subject, row.external_id, row.linked_at, dict(row.attributes or {})
    )


@dataclass(frozen=True)
class ProfileRows:
    devices: Sequence[Device]
    login_history: list[int]
    identities: Sequence[Identity]


async def profile_rows(database: Database, project_id: str, user_id: str) -> ProfileRows:
    """One connection, three index range scans."""
    key = {"project_id": project_id, "user_id": user_id}
    found, history, linked = await database.fetch(
        (_HOT_DEVICES, key), (_HOT_HISTORY, key), (HOT_IDENTITIES, key)
    )
    return ProfileRows(
        [Device(r.device_id, r.sign_up, r.last_login, r.time_stamp, r.signature) for r in found],
        sorted(int(r.at) for r in history),
        [identity_from_row(r) for r in linked],
    )


_HOT_DEVICES, _HOT_HISTORY, HOT_IDENTITIES = (HotQuery(q) for q in (_DEVICES, _HISTORY, IDENTITIES))


# ------------------------------------------------- revoked and issued tokens
def _has_hash(table: sa.Table) -> sa.Select[Any]:
    return sa.select(table.c.expires_at).where(
        table.c.project_id == P("project_id"),
        table.c.token_hash == P("token_hash"),
        table.c.expires_at >= P("now"),
    )


_HAS_HASH = {table.name: HotQuery(_has_hash(table)) for table in (revoked_tokens, issued_tokens)}


async def add_token_hash(
    database: Database, table: sa.Table, project_id: str, token_hash: str, expires_at: int
) -> None:
    def run(conn: sa.Connection) -> None:
        conn.execute(
            insert_for(conn, table)
            .values(project_id=project_id, token_hash=token_hash, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=[table.c.project_id, table.c.token_hash])
        )

    await database.write(run)


async def has_token_hash(
    database: Database, table: sa.Table, project_id: str, token_hash: str, now: int
) -> bool:
    params = {"project_id": project_id, "token_hash": token_hash, "now": now}
    (rows,) = await database.fetch((_HAS_HASH[table.name], params))
    return bool(rows)


async def purge_expired_tokens(database: Database, now: int) -> int:
    def run(conn: sa.Connection) -> int:
        removed = 0
        for table in (revoked_tokens, issued_tokens):
            result = conn.execute(table.delete().where(table.c.expires_at < now))
            removed += int(result.rowcount or 0)
        return removed

    return await database.write(run)


# ------------------------------------------------------ credential failures
_FAILURES = sa.select(credential_failures.c.failures, credential_failures.c.locked_until).where(
    credential_failures.c.project_id == P("project_id"),
    credential_failures.c.account == P("account"),
    credential_failures.c.updated_at >= P("fresh_after"),
)


async def credential_failures_of(
    database: Database, project_id: str, account: str, *, fresh_after: int
) -> tuple[int, int]:
    """(consecutive failures, locked until) of one account; failures last
    counted before `fresh_after` are forgotten."""
    params = {"project_id": project_id, "account": account, "fresh_after": fresh_after}

    def run(conn: sa.Connection) -> tuple[int, int]:
        row = conn.execute(_FAILURES, params).first()
        return (int(row.failures), int(row.locked_until)) if row else (0, 0)

    return await database.read(run)


async def count_credential_failure(
    database: Database,
    project_id: str,
    account: str,
    *,
    now: int,
    fresh_after: int,
    lock_for: Callable[[int], int],
    lock_event: Callable[[int, int], AuditEvent] | None = None,
) -> tuple[int, int]:
    """One more failure, counted atomically however many processes fail at
    once; the lock `lock_for(failures)` seconds long starts now, recorded as
    `lock_event(failures, seconds)`. Returns (failures, locked until)."""

    def run(conn: sa.Connection) -> tuple[int, int]:
        table = credential_failures
        stale = table.c.updated_at < fresh_after
        stmt = insert_for(conn, table).values(
            project_id=project_id, account=account, failures=1, locked_until=0, updated_at=now
        )
        failures = conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[table.c.project_id, table.c.account],
                set_={
                    "failures": sa.case((stale, 1), else_=table.c.failures + 1),
                    "locked_until": sa.case((stale, 0), else_=table.c.locked_until),
                    "updated_at": now,
                },
            ).returning(table.c.failures)
        ).scalar_one()
        seconds = lock_for(int(failures))
        locked_until = now + seconds if seconds else 0
        if seconds:
            conn.execute(
                table.update()
                .where(table.c.project_id == project_id, table.c.account == account)
                .values(locked_until=locked_until)
            )
            if lock_event is not None:
                record(conn, lock_event(int(failures), seconds))
        return int(failures), locked_until

    return await database.write(run)


async def forget_credential_failures(database: Database, project_id: str, account: str) -> None:
    def run(conn: sa.Connection) -> None:
        conn.execute(
            credential_failures.delete().where(
                credential_failures.c.project_id == project_id,
                credential_failures.c.account == account,
            )
        )

    await database.write(run)


async def purge_stale_credential_failures(database: Database, *, before: int) -> int:
    def run(conn: sa.Connection) -> int:
        table = credential_failures
        result = conn.execute(
            table.delete().where(table.c.updated_at < before, table.c.locked_until < before)
        )
        return int(result.rowcount or 0)

    return await database.write(run)
