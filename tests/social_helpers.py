"""What the social provider tests share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


class UpstreamContext:
    """Just the part of ProviderContext a provider's `identify` step uses
    (the pooled HTTP client and the clock); the store is exercised by the
    end-to-end tests through the real server."""

    def __init__(self) -> None:
        self.http = httpx.AsyncClient()

    def now(self) -> int:
        return int(time.time())

    @property
    def accounts(self) -> Any:
        raise AssertionError("identify() must not touch the store")


def run_with_ctx(make: Callable[[UpstreamContext], Awaitable[T]]) -> T:
    async def main() -> T:
        ctx = UpstreamContext()
        try:
            return await make(ctx)
        finally:
            await ctx.http.aclose()

    return asyncio.run(main())


def free_closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
