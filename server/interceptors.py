"""Server interceptors: a request id for every call and an access-log line
for each refused or failed call (every call at debug level). A line names
method, status, duration and request id only: never metadata or payloads,
which carry tokens and passwords."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.requestctx import request_id_var

log = logging.getLogger("identify.access")


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == "x-request-id":
            text = value if isinstance(value, str) else value.decode(errors="replace")
            # Envoy sends a UUID; anything else is not trusted into our logs.
            if 0 < len(text) <= 64 and all(c.isalnum() or c in "-_" for c in text):
                return text
    return str(uuid.uuid4())


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
        if method.startswith("/grpc.health.v1.Health/"):
            return handler
        inner = handler.unary_unary
        request_id = _request_id(handler_call_details)

        async def logged(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = request_id_var.set(request_id)
            started = time.perf_counter()
            code = "OK"
            try:
                context.set_trailing_metadata((("x-request-id", request_id),))
                return await inner(request, context)  # type: ignore[arg-type]
            except BaseException:
                code = context.code().name if context.code() else "UNKNOWN"
                raise
            finally:
                elapsed = (time.perf_counter() - started) * 1000
                if code == "UNKNOWN":
                    log.exception("%s failed request_id=%s", method, request_id)
                # Envoy's access log already has every request; here the
                # refusals are worth a line, successes only when debugging.
                level = logging.DEBUG if code == "OK" else logging.INFO
                if log.isEnabledFor(level):
                    log.log(
                        level,
                        "rpc method=%s code=%s ms=%.1f request_id=%s",
                        method,
                        code,
                        elapsed,
                        request_id,
                    )
                request_id_var.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            logged,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
