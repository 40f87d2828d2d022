"""identify.v1.Identify. Every RPC does the same four steps: validate the
common fields, load the project (cached), hand the call to the provider the
request names, and wrap what comes back in the documented envelope."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from identify.v1 import identify_pb2 as pb
from identify.v1 import identify_pb2_grpc
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from providers.base import (
    InvalidArgument,
    NotFound,
    NotSupported,
    Provider,
    ProviderError,
    Reply,
    Request,
    Session,
    Unauthenticated,
    Unavailable,
)
from providers.registry import Registry
from server import errors, tokens
from server.clock import now
from server.keys import KeyStore
from server.projects import LoadedProject, ProjectCache, ProviderSetupError
from server.requestctx import request_id_var

log = logging.getLogger(__name__)
R = TypeVar("R")

MAX_ID_LEN = 512
MAX_TOKEN_LEN = 16384
Ctx = grpc.aio.ServicerContext[Any, Any]


def _bearer(context: Ctx) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode()
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "MALFORMED_AUTHORIZATION", "the Authorization header must be 'Bearer <token>'"
                )
            return token.strip()
    return None


def _struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message) if message.fields else {}


def _bounded_token(value: str, field: str) -> str | None:
    # Tokens are longer than ids, but a 1 MiB "token" is not one.
    if len(value) > MAX_TOKEN_LEN:
        raise InvalidArgument("FIELD_TOO_LONG", f"{field} is too long", metadata={"field": field})
    return value or None


def _bounded(value: str, field: str) -> str | None:
    if not value:
        return None
    if len(value) > MAX_ID_LEN:
        raise InvalidArgument("FIELD_TOO_LONG", f"{field} is too long", metadata={"field": field})
    return value


class IdentifyServicer(identify_pb2_grpc.IdentifyServicer):
    def __init__(self, registry: Registry, projects: ProjectCache, keys: KeyStore) -> None:
        self._registry = registry
        self._projects = projects
        self._keys = keys
        # Strong references: the loop keeps only weak ones to running tasks.
        self._inflight: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------ plumbing
    async def _resolve(
        self, project_id: str, provider: str, strategy: str
    ) -> tuple[LoadedProject, Provider, str]:
        if not project_id:
            raise InvalidArgument(
                "MISSING_PROJECT_ID", "projectId is required", metadata={"field": "projectId"}
            )
        try:
            project_id = str(uuid.UUID(project_id))
        except ValueError:
            raise InvalidArgument(
                "INVALID_PROJECT_ID", "projectId must be a UUID", metadata={"field": "projectId"}
            ) from None
        if not provider:
            raise InvalidArgument(
                "MISSING_PROVIDER", "provider is required", metadata={"field": "provider"}
            )
        cls = self._registry.get(provider)
        if cls is None:
            if self._registry.unavailable(provider) is not None:
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
        loaded = await self._projects.get(project_id)
        if loaded is None:
            raise NotFound(
                "PROJECT_NOT_FOUND", "no such project", metadata={"projectId": project_id}
            )
        if provider not in loaded.settings:
            raise InvalidArgument(
                "PROVIDER_NOT_ENABLED",
                f"provider {provider} is not enabled for this project",
                metadata={"provider": provider},
            )
        if not strategy:
            strategy = cls.strategies[0] if cls.strategies else ""
        elif strategy not in cls.strategies:
            raise InvalidArgument(
                "STRATEGY_MISMATCH",
                f"provider {provider} supports strategy {', '.join(cls.strategies)}",
                metadata={"provider": provider, "strategy": strategy[:64]},
            )
        try:
            instance = self._projects.provider(loaded, provider)
        except ProviderSetupError:
            log.error("provider %s of project %s is misconfigured", provider, project_id)
            raise
        return loaded, instance, strategy

    async def _detached(self, work: Awaitable[R]) -> R:
        """Run the call's work in its own task that a client hanging up cannot
        cancel: a transaction cut half-way would hold SQLite's write lock (or a
        pooled connection) until it timed out, and the next callers would wait.
        The work finishes, and its result is dropped."""
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._inflight.discard(task)
        # Retrieve the outcome of work nobody awaits any more (client gone).
        if not task.cancelled():
            task.exception()

    async def _run(
        self,
        context: Ctx,
        work: Callable[[], Awaitable[R]],
    ) -> R:
        request_id = request_id_var.get()
        try:
            return await self._detached(work())
        except ProviderError as err:
            await context.abort_with_status(errors.from_provider_error(err, request_id))
        except ProviderSetupError:
            await context.abort_with_status(
                errors.status_for(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "PROVIDER_MISCONFIGURED",
                    "this provider is misconfigured on the server; contact the operator",
                    metadata={"requestId": request_id},
                )
            )
        except (OperationalError, DBAPIError, PoolTimeout, OSError):
            log.warning("store unavailable", exc_info=True)
            await context.abort_with_status(
                errors.from_provider_error(
                    Unavailable(
                        "STORE_UNAVAILABLE",
                        "storage is unavailable, retry shortly",
                        retry_after=1.0,
                    ),
                    request_id,
                )
            )
        except Exception:
            # Logged with its stack here; the client gets only a request id.
            log.exception("unhandled error request_id=%s", request_id)
            await context.abort_with_status(errors.internal(request_id))
        raise AssertionError("unreachable: abort_with_status raises")

    async def _dispatch(
        self,
        context: Ctx,
        *,
        project_id: str,
        provider: str,
        strategy: str,
        operation: str,
        **fields: Any,
    ) -> tuple[Request, Any]:
        loaded, instance, strategy = await self._resolve(project_id, provider, strategy)
        req = Request(
            project=loaded.project,
            provider=provider,
            strategy=strategy,
            bearer=_bearer(context),
            request_id=request_id_var.get(),
            **fields,
        )
        result = await getattr(instance, operation)(req)
        return req, result

    @staticmethod
    def _user_reply(req: Request, reply: Reply) -> pb.UserReply:
        out = pb.UserReply(result=1, message=reply.message)
        if reply.flat:
            out.strategy = req.strategy
            out.provider = req.provider
            out.project_id = req.project.id
            out.external_id = reply.external_id or ""
            out.app_profile.SetInParent()
            out.app_profile.update(reply.app_profile or {})
        elif reply.data is not None:
            out.data.SetInParent()
            out.data.update(reply.data)
        return out

    @staticmethod
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

    async def _serve(
        self,
        context: Ctx,
        request: Any,
        operation: str,
        wrap: Callable[[Request, Any], R],
        fields: Callable[[], dict[str, Any]],
    ) -> R:
        """The four steps every RPC shares; `fields` reads the RPC's own
        fields, inside the error handling so their validation maps too."""

        async def work() -> R:
            req, result = await self._dispatch(
                context,
                project_id=request.project_id,
                provider=request.provider,
                strategy=request.strategy,
                operation=operation,
                **fields(),
            )
            return wrap(req, result)

        return await self._run(context, work)

    @staticmethod
    def _body(request: pb.UserRequest) -> Callable[[], dict[str, Any]]:
        return lambda: {
            "data": _struct_to_dict(request.data),
            "external_id": _bounded(request.external_id, "externalId"),
            "device_id": _bounded(request.device_id, "deviceId"),
        }

    # ---------------------------------------------------------------- RPCs
    async def CreateUser(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(
            context, request, "create_user", self._user_reply, self._body(request)
        )

    async def GetUser(self, request: pb.GetUserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(
            context,
            request,
            "get_user",
            self._user_reply,
            lambda: {"external_id": _bounded(request.external_id, "externalId")},
        )

    async def UpdateUser(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(
            context, request, "update_user", self._user_reply, self._body(request)
        )

    async def Login(self, request: pb.UserRequest, context: Ctx) -> pb.SessionReply:
        return await self._serve(
            context, request, "login", self._session_reply("OK"), self._body(request)
        )

    async def CheckUser(self, request: pb.CheckUserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(
            context,
            request,
            "check_user",
            self._user_reply,
            lambda: {"device_id": _bounded(request.device_id, "deviceId")},
        )

    async def CheckUserNonstandard(
        self, request: pb.CheckUserNonstandardRequest, context: Ctx
    ) -> pb.UserReply:
        return await self._serve(
            context,
            request,
            "check_user_nonstandard",
            self._user_reply,
            lambda: {
                "user_id": _bounded(request.user_id, "userId"),
                "access_token": _bounded_token(request.access_token, "accessToken"),
                "device_id": _bounded(request.device_id, "deviceId"),
            },
        )

    async def ChangePassword(self, request: pb.UserRequest, context: Ctx) -> pb.SessionReply:
        return await self._serve(
            context,
            request,
            "change_password",
            self._session_reply("password has been updated"),
            self._body(request),
        )

    async def ForgotPassword(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(
            context, request, "forgot_password", self._user_reply, self._body(request)
        )

    async def ConfirmForgotPassword(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(
            context, request, "confirm_forgot_password", self._user_reply, self._body(request)
        )

    async def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: Ctx
    ) -> pb.SessionReply:
        return await self._serve(
            context,
            request,
            "refresh_session",
            self._session_reply("OK"),
            lambda: {
                "data": _struct_to_dict(request.data),
                "device_id": _bounded(request.device_id, "deviceId"),
                "refresh_token": _bounded_token(request.refresh_token, "refreshToken"),
            },
        )

    async def Logout(self, request: pb.UserRequest, context: Ctx) -> pb.UserReply:
        return await self._serve(context, request, "logout", self._user_reply, self._body(request))

    async def VerifySignature(
        self, request: pb.VerifySignatureRequest, context: Ctx
    ) -> pb.VerifySignatureReply:
        async def work() -> pb.VerifySignatureReply:
            try:
                project_id = str(uuid.UUID(request.project_id))
            except ValueError:
                raise InvalidArgument(
                    "INVALID_PROJECT_ID",
                    "projectId must be a UUID",
                    metadata={"field": "projectId"},
                ) from None
            for name, value in (
                ("userId", request.user_id),
                ("deviceId", request.device_id),
                ("signature", request.signature),
            ):
                if not value:
                    raise InvalidArgument(
                        "MISSING_FIELD", f"{name} is required", metadata={"field": name}
                    )
                _bounded(value, name)
            loaded = await self._projects.get(project_id)
            if loaded is None:
                raise NotFound(
                    "PROJECT_NOT_FOUND", "no such project", metadata={"projectId": project_id}
                )
            valid = tokens.signature_matches(
                loaded.secret,
                request.user_id,
                request.device_id,
                request.time_stamp,
                request.signature,
            )
            return pb.VerifySignatureReply(valid=valid)

        return await self._run(context, work)

    async def GetJwks(self, request: pb.GetJwksRequest, context: Ctx) -> pb.Jwks:
        async def work() -> pb.Jwks:
            signer = await self._keys.signer()
            return pb.Jwks(keys=[pb.Jwk(**key) for key in signer.jwks(now())])

        return await self._run(context, work)
