"""`identify admin ...`: one command per admin API call, over gRPC to the
admin listener (`--server`, default 127.0.0.1:8081; the key from `--key` or
IDENTIFY_ADMIN_KEY), printing readable tables or, with `--output json`, the
reply as the REST API would give it. `create-key` alone talks to the
database directly (like `identify migrate`), to make the first key."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from identify.admin.v1 import admin_pb2 as pb
from identify.admin.v1 import admin_pb2_grpc

from server.clock import now

KEY_ENV = "IDENTIFY_ADMIN_KEY"
DEFAULT_SERVER = "127.0.0.1:8081"
Stub = admin_pb2_grpc.AdminStub
Call = Callable[[argparse.Namespace, Stub], Message]

# Table columns per reply type: (header, camelCase field of the JSON form).
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "Project": [
        ("PROJECT", "projectId"),
        ("NAME", "displayName"),
        ("PROVIDERS", "providers"),
        ("CREATED", "createTime"),
        ("DELETED", "deleteTime"),
    ],
    "User": [
        ("USER", "userId"),
        ("PROVIDER", "provider"),
        ("SUBJECT", "subject"),
        ("EXTERNAL ID", "externalId"),
        ("USERNAME", "username"),
        ("CREATED", "createTime"),
        ("SESSIONS VALID AFTER", "sessionsValidAfter"),
    ],
    "Device": [
        ("DEVICE", "deviceId"),
        ("SIGN-UP", "signUpTime"),
        ("LAST LOGIN", "lastLoginTime"),
        ("SESSION", "sessionTime"),
        ("SIGNED OUT", "signOutTime"),
    ],
    "Login": [("TIME", "loginTime"), ("DEVICE", "deviceId"), ("NAME", "name")],
    "AuditEvent": [
        ("TIME", "eventTime"),
        ("TYPE", "type"),
        ("USER", "userId"),
        ("ACTOR", "actor"),
        ("REASON", "reason"),
    ],
    "Webhook": [
        ("NAME", "name"),
        ("URI", "uri"),
        ("EVENT TYPES", "eventTypes"),
        ("DISABLED", "disableTime"),
        ("WHY", "disabledReason"),
    ],
    "AdminKey": [
        ("KEY", "name"),
        ("NAME", "displayName"),
        ("PROJECTS", "projects"),
        ("READ-ONLY", "readOnly"),
        ("EXPIRES", "expireTime"),
        ("REVOKED", "revokeTime"),
    ],
    "SigningKey": [
        ("KID", "kid"),
        ("ALGORITHM", "algorithm"),
        ("CREATED", "createTime"),
        ("RETIRED", "retireTime"),
        ("PUBLISHED", "published"),
    ],
}


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(value)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    cells = [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [
        max([len(header), *(len(r[i]) for r in cells)]) for i, (header, _) in enumerate(columns)
    ]
    lines = [[h for h, _ in columns], *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def render(message: Message, output: str, *, done: str = "") -> str:
    if output == "json":
        return json.dumps(_json(message), indent=2, sort_keys=True)
    kind = message.DESCRIPTOR.name
    if kind in COLUMNS:
        return table([_json(message)], COLUMNS[kind])
    if kind == "Empty":
        return done
    if kind == "ExportUserResponse":
        return json.dumps(_json(message), indent=2, sort_keys=True)
    if kind == "RotateSigningKeyResponse":
        assert isinstance(message, pb.RotateSigningKeyResponse)
        return (
            f"new signing key {message.signing_key.kid}; {message.retired_count} retired"
            " (still published until their tokens expire)"
        )
    # A List...Response: its one repeated field of resources.
    body = _json(message)
    [(json_name, item_kind)] = [
        (f.json_name, f.message_type.name)
        for f in message.DESCRIPTOR.fields
        if f.message_type is not None and f.message_type.name in COLUMNS
    ]
    text = table(body.get(json_name, []), COLUMNS[item_kind])
    if body.get("nextPageToken"):
        text += f"\nnext page: --page-token {body['nextPageToken']}"
    return text


def _error(exc: grpc.RpcError) -> str:
    status = rpc_status.from_call(exc) if isinstance(exc, grpc.Call) else None
    reason = ""
    found: Sequence[Any] = status.details if status else ()
    for detail in found:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return f"identify admin: {code} {reason}: {details}".replace("  ", " ")


# --------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------
def _key(args: argparse.Namespace) -> str:
    key: str = args.key or os.environ.get(KEY_ENV, "")
    if not key:
        raise SystemExit(f"identify admin: an admin key is needed: --key or {KEY_ENV}")
    return key


def call_api(
    server: str, key: str, fn: Callable[[Stub], Message], *, timeout: float = 30.0
) -> Message:
    with grpc.insecure_channel(server) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        # One metadata for every call: the stub methods take it per call.
        return fn(_Authorized(stub, key, timeout))  # type: ignore[arg-type]


class _Authorized:
    """The stub, with the key and a deadline on every call."""

    def __init__(self, stub: Stub, key: str, timeout: float) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {key}"),)
        self._timeout = timeout

    def __getattr__(self, name: str) -> Callable[[Message], Message]:
        method = getattr(self._stub, name)

        def invoke(request: Message) -> Message:
            reply: Message = method(request, metadata=self._metadata, timeout=self._timeout)
            return reply

        return invoke


def _project(args: argparse.Namespace) -> str:
    return f"projects/{args.project}"


def _user(args: argparse.Namespace) -> str:
    return f"projects/{args.project}/users/{args.user}"


def _struct(text: str | None, what: str) -> struct_pb2.Struct | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"identify admin: {what} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"identify admin: {what} must be a JSON object")
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _project_message(args: argparse.Namespace) -> tuple[pb.Project, list[str]]:
    project = pb.Project(display_name=args.name or "")
    paths = ["display_name"] if args.name else []
    providers = _struct(args.providers, "--providers")
    if providers is not None:
        project.providers.CopyFrom(providers)
        paths.append("providers")
    limits = _struct(args.limits, "--limits")
    if limits is not None:
        project.limits.CopyFrom(limits)
        paths.append("limits")
    if args.audit_retention_days is not None:
        project.audit_retention_days = args.audit_retention_days
        paths.append("audit_retention_days")
    if args.anonymous_retention_days is not None:
        project.anonymous_retention_days = args.anonymous_retention_days
        paths.append("anonymous_retention_days")
    return project, paths


def _update_project(args: argparse.Namespace, stub: Stub) -> Message:
    project, paths = _project_message(args)
    project.name = _project(args)
    return stub.UpdateProject(
        pb.UpdateProjectRequest(project=project, update_mask=field_mask_pb2.FieldMask(paths=paths))
    )


def _create_project(args: argparse.Namespace, stub: Stub) -> Message:
    project, _ = _project_message(args)
    return stub.CreateProject(pb.CreateProjectRequest(project=project, project_id=args.id or ""))


def _audit_filter(args: argparse.Namespace) -> str:
    parts = []
    if args.user:
        parts.append(f"user_id = {json.dumps(args.user)}")
    if args.type:
        parts.append(f"type = {json.dumps(args.type)}")
    if args.since:
        parts.append(f"event_time >= {json.dumps(args.since)}")
    if args.until:
        parts.append(f"event_time < {json.dumps(args.until)}")
    return " AND ".join(parts)


def _expire_time(text: str | None) -> timestamp_pb2.Timestamp | None:
    if text is None:
        return None
    from server.admin.keys import parse_duration

    try:
        return timestamp_pb2.Timestamp(seconds=now() + parse_duration(text))
    except ValueError as exc:
        raise SystemExit(f"identify admin: --expires-in: {exc}") from None


def _create_key(args: argparse.Namespace, stub: Stub) -> Message:
    key = pb.AdminKey(display_name=args.name, projects=args.project or [], read_only=args.read_only)
    expire = _expire_time(args.expires_in)
    if expire is not None:
        key.expire_time.CopyFrom(expire)
    return stub.CreateAdminKey(pb.CreateAdminKeyRequest(admin_key=key))


def _webhook_update(args: argparse.Namespace, stub: Stub) -> Message:
    hook = pb.Webhook(
        name=f"{_project(args)}/webhooks/{args.webhook}",
        uri=args.url or "",
        event_types=args.event_type or [],
    )
    paths = [p for p, v in (("uri", args.url), ("event_types", args.event_type)) if v]
    return stub.UpdateWebhook(
        pb.UpdateWebhookRequest(webhook=hook, update_mask=field_mask_pb2.FieldMask(paths=paths))
    )


def _webhook_call(verb: str) -> Call:
    requests: dict[str, Any] = {
        "GetWebhook": pb.GetWebhookRequest,
        "DeleteWebhook": pb.DeleteWebhookRequest,
        "EnableWebhook": pb.EnableWebhookRequest,
    }

    def call(args: argparse.Namespace, stub: Stub) -> Message:
        name = f"{_project(args)}/webhooks/{args.webhook}"
        reply: Message = getattr(stub, verb)(requests[verb](name=name))
        return reply

    return call


def _page(args: argparse.Namespace) -> dict[str, Any]:
    return {"page_size": args.page_size, "page_token": args.page_token or ""}


# --------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------
def _api_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("IDENTIFY_ADMIN_SERVER", DEFAULT_SERVER),
        metavar="HOST:PORT",
        help=f"the admin listener (default {DEFAULT_SERVER}; env IDENTIFY_ADMIN_SERVER)",
    )
    p.add_argument("--key", help=f"admin key (default: env {KEY_ENV})")
    p.add_argument("--output", choices=("table", "json"), default="table")


def _paged(p: argparse.ArgumentParser) -> None:
    p.add_argument("--page-size", type=int, default=0)
    p.add_argument("--page-token")


def register(sub: Any) -> None:
    """Adds `identify admin ...` to the `identify` command's subparsers."""
    admin = sub.add_parser("admin", help="the admin API: projects, users, keys, webhooks, ...")
    groups = admin.add_subparsers(dest="admin_group", required=True)

    key = groups.add_parser(
        "create-key", help="make an admin key in the database directly (the first one)"
    )
    key.add_argument("--db", help="database URL (env IDENTIFY_DB)")
    _key_options(key)
    key.set_defaults(func=cmd_create_key)

    def group(name: str, help_text: str) -> Any:
        return groups.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)

    def command(parent: Any, name: str, call: Call, help_text: str, *, done: str = "") -> Any:
        p = parent.add_parser(name, help=help_text)
        _api_options(p)
        p.set_defaults(func=cmd_api, call=call, done=done)
        return p

    projects = group("projects", "projects (tenants)")
    p = command(
        projects,
        "list",
        lambda a, s: s.ListProjects(
            pb.ListProjectsRequest(show_deleted=a.show_deleted, **_page(a))
        ),
        "list projects",
    )
    p.add_argument("--show-deleted", action="store_true")
    _paged(p)
    p = command(
        projects,
        "get",
        lambda a, s: s.GetProject(pb.GetProjectRequest(name=_project(a))),
        "get a project",
    )
    p.add_argument("project")
    for name, fn, help_text in (
        ("create", _create_project, "create a project"),
        ("update", _update_project, "update a project's name, providers, limits"),
    ):
        p = command(projects, name, fn, help_text)
        if name == "create":
            p.add_argument("--id", help="the projectId (a UUID; default: a random one)")
        else:
            p.add_argument("project")
        p.add_argument("--name")
        p.add_argument("--providers", metavar="JSON", help="e.g. '{\"anonymous\": {}}'")
        p.add_argument("--limits", metavar="JSON")
        p.add_argument("--audit-retention-days", type=int)
        p.add_argument(
            "--anonymous-retention-days",
            type=int,
            metavar="D",
            help="purge anonymous users with no login for D days (0: keep forever)",
        )
    p = command(
        projects,
        "delete",
        lambda a, s: s.DeleteProject(pb.DeleteProjectRequest(name=_project(a))),
        "soft-delete a project (purged after 30 days)",
    )
    p.add_argument("project")
    p = command(
        projects,
        "undelete",
        lambda a, s: s.UndeleteProject(pb.UndeleteProjectRequest(name=_project(a))),
        "bring back a soft-deleted project",
    )
    p.add_argument("project")

    users = group("users", "a project's users")

    def user_command(name: str, call: Call, help_text: str, *, done: str = "") -> Any:
        p = command(users, name, call, help_text, done=done)
        p.add_argument("project")
        p.add_argument("user")
        return p

    user_command("get", lambda a, s: s.GetUser(pb.GetUserRequest(name=_user(a))), "get a user")
    p = command(
        users,
        "lookup",
        lambda a, s: s.LookupUser(
            pb.LookupUserRequest(
                parent=_project(a),
                external_id=a.external_id or "",
                provider=a.provider or "",
                subject=a.subject or "",
            )
        ),
        "find a user by externalId, or provider and subject",
    )
    p.add_argument("project")
    p.add_argument("--external-id")
    p.add_argument("--provider")
    p.add_argument("--subject")
    p = command(
        users,
        "list",
        lambda a, s: s.ListUsers(
            pb.ListUsersRequest(
                parent=_project(a),
                filter=f"provider = {json.dumps(a.provider)}" if a.provider else "",
                **_page(a),
            )
        ),
        "list a project's users, newest first",
    )
    p.add_argument("project")
    p.add_argument("--provider")
    _paged(p)
    p = user_command(
        "devices",
        lambda a, s: s.ListDevices(pb.ListDevicesRequest(parent=_user(a), **_page(a))),
        "list a user's signed-in devices",
    )
    _paged(p)
    p = user_command(
        "logins",
        lambda a, s: s.ListLogins(pb.ListLoginsRequest(parent=_user(a), **_page(a))),
        "a user's login history, newest first",
    )
    _paged(p)
    user_command(
        "revoke-sessions",
        lambda a, s: s.RevokeUserSessions(pb.RevokeUserSessionsRequest(name=_user(a))),
        "end every session of a user",
    )
    p = user_command(
        "sign-out-device",
        lambda a, s: s.DeleteDevice(pb.DeleteDeviceRequest(name=f"{_user(a)}/devices/{a.device}")),
        "sign one device out",
        done="device signed out",
    )
    p.add_argument("device")
    p = user_command(
        "delete",
        lambda a, s: s.DeleteUser(
            pb.DeleteUserRequest(name=_user(a), delete_upstream=a.delete_upstream)
        ),
        "erase a user (GDPR): its rows are gone",
        done="user erased",
    )
    p.add_argument(
        "--delete-upstream",
        action="store_true",
        help="also the Cognito/Auth0 account (not available yet)",
    )
    user_command(
        "export",
        lambda a, s: s.ExportUser(pb.ExportUserRequest(name=_user(a))),
        "everything held on a user, as one JSON document",
    )

    audit = group("audit-events", "a project's audit trail")
    p = command(
        audit,
        "list",
        lambda a, s: s.ListAuditEvents(
            pb.ListAuditEventsRequest(parent=_project(a), filter=_audit_filter(a), **_page(a))
        ),
        "list audit events",
    )
    p.add_argument("project")
    p.add_argument("--user", help="a userId")
    p.add_argument("--type", help="an event type, e.g. user.login")
    p.add_argument("--since", metavar="RFC3339")
    p.add_argument("--until", metavar="RFC3339")
    _paged(p)

    hooks = group("webhooks", "a project's webhook endpoints")
    p = command(
        hooks,
        "create",
        lambda a, s: s.CreateWebhook(
            pb.CreateWebhookRequest(
                parent=_project(a), webhook=pb.Webhook(uri=a.url, event_types=a.event_type)
            )
        ),
        "register an endpoint (prints its secret once)",
    )
    p.add_argument("project")
    p.add_argument("--url", required=True)
    p.add_argument("--event-type", action="append", required=True, metavar="TYPE")
    p = command(
        hooks,
        "list",
        lambda a, s: s.ListWebhooks(pb.ListWebhooksRequest(parent=_project(a), **_page(a))),
        "list endpoints",
    )
    p.add_argument("project")
    _paged(p)
    for name, verb, help_text, done in (
        ("get", "GetWebhook", "get an endpoint (and why it was disabled)", ""),
        ("delete", "DeleteWebhook", "delete an endpoint", "webhook deleted"),
        ("enable", "EnableWebhook", "enable an endpoint that was disabled", ""),
    ):
        p = command(hooks, name, _webhook_call(verb), help_text, done=done)
        p.add_argument("project")
        p.add_argument("webhook")
    p = command(hooks, "update", _webhook_update, "change an endpoint's URL or event types")
    p.add_argument("project")
    p.add_argument("webhook")
    p.add_argument("--url")
    p.add_argument("--event-type", action="append", metavar="TYPE")

    admin_keys = group("keys", "admin keys")
    p = command(admin_keys, "create", _create_key, "create an admin key (printed once)")
    _key_options(p)
    p = command(
        admin_keys,
        "list",
        lambda a, s: s.ListAdminKeys(pb.ListAdminKeysRequest(**_page(a))),
        "list admin keys",
    )
    _paged(p)
    p = command(
        admin_keys,
        "get",
        lambda a, s: s.GetAdminKey(pb.GetAdminKeyRequest(name=f"adminKeys/{a.key_id}")),
        "get an admin key",
    )
    p.add_argument("key_id")
    p = command(
        admin_keys,
        "revoke",
        lambda a, s: s.DeleteAdminKey(pb.DeleteAdminKeyRequest(name=f"adminKeys/{a.key_id}")),
        "revoke an admin key",
    )
    p.add_argument("key_id")

    signing = group("signing-keys", "profileToken signing keys")
    p = command(
        signing,
        "list",
        lambda a, s: s.ListSigningKeys(pb.ListSigningKeysRequest(**_page(a))),
        "list signing keys",
    )
    _paged(p)
    command(
        signing,
        "rotate",
        lambda a, s: s.RotateSigningKey(pb.RotateSigningKeyRequest()),
        "sign with a new key from now on",
    )


