"""Webhooks through the real stack (two server processes, each with its
relay, on SQLite and PostgreSQL): events of sign-ups and logins made through
the edge reach the endpoints of their own project only, signed per Standard
Webhooks; a receiver that fails at first, one that hangs and one that
answers 410; an endpoint given up on and disabled with its reason; and a
server process SIGKILLed mid-delivery whose delivery another one makes.

The admin API that will register endpoints is not on main yet: endpoints are
made with `webhooks.create_endpoint` against the stack's database, as the
admin RPC will call it."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa

from server.events import audit, webhooks
from server.events import types as t
from server.events.relay import delivery_id
from server.store.db import open_database
from server.store.schema import audit_events, webhook_deliveries
from tests.fakes.webhook_receiver import (
    Plan,
    Received,
    WebhookReceiver,
    always,
    fail_first,
    hang_first,
    hold_first,
)
from tests.harness import Stack, in_store, start_stack

T = TypeVar("T")
A, B, FLAKY, HANG, GONE, DOWN, KILL = (str(uuid.uuid4()) for _ in range(7))
TIMEOUT = 1
# Four attempts a second apart; a claim lasts TIMEOUT + 5 s.
ENV = {
    "IDENTIFY_WEBHOOK_POLL_SECONDS": "0.2",
    "IDENTIFY_WEBHOOK_RETRY_SCHEDULE": "1,1,1",
    "IDENTIFY_WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    config = {
        "projects": [
            {"id": p, "name": "hooked", "providers": {"anonymous": {}}}
            for p in (A, B, FLAKY, HANG, GONE, DOWN, KILL)
        ]
    }
    s = start_stack(tmp_path_factory.mktemp("webhooks"), config, db_url=db_url, workers=2, env=ENV)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


@pytest.fixture
def receivers() -> Iterator[Callable[..., WebhookReceiver]]:
    made: list[WebhookReceiver] = []

    def make(plan: Plan, **kwargs: Any) -> WebhookReceiver:
        made.append(WebhookReceiver(plan, **kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.stop()


def against(stack: Stack, fn: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        database = open_database(stack.db_url, pool_size=1)
        try:
            return await fn(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


def endpoint(
    stack: Stack, project: str, receiver: WebhookReceiver, event_types: list[str]
) -> tuple[webhooks.Endpoint, str]:
    # Through the admin API once it lands; its RPC calls this same function.
    made: tuple[webhooks.Endpoint, str] = against(
        stack,
        lambda db: webhooks.create_endpoint(db, project, url=receiver.url, event_types=event_types),
    )
    return made


def sign_up(http: httpx.Client, project: str, *, login: bool = False) -> str:
    device = str(uuid.uuid4())
    body = {"projectId": project, "provider": "anonymous", "data": {"deviceId": device}}
    created = http.post("/v1/user", json=body)
    assert created.status_code == 200, created.text
    if login:
        assert http.put("/v1/user/login", json=body).status_code == 200
    return str(created.json()["data"]["userId"])


def delivery(stack: Stack, project: str, endpoint_id: str, event_id: str) -> Any:
    key = delivery_id(project, endpoint_id, event_id)
    return in_store(
        stack.db_url,
        lambda conn: conn.execute(
            sa.select(webhook_deliveries).where(
                webhook_deliveries.c.project_id == project,
                webhook_deliveries.c.delivery_id == key,
            )
        ).first(),
    )


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def events_of(stack: Stack, project: str, kinds: list[str]) -> list[audit.AuditEvent]:
    found, _ = against(stack, lambda db: audit.list_events(db, project, types=kinds, page_size=500))
    return list(found)


def only_event(stack: Stack, project: str, kind: str) -> audit.AuditEvent:
    [event] = events_of(stack, project, [kind])
    return event


def same_delivery(received: list[Received], secret: str) -> dict[str, Any]:
    """Every attempt of one delivery: one webhook-id, each signature good."""
    assert len({r.webhook_id for r in received}) == 1
    payloads = [r.verified(secret) for r in received]
    assert all(p == payloads[0] for p in payloads)
    return dict(payloads[0])


# ------------------------------------------------------------------ delivered
def test_events_reach_their_own_projects_endpoints_signed_and_none_is_lost(
    stack: Stack, http: httpx.Client, receivers: Callable[..., WebhookReceiver]
) -> None:
    to_a, to_b = receivers(always(200)), receivers(always(204))
    (_, secret_a), (_, secret_b) = (
        endpoint(stack, A, to_a, ["user.*"]),
        endpoint(stack, B, to_b, [t.USER_CREATED]),
    )
    users_a = [sign_up(http, A, login=True) for _ in range(4)]
    users_b = [sign_up(http, B, login=True) for _ in range(2)]
    listed_a = {e.event_id for e in events_of(stack, A, [t.USER_CREATED, t.USER_LOGIN])}
    listed_b = {e.event_id for e in events_of(stack, B, [t.USER_CREATED])}
    assert len(listed_a) == 8 and len(listed_b) == 2

    got_a = [r.verified(secret_a) for r in to_a.wait_for(8)]
    got_b = [r.verified(secret_b) for r in to_b.wait_for(2)]
    # Every event once per endpoint (a retry would repeat its webhook-id).
    assert {p["data"]["eventId"] for p in got_a} == listed_a
    assert {p["data"]["eventId"] for p in got_b} == listed_b
    assert {p["data"]["projectId"] for p in got_a} == {A}
    assert {p["data"]["projectId"] for p in got_b} == {B}
    assert {p["data"]["userId"] for p in got_a} == set(users_a)
    assert {p["data"]["userId"] for p in got_b} == set(users_b)
    for payload in got_a:
        assert set(payload) == {"type", "timestamp", "data"}
        assert payload["type"] == payload["data"]["type"]
        assert payload["timestamp"].endswith("Z")
        assert payload["data"]["provider"] == "anonymous"
    # A signature made with another endpoint's secret does not verify.
    with pytest.raises(Exception, match="signature"):
        to_a.received[0].verified(secret_b)
    assert {r.headers["content-type"] for r in to_a.received} == {"application/json"}
    # Only B's sign-ups reached B: its logins were not subscribed to.
    assert {p["type"] for p in got_b} == {t.USER_CREATED}
    assert len({r.webhook_id for r in to_a.received}) == len(to_a.received) == 8

    def fanned_out(conn: sa.Connection) -> bool:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(audit_events)
            .where(audit_events.c.project_id.in_([A, B]), audit_events.c.fanned_out == sa.false())
        ).scalar_one()
        return bool(left == 0)

    assert wait_until("every event fanned out", lambda: in_store(stack.db_url, fanned_out))


# -------------------------------------------------------------------- retries
def test_a_receiver_that_fails_at_first_gets_the_event_again_with_the_same_id(
    stack: Stack, http: httpx.Client, receivers: Callable[..., WebhookReceiver]
) -> None:
    receiver = receivers(fail_first(2))
    made, secret = endpoint(stack, FLAKY, receiver, [t.USER_CREATED])
    sign_up(http, FLAKY)
    event = only_event(stack, FLAKY, t.USER_CREATED)
    payload = same_delivery(receiver.wait_for(3), secret)
    assert payload["data"]["eventId"] == event.event_id
    assert receiver.received[0].webhook_id == delivery_id(FLAKY, made.endpoint_id, event.event_id)
    row = wait_until(
        "delivered",
        lambda: (
            (d := delivery(stack, FLAKY, made.endpoint_id, event.event_id))
            and d.state == "delivered"
            and d
        ),
    )
    assert (row.attempts, row.last_status, row.last_error) == (3, 204, None)
    found = against(stack, lambda db: webhooks.get_endpoint(db, FLAKY, made.endpoint_id))
    assert found.enabled


def test_a_receiver_that_hangs_past_the_timeout_counts_as_a_failure(
    stack: Stack, http: httpx.Client, receivers: Callable[..., WebhookReceiver]
) -> None:
    receiver = receivers(hang_first(TIMEOUT + 2))
    made, secret = endpoint(stack, HANG, receiver, [t.USER_CREATED, "account.*"])
    sign_up(http, HANG)
    event = only_event(stack, HANG, t.USER_CREATED)
    same_delivery(receiver.wait_for(2), secret)
    row = wait_until(
        "delivered",
        lambda: (
            (d := delivery(stack, HANG, made.endpoint_id, event.event_id))
            and d.state == "delivered"
            and d
        ),
    )
    assert row.attempts == 2


def test_after_the_last_attempt_the_endpoint_is_disabled_with_the_reason(
    stack: Stack, http: httpx.Client, receivers: Callable[..., WebhookReceiver]
) -> None:
    receiver = receivers(always(500))
    made, secret = endpoint(stack, DOWN, receiver, [t.USER_CREATED])
    sign_up(http, DOWN)
    event = only_event(stack, DOWN, t.USER_CREATED)
    disabled = wait_until(
        "disabled",
        lambda: (
            (e := against(stack, lambda db: webhooks.get_endpoint(db, DOWN, made.endpoint_id)))
            and not e.enabled
            and e
        ),
    )
    assert disabled.disabled_at is not None and disabled.disabled_reason
    assert "gave up after 4 failed attempts" in disabled.disabled_reason
    assert "HTTP 500" in disabled.disabled_reason
    same_delivery(receiver.received, secret)
    assert len(receiver.received) == 4
    row = delivery(stack, DOWN, made.endpoint_id, event.event_id)
    assert (row.state, row.attempts, row.last_status) == ("failed", 4, 500)
    [listed] = against(stack, lambda db: webhooks.list_deliveries(db, DOWN, made.endpoint_id))
    assert (listed.state, listed.last_error) == ("failed", "answered HTTP 500")


def test_410_gone_disables_the_endpoint_at_once_until_it_is_enabled_again(
    stack: Stack, http: httpx.Client, receivers: Callable[..., WebhookReceiver]
) -> None:
    receiver = receivers(always(410))
    made, secret = endpoint(stack, GONE, receiver, [t.USER_CREATED])
    sign_up(http, GONE)
    first = only_event(stack, GONE, t.USER_CREATED)
    disabled = wait_until(
        "disabled",
        lambda: (
            (e := against(stack, lambda db: webhooks.get_endpoint(db, GONE, made.endpoint_id)))
            and not e.enabled
            and e
        ),
    )
    assert disabled.disabled_reason == "the endpoint answered 410 Gone"
    assert len(receiver.received) == 1
    row = delivery(stack, GONE, made.endpoint_id, first.event_id)
    assert (row.state, row.attempts, row.last_status) == ("failed", 1, 410)

    # While disabled, new events are fanned out to no delivery for it.
    sign_up(http, GONE)
    [second] = [e for e in events_of(stack, GONE, [t.USER_CREATED]) if e.event_id != first.event_id]

    def fanned(conn: sa.Connection) -> bool:
        return bool(
            conn.execute(
                sa.select(audit_events.c.fanned_out).where(
                    audit_events.c.project_id == GONE,
                    audit_events.c.event_id == second.event_id,
                )
            ).scalar_one()
        )

    wait_until("fanned out", lambda: in_store(stack.db_url, fanned))
    assert delivery(stack, GONE, made.endpoint_id, second.event_id) is None

    receiver.plan = always(200)
    enabled = against(stack, lambda db: webhooks.enable_endpoint(db, GONE, made.endpoint_id))
    assert enabled.enabled and enabled.disabled_reason is None
    sign_up(http, GONE)
    [third] = [
        e
        for e in events_of(stack, GONE, [t.USER_CREATED])
        if e.event_id not in (first.event_id, second.event_id)
    ]
    got = receiver.wait_for(2)[1].verified(secret)
    assert got["data"]["eventId"] == third.event_id


# ------------------------------------------------------------- a process dies
def sender_pid(port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the TCP socket bound to 127.0.0.1:`port`."""
    inodes = set()
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None


def test_a_delivery_held_by_a_killed_process_is_made_by_another(
    stack: Stack, http: httpx.Client, receivers: Callable[..., WebhookReceiver]
) -> None:
    receiver = receivers(
        hold_first(), whose=lambda port: sender_pid(port, list(stack.worker_pids().values()))
    )
    made, secret = endpoint(stack, KILL, receiver, [t.USER_CREATED])
    sign_up(http, KILL)
    event = only_event(stack, KILL, t.USER_CREATED)
    [held] = receiver.wait_for(1)
    victim = held.sender
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    # The dead process's claim runs out; another relay takes the delivery.
    first, again = receiver.wait_for(2, timeout=40)
    assert again.sender is not None and again.sender != victim
    payload = same_delivery([first, again], secret)
    assert payload["data"]["eventId"] == event.event_id
    row = wait_until(
        "delivered",
        lambda: (
            (d := delivery(stack, KILL, made.endpoint_id, event.event_id))
            and d.state == "delivered"
            and d
        ),
    )
    # The killed attempt was never settled: only the second one counted.
    assert row.attempts == 1
    receiver.release()
