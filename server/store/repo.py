"""Queries. Every function that touches tenant data takes the project id and
puts it first in the WHERE clause, so no query can cross projects."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from providers.base import Device, User
from server.store.schema import (
    devices,
    issued_tokens,
    logins,
    projects,
    revoked_tokens,
    signing_keys,
    users,
)

LOGIN_HISTORY = 50


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass(frozen=True)
class ProjectRow:
    project_id: str
    name: str
    secret: str
    providers: Mapping[str, Mapping[str, Any]]
    updated_at: int


# ----------------------------------------------------------------- projects
async def upsert_project(
    engine: AsyncEngine,
    *,
    project_id: str,
    name: str,
    providers_settings: Mapping[str, Any],
    secret: str,
    now: int,
) -> None:
    """Creates the project with `secret`, or updates name and providers while
    keeping the secret it already has (rotating it would change every user's
    externalId)."""
    async with engine.begin() as conn:
        stmt = _insert(conn, projects).values(
            project_id=project_id,
            name=name,
            secret=secret,
            providers=dict(providers_settings),
            created_at=now,
            updated_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[projects.c.project_id],
            set_={"name": name, "providers": dict(providers_settings), "updated_at": now},
        )
        await conn.execute(stmt)


async def get_project(engine: AsyncEngine, project_id: str) -> ProjectRow | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(sa.select(projects).where(projects.c.project_id == project_id))
        ).first()
    if row is None:
        return None
    return ProjectRow(row.project_id, row.name, row.secret, row.providers, row.updated_at)


async def list_projects(engine: AsyncEngine) -> list[ProjectRow]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(projects).order_by(projects.c.name))).all()
    return [ProjectRow(r.project_id, r.name, r.secret, r.providers, r.updated_at) for r in rows]


# ------------------------------------------------------------ signing keys
async def load_signing_keys(engine: AsyncEngine) -> list[tuple[str, str, int, int | None]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(signing_keys))).all()
    return [(r.kid, r.private_pem, r.created_at, r.retired_at) for r in rows]


async def insert_signing_key_if_none(
    engine: AsyncEngine, *, kid: str, private_pem: str, now: int
) -> None:
    """Racing processes may each try; a lock-free check-then-insert is fine
    because a second active key is harmless (both are published)."""
    async with engine.begin() as conn:
        active = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(signing_keys)
                .where(signing_keys.c.retired_at.is_(None))
            )
        ).scalar_one()
        if active:
            return
        await conn.execute(
            signing_keys.insert().values(
                kid=kid, algorithm="ES256", private_pem=private_pem, created_at=now
            )
        )


# -------------------------------------------------------------------- users
def _user(row: Any) -> User:
    return User(
        user_id=row.user_id,
        project_id=row.project_id,
        provider=row.provider,
        subject=row.subject,
        external_id=row.external_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        username=row.username,
        attributes=dict(row.attributes or {}),
        app_profile=row.app_profile,
        valid_after=row.valid_after,
    )


async def find_user(
    engine: AsyncEngine, project_id: str, column: str, value: str, provider: str | None = None
) -> User | None:
    where = [users.c.project_id == project_id, users.c[column] == value]
    if provider is not None:
        where.append(users.c.provider == provider)
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(users).where(*where))).first()
    return _user(row) if row else None


async def ensure_user(
    engine: AsyncEngine,
    *,
    project_id: str,
    provider: str,
    subject: str,
    external_id: str,
    attributes: Mapping[str, Any],
    username: str | None,
    now: int,
) -> tuple[User, bool]:
    """Insert-or-nothing keyed on (project, provider, subject), then read back:
    racing first logins all end on the one row that won."""
    user_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        stmt = (
            _insert(conn, users)
            .values(
                project_id=project_id,
                user_id=user_id,
                provider=provider,
                subject=subject,
                external_id=external_id,
                username=username,
                attributes=dict(attributes),
                app_profile=None,
                created_at=now,
                updated_at=now,
                valid_after=0,
            )
            .on_conflict_do_nothing(
                index_elements=[users.c.project_id, users.c.provider, users.c.subject]
            )
        )
        await conn.execute(stmt)
        row = (
            await conn.execute(
                sa.select(users).where(
                    users.c.project_id == project_id,
                    users.c.provider == provider,
                    users.c.subject == subject,
                )
            )
        ).one()
    return _user(row), row.user_id == user_id


async def update_user(
    engine: AsyncEngine,
    project_id: str,
    user_id: str,
    *,
    values: Mapping[str, Any],
    now: int,
) -> User | None:
    """One UPDATE statement, so concurrent writers never interleave fields."""
    async with engine.begin() as conn:
        await conn.execute(
            users.update()
            .where(users.c.project_id == project_id, users.c.user_id == user_id)
            .values(**values, updated_at=now)
        )
        row = (
            await conn.execute(
                sa.select(users).where(users.c.project_id == project_id, users.c.user_id == user_id)
            )
        ).first()
    return _user(row) if row else None


async def merge_attributes(
    engine: AsyncEngine, project_id: str, user_id: str, patch: Mapping[str, Any], now: int
) -> User | None:
    """Read-merge-write inside one transaction that takes the row lock first
    (SELECT ... FOR UPDATE on PostgreSQL; SQLite serialises writers)."""
    async with engine.begin() as conn:
        query = sa.select(users.c.attributes).where(
            users.c.project_id == project_id, users.c.user_id == user_id
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        else:
            # Take SQLite's write lock before reading, so no other writer
            # can slip in between our read and our write.
            await conn.execute(
                users.update()
                .where(users.c.project_id == project_id, users.c.user_id == user_id)
                .values(updated_at=now)
            )
        current = (await conn.execute(query)).scalar_one_or_none()
        if current is None:
            return None
        merged = {**(current or {}), **patch}
        await conn.execute(
            users.update()
            .where(users.c.project_id == project_id, users.c.user_id == user_id)
            .values(attributes=merged, updated_at=now)
        )
        row = (
            await conn.execute(
                sa.select(users).where(users.c.project_id == project_id, users.c.user_id == user_id)
            )
        ).one()
    return _user(row)


# ------------------------------------------------------- devices and logins
async def record_login(
    engine: AsyncEngine,
    *,
    project_id: str,
    user_id: str,
    device_id: str,
    now: int,
    signature: str,
) -> Device:
    async with engine.begin() as conn:
        stmt = _insert(conn, devices).values(
            project_id=project_id,
            user_id=user_id,
            device_id=device_id,
            sign_up=now,
            last_login=now,
            time_stamp=now,
            signature=signature,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[devices.c.project_id, devices.c.user_id, devices.c.device_id],
            set_={"last_login": now, "time_stamp": now, "signature": signature},
        ).returning(devices.c.sign_up)
        sign_up = (await conn.execute(stmt)).scalar_one()
        await conn.execute(
            logins.insert().values(
                project_id=project_id,
                user_id=user_id,
                login_id=str(uuid.uuid4()),
                at=now,
                device_id=device_id,
            )
        )
    return Device(device_id, sign_up, now, now, signature)


async def profile_rows(
    engine: AsyncEngine, project_id: str, user_id: str
) -> tuple[Sequence[Device], list[int]]:
    async with engine.connect() as conn:
        device_rows = (
            await conn.execute(
                sa.select(devices)
                .where(devices.c.project_id == project_id, devices.c.user_id == user_id)
                .order_by(devices.c.sign_up, devices.c.device_id)
            )
        ).all()
        history = (
            (
                await conn.execute(
                    sa.select(logins.c.at)
                    .where(logins.c.project_id == project_id, logins.c.user_id == user_id)
                    .order_by(logins.c.at.desc())
                    .limit(LOGIN_HISTORY)
                )
            )
            .scalars()
            .all()
        )
    found = [
        Device(r.device_id, r.sign_up, r.last_login, r.time_stamp, r.signature) for r in device_rows
    ]
    return found, sorted(history)


# ------------------------------------------------- revoked and issued tokens
async def add_token_hash(
    engine: AsyncEngine, table: sa.Table, project_id: str, token_hash: str, expires_at: int
) -> None:
    async with engine.begin() as conn:
        stmt = (
            _insert(conn, table)
            .values(project_id=project_id, token_hash=token_hash, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=[table.c.project_id, table.c.token_hash])
        )
        await conn.execute(stmt)


async def has_token_hash(
    engine: AsyncEngine, table: sa.Table, project_id: str, token_hash: str, now: int
) -> bool:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(table.c.expires_at).where(
                    table.c.project_id == project_id,
                    table.c.token_hash == token_hash,
                    table.c.expires_at >= now,
                )
            )
        ).first()
    return row is not None


async def purge_expired_tokens(engine: AsyncEngine, now: int) -> int:
    removed = 0
    async with engine.begin() as conn:
        for table in (revoked_tokens, issued_tokens):
            result = await conn.execute(table.delete().where(table.c.expires_at < now))
            removed += int(result.rowcount or 0)
    return removed
