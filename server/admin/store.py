"""The admin API's queries. Like server/store/repo.py, every query of
tenant data names the project first; admin keys and signing keys are
service-wide. Every change runs in one transaction with its audit event
(audit.record), and lists are keyset-paginated (pages.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from providers.values import Identity, InvalidArgument, User
from server.abuse.lockout import account_key
from server.admin import audit
from server.admin.audit import AuditEvent
from server.store import repo
from server.store.db import Database
from server.store.schema import (
    admin_keys,
    audit_events,
    credential_failures,
    devices,
    identities,
    issued_tokens,
    logins,
    projects,
    revoked_tokens,
    signing_keys,
    users,
    webhook_deliveries,
    webhook_endpoints,
)

# A soft-deleted project's data is purged this long after its deletion.
PURGE_GRACE_SECONDS = 30 * 86400
# Rows deleted per statement when purging, so no transaction holds the
# database for long (SQLite has one writer; logins must not wait on us).
PURGE_BATCH = 500


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    # The sort key of the last row, when more may follow.
    cursor: list[Any] | None


def keyset_page(
    conn: sa.Connection,
    query: sa.Select[Any],
    columns: Sequence[sa.ColumnElement[Any]],
    cursor: Sequence[Any] | None,
    limit: int,
) -> Page:
    """Newest first by `columns`; the page after `cursor`."""
    if cursor is not None:
        if len(cursor) != len(columns) or any(
            not isinstance(value, column.type.python_type)
            for value, column in zip(cursor, columns, strict=True)
        ):
            raise InvalidArgument(
                "INVALID_PAGE_TOKEN",
                "page_token is not one this list gave out (or its filter changed)",
                metadata={"field": "pageToken"},
            )
        query = query.where(sa.tuple_(*columns) < sa.tuple_(*(sa.literal(v) for v in cursor)))
    found = list(conn.execute(query.order_by(*(c.desc() for c in columns)).limit(limit + 1)))
    if len(found) <= limit:
        return Page(found, None)
    last = found[limit - 1]
    return Page(found[:limit], [getattr(last, c.key) for c in columns if c.key is not None])


# ----------------------------------------------------------------- projects
@dataclass(frozen=True)
class ProjectRecord:
    project_id: str
    name: str
    providers: Mapping[str, Any]
    limits: Mapping[str, Any] | None
    audit_retention_days: int | None
    created_at: int
    updated_at: int
    deleted_at: int | None
    anonymous_retention_days: int | None


def _project(row: Any) -> ProjectRecord:
    return ProjectRecord(
        row.project_id,
        row.name,
        dict(row.providers or {}),
        row.limits,
        row.audit_retention_days,
        row.created_at,
        row.updated_at,
        row.deleted_at,
        row.anonymous_retention_days,
    )


_PROJECT_COLUMNS = [c for c in projects.c if c.key != "secret"]


def _project_row(conn: sa.Connection, project_id: str) -> ProjectRecord | None:
    row = conn.execute(
        sa.select(*_PROJECT_COLUMNS).where(projects.c.project_id == project_id)
    ).first()
    return _project(row) if row else None


async def get_project(database: Database, project_id: str) -> ProjectRecord | None:
    """The project, soft-deleted or not."""
    return await database.read(lambda conn: _project_row(conn, project_id))


async def list_projects(
    database: Database,
    *,
    only: Sequence[str] | None,
    show_deleted: bool,
    limit: int,
    cursor: Sequence[Any] | None,
) -> Page:
    def run(conn: sa.Connection) -> Page:
        query = sa.select(*_PROJECT_COLUMNS)
        if only is not None:
            query = query.where(projects.c.project_id.in_(list(only)))
        if not show_deleted:
            query = query.where(projects.c.deleted_at.is_(None))
        page = keyset_page(
            conn, query, [projects.c.created_at, projects.c.project_id], cursor, limit
        )
        return Page([_project(r) for r in page.rows], page.cursor)

    return await database.read(run)


async def create_project(
    database: Database,
    *,
    project_id: str,
    name: str,
    providers_settings: Mapping[str, Any],
    limits: Mapping[str, Any] | None,
    audit_retention_days: int | None,
    secret: str,
    now: int,
    event: AuditEvent,
    anonymous_retention_days: int | None,
) -> ProjectRecord | None:
    """None when a project with this id exists (soft-deleted or not)."""

    def run(conn: sa.Connection) -> ProjectRecord | None:
        if _project_row(conn, project_id) is not None:
            return None
        conn.execute(
            projects.insert().values(
                project_id=project_id,
                name=name,
                secret=secret,
                providers=dict(providers_settings),
                limits=dict(limits) if limits is not None else None,
                audit_retention_days=audit_retention_days,
                anonymous_retention_days=anonymous_retention_days,
                created_at=now,
                updated_at=now,
            )
        )
        audit.record(conn, event)
        return _project_row(conn, project_id)

    return await database.write(run)


async def update_project(
    database: Database,
    project_id: str,
    *,
    check: Callable[[ProjectRecord], Mapping[str, Any]],
    now: int,
    event: AuditEvent,
) -> ProjectRecord | None:
    """`check(current)` gives the columns to write (it validates the merged
    settings, and may raise); None when there is no live project."""

    def run(conn: sa.Connection) -> ProjectRecord | None:
        query = sa.select(*_PROJECT_COLUMNS).where(projects.c.project_id == project_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None or row.deleted_at is not None:
            return None
        values = check(_project(row))
        conn.execute(
            projects.update()
            .where(projects.c.project_id == project_id)
            .values(**values, updated_at=now)
        )
        audit.record(conn, event)
        return _project_row(conn, project_id)

    return await database.write(run)


async def set_project_deleted(
    database: Database, project_id: str, *, deleted: bool, now: int, event: AuditEvent
) -> ProjectRecord | None:
    """Soft-delete a live project (or undelete a deleted one); None when
    there is no project in the state the change starts from."""

    def run(conn: sa.Connection) -> ProjectRecord | None:
        state = projects.c.deleted_at.is_(None) if deleted else projects.c.deleted_at.is_not(None)
        changed = conn.execute(
            projects.update()
            .where(projects.c.project_id == project_id, state)
            .values(deleted_at=now if deleted else None, updated_at=now)
        ).rowcount
        if not changed:
            return None
        audit.record(conn, event)
        return _project_row(conn, project_id)

    return await database.write(run)


# Every table holding a project's rows, children first, the project last.
_PROJECT_TABLES = (
    webhook_deliveries,
    webhook_endpoints,
    audit_events,
    logins,
    devices,
    credential_failures,
    revoked_tokens,
    issued_tokens,
    identities,
    users,
)


async def purge_deleted_projects(database: Database, *, deleted_before: int) -> int:
    """Remove every row of projects soft-deleted before `deleted_before`,
    in small batches (one short transaction each); returns projects purged."""

    def due(conn: sa.Connection) -> list[str]:
        return list(
            conn.execute(
                sa.select(projects.c.project_id).where(projects.c.deleted_at < deleted_before)
            ).scalars()
        )

    purged = 0
    for project_id in await database.read(due):
        for table in _PROJECT_TABLES:
            while await database.write(_delete_batch(table, project_id)):
                pass

        def drop(conn: sa.Connection, project_id: str = project_id) -> int:
            return int(
                conn.execute(
                    projects.delete().where(
                        projects.c.project_id == project_id, projects.c.deleted_at.is_not(None)
                    )
                ).rowcount
                or 0
            )

        purged += await database.write(drop)
    return purged


def _delete_batch(table: sa.Table, project_id: str) -> Callable[[sa.Connection], int]:
    key = [c for c in table.primary_key.columns]

    def run(conn: sa.Connection) -> int:
        batch = (
            sa.select(*key).where(table.c.project_id == project_id).limit(PURGE_BATCH).subquery()
        )
        match = sa.tuple_(*key).in_(sa.select(*batch.c))
        return int(conn.execute(table.delete().where(match)).rowcount or 0)

    return run


# -------------------------------------------------------------------- users
@dataclass(frozen=True)
class UserRecord:
    """A user as the admin API shows it: `user` carries its first identity;
    `identities` lists all of them (none for a tombstone)."""

    user: User
    identities: list[Identity]
    merged_into: str | None
    merged_at: int | None


def _first_identity(column: str) -> Any:
    first = (
        sa.select(identities.c[column])
        .where(
            identities.c.project_id == users.c.project_id,
            identities.c.user_id == users.c.user_id,
        )
        .order_by(identities.c.linked_at, identities.c.provider, identities.c.subject)
        .limit(1)
        .correlate(users)
        .scalar_subquery()
    )
    return first.label(column)


def _user_query(project_id: str) -> sa.Select[Any]:
    return sa.select(
        users,
        *(_first_identity(c) for c in ("provider", "subject", "external_id", "attributes")),
    ).where(users.c.project_id == project_id)


def _records(conn: sa.Connection, project_id: str, rows: Sequence[Any]) -> list[UserRecord]:
    """The rows' users with all their identities, in one more read."""
    linked: dict[str, list[Identity]] = {r.user_id: [] for r in rows}
    if linked:
        found = conn.execute(
            sa.select(identities)
            .where(identities.c.project_id == project_id, identities.c.user_id.in_(list(linked)))
            .order_by(identities.c.linked_at, identities.c.provider, identities.c.subject)
        )
        for i in found:
            linked[i.user_id].append(repo.identity_from_row(i))
    records = []
    for r in rows:
        held = linked[r.user_id]
        # Every identity's say, the newest winning where two say one thing.
        attributes = {k: v for i in held for k, v in i.attributes.items()}
        user = replace(repo.user_from_row(r), attributes=attributes)
        records.append(UserRecord(user, held, r.merged_into, r.merged_at))
    return records


