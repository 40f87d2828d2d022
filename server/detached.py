"""A call's work in a task of its own, which a client hanging up cannot
cancel: a transaction cut half-way would hold SQLite's write lock (or a
pooled connection) until it timed out, and the next callers would wait. The
work finishes, and its result is dropped. Every servicer runs its calls so."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

R = TypeVar("R")


class Detached:
    def __init__(self) -> None:
        # Strong references: the loop keeps only weak ones to running tasks.
        self._inflight: set[asyncio.Future[Any]] = set()

    async def run(self, work: Awaitable[R]) -> R:
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._inflight.discard(task)
        # Retrieve the outcome of work nobody awaits any more (client gone).
        if not task.cancelled():
            task.exception()
