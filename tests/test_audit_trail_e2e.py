"""The audit trail through the real edge: every kind of event is written (on
SQLite and PostgreSQL) with its provider, device, client IP and reason, in
the transaction of the change it records; listed per project with filters
and stable pages; pseudonymized for an erasure; purged past retention in
small batches; and nothing secret is ever in the table.

The admin API that will list events is not on main yet: the list is read
with `list_events` against the stack's database, as the admin RPC will."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa

from providers.values import InvalidArgument
from server.clock import now as clock_now
from server.events import audit
from server.events import types as t
from server.store.db import open_database
from server.store.schema import audit_events, projects
from tests.harness import Stack, in_store, moto_cognito, refused, start_stack

T = TypeVar("T")
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
        pool = client.create_user_pool(PoolName="audit", UsernameAttributes=["email"])
        app = client.create_user_pool_client(
            UserPoolId=pool["UserPool"]["Id"],
            ClientName="app",
            ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]
        yield url, pool["UserPool"]["Id"], app["ClientId"]


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


def against(stack: Stack, fn: Callable[[Any], Any]) -> Any:
    """Runs `fn(database)` (a coroutine function) on the stack's database."""

    async def run() -> Any:
        database = open_database(stack.db_url, pool_size=1)
        try:
            return await fn(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


def events(stack: Stack, project: str = MAIN, **filters: Any) -> list[audit.AuditEvent]:
    found, _ = against(stack, lambda db: audit.list_events(db, project, page_size=500, **filters))
    return list(found)


def only(stack: Stack, kind: str, **where: Any) -> audit.AuditEvent:
    matching = [
        e for e in events(stack, types=[kind]) if all(getattr(e, k) == v for k, v in where.items())
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
def test_an_anonymous_sign_up_and_logins_are_recorded(stack: Stack, http: httpx.Client) -> None:
    device = str(uuid.uuid4())
    created = ok(http.post("/v1/user", json=body(MAIN, "anonymous", {"deviceId": device})))
    user_id = created["data"]["userId"]
    ok(http.put("/v1/user/login", json=body(MAIN, "anonymous", {"deviceId": device})))
    ok(http.put("/v1/user/login", json=body(MAIN, "anonymous", {"deviceId": device})))

    sign_up = only(stack, t.USER_CREATED, user_id=user_id)
    assert (sign_up.provider, sign_up.device_id, sign_up.client_ip) == (
        "anonymous",
        device,
        CLIENT_IP,
    )
    assert sign_up.actor == "user" and sign_up.reason is None
    logins = events(stack, user_id=user_id, types=[t.USER_LOGIN])
    assert len(logins) == 2
    assert {(e.provider, e.device_id, e.client_ip) for e in logins} == {
        ("anonymous", device, CLIENT_IP)
    }


def test_password_login_success_and_refusal_carry_reason_provider_device_and_ip(
    stack: Stack, http: httpx.Client
) -> None:
    email, user_id = register(http)
    assert only(stack, t.USER_CREATED, user_id=user_id).provider == "awsCognito"
    device = str(uuid.uuid4())
    ok(login(http, email, PASSWORD, device))
    refused(login(http, email, WRONG, device.upper()), 401, "INVALID_CREDENTIALS")

    success = only(stack, t.USER_LOGIN, user_id=user_id)
    assert (success.device_id, success.client_ip, success.provider) == (
        device,
        CLIENT_IP,
        "awsCognito",
    )
    refusal = only(stack, t.USER_LOGIN_REFUSED, device_id=device)
    # The user is not named: a refusal says nothing of who has an account.
    assert refusal.user_id is None
    assert (refusal.reason, refusal.provider, refusal.client_ip, refusal.actor) == (
        "INVALID_CREDENTIALS",
        "awsCognito",
        CLIENT_IP,
        "user",
    )


def test_a_refused_sign_up_is_recorded_with_its_reason(stack: Stack, http: httpx.Client) -> None:
    email, _ = register(http)
    data = {"email": email, "password": PASSWORD}
    refused(http.post("/v1/user", json=body(MAIN, "awsCognito", data)), 409, "USER_ALREADY_EXISTS")
    refused(
        http.post("/v1/user", json=body(MAIN, "anonymous", {"deviceId": "not-a-uuid"})),
        400,
        "INVALID_DEVICE_ID",
    )
    reasons = {e.reason: e for e in events(stack, types=[t.USER_SIGNUP_REFUSED])}
    assert {"USER_ALREADY_EXISTS", "INVALID_DEVICE_ID"} <= set(reasons)
    assert reasons["USER_ALREADY_EXISTS"].provider == "awsCognito"
    assert reasons["INVALID_DEVICE_ID"].device_id is None


def test_a_refusal_before_the_project_is_known_records_nothing(
    stack: Stack, http: httpx.Client
) -> None:
    before = events(stack, types=[t.USER_LOGIN_REFUSED])
    missing = str(uuid.uuid4())
    refused(http.put("/v1/user/login", json=body(missing, "anonymous")), 404, "PROJECT_NOT_FOUND")
    assert events(stack, missing) == []
    assert events(stack, types=[t.USER_LOGIN_REFUSED]) == before


def test_logout_password_change_and_reset_are_recorded(
    stack: Stack, http: httpx.Client, moto: tuple[str, str, str]
) -> None:
    email, user_id = register(http)
    session = ok(login(http, email, PASSWORD))["data"]
    auth = {"Authorization": f"Bearer {session['accessToken']}"}
    device = str(uuid.uuid4())
    change = {"password": NEW_PASSWORD, "previousPassword": PASSWORD, "deviceId": device}
    changed = ok(
        http.put("/v1/user/change-password", json=body(MAIN, "awsCognito", change), headers=auth)
    )["data"]
    assert only(stack, t.USER_PASSWORD_CHANGED, user_id=user_id).device_id == device

    auth = {"Authorization": f"Bearer {changed['accessToken']}"}
    ok(http.post("/v1/user/logout", json=body(MAIN, "awsCognito"), headers=auth))
    logout = only(stack, t.USER_LOGOUT, user_id=user_id)
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
    [done] = events(stack, types=[t.USER_PASSWORD_RESET])
    assert (done.provider, done.client_ip, done.reason) == ("awsCognito", CLIENT_IP, None)


def test_profile_updates_name_the_fields_never_their_values(
    stack: Stack, http: httpx.Client
) -> None:
    made = ok(http.post("/v1/user", json=body(MAIN, "noLogin", {"appProfile": {"level": "one"}})))
    update = {"projectId": MAIN, "provider": "noLogin", "externalId": made["externalId"]}
    profile = {"appProfile": {"level": "two", "note": "kept-out-of-the-trail"}}
    ok(http.put("/v1/user", json={**update, "data": profile}))
    [updated] = [
        e
        for e in events(stack, types=[t.USER_UPDATED])
        if e.provider == "noLogin" and e.data == {"fields": ["appProfile"]}
    ]
    assert updated.user_id and updated.client_ip == CLIENT_IP
    assert "kept-out-of-the-trail" not in json.dumps(updated.to_json())


def test_a_lockout_is_recorded_without_the_email(stack: Stack, http: httpx.Client) -> None:
    email, _ = register(http)
    for _ in range(LOCKOUT["maxFailures"]):
        refused(login(http, email, WRONG), 401, "INVALID_CREDENTIALS")
    refused(login(http, email, PASSWORD), 429, "TOO_MANY_FAILED_ATTEMPTS")
    [locked] = events(stack, types=[t.ACCOUNT_LOCKED])
    assert locked.provider == "awsCognito" and locked.client_ip == CLIENT_IP
    assert locked.data is not None and locked.data["failures"] == LOCKOUT["maxFailures"]
    assert locked.data["lockedSeconds"] == LOCKOUT["stepSeconds"]
    assert email not in json.dumps(locked.to_json())
    assert only(stack, t.USER_LOGIN_REFUSED, reason="TOO_MANY_FAILED_ATTEMPTS")


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
    stack: Stack, http: httpx.Client, refusing_db: None
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
    assert [e.type for e in events(stack, TXN)] == [t.USER_CREATED]


# --------------------------------------------------------------- list and pages
def test_the_list_filters_by_user_type_and_time_in_stable_pages(
    stack: Stack, http: httpx.Client
) -> None:
    device, other_device = str(uuid.uuid4()), str(uuid.uuid4())
    for _ in range(6):
        ok(http.put("/v1/user/login", json=body(OTHER, "anonymous", {"deviceId": device})))
    ok(http.put("/v1/user/login", json=body(OTHER, "anonymous", {"deviceId": other_device})))
    everything = events(stack, OTHER)
    [user_id] = {e.user_id for e in everything if e.device_id == device}
    mine = events(stack, OTHER, user_id=user_id)
    assert [e.type for e in mine] == [t.USER_LOGIN] * 6 + [t.USER_CREATED]
    assert [(e.at, e.event_id) for e in mine] == sorted(
        ((e.at, e.event_id) for e in mine), reverse=True
    )

    pages: list[list[str]] = []
    token = ""
    while True:
        page, token = against(
            stack,
            lambda db, token=token: audit.list_events(
                db, OTHER, user_id=user_id, page_size=3, page_token=token or None
            ),
        )
        pages.append([e.event_id for e in page])
        # Events written meanwhile (newer) do not shift the pages.
        ok(http.put("/v1/user/login", json=body(OTHER, "anonymous", {"deviceId": device})))
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == [e.event_id for e in mine]

    created = events(stack, OTHER, user_id=user_id, types=[t.USER_CREATED])
    assert [e.type for e in created] == [t.USER_CREATED]
    first = mine[-1].at
    assert events(stack, OTHER, user_id=user_id, until=first) == []
    assert len(events(stack, OTHER, since=first)) == len(events(stack, OTHER))
    # One project's list never shows another's events.
    assert {e.project_id for e in everything} == {OTHER}
    assert not {e.event_id for e in everything} & {e.event_id for e in events(stack, MAIN)}


def test_page_tokens_of_other_filters_or_forged_ones_are_refused(stack: Stack) -> None:
    _, token = against(stack, lambda db: audit.list_events(db, OTHER, page_size=1))
    assert token
    for bad in ("not-a-token", token[:-2]):
        with pytest.raises(InvalidArgument) as err:
            against(stack, lambda db, bad=bad: audit.list_events(db, OTHER, page_token=bad))
        assert err.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument) as err:
        against(stack, lambda db: audit.list_events(db, MAIN, page_token=token))
    assert err.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument) as err:
        against(stack, lambda db: audit.list_events(db, OTHER, types=["user.nope"]))
    assert err.value.reason == "INVALID_EVENT_TYPE"