def _record(conn: sa.Connection, project_id: str, where: Any) -> UserRecord | None:
    row = conn.execute(_user_query(project_id).where(where)).first()
    return _records(conn, project_id, [row])[0] if row else None


async def get_user(database: Database, project_id: str, user_id: str) -> UserRecord | None:
    return await database.read(lambda conn: _record(conn, project_id, users.c.user_id == user_id))


def _owner_of(project_id: str, *where: Any) -> Any:
    return users.c.user_id.in_(
        sa.select(identities.c.user_id).where(identities.c.project_id == project_id, *where)
    )


async def find_user_by_external_id(
    database: Database, project_id: str, external_id: str
) -> UserRecord | None:
    where = _owner_of(project_id, identities.c.external_id == external_id)
    return await database.read(lambda conn: _record(conn, project_id, where))


async def find_user_by_subject(
    database: Database, project_id: str, provider: str, subject: str
) -> UserRecord | None:
    where = _owner_of(
        project_id, identities.c.provider == provider, identities.c.subject == subject
    )
    return await database.read(lambda conn: _record(conn, project_id, where))


async def list_users(
    database: Database,
    project_id: str,
    *,
    provider: str | None,
    limit: int,
    cursor: Sequence[Any] | None,
) -> Page:
    def run(conn: sa.Connection) -> Page:
        query = _user_query(project_id)
        if provider is not None:
            query = query.where(_owner_of(project_id, identities.c.provider == provider))
        page = keyset_page(conn, query, [users.c.created_at, users.c.user_id], cursor, limit)
        return Page(_records(conn, project_id, page.rows), page.cursor)

    return await database.read(run)


