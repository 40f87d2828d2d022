"""The `ProviderContext` a provider instance receives."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from providers.values import User
from server.abuse.guard import Guard
from server.accounts import ScopedAccounts
from server.clock import now

T = TypeVar("T")


class Context:
    def __init__(
        self,
        accounts: ScopedAccounts,
        http: httpx.AsyncClient,
        executor: ThreadPoolExecutor,
        abuse: Guard,
    ) -> None:
        self.accounts = accounts
        self.http = http
        self.abuse = abuse
        self._executor = executor

    def now(self) -> int:
        return now()

    async def run_blocking(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        # In the call's context (as asyncio.to_thread does), so what the
        # thread does belongs to the call: its request id, its trace.
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def mint_profile_token(self, user: User, *, device_id: str | None = None) -> str:
        return self.accounts.mint_profile_token(user, device_id=device_id)
