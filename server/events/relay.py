"""The webhook relay: one asyncio task in every server process that turns
the audit trail (the outbox) into signed HTTP deliveries, at least once.

Each round, bounded:
1. fan-out: up to FANOUT_BATCH events not yet `fanned_out` become one
   delivery per matching enabled endpoint of THAT event's project; the
   deliveries and the flag are written in one transaction, and a delivery's
   id is derived from (project, endpoint, event), unique, so a fan-out raced
   or repeated makes no second one;
2. claim: up to CLAIM_BATCH due deliveries are claimed for `claim_seconds`
   (PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so relays take disjoint
   ones; SQLite: the claim's UPDATE runs inside BEGIN IMMEDIATE, one claimer
   at a time). A process that dies holding a claim loses it when
   `claimed_until` passes, and another relay takes the delivery;
3. send, all claimed at once, each bounded by `timeout` in all (a receiver
   that hangs is a failure), signed per Standard Webhooks, redirects not
   followed; then every outcome is written in one transaction: delivered;
   or retried after the next step of the schedule (with jitter); or, after
   the last attempt or at a 410 Gone, given up, and the endpoint disabled
   with the reason (`disabled_at`, `disabled_reason`).

The relay reads before it writes: a round with nothing to do takes no write
lock, so on SQLite it never stands in the logins' way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from standardwebhooks import Webhook

from server import clock, metrics
from server.envnum import env_seconds
from server.events.audit import AuditEvent, event_of
from server.events.types import matches
from server.store.db import Database
from server.store.schema import audit_events, webhook_deliveries, webhook_endpoints

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# After the first attempt, the waits before each retry, in seconds: 5 s,
# 5 min, 30 min, 2 h, 5 h, then 10 h six times (Svix's steps, longer):
# 12 attempts over ~2.8 days, each wait ±10 % (jitter).
DEFAULT_SCHEDULE: tuple[int, ...] = (5, 300, 1800, 7200, 18000, *(36000,) * 6)
JITTER = 0.1
FANOUT_BATCH = 200
CLAIM_BATCH = 10
# Deliveries keyed on (project, endpoint, event): the same id every time.
_DELIVERY_NAMESPACE = uuid.UUID("6f0cbf5e-2f7a-4b8e-9d59-8b7e0d0b2a11")
USER_AGENT = "Identify-Webhooks/1"


def delivery_id(project_id: str, endpoint_id: str, event_id: str) -> str:
    """Also the `webhook-id` header: receivers dedupe on it."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{project_id}/{endpoint_id}/{event_id}"))


@dataclass(frozen=True)
class RelaySettings:
    poll_seconds: float = 1.0
    schedule: tuple[int, ...] = DEFAULT_SCHEDULE
    # The whole of one attempt: connect, send, the answer's status line.
    timeout: float = 10.0

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    @property
    def claim_seconds(self) -> int:
        # Longer than a round's sends (all run at once), plus the clock's
        # one-second grain and the writes around them.
        return math.ceil(self.timeout) + 5

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RelaySettings:
        """IDENTIFY_WEBHOOK_POLL_SECONDS, IDENTIFY_WEBHOOK_RETRY_SCHEDULE
        (comma-separated seconds: "5,300,1800"), IDENTIFY_WEBHOOK_TIMEOUT_SECONDS."""
        base = cls()

        def number(name: str, default: float) -> float:
            return env_seconds(env, name, default, high=3600)

        schedule = base.schedule
        raw_schedule = env.get("IDENTIFY_WEBHOOK_RETRY_SCHEDULE")
        if raw_schedule:
            try:
                schedule = tuple(int(part) for part in raw_schedule.split(","))
            except ValueError:
                schedule = ()
            if not schedule or min(schedule) < 1:
                raise ValueError(
                    "IDENTIFY_WEBHOOK_RETRY_SCHEDULE must be whole seconds, comma-separated,"
                    " each at least 1 (e.g. 5,300,1800)"
                )
        return cls(
            poll_seconds=number("IDENTIFY_WEBHOOK_POLL_SECONDS", base.poll_seconds),
            schedule=schedule,
            timeout=number("IDENTIFY_WEBHOOK_TIMEOUT_SECONDS", base.timeout),
        )


@dataclass(frozen=True)
class Claimed:
    project_id: str
    delivery_id: str
    endpoint_id: str
    attempts: int
    created_at: int
    url: str
    secret: str
    # None when the retention purge took it meanwhile.
    event: AuditEvent | None


@dataclass(frozen=True)
class Outcome:
    claimed: Claimed
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