async def revoke_sessions(
    database: Database, project_id: str, user_id: str, *, now: int, event: AuditEvent
) -> UserRecord | None:
    """users.valid_after, the mechanism of a logout: every token and
    signature issued before `now` is refused, whatever the provider."""

    def run(conn: sa.Connection) -> UserRecord | None:
        where = (users.c.project_id == project_id, users.c.user_id == user_id)
        later = sa.case((users.c.valid_after > now, users.c.valid_after), else_=now)
        changed = conn.execute(
            users.update().where(*where).values(valid_after=later, updated_at=now)
        ).rowcount
        if not changed:
            return None
        audit.record(conn, event)
        return _record(conn, project_id, users.c.user_id == user_id)

    return await database.write(run)


async def erase_user(
    database: Database, project_id: str, user_id: str, *, event: AuditEvent
) -> bool:
    """GDPR erasure, in one transaction: the user, its devices and logins,
    and the lockout count of its email. False when there is no such user."""

    def run(conn: sa.Connection) -> bool:
        found = _record(conn, project_id, users.c.user_id == user_id)
        if found is None:
            return False
        for table in (logins, devices, identities):
            conn.execute(
                table.delete().where(table.c.project_id == project_id, table.c.user_id == user_id)
            )
        accounts = [
            account_key(i.provider, email)
            for i in found.identities
            if isinstance(email := i.attributes.get("email"), str) and email
        ]
        if accounts:
            conn.execute(
                credential_failures.delete().where(
                    credential_failures.c.project_id == project_id,
                    credential_failures.c.account.in_(accounts),
                )
            )
        conn.execute(
            users.delete().where(users.c.project_id == project_id, users.c.user_id == user_id)
        )
        # The user's events lose device, IP and data; the erasure's own event
        # is then written under the pseudonym as they are, but keeps its data
        # (upstreamDeleted), which names no one.
        alias = audit.forget_user(conn, project_id, user_id)
        audit.record(conn, replace(event, user_id=alias, device_id=None, client_ip=None))
        return True

    return await database.write(run)


