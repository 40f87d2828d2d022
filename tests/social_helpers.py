"""What the social provider tests share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from providers.base import Project, Request

T = TypeVar("T")

PROJECT = Project(id="a69a31e9-f2e6-4d5f-b080-6138c6a721b7", name="p")


def social_request(provider: str, **kw: Any) -> Request:
    """A check call (`GET /user/check/nonstandard`) as a social provider sees it."""
    return Request(project=PROJECT, provider=provider, strategy="email", **kw)


class UpstreamContext:
    """Just the part of ProviderContext a provider's `identify` step uses
    (the pooled HTTP client and the clock); the store is exercised by the
    end-to-end tests through the real server. With `offline=True` any
    upstream call fails the test (for refusals that must cost no call)."""

    def __init__(self, *, offline: bool = False) -> None:
        self.http = httpx.AsyncClient(transport=_NoUpstream()) if offline else httpx.AsyncClient()

    def now(self) -> int:
        return int(time.time())

    @property
    def accounts(self) -> Any:
        raise AssertionError("identify() must not touch the store")

    @property
    def abuse(self) -> Any:
        # Rate limits are counted through the real server (test_abuse_e2e.py);
        # these tests are about what the network's answers become.
        return _Unlimited()


class _Unlimited:
    async def admit(self, action: Any, req: Any) -> None:
        return None


class _NoUpstream(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no upstream call expected, got {request.method} {request.url}")


def run_with_ctx(make: Callable[[UpstreamContext], Awaitable[T]], *, offline: bool = False) -> T:
    async def main() -> T:
        ctx = UpstreamContext(offline=offline)
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
