"""Queries of upgrading anonymous users: link a permanent identity to one,
merge one into a permanent user, unlink an identity (stale ones are purged
by server/store/retention.py).

Each runs in one transaction that first holds the rows it decides on
(SELECT ... FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE holds the
database), so racing links and merges of one anonymous user are decided one
after the other: exactly one wins, and the others see what it did."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from providers.values import AlreadyExists, FailedPrecondition, Identity, NotFound, User
from server.events.audit import AuditEvent, record
from server.store.db import Database
from server.store.repo import (
    HOT_IDENTITIES,
    IDENTITIES,
    identity_from_row,
    insert_identity,
    with_row,
)
from server.store.schema import devices, identities, logins, users

ANONYMOUS = "anonymous"
# appProfile merge policies (MergeUsers `policy`).
KEEP_TARGET, PREFER_SOURCE, FAIL = "keepTarget", "preferSource", "fail"
POLICIES = (KEEP_TARGET, PREFER_SOURCE, FAIL)


def account_upgraded(provider: str) -> AlreadyExists:
    """The anonymous user (or its device) has a permanent identity now."""
    return AlreadyExists(
        "ACCOUNT_UPGRADED",
        f"this anonymous user was upgraded: sign in with {provider}",
        metadata={"provider": provider},
    )


def already_linked(owner: str, provider: str) -> AlreadyExists:
    return AlreadyExists(
        "IDENTITY_ALREADY_LINKED",
        f"this {provider} identity already belongs to another user: merge instead",
        metadata={"userId": owner, "provider": provider},
    )


def already_merged(into: str) -> AlreadyExists:
    return AlreadyExists(
        "ANONYMOUS_USER_MERGED",
        "this anonymous user was merged into another user",
        metadata={"mergedInto": into},
    )


def _held(conn: sa.Connection, project_id: str, user_id: str) -> Any:
    query = sa.select(users).where(users.c.project_id == project_id, users.c.user_id == user_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).first()


def _identities(conn: sa.Connection, project_id: str, user_id: str) -> list[Identity]:
    key = {"project_id": project_id, "user_id": user_id}
    return [identity_from_row(r) for r in conn.execute(IDENTITIES, key)]


def _permanent(found: Sequence[Identity]) -> list[Identity]:
    return [i for i in found if i.provider != ANONYMOUS]


def _still_anonymous(conn: sa.Connection, project_id: str, source_id: str) -> Any:
    """The anonymous user's row, held; refused when it was merged or has a
    permanent identity already (someone upgraded it first)."""
    row = _held(conn, project_id, source_id)
    if row is None:
        raise NotFound("USER_NOT_FOUND", "the anonymous user no longer exists")
    if row.merged_into is not None:
        raise already_merged(row.merged_into)
    permanent = _permanent(_identities(conn, project_id, source_id))
    if permanent:
        raise account_upgraded(permanent[0].provider)
    return row


async def identities_of(database: Database, project_id: str, user_id: str) -> list[Identity]:
    # A hot read: every anonymous login asks it (is the device's user upgraded?).
    (rows,) = await database.fetch((HOT_IDENTITIES, {"project_id": project_id, "user_id": user_id}))
    return [identity_from_row(r) for r in rows]


async def source_state(database: Database, project_id: str, user_id: str) -> Any:
    """The anonymous user's row as a proof names it (merged or not), with
    the valid_after of the proof's device; None when it is gone."""

    def run(conn: sa.Connection) -> Any:
        return conn.execute(
            sa.select(users.c.merged_into, users.c.valid_after).where(
                users.c.project_id == project_id, users.c.user_id == user_id
            )
        ).first()

    return await database.read(run)


async def link_identity(
    database: Database,
    *,
    project_id: str,
    source_id: str,
    provider: str,
    subject: str,
    external_id: str,
    attributes: Mapping[str, Any],
    username: str | None,
    now: int,
    event: AuditEvent,
) -> User:
    """Attach (provider, subject) to the anonymous user `source_id`: its
    userId, devices, logins and appProfile stay; the provider's attributes
    join its own. Refused, with nothing written, when the identity belongs to
    another user or the anonymous user is no longer anonymous."""

    def run(conn: sa.Connection) -> User:
        row = _still_anonymous(conn, project_id, source_id)
        inserted = insert_identity(
            conn,
            project_id=project_id,
            provider=provider,
            subject=subject,
            user_id=source_id,
            external_id=external_id,
            attributes=attributes,
            now=now,
        )
        if not inserted:
            owner = conn.execute(
                sa.select(identities.c.user_id).where(
                    identities.c.project_id == project_id,
                    identities.c.provider == provider,
                    identities.c.subject == subject,
                )
            ).scalar_one()
            raise already_linked(owner, provider)
        conn.execute(
            users.update()
            .where(users.c.project_id == project_id, users.c.user_id == source_id)
            .values(username=row.username or username, updated_at=now)
        )
        record(conn, event)
        updated = conn.execute(sa.select(users).where(*_key(project_id, source_id))).one()
        view = user_from_row_with(updated, provider, subject, external_id)
        return dataclasses.replace(view, attributes=dict(attributes))

    return await database.write(run)


