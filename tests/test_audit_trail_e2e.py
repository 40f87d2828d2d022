"""The audit trail through the real edge: every kind of event is written (on
SQLite and PostgreSQL) with its provider, device, client IP and reason, in
the transaction of the change it records; listed per project with filters
and stable pages; pseudonymized for an erasure; purged past retention in
small batches; and nothing secret is ever in the table. The trail is read
as an operator reads it: `GET /admin/v1/projects/{p}/auditEvents` on the
admin listener, with an admin key made by `identify admin create-key`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from server.clock import now as clock_now
from server.events import audit
from server.events import types as t
from server.store.db import open_database
from server.store.schema import audit_events, projects
from tests.harness import (
    Stack,
    cognito_pool,
    create_admin_key,
    in_store,
    moto_cognito,
    refused,
    start_stack,
)

REGION = "us-east-1"
PASSWORD = "Passw0rd!audit-one"
NEW_PASSWORD = "Passw0rd!audit-two"
WRONG = "Wrong-passw0rd!audit"
CLIENT_IP = "203.0.113.77"
MAIN, OTHER, TXN, OLD_A, OLD_B, OLD_C = (str(uuid.uuid4()) for _ in range(6))
LOCKOUT = {"maxFailures": 3, "stepSeconds": 60, "maxLockSeconds": 60}
# Every token, code and password a test here sees: none may reach the table.
SECRETS: list[str] = [PASSWORD, NEW_PASSWORD, WRONG]


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, str, str]]:
    with moto_cognito(REGION) as (url, client):
        yield (url, *cognito_pool(client, "audit"))


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, db_url: str, moto: tuple[str, str, str]
) -> Iterator[Stack]:
    endpoint, pool_id, client_id = moto
    cognito = {
        "region": REGION,
        "userPoolId": pool_id,
        "clientId": client_id,
        "endpointUrl": endpoint,
        "autoConfirm": True,
        "accessKeyId": "testing",
        "secretAccessKey": "testing",
    }
    anonymous = {"anonymous": {}, "noLogin": {}}
    config = {
        "projects": [
            {
                "id": MAIN,
                "name": "audited",
                "providers": {**anonymous, "awsCognito": cognito},
                "limits": {"lockout": LOCKOUT},
            },
            {"id": OTHER, "name": "other", "providers": anonymous},
            {"id": TXN, "name": "txn", "providers": anonymous},
            *({"id": p, "name": "old", "providers": anonymous} for p in (OLD_A, OLD_B, OLD_C)),
        ]
    }
    # One trusted proxy: the client IP is the one X-Forwarded-For names.
    s = start_stack(
        tmp_path_factory.mktemp("audit"),
        config,
        db_url=db_url,
        extra_args=["--trusted-proxies", "1"],
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(headers={"X-Forwarded-For": CLIENT_IP}) as client:
        yield client


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    key = create_admin_key(stack.db_url)
    SECRETS.append(key)
    with stack.admin_client(key) as client:
        yield client


@dataclass(frozen=True)
class Event:
    """One audit event as the admin API lists it (empty fields as None)."""

    project_id: str
    event_id: str
    type: str
    time: str  # eventTime, RFC 3339, as a filter takes it
    at: int
    user_id: str | None
    actor: str
    provider: str | None
    device_id: str | None
    client_ip: str | None
    reason: str | None
    data: dict[str, Any] | None
    listed: dict[str, Any]  # the JSON as the API gave it


def _event(item: dict[str, Any]) -> Event:
    _, project_id, _, event_id = item["name"].split("/")
    return Event(
        project_id=project_id,
        event_id=event_id,
        type=item["type"],
        time=item["eventTime"],
        at=int(datetime.fromisoformat(item["eventTime"]).timestamp()),
        user_id=item["userId"] or None,
        actor=item["actor"],
        provider=item["provider"] or None,
        device_id=item["deviceId"] or None,
        client_ip=item["clientIp"] or None,
        reason=item["reason"] or None,
        data=item.get("data"),
        listed=item,
    )


def audit_page(
    admin: httpx.Client, project: str, filter: str = "", *, size: int = 1000, token: str = ""
) -> httpx.Response:
    params = {"filter": filter, "pageSize": size, "pageToken": token}
    return admin.get(f"/admin/v1/projects/{project}/auditEvents", params=params)


def events(admin: httpx.Client, project: str = MAIN, filter: str = "") -> list[Event]:
    """Every event of the list, newest first, page after page."""
    found: list[Event] = []
    token = ""
    while True:
        reply = audit_page(admin, project, filter, token=token)
        assert reply.status_code == 200, reply.text
        found += [_event(e) for e in reply.json()["auditEvents"]]
        token = reply.json()["nextPageToken"]
        if not token:
            return found


def of_type(kind: str) -> str:
    return f'type = "{kind}"'


def only(admin: httpx.Client, kind: str, **where: Any) -> Event:
    matching = [
        e
        for e in events(admin, filter=of_type(kind))
        if all(getattr(e, k) == v for k, v in where.items())
    ]
    assert len(matching) == 1, matching
    return matching[0]


def body(project: str, provider: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"projectId": project, "provider": provider, "data": data or {}}


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    out: dict[str, Any] = reply.json()
    for key in ("accessToken", "refreshToken", "profileToken", "signature"):
        value = (out.get("data") or {}).get(key)
        if value:
            SECRETS.append(value)
    return out


def register(http: httpx.Client) -> tuple[str, str]:
    email = f"{uuid.uuid4().hex[:12]}@audit.test"
    data = {"email": email, "password": PASSWORD}
    user_id = ok(http.post("/v1/user", json=body(MAIN, "awsCognito", data)))["data"]["userId"]
    return email, user_id


def login(http: httpx.Client, email: str, password: str, device: str | None = None) -> Any:
    data = {"email": email, "password": password, **({"deviceId": device} if device else {})}
    return http.put("/v1/user/login", json=body(MAIN, "awsCognito", data))


# ---------------------------------------------------------- each kind, its fields
def test_an_anonymous_sign_up_and_logins_are_recorded(
    admin: httpx.Client, http: httpx.Client
) -> None:
    device = str(uuid.uuid4())
    created = ok(http.post("/v1/user", json=body(MAIN, "anonymous", {"deviceId": device})))
    user_id = created["data"]["userId"]
    ok(http.put("/v1/user/login", json=body(MAIN, "anonymous", {"deviceId": device})))
    ok(http.put("/v1/user/login", json=body(MAIN, "anonymous", {"deviceId": device})))

    sign_up = only(admin, t.USER_CREATED, user_id=user_id)
    assert (sign_up.provider, sign_up.device_id, sign_up.client_ip) == (
        "anonymous",
        device,
        CLIENT_IP,
    )
    assert sign_up.actor == "user" and sign_up.reason is None
    logins = events(admin, filter=f'user_id = "{user_id}" AND {of_type(t.USER_LOGIN)}')
    assert len(logins) == 2
    assert {(e.provider, e.device_id, e.client_ip) for e in logins} == {
        ("anonymous", device, CLIENT_IP)
    }


def test_password_login_success_and_refusal_carry_reason_provider_device_and_ip(
    admin: httpx.Client, http: httpx.Client
) -> None:
    email, user_id = register(http)
    assert only(admin, t.USER_CREATED, user_id=user_id).provider == "awsCognito"
    device = str(uuid.uuid4())
    ok(login(http, email, PASSWORD, device))
    refused(login(http, email, WRONG, device.upper()), 401, "INVALID_CREDENTIALS")

    success = only(admin, t.USER_LOGIN, user_id=user_id)
    assert (success.device_id, success.client_ip, success.provider) == (
        device,
        CLIENT_IP,
        "awsCognito",
    )
    refusal = only(admin, t.USER_LOGIN_REFUSED, device_id=device)
    # The user is not named: a refusal says nothing of who has an account.
    assert refusal.user_id is None
    assert (refusal.reason, refusal.provider, refusal.client_ip, refusal.actor) == (
        "INVALID_CREDENTIALS",
        "awsCognito",
        CLIENT_IP,
        "user",
    )


def test_a_refused_sign_up_is_recorded_with_its_reason(
    admin: httpx.Client, http: httpx.Client
) -> None:
    email, _ = register(http)
    data = {"email": email, "password": PASSWORD}
    refused(http.post("/v1/user", json=body(MAIN, "awsCognito", data)), 409, "USER_ALREADY_EXISTS")
    refused(
        http.post("/v1/user", json=body(MAIN, "anonymous", {"deviceId": "not-a-uuid"})),
        400,
        "INVALID_DEVICE_ID",
    )
    reasons = {e.reason: e for e in events(admin, filter=of_type(t.USER_SIGNUP_REFUSED))}
    assert {"USER_ALREADY_EXISTS", "INVALID_DEVICE_ID"} <= set(reasons)
    assert reasons["USER_ALREADY_EXISTS"].provider == "awsCognito"
    assert reasons["INVALID_DEVICE_ID"].device_id is None


def test_a_refusal_before_the_project_is_known_records_nothing(
    stack: Stack, admin: httpx.Client, http: httpx.Client
) -> None:
    before = events(admin, filter=of_type(t.USER_LOGIN_REFUSED))
    missing = str(uuid.uuid4())
    refused(http.put("/v1/user/login", json=body(missing, "anonymous")), 404, "PROJECT_NOT_FOUND")
    # The API lists no events of a project that does not exist (404), so
    # whether any were kept under its id is read in the table.
    refused(audit_page(admin, missing), 404, "PROJECT_NOT_FOUND")
    kept = in_store(
        stack.db_url,
        lambda conn: conn.execute(
            sa.select(sa.func.count())
            .select_from(audit_events)
            .where(audit_events.c.project_id == missing)
        ).scalar_one(),
    )
    assert kept == 0
    assert events(admin, filter=of_type(t.USER_LOGIN_REFUSED)) == before


def test_logout_password_change_and_reset_are_recorded(
    admin: httpx.Client, http: httpx.Client, moto: tuple[str, str, str]
) -> None:
    email, user_id = register(http)
    session = ok(login(http, email, PASSWORD))["data"]
    auth = {"Authorization": f"Bearer {session['accessToken']}"}
    device = str(uuid.uuid4())
    change = {"password": NEW_PASSWORD, "previousPassword": PASSWORD, "deviceId": device}
    changed = ok(
        http.put("/v1/user/change-password", json=body(MAIN, "awsCognito", change), headers=auth)
    )["data"]
    assert only(admin, t.USER_PASSWORD_CHANGED, user_id=user_id).device_id == device

    auth = {"Authorization": f"Bearer {changed['accessToken']}"}
    ok(http.post("/v1/user/logout", json=body(MAIN, "awsCognito"), headers=auth))
    logout = only(admin, t.USER_LOGOUT, user_id=user_id)
    assert (logout.provider, logout.client_ip) == ("awsCognito", CLIENT_IP)

    ok(http.put("/v1/user/forgot-password", json=body(MAIN, "awsCognito", {"email": email})))
    from moto.cognitoidp.models import cognitoidp_backends
    from moto.core.models import DEFAULT_ACCOUNT_ID

    _, pool_id, _ = moto
    pool = cognitoidp_backends[DEFAULT_ACCOUNT_ID][REGION].user_pools[pool_id]
    code = pool._get_user(email).confirmation_code
    SECRETS.append(code)
    reset = {"email": email, "confirmationCode": code, "password": PASSWORD}
    ok(http.post("/v1/user/confirm-forgot-password", json=body(MAIN, "awsCognito", reset)))
    [done] = events(admin, filter=of_type(t.USER_PASSWORD_RESET))
    assert (done.provider, done.client_ip, done.reason) == ("awsCognito", CLIENT_IP, None)


def test_profile_updates_name_the_fields_never_their_values(
    admin: httpx.Client, http: httpx.Client
) -> None:
    made = ok(http.post("/v1/user", json=body(MAIN, "noLogin", {"appProfile": {"level": "one"}})))
    update = {"projectId": MAIN, "provider": "noLogin", "externalId": made["externalId"]}
    profile = {"appProfile": {"level": "two", "note": "kept-out-of-the-trail"}}
    ok(http.put("/v1/user", json={**update, "data": profile}))
    [updated] = [
        e
        for e in events(admin, filter=of_type(t.USER_UPDATED))
        if e.provider == "noLogin" and e.data == {"fields": ["appProfile"]}
    ]
    assert updated.user_id and updated.client_ip == CLIENT_IP
    assert "kept-out-of-the-trail" not in json.dumps(updated.listed)


def test_a_lockout_is_recorded_without_the_email(admin: httpx.Client, http: httpx.Client) -> None:
    email, _ = register(http)
    for _ in range(LOCKOUT["maxFailures"]):
        refused(login(http, email, WRONG), 401, "INVALID_CREDENTIALS")
    refused(login(http, email, PASSWORD), 429, "TOO_MANY_FAILED_ATTEMPTS")
    [locked] = events(admin, filter=of_type(t.ACCOUNT_LOCKED))
    assert locked.provider == "awsCognito" and locked.client_ip == CLIENT_IP
    assert locked.data is not None and locked.data["failures"] == LOCKOUT["maxFailures"]
    assert locked.data["lockedSeconds"] == LOCKOUT["stepSeconds"]
    assert email not in json.dumps(locked.listed)
    assert only(admin, t.USER_LOGIN_REFUSED, reason="TOO_MANY_FAILED_ATTEMPTS")


# ------------------------------------------------------------- one transaction
def _triggers(conn: sa.Connection) -> None:
    """Makes the database refuse, in project TXN only, (a) any user update
    whose appProfile holds "explode", (b) the insert of any user.updated
    event: each of the two writes of one change failing in turn."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            f"CREATE TRIGGER refuse_update BEFORE UPDATE ON users WHEN NEW.project_id = '{TXN}'"
            " AND NEW.app_profile LIKE '%explode%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER refuse_event BEFORE INSERT ON audit_events WHEN NEW.project_id ="
            f" '{TXN}' AND NEW.type = 'user.updated' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        return
    conn.exec_driver_sql(
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
        " LANGUAGE plpgsql"
    )
    conn.exec_driver_sql(
        "CREATE TRIGGER refuse_update BEFORE UPDATE ON users FOR EACH ROW WHEN"
        f" (NEW.project_id = '{TXN}' AND NEW.app_profile::text LIKE '%explode%')"
        " EXECUTE FUNCTION refuse()"
    )
    conn.exec_driver_sql(
        "CREATE TRIGGER refuse_event BEFORE INSERT ON audit_events FOR EACH ROW WHEN"
        f" (NEW.project_id = '{TXN}' AND NEW.type = 'user.updated') EXECUTE FUNCTION refuse()"
    )


