"""The grpc.aio server: servicer, health, reflection, interceptors, and a
shutdown that drains in-flight calls."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from identify.admin.v1 import admin_pb2_grpc
from identify.v1 import identify_pb2, identify_pb2_grpc

from providers.kit import heap
from providers.registry import Registry
from server import tracing
from server.abuse.counters import RateLimits, storage_for
from server.abuse.guard import Guard
from server.abuse.lockout import Lockout
from server.abuse.policy import Limits
from server.accounts import ScopedAccounts
from server.admin import store as admin_store
from server.admin.service import AdminServicer
from server.clock import now
from server.context import Context
from server.envnum import env_seconds
from server.events import audit
from server.events.relay import Relay, RelaySettings
from server.interceptors import Registrar, Wrap, access_log
from server.keys import KeyStore
from server.metrics import upstream
from server.projects import LoadedProject, ProjectCache
from server.servicer import IdentifyServicer
from server.store import repo, retention
from server.store.db import Database
from server.store.hot import HotRows
from server.store.hot import ttl_from as hot_ttl

log = logging.getLogger(__name__)
SERVICE = identify_pb2.DESCRIPTOR.services_by_name["Identify"].full_name
MAX_METADATA_BYTES = 64 * 1024
# Credential failures untouched this long are gone for every project's policy
# (the longest `resetAfterSeconds` allowed), so the table cannot grow forever.
STALE_FAILURES_SECONDS = 30 * 86400


PURGE_SECONDS = 600.0


def purge_interval(env: Mapping[str, str]) -> float:
    """IDENTIFY_PURGE_SECONDS: how often each process runs the purges
    (expired tokens, deleted projects, stale anonymous users, audit events
    past retention); the default suits production, tests shorten it."""
    return env_seconds(env, "IDENTIFY_PURGE_SECONDS", PURGE_SECONDS, high=86400)


class ListenError(OSError):
    """The gRPC port cannot be had (another process holds it, say)."""


@dataclass
class Settings:
    db_url: str
    host: str = "127.0.0.1"
    port: int = 50051
    issuer: str = "identify"
    project_cache_ttl: float = 5.0
    # How long SIGTERM waits for in-flight calls before cutting them.
    grace: float = 10.0
    # Time for Envoy's health checks to see NOT_SERVING before we stop.
    drain_delay: float = 2.0
    # How often signing keys are reloaded (a rotation reaches us within it).
    key_refresh: float = 60.0
    # Shared rate-limit counters (redis://...); None: each process counts alone.
    redis_url: str | None = None


class Service:
    """Everything one server process owns, built and closed together."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.registry = Registry.discover()
        self.keys = KeyStore(database, issuer=settings.issuer, refresh_every=settings.key_refresh)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(5.0, connect=2.0),
            transport=upstream.transport(
                httpx.Limits(max_connections=200, max_keepalive_connections=50)
            ),
            follow_redirects=False,
        )
        self.tracing = tracing.start(http=self.http, database=database)
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="blocking")
        self.projects = ProjectCache(
            database, self.registry, self._context_for, ttl=settings.project_cache_ttl
        )
        self.rate_limits = RateLimits(storage_for(settings.redis_url))
        self.lockout = Lockout(database)
        # Delivers the audit trail to webhooks; the env may tune it (tests).
        self.relay = Relay(database, RelaySettings.from_env())
        self._purge_every = purge_interval(os.environ)
        self.hot = HotRows(hot_ttl(os.environ))
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self._housekeeping: list[asyncio.Task[None]] = []

    async def _purge_expired(self, every: float) -> None:
        # Every process does it; the DELETE is idempotent and cheap.
        while True:
            await asyncio.sleep(every)
            try:
                removed = await repo.purge_expired_tokens(self.database, now())
                removed += await repo.purge_stale_credential_failures(
                    self.database, before=now() - STALE_FAILURES_SECONDS
                )
                if removed:
                    log.info("purged %d expired token records", removed)
                # Soft-deleted projects past their grace, in small batches.
                purged = await admin_store.purge_deleted_projects(
                    self.database, deleted_before=now() - admin_store.PURGE_GRACE_SECONDS
                )
                if purged:
                    log.info("purged %d deleted projects", purged)
            except Exception:
                log.warning("purging expired records failed", exc_info=True)
            try:
                # Projects that set anonymousRetentionDays; batches with pauses.
                stale = await retention.purge_stale_anonymous(self.database, now=now())
                if stale:
                    log.info("purged %d anonymous users past their project's retention", stale)
            except Exception:
                log.warning("purging stale anonymous users failed", exc_info=True)
            try:
                # In small batches with pauses: logins write between two.
                past = await audit.purge_expired(self.database, now=now())
                if past.events or past.deliveries:
                    log.info(
                        "purged %d audit events and %d webhook deliveries past retention",
                        past.events,
                        past.deliveries,
                    )
            except Exception:
                log.warning("purging expired audit events failed", exc_info=True)

    def _context_for(self, loaded: LoadedProject, provider: str) -> Context:
        accounts = ScopedAccounts(
            self.database,
            project_id=loaded.project.id,
            provider=provider,
            secret=loaded.secret,
            keys=self.keys,
            hot=self.hot,
        )
        project_id = loaded.project.id

        async def limits() -> Limits:
            current = await self.projects.get(project_id)
            return current.limits if current is not None else loaded.limits

        guard = Guard(
            project_id=project_id,
            provider=provider,
            limits=limits,
            rates=self.rate_limits,
            lockout=self.lockout,
        )
        return Context(accounts, self.http, self.executor, guard)

    async def start(self) -> int:
        # The schema was checked by bootstrap (serve) or by the supervisor
        # (up) before this process started; workers skip alembic entirely.
        await self.keys.signer()
        wraps: list[Wrap] = [access_log]
        if self.tracing is not None:
            # Inside the access log's, so the call's Call is there to read.
            wraps.append(self.tracing.wrap)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 1 << 20),
                # Envoy passes up to 60 KiB of headers; gRPC's defaults (8 KiB
                # soft, 16 KiB hard) would refuse some at random with
                # RESOURCE_EXHAUSTED before our own bounds could answer.
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.so_reuseport", 0),
            ],
        )
        registrar: Any = Registrar(server, wraps)
        identify_pb2_grpc.add_IdentifyServicer_to_server(
            IdentifyServicer(self.registry, self.projects, self.keys, self.database, self.hot),
            registrar,
        )
        # On the same ports; the edge routes it only from its admin listener,
        # and reflection (reachable through the public edge) leaves it out.
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(self.database, self.registry, self.projects, self.hot), registrar
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        # Straight on the server: reflection checks it is a grpc.aio one,
        # and its streams were never wrapped.
        reflection.enable_server_reflection(
            (
                SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio's "Failed to bind to address"
            raise ListenError(f"cannot listen on {address}: is the port in use?") from exc
        if port == 0:
            raise ListenError(f"cannot listen on {address}: is the port in use?")
        await server.start()
        self.server = server
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._housekeeping = [
            asyncio.create_task(self._purge_expired(self._purge_every), name="purge-expired"),
            asyncio.create_task(self.keys.refresh_forever(), name="key-refresh"),
            asyncio.create_task(self.relay.run_forever(), name="webhook-relay"),
        ]
        return port

    async def _stop_housekeeping(self) -> None:
        # Cancelled, then awaited: a future left holding an exception nobody
        # retrieved is logged by asyncio at exit, traceback and all. A task
        # that had died on its own is reported here instead.
        for task in self._housekeeping:
            task.cancel()
        results = await asyncio.gather(*self._housekeeping, return_exceptions=True)
        for task, result in zip(self._housekeeping, results, strict=True):
            if isinstance(result, Exception):
                log.error("background task %s had died", task.get_name(), exc_info=result)
        self._housekeeping = []

    async def stop(self) -> None:
        await self._stop_housekeeping()
        if self.server is not None:
            # Tell the edge first, so new calls go elsewhere while these drain.
            await self.health.enter_graceful_shutdown()
            await asyncio.sleep(self.settings.drain_delay)
            await self.server.stop(self.settings.grace)
        await self.projects.aclose()
        await self.relay.aclose()
        await self.http.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)
        await self.database.dispose()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)


async def serve(
    service: Service,
    *,
    ready: asyncio.Event | None = None,
    lifecycle_level: int = logging.INFO,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return.

    `lifecycle_level` is for the start and stop lines: under `identify up`
    the supervisor reports those once for all its processes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await service.start()
    # What start-up made (modules, the schema, compiled statements) lives as
    # long as the process.
    heap.keep_for_good(collect=True)
    log.log(lifecycle_level, "gRPC server listening on %s:%d", service.settings.host, port)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.log(lifecycle_level, "draining in-flight calls")
    await service.stop()
    log.log(lifecycle_level, "stopped")