async def adopt_unused(
    database: Database,
    *,
    project_id: str,
    source_id: str,
    holder_id: str,
    provider: str,
    subject: str,
    now: int,
    event: AuditEvent,
) -> bool:
    """The identity (provider, subject) belongs to `holder_id`, a user our
    sign-up made that never signed in (no device, no login, no appProfile,
    no other identity): nobody's account yet, so a link moves it to the
    anonymous user `source_id` as if it had been made there, and the unused
    user becomes a tombstone merged into it. False, with nothing written,
    when the holder was used."""

    def run(conn: sa.Connection) -> bool:
        source = _still_anonymous(conn, project_id, source_id)
        holder = _held(conn, project_id, holder_id)
        if holder is None or holder.merged_into is not None or holder.app_profile:
            return False
        found = _identities(conn, project_id, holder_id)
        if [(i.provider, i.subject) for i in found] != [(provider, subject)]:
            return False
        for table in (devices, logins):
            used = conn.execute(
                sa.select(sa.literal(1))
                .select_from(table)
                .where(table.c.project_id == project_id, table.c.user_id == holder_id)
                .limit(1)
            ).first()
            if used is not None:
                return False
        conn.execute(
            identities.update()
            .where(
                identities.c.project_id == project_id,
                identities.c.provider == provider,
                identities.c.subject == subject,
            )
            .values(user_id=source_id, linked_at=now)
        )
        conn.execute(
            users.update()
            .where(*_key(project_id, source_id))
            .values(username=source.username or holder.username, updated_at=now)
        )
        conn.execute(
            users.update()
            .where(*_key(project_id, holder_id))
            .values(merged_into=source_id, merged_at=now, valid_after=now, updated_at=now)
        )
        record(conn, event)
        return True

    return await database.write(run)


