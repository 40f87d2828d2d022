"""Database engines, URLs and migrations.

The public URL forms are `sqlite:///path` and `postgresql://user@host:port/db`;
the async drivers (aiosqlite, asyncpg) are an implementation detail chosen here.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = pathlib.Path(__file__).resolve().parent / "migrations"
DEFAULT_URL = "sqlite:///var/identify.db"


class SchemaError(RuntimeError):
    """The database schema does not match this build."""


@dataclass(frozen=True)
class DatabaseUrl:
    public: str
    driver_url: str
    dialect: str

    @classmethod
    def parse(cls, url: str) -> DatabaseUrl:
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError(
                f"database URL must look like sqlite:///path or postgresql://..., got {url!r}"
            )
        if scheme in ("sqlite", "sqlite+aiosqlite"):
            return cls(url, f"sqlite+aiosqlite://{rest}", "sqlite")
        if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
            return cls(url, f"postgresql+asyncpg://{rest}", "postgresql")
        raise ValueError(f"unsupported database {scheme!r}: use sqlite:/// or postgresql://")

    def redacted(self) -> str:
        return sa.engine.make_url(self.public).render_as_string(hide_password=True)

    def sqlite_path(self) -> pathlib.Path | None:
        if self.dialect != "sqlite":
            return None
        database = sa.engine.make_url(self.driver_url).database
        if not database or database == ":memory:":
            return None
        return pathlib.Path(database)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes writers
    # from several processes queue instead of failing with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    parsed = DatabaseUrl.parse(url)
    if parsed.dialect == "sqlite":
        path = parsed.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            parsed.driver_url, pool_size=pool_size, max_overflow=0, hide_parameters=True
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        parsed.driver_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A restarted PostgreSQL leaves dead pooled connections; check first.
        pool_pre_ping=True,
        pool_recycle=1800,
        # Errors are logged; their SQL parameters hold signatures and emails.
        hide_parameters=True,
        connect_args={"timeout": 5, "command_timeout": 10},
    )


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(conn: sa.Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def migrate(engine: AsyncEngine) -> tuple[str | None, str]:
    """Apply every pending migration; returns (before, after) revisions."""
    before = await current_revision(engine)

    def upgrade(conn: sa.Connection) -> None:
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
    return before, head_revision()


async def ensure_schema(engine: AsyncEngine, *, auto_migrate: bool) -> None:
    """A brand-new database is created at head; an older schema is migrated
    only when asked (`identify migrate` or `--migrate`), since migrating a
    shared production database is an operator's decision."""
    current = await current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None or auto_migrate:
        await migrate(engine)
        return
    script = ScriptDirectory.from_config(_alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaError(
            f"database schema {current} is newer than this build ({head}); upgrade Identify"
        )
    raise SchemaError(
        f"database schema {current} is older than this build ({head}); "
        "run `identify migrate --db URL` first"
    )