# ------------------------------------------------------- devices and logins
@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    sign_up: int
    last_login: int
    time_stamp: int
    valid_after: int

    @property
    def signed_in(self) -> bool:
        # The rule of every session check: one that began in the sign-out's
        # own second stays valid.
        return self.time_stamp >= self.valid_after


@dataclass(frozen=True)
class LoginRecord:
    login_id: str
    at: int
    device_id: str


def _device(row: Any) -> DeviceRecord:
    return DeviceRecord(row.device_id, row.sign_up, row.last_login, row.time_stamp, row.valid_after)


def _devices_query(project_id: str, user_id: str) -> sa.Select[Any]:
    return sa.select(devices).where(
        devices.c.project_id == project_id, devices.c.user_id == user_id
    )


async def list_devices(
    database: Database, project_id: str, user_id: str, *, limit: int, cursor: Sequence[Any] | None
) -> Page:
    def run(conn: sa.Connection) -> Page:
        query = _devices_query(project_id, user_id).where(
            devices.c.time_stamp >= devices.c.valid_after
        )
        page = keyset_page(conn, query, [devices.c.last_login, devices.c.device_id], cursor, limit)
        return Page([_device(r) for r in page.rows], page.cursor)

    return await database.read(run)


async def sign_out_device(
    database: Database,
    project_id: str,
    user_id: str,
    device_id: str,
    *,
    now: int,
    event: AuditEvent,
) -> bool:
    """End the sessions of one device (devices.valid_after, which the
    session check reads beside the user's); False when the user has no
    such signed-in device."""

    def run(conn: sa.Connection) -> bool:
        changed = conn.execute(
            devices.update()
            .where(
                devices.c.project_id == project_id,
                devices.c.user_id == user_id,
                devices.c.device_id == device_id,
                devices.c.time_stamp >= devices.c.valid_after,
            )
            .values(valid_after=now)
        ).rowcount
        if not changed:
            return False
        audit.record(conn, event)
        return True

    return await database.write(run)


async def list_logins(
    database: Database, project_id: str, user_id: str, *, limit: int, cursor: Sequence[Any] | None
) -> Page:
    def run(conn: sa.Connection) -> Page:
        query = sa.select(logins).where(
            logins.c.project_id == project_id, logins.c.user_id == user_id
        )
        page = keyset_page(conn, query, [logins.c.at, logins.c.login_id], cursor, limit)
        return Page([LoginRecord(r.login_id, r.at, r.device_id) for r in page.rows], page.cursor)

    return await database.read(run)


@dataclass(frozen=True)
class Export:
    user: UserRecord
    devices: list[DeviceRecord]
    logins: list[LoginRecord]


async def export_user(database: Database, project_id: str, user_id: str) -> Export | None:
    """Everything of the user's in our tables, read in one snapshot."""

    def run(conn: sa.Connection) -> Export | None:
        record = _record(conn, project_id, users.c.user_id == user_id)
        if record is None:
            return None
        found = conn.execute(
            _devices_query(project_id, user_id).order_by(devices.c.sign_up, devices.c.device_id)
        )
        history = conn.execute(
            sa.select(logins)
            .where(logins.c.project_id == project_id, logins.c.user_id == user_id)
            .order_by(logins.c.at, logins.c.login_id)
        )
        return Export(
            record,
            [_device(d) for d in found],
            [LoginRecord(r.login_id, r.at, r.device_id) for r in history],
        )

    return await database.read(run)


