"""A server span per RPC, continuing the caller's trace (Envoy's, from the
`traceparent` it sends, or a native gRPC client's).

Wrapped inside the access log (server/interceptors.py), so the call's `Call` is there
to read: the span carries the RPC, its gRPC status, and the project,
provider and refusal reason only once the servicer has validated them.
Never metadata values, request or reply bodies, nor exception text (which
may quote them)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from server.interceptors import Wrap, why_gone
from server.requestctx import call_var

# Envoy checks every backend's health each second: a trace each would bury
# the real ones.
_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# The codes that are the service's fault, per OpenTelemetry's gRPC
# conventions for servers; a client's bad input leaves the span unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def traced(tracer: trace.Tracer) -> Wrap:
    """The wrapper (server/interceptors.py Registrar) that gives each call
    a server span."""

    def wrap(method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
        if handler.unary_unary is None or method.startswith(_UNTRACED):
            return handler
        inner = handler.unary_unary
        name = method.lstrip("/")
        service, _, rpc = name.partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}

        async def traced_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            # Only the two W3C headers are read: the propagator needs no more.
            carrier = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if key in ("traceparent", "tracestate") and isinstance(value, str)
            }
            with tracer.start_as_current_span(
                name,
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                call = call_var.get()
                span_context = span.get_span_context()
                if call is not None and span_context.trace_flags.sampled:
                    call.trace_id = format(span_context.trace_id, "032x")
                code = grpc.StatusCode.OK
                try:
                    return await inner(request, context)  # type: ignore[arg-type]
                except asyncio.CancelledError:
                    # The client hung up or its deadline passed: no failure of ours.
                    code = grpc.StatusCode[why_gone(context)]
                    raise
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    _finish(span, code)

        return grpc.unary_unary_rpc_method_handler(
            traced_call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    return wrap


def _finish(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    call = call_var.get()
    if call is not None:
        # Set by the servicer once validated: known values, never raw input.
        for key, value in (
            ("identify.request_id", call.request_id),
            ("identify.project", call.project),
            ("identify.provider", call.provider),
            ("identify.reason", call.reason),
        ):
            if value:
                span.set_attribute(key, value)
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))
