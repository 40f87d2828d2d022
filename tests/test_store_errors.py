"""What a store error becomes (server/errors.py), for errors raised by the
real databases: only an outage is STORE_UNAVAILABLE (clients retry those);
a value the store refuses is the request's (400); a broken constraint or
bad SQL is a bug (500). The edge-level case is in test_input_e2e.py."""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from collections.abc import Callable

import asyncpg
import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2, status_pb2

from server import errors
from server.store.db import open_database
from tests.harness import free_port


def outcome(db_url: str, fn: Callable[[sa.Connection], object]) -> tuple[grpc.StatusCode, str]:
    """Runs `fn` in a write transaction on a scratch table `t` and returns the
    status its exception becomes."""
    table = f"t_{uuid.uuid4().hex[:8]}"

    async def run() -> BaseException:
        database = open_database(db_url, pool_size=1)
        try:
            await database.write(
                lambda c: c.exec_driver_sql(
                    f"CREATE TABLE {table} (k VARCHAR(8) PRIMARY KEY, v VARCHAR(4))"
                )
            )
            try:
                await database.write(lambda c: fn(_Scratch(c, table)))
            except Exception as exc:
                return exc
            finally:
                await database.write(lambda c: c.exec_driver_sql(f"DROP TABLE {table}"))
        finally:
            await database.dispose()
        raise AssertionError("the statement did not fail")

    return _status_of(asyncio.run(run()))


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    built = errors.to_status(exc, "req-1")
    [raw] = [v for k, v in built.trailing_metadata if k == "grpc-status-details-bin"]
    info = error_details_pb2.ErrorInfo()
    assert status_pb2.Status.FromString(raw).details[0].Unpack(info)
    return built.code, info.reason


class _Scratch:
    def __init__(self, conn: sa.Connection, table: str) -> None:
        self.conn, self.table = conn, table

    def insert(self, k: str, v: str | None = None) -> None:
        self.conn.execute(
            sa.text(f"INSERT INTO {self.table} (k, v) VALUES (:k, :v)"), {"k": k, "v": v}
        )


def test_a_broken_constraint_is_a_bug_not_an_outage(db_url: str) -> None:
    def twice(s: _Scratch) -> None:
        s.insert("same")
        s.insert("same")

    assert outcome(db_url, twice) == (grpc.StatusCode.INTERNAL, "INTERNAL")


def test_bad_sql_is_a_bug(db_url: str) -> None:
    def broken(s: _Scratch) -> None:
        s.conn.exec_driver_sql(f"SELECT nope FROM {s.table}")

    assert outcome(db_url, broken) == (grpc.StatusCode.INTERNAL, "INTERNAL")


@pytest.mark.parametrize("value", ["a\x00b", "far too long"])
def test_a_value_the_store_refuses_is_invalid_argument(db_url: str, value: str) -> None:
    if db_url.startswith("postgresql"):
        assert outcome(db_url, lambda s: s.insert("k", value)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_VALUE",
        )
        return
    # SQLite keeps NULs and ignores VARCHAR lengths: it refuses nothing here.
    with pytest.raises(AssertionError, match="did not fail"):
        outcome(db_url, lambda s: s.insert("k", value))


def test_an_unreachable_store_is_unavailable(db_url: str, tmp_path: pathlib.Path) -> None:
    if db_url.startswith("postgresql"):
        url = sa.engine.make_url(db_url).set(host="127.0.0.1", port=free_port())
        dead = url.render_as_string(hide_password=False)
    else:
        # A directory where the database file should be: SQLite cannot open it.
        (tmp_path / "db").mkdir()
        dead = f"sqlite:///{tmp_path / 'db'}"

    async def run() -> BaseException:
        database = open_database(dead, pool_size=1)
        try:
            await database.read(lambda c: c.exec_driver_sql("SELECT 1"))
        except Exception as exc:
            return exc
        finally:
            await database.dispose()
        raise AssertionError("the store answered")

    assert _status_of(asyncio.run(run())) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")


@pytest.mark.parametrize(
    ("raised", "meaning"),
    [
        # What a connect during a PostgreSQL restart raises past SQLAlchemy.
        (
            asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
            "unavailable",
        ),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), "unavailable"),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"), "unavailable"),
        (asyncpg.exceptions.InternalClientError("cannot switch to state 12"), "unavailable"),
        (asyncpg.exceptions.InvalidTextRepresentationError("bad input"), "invalid_value"),
        (asyncpg.exceptions.UndefinedColumnError("no such column"), "bug"),
        (ValueError("not the store's"), None),
    ],
)
def test_asyncpg_errors_raised_as_they_are_mean_what_their_sqlstate_says(
    raised: BaseException, meaning: str | None
) -> None:
    assert errors.store_failure(raised) == meaning
