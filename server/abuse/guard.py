"""The abuse protection a provider's context offers (the `Abuse` protocol of
providers/base.py), bound to one project and one provider. The project's
limits are looked up per call from the project cache, so a change to them
reaches every process within the cache's TTL, like any project setting."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

from providers.values import Action, Request
from server.abuse.counters import RateLimits
from server.abuse.lockout import Lockout, account_key
from server.abuse.policy import Limits

T = TypeVar("T")


class Guard:
    def __init__(
        self,
        *,
        project_id: str,
        provider: str,
        limits: Callable[[], Awaitable[Limits]],
        rates: RateLimits,
        lockout: Lockout,
    ) -> None:
        self._project_id = project_id
        self._provider = provider
        self._limits = limits
        self._rates = rates
        self._lockout = lockout

    async def admit(self, action: Action, req: Request) -> None:
        await self._rates.admit(
            await self._limits(), action, self._project_id, client_key(req.client_ip)
        )

    async def credential_check(
        self, account: str, check: Callable[[], Awaitable[T]], *, failures: Collection[str]
    ) -> T:
        policy = (await self._limits()).lockout
        if policy is None:
            return await check()
        return await self._lockout.guard(
            policy,
            project_id=self._project_id,
            account=account_key(self._provider, account),
            check=check,
            failures=failures,
        )


def client_key(ip: str) -> str:
    """Whose count a call is: an IPv4 address, or an IPv6 /64 (one client
    holds a whole /64, as the edge's limiter counts it too)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
