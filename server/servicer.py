"""identify.v1.Identify. Every provider RPC is one row of a table: which
provider method it calls (a typed reference, so the type checker sees every
call), which of its own fields it reads, and which reply it builds. Serving a
row is the same four steps for all: validate the common fields, load the
project (cached), call the provider, wrap what comes back in the documented
envelope. Every failure becomes a status in server/errors.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from identify.v1 import identify_pb2 as pb
from identify.v1 import identify_pb2_grpc

from providers.base import Provider
from providers.kit.inputs import bounded_id, canonical_uuid, id_arg
from providers.kit.tokens import bounded_token
from providers.registry import Registry
from providers.values import (
    Identity,
    InvalidArgument,
    NotFound,
    NotSupported,
    Reply,
    Request,
    Session,
    Unauthenticated,
)
from server import errors, structs, tokens
from server.clock import now
from server.detached import Detached
from server.events import calls
from server.events.types import USER_UNLINKED
from server.interceptors import caller_headers
from server.keys import KeyStore
from server.projects import LoadedProject, ProjectCache
from server.requestctx import call_var, request_id
from server.store import identities as store_links
from server.store import repo
from server.store.db import Database
from server.store.hot import HotRows
from server.upgrade import LINK, MERGE, Upgrade, Upgrades, policy_arg, upgrade_var

R = TypeVar("R")
T = TypeVar("T")
Q = TypeVar("Q")

Ctx = grpc.aio.ServicerContext[Any, Any]
# The Request fields an RPC reads from its own message.
Fields = dict[str, Any]


class CommonFields(Protocol):
    """What every provider RPC's request message carries."""

    project_id: str
    provider: str
    strategy: str


M = TypeVar("M", bound=CommonFields)


# --------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------
def project_id_arg(value: str) -> str:
    """THE projectId check, for every RPC that names a project."""
    if not value:
        raise InvalidArgument(
            "MISSING_PROJECT_ID", "projectId is required", metadata={"field": "projectId"}
        )
    return canonical_uuid(value, field_name="projectId", reason="INVALID_PROJECT_ID")


def _caller(context: Ctx) -> tuple[str | None, str]:
    """The raw Authorization header (None when absent) and the client's IP,
    as the access log's pass over the metadata found them."""
    authorization, forwarded = caller_headers(context)
    # The edge sets the IP header (behind --trusted-proxies); direct gRPC
    # callers reach the servers without it, so their peer address counts.
    return authorization, forwarded if forwarded is not None else _peer_ip(context.peer())


