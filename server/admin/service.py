"""identify.admin.v1.Admin. Every RPC is the same three steps: the admin
key is authenticated (UNAUTHENTICATED ADMIN_KEY_INVALID), the call's target
is checked against the key's scope (PERMISSION_DENIED ADMIN_KEY_OUT_OF_SCOPE
or ADMIN_KEY_READ_ONLY), then the work runs. The scope is checked on the
project named in the request, before anything is read, so a key scoped to
project A gets the same refusal for B's users whether they exist or not.
Every failure becomes a status in server/errors.py, as on the public API."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2, timestamp_pb2
from identify.admin.v1 import admin_pb2 as pb
from identify.admin.v1 import admin_pb2_grpc

from providers.kit.inputs import canonical_uuid, id_arg, text_arg
from providers.registry import Registry
from providers.values import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    User,
)
from server import errors, tokens
from server.admin import audit, events, keys, names, pages, store
from server.admin.audit import AuditEvent
from server.clock import now
from server.config import MAX_ANONYMOUS_RETENTION_DAYS, ConfigError, parse_project
from server.detached import Detached
from server.events import audit as trail
from server.events import types, webhooks
from server.interceptors import caller_headers
from server.keys import rotate_signing_key
from server.projects import ProjectCache
from server.requestctx import call_var, request_id
from server.store.db import Database
from server.store.hot import HotRows
from server.tokens import PROFILE_TOKEN_TTL, RETIRED_KEY_GRACE

R = TypeVar("R")
Ctx = grpc.aio.ServicerContext[Any, Any]
SERVICE = pb.DESCRIPTOR.services_by_name["Admin"].full_name
MAX_RETENTION_DAYS = 3650
_EXTERNAL_ID = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------
# Who calls, and what about
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What a call reaches: one project; everything (admin keys, signing
    keys, a new project: every-project keys only); or neither (listing
    projects: any key, and it sees its own)."""

    project_id: str | None = None
    service: bool = False


LISTED = Target()
SERVICE_WIDE = Target(service=True)


@dataclass(frozen=True)
class Caller:
    key: store.AdminKeyRecord
    client_ip: str

    @property
    def actor(self) -> str:
        return trail.admin_actor(self.key.key_id)

    def event(
        self, project_id: str | None, type_: str, *, user_id: str | None = None, **data: Any
    ) -> AuditEvent:
        return AuditEvent(
            project_id,
            type_,
            self.actor,
            user_id=user_id,
            client_ip=self.client_ip,
            data=data,
        )


def _metadata(context: Ctx) -> tuple[str | None, str]:
    """The bearer key (None when absent or not a Bearer) and the client IP."""
    key: str | None = None
    authorization, client_ip = caller_headers(context)
    if authorization is not None:
        scheme, _, rest = authorization.strip().partition(" ")
        key = rest.strip() if scheme.lower() == "bearer" else None
    if not client_ip:
        kind, _, address = context.peer().partition(":")
        client_ip = address.rpartition(":")[0].strip("[]") if kind in ("ipv4", "ipv6") else kind
    return key, client_ip


