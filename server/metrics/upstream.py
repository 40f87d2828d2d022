"""Upstream requests through the shared HTTP client, timed and counted at
its transport: failures that never make a response (timeouts, refused
connections) are counted too, which event hooks would miss."""

from __future__ import annotations

import time

import httpx

from providers.kit.meter import TIMEOUT, UNREACHABLE, upstream_outcome
from server.metrics import record


class MeteredTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException:
            record.upstream_call(TIMEOUT, time.perf_counter() - started)
            raise
        except httpx.TransportError:
            record.upstream_call(UNREACHABLE, time.perf_counter() - started)
            raise
        # Until the headers: the body is read by whoever asked.
        record.upstream_call(upstream_outcome(response.status_code), time.perf_counter() - started)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """The shared client's transport: metered when metrics are on."""
    plain = httpx.AsyncHTTPTransport(limits=limits)
    return MeteredTransport(plain) if record.enabled() else plain
