"""Shared fixtures: the database backends every stack runs against.

SQLite always; PostgreSQL too when IDENTIFY_TEST_POSTGRES_URL is set (a fresh
database is created for the run and dropped after). If the variable is set
and PostgreSQL does not answer, the run fails: it never silently skips."""

from __future__ import annotations

import asyncio
import os
import pathlib
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

PG_ENV = "IDENTIFY_TEST_POSTGRES_URL"


def _backends() -> list[str]:
    return ["sqlite", "postgres"] if os.environ.get(PG_ENV) else ["sqlite"]


def _asyncpg(url: str) -> str:
    return (
        sa.engine.make_url(url)
        .set(drivername="postgresql+asyncpg")
        .render_as_string(hide_password=False)
    )


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(_asyncpg(url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.fail(f"{PG_ENV} is not set")
    yield url


@pytest.fixture(scope="session", params=_backends())
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        path: pathlib.Path = tmp_path_factory.mktemp("sqlite") / "identify.db"
        yield f"sqlite:///{path}"
        return
    server = request.getfixturevalue("postgres_server_url")
    name = f"identify_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the run must fail loudly, never skip
        pytest.fail(f"PostgreSQL at {PG_ENV} did not answer: {exc}")
    yield sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