def _bearer(authorization: str | None) -> str | None:
    """The bearer token (bounded like every token) of an Authorization header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "MALFORMED_AUTHORIZATION", "the Authorization header must be 'Bearer <token>'"
        )
    return bounded_token(token.strip(), "authorization")


# Per request message type: whether it has `data` and `device_id`. (getattr
# with a default, on a message without the field, raises and catches an
# AttributeError: a cost on every call of the RPCs that name no device.)
_DEVICE_FIELDS: dict[type, tuple[bool, bool]] = {}


def _device_fields(kind: type) -> tuple[bool, bool]:
    found = _DEVICE_FIELDS.get(kind)
    if found is None:
        names = kind.DESCRIPTOR.fields_by_name  # type: ignore[attr-defined]
        found = _DEVICE_FIELDS[kind] = ("data" in names, "device_id" in names)
    return found


def _named_device(request: Any) -> str | None:
    """The device a request names (deviceId, or data.deviceId), for the
    audit trail of its refusal; only a canonical UUID counts."""
    has_data, has_device_id = _device_fields(type(request))
    raw = ""
    if has_data and "deviceId" in request.data.fields:
        raw = request.data.fields["deviceId"].string_value
    if not raw and has_device_id:
        raw = request.device_id
    try:
        return canonical_uuid(raw, field_name="deviceId", reason="") if raw else None
    except InvalidArgument:
        return None


def _peer_ip(peer: str) -> str:
    # "ipv4:127.0.0.1:5051", "ipv6:[::1]:5051", "unix:..."
    kind, _, address = peer.partition(":")
    if kind == "ipv4":
        return address.rpartition(":")[0]
    if kind == "ipv6":
        return address.rpartition(":")[0].strip("[]")
    return kind


def _struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message) if message.fields else {}


def _upgrade_reply(
    req: Request, result: Reply | Session, upgrade: Upgrade, linked: Sequence[Identity]
) -> pb.UpgradeReply:
    """What the provider's own call answered, as `data`, and whose the
    identity is now (filled in by the store during the call)."""
    if isinstance(result, Session):
        data = json_format.MessageToDict(_session_reply("OK")(req, result).data)
    else:
        data = dict(result.data or {})
    out = pb.UpgradeReply(result=1, user_id=upgrade.user_id or "")
    if upgrade.merged is not None:
        out.message = "users merged" if upgrade.merged.changed else "users were merged already"
        out.merged_user_id = upgrade.source_id
    else:
        out.message = "identity linked"
    out.data.SetInParent()
    structs.fill(out.data, data)
    out.linked_identities.extend(
        pb.LinkedIdentity(provider=i.provider, external_id=i.external_id, linked_at=i.linked_at)
        for i in linked
    )
    return out


def _body(request: pb.UserRequest) -> Fields:
    return {
        "data": _struct_to_dict(request.data),
        "external_id": bounded_id(request.external_id, "externalId"),
        "device_id": bounded_id(request.device_id, "deviceId"),
    }


# --------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------
def _user_reply(req: Request, reply: Reply) -> pb.UserReply:
    out = pb.UserReply(result=1, message=reply.message)
    if reply.flat:
        out.strategy = req.strategy
        out.provider = req.provider
        out.project_id = req.project.id
        out.external_id = reply.external_id or ""
        out.app_profile.SetInParent()
        structs.fill(out.app_profile, reply.app_profile or {})
    elif reply.data is not None:
        out.data.SetInParent()
        structs.fill(out.data, reply.data)
    return out


def _session_reply(message: str) -> Callable[[Request, Session], pb.SessionReply]:
    def wrap(_req: Request, session: Session) -> pb.SessionReply:
        data = pb.Session(
            device_id=session.device_id,
            time_stamp=session.time_stamp,
            signature=session.signature,
            external_id=session.external_id,
            user_id=session.user_id,
            profile_token=session.profile_token,
            sign_up=session.sign_up,
        )
        if session.access_token is not None:
            data.access_token = session.access_token
        if session.refresh_token is not None:
            data.refresh_token = session.refresh_token
        return pb.SessionReply(result=1, message=message, data=data)

    return wrap


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Route(Generic[Q, T, R]):
    call: Callable[[Provider[Any], Request], Awaitable[T]]
    # Reads the RPC's own fields; runs inside the error handling, so their
    # validation maps to statuses like everything else.
    fields: Callable[[Q], Fields]
    reply: Callable[[Request, T], R]
    # Run detached (server/detached.py), so a client hanging up cannot cut
    # it; a read whose client is gone may just stop, and saves the task.
    detached: bool = True


CREATE_USER: Route[pb.UserRequest, Reply, pb.UserReply] = Route(
    lambda p, req: p.create_user(req), _body, _user_reply
)
GET_USER: Route[pb.GetUserRequest, Reply, pb.UserReply] = Route(
    lambda p, req: p.get_user(req),
    lambda m: {"external_id": bounded_id(m.external_id, "externalId")},
    _user_reply,
    detached=False,
)
UPDATE_USER: Route[pb.UserRequest, Reply, pb.UserReply] = Route(
    lambda p, req: p.update_user(req), _body, _user_reply
)
LOGIN: Route[pb.UserRequest, Session, pb.SessionReply] = Route(
    lambda p, req: p.login(req), _body, _session_reply("OK")
)
CHECK_USER: Route[pb.CheckUserRequest, Reply, pb.UserReply] = Route(
    lambda p, req: p.check_user(req),
    lambda m: {"device_id": bounded_id(m.device_id, "deviceId")},
    _user_reply,
)
CHECK_USER_NONSTANDARD: Route[pb.CheckUserNonstandardRequest, Reply, pb.UserReply] = Route(
    lambda p, req: p.check_user_nonstandard(req),
    lambda m: {
        "user_id": id_arg(m.user_id, "userId"),
        "access_token": bounded_token(m.access_token, "accessToken"),
        "device_id": bounded_id(m.device_id, "deviceId"),
    },
    _user_reply,
)
CHANGE_PASSWORD: Route[pb.UserRequest, Session, pb.SessionReply] = Route(
    lambda p, req: p.change_password(req), _body, _session_reply("password has been updated")
)
FORGOT_PASSWORD: Route[pb.UserRequest, Reply, pb.UserReply] = Route(
    lambda p, req: p.forgot_password(req), _body, _user_reply
)
CONFIRM_FORGOT_PASSWORD: Route[pb.UserRequest, Reply, pb.UserReply] = Route(
    lambda p, req: p.confirm_forgot_password(req), _body, _user_reply
)
REFRESH_SESSION: Route[pb.RefreshSessionRequest, Session, pb.SessionReply] = Route(
    lambda p, req: p.refresh_session(req),
    lambda m: {
        "data": _struct_to_dict(m.data),
        "device_id": bounded_id(m.device_id, "deviceId"),
        "refresh_token": bounded_token(m.refresh_token, "refreshToken"),
    },
    _session_reply("OK"),
)
LOGOUT: Route[pb.UserRequest, Reply, pb.UserReply] = Route(
    lambda p, req: p.logout(req), _body, _user_reply
)


def _upgrade_fields(m: pb.LinkIdentityRequest | pb.MergeUsersRequest) -> Fields:
    return {
        "data": _struct_to_dict(m.data),
        "user_id": id_arg(m.user_id, "userId"),
        "access_token": bounded_token(m.access_token, "accessToken"),
        "device_id": bounded_id(m.device_id, "deviceId"),
    }


def _anonymous_token(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(
            "MISSING_FIELD",
            "anonymousToken (the anonymous login's profileToken) is required",
            metadata={"field": "anonymousToken"},
        )
    token = bounded_token(value, "anonymousToken")
    assert token is not None
    return token


async def _during(upgrade: Upgrade, call: Awaitable[T]) -> T:
    """Run a provider call as an upgrade (server/upgrade.py)."""
    reset = upgrade_var.set(upgrade)
    try:
        result = await call
    finally:
        upgrade_var.reset(reset)
    if upgrade.user_id is None:
        # The provider signed nobody in through the store: nothing linked.
        raise InvalidArgument(
            "OPERATION_NOT_SUPPORTED",
            f"provider {upgrade.provider} cannot be linked to an anonymous user",
            metadata={"provider": upgrade.provider, "operation": "link"},
        )
    return result


def _not_valid(reason: str) -> pb.VerifySignatureReply:
    return pb.VerifySignatureReply(valid=False, reason=reason)


class IdentifyServicer(identify_pb2_grpc.IdentifyServicer):
    def __init__(
        self,
        registry: Registry,
        projects: ProjectCache,
        keys: KeyStore,
        database: Database,
        hot: HotRows | None = None,
    ) -> None:
        self._registry = registry
        self._projects = projects
        self._keys = keys
        self._database = database
        self._hot = hot if hot is not None else HotRows(0)
        self._upgrades = Upgrades(database, keys)
        self._detached = Detached()

    # ---------------------------------------------------------------- RPCs
    async def CreateUser(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(context, request, CREATE_USER)

    async def GetUser(self, request: pb.GetUserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(context, request, GET_USER)

    async def UpdateUser(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(context, request, UPDATE_USER)

    async def Login(self, request: pb.UserRequest, context: Ctx) -> pb.SessionReply:
        return await self._serve(context, request, LOGIN)

    async def CheckUser(self, request: pb.CheckUserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(context, request, CHECK_USER)

    async def CheckUserNonstandard(
        self, request: pb.CheckUserNonstandardRequest, context: Ctx
    ) -> pb.UserReply:
        return await self._serve(context, request, CHECK_USER_NONSTANDARD)

    async def ChangePassword(self, request: pb.UserRequest, context: Ctx) -> pb.SessionReply:
        return await self._serve(context, request, CHANGE_PASSWORD)

    async def ForgotPassword(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(context, request, FORGOT_PASSWORD)

    async def ConfirmForgotPassword(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(context, request, CONFIRM_FORGOT_PASSWORD)

    async def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: Ctx
    ) -> pb.SessionReply:
        return await self._serve(context, request, REFRESH_SESSION)

    async def Logout(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(context, request, LOGOUT)

    async def LinkIdentity(self, request: pb.LinkIdentityRequest, context: Ctx) -> pb.UpgradeReply:
        return await self._upgrade(context, request, LINK, "")

    async def MergeUsers(self, request: pb.MergeUsersRequest, context: Ctx) -> pb.UpgradeReply:
        return await self._upgrade(context, request, MERGE, request.policy)

    async def UnlinkIdentity(
        self, request: pb.UnlinkIdentityRequest, context: Ctx
    ) -> pb.UpgradeReply:
        async def work() -> pb.UpgradeReply:
            project_id = project_id_arg(request.project_id)
            provider = id_arg(request.provider, "provider")
            if not provider:
                raise InvalidArgument(
                    "MISSING_PROVIDER", "provider is required", metadata={"field": "provider"}
                )
            external_id = id_arg(request.external_id, "externalId")
            authorization, client_ip = _caller(context)
            calls.note_caller(client_ip, None)
            bearer = _bearer(authorization)
            loaded = await self._project(project_id)
            if not bearer:
                raise Unauthenticated(
                    "MISSING_BEARER_TOKEN",
                    "an Authorization: Bearer <profileToken> header is required",
                )
            claims = await self._upgrades.user_of(bearer, project_id=loaded.project.id)
            await self._upgrades.refuse_ended(claims, project_id=loaded.project.id)
            user_id = str(claims["sub"])
            left = await store_links.unlink_identity(
                self._database,
                project_id=loaded.project.id,
                user_id=user_id,
                provider=provider,
                external_id=external_id,
                now=now(),
                event=lambda gone: calls.event(
                    USER_UNLINKED,
                    loaded.project.id,
                    provider=gone.provider,
                    user_id=user_id,
                    data={"externalId": gone.external_id},
                ),
            )
            self._hot.written(loaded.project.id, user_id)
            out = pb.UpgradeReply(result=1, message="identity unlinked", user_id=user_id)
            out.linked_identities.extend(
                pb.LinkedIdentity(
                    provider=i.provider, external_id=i.external_id, linked_at=i.linked_at
                )
                for i in left
            )
            return out

        return await self._run(context, work)

    async def VerifySignature(
        self, request: pb.VerifySignatureRequest, context: Ctx
    ) -> pb.VerifySignatureReply:
        async def work() -> pb.VerifySignatureReply:
            project_id = project_id_arg(request.project_id)
            for name, value in (
                ("userId", request.user_id),
                ("deviceId", request.device_id),
                ("signature", request.signature),
            ):
                if not value:
                    raise InvalidArgument(
                        "MISSING_FIELD", f"{name} is required", metadata={"field": name}
                    )
                id_arg(value, name)
            max_age = request.max_age_seconds if request.HasField("max_age_seconds") else None
            if max_age is not None and max_age < 0:
                raise InvalidArgument(
                    "INVALID_VALUE",
                    "maxAgeSeconds must be 0 or more",
                    metadata={"field": "maxAgeSeconds"},
                )
            loaded = await self._project(project_id)
            # The checks that need no read first; a valid session costs one.
            if not tokens.signature_matches(
                loaded.secret,
                request.user_id,
                request.device_id,
                request.time_stamp,
                request.signature,
            ):
                return _not_valid("SIGNATURE_MISMATCH")
            if max_age is not None and now() - request.time_stamp > max_age:
                return _not_valid("SESSION_TOO_OLD")
            valid_after = await repo.session_valid_after(
                self._database, project_id, request.user_id, request.device_id
            )
            if valid_after is None:
                return _not_valid("UNKNOWN_USER")
            # The rule tokens follow (kit/tokens.py refuse_if_revoked): a
            # session that began before the logout's (or the device's
            # sign-out's) second has ended.
            if request.time_stamp < valid_after:
                return _not_valid("SESSION_ENDED")
            return pb.VerifySignatureReply(valid=True)

        return await self._run(context, work)

    async def GetJwks(self, request: pb.GetJwksRequest, context: Ctx) -> pb.Jwks:
        async def work() -> pb.Jwks:
            signer = await self._keys.signer()
            return pb.Jwks(keys=[pb.Jwk(**key) for key in signer.jwks(now())])

        return await self._run(context, work)

    # ------------------------------------------------------------ plumbing
    async def _serve(self, context: Ctx, request: M, route: Route[M, T, R]) -> R:
        async def work() -> R:
            loaded, instance, req = await self._request(context, request, route.fields)
            token = req.data.pop("anonymousToken", None) if route is LOGIN else None
            if token is not None:
                # A login that also upgrades the anonymous user (sign-up,
                # then login, in one step): the LinkIdentity rules.
                upgrade = await self._upgrades.plan(
                    project_id=loaded.project.id,
                    mode=LINK,
                    provider=req.provider,
                    token=_anonymous_token(token),
                    policy=store_links.KEEP_TARGET,
                )
                upgrade.adopt_unused = True
                reply = route.reply(req, await _during(upgrade, route.call(instance, req)))
            else:
                reply = route.reply(req, await route.call(instance, req))
            await calls.after_success(self._database)
            return reply

        return await self._run(context, work, detached=route.detached)

    async def _upgrade(
        self,
        context: Ctx,
        request: pb.LinkIdentityRequest | pb.MergeUsersRequest,
        mode: str,
        policy: str,
    ) -> pb.UpgradeReply:
        async def work() -> pb.UpgradeReply:
            loaded, instance, req = await self._request(context, request, _upgrade_fields)
            chosen = policy_arg(policy)
            upgrade = await self._upgrades.plan(
                project_id=loaded.project.id,
                mode=mode,
                provider=req.provider,
                token=_anonymous_token(request.anonymous_token),
                policy=chosen,
            )
            result = await _during(upgrade, instance.link(req))
            linked = await store_links.identities_of(
                self._database, loaded.project.id, upgrade.user_id or ""
            )
            reply = _upgrade_reply(req, result, upgrade, linked)
            await calls.after_success(self._database)
            return reply

        return await self._run(context, work)

    async def _request(
        self, context: Ctx, request: M, fields: Callable[[M], Fields]
    ) -> tuple[LoadedProject, Provider[Any], Request]:
        """The common fields checked, the project and provider resolved, and
        the provider's Request built from the RPC's own `fields`."""
        authorization, client_ip = _caller(context)
        calls.note_caller(client_ip, _named_device(request))
        loaded, instance, strategy = await self._resolve(
            request.project_id, request.provider, request.strategy
        )
        bearer = _bearer(authorization)
        req = Request(
            project=loaded.project,
            provider=request.provider,
            strategy=strategy,
            bearer=bearer,
            request_id=request_id(),
            client_ip=client_ip,
            **fields(request),
        )
        return loaded, instance, req

    async def _run(
        self, context: Ctx, work: Callable[[], Awaitable[R]], *, detached: bool = True
    ) -> R:
        try:
            return await (self._detached.run(work()) if detached else work())
        except Exception as exc:
            status = errors.to_status(exc, request_id())
            if calls.records_refusal():
                # Detached too: a client hanging up must not cut its write.
                await self._detached.run(calls.after_refusal(self._database))
            await context.abort_with_status(status)
        raise AssertionError("unreachable: abort_with_status raises")

    async def _project(self, project_id: str) -> LoadedProject:
        loaded = await self._projects.get(project_id)
        if loaded is None:
            raise NotFound(
                "PROJECT_NOT_FOUND", "no such project", metadata={"projectId": project_id}
            )
        call = call_var.get()
        if call is not None:
            call.project = loaded.project.id
        return loaded

    async def _resolve(
        self, project_id: str, provider: str, strategy: str
    ) -> tuple[LoadedProject, Provider[Any], str]:
        project_id = project_id_arg(project_id)
        if not provider:
            raise InvalidArgument(
                "MISSING_PROVIDER", "provider is required", metadata={"field": "provider"}
            )
        cls = self._registry.get(provider)
        if cls is None:
            if self._registry.broken(provider) is not None:
                raise NotSupported(
                    "PROVIDER_NOT_IMPLEMENTED",
                    f"provider {provider} is not available in this build",
                    metadata={"provider": provider},
                )
            raise InvalidArgument(
                "UNKNOWN_PROVIDER",
                f"unknown provider; known providers: {', '.join(self._registry.names())}",
                metadata={"provider": provider[:64]},
            )
        loaded = await self._project(project_id)
        if provider not in loaded.settings:
            raise InvalidArgument(
                "PROVIDER_NOT_ENABLED",
                f"provider {provider} is not enabled for this project",
                metadata={"provider": provider},
            )
        call = call_var.get()
        if call is not None:
            call.project, call.provider = loaded.project.id, provider
        if not strategy:
            strategy = cls.strategies[0] if cls.strategies else ""
        elif strategy not in cls.strategies:
            raise InvalidArgument(
                "STRATEGY_MISMATCH",
                f"provider {provider} supports strategy {', '.join(cls.strategies)}",
                metadata={"provider": provider, "strategy": strategy[:64]},
            )
        return loaded, self._projects.provider(loaded, provider), strategy