def _drop_triggers(conn: sa.Connection) -> None:
    on = "" if conn.dialect.name == "sqlite" else " ON "
    for trigger, table in (("refuse_update", "users"), ("refuse_event", "audit_events")):
        conn.exec_driver_sql(f"DROP TRIGGER {trigger}{on + table if on else ''}")


@pytest.fixture
def refusing_db(stack: Stack) -> Iterator[None]:
    in_store(stack.db_url, _triggers, write=True)
    yield
    in_store(stack.db_url, _drop_triggers, write=True)


def test_an_event_is_written_with_its_change_or_not_at_all(
    admin: httpx.Client, http: httpx.Client, refusing_db: None
) -> None:
    made = ok(http.post("/v1/user", json=body(TXN, "noLogin", {"appProfile": {"v": 1}})))
    update = {"projectId": TXN, "provider": "noLogin", "externalId": made["externalId"]}

    def profile() -> Any:
        reply = http.get("/v1/user", params={k: v for k, v in update.items()})
        return ok(reply)["appProfile"]

    # (a) The change fails: no event describes it.
    failed = http.put("/v1/user", json={**update, "data": {"appProfile": {"explode": 1}}})
    refused(failed, 500, "INTERNAL")
    # (b) The event cannot be written: the change is undone with it.
    failed = http.put("/v1/user", json={**update, "data": {"appProfile": {"v": 2}}})
    refused(failed, 500, "INTERNAL")
    assert profile() == {"v": 1}
    assert [e.type for e in events(admin, TXN)] == [t.USER_CREATED]