def user_from_row_with(row: Any, provider: str, subject: str, external_id: str) -> User:
    """A users row as the identity (provider, subject) finds it."""
    view = User(
        user_id=row.user_id,
        project_id=row.project_id,
        provider=provider,
        subject=subject,
        external_id=external_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
    return with_row(view, row)


def _key(project_id: str, user_id: str) -> tuple[Any, Any]:
    return users.c.project_id == project_id, users.c.user_id == user_id


@dataclass(frozen=True)
class Merged:
    user: User
    # False when this exact merge had happened already (nothing changed).
    changed: bool
    devices: int = 0
    logins: int = 0


def merged_profile(target: Any, source: Any, policy: str) -> Any:
    """The appProfile the merged user keeps, by `policy`: key by key, the
    target's values win (keepTarget) or the source's do (preferSource);
    `fail` refuses when both have one."""
    mine, theirs = target or {}, source or {}
    if not theirs:
        return target
    if not mine:
        return dict(theirs)
    if policy == FAIL:
        raise AlreadyExists(
            "APP_PROFILE_CONFLICT",
            "both users have an appProfile and the policy is fail: nothing was merged",
            metadata={"policy": FAIL},
        )
    if policy == PREFER_SOURCE:
        return {**mine, **theirs}
    return {**theirs, **mine}


async def merge_users(
    database: Database,
    *,
    source_id: str,
    target: User,
    policy: str,
    now: int,
    signature: Callable[[str, str, int], str],
    event: Callable[[int, int], AuditEvent],
) -> Merged:
    """Move the anonymous user `source_id`'s devices, logins and identities
    to `target`, merge appProfile by `policy`, and leave the source as a
    tombstone (`merged_into`) whose sessions have ended. `signature(userId,
    deviceId, timeStamp)` re-signs the moved devices for their new user.
    The same merge again changes nothing."""
    project_id = target.project_id

    def run(conn: sa.Connection) -> Merged:
        source = _held(conn, project_id, source_id)
        if source is not None and source.merged_into == target.user_id:
            return Merged(target, changed=False)
        source = _still_anonymous(conn, project_id, source_id)
        held = _held(conn, project_id, target.user_id)
        if held is None or held.merged_into is not None:
            raise NotFound("USER_NOT_FOUND", "the permanent user no longer exists")
        app_profile = merged_profile(held.app_profile, source.app_profile, policy)
        moved = _move_devices(conn, project_id, source_id, target.user_id, signature)
        history = conn.execute(
            logins.update()
            .where(logins.c.project_id == project_id, logins.c.user_id == source_id)
            .values(user_id=target.user_id)
        ).rowcount
        conn.execute(
            identities.update()
            .where(identities.c.project_id == project_id, identities.c.user_id == source_id)
            .values(user_id=target.user_id, linked_at=now)
        )
        conn.execute(
            users.update()
            .where(*_key(project_id, target.user_id))
            .values(
                app_profile=app_profile,
                username=held.username or source.username,
                updated_at=now,
            )
        )
        conn.execute(
            users.update()
            .where(*_key(project_id, source_id))
            .values(merged_into=target.user_id, merged_at=now, valid_after=now, updated_at=now)
        )
        record(conn, event(moved, int(history or 0)))
        row = conn.execute(sa.select(users).where(*_key(project_id, target.user_id))).one()
        return Merged(with_row(target, row), True, moved, int(history or 0))

    return await database.write(run)


def _move_devices(
    conn: sa.Connection,
    project_id: str,
    source_id: str,
    target_id: str,
    signature: Callable[[str, str, int], str],
) -> int:
    """The source's devices become the target's; a device both used keeps
    its first sign-up and its latest session."""
    where = (devices.c.project_id == project_id, devices.c.user_id == source_id)
    moving = conn.execute(sa.select(devices).where(*where)).all()
    for d in moving:
        existing = conn.execute(
            sa.select(devices).where(
                devices.c.project_id == project_id,
                devices.c.user_id == target_id,
                devices.c.device_id == d.device_id,
            )
        ).first()
        latest = d if existing is None or d.time_stamp >= existing.time_stamp else existing
        values = {
            "sign_up": min(d.sign_up, existing.sign_up) if existing else d.sign_up,
            "last_login": max(d.last_login, existing.last_login) if existing else d.last_login,
            "time_stamp": latest.time_stamp,
            "signature": signature(target_id, d.device_id, latest.time_stamp),
            "valid_after": latest.valid_after,
        }
        if existing is None:
            conn.execute(
                devices.insert().values(
                    project_id=project_id, user_id=target_id, device_id=d.device_id, **values
                )
            )
        else:
            conn.execute(
                devices.update()
                .where(
                    devices.c.project_id == project_id,
                    devices.c.user_id == target_id,
                    devices.c.device_id == d.device_id,
                )
                .values(**values)
            )
    conn.execute(devices.delete().where(*where))
    return len(moving)


async def unlink_identity(
    database: Database,
    *,
    project_id: str,
    user_id: str,
    provider: str,
    external_id: str | None,
    now: int,
    event: Callable[[Identity], AuditEvent],
) -> list[Identity]:
    """Remove one identity of the user (the one of `provider`, or with
    `external_id` when given); never the last. Returns those left."""

    def run(conn: sa.Connection) -> list[Identity]:
        row = _held(conn, project_id, user_id)
        if row is None or row.merged_into is not None:
            raise NotFound("USER_NOT_FOUND", "no such user")
        found = _identities(conn, project_id, user_id)
        matching = [
            i
            for i in found
            if i.provider == provider and (external_id is None or i.external_id == external_id)
        ]
        if not matching:
            raise NotFound(
                "IDENTITY_NOT_FOUND",
                f"the user has no such {provider} identity",
                metadata={"provider": provider},
            )
        if len(matching) > 1:
            raise FailedPrecondition(
                "AMBIGUOUS_IDENTITY",
                f"the user has {len(matching)} {provider} identities: name one by externalId",
                metadata={"provider": provider, "field": "externalId"},
            )
        if len(found) == 1:
            raise FailedPrecondition(
                "LAST_IDENTITY",
                "this is the user's only identity: a user keeps at least one",
                metadata={"provider": provider},
            )
        gone = matching[0]
        conn.execute(
            identities.delete().where(
                identities.c.project_id == project_id,
                identities.c.provider == gone.provider,
                identities.c.subject == gone.subject,
                identities.c.user_id == user_id,
            )
        )
        conn.execute(users.update().where(*_key(project_id, user_id)).values(updated_at=now))
        record(conn, event(gone))
        return [i for i in found if i is not gone]

    return await database.write(run)
