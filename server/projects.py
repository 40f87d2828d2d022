"""Projects as the servicer sees them: settings from the database, cached for
a bounded time, with one provider instance per (project, provider, settings).

The bound matters when several processes share one database: a settings
change written by one is seen by every other within `ttl` seconds."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from providers.base import Provider
from providers.registry import Registry
from providers.values import Project
from server import metrics
from server.abuse.policy import Limits, parse_limits
from server.config import ConfigError, resolve_env
from server.store import repo
from server.store.db import Database

log = logging.getLogger(__name__)


@dataclass
class LoadedProject:
    project: Project
    secret: str
    settings: Mapping[str, Mapping[str, Any]]
    loaded_at: float
    limits: Limits
    instances: dict[str, Provider[Any]] = field(default_factory=dict)


class ProviderSetupError(Exception):
    """The stored settings of an enabled provider cannot be used here (for
    example a ${VAR} this process lacks)."""

    def __init__(self, message: str, *, provider: str, project_id: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.project_id = project_id


class ProjectCache:
    def __init__(
        self,
        database: Database,
        registry: Registry,
        context_factory: Any,
        *,
        ttl: float = 5.0,
        negative_ttl: float = 2.0,
        max_entries: int = 10_000,
    ) -> None:
        self._database = database
        self._registry = registry
        self._context_factory = context_factory
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max = max_entries
        self._entries: OrderedDict[str, LoadedProject | float] = OrderedDict()
        # Provider instances survive reloads while their settings are unchanged,
        # so their caches (JWKS, clients) are not thrown away every TTL.
        self._instances: dict[tuple[str, str, str], Provider[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, project_id: str) -> LoadedProject | None:
        entry = self._entries.get(project_id)
        clock = time.monotonic()
        if isinstance(entry, LoadedProject) and clock - entry.loaded_at < self._ttl:
            metrics.cache_lookup("project", hit=True)
            return entry
        if isinstance(entry, float) and clock - entry < self._negative_ttl:
            metrics.cache_lookup("project", hit=True)
            return None
        metrics.cache_lookup("project", hit=False)
        lock = self._locks.setdefault(project_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(project_id)
            clock = time.monotonic()
            if isinstance(entry, LoadedProject) and clock - entry.loaded_at < self._ttl:
                return entry
            row = await repo.get_project(self._database, project_id)
            loaded: LoadedProject | float
            loaded = (
                clock
                if row is None
                else LoadedProject(
                    Project(row.project_id, row.name),
                    row.secret,
                    row.providers,
                    clock,
                    _limits(row.project_id, row.limits),
                )
            )
            self._entries[project_id] = loaded
            self._entries.move_to_end(project_id)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
            self._locks.pop(project_id, None)
            return loaded if isinstance(loaded, LoadedProject) else None

    def forget(self, project_id: str) -> None:
        """Drop the cached entry after a change made here (the admin API):
        this process sees it at once, the others within the TTL."""
        self._entries.pop(project_id, None)

    def provider(self, loaded: LoadedProject, name: str) -> Provider[Any]:
        # Hot path: once per loaded project and provider, not per call.
        found = loaded.instances.get(name)
        if found is not None:
            return found
        instance = self._instance(loaded, name)
        loaded.instances[name] = instance
        return instance

    def _instance(self, loaded: LoadedProject, name: str) -> Provider[Any]:
        cls = self._registry.get(name)
        if cls is None:
            raise LookupError(name)
        raw = loaded.settings[name]
        digest = hashlib.sha256(
            json.dumps([loaded.secret, raw], sort_keys=True, default=str).encode()
        ).hexdigest()
        key = (loaded.project.id, name, digest)
        instance = self._instances.get(key)
        if instance is None:
            try:
                # The one parse of the settings; the instance gets its result.
                settings = cls.validate_settings(resolve_env(raw))
            except (ConfigError, ValueError) as exc:
                raise ProviderSetupError(
                    str(exc), provider=name, project_id=loaded.project.id
                ) from None
            stale = [k for k in self._instances if k[:2] == key[:2]]
            for old in stale:
                asyncio.get_running_loop().create_task(self._instances.pop(old).aclose())
            instance = cls(settings, self._context_factory(loaded, name))
            self._instances[key] = instance
        return instance

    async def aclose(self) -> None:
        for instance in self._instances.values():
            try:
                await instance.aclose()
            except Exception:  # closing must not stop shutdown
                log.exception("closing a provider failed")
        self._instances.clear()


def _limits(project_id: str, raw: Mapping[str, Any] | None) -> Limits:
    try:
        return parse_limits(raw)
    except ValueError as exc:
        # Checked when the config was loaded; a row written by another
        # version may still not parse here. Defaults protect meanwhile.
        log.error("limits of project %s cannot be used (%s); the defaults apply", project_id, exc)
        return parse_limits(None)
