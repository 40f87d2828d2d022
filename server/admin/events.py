"""The admin API's side of the audit trail and the webhooks, over the
tables of migration 0004 (audit_events, webhook_endpoints,
webhook_deliveries).

Their storage, the relay and the delivery machinery belong to server/events
(another room, not on main yet). These functions are the seam: each has the
signature the admin servicer needs, and once server/events offers the same
operations the lead points these bodies at it, so the queries live once."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from server.admin import audit
from server.admin.audit import AuditEvent
from server.admin.pages import Condition
from server.admin.store import Page, keyset_page
from server.store.db import Database
from server.store.schema import audit_events, webhook_deliveries, webhook_endpoints


# -------------------------------------------------------------- audit trail
@dataclass(frozen=True)
class AuditRecord:
    event_id: str
    type: str
    at: int
    user_id: str | None
    actor: str
    provider: str | None
    device_id: str | None
    client_ip: str | None
    reason: str | None
    data: Mapping[str, Any] | None


_AUDIT_COLUMNS = [c for c in audit_events.c if c.key != "fanned_out"]
_OPS = {
    "=": lambda c, v: c == v,
    ">=": lambda c, v: c >= v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    "<": lambda c, v: c < v,
}
_FIELDS = {"user_id": audit_events.c.user_id, "type": audit_events.c.type}


def _audit(row: Any) -> AuditRecord:
    return AuditRecord(
        row.event_id,
        row.type,
        row.at,
        row.user_id,
        row.actor,
        row.provider,
        row.device_id,
        row.client_ip,
        row.reason,
        row.data,
    )


async def list_audit_events(
    database: Database,
    project_id: str,
    *,
    conditions: Sequence[Condition],
    limit: int,
    cursor: Sequence[Any] | None,
) -> Page:
    """Newest first. `conditions` name user_id or type (=), or
    event_time (a Unix second, any comparison)."""

    def run(conn: sa.Connection) -> Page:
        query = sa.select(*_AUDIT_COLUMNS).where(audit_events.c.project_id == project_id)
        for c in conditions:
            column = audit_events.c.at if c.field == "event_time" else _FIELDS[c.field]
            value: Any = int(c.value) if c.field == "event_time" else c.value
            query = query.where(_OPS[c.op](column, value))
        page = keyset_page(conn, query, [audit_events.c.at, audit_events.c.event_id], cursor, limit)
        return Page([_audit(r) for r in page.rows], page.cursor)

    return await database.read(run)


async def user_audit_events(database: Database, project_id: str, user_id: str) -> list[AuditRecord]:
    """Every event about the user, oldest first (for an export)."""

    def run(conn: sa.Connection) -> list[AuditRecord]:
        rows = conn.execute(
            sa.select(*_AUDIT_COLUMNS)
            .where(audit_events.c.project_id == project_id, audit_events.c.user_id == user_id)
            .order_by(audit_events.c.at, audit_events.c.event_id)
        )
        return [_audit(r) for r in rows]

    return await database.read(run)


# ----------------------------------------------------------------- webhooks
@dataclass(frozen=True)
class WebhookRecord:
    endpoint_id: str
    url: str
    event_types: list[str]
    created_at: int
    updated_at: int
    disabled_at: int | None
    disabled_reason: str | None


_HOOK_COLUMNS = [c for c in webhook_endpoints.c if c.key != "secret"]


def _hook(row: Any) -> WebhookRecord:
    return WebhookRecord(
        row.endpoint_id,
        row.url,
        list(row.event_types or []),
        row.created_at,
        row.updated_at,
        row.disabled_at,
        row.disabled_reason,
    )


def new_secret() -> str:
    # Standard Webhooks: "whsec_" and the base64 of 24 to 64 random bytes.
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _one(conn: sa.Connection, project_id: str, endpoint_id: str) -> WebhookRecord | None:
    row = conn.execute(
        sa.select(*_HOOK_COLUMNS).where(
            webhook_endpoints.c.project_id == project_id,
            webhook_endpoints.c.endpoint_id == endpoint_id,
        )
    ).first()
    return _hook(row) if row else None


async def create_webhook(
    database: Database,
    project_id: str,
    *,
    url: str,
    event_types: Sequence[str],
    now: int,
    event: AuditEvent,
) -> tuple[WebhookRecord, str]:
    """The endpoint and its signing secret (shown once)."""
    endpoint_id = str(uuid.uuid4())
    secret = new_secret()

    def run(conn: sa.Connection) -> WebhookRecord:
        conn.execute(
            webhook_endpoints.insert().values(
                project_id=project_id,
                endpoint_id=endpoint_id,
                url=url,
                event_types=list(event_types),
                secret=secret,
                created_at=now,
                updated_at=now,
            )
        )
        audit.record(conn, event)
        found = _one(conn, project_id, endpoint_id)
        assert found is not None
        return found

    return await database.write(run), secret


async def get_webhook(
    database: Database, project_id: str, endpoint_id: str
) -> WebhookRecord | None:
    return await database.read(lambda conn: _one(conn, project_id, endpoint_id))


async def list_webhooks(
    database: Database, project_id: str, *, limit: int, cursor: Sequence[Any] | None
) -> Page:
    def run(conn: sa.Connection) -> Page:
        query = sa.select(*_HOOK_COLUMNS).where(webhook_endpoints.c.project_id == project_id)
        columns = [webhook_endpoints.c.created_at, webhook_endpoints.c.endpoint_id]
        page = keyset_page(conn, query, columns, cursor, limit)
        return Page([_hook(r) for r in page.rows], page.cursor)

    return await database.read(run)


async def update_webhook(
    database: Database,
    project_id: str,
    endpoint_id: str,
    *,
    values: Mapping[str, Any],
    now: int,
    event: AuditEvent,
) -> WebhookRecord | None:
    """`values`: url, event_types, or disabled_at/disabled_reason set to
    None to enable it again."""

    def run(conn: sa.Connection) -> WebhookRecord | None:
        changed = conn.execute(
            webhook_endpoints.update()
            .where(
                webhook_endpoints.c.project_id == project_id,
                webhook_endpoints.c.endpoint_id == endpoint_id,
            )
            .values(**values, updated_at=now)
        ).rowcount
        if not changed:
            return None
        audit.record(conn, event)
        return _one(conn, project_id, endpoint_id)

    return await database.write(run)


async def delete_webhook(
    database: Database, project_id: str, endpoint_id: str, *, event: AuditEvent
) -> bool:
    def run(conn: sa.Connection) -> bool:
        conn.execute(
            webhook_deliveries.delete().where(
                webhook_deliveries.c.project_id == project_id,
                webhook_deliveries.c.endpoint_id == endpoint_id,
            )
        )
        removed = conn.execute(
            webhook_endpoints.delete().where(
                webhook_endpoints.c.project_id == project_id,
                webhook_endpoints.c.endpoint_id == endpoint_id,
            )
        ).rowcount
        if not removed:
            return False
        audit.record(conn, event)
        return True

    return await database.write(run)
