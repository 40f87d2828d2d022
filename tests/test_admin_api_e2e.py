"""The admin API through the real edge (its own listener) and natively over
gRPC: admin keys and their scopes, tenant isolation of every call, projects
and their soft delete, users, devices, sessions, erasure, export, webhooks,
signing keys."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import sqlalchemy as sa
from identify.admin.v1 import admin_pb2 as apb
from identify.admin.v1 import admin_pb2_grpc
from identify.v1 import identify_pb2 as pb
from identify.v1 import identify_pb2_grpc

from providers.registry import Registry
from server import config as config_mod
from server.admin import store as admin_store
from server.store.db import open_database
from server.store.schema import admin_keys
from tests.fakes.oidc_issuer import FakeIssuer
from tests.harness import (
    Stack,
    count_rows,
    create_admin_key,
    identify_cli,
    in_store,
    refused,
    start_stack,
)

A = str(uuid.uuid4())
B = str(uuid.uuid4())
AUD = "admin-tests"


@dataclass
class World:
    stack: Stack
    root: str  # every project, read-write
    issuer: FakeIssuer
    public: httpx.Client
    admin: httpx.Client

    def as_key(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.stack.admin_http, timeout=10, headers={"authorization": f"Bearer {key}"}
        )

    def key_record(self, **admin_key: Any) -> dict[str, Any]:
        body = {"displayName": "test", **admin_key}
        reply = self.admin.post("/admin/v1/adminKeys", json=body)
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def key(self, **admin_key: Any) -> str:
        return str(self.key_record(**admin_key)["key"])

    def anonymous(self, project: str = A) -> dict[str, Any]:
        body = {
            "projectId": project,
            "provider": "anonymous",
            "data": {"deviceId": str(uuid.uuid4())},
        }
        reply = self.public.put("/v1/user/login", json=body)
        assert reply.status_code == 200, reply.text
        return dict(reply.json()["data"])

    def oidc_check(self, token: str, device_id: str) -> httpx.Response:
        return self.public.get(
            "/v1/user/check",
            params={"projectId": A, "provider": "oidc", "deviceId": device_id},
            headers={"authorization": f"Bearer {token}"},
        )

    def verify(self, project: str, session: dict[str, Any]) -> dict[str, Any]:
        body = {
            "projectId": project,
            **{k: session[k] for k in ("userId", "deviceId", "timeStamp", "signature")},
        }
        reply = self.public.post("/v1/signature:verify", json=body)
        assert reply.status_code == 200, reply.text
        return dict(reply.json())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    issuer = FakeIssuer()
    oidc = {"issuer": issuer.issuer, "jwksUri": issuer.jwks_url, "audience": AUD}
    config = {
        "projects": [
            {"id": A, "name": "a", "providers": {"anonymous": {}, "oidc": oidc}},
            {"id": B, "name": "b", "providers": {"anonymous": {}}},
        ]
    }
    stack = start_stack(tmp_path_factory.mktemp("admin"), config, db_url=db_url)
    root = create_admin_key(db_url)
    public = stack.client()
    admin = stack.admin_client(root)
    try:
        yield World(stack, root, issuer, public, admin)
    finally:
        public.close()
        admin.close()
        stack.stop()
        issuer.stop()


def sleep_past(second: int) -> None:
    # A revocation in a session's own second leaves it valid (README): step
    # past that second, as the logout tests do.
    time.sleep(max(0.0, second + 1 - time.time()))


# ------------------------------------------------------------------ keys
def test_create_key_prints_the_key_alone_and_stores_only_its_hash(
    world: World, db_url: str
) -> None:
    made = identify_cli(
        "admin",
        "create-key",
        "--db",
        db_url,
        "--name",
        "ops",
        "--project",
        A,
        "--read-only",
        "--expires-in",
        "90d",
    )
    assert made.returncode == 0, made.stderr
    *_, last = made.stdout.strip().splitlines()
    assert last.startswith("idk_") and " " not in last
    rows = in_store(db_url, lambda c: c.execute(sa.select(admin_keys)).all())
    assert all(last not in str(tuple(r)) for r in rows)
    [ops] = [r for r in rows if r.name == "ops"]
    assert ops.read_only and ops.projects == [A] and ops.expires_at > time.time() + 89 * 86400
    with world.as_key(last) as http:
        assert http.get(f"/admin/v1/projects/{A}").status_code == 200


def test_missing_wrong_expired_and_revoked_keys_are_401(world: World, db_url: str) -> None:
    expired, revoked = world.key_record(), world.key_record()
    in_store(
        db_url,
        lambda c: c.execute(
            admin_keys.update()
            .where(admin_keys.c.key_id == expired["name"].rpartition("/")[2])
            .values(expires_at=int(time.time()) - 1)
        ),
        write=True,
    )
    assert world.admin.delete(f"/admin/v1/{revoked['name']}").json()["revokeTime"]
    refused(world.admin.delete(f"/admin/v1/{revoked['name']}"), 404, "ADMIN_KEY_NOT_FOUND")
    listed = world.admin.get("/admin/v1/adminKeys", params={"pageSize": 1000}).json()
    assert all("key" not in k or k["key"] == "" for k in listed["adminKeys"])
    for headers in (
        {},
        {"authorization": "Bearer idk_" + "x" * 43},
        {"authorization": "Basic abc"},
        {"authorization": f"Bearer {expired['key']}"},
        {"authorization": f"Bearer {revoked['key']}"},
    ):
        with httpx.Client(base_url=world.stack.admin_http, timeout=10, headers=headers) as http:
            refused(http.get("/admin/v1/projects"), 401, "ADMIN_KEY_INVALID")
    with grpc.insecure_channel(world.stack.admin_grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            admin_pb2_grpc.AdminStub(channel).ListProjects(
                apb.ListProjectsRequest(),
                metadata=(("authorization", f"Bearer {revoked['key']}"),),
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_read_only_key_reads_but_never_writes(world: World) -> None:
    with world.as_key(world.key(readOnly=True)) as http:
        assert http.get(f"/admin/v1/projects/{A}/users").status_code == 200
        refused(http.post("/admin/v1/signingKeys:rotate", json={}), 403, "ADMIN_KEY_READ_ONLY")
        user = world.anonymous()["userId"]
        refused(
            http.post(f"/admin/v1/projects/{A}/users/{user}:revokeSessions", json={}),
            403,
            "ADMIN_KEY_READ_ONLY",
        )


def test_a_key_scoped_to_a_sees_nothing_of_b(world: World) -> None:
    b_user = world.anonymous(B)
    nowhere = str(uuid.uuid4())
    with world.as_key(world.key(projects=[A])) as http:
        listed = http.get("/admin/v1/projects").json()["projects"]
        assert [p["projectId"] for p in listed] == [A]
        for project in (B, nowhere):
            user = f"/admin/v1/projects/{project}/users/{b_user['userId']}"
            for method, path in (
                ("GET", f"/admin/v1/projects/{project}"),
                ("PATCH", f"/admin/v1/projects/{project}"),
                ("DELETE", f"/admin/v1/projects/{project}"),
                ("GET", f"/admin/v1/projects/{project}/users"),
                (
                    "GET",
                    f"/admin/v1/projects/{project}/users:lookup?externalId={b_user['externalId']}",
                ),
                ("GET", user),
                ("GET", f"{user}/devices"),
                ("GET", f"{user}/logins"),
                ("GET", f"{user}:export"),
                ("POST", f"{user}:revokeSessions"),
                ("DELETE", f"{user}/devices/{b_user['deviceId']}"),
                ("DELETE", user),
                ("GET", f"/admin/v1/projects/{project}/auditEvents"),
                ("GET", f"/admin/v1/projects/{project}/webhooks"),
                ("POST", f"/admin/v1/projects/{project}/webhooks"),
            ):
                body = {} if method in ("POST", "PATCH") else None
                reply = http.request(method, path, json=body)
                refused(reply, 403, "ADMIN_KEY_OUT_OF_SCOPE")
        # Every-project calls are not for it either.
        for method, path in (
            ("GET", "/admin/v1/adminKeys"),
            ("POST", "/admin/v1/adminKeys"),
            ("GET", "/admin/v1/signingKeys"),
            ("POST", "/admin/v1/projects"),
        ):
            body = {} if method == "POST" else None
            refused(http.request(method, path, json=body), 403, "ADMIN_KEY_OUT_OF_SCOPE")
        # B's user named under A: no such user in A.
        refused(http.get(f"/admin/v1/projects/{A}/users/{b_user['userId']}"), 404, "USER_NOT_FOUND")
        refused(
            http.get(
                f"/admin/v1/projects/{A}/users:lookup", params={"externalId": b_user["externalId"]}
            ),
            404,
            "USER_NOT_FOUND",
        )
    # Nothing of B was touched.
    assert world.verify(B, b_user)["valid"] is True


# -------------------------------------------------------------- projects
def test_project_settings_are_checked_as_the_yaml_file_is(world: World) -> None:
    providers = {"oidc": {"issuer": "http://idp.example.com/"}}
    bad = {"displayName": "x", "providers": providers}
    body = refused(
        world.admin.post("/admin/v1/projects", json=bad), 400, "INVALID_PROJECT_SETTINGS"
    )
    with pytest.raises(config_mod.ConfigError) as from_yaml:
        config_mod.parse({"projects": [{"id": A, "providers": providers}]}, Registry.discover())
    # The same message, where the YAML's names its place in the file.
    assert body["message"] == "project" + str(from_yaml.value).partition("projects[0]")[2]
    # A name longer than the column is refused the same way on every store.
    long_name = {"displayName": "x" * 201, "providers": {"anonymous": {}}}
    body = refused(
        world.admin.post("/admin/v1/projects", json=long_name), 400, "INVALID_PROJECT_SETTINGS"
    )
    assert "at most 200 characters" in body["message"]


def test_projects_crud_and_soft_delete_refuses_public_calls_at_once(world: World) -> None:
    made = world.admin.post(
        "/admin/v1/projects", json={"displayName": "made", "providers": {"anonymous": {}}}
    )
    assert made.status_code == 200, made.text
    project = made.json()
    pid, name = project["projectId"], project["name"]
    assert name == f"projects/{pid}" and project.get("deleteTime") is None
    refused(
        world.admin.post(
            "/admin/v1/projects", params={"projectId": pid}, json={"providers": {"anonymous": {}}}
        ),
        409,
        "PROJECT_ALREADY_EXISTS",
    )
    assert world.anonymous(pid)["userId"]
    updated = world.admin.patch(
        f"/admin/v1/{name}",
        params={"updateMask": "displayName,auditRetentionDays"},
        json={"displayName": "renamed", "auditRetentionDays": 30, "providers": {"noLogin": {}}},
    ).json()
    assert updated["displayName"] == "renamed" and updated["auditRetentionDays"] == 30
    assert set(updated["providers"]) == {"anonymous"}  # not in the mask
    assert pid in [p["projectId"] for p in world.admin.get("/admin/v1/projects").json()["projects"]]

    deleted = world.admin.delete(f"/admin/v1/{name}").json()
    assert deleted["deleteTime"] and deleted["purgeTime"]
    body = {"projectId": pid, "provider": "anonymous", "data": {"deviceId": str(uuid.uuid4())}}
    refused(world.public.put("/v1/user/login", json=body), 404, "PROJECT_NOT_FOUND")
    listed = [p["projectId"] for p in world.admin.get("/admin/v1/projects").json()["projects"]]
    assert pid not in listed
    shown = world.admin.get("/admin/v1/projects", params={"showDeleted": True}).json()["projects"]
    assert pid in [p["projectId"] for p in shown]
    refused(world.admin.delete(f"/admin/v1/{name}"), 404, "PROJECT_NOT_FOUND")
    assert world.admin.post(f"/admin/v1/{name}:undelete", json={}).json().get("deleteTime") is None
    assert world.public.put("/v1/user/login", json=body).status_code == 200


def test_a_deleted_project_is_purged_after_its_grace_and_nothing_else(
    world: World, db_url: str
) -> None:
    made = world.admin.post("/admin/v1/projects", json={"providers": {"anonymous": {}}})
    pid = made.json()["projectId"]
    world.anonymous(pid)
    kept = count_rows(db_url, "users") - 1
    assert world.admin.delete(f"/admin/v1/projects/{pid}").status_code == 200
    late = int(time.time()) - admin_store.PURGE_GRACE_SECONDS - 1
    in_store(
        db_url,
        lambda c: c.execute(
            sa.text("UPDATE projects SET deleted_at = :t WHERE project_id = :p"),
            {"t": late, "p": pid},
        ),
        write=True,
    )

    async def purge() -> int:
        database = open_database(db_url, pool_size=1)
        try:
            # What each server's housekeeping runs every 10 minutes.
            return await admin_store.purge_deleted_projects(
                database, deleted_before=int(time.time()) - admin_store.PURGE_GRACE_SECONDS
            )
        finally:
            await database.dispose()

    assert asyncio.run(purge()) == 1
    refused(world.admin.get(f"/admin/v1/projects/{pid}"), 404, "PROJECT_NOT_FOUND")
    assert count_rows(db_url, "users") == kept
    assert world.admin.get(f"/admin/v1/projects/{A}").status_code == 200


# ----------------------------------------------------------------- users
def test_users_list_newest_first_in_pages_stable_under_inserts(world: World) -> None:
    pid = world.admin.post("/admin/v1/projects", json={"providers": {"anonymous": {}}}).json()[
        "projectId"
    ]
    made = [world.anonymous(pid)["userId"] for _ in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = world.admin.get(
            f"/admin/v1/projects/{pid}/users", params={"pageSize": 2, "pageToken": token}
        ).json()
        seen += [u["userId"] for u in page["users"]]
        if len(seen) == 2:
            # Keyset pages: an insert between pages never makes a page skip
            # or repeat a user (the new one sorts first, or just after the
            # cursor when it shares its second).
            newer = world.anonymous(pid)["userId"]
        token = page["nextPageToken"]
        if not token:
            break
    assert len(seen) == len(set(seen)) and set(made) <= set(seen) <= {*made, newer}
    users = world.admin.get(f"/admin/v1/projects/{pid}/users").json()["users"]
    times = [u["createTime"] for u in users]
    assert times == sorted(times, reverse=True) and len(users) == 6
    refused(
        world.admin.get(f"/admin/v1/projects/{A}/users", params={"pageToken": token or "bm9wZQ"}),
        400,
        "INVALID_PAGE_TOKEN",
    )
    only = world.admin.get(
        f"/admin/v1/projects/{pid}/users", params={"filter": 'provider = "anonymous"'}
    )
    assert only.status_code == 200, only.text
    only = only.json()["users"]
    assert len(only) == 6
    refused(
        world.admin.get(f"/admin/v1/projects/{pid}/users", params={"filter": "nope = 1"}),
        400,
        "INVALID_FILTER",
    )


def test_lookup_by_external_id_and_by_provider_subject(world: World) -> None:
    session = world.anonymous()
    by_external = world.admin.get(
        f"/admin/v1/projects/{A}/users:lookup", params={"externalId": session["externalId"]}
    ).json()
    by_subject = world.admin.get(
        f"/admin/v1/projects/{A}/users:lookup",
        params={"provider": "anonymous", "subject": session["deviceId"]},
    ).json()
    assert by_external == by_subject
    assert by_external["userId"] == session["userId"]
    got = world.admin.get(f"/admin/v1/projects/{A}/users/{session['userId']}").json()
    assert got == by_external
    refused(world.admin.get(f"/admin/v1/projects/{A}/users:lookup"), 400, "MISSING_FIELD")


def test_revoke_sessions_refuses_every_earlier_session_for_every_provider(world: World) -> None:
    session = world.anonymous()
    sub = f"rev-{uuid.uuid4()}"
    token = world.issuer.mint(sub=sub, aud=AUD)
    assert world.oidc_check(token, str(uuid.uuid4())).status_code == 200
    oidc_user = world.admin.get(
        f"/admin/v1/projects/{A}/users:lookup",
        params={"provider": "oidc", "subject": sub},
    ).json()["userId"]
    sleep_past(max(session["timeStamp"], int(time.time())))
    for user in (session["userId"], oidc_user):
        revoked = world.admin.post(f"/admin/v1/projects/{A}/users/{user}:revokeSessions", json={})
        assert revoked.json()["sessionsValidAfter"], revoked.text
    assert world.verify(A, session) == {"valid": False, "reason": "SESSION_ENDED"}
    refused(world.oidc_check(token, str(uuid.uuid4())), 401, "TOKEN_REVOKED")
    # A new sign-in is a new session.
    body = {"projectId": A, "provider": "anonymous", "data": {"deviceId": session["deviceId"]}}
    fresh = world.public.put("/v1/user/login", json=body).json()["data"]
    assert world.verify(A, fresh)["valid"] is True


def _device_sessions(db_url: str, user_id: str) -> dict[str, dict[str, Any]]:
    def read(conn: sa.Connection) -> dict[str, dict[str, Any]]:
        rows = conn.execute(
            sa.text("SELECT device_id, time_stamp, signature FROM devices WHERE user_id = :u"),
            {"u": user_id},
        )
        return {
            r.device_id: {
                "userId": user_id,
                "deviceId": r.device_id,
                "timeStamp": r.time_stamp,
                "signature": r.signature,
            }
            for r in rows
        }

    return in_store(db_url, read)


def _oidc_user(world: World, devices: int) -> tuple[str, str, list[str]]:
    sub = f"dev-{uuid.uuid4()}"
    token = world.issuer.mint(sub=sub, aud=AUD)
    ids = [str(uuid.uuid4()) for _ in range(devices)]
    for device in ids:
        assert world.oidc_check(token, device).status_code == 200
    user = world.admin.get(
        f"/admin/v1/projects/{A}/users:lookup", params={"provider": "oidc", "subject": sub}
    ).json()["userId"]
    return user, token, ids


def test_signing_out_one_device_keeps_the_other(world: World, db_url: str) -> None:
    user, _token, (gone, kept) = _oidc_user(world, 2)
    sessions = _device_sessions(db_url, user)
    assert all(world.verify(A, s)["valid"] for s in sessions.values())
    listed = world.admin.get(f"/admin/v1/projects/{A}/users/{user}/devices").json()["devices"]
    assert {d["deviceId"] for d in listed} == {gone, kept}
    sleep_past(max(s["timeStamp"] for s in sessions.values()))
    reply = world.admin.delete(f"/admin/v1/projects/{A}/users/{user}/devices/{gone}")
    assert reply.status_code == 200, reply.text
    assert world.verify(A, sessions[gone]) == {"valid": False, "reason": "SESSION_ENDED"}
    assert world.verify(A, sessions[kept])["valid"] is True
    listed = world.admin.get(f"/admin/v1/projects/{A}/users/{user}/devices").json()["devices"]
    assert [d["deviceId"] for d in listed] == [kept]
    refused(
        world.admin.delete(f"/admin/v1/projects/{A}/users/{user}/devices/{gone}"),
        404,
        "DEVICE_NOT_FOUND",
    )
    logins = world.admin.get(f"/admin/v1/projects/{A}/users/{user}/logins").json()["logins"]
    assert {entry["deviceId"] for entry in logins} == {gone, kept}
    # Page by page, the same logins, each once; a token is bound to its list.
    path = f"/admin/v1/projects/{A}/users/{user}/logins"
    first = world.admin.get(path, params={"pageSize": 1}).json()
    assert len(first["logins"]) == 1 and first["nextPageToken"]
    second = world.admin.get(
        path, params={"pageSize": 1, "pageToken": first["nextPageToken"]}
    ).json()
    assert first["logins"] + second["logins"] == logins and not second.get("nextPageToken")
    refused(
        world.admin.get(
            f"/admin/v1/projects/{A}/users/{user}/devices",
            params={"pageToken": first["nextPageToken"]},
        ),
        400,
        "INVALID_PAGE_TOKEN",
    )


def test_erasure_removes_the_users_rows_and_nothing_else(world: World, db_url: str) -> None:
    user, _token, _ = _oidc_user(world, 2)
    other = world.anonymous()
    before = {t: count_rows(db_url, t) for t in ("users", "devices", "logins")}
    path = f"/admin/v1/projects/{A}/users/{user}"
    refused(
        world.admin.delete(path, params={"deleteUpstream": True}),
        400,
        "UPSTREAM_DELETE_NOT_SUPPORTED",
    )
    assert {t: count_rows(db_url, t) for t in before} == before
    assert world.admin.delete(path).status_code == 200
    after = {t: count_rows(db_url, t) for t in before}
    assert after == {
        "users": before["users"] - 1,
        "devices": before["devices"] - 2,
        "logins": before["logins"] - 2,
    }
    left = in_store(
        db_url,
        lambda c: sum(
            c.execute(
                sa.text(f"SELECT count(*) FROM {t} WHERE user_id = :u"), {"u": user}
            ).scalar_one()
            for t in ("users", "devices", "logins")
        ),
    )
    assert left == 0
    refused(world.admin.get(path), 404, "USER_NOT_FOUND")
    refused(world.admin.delete(path), 404, "USER_NOT_FOUND")
    assert world.verify(A, other)["valid"] is True


def test_export_is_one_document_with_everything_but_credentials(world: World, db_url: str) -> None:
    user, _token, devices = _oidc_user(world, 2)
    doc = world.admin.get(f"/admin/v1/projects/{A}/users/{user}:export").json()
    assert doc["user"]["userId"] == user and doc["user"]["provider"] == "oidc"
    assert {d["deviceId"] for d in doc["devices"]} == set(devices)
    assert len(doc["logins"]) == 2 and doc["exportTime"]
    text = str(doc)
    for session in _device_sessions(db_url, user).values():
        assert session["signature"] not in text


# ------------------------------------------------------ webhooks, audit
def test_webhooks_secret_once_update_enable_delete(world: World) -> None:
    made = world.admin.post(
        f"/admin/v1/projects/{A}/webhooks",
        json={"uri": "https://hooks.example.com/in", "eventTypes": ["user.login", "user.*"]},
    )
    assert made.status_code == 200, made.text
    hook = made.json()
    assert hook["secret"].startswith("whsec_")
    got = world.admin.get(f"/admin/v1/{hook['name']}").json()
    assert got["secret"] == "" and got.get("disableTime") is None
    assert [
        h["name"] for h in world.admin.get(f"/admin/v1/projects/{A}/webhooks").json()["webhooks"]
    ] == [hook["name"]]
    changed = world.admin.patch(
        f"/admin/v1/{hook['name']}", params={"updateMask": "eventTypes"}, json={"eventTypes": ["*"]}
    ).json()
    assert changed["eventTypes"] == ["*"] and changed["uri"] == "https://hooks.example.com/in"
    assert world.admin.post(f"/admin/v1/{hook['name']}:enable", json={}).status_code == 200
    refused(
        world.admin.post(
            f"/admin/v1/projects/{A}/webhooks",
            json={"uri": "http://example.com/", "eventTypes": ["*"]},
        ),
        400,
        "INVALID_WEBHOOK_URL",
    )
    refused(
        world.admin.get(f"/admin/v1/projects/{B}/webhooks/{hook['name'].rpartition('/')[2]}"),
        404,
        "WEBHOOK_NOT_FOUND",
    )
    assert world.admin.delete(f"/admin/v1/{hook['name']}").status_code == 200
    refused(world.admin.get(f"/admin/v1/{hook['name']}"), 404, "WEBHOOK_NOT_FOUND")


def test_audit_events_filter(world: World) -> None:
    path = f"/admin/v1/projects/{A}/auditEvents"
    ok = world.admin.get(
        path,
        params={"filter": 'type = "user.login" AND event_time >= "2026-01-01T00:00:00Z"'},
    )
    assert ok.status_code == 200, ok.text
    for bad in ('event_time >= "yesterday"', "type > 3", "colour = red"):
        refused(world.admin.get(path, params={"filter": bad}), 400, "INVALID_FILTER")


# ---------------------------------------------------------- signing keys
def test_signing_key_rotate_and_list(world: World) -> None:
    rotated = world.admin.post("/admin/v1/signingKeys:rotate", json={}).json()
    kid = rotated["signingKey"]["kid"]
    assert rotated["retiredCount"] >= 1
    keys = world.admin.get("/admin/v1/signingKeys").json()["signingKeys"]
    assert keys[0]["kid"] == kid and keys[0].get("retireTime") is None
    assert all(k.get("retireTime") and k["published"] for k in keys[1:])
    jwks = {k["kid"] for k in world.public.get("/.well-known/jwks.json").json()["keys"]}
    assert {k["kid"] for k in keys if k["published"]} <= jwks | {kid}


# ------------------------------------------------------------------ edge
def test_the_public_edge_never_routes_the_admin_api(world: World) -> None:
    headers = {"authorization": f"Bearer {world.root}"}
    body = refused(world.public.get("/admin/v1/projects", headers=headers), 404, "UNKNOWN_PATH")
    assert body["code"] == 5
    with grpc.insecure_channel(world.stack.edge_grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            admin_pb2_grpc.AdminStub(channel).ListProjects(
                apb.ListProjectsRequest(), metadata=tuple(headers.items()), timeout=10
            )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_admin_edge_never_routes_the_public_api(world: World) -> None:
    with httpx.Client(base_url=world.stack.admin_http, timeout=10) as http:
        refused(http.get("/v1/jwks"), 404, "UNKNOWN_PATH")
        refused(http.get("/healthz"), 404, "UNKNOWN_PATH")
    with grpc.insecure_channel(world.stack.admin_grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            identify_pb2_grpc.IdentifyStub(channel).GetJwks(pb.GetJwksRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Natively over gRPC, the admin API itself answers there.
    with grpc.insecure_channel(world.stack.admin_grpc_target) as channel:
        reply = admin_pb2_grpc.AdminStub(channel).GetProject(
            apb.GetProjectRequest(name=f"projects/{A}"),
            metadata=(("authorization", f"Bearer {world.root}"),),
            timeout=10,
        )
    assert reply.display_name == "a"
