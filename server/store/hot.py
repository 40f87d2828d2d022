"""Hot users' rows, kept for a short time in each server process.

A signed-in app reads its user's profile again and again; each read cost a
connection checkout and several index scans for rows that had not changed.
Here the user found by an identity, and the rows of its profile, are kept for
`ttl` seconds (IDENTIFY_HOT_CACHE_SECONDS, default 1; 0 turns it off).

The bound: a change made through this process is seen at once (each write
of a user drops that user's entries here first); a change made through
another process (a logout, an admin revocation, a device signed out) is seen
within `ttl` seconds. Entries are dropped by age and by count (`max_entries`,
least recently used first), so memory stays bounded whatever the traffic.

A read that began before a write of the same user may finish after it with
the old rows: such a result is never kept (each entry remembers when its
read began, and a user's entries older than its last write are not served).

Each entry lives a random part of `ttl`, between (1 - SPREAD) x ttl and ttl:
entries read in the same moment (every hot user's, after a start or a
deploy) would otherwise all expire in the same moment every `ttl`, and their
reads queue for the database together (PostgreSQL's p99). The bound stays
`ttl`."""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from server.envnum import env_seconds

T = TypeVar("T")

DEFAULT_TTL = 1.0
SPREAD = 0.25
MAX_ENTRIES = 10_000
ENV = "IDENTIFY_HOT_CACHE_SECONDS"


def ttl_from(env: Mapping[str, str]) -> float:
    return env_seconds(env, ENV, DEFAULT_TTL, high=60, zero_is_off=True)


def activity(project_id: str, user_id: str) -> tuple[str, ...]:
    """The owner of a user's devices and logins (its profile rows)."""
    return (project_id, user_id, "activity")


class _Lru(Generic[T]):
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[Any, tuple[float, T]] = OrderedDict()

    def get(self, key: Any) -> tuple[float, T] | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: Any, stamp: float, value: T) -> None:
        self._entries[key] = (stamp, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, key: Any) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class HotRows:
    """Entries keyed by anything hashable, each belonging to an owner: a user
    (project id, user id) for what a user-level write changes, or its
    `activity` (devices and logins), which every write of it changes."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        *,
        max_entries: int = MAX_ENTRIES,
        clock: Any = None,
        spread: Callable[[], float] = random.random,
    ) -> None:
        self.ttl = ttl
        self._clock = clock or time.monotonic
        # 0 <= spread() < 1: how much of SPREAD x ttl an entry's life is cut by.
        self._spread = spread
        self._values: _Lru[tuple[tuple[str, ...], float, Any]] = _Lru(max_entries)
        # When each recently written user was last written.
        self._written: _Lru[None] = _Lru(max_entries)

    @property
    def on(self) -> bool:
        return self.ttl > 0

    def begin(self) -> float:
        """The stamp of a read about to start: pass it to `put`."""
        return float(self._clock())

    def get(self, key: Any) -> Any | None:
        if not self.on:
            return None
        found = self._values.get(key)
        if found is None:
            return None
        stamp, (owner, life, value) = found
        if self._clock() - stamp > life or self._written_since(owner, stamp):
            self._values.drop(key)
            return None
        return value

    def put(self, key: Any, owner: tuple[str, ...], stamp: float, value: Any) -> None:
        if self.on and not self._written_since(owner, stamp):
            life = self.ttl * (1 - SPREAD * self._spread())
            self._values.put(key, stamp, (owner, life, value))

    def written(self, project_id: str, user_id: str, *, activity_only: bool = False) -> None:
        """The user's rows changed (only its devices and logins, with
        `activity_only`): what was read of them before is stale."""
        if self.on:
            at = float(self._clock())
            self._written.put(activity(project_id, user_id), at, None)
            if not activity_only:
                self._written.put((project_id, user_id), at, None)

    def owner_written(self, owner: tuple[str, ...]) -> None:
        """What `owner` owns changed (an owner other than a user's: a token's
        revocation)."""
        if self.on:
            self._written.put(owner, float(self._clock()), None)

    def _written_since(self, owner: tuple[str, ...], stamp: float) -> bool:
        found = self._written.get(owner)
        # `>=`: a write in the same clock tick as the read's start wins.
        return found is not None and found[0] >= stamp

    def __len__(self) -> int:
        return len(self._values)
