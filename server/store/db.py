"""Database engines, URLs and migrations.

The public URL forms are `sqlite:///path` and `postgresql://user@host:port/db`;
how each is driven (sqlite3 in-thread, asyncpg) is decided here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = pathlib.Path(__file__).resolve().parent / "migrations"
DEFAULT_URL = "sqlite:///var/identify.db"
T = TypeVar("T")


class SchemaError(RuntimeError):
    """The database schema does not match this build."""


@dataclass(frozen=True)
class DatabaseUrl:
    public: str
    driver_url: str
    dialect: str
    # PostgreSQL behind PgBouncer in transaction mode (`?pgbouncer=true`):
    # no prepared statements survive a transaction there, so asyncpg's
    # statement caches are turned off.
    pgbouncer: bool = False

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
            parsed = sa.engine.make_url(f"postgresql+asyncpg://{rest}")
            flag = parsed.query.get("pgbouncer")
            if flag not in (None, "true", "false"):
                raise ValueError("pgbouncer= in the database URL must be true or false")
            driver = parsed.difference_update_query(["pgbouncer"])
            return cls(
                url, driver.render_as_string(hide_password=False), "postgresql", flag == "true"
            )
        raise ValueError(f"unsupported database {scheme!r}: use sqlite:/// or postgresql://")

    def asyncpg_dsn(self) -> str:
        """The URL as asyncpg itself takes it (the direct pool of hot reads)."""
        return (
            sa.engine.make_url(self.driver_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )

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
    # WAL lets readers run beside the one writer. busy_timeout stays short:
    # a write that finds another process writing waits in Database.write
    # (asyncio.sleep), not inside SQLite where it would block the event loop.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_immediate(conn: sa.Connection) -> None:
    # Take the write lock at BEGIN, so a transaction never fails half-way
    # because another process started writing after our first read.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


SQLITE_BUSY_MS = 5
SQLITE_WRITE_PATIENCE = 10.0
# Back-off between tries while another process holds SQLite's write lock: its
# transactions last well under a millisecond, so a long sleep only adds
# latency (the p99 of writes with two processes).
SQLITE_RETRY_FIRST_S = 0.001
SQLITE_RETRY_MAX_S = 0.008
# Wraps each read or write, given "read" or "write" and the name of the repo
# function that asked (`get_project`): set by server/tracing when traces are
# on (one span per store operation).
Observer = Callable[[str, str], AbstractContextManager[object]]


def _asker(fn: Callable[..., Any]) -> str:
    return fn.__qualname__.partition(".<locals>")[0]


class Database:
    """The store's two ways in: `read(fn)` and `write(fn)`, where `fn` is plain
    synchronous SQLAlchemy Core code given a Connection.

    SQLite runs `fn` right here on the event loop thread: an indexed read
    costs ~10 us, while a hop to a driver thread (aiosqlite) costs ~300 us
    and dominated every call. Writes in one process take turns (an asyncio
    lock), so they never spin in SQLite's busy handler against each other;
    against other processes they retry with asyncio.sleep.

    PostgreSQL runs `fn` through asyncpg (AsyncConnection.run_sync), so a
    slow query never blocks the loop.
    """

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = DatabaseUrl.parse(url)
        self.dialect = self.url.dialect
        self._write_lock = asyncio.Lock()
        self._reader: sa.Connection | None = None
        self._hot_writer: Any = None  # the pool's proxy of one sqlite3 connection
        self.observe: Observer | None = None
        if self.dialect == "sqlite":
            path = self.url.sqlite_path()
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            sync_url = sa.engine.make_url(self.url.driver_url).set(drivername="sqlite")
            # Two more than asked: the long-lived reader and hot writer keep
            # one each for themselves.
            self._sync = sa.create_engine(
                sync_url, pool_size=pool_size + 2, max_overflow=0, hide_parameters=True
            )
            event.listen(self._sync, "connect", _sqlite_pragmas)
            self._sync_writer = self._sync.execution_options()
            event.listen(self._sync_writer, "begin", _begin_immediate)
            self._async: AsyncEngine | None = None
        else:
            # Only here: SQLAlchemy's asyncio extension imports its ORM,
            # ~7 MB a SQLite process would keep and never use.
            from sqlalchemy.ext.asyncio import create_async_engine

            self._async = create_async_engine(
                self.url.driver_url,
                pool_size=pool_size,
                max_overflow=pool_size,
                # No ping before each checkout (a round trip per call): a
                # connection that fails as disconnected invalidates the whole
                # pool, so after a PostgreSQL restart only the calls already
                # holding a dead connection fail.
                pool_pre_ping=False,
                pool_recycle=1800,
                # Errors are logged; their SQL parameters hold signatures and emails.
                hide_parameters=True,
                connect_args={
                    "timeout": 5,
                    "command_timeout": 10,
                    **(
                        {"prepared_statement_cache_size": 0, "statement_cache_size": 0}
                        if self.url.pgbouncer
                        else {}
                    ),
                },
            )
        self._pool_size = pool_size
        self._pg: asyncpg.Pool | None = None
        self._pg_opening: asyncio.Lock = asyncio.Lock()

    async def read(self, fn: Callable[[sa.Connection], T]) -> T:
        if self.observe is not None:
            with self.observe("read", _asker(fn)):
                return await self._read(fn)
        return await self._read(fn)

    async def _read(self, fn: Callable[[sa.Connection], T]) -> T:
        if self._async is None:
            return self._read_sqlite(fn)
        async with self._async.connect() as aconn:
            return await aconn.run_sync(fn)

    def _read_sqlite(self, fn: Callable[[sa.Connection], T]) -> T:
        # One long-lived connection for the loop's reads: in autocommit mode
        # each SELECT is its own snapshot, so holding it open holds no lock,
        # and a pool checkout per read cost as much as the read.
        if self._reader is None or self._reader.closed:
            self._reader = self._sync.connect()
        try:
            return fn(self._reader)
        except BaseException:
            self._reader.invalidate()
            self._reader = None
            raise

    async def fetch(self, *queries: tuple[HotQuery, Mapping[str, Any]]) -> list[list[Any]]:
        """The rows of each of `queries` (hot reads: a user, its profile
        rows), read with one connection. On PostgreSQL straight through
        asyncpg, its statements prepared once per connection: SQLAlchemy's
        run_sync bridge cost ~3x the query itself. On SQLite, the loop's
        long-lived reader."""
        if self.observe is not None:
            with self.observe("read", "Database.fetch"):
                return await self._fetch(queries)
        return await self._fetch(queries)

    async def _fetch(
        self, queries: Sequence[tuple[HotQuery, Mapping[str, Any]]]
    ) -> list[list[Any]]:
        if self._async is None:
            return self._read_sqlite(lambda conn: _fetch_sqlite3(conn, queries))
        pool = self._pg or await self._open_pg()
        with _asyncpg_errors("hot read"):
            async with pool.acquire() as conn:
                return [
                    [q.row(r) for r in await conn.fetch(q.pg_sql, *q.pg_args(params))]
                    for q, params in queries
                ]

    async def _open_pg(self) -> asyncpg.Pool:
        async with self._pg_opening:
            if self._pg is None:
                self._pg = await asyncpg.create_pool(
                    self.url.asyncpg_dsn(),
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=5,
                    command_timeout=10,
                    statement_cache_size=0 if self.url.pgbouncer else 100,
                )
        return self._pg

    async def write_hot(self, hot: HotWrite, params: Mapping[str, Any]) -> Any:
        """Runs `hot` (a login's device, login and audit rows) on the drivers
        directly; returns the first column of its first part's RETURNING.
        On PostgreSQL its parts are one statement (data-modifying CTEs): one
        round trip, atomic on its own. On SQLite they run in turn in one
        BEGIN IMMEDIATE transaction on a long-lived sqlite3 connection: the
        SQLAlchemy pool checkout, transaction events and statement
        compilation cost several times the statements themselves."""
        if self.observe is not None:
            with self.observe("write", hot.name):
                return await self._write_hot(hot, params)
        return await self._write_hot(hot, params)

    async def _write_hot(self, hot: HotWrite, params: Mapping[str, Any]) -> Any:
        if self._async is not None:
            pool = self._pg or await self._open_pg()
            with _asyncpg_errors("hot write"):
                async with pool.acquire() as conn:
                    return await conn.fetchval(hot.pg_sql, *hot.pg_args(params))
        return await self._sqlite_turn(lambda: self._hot_sqlite(hot, params))

    def _hot_sqlite(self, hot: HotWrite, params: Mapping[str, Any]) -> Any:
        if self._hot_writer is None or not self._hot_writer.is_valid:
            self._hot_writer = self._sync.raw_connection()
        db: sqlite3.Connection = self._hot_writer.driver_connection
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _sqlite_error("BEGIN IMMEDIATE", exc) from exc
        try:
            first, *rest = hot.sqlite
            row = db.execute(first.sql, first.args(params)).fetchone()
            for part in rest:
                db.execute(part.sql, part.args(params))
            db.execute("COMMIT")
        except BaseException as exc:
            # A connection that failed mid-transaction is not trusted again.
            self._hot_writer.invalidate()
            self._hot_writer = None
            if isinstance(exc, sqlite3.Error):
                raise _sqlite_error(hot.sqlite[0].sql, exc) from exc
            raise
        return row[0] if row is not None else None

    async def _sqlite_turn(self, run: Callable[[], T]) -> T:
        """`run` (one SQLite write transaction) in this process's turn; while
        another process holds the write lock, tried again after a short
        asyncio.sleep, never blocking the loop in SQLite's busy handler."""
        async with self._write_lock:
            deadline = time.monotonic() + SQLITE_WRITE_PATIENCE
            delay = SQLITE_RETRY_FIRST_S
            while True:
                try:
                    return run()
                except sa.exc.OperationalError as exc:
                    if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                        raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, SQLITE_RETRY_MAX_S)

    async def write(self, fn: Callable[[sa.Connection], T]) -> T:
        if self.observe is not None:
            with self.observe("write", _asker(fn)):
                return await self._write(fn)
        return await self._write(fn)

    async def _write(self, fn: Callable[[sa.Connection], T]) -> T:
        if self._async is not None:
            async with self._async.begin() as aconn:
                return await aconn.run_sync(fn)

        def run() -> T:
            with self._sync_writer.begin() as conn:
                return fn(conn)

        return await self._sqlite_turn(run)

    async def dispose(self) -> None:
        if self._async is not None:
            if self._pg is not None:
                await self._pg.close()
                self._pg = None
            await self._async.dispose()
            return
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._hot_writer is not None:
            self._hot_writer.close()
            self._hot_writer = None
        self._sync.dispose()


