"""Rate limits per project and per client IP, counted with the `limits`
package (sliding-window counters).

Where the counters live decides what a limit means:
- embedded (the default): in each server process's memory. With N processes
  behind one edge a client is balanced across them, so it can make up to N
  times the configured rate; with M edges in front of the same processes,
  nothing changes (the processes count). No extra server is needed.
- `--redis redis://...`: in Redis, shared by every process on every machine,
  so the configured rate is the rate, whatever N and M are.

If Redis cannot be reached, calls are admitted (and the failure is logged):
a counter outage must not become a sign-in outage. The lockout does not
depend on these counters; it lives in the database.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from providers.values import Action, ResourceExhausted
from server import metrics
from server.abuse.policy import Limits

log = logging.getLogger(__name__)


def storage_for(redis_url: str | None) -> Storage:
    if redis_url is None:
        return MemoryStorage()
    # `limits` names its async Redis schemes async+redis://; redis-py does the talking.
    uri = "async+" + redis_url
    return RedisStorage(uri, implementation="redispy", wrap_exceptions=True)


class RateLimits:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._limiter = SlidingWindowCounterRateLimiter(storage)

    async def admit(self, limits: Limits, action: Action, project_id: str, client_ip: str) -> None:
        """Count one `action`; RESOURCE_EXHAUSTED RATE_LIMITED (with the wait
        in RetryInfo) when the client's or the project's limit is reached."""
        rates = limits.rates[action]
        checks = (
            (rates.per_ip, (project_id, action.value, client_ip), "client"),
            (rates.per_project, (project_id, action.value), "project"),
        )
        for item, keys, whose in checks:
            if item is not None and not await self._hit(item, keys):
                wait = await self._wait(item, keys)
                metrics.rate_limited(project_id, action.value, whose)
                log.warning(
                    "rate limited project=%s action=%s limit=%s per %s",
                    project_id,
                    action.value,
                    item,
                    whose,
                )
                raise ResourceExhausted(
                    "RATE_LIMITED",
                    f"too many {action.value} calls from this {whose}; try again later",
                    metadata={"action": action.value, "limit": str(item), "scope": whose},
                    retry_after=wait,
                )

    async def _hit(self, item: RateLimitItem, keys: tuple[str, ...]) -> bool:
        try:
            return await self._limiter.hit(item, *keys)
        except Exception:  # any storage failure: admit, say so once per call
            metrics.rate_limit_counter_error()
            log.warning("rate-limit counters unavailable; admitting the call", exc_info=True)
            return True

    async def _wait(self, item: RateLimitItem, keys: tuple[str, ...]) -> float:
        try:
            stats = await self._limiter.get_window_stats(item, *keys)
        except Exception:  # the refusal stands; the wait is a hint
            return float(item.get_expiry())
        return float(max(1, math.ceil(stats.reset_time - time.time())))