# --------------------------------------------------------------- list and pages
def test_the_list_filters_by_user_type_and_time_in_stable_pages(
    admin: httpx.Client, http: httpx.Client
) -> None:
    device, other_device = str(uuid.uuid4()), str(uuid.uuid4())
    for _ in range(6):
        ok(http.put("/v1/user/login", json=body(OTHER, "anonymous", {"deviceId": device})))
    ok(http.put("/v1/user/login", json=body(OTHER, "anonymous", {"deviceId": other_device})))
    everything = events(admin, OTHER)
    [user_id] = {e.user_id for e in everything if e.device_id == device}
    of_user = f'user_id = "{user_id}"'
    mine = events(admin, OTHER, of_user)
    assert [e.type for e in mine] == [t.USER_LOGIN] * 6 + [t.USER_CREATED]
    assert [(e.at, e.event_id) for e in mine] == sorted(
        ((e.at, e.event_id) for e in mine), reverse=True
    )

    pages: list[list[str]] = []
    token = ""
    while True:
        reply = audit_page(admin, OTHER, of_user, size=3, token=token)
        assert reply.status_code == 200, reply.text
        pages.append([_event(e).event_id for e in reply.json()["auditEvents"]])
        # Events written meanwhile (newer) do not shift the pages.
        ok(http.put("/v1/user/login", json=body(OTHER, "anonymous", {"deviceId": device})))
        token = reply.json()["nextPageToken"]
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == [e.event_id for e in mine]

    created = events(admin, OTHER, f"{of_user} AND {of_type(t.USER_CREATED)}")
    assert [e.type for e in created] == [t.USER_CREATED]
    first = mine[-1].time
    assert events(admin, OTHER, f'{of_user} AND event_time < "{first}"') == []
    assert len(events(admin, OTHER, f'event_time >= "{first}"')) == len(events(admin, OTHER))
    # One project's list never shows another's events.
    assert {e.project_id for e in everything} == {OTHER}
    assert not {e.event_id for e in everything} & {e.event_id for e in events(admin, MAIN)}