class HotQuery:
    """A hot SELECT, written once in SQLAlchemy Core and compiled once for
    each driver (asyncpg's `$1`, sqlite3's `?`), its rows read like
    SQLAlchemy's (`row.user_id`, JSON columns decoded as SQLAlchemy would)."""

    def __init__(self, statement: sa.Select[Any]) -> None:
        self.statement = statement
        self._pg = _Compiled.of(statement, asyncpg_dialect())  # type: ignore[no-untyped-call]
        self.pg_sql = self._pg.sql
        self.sqlite = _Compiled.of(statement, sqlite_dialect())  # type: ignore[no-untyped-call]
        self._names = tuple(statement.selected_columns.keys())
        self._json = frozenset(
            c.name for c in statement.selected_columns if isinstance(c.type, sa.JSON)
        )

    def pg_args(self, params: Mapping[str, Any]) -> list[Any]:
        return self._pg.args(params)

    def row(self, record: Any) -> _Row:
        """An asyncpg record's row."""
        return self._decoded(dict(record.items()))

    def sqlite_row(self, values: tuple[Any, ...]) -> _Row:
        return self._decoded(dict(zip(self._names, values, strict=True)))

    def _decoded(self, values: dict[str, Any]) -> _Row:
        for name in self._json:
            raw = values.get(name)
            if isinstance(raw, str):
                values[name] = json.loads(raw)
        return _Row(values)


