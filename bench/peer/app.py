"""The peer the benchmark measures Identify against: a fastapi-users app as
its documentation builds one (SQLAlchemy user table, bearer transport, JWT
strategy), nothing tuned. `GET /users/me` with a bearer JWT is what is
loaded: the JWT is verified and the user row read (one SELECT).

    PEER_DB_URL=sqlite+aiosqlite:///var/peer.db \\
        uvicorn bench.peer.app:app --workers 2 --port 8000

PEER_DB_URL: an SQLAlchemy async URL (sqlite+aiosqlite:// or
postgresql+asyncpg://). PEER_JWT_SECRET signs the tokens; every worker
must share it (bench/stacks.py peer sets one per run).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy
from fastapi_users.db import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

DB_URL = os.environ.get("PEER_DB_URL", "sqlite+aiosqlite:///./peer.db")
SECRET = os.environ.get("PEER_JWT_SECRET", "change-me-peer-secret-of-32-bytes!")
TOKEN_SECONDS = 3600


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    pass


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


class UserUpdate(schemas.BaseUserUpdate):
    pass


engine = create_async_engine(DB_URL)
sessions = async_sessionmaker(engine, expire_on_commit=False)


async def session() -> AsyncIterator[AsyncSession]:
    async with sessions() as s:
        yield s


# FastAPI's own idiom (dependencies as defaults), as the fastapi-users docs write it.
async def user_db(
    s: AsyncSession = Depends(session),  # noqa: B008
) -> AsyncIterator[SQLAlchemyUserDatabase]:
    yield SQLAlchemyUserDatabase(s, User)


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET


async def user_manager(
    db: SQLAlchemyUserDatabase = Depends(user_db),  # noqa: B008
) -> AsyncIterator[UserManager]:
    yield UserManager(db)


def jwt_strategy() -> JWTStrategy[User, uuid.UUID]:
    return JWTStrategy(secret=SECRET, lifetime_seconds=TOKEN_SECONDS)


backend = AuthenticationBackend(
    name="jwt",
    transport=BearerTransport(tokenUrl="auth/jwt/login"),
    get_strategy=jwt_strategy,
)
users = FastAPIUsers[User, uuid.UUID](user_manager, [backend])


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # Every worker runs this; create_all skips tables that exist. The bench
    # creates them once before the workers start (`python -m bench.peer.app`),
    # so workers never race on it.
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
app.include_router(users.get_auth_router(backend), prefix="/auth/jwt", tags=["auth"])
app.include_router(users.get_register_router(UserRead, UserCreate), prefix="/auth", tags=["auth"])
app.include_router(users.get_users_router(UserRead, UserUpdate), prefix="/users", tags=["users"])


async def _create_tables() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await engine.dispose()


if __name__ == "__main__":
    import asyncio

    asyncio.run(_create_tables())
