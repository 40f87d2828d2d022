"""Traces on: the SDK with its OTLP exporter, the server span per RPC, a
span per store operation, and the upstream calls' spans (httpx for the
identity providers' HTTP APIs, botocore for Cognito), each made safe to
export. Imported only once server/tracing/settings says traces are on.

The SDK reads the rest of OTEL_* itself: the sampler (OTEL_TRACES_SAMPLER,
_ARG), the exporter's headers, timeout, compression and certificates, the
batch processor's delays (OTEL_BSP_*), resource attributes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from server.store.db import Database
from server.tracing.rpc import traced
from server.tracing.settings import GRPC, Otlp

log = logging.getLogger(__name__)
# The httpx instrumentation would copy these headers into spans, and ours
# carry bearer tokens and client secrets: not offered.
_HEADER_CAPTURE = (
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE",
)
_URL_ATTRIBUTES = ("url.full", "http.url")


class Tracing:
    """Everything tracing sets up in one server process, and its flush."""

    def __init__(self, otlp: Otlp, *, http: httpx.AsyncClient, database: Database) -> None:
        for name in _HEADER_CAPTURE:
            if os.environ.pop(name, None):
                log.warning("%s is ignored: headers carry tokens", name)
        self._provider = TracerProvider(
            resource=Resource.create(
                {"service.name": otlp.service_name, "process.pid": os.getpid()}
            )
        )
        self._provider.add_span_processor(BatchSpanProcessor(_exporter(otlp)))
        trace.set_tracer_provider(self._provider)
        tracer = self._provider.get_tracer("identify")
        self.wrap = traced(tracer)
        database.observe = _store_spans(tracer, database.dialect)
        HTTPXClientInstrumentor.instrument_client(
            http, tracer_provider=self._provider, request_hook=_url_without_query
        )
        botocore = BotocoreInstrumentor()  # type: ignore[no-untyped-call]
        if not botocore.is_instrumented_by_opentelemetry:
            botocore.instrument(tracer_provider=self._provider, response_hook=_error_code_only)

    def shutdown(self) -> None:
        """Export what is still queued (blocking: run it off the loop)."""
        self._provider.shutdown()


def _exporter(otlp: Otlp) -> SpanExporter:
    if otlp.protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=otlp.endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=otlp.endpoint)


def _store_spans(tracer: trace.Tracer, dialect: str) -> Callable[[str, str], Any]:
    """A span per Database.read or write, named after the repo function
    that asked (`store.get_project`): never a statement's parameters. Only
    within a trace: background work (the webhook relay's polls, the purges)
    would otherwise start a trace of its own every second in every process."""

    @contextmanager
    def observe(access: str, query: str) -> Iterator[trace.Span]:
        if not trace.get_current_span().get_span_context().is_valid:
            yield trace.INVALID_SPAN
            return
        with tracer.start_as_current_span(
            f"store.{query}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": dialect,
                "db.operation.name": query,
                "identify.store.access": access,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                # The class only: a driver's message can quote a row's values.
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    return observe


async def _url_without_query(span: trace.Span, request: Any) -> None:
    """Scheme, host and path of an upstream call: query strings carry
    access tokens (Facebook's Graph API takes them there)."""
    attributes = getattr(span, "attributes", None) or {}
    url = request.url
    plain = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"
    for key in _URL_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, plain)


def _error_code_only(span: trace.Span, _service: str, _operation: str, result: Any) -> None:
    """botocore's span status quotes the whole error message; AWS's error
    code says as much without any text of the request's."""
    status = getattr(span, "status", None)
    if status is not None and status.status_code is StatusCode.ERROR:
        error = (result or {}).get("Error", {}) if isinstance(result, dict) else {}
        span.set_status(Status(StatusCode.ERROR, str(error.get("Code") or "error")))
