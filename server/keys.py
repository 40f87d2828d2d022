"""Our signing keys, read from the database and refreshed now and then, so
every process publishes keys that any other process may have signed with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import sqlalchemy as sa

from server.clock import now
from server.store import repo
from server.store.db import Database
from server.tokens import SigningKey, TokenSigner


async def ensure_signing_key(database: Database) -> None:
    key = SigningKey.generate()
    await repo.insert_signing_key_if_none(
        database, kid=key.kid, private_pem=key.private_pem(), now=now()
    )


async def rotate_signing_key(
    database: Database, *, also: Callable[[sa.Connection], None] | None = None
) -> tuple[str, int]:
    """A new active key; the old ones stay published until their tokens
    have expired. Returns (new kid, keys retired). `also` runs in the
    rotation's transaction (the admin API's audit event)."""
    key = SigningKey.generate()
    retired = await repo.rotate_signing_key(
        database, kid=key.kid, private_pem=key.private_pem(), now=now(), also=also
    )
    return key.kid, retired


class KeyStore:
    def __init__(self, database: Database, *, issuer: str, refresh_every: float = 60.0) -> None:
        self._database = database
        self._issuer = issuer
        self._refresh_every = refresh_every
        self._signer: TokenSigner | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def signer(self) -> TokenSigner:
        if self._signer is not None and time.monotonic() - self._loaded_at < self._refresh_every:
            return self._signer
        async with self._lock:
            if self._signer is None or time.monotonic() - self._loaded_at >= self._refresh_every:
                await self._load()
        assert self._signer is not None
        return self._signer

    async def refresh_forever(self) -> None:
        """Reload now and then, so a rotation done by another process (or
        `identify rotate-keys`) reaches this one within `refresh_every`."""
        while True:
            await asyncio.sleep(self._refresh_every)
            async with self._lock:
                await self._load()

    async def reload(self) -> TokenSigner:
        """Load the keys now: a token signed by a key rotated in by another
        process within `refresh_every` is verifiable at once."""
        async with self._lock:
            await self._load()
        assert self._signer is not None
        return self._signer

    def current(self) -> TokenSigner:
        """The last loaded signer, for synchronous minting on the hot path."""
        if self._signer is None:
            raise RuntimeError("signing keys not loaded yet")
        return self._signer

    async def _load(self) -> None:
        rows = await repo.load_signing_keys(self._database)
        if not rows:
            await ensure_signing_key(self._database)
            rows = await repo.load_signing_keys(self._database)
        keys = [
            SigningKey.from_pem(kid, pem, created, retired) for kid, pem, created, retired in rows
        ]
        self._signer = TokenSigner(keys, self._issuer)
        self._loaded_at = time.monotonic()
