"""The admin API's call point into the audit trail (server/events/audit.py).

Every admin change calls `record` inside the transaction of the change it
records, every refused key calls `record_refusal`, and an erasure calls
`forget_user` in its transaction. An admin event may concern no project (an
admin key, a signing key): the trail keeps those under its NO_PROJECT id.

What an event holds is bounded and secret-free: never a key, a token, a
password or a webhook secret (the trail refuses data keys that name one)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from server.events import audit as trail
from server.store.db import Database


@dataclass(frozen=True)
class AuditEvent:
    # None for service-wide changes (admin keys, signing keys).
    project_id: str | None
    # One of server/events/types.py.
    type: str
    # `admin:{key id}` (server.events.audit.admin_actor).
    actor: str
    user_id: str | None = None
    device_id: str | None = None
    client_ip: str | None = None
    # A refusal's ErrorInfo reason.
    reason: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_trail(self) -> trail.AuditEvent:
        return trail.AuditEvent(
            type=self.type,
            project_id=self.project_id or trail.NO_PROJECT,
            actor=self.actor,
            user_id=self.user_id,
            device_id=self.device_id,
            client_ip=self.client_ip or None,
            reason=self.reason,
            data=dict(self.data) or None,
        )


def record(conn: sa.Connection, event: AuditEvent) -> None:
    """Write `event` in the caller's transaction (`conn`)."""
    trail.record(conn, event.to_trail())


async def record_refusal(database: Database, event: AuditEvent) -> None:
    """A refused call's event (401 ADMIN_KEY_INVALID, 403 out of scope or
    read-only), in a transaction of its own: there is no change."""
    await trail.record_alone(database, event.to_trail())


def forget_user(conn: sa.Connection, project_id: str, user_id: str) -> str:
    """In an erasure's transaction: the user's audit events keep only a
    pseudonym, which is returned for the `user.deleted` event."""
    return trail.pseudonymize_user(conn, project_id, user_id)
