"""Alembic environment. Identify runs migrations in-process (server/store/db.py)
and hands the connection in, so this file never opens its own."""

from __future__ import annotations

from alembic import context

from server.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
