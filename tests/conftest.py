"""Shared fixtures: the database backends every stack runs against.

SQLite always; PostgreSQL too when IDENTIFY_TEST_POSTGRES_URL is set (a fresh
database is created for the run and dropped after). If the variable is set
and PostgreSQL does not answer, the run fails: it never silently skips."""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator

import pytest

from tests.harness import fresh_postgres_database

PG_ENV = "IDENTIFY_TEST_POSTGRES_URL"


def _backends() -> list[str]:
    return ["sqlite", "postgres"] if os.environ.get(PG_ENV) else ["sqlite"]


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
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(fresh_postgres_database(server))
        except Exception as exc:  # the run must fail loudly, never skip
            pytest.fail(f"PostgreSQL at {PG_ENV} did not answer: {exc}")
        yield url
