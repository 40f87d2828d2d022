"""How often GetUser is asked: at most once per access token per
`profileRefreshSeconds`, in each server process.

GetUser counts against Cognito's per-account "user read" quota (120
requests/s by default), so asking it on every profile read would make the
quota every Cognito project's ceiling. Between asks the provider serves our
synced copy of the attributes; the token is still verified locally and
checked against our own revocations on every call.

The marks are per token, not per user: GetUser also says whether Cognito
still accepts *this* token (RevokeToken, a global sign-out or a disabled
user in the console). With one mark per user, a user's live session would
keep the mark fresh and a token revoked in Cognito would never be asked
about again. Each mark also names the user id, so a user erased and seen
again (a new user id) is asked about at once.

In memory, per process: a restart or another process asks again, never
less often. Marks are kept in the order they were made, so the oldest are
the first to expire and the first to go past the bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# Tokens synced within one window, per process. About 180 bytes each (a
# 16-byte digest, a float, the ordered dict's slot and link): ~9 MB at the
# bound. Past it the oldest marks go, which only means asking Cognito again.
MAX_MARKS = 50_000


def mark_key(user_id: str, token: str) -> bytes:
    """A short, fixed-size key: never the token itself (a secret, ~1 KB)."""
    return hashlib.blake2b(f"{user_id}\n{token}".encode(), digest_size=16).digest()


class SyncMarks(Generic[T]):
    def __init__(
        self,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        limit: int = MAX_MARKS,
    ) -> None:
        self._window = window
        self._clock = clock
        self._limit = limit
        # key -> monotonic time of the last successful ask, in mark order.
        self._marks: OrderedDict[bytes, float] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._marks)

    def fresh(self, key: bytes) -> bool:
        at = self._marks.get(key)
        return at is not None and self._clock() - at < self._window

    def mark(self, key: bytes) -> None:
        if self._window <= 0:
            return
        now = self._clock()
        self._marks[key] = now
        self._marks.move_to_end(key)
        # Expired marks answer nothing: drop them from the front, where the
        # oldest are, and the oldest past the bound (O(1) per mark, amortized).
        while self._marks:
            at = self._marks[next(iter(self._marks))]
            if now - at < self._window and len(self._marks) <= self._limit:
                break
            self._marks.popitem(last=False)

    async def ask(self, key: bytes, fetch: Callable[[], Awaitable[T]]) -> T:
        """`fetch()` and mark `key` on success. Calls for the same key that
        arrive while one runs share its answer (or its error): the same token
        gets the same answer, and a burst at the window's end asks once."""
        if self._window <= 0:
            return await fetch()
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        # shield: a caller that hangs up must not cancel the others' answer.
        return await asyncio.shield(task)

    def _done(self, key: bytes, task: asyncio.Future[T]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled():
            return
        # Also marks the error as seen when every waiter went away.
        if task.exception() is None:
            self.mark(key)
