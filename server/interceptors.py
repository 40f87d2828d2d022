"""Server interceptors: a request id for every call, an access-log line for
each refused or failed call (every call, and a client hanging up (CANCELLED),
at debug level only), and a clean refusal
of request bytes that are no valid message. A line names method, status,
duration and request id only: never metadata or payloads, which carry tokens
and passwords."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from providers.values import InvalidArgument
from server import errors, metrics
from server.requestctx import Call, call_var

log = logging.getLogger("identify.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]+")


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == "x-request-id":
            text = value if isinstance(value, str) else value.decode(errors="replace")
            # Envoy sends a UUID; anything else is not trusted into our logs.
            if 0 < len(text) <= 64 and _REQUEST_ID.fullmatch(text):
                return text
    return str(uuid.uuid4())


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


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        # Envoy checks health every second: not worth a line, even at debug.
        quiet = method.startswith("/grpc.health.v1.Health/")
        inner = handler.unary_unary
        request_id = _request_id(handler_call_details)

        async def logged(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = call_var.set(Call(request_id=request_id, method=method))
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
                # and nothing failed here. The work itself runs on, shielded
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