# --------------------------------------------------------------- admin keys
@dataclass(frozen=True)
class AdminKeyRecord:
    key_id: str
    name: str
    # The projects it may reach; None: every project.
    projects: tuple[str, ...] | None
    read_only: bool
    created_at: int
    expires_at: int | None
    revoked_at: int | None

    def usable(self, now: int) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def reaches(self, project_id: str) -> bool:
        return self.projects is None or project_id in self.projects


def _admin_key(row: Any) -> AdminKeyRecord:
    return AdminKeyRecord(
        row.key_id,
        row.name,
        tuple(row.projects) if row.projects is not None else None,
        bool(row.read_only),
        row.created_at,
        row.expires_at,
        row.revoked_at,
    )


_KEY_COLUMNS = [c for c in admin_keys.c if c.key != "key_hash"]
_KEY_BY_HASH = sa.select(*_KEY_COLUMNS).where(admin_keys.c.key_hash == sa.bindparam("key_hash"))


async def insert_admin_key(
    database: Database,
    *,
    name: str,
    key_hash: str,
    projects_reached: Sequence[str] | None,
    read_only: bool,
    now: int,
    expires_at: int | None,
    event: Callable[[str], AuditEvent],
) -> AdminKeyRecord:
    key_id = str(uuid.uuid4())

    def run(conn: sa.Connection) -> AdminKeyRecord:
        conn.execute(
            admin_keys.insert().values(
                key_id=key_id,
                name=name,
                key_hash=key_hash,
                projects=list(projects_reached) if projects_reached is not None else None,
                read_only=read_only,
                created_at=now,
                expires_at=expires_at,
            )
        )
        audit.record(conn, event(key_id))
        row = conn.execute(sa.select(*_KEY_COLUMNS).where(admin_keys.c.key_id == key_id)).one()
        return _admin_key(row)

    return await database.write(run)


async def admin_key_by_hash(database: Database, key_hash: str) -> AdminKeyRecord | None:
    def run(conn: sa.Connection) -> AdminKeyRecord | None:
        row = conn.execute(_KEY_BY_HASH, {"key_hash": key_hash}).first()
        return _admin_key(row) if row else None

    return await database.read(run)


async def get_admin_key(database: Database, key_id: str) -> AdminKeyRecord | None:
    def run(conn: sa.Connection) -> AdminKeyRecord | None:
        row = conn.execute(sa.select(*_KEY_COLUMNS).where(admin_keys.c.key_id == key_id)).first()
        return _admin_key(row) if row else None

    return await database.read(run)


async def list_admin_keys(database: Database, *, limit: int, cursor: Sequence[Any] | None) -> Page:
    def run(conn: sa.Connection) -> Page:
        page = keyset_page(
            conn,
            sa.select(*_KEY_COLUMNS),
            [admin_keys.c.created_at, admin_keys.c.key_id],
            cursor,
            limit,
        )
        return Page([_admin_key(r) for r in page.rows], page.cursor)

    return await database.read(run)


async def revoke_admin_key(
    database: Database, key_id: str, *, now: int, event: AuditEvent
) -> AdminKeyRecord | None:
    """None when there is no such key, or it was revoked already."""

    def run(conn: sa.Connection) -> AdminKeyRecord | None:
        changed = conn.execute(
            admin_keys.update()
            .where(admin_keys.c.key_id == key_id, admin_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
        if not changed:
            return None
        audit.record(conn, event)
        row = conn.execute(sa.select(*_KEY_COLUMNS).where(admin_keys.c.key_id == key_id)).one()
        return _admin_key(row)

    return await database.write(run)


# ------------------------------------------------------------ signing keys
@dataclass(frozen=True)
class SigningKeyRecord:
    kid: str
    algorithm: str
    created_at: int
    retired_at: int | None


async def list_signing_keys(
    database: Database, *, limit: int, cursor: Sequence[Any] | None
) -> Page:
    def run(conn: sa.Connection) -> Page:
        query = sa.select(
            signing_keys.c.kid,
            signing_keys.c.algorithm,
            signing_keys.c.created_at,
            signing_keys.c.retired_at,
        )
        page = keyset_page(
            conn, query, [signing_keys.c.created_at, signing_keys.c.kid], cursor, limit
        )
        return Page(
            [SigningKeyRecord(r.kid, r.algorithm, r.created_at, r.retired_at) for r in page.rows],
            page.cursor,
        )

    return await database.read(run)