@dataclass(frozen=True)
class _Compiled:
    """One statement as a driver takes it: its SQL and its binds' order."""

    sql: str
    names: tuple[str, ...]
    # Values the statement fixes itself (a LIMIT), by bind name.
    fixed: Mapping[str, Any]

    @classmethod
    def of(cls, statement: Any, dialect: Any) -> _Compiled:
        compiled = statement.compile(dialect=dialect)
        return cls(
            str(compiled),
            tuple(compiled.positiontup or ()),
            {k: v for k, v in compiled.params.items() if v is not None},
        )

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] if name in params else self.fixed[name] for name in self.names]


class HotWrite:
    """A hot write: INSERTs/upserts written once in SQLAlchemy Core, the
    first with a RETURNING, compiled once for each driver (Database.write_hot).
    Its params are plain values: a JSON column's value comes as JSON text."""

    def __init__(self, name: str, first: Any, *rest: Any) -> None:
        self.name = name  # the repo function's, for traces
        self.sqlite = [_Compiled.of(part, sqlite_dialect()) for part in (first, *rest)]  # type: ignore[no-untyped-call]
        combined = sa.select(*first.cte("hot_0").c).add_cte(
            *(part.cte(f"hot_{i}") for i, part in enumerate(rest, 1))
        )
        self._pg = _Compiled.of(combined, asyncpg_dialect())  # type: ignore[no-untyped-call]
        self.pg_sql = self._pg.sql

    def pg_args(self, params: Mapping[str, Any]) -> list[Any]:
        return self._pg.args(params)


