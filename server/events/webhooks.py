"""A project's webhook endpoints: where the relay (relay.py) delivers the
project's audit events, of the types each endpoint subscribes to.

An endpoint's secret signs its deliveries (Standard Webhooks, `whsec_` and
base64); it is shown once, when the endpoint is made, and never listed. The
URL rule: `https://` anywhere, or `http://` to localhost, 127.0.0.1 or [::1]
only (a receiver on the same machine, or a test); no user:password in it.

Every function takes the project id and puts it first in every WHERE, like
the store's own queries: one project's endpoints are never another's. Those
that change an endpoint record an `admin.webhook_*` event in the same
transaction, naming `actor` (the admin API passes "admin:<keyId>").
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from providers.values import FailedPrecondition, InvalidArgument, NotFound
from server import clock
from server.events import types
from server.events.audit import ACTOR_SYSTEM, AuditEvent, record
from server.store.db import Database
from server.store.schema import projects, webhook_deliveries, webhook_endpoints

MAX_ENDPOINTS_PER_PROJECT = 20
MAX_URL_CHARS = 2048
# Standard Webhooks asks for 24 to 64 random bytes.
SECRET_BYTES = 32
SECRET_PREFIX = "whsec_"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Endpoint:
    project_id: str
    endpoint_id: str
    url: str
    event_types: tuple[str, ...]
    created_at: int
    updated_at: int
    # Set when the relay gave up on it (or it answered 410 Gone); cleared by
    # enable_endpoint.
    disabled_at: int | None = None
    disabled_reason: str | None = None

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "projectId": self.project_id,
            "endpointId": self.endpoint_id,
            "url": self.url,
            "eventTypes": list(self.event_types),
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "enabled": self.enabled,
            "disabledAt": self.disabled_at,
            "disabledReason": self.disabled_reason,
        }


@dataclass(frozen=True)
class Delivery:
    """One event to one endpoint, as the operator sees it."""

    delivery_id: str
    endpoint_id: str
    event_id: str
    # pending, delivered, failed (given up).
    state: str
    attempts: int
    next_attempt_at: int
    last_status: int | None
    last_error: str | None
    created_at: int
    delivered_at: int | None


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        project_id=row.project_id,
        endpoint_id=row.endpoint_id,
        url=row.url,
        event_types=tuple(row.event_types),
        created_at=int(row.created_at),
        updated_at=int(row.updated_at),
        disabled_at=row.disabled_at,
        disabled_reason=row.disabled_reason,
    )


# ------------------------------------------------------------------- checks
def check_url(url: str) -> str:
    """THE webhook URL rule (see the module's docstring)."""

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument("INVALID_WEBHOOK_URL", f"uri {why}", metadata={"field": "uri"})

    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise bad(f"must be an https:// URL of at most {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise bad("is not a valid URL") from exc
    if not parsed.host:
        raise bad("must name a host")
    if parsed.userinfo:
        raise bad("must not carry a user or password (deliveries are signed instead)")
    if parsed.scheme == "https":
        return url
    if parsed.scheme == "http" and parsed.host in LOCAL_HOSTS:
        return url
    raise bad("must be https:// (http:// only to localhost, 127.0.0.1 or [::1])")


def check_event_types(event_types: Collection[str]) -> tuple[str, ...]:
    """Event type names (server/events/types.py), `user.*`-style groups or
    `*`; at least one."""
    chosen = tuple(sorted(set(event_types)))
    if not chosen:
        raise InvalidArgument(
            "MISSING_FIELD",
            "eventTypes must name at least one event type (or '*')",
            metadata={"field": "eventTypes"},
        )
    for name in chosen:
        if name not in types.SUBSCRIBABLE:
            raise InvalidArgument(
                "INVALID_EVENT_TYPE",
                f"unknown event type {str(name)[:64]!r}",
                metadata={"field": "eventTypes"},
            )
    return chosen


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _not_found(endpoint_id: str) -> NotFound:
    return NotFound(
        "WEBHOOK_NOT_FOUND", "no such webhook in this project", metadata={"webhookId": endpoint_id}
    )


def _event(kind: str, project_id: str, endpoint_id: str, actor: str) -> AuditEvent:
    return AuditEvent(
        type=kind, project_id=project_id, actor=actor, data={"endpointId": endpoint_id}
    )


_ONE = sa.select(webhook_endpoints).where(
    webhook_endpoints.c.project_id == sa.bindparam("project_id"),
    webhook_endpoints.c.endpoint_id == sa.bindparam("endpoint_id"),
)


def _where(project_id: str, endpoint_id: str) -> Any:
    c = webhook_endpoints.c
    return sa.and_(c.project_id == project_id, c.endpoint_id == endpoint_id)


def _read_one(conn: sa.Connection, project_id: str, endpoint_id: str) -> Endpoint | None:
    row = conn.execute(_ONE, {"project_id": project_id, "endpoint_id": endpoint_id}).first()
    return _endpoint(row) if row else None


# --------------------------------------------------------------------- CRUD
async def create_endpoint(
    database: Database,
    project_id: str,
    *,
    url: str,
    event_types: Collection[str],
    actor: str = ACTOR_SYSTEM,
) -> tuple[Endpoint, str]:
    """A new, enabled endpoint, and its signing secret (`whsec_...`), which
    is shown this once. PROJECT_NOT_FOUND, INVALID_WEBHOOK_URL,
    INVALID_EVENT_TYPE, TOO_MANY_WEBHOOKS (FAILED_PRECONDITION)."""
    checked_url, chosen = check_url(url), check_event_types(event_types)
    secret, endpoint_id, at = new_secret(), str(uuid.uuid4()), clock.now()

    def run(conn: sa.Connection) -> Endpoint:
        known = conn.execute(
            sa.select(projects.c.project_id).where(projects.c.project_id == project_id)
        ).first()
        if known is None:
            raise NotFound(
                "PROJECT_NOT_FOUND", "no such project", metadata={"projectId": project_id}
            )
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(webhook_endpoints)
            .where(webhook_endpoints.c.project_id == project_id)
        ).scalar_one()
        if count >= MAX_ENDPOINTS_PER_PROJECT:
            raise FailedPrecondition(
                "TOO_MANY_WEBHOOKS",
                f"a project has at most {MAX_ENDPOINTS_PER_PROJECT} webhook endpoints",
            )
        conn.execute(
            webhook_endpoints.insert().values(
                project_id=project_id,
                endpoint_id=endpoint_id,
                url=checked_url,
                event_types=list(chosen),
                secret=secret,
                created_at=at,
                updated_at=at,
            )
        )
        record(conn, _event(types.ADMIN_WEBHOOK_CREATED, project_id, endpoint_id, actor))
        return Endpoint(project_id, endpoint_id, checked_url, chosen, at, at)

    return await database.write(run), secret


async def get_endpoint(database: Database, project_id: str, endpoint_id: str) -> Endpoint | None:
    return await database.read(lambda conn: _read_one(conn, project_id, endpoint_id))


async def list_endpoints(database: Database, project_id: str) -> list[Endpoint]:
    """Every endpoint of the project (at most MAX_ENDPOINTS_PER_PROJECT),
    oldest first."""
    c = webhook_endpoints.c
    query = (
        sa.select(webhook_endpoints)
        .where(c.project_id == project_id)
        .order_by(c.created_at, c.endpoint_id)
    )
    return await database.read(lambda conn: [_endpoint(r) for r in conn.execute(query)])


async def update_endpoint(
    database: Database,
    project_id: str,
    endpoint_id: str,
    *,
    url: str | None = None,
    event_types: Collection[str] | None = None,
    actor: str = ACTOR_SYSTEM,
) -> Endpoint:
    """Change the URL and/or the event types (the secret stays).
    WEBHOOK_NOT_FOUND, INVALID_WEBHOOK_URL, INVALID_EVENT_TYPE."""
    values: dict[str, Any] = {}
    if url is not None:
        values["url"] = check_url(url)
    if event_types is not None:
        values["event_types"] = list(check_event_types(event_types))

    def run(conn: sa.Connection) -> Endpoint:
        if values:
            changed = conn.execute(
                webhook_endpoints.update()
                .where(_where(project_id, endpoint_id))
                .values(**values, updated_at=clock.now())
            ).rowcount
            if changed:
                record(conn, _event(types.ADMIN_WEBHOOK_UPDATED, project_id, endpoint_id, actor))
        found = _read_one(conn, project_id, endpoint_id)
        if found is None:
            raise _not_found(endpoint_id)
        return found

    return await database.write(run)


async def enable_endpoint(
    database: Database, project_id: str, endpoint_id: str, *, actor: str = ACTOR_SYSTEM
) -> Endpoint:
    """Re-enable an endpoint the relay disabled: new events reach it again,
    and its deliveries still pending (paused while it was disabled) resume.
    Deliveries already given up stay failed. WEBHOOK_NOT_FOUND."""

    def run(conn: sa.Connection) -> Endpoint:
        changed = conn.execute(
            webhook_endpoints.update()
            .where(_where(project_id, endpoint_id), webhook_endpoints.c.disabled_at.is_not(None))
            .values(disabled_at=None, disabled_reason=None, updated_at=clock.now())
        ).rowcount
        if changed:
            record(conn, _event(types.ADMIN_WEBHOOK_ENABLED, project_id, endpoint_id, actor))
        found = _read_one(conn, project_id, endpoint_id)
        if found is None:
            raise _not_found(endpoint_id)
        return found

    return await database.write(run)


async def delete_endpoint(
    database: Database, project_id: str, endpoint_id: str, *, actor: str = ACTOR_SYSTEM
) -> None:
    """The endpoint and its deliveries, sent or not. WEBHOOK_NOT_FOUND."""

    def run(conn: sa.Connection) -> None:
        gone = conn.execute(webhook_endpoints.delete().where(_where(project_id, endpoint_id)))
        if not gone.rowcount:
            raise _not_found(endpoint_id)
        d = webhook_deliveries.c
        conn.execute(
            webhook_deliveries.delete().where(
                d.project_id == project_id, d.endpoint_id == endpoint_id
            )
        )
        record(conn, _event(types.ADMIN_WEBHOOK_DELETED, project_id, endpoint_id, actor))

    await database.write(run)


async def list_deliveries(
    database: Database, project_id: str, endpoint_id: str, *, limit: int = 50
) -> list[Delivery]:
    """An endpoint's most recent deliveries, newest first: what the operator
    reads to see why an endpoint was disabled."""
    d = webhook_deliveries.c
    query = (
        sa.select(webhook_deliveries)
        .where(d.project_id == project_id, d.endpoint_id == endpoint_id)
        .order_by(d.created_at.desc(), d.delivery_id)
        .limit(max(1, min(limit, 500)))
    )

    def run(conn: sa.Connection) -> list[Delivery]:
        return [
            Delivery(
                delivery_id=r.delivery_id,
                endpoint_id=r.endpoint_id,
                event_id=r.event_id,
                state=r.state,
                attempts=r.attempts,
                next_attempt_at=r.next_attempt_at,
                last_status=r.last_status,
                last_error=r.last_error,
                created_at=r.created_at,
                delivered_at=r.delivered_at,
            )
            for r in conn.execute(query)
        ]

    return await database.read(run)