def payload(event: AuditEvent) -> str:
    """The Standard Webhooks body: {type, timestamp, data}."""
    at = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(
        {"type": event.type, "timestamp": at, "data": event.to_json()}, separators=(",", ":")
    )


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


ae, wd, we = audit_events.c, webhook_deliveries.c, webhook_endpoints.c
_UNFANNED = sa.select(sa.literal(1)).where(ae.fanned_out == sa.false()).limit(1)
_OWN_ENDPOINT = sa.and_(we.project_id == wd.project_id, we.endpoint_id == wd.endpoint_id)


def _due(now: int) -> Any:
    return sa.and_(
        wd.state == PENDING,
        wd.next_attempt_at <= now,
        sa.or_(wd.claimed_until.is_(None), wd.claimed_until < now),
        we.disabled_at.is_(None),
    )


class Relay:
    def __init__(
        self,
        database: Database,
        settings: RelaySettings,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._database = database
        self.settings = settings
        # Its own client: receivers that hang must not hold connections the
        # providers' calls need; never follows redirects.
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(settings.timeout),
            limits=httpx.Limits(max_connections=CLAIM_BATCH * 2, max_keepalive_connections=10),
            headers={"user-agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def run_forever(self) -> None:
        while True:
            try:
                busy = await self.run_once()
            except Exception:
                log.warning("webhook relay round failed", exc_info=True)
                busy = False
            # A full round may have left more: go on at once (other tasks,
            # logins among them, run between two rounds all the same).
            await asyncio.sleep(0 if busy else self.settings.poll_seconds)

    async def run_once(self) -> bool:
        """One round; True when it found as much work as it may do at once."""
        fanned = await self.fan_out()
        claimed = await self.claim()
        if claimed:
            outcomes = await asyncio.gather(*(self._send(c) for c in claimed))
            settled = await self._database.write(lambda conn: self._settle(conn, outcomes))
            # Counted once the transaction committed (a retried one would
            # count twice).
            for project_id, word in settled:
                metrics.webhook_delivery(project_id, word)
        return fanned >= FANOUT_BATCH or len(claimed) >= CLAIM_BATCH

    # ---------------------------------------------------------------- fan-out
    async def fan_out(self) -> int:
        if await self._database.read(lambda conn: conn.execute(_UNFANNED).first()) is None:
            return 0
        return await self._database.write(self._fan_out)

    def _fan_out(self, conn: sa.Connection) -> int:
        query = (
            sa.select(ae.project_id, ae.event_id, ae.type)
            .where(ae.fanned_out == sa.false())
            .order_by(ae.at, ae.event_id)
            .limit(FANOUT_BATCH)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        events = conn.execute(query).all()
        if not events:
            return 0
        endpoints: dict[str, list[Any]] = defaultdict(list)
        for row in conn.execute(
            sa.select(we.project_id, we.endpoint_id, we.event_types).where(
                we.project_id.in_({e.project_id for e in events}), we.disabled_at.is_(None)
            )
        ):
            endpoints[row.project_id].append(row)
        now = clock.now()
        deliveries = [
            {
                "project_id": event.project_id,
                "delivery_id": delivery_id(event.project_id, ep.endpoint_id, event.event_id),
                "endpoint_id": ep.endpoint_id,
                "event_id": event.event_id,
                "state": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            # Only the endpoints of the event's own project.
            for event in events
            for ep in endpoints[event.project_id]
            if matches(ep.event_types, event.type)
        ]
        if deliveries:
            conn.execute(_insert(conn, webhook_deliveries).on_conflict_do_nothing(), deliveries)
        conn.execute(
            audit_events.update()
            .where(sa.tuple_(ae.project_id, ae.event_id).in_([tuple(e[:2]) for e in events]))
            .values(fanned_out=True)
        )
        return len(events)

    # ------------------------------------------------------------------ claim
    async def claim(self) -> list[Claimed]:
        now = clock.now()
        probe = (
            sa.select(sa.literal(1))
            .select_from(webhook_deliveries.join(webhook_endpoints, _OWN_ENDPOINT))
            .where(_due(now))
            .limit(1)
        )
        if await self._database.read(lambda conn: conn.execute(probe).first()) is None:
            return []
        return await self._database.write(self._claim)

    def _claim(self, conn: sa.Connection) -> list[Claimed]:
        now = clock.now()
        query = (
            sa.select(wd.project_id, wd.delivery_id)
            .select_from(webhook_deliveries.join(webhook_endpoints, _OWN_ENDPOINT))
            .where(_due(now))
            .order_by(wd.next_attempt_at)
            .limit(CLAIM_BATCH)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(of=webhook_deliveries, skip_locked=True)
        keys = [tuple(row) for row in conn.execute(query)]
        if not keys:
            return []
        mine = sa.tuple_(wd.project_id, wd.delivery_id).in_(keys)
        conn.execute(
            webhook_deliveries.update()
            .where(mine)
            .values(claimed_until=now + self.settings.claim_seconds)
        )
        rows = conn.execute(
            sa.select(
                wd.project_id.label("d_project_id"),
                wd.delivery_id,
                wd.endpoint_id.label("d_endpoint_id"),
                wd.attempts,
                wd.created_at.label("d_created_at"),
                we.url,
                we.secret,
                audit_events,
            )
            .select_from(
                webhook_deliveries.join(webhook_endpoints, _OWN_ENDPOINT).outerjoin(
                    audit_events,
                    sa.and_(ae.project_id == wd.project_id, ae.event_id == wd.event_id),
                )
            )
            .where(mine)
        )
        return [
            Claimed(
                project_id=r.d_project_id,
                delivery_id=r.delivery_id,
                endpoint_id=r.d_endpoint_id,
                attempts=int(r.attempts),
                created_at=int(r.d_created_at),
                url=r.url,
                secret=r.secret,
                event=event_of(r) if r.event_id is not None else None,
            )
            for r in rows
        ]

    # ------------------------------------------------------------------- send
    async def _send(self, claimed: Claimed) -> Outcome:
        if claimed.event is None:
            return Outcome(claimed, None, "the event is gone (retention)")
        body = payload(claimed.event)
        sent_at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": claimed.delivery_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": Webhook(claimed.secret).sign(claimed.delivery_id, sent_at, body),
        }
        try:
            async with asyncio.timeout(self.settings.timeout):
                # Streamed and never read: a receiver's body is not ours to hold.
                async with self._http.stream(
                    "POST", claimed.url, content=body.encode(), headers=headers
                ) as reply:
                    status = reply.status_code
        except TimeoutError:
            return Outcome(claimed, None, f"no answer within {self.settings.timeout:g}s")
        except httpx.HTTPError as exc:
            # The class only: an exception's text may quote the URL.
            return Outcome(claimed, None, f"could not deliver ({type(exc).__name__})")
        if 200 <= status < 300:
            return Outcome(claimed, status, None)
        return Outcome(claimed, status, f"answered HTTP {status}")

    # ----------------------------------------------------------------- settle
    def _settle(self, conn: sa.Connection, outcomes: Sequence[Outcome]) -> list[tuple[str, str]]:
        """Each delivery's new state; returns (project, outcome) for metrics."""
        now = clock.now()
        settled: list[tuple[str, str]] = []
        for outcome in outcomes:
            claimed = outcome.claimed
            attempts = claimed.attempts + 1
            key = sa.and_(
                wd.project_id == claimed.project_id,
                wd.delivery_id == claimed.delivery_id,
                wd.state == PENDING,
            )
            values: dict[str, Any] = {
                "attempts": attempts,
                "last_status": outcome.status,
                "last_error": outcome.error,
                "claimed_until": None,
            }
            disable: str | None = None
            if outcome.delivered:
                values.update(state=DELIVERED, delivered_at=now)
                word = "delivered"
            elif claimed.event is None:
                values.update(state=FAILED)
                word = "dropped"
            elif outcome.status == 410:
                values.update(state=FAILED)
                disable = "the endpoint answered 410 Gone"
                word = "gone"
            elif attempts >= self.settings.max_attempts:
                values.update(state=FAILED)
                word = "gave_up"
                hours = (now - claimed.created_at) / 3600
                disable = (
                    f"gave up after {attempts} failed attempts over {hours:.1f} h;"
                    f" the last one {outcome.error}"
                )
            else:
                wait = self.settings.schedule[attempts - 1]
                jittered = max(1, round(wait * random.uniform(1 - JITTER, 1 + JITTER)))
                values.update(next_attempt_at=now + jittered)
                word = "retry"
            settled.append((claimed.project_id, word))
            conn.execute(webhook_deliveries.update().where(key).values(**values))
            if disable is not None:
                conn.execute(
                    webhook_endpoints.update()
                    .where(
                        we.project_id == claimed.project_id,
                        we.endpoint_id == claimed.endpoint_id,
                        we.disabled_at.is_(None),
                    )
                    .values(disabled_at=now, disabled_reason=disable[:512], updated_at=now)
                )
                log.warning(
                    "webhook endpoint disabled project=%s endpoint=%s: %s",
                    claimed.project_id,
                    claimed.endpoint_id,
                    disable,
                )
        return settled