def _fetch_sqlite3(
    conn: sa.Connection, queries: Sequence[tuple[HotQuery, Mapping[str, Any]]]
) -> list[list[Any]]:
    """`queries` on the reader's own sqlite3 connection: SQLAlchemy's execute
    and row processing cost several times an indexed read here."""
    db: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    out = []
    for query, params in queries:
        try:
            rows = db.execute(query.sqlite.sql, query.sqlite.args(params)).fetchall()
        except sqlite3.Error as exc:
            raise _sqlite_error(query.sqlite.sql, exc) from exc
        out.append([query.sqlite_row(r) for r in rows])
    return out


@contextlib.contextmanager
def _asyncpg_errors(what: str) -> Iterator[None]:
    """asyncpg's errors read as SQLAlchemy's, so server/errors.py maps them
    (by SQLSTATE) the same whichever way the call went."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        raise sa.exc.DBAPIError(what, None, exc) from exc
    except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
        # A connection lost mid-call; OSError and TimeoutError (pool,
        # command timeout) pass as they are: both are outages.
        raise sa.exc.OperationalError(what, None, exc) from exc


def _sqlite_error(statement: str, exc: sqlite3.Error) -> sa.exc.StatementError:
    return sa.exc.DBAPIError.instance(statement, None, exc, sqlite3.Error, hide_parameters=True)


class _Row:
    """An asyncpg record read like a SQLAlchemy row (`row.user_id`)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None


def open_database(url: str, *, pool_size: int = 10) -> Database:
    return Database(url, pool_size=pool_size)


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _script() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


# Alembic's own bookkeeping: the table and the lines each migration script
# declares itself with.
VERSION_TABLE = "alembic_version"
_DECLARED = re.compile(
    r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:[\"']([^\"']+)[\"']|None)", re.M
)


def head_revision() -> str:
    """The newest migration, read off the scripts' `revision` and
    `down_revision` lines. A server whose database is already at head so
    never imports Alembic (~9 MB it would keep for its life); a test holds
    this to Alembic's own answer."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("[0-9]*.py"):
        declared: dict[str, str | None] = {
            m.group(1): m.group(2) for m in _DECLARED.finditer(script.read_text())
        }
        revisions.add(str(declared["revision"]))
        if declared.get("down_revision"):
            parents.add(str(declared["down_revision"]))
    (head,) = revisions - parents
    return head


async def current_revision(database: Database) -> str | None:
    def read(conn: sa.Connection) -> str | None:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        table = sa.table(VERSION_TABLE, sa.column("version_num"))
        versions = list(conn.execute(sa.select(table.c.version_num)).scalars())
        if len(versions) > 1:
            raise SchemaError(f"database has several schema revisions {versions}; one expected")
        return versions[0] if versions else None

    return await database.read(read)


async def migrate(database: Database) -> tuple[str | None, str]:
    """Apply every pending migration; returns (before, after) revisions."""
    from alembic import command  # only migrating processes pay for it

    before = await current_revision(database)

    def upgrade(conn: sa.Connection) -> None:
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    await database.write(upgrade)
    return before, head_revision()


async def ensure_schema(database: Database, *, auto_migrate: bool) -> None:
    """A brand-new database is created at head; an older schema is migrated
    only when asked (`identify migrate` or `--migrate`), since migrating a
    shared production database is an operator's decision."""
    current = await current_revision(database)
    head = head_revision()
    if current == head:
        return
    if current is None or auto_migrate:
        await migrate(database)
        return
    script = _script()
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaError(
            f"database schema {current} is newer than this build ({head}); upgrade Identify"
        )
    raise SchemaError(
        f"database schema {current} is older than this build ({head}); "
        "run `identify migrate --db URL` first"
    )