# --------------------------------------------------------------------------
# Values to messages
# --------------------------------------------------------------------------
def _ts(seconds: int | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    return timestamp_pb2.Timestamp(seconds=int(seconds))


def _struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(dict(value))
    return out


def _plain(value: Any) -> Any:
    """A Struct's JSON as the YAML file would give it: protobuf has only
    doubles, so whole numbers come back as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _from_struct(message: struct_pb2.Struct) -> dict[str, Any]:
    plain = _plain(json_format.MessageToDict(message))
    assert isinstance(plain, dict)
    return plain


def project_message(record: store.ProjectRecord) -> pb.Project:
    return pb.Project(
        name=f"projects/{record.project_id}",
        project_id=record.project_id,
        display_name=record.name,
        providers=_struct(record.providers),
        limits=_struct(record.limits),
        audit_retention_days=record.audit_retention_days or 0,
        anonymous_retention_days=record.anonymous_retention_days or 0,
        create_time=_ts(record.created_at),
        update_time=_ts(record.updated_at),
        delete_time=_ts(record.deleted_at),
        purge_time=_ts(
            record.deleted_at + store.PURGE_GRACE_SECONDS if record.deleted_at else None
        ),
    )


def user_message(record: store.UserRecord) -> pb.User:
    user = record.user
    return pb.User(
        name=f"projects/{user.project_id}/users/{user.user_id}",
        user_id=user.user_id,
        provider=user.provider,
        subject=user.subject,
        external_id=user.external_id,
        username=user.username or "",
        attributes=_struct(user.attributes),
        app_profile=_struct(user.app_profile),
        create_time=_ts(user.created_at),
        update_time=_ts(user.updated_at),
        sessions_valid_after=_ts(user.valid_after or None),
        identities=[
            pb.Identity(
                provider=i.provider,
                subject=i.subject,
                external_id=i.external_id,
                link_time=_ts(i.linked_at),
                attributes=_struct(i.attributes),
            )
            for i in record.identities
        ],
        merged_into=record.merged_into or "",
        merge_time=_ts(record.merged_at),
    )


def device_message(parent: names.UserName, d: store.DeviceRecord) -> pb.Device:
    return pb.Device(
        name=f"{parent}/devices/{d.device_id}",
        device_id=d.device_id,
        sign_up_time=_ts(d.sign_up),
        last_login_time=_ts(d.last_login),
        session_time=_ts(d.time_stamp),
        sign_out_time=_ts(d.valid_after or None),
    )


def login_message(parent: names.UserName, login: store.LoginRecord) -> pb.Login:
    return pb.Login(
        name=f"{parent}/logins/{login.login_id}",
        device_id=login.device_id,
        login_time=_ts(login.at),
    )


def audit_message(project_id: str, e: trail.AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        name=f"projects/{project_id}/auditEvents/{e.event_id}",
        type=e.type,
        event_time=_ts(e.at),
        user_id=e.user_id or "",
        actor=e.actor,
        provider=e.provider or "",
        device_id=e.device_id or "",
        client_ip=e.client_ip or "",
        reason=e.reason or "",
        data=_struct(e.data),
    )


def webhook_message(project_id: str, w: webhooks.Endpoint, secret: str = "") -> pb.Webhook:
    return pb.Webhook(
        name=f"projects/{project_id}/webhooks/{w.endpoint_id}",
        uri=w.url,
        event_types=list(w.event_types),
        secret=secret,
        create_time=_ts(w.created_at),
        update_time=_ts(w.updated_at),
        disable_time=_ts(w.disabled_at),
        disabled_reason=w.disabled_reason or "",
    )


def admin_key_message(k: store.AdminKeyRecord, key: str = "") -> pb.AdminKey:
    return pb.AdminKey(
        name=f"adminKeys/{k.key_id}",
        display_name=k.name,
        projects=list(k.projects or ()),
        read_only=k.read_only,
        expire_time=_ts(k.expires_at),
        create_time=_ts(k.created_at),
        revoke_time=_ts(k.revoked_at),
        key=key,
    )


def signing_key_message(k: store.SigningKeyRecord, at: int) -> pb.SigningKey:
    published = k.retired_at is None or k.retired_at + PROFILE_TOKEN_TTL + RETIRED_KEY_GRACE > at
    return pb.SigningKey(
        name=f"signingKeys/{k.kid}",
        kid=k.kid,
        algorithm=k.algorithm,
        create_time=_ts(k.created_at),
        retire_time=_ts(k.retired_at),
        published=published,
    )


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------
def _not_found(reason: str, what: str, name: str) -> NotFound:
    return NotFound(reason, f"no such {what}", metadata={"name": name[:512]})


def _no_upstream_delete(why: str) -> FailedPrecondition:
    # 400 FAILED_PRECONDITION, not the provider's INVALID_ARGUMENT: the
    # request is fine, the user's provider cannot do it (anonymous, social
    # and OIDC accounts have nothing upstream to delete through an API).
    return FailedPrecondition(
        "UPSTREAM_DELETE_NOT_SUPPORTED",
        f"{why}; nothing was erased: delete the account upstream, then call again"
        " without delete_upstream",
    )


def _token(cursor: Sequence[Any] | None, *scope: str) -> str:
    return pages.encode_token(cursor, *scope) if cursor is not None else ""


def _mask(paths: Sequence[str], allowed: Sequence[str]) -> list[str]:
    unknown = [p for p in paths if p not in allowed]
    if unknown:
        raise InvalidArgument(
            "INVALID_UPDATE_MASK",
            f"update_mask may name {', '.join(allowed)}; not {', '.join(unknown)}",
            metadata={"field": "updateMask"},
        )
    return list(paths)


def _retention(days: int) -> int | None:
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise InvalidArgument(
            "INVALID_VALUE",
            f"audit_retention_days must be 0 (the default, 90) to {MAX_RETENTION_DAYS}",
            metadata={"field": "auditRetentionDays"},
        )
    return days or None


def _anonymous_retention(days: int) -> int | None:
    # 0 is proto3's unset: it can only mean the YAML file's absent key.
    if not 0 <= days <= MAX_ANONYMOUS_RETENTION_DAYS:
        raise InvalidArgument(
            "INVALID_VALUE",
            f"anonymous_retention_days must be 0 (keep forever) to {MAX_ANONYMOUS_RETENTION_DAYS}",
            metadata={"field": "anonymousRetentionDays"},
        )
    return days or None


def _event_time(value: str) -> str:
    stamp = timestamp_pb2.Timestamp()
    try:
        stamp.FromJsonString(value)
    except ValueError:
        raise InvalidArgument(
            "INVALID_FILTER",
            "filter: event_time takes an RFC 3339 time such as 2026-01-01T00:00:00Z",
            metadata={"field": "filter"},
        ) from None
    return str(stamp.seconds)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        database: Database,
        registry: Registry,
        projects: ProjectCache,
        hot: HotRows | None = None,
    ) -> None:
        self._database = database
        self._registry = registry
        self._projects = projects
        # This process's copies of hot users' rows: dropped for a user we
        # change (other processes see the change within their ttl).
        self._hot = hot if hot is not None else HotRows(0)
        self._detached = Detached()

    # ------------------------------------------------------------ plumbing
    async def _run(
        self,
        context: Ctx,
        *,
        write: bool,
        target: Callable[[], Target],
        work: Callable[[Caller], Awaitable[R]],
    ) -> R:
        async def guarded() -> R:
            caller = await self._caller(context, write=write, target=target)
            return await work(caller)

        try:
            return await self._detached.run(guarded())
        except Exception as exc:
            await context.abort_with_status(errors.to_status(exc, request_id()))
        raise AssertionError("unreachable: abort_with_status raises")

    async def _caller(self, context: Ctx, *, write: bool, target: Callable[[], Target]) -> Caller:
        key, client_ip = _metadata(context)
        record = await keys.lookup(self._database, key)
        if record is None or not record.usable(now()):
            await self._refused(record, target, client_ip, "ADMIN_KEY_INVALID")
            raise keys.invalid_key()
        reached = target()
        caller = Caller(record, client_ip)
        if reached.service and record.projects is not None:
            await self._refused(record, target, client_ip, "ADMIN_KEY_OUT_OF_SCOPE")
            raise PermissionDenied(
                "ADMIN_KEY_OUT_OF_SCOPE",
                "this call reaches every project; the key is scoped to some",
            )
        if reached.project_id is not None and not record.reaches(reached.project_id):
            await self._refused(record, target, client_ip, "ADMIN_KEY_OUT_OF_SCOPE")
            raise PermissionDenied("ADMIN_KEY_OUT_OF_SCOPE", "the key does not reach this project")
        if write and record.read_only:
            await self._refused(record, target, client_ip, "ADMIN_KEY_READ_ONLY")
            raise PermissionDenied("ADMIN_KEY_READ_ONLY", "the key is read-only")
        return caller

    async def _refused(
        self,
        record: store.AdminKeyRecord | None,
        target: Callable[[], Target],
        client_ip: str,
        reason: str,
    ) -> None:
        try:
            project_id = target().project_id
        except InvalidArgument:
            project_id = None
        await audit.record_refusal(
            self._database,
            AuditEvent(
                project_id,
                types.ADMIN_KEY_REFUSED,
                trail.admin_actor(record.key_id if record else "unknown"),
                client_ip=client_ip,
                reason=reason,
            ),
        )

    async def _live_project(self, project_id: str, name: str) -> store.ProjectRecord:
        record = await store.get_project(self._database, project_id)
        if record is None:
            raise _not_found("PROJECT_NOT_FOUND", "project", name)
        return record

    async def _user_page(
        self, request: Any, kind: str, fetch: Callable[..., Awaitable[store.Page]]
    ) -> tuple[names.UserName, store.Page, str]:
        """One page of a user's `kind` (devices, logins) for a List request
        naming the user as its parent: the user, the page, the next token."""
        user = names.user(request.parent, "parent")
        await self._user(user)
        scope = (str(user), kind)
        page = await fetch(
            self._database,
            user.project_id,
            user.user_id,
            limit=pages.page_size(request.page_size),
            cursor=pages.decode_token(request.page_token, *scope),
        )
        return user, page, _token(page.cursor, *scope)

    async def _user(self, user: names.UserName) -> store.UserRecord:
        found = await store.get_user(self._database, user.project_id, user.user_id)
        if found is None:
            raise _not_found("USER_NOT_FOUND", "user", str(user))
        return found

    # ------------------------------------------------------------ projects
    def _settings(self, project_id: str, name: str, providers: Any, limits: Any) -> dict[str, Any]:
        """THE check of the YAML file (server/config.py), same messages."""
        entry = {"id": project_id, "name": name, "providers": providers, "limits": limits}
        try:
            checked = parse_project(entry, self._registry, where="project")
        except ConfigError as exc:
            raise InvalidArgument(
                "INVALID_PROJECT_SETTINGS", str(exc), metadata={"field": "project"}
            ) from None
        return {"name": checked.name, "providers": checked.providers, "limits": checked.limits}

    async def GetProject(self, request: pb.GetProjectRequest, context: Ctx) -> pb.Project:
        async def work(_caller: Caller) -> pb.Project:
            pid = names.project(request.name)
            return project_message(await self._live_project(pid, request.name))

        return await self._run(
            context, write=False, target=lambda: Target(names.project(request.name)), work=work
        )

    async def ListProjects(
        self, request: pb.ListProjectsRequest, context: Ctx
    ) -> pb.ListProjectsResponse:
        async def work(caller: Caller) -> pb.ListProjectsResponse:
            scope = ("projects", str(request.show_deleted))
            page = await store.list_projects(
                self._database,
                only=caller.key.projects,
                show_deleted=request.show_deleted,
                limit=pages.page_size(request.page_size),
                cursor=pages.decode_token(request.page_token, *scope),
            )
            return pb.ListProjectsResponse(
                projects=[project_message(p) for p in page.rows],
                next_page_token=_token(page.cursor, *scope),
            )

        return await self._run(context, write=False, target=lambda: LISTED, work=work)

    async def CreateProject(self, request: pb.CreateProjectRequest, context: Ctx) -> pb.Project:
        async def work(caller: Caller) -> pb.Project:
            pid = names.project_id(request.project_id) if request.project_id else str(uuid.uuid4())
            given = request.project
            settings = self._settings(
                pid,
                given.display_name,
                _from_struct(given.providers) if given.HasField("providers") else None,
                _from_struct(given.limits) if given.HasField("limits") else None,
            )
            created = await store.create_project(
                self._database,
                project_id=pid,
                name=settings["name"],
                providers_settings=settings["providers"],
                limits=settings["limits"],
                audit_retention_days=_retention(given.audit_retention_days),
                secret=tokens.new_project_secret(),
                now=now(),
                event=caller.event(pid, types.ADMIN_PROJECT_CREATED),
                anonymous_retention_days=_anonymous_retention(given.anonymous_retention_days),
            )
            if created is None:
                raise AlreadyExists(
                    "PROJECT_ALREADY_EXISTS",
                    "a project with this id exists",
                    metadata={"projectId": pid},
                )
            return project_message(created)

        return await self._run(context, write=True, target=lambda: SERVICE_WIDE, work=work)

    async def UpdateProject(self, request: pb.UpdateProjectRequest, context: Ctx) -> pb.Project:
        allowed = (
            "display_name",
            "providers",
            "limits",
            "audit_retention_days",
            "anonymous_retention_days",
        )

        async def work(caller: Caller) -> pb.Project:
            given = request.project
            pid = names.project(given.name, "project.name")
            if request.HasField("update_mask"):
                paths = _mask(request.update_mask.paths, allowed)
            else:
                paths = [
                    path
                    for path, present in (
                        ("display_name", bool(given.display_name)),
                        ("providers", given.HasField("providers")),
                        ("limits", given.HasField("limits")),
                        ("audit_retention_days", given.audit_retention_days != 0),
                        ("anonymous_retention_days", given.anonymous_retention_days != 0),
                    )
                    if present
                ]
            retention = _retention(given.audit_retention_days)
            anonymous_retention = _anonymous_retention(given.anonymous_retention_days)

            def check(current: store.ProjectRecord) -> Mapping[str, Any]:
                settings = self._settings(
                    pid,
                    given.display_name if "display_name" in paths else current.name,
                    _from_struct(given.providers) if "providers" in paths else current.providers,
                    (
                        (_from_struct(given.limits) if given.HasField("limits") else None)
                        if "limits" in paths
                        else current.limits
                    ),
                )
                values = {k: settings[k] for k in ("name", "providers", "limits")}
                if "audit_retention_days" in paths:
                    values["audit_retention_days"] = retention
                if "anonymous_retention_days" in paths:
                    values["anonymous_retention_days"] = anonymous_retention
                return values

            updated = await store.update_project(
                self._database,
                pid,
                check=check,
                now=now(),
                event=caller.event(pid, types.ADMIN_PROJECT_UPDATED, fields=paths),
            )
            if updated is None:
                raise _not_found("PROJECT_NOT_FOUND", "project", given.name)
            self._projects.forget(pid)
            return project_message(updated)

        return await self._run(
            context,
            write=True,
            target=lambda: Target(names.project(request.project.name, "project.name")),
            work=work,
        )

    async def DeleteProject(self, request: pb.DeleteProjectRequest, context: Ctx) -> pb.Project:
        return await self._set_deleted(request.name, context, deleted=True)

    async def UndeleteProject(self, request: pb.UndeleteProjectRequest, context: Ctx) -> pb.Project:
        return await self._set_deleted(request.name, context, deleted=False)

    async def _set_deleted(self, name: str, context: Ctx, *, deleted: bool) -> pb.Project:
        async def work(caller: Caller) -> pb.Project:
            pid = names.project(name)
            kind = types.ADMIN_PROJECT_DELETED if deleted else types.ADMIN_PROJECT_UNDELETED
            changed = await store.set_project_deleted(
                self._database, pid, deleted=deleted, now=now(), event=caller.event(pid, kind)
            )
            if changed is None:
                if not deleted and await store.get_project(self._database, pid) is not None:
                    raise FailedPrecondition(
                        "PROJECT_NOT_DELETED", "the project is not deleted", metadata={"name": name}
                    )
                raise _not_found("PROJECT_NOT_FOUND", "project", name)
            self._projects.forget(pid)
            return project_message(changed)

        return await self._run(
            context, write=True, target=lambda: Target(names.project(name)), work=work
        )

    # --------------------------------------------------------------- users
    async def GetUser(self, request: pb.GetUserRequest, context: Ctx) -> pb.User:
        async def work(_caller: Caller) -> pb.User:
            return user_message(await self._user(names.user(request.name)))

        return await self._run(
            context,
            write=False,
            target=lambda: Target(names.user(request.name).project_id),
            work=work,
        )

    async def LookupUser(self, request: pb.LookupUserRequest, context: Ctx) -> pb.User:
        async def work(_caller: Caller) -> pb.User:
            pid = names.project(request.parent, "parent")
            if request.external_id:
                if not _EXTERNAL_ID.fullmatch(request.external_id):
                    raise InvalidArgument(
                        "INVALID_EXTERNAL_ID",
                        "externalId must be 64 lowercase hex characters",
                        metadata={"field": "externalId"},
                    )
                found = await store.find_user_by_external_id(
                    self._database, pid, request.external_id
                )
            elif request.provider and request.subject:
                provider = id_arg(request.provider, "provider") or ""
                subject = text_arg(request.subject, "subject")
                if len(subject) > 512:
                    raise InvalidArgument(
                        "FIELD_TOO_LONG", "subject is too long", metadata={"field": "subject"}
                    )
                found = await store.find_user_by_subject(self._database, pid, provider, subject)
            else:
                raise InvalidArgument(
                    "MISSING_FIELD",
                    "send externalId, or provider and subject",
                    metadata={"field": "externalId"},
                )
            if found is None:
                raise _not_found("USER_NOT_FOUND", "user", request.parent)
            return user_message(found)

        return await self._run(
            context,
            write=False,
            target=lambda: Target(names.project(request.parent, "parent")),
            work=work,
        )

    async def ListUsers(self, request: pb.ListUsersRequest, context: Ctx) -> pb.ListUsersResponse:
        async def work(_caller: Caller) -> pb.ListUsersResponse:
            pid = names.project(request.parent, "parent")
            conditions = pages.parse_filter(request.filter, {"provider": ("=",)})
            await self._live_project(pid, request.parent)
            scope = (pid, request.filter)
            page = await store.list_users(
                self._database,
                pid,
                provider=conditions[0].value if conditions else None,
                limit=pages.page_size(request.page_size),
                cursor=pages.decode_token(request.page_token, *scope),
            )
            return pb.ListUsersResponse(
                users=[user_message(u) for u in page.rows],
                next_page_token=_token(page.cursor, *scope),
            )

        return await self._run(
            context,
            write=False,
            target=lambda: Target(names.project(request.parent, "parent")),
            work=work,
        )

    async def DeleteUser(self, request: pb.DeleteUserRequest, context: Ctx) -> empty_pb2.Empty:
        async def work(caller: Caller) -> empty_pb2.Empty:
            user = names.user(request.name)
            if request.delete_upstream:
                # Upstream first: had ours gone first, a failure upstream
                # would leave an account nobody can find to delete again.
                await self._delete_upstream(await self._user(user))
            erased = await store.erase_user(
                self._database,
                user.project_id,
                user.user_id,
                event=caller.event(
                    user.project_id,
                    types.USER_DELETED,
                    user_id=user.user_id,
                    upstreamDeleted=request.delete_upstream,
                ),
            )
            self._hot.written(user.project_id, user.user_id)
            if not erased:
                raise _not_found("USER_NOT_FOUND", "user", request.name)
            return empty_pb2.Empty()

        return await self._run(
            context,
            write=True,
            target=lambda: Target(names.user(request.name).project_id),
            work=work,
        )

    async def _delete_upstream(self, record: store.UserRecord) -> None:
        """The user's accounts at its providers, deleted by the project's own
        provider instances: one per identity whose provider keeps accounts
        upstream (an upgraded anonymous user's device has none). Its domain
        error (why) when one fails, or when no identity has an account to
        delete."""
        deleted, why_not = 0, "the user has no identity"
        for identity in record.identities:
            user = replace(
                record.user,
                provider=identity.provider,
                subject=identity.subject,
                external_id=identity.external_id,
            )
            unsupported = await self._delete_upstream_account(user)
            if unsupported is None:
                deleted += 1
            else:
                why_not = unsupported
        if not deleted:
            raise _no_upstream_delete(why_not)

    async def _delete_upstream_account(self, user: User) -> str | None:
        """Deletes `user`'s account at `user.provider`; why not, when that
        provider cannot."""
        loaded = await self._projects.get(user.project_id)
        if loaded is None or user.provider not in loaded.settings:
            return f"provider {user.provider} is no longer enabled in this project"
        if self._registry.get(user.provider) is None:
            return f"provider {user.provider} is not available in this build"
        provider = self._projects.provider(loaded, user.provider)
        call = call_var.get()
        if call is not None:
            # Validated names (our row, enabled here): the upstream call's
            # metrics and logs are labelled with them, as on the public API.
            call.project, call.provider = loaded.project.id, user.provider
        try:
            await provider.delete_account(user)
        except InvalidArgument as exc:
            if exc.reason != "OPERATION_NOT_SUPPORTED":
                raise
            return exc.message
        return None

    async def RevokeUserSessions(
        self, request: pb.RevokeUserSessionsRequest, context: Ctx
    ) -> pb.User:
        async def work(caller: Caller) -> pb.User:
            user = names.user(request.name)
            revoked = await store.revoke_sessions(
                self._database,
                user.project_id,
                user.user_id,
                now=now(),
                event=caller.event(
                    user.project_id, types.USER_SESSIONS_REVOKED, user_id=user.user_id
                ),
            )
            self._hot.written(user.project_id, user.user_id)
            if revoked is None:
                raise _not_found("USER_NOT_FOUND", "user", request.name)
            return user_message(revoked)

        return await self._run(
            context,
            write=True,
            target=lambda: Target(names.user(request.name).project_id),
            work=work,
        )

    async def ExportUser(
        self, request: pb.ExportUserRequest, context: Ctx
    ) -> pb.ExportUserResponse:
        async def work(_caller: Caller) -> pb.ExportUserResponse:
            user = names.user(request.name)
            found = await store.export_user(self._database, user.project_id, user.user_id)
            if found is None:
                raise _not_found("USER_NOT_FOUND", "user", request.name)
            trail = await events.user_audit_events(self._database, user.project_id, user.user_id)
            return pb.ExportUserResponse(
                user=user_message(found.user),
                devices=[device_message(user, d) for d in found.devices],
                logins=[login_message(user, login) for login in found.logins],
                audit_events=[audit_message(user.project_id, e) for e in trail],
                export_time=_ts(now()),
            )

        return await self._run(
            context,
            write=False,
            target=lambda: Target(names.user(request.name).project_id),
            work=work,
        )

    # ---------------------------------------------------- devices, logins
    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Ctx
    ) -> pb.ListDevicesResponse:
        async def work(_caller: Caller) -> pb.ListDevicesResponse:
            user, page, token = await self._user_page(request, "devices", store.list_devices)
            return pb.ListDevicesResponse(
                devices=[device_message(user, d) for d in page.rows], next_page_token=token
            )

        return await self._run(
            context,
            write=False,
            target=lambda: Target(names.user(request.parent, "parent").project_id),
            work=work,
        )

    async def DeleteDevice(self, request: pb.DeleteDeviceRequest, context: Ctx) -> empty_pb2.Empty:
        async def work(caller: Caller) -> empty_pb2.Empty:
            device = names.device(request.name)
            user = device.user
            signed_out = await store.sign_out_device(
                self._database,
                user.project_id,
                user.user_id,
                device.device_id,
                now=now(),
                event=AuditEvent(
                    user.project_id,
                    types.USER_DEVICE_SIGNED_OUT,
                    caller.actor,
                    user_id=user.user_id,
                    device_id=device.device_id,
                    client_ip=caller.client_ip,
                ),
            )
            self._hot.written(user.project_id, user.user_id)
            if not signed_out:
                raise _not_found("DEVICE_NOT_FOUND", "signed-in device", request.name)
            return empty_pb2.Empty()

        return await self._run(
            context,
            write=True,
            target=lambda: Target(names.device(request.name).user.project_id),
            work=work,
        )

    async def ListLogins(
        self, request: pb.ListLoginsRequest, context: Ctx
    ) -> pb.ListLoginsResponse:
        async def work(_caller: Caller) -> pb.ListLoginsResponse:
            user, page, token = await self._user_page(request, "logins", store.list_logins)
            return pb.ListLoginsResponse(
                logins=[login_message(user, login) for login in page.rows], next_page_token=token
            )

        return await self._run(
            context,
            write=False,
            target=lambda: Target(names.user(request.parent, "parent").project_id),
            work=work,
        )

    # --------------------------------------------------------- audit trail
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        comparisons = ("=", ">=", "<=", ">", "<")

        async def work(_caller: Caller) -> pb.ListAuditEventsResponse:
            pid = names.project(request.parent, "parent")
            conditions = [
                pages.Condition(c.field, c.op, _event_time(c.value))
                if c.field == "event_time"
                else c
                for c in pages.parse_filter(
                    request.filter,
                    {"user_id": ("=",), "type": ("=",), "event_time": comparisons},
                )
            ]
            for c in conditions:
                if c.field == "type" and c.value not in types.EVENT_TYPES:
                    raise InvalidArgument(
                        "INVALID_FILTER",
                        f"unknown event type {c.value[:64]!r} (see the README's event types)",
                        metadata={"field": "filter"},
                    )
            await self._live_project(pid, request.parent)
            scope = (pid, request.filter)
            page = await events.list_audit_events(
                self._database,
                pid,
                conditions=conditions,
                limit=pages.page_size(request.page_size),
                cursor=pages.decode_token(request.page_token, *scope),
            )
            return pb.ListAuditEventsResponse(
                audit_events=[audit_message(pid, e) for e in page.rows],
                next_page_token=_token(page.cursor, *scope),
            )

        return await self._run(
            context,
            write=False,
            target=lambda: Target(names.project(request.parent, "parent")),
            work=work,
        )

    # ------------------------------------------------------------ webhooks
    async def CreateWebhook(self, request: pb.CreateWebhookRequest, context: Ctx) -> pb.Webhook:
        async def work(caller: Caller) -> pb.Webhook:
            pid = names.project(request.parent, "parent")
            await self._live_project(pid, request.parent)
            created, secret = await webhooks.create_endpoint(
                self._database,
                pid,
                url=request.webhook.uri,
                event_types=request.webhook.event_types,
                actor=caller.actor,
            )
            return webhook_message(pid, created, secret)

        return await self._run(
            context,
            write=True,
            target=lambda: Target(names.project(request.parent, "parent")),
            work=work,
        )

    async def GetWebhook(self, request: pb.GetWebhookRequest, context: Ctx) -> pb.Webhook:
        async def work(_caller: Caller) -> pb.Webhook:
            hook = names.webhook(request.name)
            found = await webhooks.get_endpoint(self._database, hook.project_id, hook.webhook_id)
            if found is None:
                raise _not_found("WEBHOOK_NOT_FOUND", "webhook", request.name)
            return webhook_message(hook.project_id, found)

        return await self._run(
            context,
            write=False,
            target=lambda: Target(names.webhook(request.name).project_id),
            work=work,
        )

    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: Ctx
    ) -> pb.ListWebhooksResponse:
        async def work(_caller: Caller) -> pb.ListWebhooksResponse:
            pid = names.project(request.parent, "parent")
            await self._live_project(pid, request.parent)
            scope = (pid, "webhooks")
            # A project has at most webhooks.MAX_ENDPOINTS_PER_PROJECT, listed
            # oldest first: a page is a slice after the cursor's endpoint.
            size = pages.page_size(request.page_size)
            cursor = pages.decode_token(request.page_token, *scope)
            listed = await webhooks.list_endpoints(self._database, pid)
            if cursor:
                after = (int(cursor[0]), str(cursor[1]))
                listed = [w for w in listed if (w.created_at, w.endpoint_id) > after]
            shown, more = listed[:size], len(listed) > size
            last = shown[-1] if more else None
            return pb.ListWebhooksResponse(
                webhooks=[webhook_message(pid, w) for w in shown],
                next_page_token=_token(
                    [last.created_at, last.endpoint_id] if last else None, *scope
                ),
            )

        return await self._run(
            context,
            write=False,
            target=lambda: Target(names.project(request.parent, "parent")),
            work=work,
        )

    async def UpdateWebhook(self, request: pb.UpdateWebhookRequest, context: Ctx) -> pb.Webhook:
        async def work(caller: Caller) -> pb.Webhook:
            given = request.webhook
            hook = names.webhook(given.name, "webhook.name")
            if request.HasField("update_mask"):
                paths = _mask(request.update_mask.paths, ("uri", "event_types"))
            else:
                paths = [
                    p for p, v in (("uri", given.uri), ("event_types", given.event_types)) if v
                ]
            if not paths:
                raise InvalidArgument(
                    "INVALID_UPDATE_MASK",
                    "nothing to update: send uri and/or event_types",
                    metadata={"field": "updateMask"},
                )
            await self._live_project(hook.project_id, given.name)
            updated = await webhooks.update_endpoint(
                self._database,
                hook.project_id,
                hook.webhook_id,
                url=given.uri if "uri" in paths else None,
                event_types=given.event_types if "event_types" in paths else None,
                actor=caller.actor,
            )
            return webhook_message(hook.project_id, updated)

        return await self._run(
            context,
            write=True,
            target=lambda: Target(names.webhook(request.webhook.name, "webhook.name").project_id),
            work=work,
        )

    async def EnableWebhook(self, request: pb.EnableWebhookRequest, context: Ctx) -> pb.Webhook:
        async def work(caller: Caller) -> pb.Webhook:
            hook = names.webhook(request.name)
            enabled = await webhooks.enable_endpoint(
                self._database, hook.project_id, hook.webhook_id, actor=caller.actor
            )
            return webhook_message(hook.project_id, enabled)

        return await self._run(
            context,
            write=True,
            target=lambda: Target(names.webhook(request.name).project_id),
            work=work,
        )

    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: Ctx
    ) -> empty_pb2.Empty:
        async def work(caller: Caller) -> empty_pb2.Empty:
            hook = names.webhook(request.name)
            await webhooks.delete_endpoint(
                self._database, hook.project_id, hook.webhook_id, actor=caller.actor
            )
            return empty_pb2.Empty()

        return await self._run(
            context,
            write=True,
            target=lambda: Target(names.webhook(request.name).project_id),
            work=work,
        )

    # ---------------------------------------------------------- admin keys
    async def CreateAdminKey(self, request: pb.CreateAdminKeyRequest, context: Ctx) -> pb.AdminKey:
        async def work(caller: Caller) -> pb.AdminKey:
            given = request.admin_key
            name = text_arg(given.display_name.strip(), "displayName")
            if not name or len(name) > 200:
                raise InvalidArgument(
                    "INVALID_VALUE",
                    "display_name is required (at most 200 characters)",
                    metadata={"field": "displayName"},
                )
            reached = [
                canonical_uuid(p, field_name="projects", reason="INVALID_PROJECT_ID")
                for p in given.projects
            ]
            expires_at = given.expire_time.seconds if given.HasField("expire_time") else None
            if expires_at is not None and expires_at <= now():
                raise InvalidArgument(
                    "INVALID_VALUE",
                    "expire_time must be in the future",
                    metadata={"field": "expireTime"},
                )
            record, key = await keys.create(
                self._database,
                name=name,
                projects=reached or None,
                read_only=given.read_only,
                expires_at=expires_at,
                actor=caller.actor,
            )
            return admin_key_message(record, key)

        return await self._run(context, write=True, target=lambda: SERVICE_WIDE, work=work)

    async def GetAdminKey(self, request: pb.GetAdminKeyRequest, context: Ctx) -> pb.AdminKey:
        async def work(_caller: Caller) -> pb.AdminKey:
            found = await store.get_admin_key(self._database, names.admin_key(request.name))
            if found is None:
                raise _not_found("ADMIN_KEY_NOT_FOUND", "admin key", request.name)
            return admin_key_message(found)

        return await self._run(context, write=False, target=lambda: SERVICE_WIDE, work=work)

    async def ListAdminKeys(
        self, request: pb.ListAdminKeysRequest, context: Ctx
    ) -> pb.ListAdminKeysResponse:
        async def work(_caller: Caller) -> pb.ListAdminKeysResponse:
            page = await store.list_admin_keys(
                self._database,
                limit=pages.page_size(request.page_size),
                cursor=pages.decode_token(request.page_token, "adminKeys"),
            )
            return pb.ListAdminKeysResponse(
                admin_keys=[admin_key_message(k) for k in page.rows],
                next_page_token=_token(page.cursor, "adminKeys"),
            )

        return await self._run(context, write=False, target=lambda: SERVICE_WIDE, work=work)

    async def DeleteAdminKey(self, request: pb.DeleteAdminKeyRequest, context: Ctx) -> pb.AdminKey:
        async def work(caller: Caller) -> pb.AdminKey:
            key_id = names.admin_key(request.name)
            revoked = await store.revoke_admin_key(
                self._database,
                key_id,
                now=now(),
                event=caller.event(None, types.ADMIN_KEY_REVOKED, keyId=key_id),
            )
            if revoked is None:
                raise _not_found("ADMIN_KEY_NOT_FOUND", "active admin key", request.name)
            return admin_key_message(revoked)

        return await self._run(context, write=True, target=lambda: SERVICE_WIDE, work=work)

    # -------------------------------------------------------- signing keys
    async def ListSigningKeys(
        self, request: pb.ListSigningKeysRequest, context: Ctx
    ) -> pb.ListSigningKeysResponse:
        async def work(_caller: Caller) -> pb.ListSigningKeysResponse:
            page = await store.list_signing_keys(
                self._database,
                limit=pages.page_size(request.page_size),
                cursor=pages.decode_token(request.page_token, "signingKeys"),
            )
            at = now()
            return pb.ListSigningKeysResponse(
                signing_keys=[signing_key_message(k, at) for k in page.rows],
                next_page_token=_token(page.cursor, "signingKeys"),
            )

        return await self._run(context, write=False, target=lambda: SERVICE_WIDE, work=work)

    async def RotateSigningKey(
        self, request: pb.RotateSigningKeyRequest, context: Ctx
    ) -> pb.RotateSigningKeyResponse:
        async def work(caller: Caller) -> pb.RotateSigningKeyResponse:
            event = caller.event(None, types.ADMIN_SIGNING_KEY_ROTATED)
            kid, retired = await rotate_signing_key(
                self._database, also=lambda conn: audit.record(conn, event)
            )
            page = await store.list_signing_keys(self._database, limit=1, cursor=None)
            [fresh] = [k for k in page.rows if k.kid == kid] or [
                store.SigningKeyRecord(kid, "ES256", now(), None)
            ]
            return pb.RotateSigningKeyResponse(
                signing_key=signing_key_message(fresh, now()), retired_count=retired
            )

        return await self._run(context, write=True, target=lambda: SERVICE_WIDE, work=work)
