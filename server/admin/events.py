"""The admin API's reads of the audit trail (server/events/audit.py writes
it): a project's events in keyset pages under the admin API's filter, and a
user's events for an export. Webhook endpoints are server/events/webhooks.py's
alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from server.admin.pages import Condition
from server.admin.store import Page, keyset_page
from server.events import audit as trail
from server.store.db import Database
from server.store.schema import audit_events

_AUDIT_COLUMNS = [c for c in audit_events.c if c.key != "fanned_out"]
_OPS = {
    "=": lambda c, v: c == v,
    ">=": lambda c, v: c >= v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    "<": lambda c, v: c < v,
}
_FIELDS = {"user_id": audit_events.c.user_id, "type": audit_events.c.type}


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
        return Page([trail.event_of(r) for r in page.rows], page.cursor)

    return await database.read(run)


async def user_audit_events(
    database: Database, project_id: str, user_id: str
) -> list[trail.AuditEvent]:
    """Every event about the user, oldest first (for an export)."""

    def run(conn: sa.Connection) -> list[trail.AuditEvent]:
        rows = conn.execute(
            sa.select(*_AUDIT_COLUMNS)
            .where(audit_events.c.project_id == project_id, audit_events.c.user_id == user_id)
            .order_by(audit_events.c.at, audit_events.c.event_id)
        )
        return [trail.event_of(r) for r in rows]

    return await database.read(run)
