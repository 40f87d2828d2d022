"""What runs once before serving: schema, projects from the config file, and
a signing key. Idempotent, so every start (and every worker) may run it."""

from __future__ import annotations

from collections.abc import Sequence

from server import tokens
from server.clock import now
from server.config import ProjectConfig
from server.keys import ensure_signing_key
from server.store import db, repo
from server.store.db import Database


async def bootstrap(
    database: Database, projects: Sequence[ProjectConfig], *, auto_migrate: bool
) -> None:
    await db.ensure_schema(database, auto_migrate=auto_migrate)
    for project in projects:
        await repo.upsert_project(
            database,
            project_id=project.id,
            name=project.name,
            providers_settings=project.providers,
            limits=project.limits,
            anonymous_retention_days=project.anonymous_retention_days,
            secret=tokens.new_project_secret(),
            now=now(),
        )
    await ensure_signing_key(database)
