"""THE call point of the admin API into the audit trail.

The audit trail's storage (server/events, another room) is not on main yet:
until it is, these functions record nothing. The lead wires them to
`server.events.audit` in this one module; every admin change already calls
`record` inside the transaction of the change it records, every refused key
calls `record_refusal`, and an erasure calls `forget_user` in its
transaction, so wiring needs no other edit.

What an event holds is bounded and secret-free: never a key, a token, a
password or a webhook secret."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from server.store.db import Database


@dataclass(frozen=True)
class AuditEvent:
    # None for service-wide changes (admin keys, signing keys).
    project_id: str | None
    # `admin.project.created`, `admin.user.deleted`, `admin.key_refused`, ...
    type: str
    # `admin:{key id}`, or `admin` for a refused call without a usable key.
    actor: str
    user_id: str | None = None
    device_id: str | None = None
    client_ip: str | None = None
    # A refusal's ErrorInfo reason.
    reason: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


def record(conn: sa.Connection, event: AuditEvent) -> None:
    """Write `event` in the caller's transaction (`conn`).
    WIRE: server.events.audit.record(conn, ...) once it exists."""


async def record_refusal(database: Database, event: AuditEvent) -> None:
    """Write a refused call's event (401 ADMIN_KEY_INVALID, 403 out of
    scope or read-only) in a transaction of its own: there is no change.
    WIRE: server.events.audit.record in database.write."""


def forget_user(conn: sa.Connection, project_id: str, user_id: str) -> None:
    """In an erasure's transaction: the user's audit events keep only a
    pseudonym. WIRE: server.events.audit.pseudonymize_user(conn, ...)."""