# ------------------------------------------------------------------ erasure
def test_pseudonymizing_a_user_keeps_only_a_pseudonymous_record(
    stack: Stack, http: httpx.Client
) -> None:
    device = str(uuid.uuid4())
    made = ok(http.post("/v1/user", json=body(OTHER, "anonymous", {"deviceId": device})))
    user_id = made["data"]["userId"]
    ok(http.put("/v1/user/login", json=body(OTHER, "anonymous", {"deviceId": device})))
    others_before = [e for e in events(stack, OTHER) if e.user_id != user_id]
    alias = in_store(
        stack.db_url, lambda conn: audit.pseudonymize_user(conn, OTHER, user_id), write=True
    )
    assert alias.startswith("erased:") and user_id not in alias
    assert events(stack, OTHER, user_id=user_id) == []
    erased = events(stack, OTHER, user_id=alias)
    assert [e.type for e in erased] == [t.USER_LOGIN, t.USER_CREATED]
    for event in erased:
        assert (event.device_id, event.client_ip, event.data) == (None, None, None)
        assert event.provider == "anonymous"
    assert [
        e for e in events(stack, OTHER) if not e.user_id or not e.user_id.startswith("erased:")
    ] == others_before


# ---------------------------------------------------------------- retention
def test_retention_purges_old_events_in_small_batches_and_keeps_new_ones(stack: Stack) -> None:
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
    purged = against(stack, lambda db: audit.purge_expired(db, now=now, batch=500, pause=0))
    assert (purged.events, purged.deliveries) == (1203, 0)
    # 500 + 500 + 200 for OLD_A, 3 for OLD_B: never one big DELETE.
    assert purged.statements == 4
    left = {p: len(events(stack, p)) for p in (OLD_A, OLD_B, OLD_C)}
    assert left == {OLD_A: 5, OLD_B: 2, OLD_C: 4}
    again = against(stack, lambda db: audit.purge_expired(db, now=now))
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