def test_page_tokens_of_another_list_or_forged_ones_and_unreadable_filters_are_refused(
    admin: httpx.Client,
) -> None:
    first = audit_page(admin, OTHER, size=1)
    assert first.status_code == 200, first.text
    token = first.json()["nextPageToken"]
    assert token
    for bad in ("not-a-token", token[:-2]):
        refused(audit_page(admin, OTHER, token=bad), 400, "INVALID_PAGE_TOKEN")
    # A token is bound to its list: its project and its filter.
    refused(audit_page(admin, MAIN, token=token), 400, "INVALID_PAGE_TOKEN")
    refused(audit_page(admin, OTHER, of_type(t.USER_LOGIN), token=token), 400, "INVALID_PAGE_TOKEN")
    for unreadable in (
        f"{of_type(t.USER_LOGIN)} OR {of_type(t.USER_CREATED)}",
        f'type != "{t.USER_LOGIN}"',
        'event_time >= "last week"',
        'type = "user.nope"',
    ):
        refused(audit_page(admin, OTHER, unreadable), 400, "INVALID_FILTER")


# ------------------------------------------------------------------ erasure
def test_erasing_a_user_keeps_only_a_pseudonymous_record(
    admin: httpx.Client, http: httpx.Client
) -> None:
    device = str(uuid.uuid4())
    made = ok(http.post("/v1/user", json=body(OTHER, "anonymous", {"deviceId": device})))
    user_id = made["data"]["userId"]
    ok(http.put("/v1/user/login", json=body(OTHER, "anonymous", {"deviceId": device})))
    others_before = [e for e in events(admin, OTHER) if e.user_id != user_id]
    erased = admin.delete(f"/admin/v1/projects/{OTHER}/users/{user_id}")
    assert erased.status_code == 200, erased.text
    assert events(admin, OTHER, f'user_id = "{user_id}"') == []
    [alias] = {
        e.user_id for e in events(admin, OTHER) if e.user_id and e.user_id.startswith("erased:")
    }
    assert user_id not in alias
    pseudonymous = events(admin, OTHER, f'user_id = "{alias}"')
    # The erasure itself is recorded under the pseudonym too.
    assert [e.type for e in pseudonymous] == [t.USER_DELETED, t.USER_LOGIN, t.USER_CREATED]
    for event in pseudonymous:
        assert (event.device_id, event.client_ip) == (None, None)
    # The earlier events' details are gone; the erasure's own says only
    # whether the upstream account went too.
    assert [e.data for e in pseudonymous] == [{"upstreamDeleted": False}, None, None]
    assert [e.provider for e in pseudonymous[1:]] == ["anonymous", "anonymous"]
    assert [
        e for e in events(admin, OTHER) if not e.user_id or not e.user_id.startswith("erased:")
    ] == others_before


