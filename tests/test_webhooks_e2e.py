"""Webhooks through the real stack (two server processes, each with its
relay, on SQLite and PostgreSQL): events of sign-ups and logins made through
the edge reach the endpoints of their own project only, signed per Standard
Webhooks; a receiver that fails at first, one that hangs and one that
answers 410; an endpoint given up on and disabled with its reason; and a
server process SIGKILLed mid-delivery whose delivery another one makes.
Endpoints are registered, read and enabled again, and events listed, as an
operator does it: through the admin REST API on the admin listener."""

from __future__ import annotations

import os
import pathlib
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa

from server.events import types as t
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
from tests.harness import Stack, create_admin_key, in_store, scrape, start_stack

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


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with stack.admin_client(create_admin_key(stack.db_url)) as client:
        yield client


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


@dataclass(frozen=True)
class Hook:
    project: str
    endpoint_id: str
    secret: str

    @property
    def path(self) -> str:
        return f"/admin/v1/projects/{self.project}/webhooks/{self.endpoint_id}"


def endpoint(
    admin: httpx.Client, project: str, receiver: WebhookReceiver, event_types: list[str]
) -> Hook:
    made = ok(
        admin.post(
            f"/admin/v1/projects/{project}/webhooks",
            json={"uri": receiver.url, "eventTypes": event_types},
        )
    )
    # The secret is in this reply alone.
    assert made["secret"].startswith("whsec_")
    return Hook(project, made["name"].rpartition("/")[2], made["secret"])


def sign_up(http: httpx.Client, project: str, *, login: bool = False) -> str:
    device = str(uuid.uuid4())
    body = {"projectId": project, "provider": "anonymous", "data": {"deviceId": device}}
    created = http.post("/v1/user", json=body)
    assert created.status_code == 200, created.text
    if login:
        assert http.put("/v1/user/login", json=body).status_code == 200
    return str(created.json()["data"]["userId"])


def delivery(stack: Stack, hook: Hook, event_id: str) -> Any:
    """The delivery of one event to one endpoint, read in the table: the
    admin API shows an endpoint's state, not its deliveries' attempts,
    statuses and errors."""
    d = webhook_deliveries.c
    return in_store(
        stack.db_url,
        lambda conn: conn.execute(
            sa.select(webhook_deliveries).where(
                d.project_id == hook.project,
                d.endpoint_id == hook.endpoint_id,
                d.event_id == event_id,
            )
        ).first(),
    )


def delivered(stack: Stack, hook: Hook, event_id: str) -> Any:
    return wait_until(
        "delivered",
        lambda: (d := delivery(stack, hook, event_id)) and d.state == "delivered" and d,
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


def events_of(admin: httpx.Client, project: str, kinds: list[str]) -> set[str]:
    """The ids of the project's events of these types, as the admin API
    lists them."""
    found = set()
    for kind in kinds:
        listed = ok(
            admin.get(
                f"/admin/v1/projects/{project}/auditEvents",
                params={"filter": f'type = "{kind}"', "pageSize": 1000},
            )
        )
        assert not listed["nextPageToken"]
        found |= {e["name"].rpartition("/")[2] for e in listed["auditEvents"]}
    return found


def only_event(admin: httpx.Client, project: str, kind: str) -> str:
    [event_id] = events_of(admin, project, [kind])
    return event_id


def disabled(admin: httpx.Client, hook: Hook) -> dict[str, Any]:
    """The endpoint as the admin API shows it, once it is disabled."""
    return wait_until(
        "disabled",
        lambda: (e := ok(admin.get(hook.path))) and e.get("disableTime") and e,
    )


def same_delivery(received: list[Received], secret: str) -> dict[str, Any]:
    """Every attempt of one delivery: one webhook-id, each signature good."""
    assert len({r.webhook_id for r in received}) == 1
    payloads = [r.verified(secret) for r in received]
    assert all(p == payloads[0] for p in payloads)
    return dict(payloads[0])


# ------------------------------------------------------------------ delivered
def test_events_reach_their_own_projects_endpoints_signed_and_none_is_lost(
    stack: Stack,
    admin: httpx.Client,
    http: httpx.Client,
    receivers: Callable[..., WebhookReceiver],
) -> None:
    to_a, to_b = receivers(always(200)), receivers(always(204))
    hook_a = endpoint(admin, A, to_a, ["user.*"])
    hook_b = endpoint(admin, B, to_b, [t.USER_CREATED])
    secret_a, secret_b = hook_a.secret, hook_b.secret
    users_a = [sign_up(http, A, login=True) for _ in range(4)]
    users_b = [sign_up(http, B, login=True) for _ in range(2)]
    listed_a = events_of(admin, A, [t.USER_CREATED, t.USER_LOGIN])
    listed_b = events_of(admin, B, [t.USER_CREATED])
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
    stack: Stack,
    admin: httpx.Client,
    http: httpx.Client,
    receivers: Callable[..., WebhookReceiver],
) -> None:
    receiver = receivers(fail_first(2))
    hook = endpoint(admin, FLAKY, receiver, [t.USER_CREATED])
    sign_up(http, FLAKY)
    event_id = only_event(admin, FLAKY, t.USER_CREATED)
    payload = same_delivery(receiver.wait_for(3), hook.secret)
    assert payload["data"]["eventId"] == event_id
    row = delivered(stack, hook, event_id)
    # The webhook-id a receiver dedupes on is the delivery's own id.
    assert receiver.received[0].webhook_id == row.delivery_id
    assert (row.attempts, row.last_status, row.last_error) == (3, 204, None)
    found = ok(admin.get(hook.path))
    assert found.get("disableTime") is None and found["disabledReason"] == ""


