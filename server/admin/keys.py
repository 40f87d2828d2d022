"""Admin keys: random, shown once, kept only as a SHA-256; each with a name,
an optional expiry, and a scope (every project or a list, read-only or
read-write). A key is looked up on every call (one indexed read), so a
revocation or an expiry holds at once in every process."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence

from providers.values import Unauthenticated
from server.admin import store
from server.admin.audit import AuditEvent
from server.clock import now
from server.events import types
from server.store.db import Database

# A prefix makes a leaked key recognisable to secret scanners.
PREFIX = "idk_"
_SHAPE = re.compile(r"idk_[A-Za-z0-9_-]{43}")
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_duration(text: str) -> int:
    """`90d`, `12h`, `30m`, `1w2d`: seconds."""
    compact = text.strip().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"a duration looks like 90d, 12h, 30m or 1w2d; got {text!r}")
    seconds = sum(int(n) * _UNIT[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"a duration must be more than 0; got {text!r}")
    return seconds


async def create(
    database: Database,
    *,
    name: str,
    projects: Sequence[str] | None,
    read_only: bool,
    expires_at: int | None,
    actor: str,
) -> tuple[store.AdminKeyRecord, str]:
    """A new key: its record and the key itself (to be shown once)."""
    key = new_key()
    record = await store.insert_admin_key(
        database,
        name=name,
        key_hash=key_hash(key),
        projects_reached=sorted(set(projects)) if projects else None,
        read_only=read_only,
        now=now(),
        expires_at=expires_at,
        event=lambda key_id: AuditEvent(
            None,
            types.ADMIN_KEY_CREATED,
            actor,
            data={"keyId": key_id, "readOnly": read_only, "projects": list(projects or [])},
        ),
    )
    return record, key


def invalid_key() -> Unauthenticated:
    # One answer for wrong, missing, expired and revoked keys: the reply
    # tells a guesser nothing about which keys exist.
    return Unauthenticated(
        "ADMIN_KEY_INVALID",
        "an admin key is required: Authorization: Bearer <key>; this one is unknown, expired"
        " or revoked",
    )


async def lookup(database: Database, key: str | None) -> store.AdminKeyRecord | None:
    """The key's record, usable or not; None for no key or an unknown one."""
    if not key or not _SHAPE.fullmatch(key):
        return None
    return await store.admin_key_by_hash(database, key_hash(key))