# ---------------------------------------------------------------- retention
def purge(stack: Stack, **kwargs: Any) -> audit.Purged:
    """One run of the retention purge. It is every server process's
    housekeeping (every 10 minutes) and no call starts it: the test runs it
    on the stack's database itself, to count its statements."""

    async def run() -> audit.Purged:
        database = open_database(stack.db_url, pool_size=1)
        try:
            return await audit.purge_expired(database, **kwargs)
        finally:
            await database.dispose()

    return asyncio.run(run())


def test_retention_purges_old_events_in_small_batches_and_keeps_new_ones(
    stack: Stack, admin: httpx.Client
) -> None:
    now = clock_now()
    day = 86400

    def seed(conn: sa.Connection) -> None:
        conn.execute(
            sa.update(projects)
            .where(projects.c.project_id == OLD_B)
            .values(audit_retention_days=30)
        )
        plan = [
            (OLD_A, 100, 1200),  # default 90 days: gone
            (OLD_A, 1, 5),
            (OLD_B, 40, 3),  # 30 days for this project: gone
            (OLD_B, 10, 2),
            (OLD_C, 40, 4),  # default 90 days: kept
        ]
        for project, age, count in plan:
            for _ in range(count):
                audit.record(
                    conn,
                    audit.AuditEvent(
                        type=t.USER_LOGIN, project_id=project, actor="system", at=now - age * day
                    ),
                )

    in_store(stack.db_url, seed, write=True)
    purged = purge(stack, now=now, batch=500, pause=0)
    assert (purged.events, purged.deliveries) == (1203, 0)
    # 500 + 500 + 200 for OLD_A, 3 for OLD_B: never one big DELETE.
    assert purged.statements == 4
    left = {p: len(events(admin, p)) for p in (OLD_A, OLD_B, OLD_C)}
    assert left == {OLD_A: 5, OLD_B: 2, OLD_C: 4}
    again = purge(stack, now=now)
    assert again == audit.Purged()


# --------------------------------------------------------------- no secrets
def test_zz_no_token_password_code_or_secret_is_anywhere_in_the_table(stack: Stack) -> None:
    def everything(conn: sa.Connection) -> tuple[list[str], list[str]]:
        rows = [json.dumps([str(v) for v in row]) for row in conn.execute(sa.select(audit_events))]
        project_secrets = [r.secret for r in conn.execute(sa.select(projects.c.secret))]
        return rows, project_secrets

    rows, project_secrets = in_store(stack.db_url, everything)
    assert len(rows) > 20
    text = "\n".join(rows)
    assert len(SECRETS) > 10
    for secret in [*SECRETS, *project_secrets]:
        assert secret not in text
    # Nor an email: lockouts and refusals name no account in clear.
    assert "@audit.test" not in text