def test_a_receiver_that_hangs_past_the_timeout_counts_as_a_failure(
    stack: Stack,
    admin: httpx.Client,
    http: httpx.Client,
    receivers: Callable[..., WebhookReceiver],
) -> None:
    receiver = receivers(hang_first(TIMEOUT + 2))
    hook = endpoint(admin, HANG, receiver, [t.USER_CREATED, "account.*"])
    sign_up(http, HANG)
    event_id = only_event(admin, HANG, t.USER_CREATED)
    same_delivery(receiver.wait_for(2), hook.secret)
    assert delivered(stack, hook, event_id).attempts == 2


def test_after_the_last_attempt_the_endpoint_is_disabled_with_the_reason(
    stack: Stack,
    admin: httpx.Client,
    http: httpx.Client,
    receivers: Callable[..., WebhookReceiver],
) -> None:
    receiver = receivers(always(500))
    hook = endpoint(admin, DOWN, receiver, [t.USER_CREATED])
    sign_up(http, DOWN)
    event_id = only_event(admin, DOWN, t.USER_CREATED)
    shown = disabled(admin, hook)
    assert "gave up after 4 failed attempts" in shown["disabledReason"]
    assert "HTTP 500" in shown["disabledReason"]
    same_delivery(receiver.received, hook.secret)
    assert len(receiver.received) == 4
    row = delivery(stack, hook, event_id)
    assert (row.state, row.attempts, row.last_status, row.last_error) == (
        "failed",
        4,
        500,
        "answered HTTP 500",
    )
    # What an operator alerts on: the settled attempts, summed over processes.
    seen = scrape(stack)
    deliveries = "identify_webhook_deliveries_total"
    assert seen.value(deliveries, project=DOWN, outcome="retry") == 3
    assert seen.value(deliveries, project=DOWN, outcome="gave_up") == 1


def test_410_gone_disables_the_endpoint_at_once_until_it_is_enabled_again(
    stack: Stack,
    admin: httpx.Client,
    http: httpx.Client,
    receivers: Callable[..., WebhookReceiver],
) -> None:
    receiver = receivers(always(410))
    hook = endpoint(admin, GONE, receiver, [t.USER_CREATED])
    sign_up(http, GONE)
    first = only_event(admin, GONE, t.USER_CREATED)
    assert disabled(admin, hook)["disabledReason"] == "the endpoint answered 410 Gone"
    assert len(receiver.received) == 1
    row = delivery(stack, hook, first)
    assert (row.state, row.attempts, row.last_status) == ("failed", 1, 410)
    assert (
        scrape(stack).value("identify_webhook_deliveries_total", project=GONE, outcome="gone") == 1
    )

    # While disabled, new events are fanned out to no delivery for it.
    sign_up(http, GONE)
    [second] = events_of(admin, GONE, [t.USER_CREATED]) - {first}

    def fanned(conn: sa.Connection) -> bool:
        return bool(
            conn.execute(
                sa.select(audit_events.c.fanned_out).where(
                    audit_events.c.project_id == GONE,
                    audit_events.c.event_id == second,
                )
            ).scalar_one()
        )

    wait_until("fanned out", lambda: in_store(stack.db_url, fanned))
    assert delivery(stack, hook, second) is None

    receiver.plan = always(200)
    enabled = ok(admin.post(f"{hook.path}:enable", json={}))
    assert enabled.get("disableTime") is None and enabled["disabledReason"] == ""
    assert ok(admin.get(hook.path)).get("disableTime") is None
    sign_up(http, GONE)
    [third] = events_of(admin, GONE, [t.USER_CREATED]) - {first, second}
    got = receiver.wait_for(2)[1].verified(hook.secret)
    assert got["data"]["eventId"] == third


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
    stack: Stack,
    admin: httpx.Client,
    http: httpx.Client,
    receivers: Callable[..., WebhookReceiver],
) -> None:
    receiver = receivers(
        hold_first(), whose=lambda port: sender_pid(port, list(stack.worker_pids().values()))
    )
    hook = endpoint(admin, KILL, receiver, [t.USER_CREATED])
    sign_up(http, KILL)
    event_id = only_event(admin, KILL, t.USER_CREATED)
    [held] = receiver.wait_for(1)
    victim = held.sender
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    # The dead process's claim runs out; another relay takes the delivery.
    first, again = receiver.wait_for(2, timeout=40)
    assert again.sender is not None and again.sender != victim
    payload = same_delivery([first, again], hook.secret)
    assert payload["data"]["eventId"] == event_id
    row = delivered(stack, hook, event_id)
    # The killed attempt was never settled: only the second one counted.
    assert row.attempts == 1
    receiver.release()