def _key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="what the key is for")
    p.add_argument(
        "--project",
        action="append",
        metavar="ID",
        help="a project it may reach (repeatable; default: every project)",
    )
    p.add_argument("--read-only", action="store_true", help="reads only")
    p.add_argument("--expires-in", metavar="DURATION", help="e.g. 90d, 12h (default: never)")


def cmd_api(args: argparse.Namespace) -> int:
    key = _key(args)
    try:
        reply = call_api(args.server, key, lambda stub: args.call(args, stub))
    except grpc.RpcError as exc:
        print(_error(exc), file=sys.stderr)
        return 1
    text = render(reply, args.output, done=args.done)
    if text:
        print(text)
    if isinstance(reply, pb.AdminKey) and reply.key and args.output == "table":
        # The key alone on the last line, as create-key prints it.
        print(f"\nThe key (shown once):\n{reply.key}")
    if isinstance(reply, pb.Webhook) and reply.secret and args.output == "table":
        print(f"\nThe signing secret (shown once):\n{reply.secret}")
    return 0


def cmd_create_key(args: argparse.Namespace) -> int:
    """The first key, from the machine: straight into the database."""
    from server.admin import keys
    from server.cli import _db_url
    from server.events import audit as trail
    from server.store import db

    url = _db_url(args)
    projects = None
    if args.project:
        from providers.kit.inputs import canonical_uuid

        projects = [
            canonical_uuid(p, field_name="--project", reason="INVALID_PROJECT_ID")
            for p in args.project
        ]
    expires_at = None
    if args.expires_in:
        expires_at = now() + keys.parse_duration(args.expires_in)

    async def main() -> tuple[Any, str]:
        database = db.open_database(url, pool_size=1)
        try:
            await db.ensure_schema(database, auto_migrate=False)
            return await keys.create(
                database,
                name=args.name,
                projects=projects,
                read_only=args.read_only,
                expires_at=expires_at,
                actor=trail.ACTOR_CLI,
            )
        finally:
            await database.dispose()

    record, key = asyncio.run(main())
    scope = ", ".join(record.projects) if record.projects else "every project"
    mode = "read-only" if record.read_only else "read-write"
    print(f"admin key adminKeys/{record.key_id} ({record.name}): {mode}, {scope}")
    print(f"Keep it now; it is shown once and stored only as a hash:\n{key}")
    return 0


def rotate_through_api(args: argparse.Namespace) -> int:
    """`identify rotate-keys` without --db: the admin API's rotate."""
    try:
        reply = call_api(
            args.server,
            _key(args),
            lambda stub: stub.RotateSigningKey(pb.RotateSigningKeyRequest()),
        )
    except grpc.RpcError as exc:
        print(_error(exc), file=sys.stderr)
        return 1
    print(render(reply, "table"))
    return 0


def api_options(p: argparse.ArgumentParser) -> None:
    """--server and --key, for commands outside `identify admin`."""
    p.add_argument("--server", default=os.environ.get("IDENTIFY_ADMIN_SERVER", DEFAULT_SERVER))
    p.add_argument("--key", help=f"admin key (default: env {KEY_ENV})")
