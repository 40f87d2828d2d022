"""What wraps every RPC handler: a request id for every call, an access-log
line for each refused or failed call (every call, and a client hanging up
(CANCELLED), at debug level only), and a clean refusal of request bytes that
are no valid message. A line names method, status, duration and request id
only: never metadata or payloads, which carry tokens and passwords.

The wrappers are applied once per method, as the servicers register
(`Registrar`), not per call as grpc.aio.ServerInterceptors are: an
interceptor's per-call coroutine and handler cost ~0.03 ms of CPU per call,
a tenth of an empty call's (measured against bench/empty_server.py)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from providers.values import InvalidArgument
from server import errors, metrics
from server.edge import CLIENT_IP_HEADER
from server.requestctx import Call, call_var

log = logging.getLogger("identify.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]+")


class _Undecodable:
    """Stands in for a request whose bytes did not decode. gRPC answers a
    deserializer that raises with UNKNOWN, the exception's text and a
    traceback in the log; the handler refuses this instead."""

    __slots__ = ()


UNDECODABLE = _Undecodable()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        # What the transcoder lets through but protobuf refuses: JSON nested
        # deeper than the decoder's limit, strings that are not UTF-8 (from
        # percent-encoded query parameters); from native clients, any bytes.
        except (DecodeError, RecursionError):
            return UNDECODABLE

    return decode


def _malformed() -> InvalidArgument:
    return InvalidArgument(
        "MALFORMED_REQUEST",
        "the request is malformed: nested too deeply, or a string that is not UTF-8",
    )


def why_gone(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status of a call gRPC cancelled: its deadline passed, or else the
    client hung up."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


# Given the full method name ("/pkg.Service/Method") and its handler, the
# handler to serve instead.
Wrap: TypeAlias = (
    "Callable[[str, grpc.RpcMethodHandler[Any, Any]], grpc.RpcMethodHandler[Any, Any]]"
)


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode(errors="replace")


def call_of(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Call:
    """The call's `Call`, from one pass over its metadata (gRPC builds the
    metadata anew each time it is asked for)."""
    request_id = authorization = forwarded_ip = None
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            text = _text(value)
            # Envoy sends a UUID; anything else is not trusted into our logs.
            if 0 < len(text) <= 64 and _REQUEST_ID.fullmatch(text):
                request_id = text
        elif key == "authorization":
            authorization = _text(value)
        elif key == CLIENT_IP_HEADER:
            forwarded_ip = _text(value)[:64]
    return Call(
        request_id=request_id or str(uuid.uuid4()),
        method=method,
        authorization=authorization,
        forwarded_ip=forwarded_ip,
    )


def caller_headers(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str | None, str | None]:
    """The raw Authorization header and the edge's client IP (None when
    absent), as the access log's pass over the metadata found them."""
    call = call_var.get()
    if call is None:  # every registered method runs under access_log
        call = call_of("", context)
    return call.authorization, call.forwarded_ip


def access_log(method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    if handler.unary_unary is None:
        return handler
    # Envoy checks health every second: not worth a line, even at debug.
    quiet = method.startswith("/grpc.health.v1.Health/")
    inner = handler.unary_unary

    async def logged(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = call_of(method, context)
        request_id = call.request_id
        token = call_var.set(call)
        started = time.perf_counter()
        code = "OK"
        gone = False
        try:
            context.set_trailing_metadata((("x-request-id", request_id),))
            if request is UNDECODABLE:
                await context.abort_with_status(errors.to_status(_malformed(), request_id))
            return await inner(request, context)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            # gRPC cancels the handler when the client (or Envoy for it)
            # hangs up or its deadline passes: nobody is left to answer,
            # and nothing failed here. A write runs on, shielded
            # (server/detached.py).
            gone = True
            code = why_gone(context)
            raise
        except BaseException:
            code = context.code().name if context.code() else "UNKNOWN"
            raise
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            if code == "UNKNOWN":
                log.exception("%s failed request_id=%s", method, request_id)
            # Envoy's access log already has every request; here the
            # refusals are worth a line, successes and hang-ups only
            # when debugging (a load generator stopping cuts hundreds).
            level = logging.DEBUG if code == "OK" or gone else logging.INFO
            if not quiet and log.isEnabledFor(level):
                log.log(
                    level,
                    "rpc method=%s code=%s ms=%.1f request_id=%s",
                    method,
                    code,
                    elapsed,
                    request_id,
                    # The same, as fields of a JSON line (server/logs.py).
                    extra={"status": code, "duration_ms": round(elapsed, 1)},
                )
            metrics.finished(code, started)
            call_var.reset(token)

    return grpc.unary_unary_rpc_method_handler(
        logged,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class Registrar:
    """Stands in for the grpc.aio server while servicers register
    (`add_*Servicer_to_server`): each method handler they register is
    wrapped by `wraps`, the first outermost."""

    def __init__(self, server: grpc.aio.Server, wraps: list[Wrap]) -> None:
        self._server = server
        self._wraps = wraps

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
        for wrap in reversed(self._wraps):
            handler = wrap(method, handler)
        return handler

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Generic(h, self) for h in handlers))


class _Generic(grpc.GenericRpcHandler):
    """A generic handler's methods, each wrapped on first use. (gRPC finds
    the registered methods first; this serves only what was not.)"""

    def __init__(self, inner: grpc.GenericRpcHandler, registrar: Registrar) -> None:
        self._inner = inner
        self._registrar = registrar
        self._wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        found = self._wrapped.get(method)
        if found is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            found = self._wrapped[method] = self._registrar.wrap(method, handler)
        return found
